"""Morphometric agreement: statistics against textbook values and a case with a known bias."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nnunet_ext.evaluation import morphometric_agreement as ma

PIXEL = 0.1


def test_icc_equals_shrout_and_fleiss_table():
    """Shrout & Fleiss (1979), Table 2: six targets, four judges; ICC(2,1) = 0.29, ICC(3,1) = 0.71."""
    ratings = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
    values = ma.icc(ratings)
    assert values["icc_2_1"] == pytest.approx(0.2898, abs=5e-4)
    assert values["icc_3_1"] == pytest.approx(0.7148, abs=5e-4)
    assert np.isnan(ma.icc(ratings[:1])["icc_2_1"])
    with pytest.raises(ValueError):
        ma.icc(ratings[:, :1])


def test_agreement_with_a_known_bias():
    rng = np.random.default_rng(0)
    reference = rng.uniform(0.5, 0.8, 500)
    noise = rng.normal(0, 0.02, 500)
    noise -= noise.mean()
    prediction = reference + 0.03 + noise
    stats = ma.agreement(reference, prediction)
    assert stats["n"] == 500
    assert stats["bias"] == pytest.approx(0.03, abs=1e-12)
    sd = np.std(noise, ddof=1)
    assert stats["sd_diff"] == pytest.approx(sd, rel=1e-9)
    assert stats["loa_low"] == pytest.approx(0.03 - 1.96 * sd) and stats["loa_high"] == pytest.approx(0.03 + 1.96 * sd)
    from scipy.stats import pearsonr

    assert stats["pearson_r"] == pytest.approx(pearsonr(reference, prediction)[0], rel=1e-12)
    # a constant bias lowers the absolute-agreement ICC(2,1) but not the consistency ICC(3,1)
    assert stats["icc_2_1"] < stats["icc_3_1"]
    shifted = ma.agreement(reference, reference + 0.03)
    assert shifted["icc_3_1"] == pytest.approx(1.0) and shifted["icc_2_1"] < 1
    assert shifted["sd_diff"] == pytest.approx(0, abs=1e-12)
    with_nan = ma.agreement(np.append(reference, np.nan), np.append(prediction, 1.0))
    assert with_nan["n"] == 500 and with_nan["bias"] == pytest.approx(stats["bias"])
    assert np.isnan(ma.agreement([], [])["bias"])


def fibre_masks(radii_axon, radii_fibre, grow=0, side=64):
    """Separate fibres (one per tile of side x side px): axon disks of radius r (+ grow) in myelin rings of radius R."""
    n = len(radii_axon)
    axon = np.zeros((side, side * n), bool)
    fibre = np.zeros_like(axon)
    yy, xx = np.mgrid[:side, :side]
    for i, (r, big) in enumerate(zip(radii_axon, radii_fibre)):
        d2 = (yy - side / 2 + 0.5) ** 2 + (xx - side / 2 + 0.5) ** 2
        axon[:, i * side:(i + 1) * side] = d2 <= (r + grow) ** 2
        fibre[:, i * side:(i + 1) * side] = d2 <= big ** 2
    return axon, fibre & ~axon


def test_compare_image_with_a_known_bias():
    """The prediction's axons are 2 px wider in radius, into their myelin: fibres are unchanged, so the fibre diameter
    agrees exactly; the axon diameter bias is what the pixel counts give, the myelin thickness bias is minus half of
    it, and every image-level quantity follows from the pixel counts."""
    radii = np.array([6, 8, 10, 12, 9, 7, 11, 13])
    outer = radii + np.array([5, 6, 7, 8, 6, 5, 7, 9])
    ref_axon, ref_myelin = fibre_masks(radii, outer)
    pred_axon, pred_myelin = fibre_masks(radii, outer, grow=2)
    result = ma.compare_image(ref_axon, ref_myelin, pred_axon, pred_myelin, PIXEL, image="known", subject="sub-1")
    fibres = result.fibres
    assert len(fibres) == len(radii) and result.detection.tp == len(radii) and result.detection.fp == 0
    tile = 64
    ref_area = np.array([ref_axon[:, i * tile:(i + 1) * tile].sum() for i in range(len(radii))])
    pred_area = np.array([pred_axon[:, i * tile:(i + 1) * tile].sum() for i in range(len(radii))])
    expected_diam_bias = np.mean(np.sqrt(4 * pred_area / np.pi) - np.sqrt(4 * ref_area / np.pi)) * PIXEL
    stats = ma.agreement_statistics(fibres).set_index("metric")
    assert stats.loc["axon_diam", "bias"] == pytest.approx(expected_diam_bias, rel=1e-12)
    assert 0.35 < expected_diam_bias < 0.45  # about 4 px of 0.1 um
    assert stats.loc["fiber_diam", "bias"] == 0 and stats.loc["fiber_diam", "sd_diff"] == 0
    assert stats.loc["myelin_thickness", "bias"] == pytest.approx(-expected_diam_bias / 2, rel=1e-12)
    assert stats.loc["gratio", "bias"] > 0
    row = result.image_row
    assert row["axon_count_ref"] == row["axon_count_pred"] == len(radii) and row["axon_count_rel_error"] == 0
    avf_ref, mvf_ref = ref_axon.mean(), ref_myelin.mean()
    avf_pred, mvf_pred = pred_axon.mean(), pred_myelin.mean()
    assert row["avf_ref"] == pytest.approx(avf_ref) and row["mvf_pred"] == pytest.approx(mvf_pred)
    g_ref, g_pred = 1 / np.sqrt(1 + mvf_ref / avf_ref), 1 / np.sqrt(1 + mvf_pred / avf_pred)
    assert row["gratio_aggregate_diff"] == pytest.approx(g_pred - g_ref, rel=1e-9)
    assert row["gratio_aggregate_rel_error"] == pytest.approx((g_pred - g_ref) / g_ref, rel=1e-9)
    assert row["f1"] == 1.0 and row["subject"] == "sub-1"


def test_subject_table_pools_images():
    images = pd.DataFrame([
        {"image": "a", "subject": "s1", "area (mm^2)": 1.0, "axon_count_ref": 100, "axon_count_pred": 110,
         "n_valid_gratio_ref": 100, "n_valid_gratio_pred": 100, "avf_ref": 0.3, "avf_pred": 0.32, "mvf_ref": 0.3,
         "mvf_pred": 0.28, "mean_gratio_ref": 0.6, "mean_gratio_pred": 0.62, "mean_axon_diam_ref": 2.0,
         "mean_axon_diam_pred": 2.1, "mean_myelin_thickness_ref": 0.7, "mean_myelin_thickness_pred": 0.65,
         "invalid_gratio_count_ref": 0, "invalid_gratio_count_pred": 10, "tp": 90, "fp": 20, "fn": 10},
        {"image": "b", "subject": "s1", "area (mm^2)": 3.0, "axon_count_ref": 300, "axon_count_pred": 290,
         "n_valid_gratio_ref": 300, "n_valid_gratio_pred": 100, "avf_ref": 0.2, "avf_pred": 0.2, "mvf_ref": 0.4,
         "mvf_pred": 0.4, "mean_gratio_ref": 0.5, "mean_gratio_pred": 0.7, "mean_axon_diam_ref": 1.0,
         "mean_axon_diam_pred": 1.0, "mean_myelin_thickness_ref": 0.5, "mean_myelin_thickness_pred": 0.5,
         "invalid_gratio_count_ref": 0, "invalid_gratio_count_pred": 190, "tp": 280, "fp": 10, "fn": 20},
    ])
    row = ma.subject_table(images).iloc[0]
    assert row["axon_count_ref"] == 400 and row["axon_count_pred"] == 400 and row["axon_count_rel_error"] == 0
    assert row["axon_density_ref"] == pytest.approx(100.0)
    assert row["avf_ref"] == pytest.approx((0.3 * 1 + 0.2 * 3) / 4)
    assert row["gratio_aggregate_ref"] == pytest.approx(1 / np.sqrt(1 + 0.375 / 0.225))
    assert row["mean_gratio_ref"] == pytest.approx((0.6 * 100 + 0.5 * 300) / 400)
    assert row["mean_gratio_pred"] == pytest.approx((0.62 * 100 + 0.7 * 100) / 200)  # weighted by valid g-ratios
    assert row["mean_axon_diam_pred"] == pytest.approx((2.1 * 110 + 1.0 * 290) / 400)
    assert (row["tp"], row["fp"], row["fn"]) == (370, 30, 30) and row["n_images"] == 2


def test_figures_and_statistics_by_subject(tmp_path):
    radii = np.arange(5, 13)
    ref_axon, ref_myelin = fibre_masks(radii, radii + 6)
    pred_axon, pred_myelin = fibre_masks(radii, radii + 6, grow=1)
    first = ma.compare_image(ref_axon, ref_myelin, pred_axon, pred_myelin, PIXEL, image="a", subject="s1")
    second = ma.compare_image(ref_axon, ref_myelin, ref_axon, ref_myelin, PIXEL, image="b", subject="s2")
    fibres = pd.concat([first.fibres, second.fibres], ignore_index=True)
    by_subject = ma.agreement_statistics(fibres, by=["subject"])
    assert set(by_subject["subject"]) == {"s1", "s2"}
    assert by_subject.set_index(["subject", "metric"]).loc[("s2", "gratio"), "bias"] == 0
    for function, name in ((ma.plot_bland_altman, "ba.png"), (ma.plot_scatter, "scatter.png")):
        path = function(fibres, tmp_path / name, title="test")
        assert path.stat().st_size > 1000
