"""``nnunet-ext segment``: inputs (image, folder, BIDS, slides), AxonDeepSeg-named outputs, existing-output policy,
and the chained morphometrics. Model tests reuse the session's ``smoke_trained_model``."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nnunet_ext.phantoms.bids_writer import write_bids_phantom_dataset
from nnunet_ext.phantoms.generator import generate_phantom
from nnunet_ext.segmentation.segment_files import discover_segmentation_inputs, write_ads_masks
from nnunet_ext.segmentation.cli import register_cli


def run_cli(*argv: str) -> int:
    """``nnunet-ext segment ...`` through our own parser (as nnunet_ext.cli builds it)."""
    parser = argparse.ArgumentParser(prog="nnunet-ext")
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["segment", *map(str, argv)])
    return args.func(args)


def save_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def test_discover_folder_skips_masks_and_routes_large_images_to_slides(tmp_path):
    import tifffile
    import zarr

    image = generate_phantom((64, 80), seed=1).image
    save_png(tmp_path / "a.png", image)
    save_png(tmp_path / "a_seg-axon.png", image)  # an AxonDeepSeg mask beside its image: not an input
    save_png(tmp_path / "a_seg-axonmyelin.png", image)
    tifffile.imwrite(tmp_path / "b.tif", np.tile(image, (2, 2)))
    save_png(tmp_path / "big.png", np.tile(image, (3, 3)))
    zarr.open_group(str(tmp_path / "c.zarr"), mode="w").create_array("0", data=image)
    (tmp_path / "pixel_size_in_micrometer.txt").write_text("0.05\n")
    items = {item.name: item for item in discover_segmentation_inputs(tmp_path, max_image_pixels=128 * 160)}
    assert sorted(items) == ["a", "b", "big", "c"]
    assert [items[n].slide for n in ("a", "b", "big", "c")] == [False, False, True, True]
    assert items["b"].shape == (128, 160) and items["c"].shape == (64, 80)
    assert {item.pixel_size_um for item in items.values()} == {0.05}
    assert discover_segmentation_inputs(tmp_path / "a.png", pixel_size_um=0.2)[0].pixel_size_source == "option"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        discover_segmentation_inputs(tmp_path / "empty")
    with pytest.raises(ValueError, match="not an image"):
        discover_segmentation_inputs(tmp_path / "pixel_size_in_micrometer.txt")


def test_discover_bids_keeps_subject_folders_and_sidecar_pixel_sizes(tmp_path):
    root = write_bids_phantom_dataset(tmp_path / "bids", contrasts=("SEM",), n_subjects=2, samples_per_subject=1,
                                      shape=(48, 48), pixel_size_um=0.08, seed=2, progress=False)
    items = discover_segmentation_inputs(root)
    assert [str(item.out_subdir) for item in items] == ["sub-01/micr", "sub-02/micr"]
    assert all(item.pixel_size_um == pytest.approx(0.08) and item.pixel_size_source == "BIDS sidecar"
               for item in items)


def test_ads_masks_follow_axondeepseg_values(tmp_path):
    labels = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    paths = write_ads_masks(labels, tmp_path, "img", myelin_value=1, axon_value=2)
    assert [p.name for p in paths] == ["img_seg-axon.png", "img_seg-myelin.png", "img_seg-axonmyelin.png"]
    axon, myelin, both = (np.array(Image.open(p)) for p in paths)
    np.testing.assert_array_equal(axon, [[0, 0, 255], [255, 0, 0]])
    np.testing.assert_array_equal(myelin, [[0, 255, 0], [0, 255, 0]])
    np.testing.assert_array_equal(both, [[0, 127, 255], [255, 127, 0]])
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_missing_model_is_a_clear_error(tmp_path):
    save_png(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        run_cli("-i", tmp_path / "a.png", "-o", tmp_path / "out", "-m", tmp_path / "nope")
    (tmp_path / "model").mkdir()
    with pytest.raises(FileNotFoundError, match="plans.json"):
        run_cli("-i", tmp_path / "a.png", "-o", tmp_path / "out", "-m", tmp_path / "model")


@pytest.mark.slow
def test_segment_bids_dataset_with_morphometrics(smoke_trained_model, tmp_path, capsys):
    from nnunet_ext.io.images import read_grey_image
    from nnunet_ext.segmentation.predictor import ModelSpec, cached_predictor, predict_image

    model = Path(smoke_trained_model).parent
    root = write_bids_phantom_dataset(tmp_path / "bids", contrasts=("TEM",), n_subjects=2, samples_per_subject=1,
                                      shape=(96, 96), pixel_size_um=0.1, seed=4, progress=False)
    out = tmp_path / "out"
    assert run_cli("-i", root, "-o", out, "-m", model, "--threads", "1", "--morphometrics") == 0
    printed = capsys.readouterr().out
    assert "Segmented 2 input(s)" in printed and "morphometrics" in printed
    predictor = cached_predictor(ModelSpec(str(model), threads=1))
    images = sorted(root.glob("sub-*/micr/*_TEM.png"))
    assert len(images) == 2
    for image in images:
        stem, folder = image.name[:-4], out / image.parent.relative_to(root)
        labels = np.array(Image.open(folder / f"{stem}.png"))
        expected = predict_image(predictor, read_grey_image(image))
        np.testing.assert_array_equal(labels, expected)
        assert set(np.unique(labels)) <= {0, 1, 2} and (labels == 2).any() and (labels == 1).any()
        axon = np.array(Image.open(folder / f"{stem}_seg-axon.png"))
        myelin = np.array(Image.open(folder / f"{stem}_seg-myelin.png"))
        both = np.array(Image.open(folder / f"{stem}_seg-axonmyelin.png"))
        np.testing.assert_array_equal(axon, np.where(labels == 2, 255, 0))
        np.testing.assert_array_equal(myelin, np.where(labels == 1, 255, 0))
        np.testing.assert_array_equal(both, np.select([labels == 2, labels == 1], [255, 127], 0))
    aggregate = pd.read_csv(out / "morphometrics" / "aggregate_morphometrics.csv")
    assert list(aggregate["image"]) == [image.name[:-4] for image in images]
    assert (aggregate["pixel_size_um"] == 0.1).all() and (aggregate["pixel_size_source"] == "BIDS sidecar").all()
    assert (out / "morphometrics" / f"{images[0].name[:-4]}_qc.png").is_file()

    with pytest.raises(FileExistsError, match="--overwrite"):  # never overwrite without being asked
        run_cli("-i", root, "-o", out, "-m", model, "--threads", "1")
    assert run_cli("-i", root, "-o", out, "-m", model, "--threads", "1", "--continue") == 0
    assert "skipped 2 input(s)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="overwrite an input"):
        run_cli("-i", root / "sub-01" / "micr", "-o", root / "sub-01" / "micr", "-m", model, "--overwrite")


@pytest.mark.slow
def test_large_image_goes_block_wise_with_slide_morphometrics(smoke_trained_model, tmp_path, capsys):
    from nnunet_ext.segmentation.predictor import ModelSpec, cached_predictor, predict_image
    from nnunet_ext.io.slides import read_labels

    model = Path(smoke_trained_model).parent
    image = generate_phantom((120, 150), contrast="TEM", seed=8).image
    save_png(tmp_path / "large.png", image)
    (tmp_path / "pixel_size_in_micrometer.txt").write_text("0.1")
    out = tmp_path / "out"
    assert run_cli("-i", tmp_path / "large.png", "-o", out, "-m", model / "fold_0", "--threads", "1",
                   "--max-image-pixels", 10000, "--block-size", 64, "--morphometrics") == 0
    assert "6 blocks" in capsys.readouterr().out
    labels = read_labels(out / "large_seg.zarr")[:]
    np.testing.assert_array_equal(labels, predict_image(cached_predictor(ModelSpec(str(model), threads=1)), image))
    overview = np.array(Image.open(out / "large_seg-overview.png"))
    np.testing.assert_array_equal(overview, np.select([labels == 2, labels == 1], [255, 127], 0))
    per_axon = pd.read_csv(out / "morphometrics" / "large" / "axon_morphometrics.csv")
    assert len(per_axon) > 0 and (per_axon["image"] == "large").all()  # run_slide names it after the input image
