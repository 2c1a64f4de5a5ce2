"""Edge cases where our morphometrics part from AxonDeepSeg 5.5 (issue 14): each test fails on the old behaviour.

1. the per-axon ``note`` flags exactly the rows whose values differ from ADS's (re-seeded axons and their
   neighbours), 2. the aggregate estimator columns are named for what they are and ADS's own aggregate is
   reproduced with its 4-connected axons, 4. ADS's single-file 0/128/255 mask, 5. the warning about anti-aliased
   masks says what ADS's CLI does, 6. pixel-size errors and sources name the image's sidecar.
(3, the seed-tie bound, is documented in docs/morphometrics.md and measured by benchmarks/bench_morphometrics.py.)
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nnunet_ext.morphometrics import ADS_COLUMNS, aggregate_morphometrics, axon_morphometrics
from nnunet_ext.morphometrics.axon import NOTE_RESEED_NEIGHBOUR, NOTE_RESEEDED

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _crescent(shape, centre, filled=True, offset=6):
    """A crescent axon in a myelin ring; its hole (where its centroid lies) is myelin when ``filled``, else
    background."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    outer = np.hypot(yy - centre[0], xx - centre[1])
    inner = np.hypot(yy - centre[0], xx - centre[1] - offset)
    axon = (outer < 20) & (inner >= 17)
    myelin = (outer < 24) & ~axon if filled else (outer < 24) & ~(outer < 20)
    return axon, myelin


def _differs_from(ours: pd.DataFrame, reference: pd.DataFrame) -> np.ndarray:
    bad = np.zeros(len(ours), bool)
    for column in ADS_COLUMNS:
        a, b = ours[column].to_numpy(float), reference[column].to_numpy(float)
        bad |= ~(np.isclose(a, b, rtol=1e-9, atol=1e-12) | (np.isnan(a) & np.isnan(b)))
    return bad


def test_note_flags_exactly_the_rows_that_differ_from_ads():
    """Item 1: a re-seeded axon alone in its component, centroid in its own myelin, equals ADS (no note); a
    re-seeded axon whose centroid is background (ADS: NaN) and its neighbour, which takes the axon's fibre in ADS,
    are flagged (before: the first was flagged, the neighbour not)."""
    from nnunet_ext.morphometrics.reference import ads_axon_morphometrics

    shape = (80, 170)
    alone = _crescent(shape, (40, 40))
    pair = _crescent(shape, (40, 110), filled=False)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    neighbour = np.hypot(yy - 40, xx - 142)
    axon = alone[0] | pair[0] | (neighbour < 8)
    myelin = (alone[1] | pair[1] | (neighbour < 12)) & ~axon
    centroids = [np.argwhere(a).mean(axis=0).astype(int) for a in (alone[0], pair[0])]
    assert myelin[tuple(centroids[0])] and not (axon | myelin)[tuple(centroids[1])]
    ours = axon_morphometrics(axon, myelin, 0.1)
    reference = ads_axon_morphometrics(axon, myelin, 0.1)
    differs = _differs_from(ours, reference)
    flagged = ours["note"].str.len().to_numpy() > 0
    np.testing.assert_array_equal(flagged, differs)
    assert list(differs) == [False, True, True]  # the lone crescent equals ADS; the pair does not
    assert ours["note"].tolist() == ["", NOTE_RESEEDED, NOTE_RESEED_NEIGHBOUR]


def test_estimator_columns_renamed_and_ads_aggregate_uses_4_connected_axons():
    """Item 2: the columns ADS's aggregate would give differ where axons touch diagonally (4- vs 8-connected); ours
    are named *_est, and ads_aggregate_morphometrics reproduces ADS's figures with its connectivity."""
    from nnunet_ext.morphometrics.aggregate_metrics import AGGREGATE_KEYS, ads_aggregate_morphometrics

    axon = np.zeros((60, 60), bool)
    myelin = np.zeros((60, 60), bool)
    axon[10:20, 10:20] = True
    axon[20:30, 20:30] = True  # touches the first only at a corner: one 8-connected axon, two 4-connected
    axon[40:50, 40:50] = True
    myelin[5:55, 5:55] = True
    myelin &= ~axon
    ours = aggregate_morphometrics(axon, myelin, 0.5, per_axon=axon_morphometrics(axon, myelin, 0.5))
    ads = ads_aggregate_morphometrics(axon, myelin, 0.5)
    assert "mean_myelin_diam_ads (um)" not in AGGREGATE_KEYS and "mean_myelin_diam_est (um)" in AGGREGATE_KEYS
    assert ours["axon_count"] == 2
    area_mm2 = 60 * 60 * 0.25 / 1e6
    assert ads["axon_density_mm2"] == pytest.approx(3 / area_mm2)  # ADS's aggregate: three 4-connected axons
    assert ads["mean_axon_diam"] == pytest.approx(np.sqrt(4 * 100 / np.pi) * 0.5)
    assert ads["gratio_aggr"] == pytest.approx(ours["gratio_aggregate"])
    assert ads["mean_myelin_diam"] == pytest.approx(ads["mean_axon_diam"] / ads["gratio_aggr"])
    assert ours["mean_myelin_diam_est (um)"] == pytest.approx(ours["mean_axon_diam (um)"] / ours["gratio_aggregate"])
    assert ours["mean_myelin_diam_est (um)"] != pytest.approx(ads["mean_myelin_diam"])


@pytest.mark.skipif(not (DATA / "ads_demo").is_dir(), reason="needs ../shared/data/ads_demo")
def test_ads_aggregate_on_ads_demo_equals_its_published_figures():
    from nnunet_ext.morphometrics.aggregate_metrics import ads_aggregate_morphometrics

    axon = np.asarray(Image.open(DATA / "ads_demo" / "image_seg-axon.png").convert("L")) > 0
    myelin = np.asarray(Image.open(DATA / "ads_demo" / "image_seg-myelin.png").convert("L")) > 0
    ads = ads_aggregate_morphometrics(axon, myelin, 0.07)
    assert ads["avf"] == pytest.approx(0.30040, abs=5e-6) and ads["mvf"] == pytest.approx(0.34386, abs=5e-6)
    assert ads["gratio_aggr"] == pytest.approx(0.68284, abs=5e-6)
    assert ads["axon_density_mm2"] == pytest.approx(36008.7, abs=0.05)


def _write(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def _fibre_scene():
    yy, xx = np.mgrid[:64, :64]
    distance = np.hypot(yy - 32, xx - 32)
    return distance < 8, (distance >= 8) & (distance < 12)


def test_ads_single_file_mask_128_myelin_255_axon(tmp_path):
    """Item 4: ADS's 0/128/255 mask.png is read as 128 myelin, 255 axon (was: 'unexpected label values')."""
    from nnunet_ext.morphometrics.measure_files import discover_inputs, load_masks

    axon, myelin = _fibre_scene()
    path = _write(tmp_path / "mask.png", np.where(axon, 255, np.where(myelin, 128, 0)))
    item = discover_inputs(path, pixel_size_um=0.1)[0]
    read_axon, read_myelin = load_masks(item)
    np.testing.assert_array_equal(read_axon, axon)
    np.testing.assert_array_equal(read_myelin, myelin)
    other = _write(tmp_path / "other.png", np.where(axon, 200, np.where(myelin, 100, 0)))
    with pytest.raises(ValueError, match="--myelin-label V --axon-label V"):
        load_masks(discover_inputs(other, pixel_size_um=0.1)[0])
    np.testing.assert_array_equal(load_masks(discover_inputs(other, pixel_size_um=0.1)[0], 100, 200)[0], axon)


def test_anti_aliased_axon_mask_warning_says_what_ads_counts(tmp_path):
    """Item 5: ADS's CLI labels an 8-bit axon mask by grey value (skimage.measure.label), so a grey pixel beside an
    axon is one more axon there; the warning says so and how many (it claimed ADS counted them as we do)."""
    from skimage import measure

    from nnunet_ext.morphometrics.axon import read_mask_file

    axon, _ = _fibre_scene()
    grey = np.where(axon, 255, 0).astype(np.uint8)
    grey[32, 40] = 130  # an anti-aliased pixel on the axon's edge
    path = _write(tmp_path / "x_seg-axon.png", grey)
    assert measure.label(grey, connectivity=2).max() == 2 and measure.label(grey > 0, connectivity=2).max() == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mask = read_mask_file(path, "axon")
    text = " ".join(str(w.message) for w in caught)
    assert mask[32, 40] and "as AxonDeepSeg does" not in text
    assert "counts 1 axon(s) more" in text and "labels each grey value separately" in text


@pytest.mark.skipif(not (DATA / "ads_sem").is_dir(), reason="needs ../shared/data/ads_sem")
def test_sub_rat2_axon_count_difference_is_the_one_ads_finds():
    from nnunet_ext.morphometrics.axon import ads_extra_axons
    from nnunet_ext.io.images import read_image_2d

    path = DATA / "ads_sem/derivatives/labels/sub-rat2/micr/sub-rat2_sample-data5_SEM_seg-axon-manual.png"
    assert ads_extra_axons(read_image_2d(path)) == 1  # ADS 364 axons, 363 here


def test_missing_pixel_size_names_the_image_sidecar(tmp_path):
    """Item 6: for an ADS mask pair the error suggests the image's sidecar <stem>.json (was <stem>_seg-axon.json),
    the image's sidecar is read, and pixel_size_source names the file."""
    from nnunet_ext.morphometrics.measure_files import discover_inputs

    axon, myelin = _fibre_scene()
    _write(tmp_path / "image_seg-axon.png", axon * 255)
    _write(tmp_path / "image_seg-myelin.png", myelin * 255)
    with pytest.raises(ValueError, match=r"image\.json") as error:
        discover_inputs(tmp_path / "image_seg-axon.png")
    assert "image_seg-axon.json" not in str(error.value)
    (tmp_path / "image.json").write_text(json.dumps({"PixelSize": [0.2, 0.2], "PixelSizeUnits": "um"}))
    item = discover_inputs(tmp_path / "image_seg-axon.png")[0]
    assert item.pixel_size_um == 0.2 and item.pixel_size_source == str(tmp_path / "image.json")


@pytest.mark.skipif(not (DATA / "ads_sem").is_dir(), reason="needs ../shared/data/ads_sem")
def test_bids_pixel_size_source_names_the_sidecar():
    from nnunet_ext.morphometrics.measure_files import discover_inputs

    items = {item.name: item for item in discover_inputs(DATA / "ads_sem")}
    assert items["sub-rat3_sample-data9_SEM"].pixel_size_source.endswith("sub-rat3_SEM.json")  # inherited
    assert items["sub-rat1_sample-data1_SEM"].pixel_size_source.endswith("sub-rat1_sample-data1_SEM.json")


# --- the kernels compiled ahead of time (issue 14, cold start) -------------------------------------------------------

def test_kernel_facade_equals_jit_kernels_and_falls_back_for_other_types():
    """The kernels the package calls (ahead-of-time compiled when built) give the JIT kernels' results, and
    arguments of other types or layouts go to the JIT kernels instead of failing."""
    from nnunet_ext.morphometrics import _kernels, kernels

    rng = np.random.default_rng(3)
    axon = rng.random((90, 120)) < 0.45
    myelin = (rng.random((90, 120)) < 0.5) & ~axon
    labels, n = kernels.label_axons(axon)
    jit_labels, jit_n = _kernels.label_axons(axon)
    assert n == jit_n and np.array_equal(labels, jit_labels)
    for ours, theirs in zip(kernels.label_stats(labels, n, 0, 0), _kernels.label_stats(labels, n, 0, 0)):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(kernels.label_perimeter(labels, n, kernels.PERIMETER_WEIGHTS),
                                  _kernels.label_perimeter(labels, n, _kernels._PERIMETER_WEIGHTS))
    components, m = kernels.mask_components(axon, myelin)
    seeds = np.sort(rng.choice(axon.size, 20, replace=False)).astype(np.int64)
    ids = np.arange(1, 21, dtype=np.int32)
    empty = np.zeros((0, 0), np.int32)
    np.testing.assert_array_equal(kernels.fibres_from_components(components, m, axon, seeds, ids, empty),
                                  _kernels.fibres_from_components(components, m, axon, seeds, ids, empty))
    strided = np.zeros((90, 240), bool)
    strided[:, ::2] = axon  # not C-contiguous: not the compiled signature
    np.testing.assert_array_equal(kernels.squared_edt(strided[:, ::2]), _kernels.squared_edt(axon))


def test_stale_ahead_of_time_kernels_are_not_used(tmp_path, monkeypatch):
    from nnunet_ext.morphometrics import kernels

    record = tmp_path / "_kernels_aot.json"
    record.write_text(json.dumps({"source_sha256": "0" * 64}))
    monkeypatch.setattr(kernels, "AOT_RECORD", record)
    assert kernels._load_aot() is None
    monkeypatch.setenv("NNUNET_EXT_JIT_KERNELS", "1")
    assert kernels._load_aot() is None
