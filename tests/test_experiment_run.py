"""``nnunet-ext experiment --run`` end to end on phantoms: TEM and SEM sources (a dedicated model each, and the
generalist on their aggregate), BF held out; tiny CPU plans and nnUNetTrainerCPUSmoke. Three models, three test sets.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nnunet_ext.cli import main
from nnunet_ext.evaluation.folder_evaluation import evaluate_folder, per_class_means

SOURCES = {71: "TEM", 72: "SEM", 73: "BF"}


@pytest.fixture(scope="module")
def phantom_sources(tmp_path_factory):
    """Three single-contrast datasets of the same four animals (sub-04 as test set), 96x96 px."""
    from nnunet_ext.dataset_conversion.bids_microscopy import convert_bids_microscopy
    from nnunet_ext.phantoms.bids_writer import write_bids_phantom_dataset

    base = tmp_path_factory.mktemp("experiment")
    folders = {name: base / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for folder in folders.values():
        folder.mkdir()
    bids = write_bids_phantom_dataset(base / "bids", contrasts=tuple(SOURCES.values()), n_subjects=4,
                                      samples_per_subject=2, shape=(96, 96), pixel_size_um=0.1, seed=11,
                                      progress=False)
    for dataset_id, contrast in SOURCES.items():
        convert_bids_microscopy(bids, folders["nnUNet_raw"], dataset_id, contrast, modalities=[contrast],
                                test_subjects=["04"], progress=False)
    return base, folders


@pytest.mark.slow
def test_experiment_run_end_to_end(phantom_sources, capsys):
    base, folders = phantom_sources
    raw = folders["nnUNet_raw"]
    out = base / "out"
    code = main(["experiment", "71", "72", "--held-out", "73=TEM", "--aggregate-id", "74", "--aggregate-name",
                 "TEM_SEM_AGG", "--raw", str(raw), "--preprocessed", str(folders["nnUNet_preprocessed"]),
                 "--results", str(folders["nnUNet_results"]), "--smoke", "--patch-size", "48", "48", "--features",
                 "8", "16", "32", "--batch-size", "4", "--aggregate-folds", "2", "--run", "-o", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "Paired t-test" in printed and "Out of distribution" in printed

    names = {p.name for p in out.iterdir()}
    assert {"experiment.json", "commands.sh", "predictions", "logs", "per_case_metrics.csv", "dice_matrix.csv",
            "dice_matrix_myelin.csv", "dice_matrix_axon.csv", "dice_heatmap_myelin.png", "dice_heatmap_axon.png",
            "dice_heatmaps.png", "ttest.csv", "ttest_pairs.csv", "ood.csv"} == names
    assert not [p for p in out.parent.iterdir() if ".incomplete-" in p.name]
    models, targets = ["TEM", "SEM", "TEM_SEM_AGG"], ["TEM", "SEM", "BF"]
    model_datasets = {"TEM": "Dataset071_TEM", "SEM": "Dataset072_SEM", "TEM_SEM_AGG": "Dataset074_TEM_SEM_AGG"}
    for model in models:
        assert (folders["nnUNet_results"] / model_datasets[model] / "nnUNetTrainerCPUSmoke__nnUNetPlans_cpu__2d"
                / "fold_0" / "checkpoint_final.pth").is_file()
        for target in targets:
            assert len(list((out / "predictions" / model / target).glob("*.png"))) == 2

    # the commands that ran are the script's (the log records each stock command nnU-Net ran)
    script = (out / "commands.sh").read_text().splitlines()
    ran = [re.sub(r"^\$ \S*/(nnUNetv2_\w+)", r"\1", line) for line in
           (out / "logs" / "nnunet.log").read_text().splitlines() if line.startswith("$ ")]
    assert [line for line in ran if line.startswith("nnUNetv2_train")] == \
        [line for line in script if line.startswith("nnUNetv2_train")]
    predicted = [line[2:] for line in (out / "logs" / "nnunet.log").read_text().splitlines()
                 if line.startswith("# nnUNetv2_predict")]  # run in process, one model load per model
    assert len(predicted) == 9 and all(re.sub(r"/\.out\.incomplete-\w+/", "/out/", line) in script
                                       for line in predicted)

    # the matrix: every cell is the per-model evaluation of that model's predictions on that test set
    matrix = pd.read_csv(out / "dice_matrix.csv")
    myelin = pd.read_csv(out / "dice_matrix_myelin.csv", index_col="target")
    axon = pd.read_csv(out / "dice_matrix_axon.csv", index_col="target")
    assert list(myelin.index) == targets and list(myelin.columns) == models
    for model in models:
        for target, dataset_id in zip(targets, SOURCES):
            labels = raw / f"Dataset{dataset_id:03d}_{target}" / "labelsTs"
            means = per_class_means(evaluate_folder(out / "predictions" / model / target, labels,
                                                    progress=False)).set_index("class_name")
            np.testing.assert_allclose([myelin.loc[target, model], axon.loc[target, model]],
                                       means.loc[["myelin", "axon"], "Dice"], rtol=1e-9)
    assert ((matrix.Dice >= 0) & (matrix.Dice <= 1)).all()
    in_domain = set(zip(matrix.loc[matrix.in_domain, "target"], matrix.loc[matrix.in_domain, "model"]))
    assert in_domain == {("TEM", "TEM"), ("SEM", "SEM"), ("TEM", "TEM_SEM_AGG"), ("SEM", "TEM_SEM_AGG")}

    # the t-test: pairs are the in-domain cells, p is scipy's on them
    pairs = pd.read_csv(out / "ttest_pairs.csv")
    assert len(pairs) == 4
    for pair in pairs.itertuples():
        wide = myelin if pair.class_name == "myelin" else axon
        assert pair.Dice_dedicated == pytest.approx(wide.loc[pair.target, pair.target])
        assert pair.Dice_generalist == pytest.approx(wide.loc[pair.target, "TEM_SEM_AGG"])
    ttest = pd.read_csv(out / "ttest.csv")
    scipy_result = stats.ttest_rel(pairs.Dice_generalist, pairs.Dice_dedicated)
    assert ttest.loc[0, "scope"] == "all classes" and ttest.loc[0, "n_pairs"] == 4
    assert ttest.loc[0, "p_value"] == pytest.approx(scipy_result.pvalue)
    assert ttest.loc[0, "t_statistic"] == pytest.approx(scipy_result.statistic)

    # out of distribution: BF against the TEM model it was matched with, the best and mean dedicated model
    ood = pd.read_csv(out / "ood.csv")
    assert list(ood.target) == ["BF", "BF"] and list(ood.matched_dedicated) == ["TEM", "TEM"]
    for row in ood.itertuples():
        wide = myelin if row.class_name == "myelin" else axon
        assert row.Dice_generalist == pytest.approx(wide.loc["BF", "TEM_SEM_AGG"])
        assert row.Dice_matched_dedicated == pytest.approx(wide.loc["BF", "TEM"])
        assert row.Dice_best_dedicated == pytest.approx(wide.loc["BF", ["TEM", "SEM"]].max())

    # the script's last step re-evaluates the same predictions to the same numbers
    before = matrix.copy()
    assert main(["experiment", "--evaluate-only", "-o", str(out), "--overwrite"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "dice_matrix.csv"), before)
