"""Unmyelinated axons: AxonDeepSeg 5.5's '-u' mode definitions (4-connected components of the uaxon mask; area,
perimeter, diameter, eccentricity, orientation, solidity, centroid), against values written out by hand."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nnunet_ext.morphometrics.measure_files import discover_inputs, run_morphometrics
from nnunet_ext.morphometrics.unmyelinated import ADS_UAXON_COLUMNS, uaxon_morphometrics

PIXEL = 0.1


def _label():
    """40x40 label image: one myelinated fibre (axon 2 in a myelin ring 1) and unmyelinated axons (3): a 5x5
    square at rows 20-24, cols 5-9; a 2x6 bar at rows 30-31, cols 20-25; two pixels touching only diagonally at
    (10, 30) and (11, 31) (two axons for ADS's 4-connectivity)."""
    label = np.zeros((40, 40), np.uint8)
    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(yy - 8, xx - 8)
    label[r < 6] = 1
    label[r < 3] = 2
    label[20:25, 5:10] = 3
    label[30:32, 20:26] = 3
    label[10, 30] = label[11, 31] = 3
    return label


def test_uaxon_table_by_hand():
    table = uaxon_morphometrics(_label() == 3, PIXEL, image_name="x")
    assert list(table.columns[1:9]) == ADS_UAXON_COLUMNS
    assert len(table) == 4  # the diagonal pair is two axons (4-connectivity)
    # raster order of first pixels: (10, 30), (11, 31), square (20, 5), bar (30, 20)
    single, single2, square, bar = (table.iloc[i] for i in range(4))
    assert (single["x0 (px)"], single["y0 (px)"]) == (30, 10) and (single2["x0 (px)"], single2["y0 (px)"]) == (31, 11)
    assert single["axon_area (um^2)"] == pytest.approx(0.01) and single["axon_perimeter (um)"] == 0
    assert single["axon_diam (um)"] == pytest.approx(math.sqrt(4 / math.pi) * PIXEL)
    # square: 25 px; skimage's 4-neighbourhood perimeter counts its 16 border pixels with weight 1
    assert (square["x0 (px)"], square["y0 (px)"]) == (7, 22)
    assert square["axon_area (um^2)"] == pytest.approx(25 * PIXEL ** 2)
    assert square["axon_perimeter (um)"] == pytest.approx(16 * PIXEL)
    assert square["axon_diam (um)"] == pytest.approx(math.sqrt(4 * 25 / math.pi) * PIXEL)
    assert square["eccentricity"] == pytest.approx(0) and square["solidity"] == pytest.approx(1)
    # bar: 12 px, all border pixels of weight 1; row variance 1/4, column variance 35/12
    assert (bar["x0 (px)"], bar["y0 (px)"]) == (22.5, 30.5)
    assert bar["axon_perimeter (um)"] == pytest.approx(12 * PIXEL)
    assert bar["eccentricity"] == pytest.approx(math.sqrt(1 - 0.25 / (35 / 12)))
    assert abs(bar["orientation"]) == pytest.approx(math.pi / 2)
    assert not table["image_border_touching"].any()
    ellipse = uaxon_morphometrics(_label() == 3, PIXEL, axon_shape="ellipse")
    assert ellipse["axon_diam (um)"].iloc[2] == pytest.approx(4 * math.sqrt(2) * PIXEL)  # 4 sqrt(var 2)
    assert ellipse["axon_diam (um)"].iloc[3] == pytest.approx(4 * 0.5 * PIXEL)


def test_both_populations_in_the_aggregate(tmp_path):
    Image.fromarray(_label()).save(tmp_path / "img.png")
    summary = run_morphometrics(discover_inputs(tmp_path / "img.png", pixel_size_um=PIXEL), tmp_path / "out",
                                qc=False)
    assert summary["uaxons"] == 4 and summary["axons"] == 1
    aggregate = pd.read_csv(tmp_path / "out" / "aggregate_morphometrics.csv").iloc[0]
    area_mm2 = 40 * 40 * PIXEL ** 2 * 1e-6
    assert aggregate["uaxon_count"] == 4 and aggregate["axon_count"] == 1
    assert aggregate["uaxon_density (per mm^2)"] == pytest.approx(4 / area_mm2)
    assert aggregate["all_axon_density (per mm^2)"] == pytest.approx(5 / area_mm2)
    assert aggregate["myelinated_fraction"] == pytest.approx(1 / 5)
    per_image = pd.read_csv(tmp_path / "out" / "img_uaxon_morphometrics.csv")
    assert len(per_image) == 4 and (tmp_path / "out" / "uaxon_morphometrics.csv").is_file()


def test_ads_mask_files_and_overlap(tmp_path):
    """ADS's file layout: <stem>_seg-axon/-myelin/-uaxon.png; uaxon pixels on axon or myelin are not counted."""
    label = _label()
    uaxon = label == 3
    uaxon[8, 8] = True  # on the axon: axon wins
    for name, mask in (("axon", label == 2), ("myelin", label == 1), ("uaxon", uaxon)):
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / f"s_seg-{name}.png")
    items = discover_inputs(tmp_path, pixel_size_um=PIXEL)
    assert len(items) == 1 and items[0].uaxon_path.name == "s_seg-uaxon.png"
    summary = run_morphometrics(items, tmp_path / "out", qc=False)
    assert summary["uaxons"] == 4


def test_no_uaxon_keeps_the_aggregate_columns(tmp_path):
    label = _label()
    label[label == 3] = 0
    Image.fromarray(label).save(tmp_path / "img.png")
    run_morphometrics(discover_inputs(tmp_path / "img.png", pixel_size_um=PIXEL), tmp_path / "out", qc=False)
    assert "uaxon_count" not in pd.read_csv(tmp_path / "out" / "aggregate_morphometrics.csv").columns
    assert not (tmp_path / "out" / "uaxon_morphometrics.csv").exists()
