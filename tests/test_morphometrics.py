"""Per-axon and aggregate morphometrics: AxonDeepSeg 5.5 equality, deliberate differences, bad input."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from nnunet_ext.morphometrics import (
    ADS_COLUMNS,
    AGGREGATE_KEYS,
    COLUMNS,
    aggregate_morphometrics,
    axon_morphometrics,
    masks_from_label_image,
)
from nnunet_ext.morphometrics import _kernels
from nnunet_ext.morphometrics.axon import NOTE_NO_MYELIN, NOTE_RESEEDED, NOTE_ZERO_FIBRE
from nnunet_ext.morphometrics.reference import ads_axon_morphometrics

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ADS_DEMO = DATA / "ads_demo"
ANGLE_COLUMNS = ("orientation", "fiber_orientation")
MYELIN_COLUMNS = ("gratio", "myelin_thickness (um)", "myelin_area (um^2)", "axonmyelin_area (um^2)",
                  "axonmyelin_perimeter (um)")


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        array = np.array(image)
    return (array[..., 0] if array.ndim == 3 else array) > 127


@pytest.fixture(scope="module")
def demo_masks():
    if not ADS_DEMO.is_dir():
        pytest.skip(f"{ADS_DEMO} not found")
    return _read_mask(ADS_DEMO / "image_seg-axon.png"), _read_mask(ADS_DEMO / "image_seg-myelin.png")


def synthetic_fibres(shape=(120, 150), n=40, seed=0):
    """Random elliptic fibres (axon + myelin ring) that may touch through their myelin and cross the border."""
    rng = np.random.default_rng(seed)
    height, width = shape
    yy, xx = np.mgrid[:height, :width]
    axon = np.zeros(shape, bool)
    myelin = np.zeros(shape, bool)
    for _ in range(n):
        cy, cx = rng.uniform(-5, height + 5), rng.uniform(-5, width + 5)
        radius, thickness = rng.uniform(1.5, 9), rng.uniform(0, 5)
        elongation, angle = rng.uniform(0.6, 1.0), rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dy * np.cos(angle) + dx * np.sin(angle)
        v = -dy * np.sin(angle) + dx * np.cos(angle)
        rho = np.hypot(u / elongation, v)
        if axon[rho < radius + thickness].any():
            continue
        myelin |= rho < radius + thickness
        axon |= rho < radius
    return axon, myelin & ~axon


def assert_same_rows(ours: pd.DataFrame, reference: pd.DataFrame, columns=ADS_COLUMNS, rtol=1e-6):
    """Every value within rtol (relative) of the reference; axis orientations compared modulo pi."""
    assert len(ours) == len(reference)
    for column in columns:
        a = ours[column].to_numpy(dtype=float)
        b = reference[column].to_numpy(dtype=float)
        if column in ANGLE_COLUMNS:  # an axis at +pi/2 is the axis at -pi/2
            a = np.where(np.isclose(np.abs(a), np.pi / 2, atol=1e-12), np.pi / 2, a)
            b = np.where(np.isclose(np.abs(b), np.pi / 2, atol=1e-12), np.pi / 2, b)
        same = np.isclose(a, b, rtol=rtol, atol=1e-12) | (np.isnan(a) & np.isnan(b))
        assert same.all(), f"{column}: rows {np.flatnonzero(~same)[:10]} differ: {a[~same][:5]} vs {b[~same][:5]}"


@pytest.mark.parametrize("axon_shape", ["circle", "ellipse"])
def test_equals_axondeepseg_reference_csv(demo_masks, axon_shape):
    axon, myelin = demo_masks
    ours = axon_morphometrics(axon, myelin, 0.07, axon_shape=axon_shape, image_name="demo")
    reference = pd.read_csv(ADS_DEMO / f"demo_SEM_test_demo_files_axon_morphometrics_{axon_shape}.csv", index_col=0)
    assert list(ours.columns) == COLUMNS
    assert [c for c in ours.columns if c in reference.columns] == list(reference.columns)
    # match rows by centroid (they also come in the same order)
    distance, index = cKDTree(reference[["x0 (px)", "y0 (px)"]]).query(ours[["x0 (px)", "y0 (px)"]])
    assert distance.max() == 0 and len(set(index)) == len(reference) == 298
    matched = reference.iloc[index].reset_index(drop=True)
    assert_same_rows(ours, matched)
    for column in ADS_COLUMNS:  # strict: relative difference <= 1e-6, no modulo-pi allowance
        a, b = ours[column].to_numpy(float), matched[column].to_numpy(float)
        assert np.all(np.abs(a - b) <= 1e-6 * np.abs(b) + 1e-15), column
    assert (ours["image"] == "demo").all()
    assert ours["axon_id"].tolist() == list(range(1, 299))
    np.testing.assert_allclose(ours["fiber_diam (um)"],
                               ours["axon_diam (um)"] + 2 * ours["myelin_thickness (um)"], rtol=1e-12)
    # every invalid g-ratio is explained (ellipse: a one-pixel-wide line axon has minor axis 0, g-ratio 0)
    valid = ours["gratio_valid"]
    assert (ours.loc[~valid, "note"] != "").all() and (ours.loc[valid, "note"] == "").all()
    assert valid.sum() == (298 if axon_shape == "circle" else 297)


def test_aggregate_equals_axondeepseg_figures(demo_masks):
    axon, myelin = demo_masks
    per_axon = axon_morphometrics(axon, myelin, 0.07, image_name="demo")
    result = aggregate_morphometrics(axon, myelin, 0.07, per_axon=per_axon)
    assert list(result) == AGGREGATE_KEYS
    assert result["avf"] == pytest.approx(0.30040, abs=5e-6)
    assert result["mvf"] == pytest.approx(0.34386, abs=5e-6)
    assert result["gratio_aggregate"] == pytest.approx(0.68284, abs=5e-6)
    assert result["axon_density (per mm^2)"] == pytest.approx(36008.7, abs=0.05)
    assert result["axon_count"] == 298 and result["border_touching_count"] == 28
    assert result["image"] == "demo" and result["note"] == ""
    assert result["mean_axon_diam (um)"] == pytest.approx(per_axon["axon_diam (um)"].mean())
    assert result["std_axon_diam (um)"] == pytest.approx(per_axon["axon_diam (um)"].std())
    assert result["mean_myelin_thickness (um)"] == pytest.approx(per_axon["myelin_thickness (um)"].mean())
    assert result["invalid_gratio_count"] == 0 and result["invalid_gratio_fraction"] == 0
    # ADS's estimate: mean fibre diameter = mean axon diameter / aggregate g-ratio
    assert result["mean_myelin_diam_est (um)"] == pytest.approx(result["mean_axon_diam (um)"]
                                                                / result["gratio_aggregate"])
    # computing the per-axon table inside gives the same result
    assert aggregate_morphometrics(axon, myelin, 0.07)["axon_count"] == 298


def test_aggregate_within_roi(demo_masks):
    axon, myelin = demo_masks
    per_axon = axon_morphometrics(axon, myelin, 0.07)
    roi = np.zeros(axon.shape, bool)
    roi[:, : axon.shape[1] // 2] = True
    result = aggregate_morphometrics(axon, myelin, 0.07, per_axon=per_axon, roi_mask=roi)
    inside = np.floor(per_axon["x0 (px)"]) < axon.shape[1] // 2
    assert result["axon_count"] == inside.sum()
    assert result["avf"] == pytest.approx(axon[roi].mean())
    assert result["mvf"] == pytest.approx(myelin[roi].mean())
    assert result["area (mm^2)"] == pytest.approx(roi.sum() * 0.07 ** 2 / 1e6)
    assert result["mean_axon_diam (um)"] == pytest.approx(per_axon.loc[inside, "axon_diam (um)"].mean())
    empty = aggregate_morphometrics(axon, myelin, 0.07, per_axon=per_axon, roi_mask=np.zeros_like(roi))
    assert empty["axon_count"] == 0 and math.isnan(empty["avf"]) and "empty region" in empty["note"]
    with pytest.raises(ValueError, match="ROI mask"):
        aggregate_morphometrics(axon, myelin, 0.07, per_axon=per_axon, roi_mask=roi[:10])


def test_label_image_gives_same_masks(demo_masks):
    from nnunet_ext.io.bids import read_label_image

    axon, myelin = demo_masks
    label = read_label_image(ADS_DEMO / "image_seg-axonmyelin.png")  # 0/127/255 -> 0/1/2
    from_label = masks_from_label_image(label)
    np.testing.assert_array_equal(from_label[0], axon)
    np.testing.assert_array_equal(from_label[1], myelin)
    swapped = masks_from_label_image(np.where(label == 0, 0, 3 - label), myelin_label=2, axon_label=1)
    np.testing.assert_array_equal(swapped[0], axon)
    with pytest.raises(ValueError, match="differ"):
        masks_from_label_image(label, myelin_label=2, axon_label=2)
    with pytest.raises(ValueError, match="2D"):
        masks_from_label_image(label[None])


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("axon_shape", ["circle", "ellipse"])
def test_equals_skimage_replica_of_axondeepseg(seed, axon_shape):
    """Same numbers as ADS's algorithm written with scikit-image, except the documented fixes."""
    axon, myelin = synthetic_fibres(seed=seed)
    ours = axon_morphometrics(axon, myelin, 0.1, axon_shape=axon_shape)
    reference = ads_axon_morphometrics(axon, myelin, 0.1, axon_shape=axon_shape)
    if (ours["note"] == NOTE_RESEEDED).any():
        pytest.skip("covered by test_axon_with_centroid_outside_itself")
    zero_fibre = (ours["note"] == NOTE_ZERO_FIBRE).to_numpy()  # covered by test_line_shaped_fibre
    assert_same_rows(ours[~zero_fibre], reference[~zero_fibre], rtol=1e-9)
    assert_same_rows(ours[zero_fibre], reference[zero_fibre], rtol=1e-9,
                     columns=[c for c in ADS_COLUMNS if c not in MYELIN_COLUMNS])


def test_line_shaped_fibre():
    """Deliberate difference: a fibre of zero minor axis; ADS leaves all myelin values NaN, we only the g-ratio."""
    axon = np.zeros((20, 20), bool)
    myelin = np.zeros((20, 20), bool)
    axon[10, 5:9] = True
    myelin[10, 9:13] = True
    ours = axon_morphometrics(axon, myelin, 0.5, axon_shape="ellipse").iloc[0]
    reference = ads_axon_morphometrics(axon, myelin, 0.5, axon_shape="ellipse").iloc[0]
    assert reference[list(MYELIN_COLUMNS)].isna().all()
    assert np.isnan(ours["gratio"]) and ours["note"] == NOTE_ZERO_FIBRE and not ours["gratio_valid"]
    assert ours["myelin_thickness (um)"] == 0 and ours["myelin_area (um^2)"] == pytest.approx(4 * 0.25)
    assert ours["axonmyelin_area (um^2)"] == pytest.approx(8 * 0.25)
    circle = axon_morphometrics(axon, myelin, 0.5, axon_shape="circle").iloc[0]
    assert circle["gratio"] == pytest.approx(np.sqrt(4 / 8)) and circle["gratio_valid"]


def test_axon_with_centroid_outside_itself():
    """Deliberate difference: a crescent axon's centroid is in background; ADS gives NaN, we measure its fibre."""
    yy, xx = np.mgrid[:80, :80]
    outer, inner = np.hypot(yy - 40, xx - 40), np.hypot(yy - 40, xx - 46)
    axon = (outer < 20) & (inner >= 17)
    myelin = (outer < 24) & ~(outer < 20)
    centroid = np.argwhere(axon).mean(axis=0).astype(int)
    assert not axon[tuple(centroid)] and not myelin[tuple(centroid)]  # the centroid pixel is background
    ours = axon_morphometrics(axon, myelin, 0.1)
    reference = ads_axon_morphometrics(axon, myelin, 0.1)
    assert len(ours) == 1 and np.isnan(reference.loc[0, "gratio"])
    row = ours.iloc[0]
    assert row["note"] == NOTE_RESEEDED and row["gratio_valid"]
    assert row["myelin_area (um^2)"] == pytest.approx(myelin.sum() * 0.01)
    assert row["gratio"] == pytest.approx(np.sqrt(axon.sum() / (axon | myelin).sum()))
    assert not pd.isna(row["image_border_touching"])
    # ADS's own demo pair of masks that gives an invalid g-ratio is such an axon
    if ADS_DEMO.is_dir():
        axon = _read_mask(ADS_DEMO / "invalid_gratio_seg-axon.png")
        myelin = _read_mask(ADS_DEMO / "invalid_gratio_seg-myelin.png")
        assert np.isnan(ads_axon_morphometrics(axon, myelin, 0.07)["gratio"]).all()
        ours = axon_morphometrics(axon, myelin, 0.07)
        assert ours["gratio_valid"].all() and (ours["note"] == NOTE_RESEEDED).all()


def test_no_axons_gives_empty_table_and_explained_aggregate():
    noaxons = DATA / "noaxons"
    if noaxons.is_dir():
        axon, myelin = _read_mask(noaxons / "image_seg-axon.png"), _read_mask(noaxons / "image_seg-myelin.png")
    else:
        axon = myelin = np.zeros((50, 60), bool)
    table = axon_morphometrics(axon, myelin, 0.1)
    assert table.empty and list(table.columns) == COLUMNS
    result = aggregate_morphometrics(axon, myelin, 0.1, per_axon=table)
    assert result["axon_count"] == 0 and result["avf"] == 0 and result["axon_density (per mm^2)"] == 0
    assert math.isnan(result["gratio_aggregate"]) and "no axon" in result["note"]


def test_myelin_without_axons():
    myelin = np.zeros((40, 40), bool)
    myelin[10:20, 10:20] = True
    table = axon_morphometrics(np.zeros_like(myelin), myelin, 0.1)
    assert table.empty
    result = aggregate_morphometrics(np.zeros_like(myelin), myelin, 0.1)
    assert result["mvf"] == pytest.approx(100 / 1600) and math.isnan(result["gratio_aggregate"])
    assert result["note"]


def test_axon_without_myelin_has_gratio_one():
    axon = np.zeros((40, 40), bool)
    axon[5:15, 5:15] = True
    axon[25:30, 25:33] = True
    myelin = np.zeros_like(axon)
    myelin[4:16, 4:16] = True
    myelin &= ~axon  # first axon myelinated, second not
    table = axon_morphometrics(axon, myelin, 0.5)
    assert table.loc[1, "gratio"] == 1 and table.loc[1, "myelin_thickness (um)"] == 0
    assert table.loc[1, "myelin_area (um^2)"] == 0 and not table.loc[1, "gratio_valid"]
    assert table.loc[1, "note"] == NOTE_NO_MYELIN
    assert table.loc[0, "gratio_valid"] and table.loc[0, "gratio"] == pytest.approx(10 / np.sqrt(144))
    result = aggregate_morphometrics(axon, myelin, 0.5, per_axon=table)
    assert result["invalid_gratio_count"] == 1 and result["invalid_gratio_fraction"] == 0.5
    # the mean thickness is over valid axons only, the mean diameter over all
    assert result["mean_myelin_thickness (um)"] == pytest.approx(table.loc[0, "myelin_thickness (um)"])
    assert result["mean_axon_diam (um)"] == pytest.approx(table["axon_diam (um)"].mean())
    # no myelin anywhere: every row is well defined, g-ratio 1
    alone = axon_morphometrics(axon, np.zeros_like(axon), 0.5)
    assert (alone["gratio"] == 1).all() and not alone.isna().drop(columns="image").any().any()


@pytest.mark.parametrize("pixel_size", [None, 0, -0.1, float("nan"), float("inf"), "abc"])
def test_bad_pixel_size(pixel_size):
    axon = np.zeros((10, 10), bool)
    with pytest.raises(ValueError, match="pixel size"):
        axon_morphometrics(axon, axon, pixel_size)
    with pytest.raises(ValueError, match="pixel size"):
        aggregate_morphometrics(axon, axon, pixel_size)


def test_bad_masks():
    axon = np.zeros((20, 20), np.uint8)
    axon[5:10, 5:10] = 255
    with pytest.raises(ValueError, match="different shapes"):
        axon_morphometrics(axon, np.zeros((20, 21), bool), 0.1)
    with pytest.raises(ValueError, match="myelin mask must be binary"):
        axon_morphometrics(axon, np.where(axon > 0, 0, 127).astype(np.uint8) + (np.arange(20) % 2 == 0)[None], 0.1)
    with pytest.raises(ValueError, match="axon mask must be binary"):
        axon_morphometrics(np.linspace(0, 1, 400).reshape(20, 20), np.zeros((20, 20)), 0.1)
    with pytest.raises(ValueError, match="axon mask must be a 2D"):
        axon_morphometrics(np.zeros((2, 20, 20)), np.zeros((2, 20, 20)), 0.1)
    with pytest.raises(ValueError, match="NaN"):
        axon_morphometrics(np.full((20, 20), np.nan), np.zeros((20, 20)), 0.1)
    with pytest.raises(ValueError, match="axon_shape"):
        axon_morphometrics(axon, np.zeros_like(axon), 0.1, axon_shape="square")
    # 0/1, 0/255 and bool masks are the same input
    as_bool = axon_morphometrics(axon > 0, np.zeros((20, 20), bool), 0.1)
    as_01 = axon_morphometrics((axon > 0).astype(np.int64), np.zeros((20, 20), np.uint8), 0.1)
    pd.testing.assert_frame_equal(as_bool, as_01)
    # overlapping masks: the pixel counts as axon, with a warning
    with pytest.warns(UserWarning, match="both the axon and the myelin"):
        overlapped = axon_morphometrics(axon, axon, 0.1)
    pd.testing.assert_frame_equal(overlapped, as_bool)


def test_kernels_match_scipy_and_skimage():
    from skimage import measure
    from skimage.morphology import convex_hull_image
    from skimage.segmentation import watershed

    rng = np.random.default_rng(3)
    for trial in range(25):
        shape = tuple(rng.integers(4, 40, 2))
        mask = ndi.binary_opening(rng.random(shape) < rng.uniform(0.3, 0.8)) if trial % 2 else \
            rng.random(shape) < rng.uniform(0.2, 0.9)
        if mask.all() or not mask.any():
            continue
        np.testing.assert_array_equal(_kernels.squared_edt(mask), np.round(ndi.distance_transform_edt(mask) ** 2))
        labels, n = ndi.label(mask, structure=np.ones((3, 3)), output=np.int32)
        if n == 0:
            continue
        count, bbox, _, _, _, _, first = _kernels.label_stats(labels, n, 0, 0)
        convex = _kernels.label_convex_area(labels, n, bbox, 0, 0)
        perimeter = _kernels.label_perimeter(labels, n, _kernels._PERIMETER_WEIGHTS)
        for region in measure.regionprops(labels):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # skimage warns on degenerate hulls
                assert convex[region.label] == convex_hull_image(region.image).sum()
            assert perimeter[region.label] == pytest.approx(region.perimeter, abs=1e-9)
            assert tuple(bbox[region.label]) == region.bbox and count[region.label] == region.area
            assert first[region.label] == np.ravel_multi_index(tuple(region.coords[0]), shape)
        # watershed from seeds of distinct depth: identical labels
        depth = _kernels.squared_edt(mask)
        flat = np.flatnonzero(mask)
        seeds = np.sort(rng.choice(flat, min(4, flat.size), replace=False))
        seeds = seeds[np.unique(depth.ravel()[seeds], return_index=True)[1]]
        seeds.sort()
        markers = np.zeros(mask.size, np.int32)
        markers[seeds] = np.arange(1, seeds.size + 1)
        flood_mask = mask | (rng.random(shape) < 0.5)
        ours = _kernels.seeded_watershed(depth, flood_mask, seeds.astype(np.int64), markers[seeds])
        theirs = watershed(-np.sqrt(depth), markers.reshape(shape), mask=flood_mask)
        np.testing.assert_array_equal(ours, theirs)


def test_fibre_flood_equals_full_priority_flood():
    """The fill + per-component flood gives the full-image priority flood's labels, pixel for pixel.

    Random fibres that touch through their myelin (components with several seeds), axons joined only diagonally
    (one axon split over two mask components), seeds of equal depth, a seed on myelin-free axons, odd widths.
    """
    from nnunet_ext.morphometrics.axon import fibre_labels

    rng = np.random.default_rng(11)
    shared_components = 0
    for trial in range(30):
        shape = (int(rng.integers(1, 90)), int(rng.integers(1, 110))) if trial % 3 else (90, 107)
        axon, myelin = synthetic_fibres(shape, n=int(rng.integers(1, 60)), seed=trial)
        if trial % 4 == 1:  # diagonal-only joins and stray myelin
            axon[::7, ::5] = True
            myelin |= rng.random(shape) < 0.05
            myelin &= ~axon
        labels, n = ndi.label(axon, structure=np.ones((3, 3)), output=np.int32)
        if n == 0:
            continue
        count, bbox, sums = _kernels.label_stats(labels, n, 0, 0)[:3]
        centroids = sums[1:] / count[1:, None]
        depth = _kernels.squared_edt(axon)
        ours, reseeded = fibre_labels(axon, myelin, labels, centroids, bbox=bbox)
        with_depth, _ = fibre_labels(axon, myelin, labels, centroids, squared_distance=depth, bbox=bbox)
        # the full-image flood from the same seeds
        rows = np.floor(centroids[:, 0]).astype(np.int64)
        cols = np.floor(centroids[:, 1]).astype(np.int64)
        if reseeded.any():
            wanted = np.flatnonzero(reseeded) + 1
            rows[reseeded], cols[reseeded] = _kernels.deepest_pixels(labels, depth, wanted, bbox).T
        flat = rows * shape[1] + cols
        order = np.argsort(flat)
        full = _kernels.seeded_watershed(depth, axon | myelin, flat[order], np.arange(1, n + 1, dtype=np.int32)[order])
        np.testing.assert_array_equal(ours, full)
        np.testing.assert_array_equal(with_depth, full)
        components, m = _kernels.mask_components(axon, myelin)
        expected, expected_m = ndi.label(axon | myelin)
        np.testing.assert_array_equal(components, expected)  # the same numbering as SciPy's
        assert m == expected_m
        components, n_components = ndi.label(axon | myelin)
        shared_components += int((np.bincount(components[rows, cols], minlength=n_components + 1)[1:] > 1).sum())
    assert shared_components > 20  # the per-component flood was exercised
    # a comb: one fill pushes a run start per tooth, one touching component spans the whole width
    myelin = np.zeros((3, 20001), bool)
    myelin[0] = True
    myelin[1:, ::2] = True
    axon = np.zeros_like(myelin)
    axon[0, 100:103] = True
    axon[0, 15000] = True
    myelin &= ~axon
    seeds = np.array([101, 15000], np.int64)
    labels = np.array([1, 2], np.int32)
    components = _kernels.mask_components(axon, myelin)
    assert components[1] == 1 and (components[0] == 1).sum() == (axon | myelin).sum()
    np.testing.assert_array_equal(
        _kernels.fibres_from_components(*components, axon, seeds, labels, np.zeros((0, 0), np.int32)),
        _kernels.seeded_watershed(_kernels.squared_edt(axon), axon | myelin, seeds, labels))


def test_mtneuro_semantic_features():
    from nnunet_ext.morphometrics.mtneuro_features import MTNEURO_COLUMNS, semantic_features

    plane = np.zeros((20, 30), np.uint8)
    plane[0:4, 0:5] = 1  # vessel, 20 px
    plane[10:12, 0:30] = 3  # axon, 60 px
    plane[2:5, 10:13] = 2  # cell of 9 px, centroid (3, 11)
    plane[2:4, 20:22] = 2  # cell of 4 px, centroid (2.5, 20.5)
    plane[15, 11] = 2  # cell of 1 px, centroid (15, 11)
    empty = np.zeros_like(plane)
    empty[5, 5] = 2
    table = semantic_features(np.stack([plane, empty]), pixel_size_um=0.5)
    assert list(table.columns) == MTNEURO_COLUMNS and len(table) == 2
    first = table.iloc[0]
    assert first["vessel_fraction"] == pytest.approx(20 / 600) and first["axon_fraction"] == pytest.approx(60 / 600)
    assert first["cell_count"] == 3 and first["mean_cell_size (px)"] == pytest.approx(14 / 3)
    nearest = [np.hypot(0.5, 9.5), np.hypot(0.5, 9.5), 12.0]  # each cell's nearest neighbour
    assert first["mean_cell_nn_distance (px)"] == pytest.approx(np.mean(nearest))
    assert first["mean_cell_nn_distance (um)"] == pytest.approx(np.mean(nearest) * 0.5)
    assert first["mean_cell_size (um^2)"] == pytest.approx(14 / 3 * 0.25) and first["note"] == ""
    second = table.iloc[1]
    assert second["cell_count"] == 1 and np.isnan(second["mean_cell_nn_distance (px)"])
    assert "fewer than two cells" in second["note"]
    # diagonal pixels are one cell with 8-connectivity, two with 4-connectivity
    diagonal = np.zeros((5, 5), np.uint8)
    diagonal[1, 1] = diagonal[2, 2] = 2
    assert semantic_features(diagonal)["cell_count"].item() == 1
    assert semantic_features(diagonal, connectivity=1)["cell_count"].item() == 2
    with pytest.raises(ValueError, match="integer"):
        semantic_features(np.zeros((4, 4)) + 0.5)
