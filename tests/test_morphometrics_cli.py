"""``nnunet-ext morphometrics``: inputs (file, prediction folder, ADS mask pairs, BIDS), outputs, maps, errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nnunet_ext.cli import main
from nnunet_ext.morphometrics import aggregate_morphometrics, axon_morphometrics, masks_from_label_image
from nnunet_ext.morphometrics.maps import MAP_METRICS, tile_morphometrics, tile_size_in_pixels

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def label_image(seed: int, shape=(90, 110)) -> np.ndarray:
    """0 background, 1 myelin, 2 axon: random round fibres, some cut by the border."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    label = np.zeros(shape, np.uint8)
    for _ in range(25):
        cy, cx, r, t = rng.uniform(-3, shape[0] + 3), rng.uniform(-3, shape[1] + 3), rng.uniform(2, 7), \
            rng.uniform(1, 4)
        rho = np.hypot(yy - cy, xx - cx)
        if (label[rho < r + t] == 2).any():
            continue
        label[(rho < r + t) & (label == 0)] = 1
        label[rho < r] = 2
    return label


@pytest.fixture
def predictions(tmp_path):
    folder = tmp_path / "predictions"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(label_image(i)).save(folder / f"case_{i:03d}.png")
    (folder / "dataset.json").write_text("{}")  # nnU-Net writes these beside predictions: ignored
    (folder / "pixel_size_in_micrometer.txt").write_text("0.25\n")
    return folder


def run(*args) -> int:
    return main(["morphometrics", *map(str, args)])


def test_prediction_folder(predictions, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(predictions, "-o", out) == 0
    assert "2 image(s)" in capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["aggregate_morphometrics.csv", "axon_morphometrics.csv",
                            "case_000_axon_morphometrics.csv", "case_000_qc.png",
                            "case_001_axon_morphometrics.csv", "case_001_qc.png"]
                           # AxonDeepSeg's index images, on by default
                           + [f"case_00{i}{s}" for i in (0, 1) for s in ("_index.png", "_axonmyelin_index.png")])
    combined = pd.read_csv(out / "axon_morphometrics.csv")
    aggregate = pd.read_csv(out / "aggregate_morphometrics.csv")
    assert list(aggregate["image"]) == ["case_000", "case_001"]
    for i, name in enumerate(["case_000", "case_001"]):
        axon, myelin = masks_from_label_image(label_image(i))
        expected = axon_morphometrics(axon, myelin, 0.25, image_name=name)
        per_image = pd.read_csv(out / f"{name}_axon_morphometrics.csv", keep_default_na=False,
                                na_values=["NaN"])
        assert len(per_image) == len(expected) == (combined["image"] == name).sum()
        np.testing.assert_allclose(per_image["gratio"], expected["gratio"], rtol=1e-12)
        row = aggregate.set_index("image").loc[name]
        reference = aggregate_morphometrics(axon, myelin, 0.25, per_axon=expected)
        assert row["axon_count"] == reference["axon_count"]
        assert row["avf"] == pytest.approx(reference["avf"])
        assert row["pixel_size_um"] == 0.25 and row["pixel_size_source"].endswith("pixel_size_in_micrometer.txt")
        assert row["filters"] == "none" and row["axons_filtered_out"] == 0
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_refuses_to_overwrite_and_leaves_nothing_half_written(predictions, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(predictions / "case_000.png", "-o", out, "--no-qc") == 0
    before = (out / "aggregate_morphometrics.csv").read_text()
    assert run(predictions / "case_000.png", "-o", out, "--no-qc", "--pixel-size", 0.5) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "aggregate_morphometrics.csv").read_text() == before
    assert run(predictions / "case_000.png", "-o", out, "--no-qc", "--pixel-size", 0.5, "--overwrite") == 0
    assert pd.read_csv(out / "aggregate_morphometrics.csv")["pixel_size_um"].tolist() == [0.5]
    # a bad image in the folder: nothing written at all
    Image.fromarray(np.full((20, 20), 7, np.uint8)).save(predictions / "case_bad.png")
    fresh = tmp_path / "fresh"
    assert run(predictions, "-o", fresh) == 1
    err = capsys.readouterr().err
    assert "case_bad.png" in err and "unexpected label values [7]" in err
    assert not fresh.exists() and not list(tmp_path.glob(".fresh.tmp-*"))


def test_pixel_size_errors(tmp_path, capsys):
    Image.fromarray(label_image(0)).save(tmp_path / "a.png")
    assert run(tmp_path / "a.png", "-o", tmp_path / "out") == 1
    assert "a.png: pixel size unknown" in capsys.readouterr().err
    (tmp_path / "pixel_size_in_micrometer.txt").write_text("-1")
    assert run(tmp_path / "a.png", "-o", tmp_path / "out") == 1
    assert "pixel_size_in_micrometer.txt" in capsys.readouterr().err
    assert run(tmp_path / "a.png", "-o", tmp_path / "out", "--pixel-size", 0) == 1
    assert "positive" in capsys.readouterr().err
    (tmp_path / "a.json").write_text(json.dumps({"PixelSize": [0.2, 0.2], "PixelSizeUnits": "um"}))
    assert run(tmp_path / "a.png", "-o", tmp_path / "out", "--no-qc") == 0  # sidecar wins over the text file
    assert pd.read_csv(tmp_path / "out" / "aggregate_morphometrics.csv")["pixel_size_um"].tolist() == [0.2]


def test_bids_dataset(tmp_path):
    root = tmp_path / "bids"
    (root / "sub-01" / "micr").mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.7.0"}))
    label = label_image(3)
    Image.fromarray((label * 100).astype(np.uint8)).save(root / "sub-01" / "micr" / "sub-01_sample-a_SEM.png")
    (root / "sub-01" / "micr" / "sub-01_sample-a_SEM.json").write_text(
        json.dumps({"PixelSize": [80, 80], "PixelSizeUnits": "nm"}))
    labels = root / "derivatives" / "labels" / "sub-01" / "micr"
    labels.mkdir(parents=True)
    Image.fromarray(np.where(label == 2, 255, 0).astype(np.uint8)).save(labels / "sub-01_sample-a_SEM_seg-axon-manual.png")
    Image.fromarray(np.where(label == 1, 255, 0).astype(np.uint8)).save(labels / "sub-01_sample-a_SEM_seg-myelin-manual.png")
    out = tmp_path / "out"
    assert run(root, "-o", out) == 0
    row = pd.read_csv(out / "aggregate_morphometrics.csv").iloc[0]
    assert row["image"] == "sub-01_sample-a_SEM" and row["pixel_size_um"] == pytest.approx(0.08)
    assert row["pixel_size_source"] == f"BIDS sidecar {root / 'sub-01' / 'micr' / 'sub-01_sample-a_SEM.json'}"
    axon, myelin = masks_from_label_image(label)
    assert row["axon_count"] == len(axon_morphometrics(axon, myelin, 0.08))
    assert (out / "sub-01_sample-a_SEM_qc.png").is_file()


def test_filters_only_on_request(predictions, tmp_path):
    out_all, out_filtered = tmp_path / "all", tmp_path / "filtered"
    source = predictions / "case_000.png"
    assert run(source, "-o", out_all, "--no-qc") == 0
    assert run(source, "-o", out_filtered, "--no-qc", "--drop-border", "--min-axon-area", 2.0) == 0
    every = pd.read_csv(out_all / "case_000_axon_morphometrics.csv")
    kept = pd.read_csv(out_filtered / "case_000_axon_morphometrics.csv")
    expected = every[~every["image_border_touching"] & (every["axon_area (um^2)"] >= 2.0)]
    assert every["image_border_touching"].any() and 0 < len(kept) == len(expected) < len(every)
    aggregate = pd.read_csv(out_filtered / "aggregate_morphometrics.csv").iloc[0]
    assert aggregate["axons_filtered_out"] == len(every) - len(kept)
    assert "drop_border=True" in aggregate["filters"] and aggregate["axon_count"] == len(kept)


def test_maps_and_roi(predictions, tmp_path):
    roi = np.zeros((90, 110), np.uint8)
    roi[:, :60] = 255
    Image.fromarray(roi).save(tmp_path / "roi.png")
    out = tmp_path / "out"
    assert run(predictions / "case_001.png", "-o", out, "--maps", "--tile-size", 10, "--tile-unit", "um",
               "--roi", tmp_path / "roi.png", "--no-qc") == 0
    tiles = pd.read_csv(out / "case_001_tiles.csv")
    assert tile_size_in_pixels(0.25, tile_size_um=10) == 40
    assert len(tiles) == 3 * 3 and tiles["x_max (px)"].max() == 110
    for column in MAP_METRICS:
        assert (out / f"case_001_map-{column.split(' ')[0]}.png").is_file()
    aggregate = pd.read_csv(out / "aggregate_morphometrics.csv").iloc[0]
    assert tiles["axon_count"].sum() == aggregate["axon_count"]
    area = tiles["area (mm^2)"]
    assert (tiles["avf"].fillna(0) * area).sum() == pytest.approx(aggregate["avf"] * aggregate["area (mm^2)"])
    assert tiles.loc[tiles["x_min (px)"] >= 60, "avf"].isna().all()  # outside the ROI


def test_tile_morphometrics_counts():
    axon, myelin = masks_from_label_image(label_image(5, shape=(100, 130)))
    per_axon = axon_morphometrics(axon, myelin, 0.1)
    tiles = tile_morphometrics(axon, myelin, 0.1, tile_size_px=32, per_axon=per_axon)
    assert len(tiles) == 4 * 5
    assert tiles["axon_count"].sum() == len(per_axon)
    pixels = (tiles["y_max (px)"] - tiles["y_min (px)"]) * (tiles["x_max (px)"] - tiles["x_min (px)"])
    assert (tiles["avf"] * pixels).sum() == pytest.approx(axon.sum())
    assert (tiles["mvf"] * pixels).sum() == pytest.approx(myelin.sum())
    first = tiles.iloc[0]
    assert first["avf"] == pytest.approx(axon[:32, :32].mean())
    inside = (per_axon["y0 (px)"] < 32) & (per_axon["x0 (px)"] < 32)
    assert first["axon_count"] == inside.sum()
    with pytest.raises(ValueError, match="exactly one"):
        tile_morphometrics(axon, myelin, 0.1)
    with pytest.raises(ValueError, match="positive"):
        tile_morphometrics(axon, myelin, 0.1, tile_size_um=-3)


def test_ads_style_folder_gives_axondeepseg_aggregates(tmp_path):
    demo = DATA / "ads_demo"
    if not demo.is_dir():
        pytest.skip(f"{demo} not found")
    out = tmp_path / "out"
    assert run(demo, "-o", out, "--no-qc") == 0
    aggregate = pd.read_csv(out / "aggregate_morphometrics.csv").set_index("image")
    assert set(aggregate.index) == {"image", "invalid_gratio"}  # mask pairs; image.png and axonmyelin skipped
    row = aggregate.loc["image"]
    assert row["avf"] == pytest.approx(0.30040, abs=5e-6) and row["mvf"] == pytest.approx(0.34386, abs=5e-6)
    assert row["gratio_aggregate"] == pytest.approx(0.68284, abs=5e-6)
    assert row["axon_density (per mm^2)"] == pytest.approx(36008.7, abs=0.05)


def test_help_lists_the_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "morphometrics" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["morphometrics", "--help"])
    assert "--pixel-size" in capsys.readouterr().out


def test_mtneuro_semantic_features_cli(tmp_path, capsys):
    import SimpleITK as sitk
    import tifffile

    from nnunet_ext.morphometrics.mtneuro_features import MTNEURO_COLUMNS, MTNEURO_CSV, semantic_features

    rng = np.random.default_rng(5)
    stack = rng.choice(4, size=(3, 40, 50), p=[0.6, 0.1, 0.1, 0.2]).astype(np.uint8)
    stack[2][stack[2] == 2] = 0  # a slice without cells
    stack[2, 10, 10] = 2
    plane = np.zeros((30, 30), np.uint8)
    plane[0:3, 0:10] = 1  # vessel 30 px
    plane[5:8, 5:8] = 2  # cell of 9 px, centroid (6, 6)
    plane[20, 26] = 2  # cell of 1 px, centroid (20, 26)
    plane[12:14, :] = 3  # axon 60 px
    folder = tmp_path / "maps"
    folder.mkdir()
    tifffile.imwrite(folder / "volume.tif", stack, photometric="minisblack")
    Image.fromarray(plane).save(folder / "slice_000.png")
    sitk.WriteImage(sitk.GetImageFromArray(stack), str(folder / "volume_nii.nii.gz"))
    (folder / "notes.txt").write_text("not a label map")
    out = tmp_path / "out"
    assert run(folder, "-o", out, "--mtneuro", "--pixel-size", 0.5) == 0
    assert "3 label map(s), 7 slice(s)" in capsys.readouterr().out
    table = pd.read_csv(out / MTNEURO_CSV)
    assert list(table.columns) == ["image", "pixel_size_um", *MTNEURO_COLUMNS]
    assert table["image"].tolist() == ["slice_000"] + ["volume"] * 3 + ["volume_nii"] * 3
    first = table.iloc[0]
    assert first["vessel_fraction"] == pytest.approx(30 / 900) and first["axon_fraction"] == pytest.approx(60 / 900)
    assert first["cell_count"] == 2 and first["mean_cell_size (px)"] == pytest.approx(5)
    assert first["mean_cell_nn_distance (um)"] == pytest.approx(np.hypot(14, 20) * 0.5)
    expected = semantic_features(stack, pixel_size_um=0.5)
    for image in ("volume", "volume_nii"):
        rows = table[table["image"] == image].reset_index(drop=True)
        for column in MTNEURO_COLUMNS[:-1]:
            np.testing.assert_allclose(rows[column], expected[column], rtol=1e-12, err_msg=column)
    assert "fewer than two cells" in table.iloc[3]["note"]
    # 4-connected cells, custom labels, no pixel size (um columns NaN), refusal to overwrite, bad input
    assert run(folder / "volume.tif", "-o", out, "--mtneuro", "--cell-connectivity", 4, "--overwrite") == 0
    table = pd.read_csv(out / MTNEURO_CSV)
    expected = semantic_features(stack, connectivity=1)
    np.testing.assert_array_equal(table["cell_count"], expected["cell_count"])
    assert table["mean_cell_size (um^2)"].isna().all() and table["mean_cell_size (px)"].notna().all()
    assert run(folder / "volume.tif", "-o", out, "--mtneuro") == 1
    assert "already exists" in capsys.readouterr().err
    np.save(tmp_path / "float.npy", np.full((4, 4), 0.5))
    assert run(tmp_path / "float.npy", "-o", tmp_path / "bad", "--mtneuro") == 1
    assert "float.npy: label map holds non-integer values" in capsys.readouterr().err
    assert run(folder, "-o", tmp_path / "bad", "--mtneuro", "--maps") == 1
    assert "--maps: not available with --mtneuro" in capsys.readouterr().err


def test_image_name_is_for_slides_only(predictions, tmp_path, capsys):
    assert run(predictions, "-o", tmp_path / "out", "--image-name", "x") == 1
    assert "--image-name names a whole slide" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_mtneuro_pixel_size_missing_or_broken(tmp_path):
    """No pixel size anywhere gives NaN um columns; a sidecar or text file that is there but broken raises."""
    from nnunet_ext.morphometrics.mtneuro_features import run_semantic_features

    folder = tmp_path / "maps"
    folder.mkdir()
    plane = np.zeros((20, 20), np.uint8)
    plane[2:5, 2:5] = 2
    plane[12:15, 12:15] = 2
    Image.fromarray(plane).save(folder / "slice.png")
    table = run_semantic_features(folder, tmp_path / "none")
    assert table["pixel_size_um"].isna().all() and table["mean_cell_size (um^2)"].isna().all()
    (folder / "slice.json").write_text("{not json")
    with pytest.raises(ValueError, match="slice.json: not valid JSON"):
        run_semantic_features(folder, tmp_path / "bad_json")
    (folder / "slice.json").write_text(json.dumps({"PixelSize": ["a", "b"]}))
    with pytest.raises(ValueError, match="slice.json"):
        run_semantic_features(folder, tmp_path / "bad_value")
    (folder / "slice.json").unlink()
    (folder / "pixel_size_in_micrometer.txt").write_text("half a micron")
    with pytest.raises(ValueError, match="pixel_size_in_micrometer.txt: expected one number"):
        run_semantic_features(folder, tmp_path / "bad_txt")
    (folder / "pixel_size_in_micrometer.txt").write_text("0.5")
    table = run_semantic_features(folder, tmp_path / "good")
    assert (table["pixel_size_um"] == 0.5).all()
    assert table["mean_cell_size (um^2)"].iloc[0] == pytest.approx(9 * 0.25)


def test_read_label_volume_refuses_colour_tiffs(tmp_path):
    import tifffile

    from nnunet_ext.io.images import read_label_volume

    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((20, 30, 3), np.uint8), photometric="rgb")
    with pytest.raises(ValueError, match="colour TIFF") as error:
        read_label_volume(rgb)
    assert str(rgb) in str(error.value)
    rgba = tmp_path / "rgba.tif"
    tifffile.imwrite(rgba, np.zeros((20, 30, 4), np.uint8), photometric="rgb")
    with pytest.raises(ValueError, match="rgba.tif: colour TIFF"):
        read_label_volume(rgba)
    stack = np.arange(3 * 20 * 30).reshape(3, 20, 30).astype(np.uint8) % 4
    grey = tmp_path / "grey.tif"
    tifffile.imwrite(grey, stack, photometric="minisblack")  # a 3-slice label stack is not colour
    np.testing.assert_array_equal(read_label_volume(grey), stack)


@pytest.mark.parametrize("option", [["--halo", "64"], ["--workers", "2"], ["--scheduler", "tcp://x:1"],
                                    ["--no-qc"], ["--axon-shape", "circle"], ["--tile-size", "64"],
                                    ["--myelin-label", "1"], ["--image-dir", "."], ["--label-suffix", "manual"]])
def test_mtneuro_refuses_axon_and_slide_options(tmp_path, capsys, option):
    folder = tmp_path / "maps"
    folder.mkdir()
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(folder / "slice.png")
    assert run(folder, "-o", tmp_path / "out", "--mtneuro", *option) == 1
    assert f"{option[0]}: not available with --mtneuro" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
