"""Nerve mode (AxonDeepSeg 5.5's '-n'): fascicle areas, per-fascicle and total axon densities (rounded to 5
decimals), axons outside the nerve removed; plus our per-fascicle AVF, MVF and aggregate g-ratio. Values by hand."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nnunet_ext.cli import main as cli_main
from nnunet_ext.morphometrics.measure_files import discover_inputs, run_morphometrics

PIXEL = 0.1


def _scene():
    """40x60: fascicle 0 rows 2-21 x cols 2-21 (400 px), fascicle 1 rows 5-24 x cols 30-54 (500 px); square fibres
    (4x4 axon in an 8x8 fibre: 16 axon px, 48 myelin px): two in fascicle 0, one in fascicle 1, one outside."""
    nerve = np.zeros((40, 60), bool)
    nerve[2:22, 2:22] = True
    nerve[5:25, 30:55] = True
    label = np.zeros((40, 60), np.uint8)
    for row, col in ((4, 4), (12, 10), (8, 38), (28, 3)):
        label[row:row + 8, col:col + 8] = 1
        label[row + 2:row + 6, col + 2:col + 6] = 2
    return nerve, label


def _check(out, name):
    data = json.loads((out / f"{name}_nerve_morphometrics.json").read_text())
    f0, f1 = data["fascicle_areas"]["0"], data["fascicle_areas"]["1"]
    assert set(data["fascicle_areas"]) == {"0", "1"}
    assert (f0["value"], f0["unit"]) == (pytest.approx(4.0), "um^2") and f1["value"] == pytest.approx(5.0)
    assert data["total_area"] == {"value": pytest.approx(9.0), "unit": "um^2"}
    assert f0["axon_density"] == {"value": 0.5, "unit": "axon/um^2"} and f1["axon_density"]["value"] == 0.2
    assert data["total_axon_density"] == {"value": 0.33333, "unit": "axon/um^2"}
    assert f0["avf"] == pytest.approx(32 / 400) and f0["mvf"] == pytest.approx(96 / 400)
    assert f1["avf"] == pytest.approx(16 / 500) and f1["mvf"] == pytest.approx(48 / 500)
    assert f0["gratio_aggregate"] == pytest.approx(0.5) and f1["gratio_aggregate"] == pytest.approx(0.5)
    per_axon = pd.read_csv(out / f"{name}_axon_morphometrics.csv")
    assert per_axon["fascicle_id"].tolist() == [0, 1, 0]  # the fibre outside the nerve is removed
    fascicles = pd.read_csv(out / f"{name}_fascicles.csv")
    assert fascicles["axon_count"].tolist() == [2, 1]
    aggregate = pd.read_csv(out / "aggregate_morphometrics.csv").iloc[0]
    assert aggregate["axon_count"] == 3 and aggregate["area (mm^2)"] == pytest.approx(9e-6)
    assert aggregate["fascicle_count"] == 2


def test_nerve_mask_beside_ads_masks(tmp_path):
    nerve, label = _scene()
    for kind, mask in (("axon", label == 2), ("myelin", label == 1), ("nerve", nerve)):
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / f"s_seg-{kind}.png")
    run_morphometrics(discover_inputs(tmp_path, pixel_size_um=PIXEL), tmp_path / "out", qc=False, nerve=True)
    _check(tmp_path / "out", "s")


def test_nerve_from_an_nnunet_label_and_the_cli(tmp_path):
    nerve, label = _scene()
    label = np.where(nerve & (label == 0), 4, label).astype(np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(label).save(tmp_path / "in" / "s.png")
    assert cli_main(["morphometrics", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--pixel-size", "0.1",
                     "--nerve-label", "4", "--no-qc"]) == 0
    _check(tmp_path / "out", "s")
