"""Tests of the synthetic myelinated-axon phantoms and their BIDS dataset writer."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage
from skimage.measure import regionprops

from nnunet_ext.phantoms import bids_writer
from nnunet_ext.phantoms import cli as phantoms_cli
from nnunet_ext.phantoms.bids_writer import write_bids_phantom_dataset
from nnunet_ext.phantoms.generator import TRUTH_COLUMNS, generate_phantom
from nnunet_ext.phantoms.geometry import myelin_thickness_for_gratio

ADS_SEM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ads_sem"


def _inner(truth: pd.DataFrame) -> pd.DataFrame:
    return truth[~truth["image_border_touching"]]


def test_same_seed_same_phantom_and_other_seed_differs():
    first = generate_phantom(shape=(96, 128), contrast="SEM", seed=7)
    again = generate_phantom(shape=(96, 128), contrast="SEM", seed=7)
    other = generate_phantom(shape=(96, 128), contrast="SEM", seed=8)
    assert first.image.shape == (96, 128) and first.image.dtype == np.uint8
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.fiber_labels, again.fiber_labels)
    pd.testing.assert_frame_equal(first.truth, again.truth)
    assert not np.array_equal(first.image, other.image)


def test_masks_are_disjoint_and_match_instance_labels():
    phantom = generate_phantom(seed=1)
    assert phantom.axon_mask.dtype == bool and phantom.myelin_mask.dtype == bool
    assert not (phantom.axon_mask & phantom.myelin_mask).any()
    np.testing.assert_array_equal(phantom.axon_mask | phantom.myelin_mask, phantom.fiber_labels > 0)
    assert list(phantom.truth.columns) == list(TRUTH_COLUMNS)
    assert set(np.unique(phantom.fiber_labels)) - {0} == set(phantom.truth["axon_id"])
    # Every fibre has an axon and a myelin sheath (also at the default 0.1 um/px with the thinnest myelin).
    assert (phantom.truth["axon_pixels"] > 0).all() and (phantom.truth["myelin_pixels"] > 0).all()
    label = phantom.axonmyelin_label
    assert set(np.unique(label)) == {0, 127, 255}
    np.testing.assert_array_equal(label == 255, phantom.axon_mask)
    np.testing.assert_array_equal(label == 127, phantom.myelin_mask)


def test_myelin_thickness_gives_the_requested_gratio():
    a = np.array([5.0, 10.0, 8.0])
    b = np.array([5.0, 4.0, 2.0])
    g = np.array([0.6, 0.7, 0.8])
    t = myelin_thickness_for_gratio(a, b, g)
    assert (t > 0).all()
    np.testing.assert_allclose(np.sqrt(a * b) / np.sqrt((a + t) * (b + t)), g, rtol=1e-12)
    # Circle: t = r (1/g - 1).
    np.testing.assert_allclose(t[0], 5.0 * (1 / 0.6 - 1))


def test_truth_table_is_consistent_and_within_requested_ranges():
    phantom = generate_phantom(
        pixel_size_um=0.08, axon_diameter_um=(1.2, 2.5), gratio=(0.6, 0.75), eccentricity=(0.2, 0.6), seed=3
    )
    truth = phantom.truth
    assert len(truth) > 20
    assert truth["axon_diam (um)"].between(1.2, 2.5).all()
    assert truth["gratio"].between(0.6, 0.75).all()
    assert truth["eccentricity"].between(0.2, 0.6).all()
    assert truth["orientation"].between(-math.pi / 2, math.pi / 2).all()
    np.testing.assert_allclose(truth["gratio"], truth["axon_diam (um)"] / truth["fiber_diam (um)"])
    np.testing.assert_allclose(
        truth["myelin_thickness (um)"], (truth["fiber_diam (um)"] - truth["axon_diam (um)"]) / 2
    )
    np.testing.assert_allclose(truth["axon_area (um^2)"], math.pi * (truth["axon_diam (um)"] / 2) ** 2)
    fibre_area = math.pi * (truth["fiber_diam (um)"] / 2) ** 2
    np.testing.assert_allclose(truth["myelin_area (um^2)"], fibre_area - truth["axon_area (um^2)"])
    # A concentric ring of constant thickness is rounder than its axon.
    assert (truth["fiber_eccentricity"] < truth["eccentricity"]).all()


def test_rasterised_masks_match_the_analytic_truth():
    pixel_size = 0.1
    phantom = generate_phantom(pixel_size_um=pixel_size, eccentricity=(0.0, 0.8), seed=4)
    truth = _inner(phantom.truth).set_index("axon_id")
    assert len(truth) > 10
    axon_labels = np.where(phantom.axon_mask, phantom.fiber_labels, 0)
    measured = {region.label: region for region in regionprops(axon_labels)}
    for axon_id, row in truth.iterrows():
        region = measured[axon_id]
        area_px = row["axon_area (um^2)"] / pixel_size**2
        assert region.area == row["axon_pixels"]
        # Axons are >= 10 px across here: the pixel count is within 5% of the analytic area.
        assert abs(region.area - area_px) <= 0.05 * area_px
        assert region.equivalent_diameter_area * pixel_size == pytest.approx(row["axon_diam (um)"], rel=0.03)
        assert region.centroid[1] == pytest.approx(row["x0 (px)"], abs=0.3)
        assert region.centroid[0] == pytest.approx(row["y0 (px)"], abs=0.3)
        if row["eccentricity"] > 0.5:  # orientation is ill-defined for near circles
            difference = (region.orientation - row["orientation"] + math.pi / 2) % math.pi - math.pi / 2
            assert abs(difference) < 0.1
            assert region.eccentricity == pytest.approx(row["eccentricity"], abs=0.05)
        # The fibre's g-ratio measured from pixel counts (equivalent diameters) matches the truth.
        fibre_px = row["axon_pixels"] + row["myelin_pixels"]
        assert math.sqrt(row["axon_pixels"] / fibre_px) == pytest.approx(row["gratio"], abs=0.03)


def test_border_flag_marks_fibres_cut_by_the_image_border():
    phantom = generate_phantom(seed=5)
    labels = phantom.fiber_labels
    on_border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))) - {0}
    flagged = set(phantom.truth.loc[phantom.truth["image_border_touching"], "axon_id"])
    assert on_border and on_border == flagged
    # Fibres away from the border are whole: their rasterised area matches the analytic area.
    inner = _inner(phantom.truth)
    fibre_px = (inner["axon_area (um^2)"] + inner["myelin_area (um^2)"]) / phantom.pixel_size_um**2
    np.testing.assert_allclose(inner["axon_pixels"] + inner["myelin_pixels"], fibre_px, rtol=0.05)


@pytest.mark.parametrize(
    "contrast, order",
    [("TEM", ("axon", "background", "myelin")), ("SEM", ("myelin", "background", "axon")),
     ("BF", ("axon", "background", "myelin"))],
)
def test_contrast_orders_class_intensities(contrast, order):
    phantom = generate_phantom(contrast=contrast, seed=6)
    # Compare class cores so that blur across boundaries does not count.
    cores = {
        "axon": ndimage.binary_erosion(phantom.axon_mask, iterations=2),
        "myelin": ndimage.binary_erosion(phantom.myelin_mask, iterations=1),
        "background": ndimage.binary_erosion(phantom.fiber_labels == 0, iterations=2),
    }
    means = {name: phantom.image[mask].mean() for name, mask in cores.items()}
    assert means[order[0]] > means[order[1]] > means[order[2]], means
    contrast_range = means[order[0]] - means[order[2]]
    assert contrast_range > (40 if contrast != "BF" else 30)


def test_bright_field_is_blurrier_and_has_lower_contrast_than_tem():
    tem = generate_phantom(contrast="TEM", noise=0, seed=2)
    bf = generate_phantom(contrast="BF", noise=0, seed=2)
    np.testing.assert_array_equal(tem.fiber_labels, bf.fiber_labels)  # same geometry for the same seed

    def edge_strength(image):
        return np.abs(ndimage.sobel(image.astype(float), axis=1)).mean()

    assert edge_strength(bf.image) < 0.6 * edge_strength(tem.image)


def _fibre_components(phantom) -> int:
    return int(ndimage.label(phantom.fiber_labels > 0, structure=np.ones((3, 3)))[1])


def test_no_touching_fibres_when_touching_fraction_is_zero():
    phantom = generate_phantom(touching_fraction=0.0, density=0.5, seed=9)
    assert not phantom.truth["touching"].any()
    # Separated fibres: the binary fibre mask has one 8-connected component per fibre.
    assert _fibre_components(phantom) == len(phantom.truth)


def test_touching_fibres_share_a_boundary():
    phantom = generate_phantom(touching_fraction=0.5, seed=9)
    touching = phantom.truth["touching"]
    assert touching.mean() == pytest.approx(0.5, abs=0.12)
    assert _fibre_components(phantom) < len(phantom.truth)
    # A touching fibre's pixels are adjacent to another fibre's pixels.
    for axon_id in phantom.truth.loc[touching, "axon_id"]:
        grown = ndimage.binary_dilation(phantom.fiber_labels == axon_id, structure=np.ones((3, 3)))
        others = set(np.unique(phantom.fiber_labels[grown])) - {0, axon_id}
        assert others


def test_density_and_count_options():
    sparse = generate_phantom(density=0.15, seed=10)
    dense = generate_phantom(density=0.5, seed=10)
    covered = lambda p: (p.fiber_labels > 0).mean()  # noqa: E731
    assert 0.1 < covered(sparse) < 0.2
    assert covered(dense) > 0.38
    assert len(generate_phantom(n_axons=7, seed=10).truth) == 7
    circles = generate_phantom(eccentricity=(0, 0), seed=10).truth
    assert (circles["eccentricity"] == 0).all()


def test_bad_parameters_raise_clear_errors():
    with pytest.raises(ValueError, match="contrast"):
        generate_phantom(contrast="CARS")
    with pytest.raises(ValueError, match="gratio"):
        generate_phantom(gratio=(0.5, 1.2))
    with pytest.raises(ValueError, match="density"):
        generate_phantom(density=0.95)
    with pytest.raises(ValueError, match="pixel_size_um"):
        generate_phantom(pixel_size_um=0)


def test_writer_rejects_bad_options_before_writing(tmp_path):
    with pytest.raises(ValueError, match="unknown phantom option"):
        write_bids_phantom_dataset(tmp_path / "d", densty=0.3, progress=False)
    with pytest.raises(ValueError, match="contrasts"):
        write_bids_phantom_dataset(tmp_path / "d", contrasts=("TEM", "MRI"), progress=False)
    with pytest.raises(ValueError, match="gratio"):  # raised by the first image: nothing is left behind
        write_bids_phantom_dataset(tmp_path / "d", gratio=(0.5, 1.5), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_twenty_small_images_are_fast():
    import time

    start = time.perf_counter()
    for seed in range(20):
        generate_phantom(shape=(256, 256), seed=seed)
    # About 0.6 s on an idle 2-core machine; the bound only catches gross regressions on a busy shared one.
    assert time.perf_counter() - start < 10.0


# ---------------------------------------------------------------------------------------------- BIDS dataset
def _read(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def test_bids_dataset_layout_matches_axondeepseg_conventions(tmp_path):
    out = write_bids_phantom_dataset(
        tmp_path / "phantoms", contrasts=("TEM", "SEM", "BF"), n_subjects=2, samples_per_subject=1,
        shape=(64, 80), pixel_size_um=0.1, seed=0, progress=False,
    )
    for name in ("dataset_description.json", "participants.tsv", "participants.json", "samples.tsv",
                 "samples.json", "derivatives/labels/dataset_description.json"):
        assert (out / name).is_file(), name
    description = json.loads((out / "dataset_description.json").read_text())
    assert {"Name", "BIDSVersion"} <= set(description)
    participants = pd.read_csv(out / "participants.tsv", sep="\t")
    assert list(participants.columns) == ["participant_id", "species"]
    assert list(participants["participant_id"]) == ["sub-01", "sub-02"]
    samples = pd.read_csv(out / "samples.tsv", sep="\t")
    assert list(samples.columns) == ["sample_id", "participant_id", "sample_type"]
    assert samples["sample_id"].is_unique and len(samples) == 6

    images = sorted(out.glob("sub-*/micr/*.png"))
    assert [p.name for p in images[:3]] == ["sub-01_sample-01_TEM.png", "sub-01_sample-02_SEM.png",
                                            "sub-01_sample-03_BF.png"]
    assert len(images) == 6
    for image_path in images:
        stem = image_path.stem
        subject, sample, modality = stem.split("_")
        assert samples.set_index("sample_id").loc[sample, "participant_id"] == subject
        sidecar = json.loads(image_path.with_suffix(".json").read_text())
        assert sidecar["PixelSize"] == [0.1, 0.1] and sidecar["PixelSizeUnits"] == "um"
        image = Image.open(image_path)
        assert image.mode == "L" and image.size == (80, 64)
        labels = out / "derivatives" / "labels" / subject / "micr"
        axon = _read(labels / f"{stem}_seg-axon-manual.png")
        myelin = _read(labels / f"{stem}_seg-myelin-manual.png")
        combined = _read(labels / f"{stem}_seg-axonmyelin-manual.png")
        assert set(np.unique(axon)) <= {0, 255} and set(np.unique(myelin)) <= {0, 255}
        assert set(np.unique(combined)) <= {0, 127, 255} and 255 in combined and 127 in combined
        np.testing.assert_array_equal(combined == 255, axon == 255)
        np.testing.assert_array_equal(combined == 127, myelin == 255)

    truth = pd.read_csv(out / "derivatives" / "truth" / "phantom_truth.csv")
    assert list(truth.columns[:5]) == ["subject", "sample", "image", "modality", "pixel_size (um)"]
    assert list(truth.columns[5:]) == list(TRUTH_COLUMNS)
    assert set(truth["image"]) == {p.stem for p in images}
    # The table's axons are the ones in the masks.
    for stem, rows in truth.groupby("image"):
        subject = stem.split("_")[0]
        axon = _read(out / "derivatives" / "labels" / subject / "micr" / f"{stem}_seg-axon-manual.png") > 0
        assert int(rows["axon_pixels"].sum()) == int(axon.sum())
    assert not list(tmp_path.glob(".phantoms.*"))  # no staging folder left behind


@pytest.mark.skipif(not ADS_SEM.is_dir(), reason="../shared/data/ads_sem is absent")
def test_layout_uses_the_same_file_patterns_as_ads_sem(tmp_path):
    out = write_bids_phantom_dataset(tmp_path / "p", contrasts=("SEM",), n_subjects=1, samples_per_subject=1,
                                     shape=(48, 48), progress=False)

    def patterns(root: Path) -> set[str]:
        found = set()
        for path in root.rglob("*"):
            if path.is_file() and path.suffix in {".png", ".json", ".tsv"}:
                parts = path.relative_to(root).parts
                generic = [p if not p.startswith("sub-") else "sub-X" for p in parts[:-1]]
                name = path.name
                for entity in ("sub", "sample"):
                    name = "_".join(f"{entity}-X" if piece.startswith(f"{entity}-") else piece
                                    for piece in name.split("_"))
                found.add("/".join(generic + [name]))
        return found

    ours, theirs = patterns(out), patterns(ADS_SEM)
    theirs.discard("sub-X/micr/sub-X_SEM.json")  # ads_sem's subject-level sidecar: we write sample-level ones
    assert theirs <= ours, theirs - ours
    sidecar_keys = {k for p in ADS_SEM.glob("sub-*/micr/*.json") for k in json.loads(p.read_text())}
    ours_keys = {k for p in out.glob("sub-*/micr/*.json") for k in json.loads(p.read_text())}
    assert {"PixelSize", "PixelSizeUnits"} <= sidecar_keys & ours_keys
    assert list(pd.read_csv(out / "samples.tsv", sep="\t").columns) == list(
        pd.read_csv(ADS_SEM / "samples.tsv", sep="\t").columns
    )
    assert list(pd.read_csv(out / "participants.tsv", sep="\t").columns) == list(
        pd.read_csv(ADS_SEM / "participants.tsv", sep="\t").columns
    )


def test_dataset_is_reproducible_and_pixel_size_jitter_is_optional(tmp_path):
    kwargs = dict(contrasts=("TEM",), n_subjects=1, samples_per_subject=3, shape=(48, 48), progress=False, seed=3)
    a = write_bids_phantom_dataset(tmp_path / "a", **kwargs)
    b = write_bids_phantom_dataset(tmp_path / "b", **kwargs)
    for path in a.rglob("*.png"):
        np.testing.assert_array_equal(_read(path), _read(b / path.relative_to(a)))
    jittered = write_bids_phantom_dataset(tmp_path / "c", pixel_size_jitter=0.2, **kwargs)
    sizes = [json.loads(p.read_text())["PixelSize"][0] for p in sorted(jittered.glob("sub-*/micr/*.json"))]
    assert len(set(sizes)) == 3 and all(0.08 <= s <= 0.12 for s in sizes)
    truth = pd.read_csv(jittered / "derivatives" / "truth" / "phantom_truth.csv")
    assert sorted(truth["pixel_size (um)"].unique()) == sorted(sizes)


def test_refuses_to_overwrite_unless_asked(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    (target / "precious.txt").write_text("user data")
    kwargs = dict(contrasts=("TEM",), n_subjects=1, samples_per_subject=1, shape=(32, 32), progress=False)
    with pytest.raises(FileExistsError, match="not empty"):
        write_bids_phantom_dataset(target, **kwargs)
    assert (target / "precious.txt").read_text() == "user data"
    write_bids_phantom_dataset(target, overwrite=True, **kwargs)
    assert not (target / "precious.txt").exists()
    assert (target / "dataset_description.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    # An existing empty folder is fine without overwrite.
    empty = tmp_path / "empty"
    empty.mkdir()
    write_bids_phantom_dataset(empty, **kwargs)
    assert (empty / "participants.tsv").is_file()


def test_failure_leaves_no_half_written_dataset(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = bids_writer.generate_phantom

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return original(*args, **kwargs)

    monkeypatch.setattr(bids_writer, "generate_phantom", failing)
    target = tmp_path / "data"
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_bids_phantom_dataset(target, contrasts=("TEM",), n_subjects=2, samples_per_subject=2,
                                   shape=(32, 32), progress=False)
    assert list(tmp_path.iterdir()) == []

    # With overwrite, a failure keeps the previous dataset intact.
    target.mkdir()
    (target / "old.txt").write_text("old")
    calls["n"] = 0
    with pytest.raises(RuntimeError):
        write_bids_phantom_dataset(target, contrasts=("TEM",), n_subjects=2, samples_per_subject=2,
                                   shape=(32, 32), progress=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert (target / "old.txt").read_text() == "old"


def test_cli_writes_dataset_and_preview(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    phantoms_cli.register_cli(parser.add_subparsers(dest="command"))
    out, preview = tmp_path / "cli", tmp_path / "preview.png"
    args = parser.parse_args(
        ["phantoms", str(out), "--contrasts", "tem", "BF", "--subjects", "2", "--samples-per-subject", "1",
         "--size", "40", "56", "--pixel-size", "0.12", "--eccentricity", "0", "0", "--touching", "0",
         "--seed", "4", "--preview", str(preview)]
    )
    assert args.func(args) == 0
    assert "Wrote 4 images" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("sub-*/micr/*.png")) == [
        "sub-01_sample-01_TEM.png", "sub-01_sample-02_BF.png", "sub-02_sample-03_TEM.png", "sub-02_sample-04_BF.png"
    ]
    assert Image.open(out / "sub-01/micr/sub-01_sample-01_TEM.png").size == (56, 40)
    truth = pd.read_csv(out / "derivatives/truth/phantom_truth.csv")
    assert (truth["eccentricity"] == 0).all() and not truth["touching"].any()
    assert preview.is_file() and Image.open(preview).size[0] > 100
    with pytest.raises(FileExistsError):
        args.func(parser.parse_args(["phantoms", str(out)]))
    with pytest.raises(SystemExit):
        parser.parse_args(["phantoms", str(out), "--contrasts", "CT"])
