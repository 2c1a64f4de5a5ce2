"""Segmentation metrics: hand-computed values, agreement with nnU-Net's and MONAI's own code, folders, CLI."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from skimage import io

from nnunet_ext.cli import main
from nnunet_ext.evaluation import folder_evaluation as fe
from nnunet_ext.evaluation import segmentation_metrics as sm

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_png(path: Path, labels: np.ndarray) -> None:
    io.imsave(path, labels.astype(np.uint8), check_contrast=False)


def independent_hd95(a: np.ndarray, b: np.ndarray, spacing=None) -> float:
    """HD95 written out with scipy only: boundary = mask minus erosion, KD-tree, linear percentile."""
    from scipy import ndimage
    from scipy.spatial import cKDTree

    spacing = np.ones(a.ndim) if spacing is None else np.asarray(spacing, float)
    edge_a = np.argwhere(a ^ ndimage.binary_erosion(a)) * spacing
    edge_b = np.argwhere(b ^ ndimage.binary_erosion(b)) * spacing
    return max(np.percentile(cKDTree(edge_b).query(edge_a)[0], 95), np.percentile(cKDTree(edge_a).query(edge_b)[0], 95))


# --------------------------------------------------------------------------- pure functions
def test_dice_per_class_hand_computed():
    reference = np.array([[0, 1, 1, 2],
                          [0, 1, 2, 2]])
    prediction = np.array([[0, 1, 2, 2],
                           [1, 1, 2, 0]])
    scores = sm.dice_per_class(prediction, reference, [1, 2, (1, 2), 3])
    # label 1: ref {(0,1),(0,2),(1,1)}, pred {(0,1),(1,0),(1,1)}: TP 2, FP 1, FN 1 -> 4/6
    assert scores[1] == pytest.approx(4 / 6)
    # label 2: ref {(0,3),(1,2),(1,3)}, pred {(0,2),(0,3),(1,2)}: TP 2, FP 1, FN 1
    assert scores[2] == pytest.approx(4 / 6)
    # region (1, 2): ref 6 pixels, pred 6 pixels, common 5 -> 10/12
    assert scores[(1, 2)] == pytest.approx(10 / 12)
    assert math.isnan(scores[3])  # absent from both: NaN as in nnU-Net


def test_metrics_per_class_hand_computed_and_empty_conventions():
    reference = np.zeros((10, 20), int)
    reference[2:6, 2:6] = 1  # 16 px
    prediction = np.zeros((10, 20), int)
    prediction[2:6, 4:8] = 1  # 16 px, 8 overlap
    prediction[0, 19] = 2  # label 2 only in the prediction
    metrics = sm.metrics_per_class(prediction, reference, [1, 2, 3], spacing=0.5)
    one = metrics[1]
    assert (one["TP"], one["FP"], one["FN"]) == (8, 8, 8)
    assert one["TN"] == 200 - 24
    assert one["Dice"] == pytest.approx(0.5) and one["F1"] == pytest.approx(0.5)
    assert one["IoU"] == pytest.approx(1 / 3)
    assert one["precision"] == pytest.approx(0.5) and one["recall"] == pytest.approx(0.5)
    assert one["HD95_px"] == pytest.approx(independent_hd95(prediction == 1, reference == 1))
    assert one["HD95_um"] == pytest.approx(one["HD95_px"] * 0.5)
    # Present in the prediction only: zeros, HD95 = image diagonal.
    two = metrics[2]
    assert (two["Dice"], two["IoU"], two["F1"], two["precision"], two["recall"]) == (0, 0, 0, 0, 0)
    assert two["HD95_px"] == pytest.approx(math.hypot(10, 20))
    assert two["HD95_um"] == pytest.approx(0.5 * math.hypot(10, 20))
    # Absent from both: NaN everywhere (nnU-Net sets Dice and IoU to NaN).
    assert all(math.isnan(metrics[3][k]) for k in sm.METRIC_COLUMNS)


def test_metrics_agree_with_nnunet_compute_tp_fp_fn_with_ignore_label():
    from nnunet_ext.evaluation.segmentation_metrics import metrics_per_class

    rng = np.random.default_rng(0)
    reference = rng.integers(0, 4, (30, 30))  # 3 = ignore
    prediction = rng.integers(0, 3, (30, 30))
    metrics = metrics_per_class(prediction, reference, [1, 2], ignore_label=3)
    kept = reference != 3
    for label in (1, 2):
        tp = np.sum((prediction == label) & (reference == label) & kept)
        fp = np.sum((prediction == label) & (reference != label) & kept)
        fn = np.sum((prediction != label) & (reference == label) & kept)
        assert (metrics[label]["TP"], metrics[label]["FP"], metrics[label]["FN"]) == (tp, fp, fn)
        assert metrics[label]["Dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_hd95_single_pixels_and_anisotropic_spacing():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[1, 1] = True
    b[4, 5] = True  # 3 rows, 4 columns away
    assert sm.hd95(a, b) == pytest.approx(5.0)
    assert sm.hd95(a, b, spacing=(2.0, 0.5)) == pytest.approx(math.hypot(6, 2))
    assert math.isnan(sm.hd95(np.zeros((4, 4), bool), np.zeros((4, 4), bool)))


@pytest.mark.parametrize("shape, spacing", [((40, 50), (1.0, 1.0)), ((40, 50), (0.3, 0.7)),
                                            ((12, 20, 24), (2.0, 0.5, 0.7))])
def test_hd95_equals_monai_compute_hausdorff_distance(shape, spacing):
    """Pins our scipy implementation to MONAI's function (masks touching the image border included)."""
    import torch
    from monai.metrics import compute_hausdorff_distance
    from scipy import ndimage

    rng = np.random.default_rng(len(shape))
    for trial in range(3):
        a = ndimage.binary_dilation(rng.random(shape) > 0.97, iterations=2)
        b = ndimage.binary_dilation(rng.random(shape) > 0.97, iterations=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # MONAI's internal deprecation notice
            expected = compute_hausdorff_distance(torch.from_numpy(a[None, None]), torch.from_numpy(b[None, None]),
                                                  include_background=True, percentile=95, spacing=list(spacing))
        assert sm.hd95(a, b, spacing) == pytest.approx(float(expected.reshape(-1)[0]), rel=1e-5)


# --------------------------------------------------------------------------- folders
def make_png_folders(tmp_path: Path):
    """Three 2D cases (0 bg, 1 myelin, 2 axon); case_002 has no axon in reference or prediction."""
    gt, pred = tmp_path / "labelsTs", tmp_path / "predictions"
    gt.mkdir()
    pred.mkdir()
    rng = np.random.default_rng(3)
    for index in range(3):
        reference = np.zeros((40, 48), np.uint8)
        reference[5:25, 5:25] = 1
        if index != 2:
            reference[10:20, 10:20] = 2
        prediction = np.roll(reference, index + 1, axis=1)
        noise = rng.random(reference.shape) > 0.97
        prediction[noise & (prediction == 0)] = 1
        write_png(gt / f"case_{index:03d}.png", reference)
        write_png(pred / f"case_{index:03d}.png", prediction)
    return pred, gt


def test_evaluate_folder_agrees_with_nnunet_compute_metrics(tmp_path):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    pred, gt = make_png_folders(tmp_path)
    table = fe.evaluate_folder(pred, gt, labels=[1, 2], spacing=0.1, progress=False)
    assert len(table) == 6 and list(table["case"].unique()) == ["case_000", "case_001", "case_002"]
    for case in ("case_000", "case_001", "case_002"):
        expected = compute_metrics(str(gt / f"{case}.png"), str(pred / f"{case}.png"), NaturalImage2DIO(), [1, 2])
        for label in (1, 2):
            row = table[(table["case"] == case) & (table["label"] == str(label))].iloc[0]
            reference_metrics = expected["metrics"][label]
            for ours, theirs in (("Dice", "Dice"), ("IoU", "IoU"), ("TP", "TP"), ("FP", "FP"), ("FN", "FN")):
                if np.isnan(reference_metrics[theirs]):
                    assert np.isnan(row[ours])
                else:
                    assert row[ours] == pytest.approx(reference_metrics[theirs])
    no_axon = table[(table["case"] == "case_002") & (table["label"] == "2")].iloc[0]
    assert np.isnan(no_axon["Dice"]) and np.isnan(no_axon["HD95_px"])

    summary = fe.per_class_means(table)
    assert list(summary["label"]) == ["1", "2", "mean"]
    axon = table[table["label"] == "2"]
    assert summary.loc[1, "Dice"] == pytest.approx(axon["Dice"].iloc[:2].mean())  # NaN case left out
    assert summary.loc[1, "n_cases_defined"] == 2
    tp, fp, fn = axon["TP"].sum(), axon["FP"].sum(), axon["FN"].sum()
    assert summary.loc[1, "IoU_pooled"] == pytest.approx(tp / (tp + fp + fn))
    assert summary.loc[2, "IoU"] == pytest.approx(summary.loc[:1, "IoU"].mean())
    assert fe.mean_iou(table) == pytest.approx(summary.loc[2, "IoU"])
    np.testing.assert_allclose(table["HD95_um"], table["HD95_px"] * 0.1, equal_nan=True)

    dice = fe.dice_scores_on_folder(pred, gt, [1, 2], class_names={1: "myelin", 2: "axon"})
    assert dice == pytest.approx({"myelin": summary.loc[0, "Dice"], "axon": summary.loc[1, "Dice"]})


def test_labels_found_in_files_fill_absent_classes(tmp_path):
    pred, gt = make_png_folders(tmp_path)
    table = fe.evaluate_folder(pred, gt, progress=False)  # no labels, no dataset.json
    assert sorted(table["label"].unique()) == ["1", "2"]
    assert len(table) == 6
    filled = table[(table["case"] == "case_002") & (table["label"] == "2")].iloc[0]
    assert np.isnan(filled["Dice"]) and filled["TP"] == 0 and filled["TN"] == 40 * 48


def test_dataset_json_in_prediction_folder_gives_labels_names_and_ignore(tmp_path):
    pred, gt = make_png_folders(tmp_path)
    # An ignore label (3) painted over part of one reference: those pixels must not count.
    reference = io.imread(gt / "case_000.png")
    reference[:, :8] = 3
    write_png(gt / "case_000.png", reference)
    (pred / "dataset.json").write_text(json.dumps({
        "labels": {"background": 0, "myelin": 1, "axon": 2, "ignore": 3}, "file_ending": ".png",
        "channel_names": {"0": "rescale_to_0_1"}, "numTraining": 3}))
    table = fe.evaluate_folder(pred, gt, progress=False)
    assert list(table["class_name"].unique()) == ["myelin", "axon"]
    row = table[(table["case"] == "case_000") & (table["label"] == "1")].iloc[0]
    prediction = io.imread(pred / "case_000.png")
    kept = reference != 3
    assert row["FP"] == np.sum((prediction == 1) & (reference != 1) & kept)
    assert row["TP"] + row["FP"] + row["FN"] + row["TN"] == kept.sum()


def test_3d_nifti_spacing_from_files(tmp_path):
    import SimpleITK as sitk

    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    reference = np.zeros((12, 16, 20), np.uint8)
    reference[3:9, 4:12, 5:15] = 1
    prediction = np.roll(reference, 2, axis=0)
    for folder, array in ((gt, reference), (pred, prediction)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((0.5, 1.0, 2.0))  # x, y, z; numpy axes are z, y, x
        sitk.WriteImage(image, str(folder / "vol_001.nii.gz"))
    table = fe.evaluate_folder(pred, gt, labels=[1], spacing="from_files", progress=False)
    row = table.iloc[0]
    assert row["spacing"] == "2 1 0.5"
    assert row["HD95_um"] == pytest.approx(independent_hd95(prediction == 1, reference == 1, (2.0, 1.0, 0.5)),
                                           rel=1e-5)
    assert row["HD95_px"] == pytest.approx(independent_hd95(prediction == 1, reference == 1), rel=1e-5)


def test_per_case_pixel_sizes(tmp_path):
    pred, gt = make_png_folders(tmp_path)
    sizes = {"case_000": 0.1, "case_001": 0.2, "case_002": 0.5}
    table = fe.evaluate_folder(pred, gt, labels=[1], spacing=sizes, progress=False)
    for case, size in sizes.items():
        row = table[table["case"] == case].iloc[0]
        assert row["HD95_um"] == pytest.approx(row["HD95_px"] * size)


def test_folder_errors_name_the_files(tmp_path):
    pred, gt = make_png_folders(tmp_path)
    (pred / "case_001.png").unlink()
    with pytest.raises(ValueError, match="case_001"):
        fe.evaluate_folder(pred, gt, labels=[1], progress=False)
    assert len(fe.evaluate_folder(pred, gt, labels=[1], allow_missing=True, progress=False)) == 2
    write_png(pred / "extra.png", np.zeros((40, 48)))
    with pytest.raises(ValueError, match="extra"):
        fe.evaluate_folder(pred, gt, labels=[1], allow_missing=True, progress=False)
    (pred / "extra.png").unlink()
    write_png(pred / "case_000.png", np.zeros((40, 40)))
    with pytest.raises(ValueError, match=r"case_000\.png.*shape"):
        fe.evaluate_folder(pred, gt, labels=[1], allow_missing=True, progress=False)
    write_png(pred / "case_000.png", np.zeros((40, 48)))
    with pytest.raises(ValueError, match="no pixel size"):
        fe.evaluate_folder(pred, gt, labels=[1], spacing="from_files", allow_missing=True, progress=False)


# --------------------------------------------------------------------------- real data
def test_ads_demo_masks_against_shifted_copy(tmp_path):
    """A real SEM axon/myelin mask (0/127/255) against itself shifted by 2 px: checked against nnU-Net and scipy."""
    source = DATA / "ads_demo" / "image_seg-axonmyelin.png"
    if not source.is_file():
        pytest.skip("shared sample data not available")
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    reference = io.imread(source)
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    write_png(gt / "demo.png", reference)
    write_png(pred / "demo.png", np.roll(reference, 2, axis=1))
    write_png(gt / "same.png", reference)
    write_png(pred / "same.png", reference)
    code = main(["evaluate", str(pred), str(gt), "-o", str(tmp_path / "out" / "metrics.csv"),
                 "--labels", "myelin=127", "axon=255", "fibre=127,255", "--pixel-size", "0.07"])
    assert code == 0
    table = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert (tmp_path / "out" / "metrics.png").is_file()
    expected = compute_metrics(str(gt / "demo.png"), str(pred / "demo.png"), NaturalImage2DIO(),
                               [127, 255, (127, 255)])["metrics"]
    for label, key in ((127, "127"), (255, "255"), ((127, 255), "(127, 255)")):
        row = table[(table["case"] == "demo") & (table["label"] == key)].iloc[0]
        assert row["Dice"] == pytest.approx(expected[label]["Dice"])
        assert row["IoU"] == pytest.approx(expected[label]["IoU"])
    myelin = table[(table["case"] == "demo") & (table["label"] == "127")].iloc[0]
    assert myelin["HD95_px"] == pytest.approx(
        independent_hd95(np.roll(reference, 2, axis=1) == 127, reference == 127))
    assert myelin["HD95_um"] == pytest.approx(myelin["HD95_px"] * 0.07)
    same = table[table["case"] == "same"]
    assert (same["Dice"] == 1).all() and (same["HD95_px"] == 0).all()
    means = table[table["case"] == "mean"]
    assert list(means["label"]) == ["127", "255", "(127, 255)", "mean"]
    assert list(means["class_name"]) == ["myelin", "axon", "fibre", "mean over classes"]


# --------------------------------------------------------------------------- CLI
def test_cli_refuses_to_overwrite_and_reports_bad_input(tmp_path, capsys):
    pred, gt = make_png_folders(tmp_path)
    output = tmp_path / "metrics.csv"
    assert main(["evaluate", str(pred), str(gt), "-o", str(output), "--labels", "1", "--no-plot"]) == 0
    first = output.read_text()
    assert main(["evaluate", str(pred), str(gt), "-o", str(output), "--labels", "1", "--no-plot"]) == 1
    assert "exists" in capsys.readouterr().err
    assert output.read_text() == first
    assert main(["evaluate", str(pred), str(gt), "-o", str(output), "--labels", "1", "2", "--overwrite",
                 "--no-plot"]) == 0
    assert "mIoU" in capsys.readouterr().out
    assert main(["evaluate", str(pred), str(gt), "-o", str(tmp_path / "x.csv"), "--labels", "axon=two"]) == 1
    assert "--labels" in capsys.readouterr().err
    assert main(["evaluate", str(pred), str(tmp_path / "missing"), "-o", str(tmp_path / "y.csv")]) == 1
    assert "folder not found" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "y.csv").exists()


def test_cli_pixel_size_table(tmp_path):
    pred, gt = make_png_folders(tmp_path)
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"case id": ["case_000", "case_001", "case_002"],
                  "pixel size (um)": [0.1, 0.2, 0.3]}).to_csv(manifest, index=False)
    output = tmp_path / "metrics.csv"
    assert main(["evaluate", str(pred), str(gt), "-o", str(output), "--labels", "1", "--no-plot",
                 "--pixel-size-table", str(manifest)]) == 0
    table = pd.read_csv(output)
    row = table[table["case"] == "case_001"].iloc[0]
    assert row["HD95_um"] == pytest.approx(row["HD95_px"] * 0.2)
