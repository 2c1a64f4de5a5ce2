"""``nnunet-ext experiment``: matrix, t-test and OOD assembly on hand-made tables; datasets, commands and evaluation
of ready-made predictions (no training here; the end-to-end run is in test_experiment_run.py)."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from nnunet_ext.cli import main
from nnunet_ext.dataset_conversion.nnunet_raw import NnUNetRawWriter
from nnunet_ext.experiment import outputs
from nnunet_ext.experiment.comparison import (class_names, dice_matrix, generalist_vs_dedicated_pairs,
                                              matrix_of_class, ood_table, paired_ttest)
from nnunet_ext.experiment.design import ExperimentDesign, NnUNetSettings, prepare_experiment
from nnunet_ext.experiment.outputs import plot_dice_heatmaps
from nnunet_ext.evaluation.folder_evaluation import evaluate_folder, per_class_means
from nnunet_ext.evaluation.segmentation_metrics import METRIC_COLUMNS

CLASSES = {"1": "myelin", "2": "axon"}


def row(model, target, case, label, tp, fp, fn):
    """One per-case row as evaluate_folder writes it, from pixel counts (Dice NaN when the class is in no image)."""
    dice = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
    return {"model": model, "target": target, "case": case, "label": label, "class_name": CLASSES[label],
            **dict.fromkeys(METRIC_COLUMNS, math.nan), "Dice": dice, "TP": tp, "FP": fp, "FN": fn, "TN": 0}


@pytest.fixture
def per_case():
    """Models A (dedicated to A), B (dedicated to B), AGG (generalist); targets A, B and H (held out).

    Counts chosen so Dice values are simple fractions; case b2 has no axon anywhere for model B (NaN)."""
    counts = {  # (model, target, case): {label: (TP, FP, FN)}
        ("A", "A", "a1"): {"1": (8, 1, 1), "2": (6, 2, 2)},
        ("A", "A", "a2"): {"1": (9, 0, 2), "2": (5, 1, 3)},
        ("A", "B", "b1"): {"1": (2, 6, 6), "2": (1, 5, 5)},
        ("A", "B", "b2"): {"1": (3, 5, 4), "2": (0, 0, 0)},
        ("A", "H", "h1"): {"1": (4, 4, 4), "2": (3, 3, 3)},
        ("B", "A", "a1"): {"1": (1, 9, 9), "2": (2, 4, 4)},
        ("B", "A", "a2"): {"1": (2, 8, 8), "2": (1, 6, 6)},
        ("B", "B", "b1"): {"1": (7, 2, 1), "2": (6, 1, 1)},
        ("B", "B", "b2"): {"1": (8, 1, 1), "2": (0, 0, 0)},
        ("B", "H", "h1"): {"1": (6, 2, 2), "2": (2, 4, 4)},
        ("AGG", "A", "a1"): {"1": (9, 1, 0), "2": (7, 1, 1)},
        ("AGG", "A", "a2"): {"1": (9, 1, 1), "2": (6, 1, 2)},
        ("AGG", "B", "b1"): {"1": (8, 1, 1), "2": (6, 1, 0)},
        ("AGG", "B", "b2"): {"1": (7, 2, 2), "2": (0, 1, 0)},
        ("AGG", "H", "h1"): {"1": (7, 1, 1), "2": (4, 2, 2)},
    }
    return pd.DataFrame([row(m, t, c, label, *v) for (m, t, c), by_label in counts.items()
                         for label, v in by_label.items()])


def dice(tp, fp, fn):
    return 2 * tp / (2 * tp + fp + fn)


def test_dice_matrix_means_over_images_and_marks_cells(per_case):
    matrix = dice_matrix(per_case, {"A": ["A"], "B": ["B"], "AGG": ["A", "B"]}, held_out=["H"])
    assert list(matrix.columns[:4]) == ["target", "model", "label", "class_name"]
    assert class_names(matrix) == ["myelin", "axon"]
    myelin = matrix_of_class(matrix, "myelin")
    assert list(myelin.index) == ["A", "B", "H"] and list(myelin.columns) == ["A", "B", "AGG"]
    assert myelin.loc["A", "A"] == pytest.approx((dice(8, 1, 1) + dice(9, 0, 2)) / 2)
    assert myelin.loc["B", "AGG"] == pytest.approx((dice(8, 1, 1) + dice(7, 2, 2)) / 2)
    axon = matrix_of_class(matrix, "axon")
    # b2 has no axon in reference or prediction of model B: left out of B's mean (nnU-Net's convention) ...
    assert axon.loc["B", "B"] == pytest.approx(dice(6, 1, 1))
    # ... but the generalist predicted a false axon pixel there: Dice 0 counts
    assert axon.loc["B", "AGG"] == pytest.approx((dice(6, 1, 0) + 0) / 2)
    cell = matrix.query("target == 'B' and model == 'B' and class_name == 'axon'").iloc[0]
    assert (cell.n_cases, cell.n_cases_defined) == (2, 1)
    assert cell.Dice_pooled == pytest.approx(dice(6, 1, 1))
    in_domain = set(zip(matrix.loc[matrix.in_domain, "target"], matrix.loc[matrix.in_domain, "model"]))
    assert in_domain == {("A", "A"), ("B", "B"), ("A", "AGG"), ("B", "AGG")}
    assert set(matrix.loc[matrix.held_out_target, "target"]) == {"H"}
    # every cell is per_class_means' Dice of that model on that target (what `nnunet-ext evaluate` reports)
    for (model, target), group in per_case.groupby(["model", "target"]):
        means = per_class_means(group).set_index("class_name")
        for class_name in ("myelin", "axon"):
            np.testing.assert_allclose(matrix_of_class(matrix, class_name).loc[target, model],
                                       means.loc[class_name, "Dice"])
    with pytest.raises(ValueError, match="no class 'vessel'"):
        matrix_of_class(matrix, "vessel")


def test_ttest_per_source_pairs_are_the_in_domain_cells(per_case):
    matrix = dice_matrix(per_case)
    pairs = generalist_vs_dedicated_pairs(per_case, "AGG", {"A": "A", "B": "B"}, pairing="source")
    assert len(pairs) == 4  # 2 sources x 2 classes, as the paper's N = 8 for 4 sources x 2 classes
    for pair in pairs.itertuples():
        wide = matrix_of_class(matrix, pair.class_name)
        assert pair.Dice_dedicated == wide.loc[pair.target, pair.dedicated_model]
        assert pair.Dice_generalist == wide.loc[pair.target, "AGG"]
        assert pair.difference == pytest.approx(pair.Dice_generalist - pair.Dice_dedicated)
    tests = paired_ttest(pairs, "two-sided", "source")
    overall = tests.iloc[0]
    assert overall.scope == "all classes" and overall.n_pairs == 4
    # t written out by hand: mean difference over its standard error
    differences = pairs["difference"].to_numpy()
    t = differences.mean() / (differences.std(ddof=1) / math.sqrt(len(differences)))
    assert overall.t_statistic == pytest.approx(t)
    assert overall.p_value == pytest.approx(2 * stats.t.sf(abs(t), df=len(differences) - 1))
    assert overall.p_value == pytest.approx(stats.ttest_rel(pairs.Dice_generalist, pairs.Dice_dedicated).pvalue)
    assert overall.mean_difference == pytest.approx(differences.mean())
    assert list(tests.scope) == ["all classes", "myelin", "axon"] and list(tests.n_pairs) == [4, 2, 2]
    # one-sided: half the two-sided p in the direction of t, one minus that in the other
    along, against = ("greater", "less") if t > 0 else ("less", "greater")
    assert paired_ttest(pairs, along).iloc[0].p_value == pytest.approx(overall.p_value / 2)
    assert paired_ttest(pairs, against).iloc[0].p_value == pytest.approx(1 - overall.p_value / 2)


def test_ttest_per_image_pairs_drop_undefined_dice(per_case):
    pairs = generalist_vs_dedicated_pairs(per_case, "AGG", {"A": "A", "B": "B"}, pairing="image")
    # 2 targets x 2 images x 2 classes, less b2/axon where the dedicated model's Dice is undefined
    assert len(pairs) == 7
    assert not ((pairs.case == "b2") & (pairs.class_name == "axon")).any()
    a1 = pairs[(pairs.case == "a1") & (pairs.class_name == "myelin")].iloc[0]
    assert (a1.Dice_dedicated, a1.Dice_generalist) == (pytest.approx(dice(8, 1, 1)), pytest.approx(dice(9, 1, 0)))
    result = paired_ttest(pairs, pairing="image").iloc[0]
    assert result.n_pairs == 7 and result.pairing == "image"
    assert result.p_value == pytest.approx(stats.ttest_rel(pairs.Dice_generalist, pairs.Dice_dedicated).pvalue)


def test_ttest_degenerate_cases_are_reported_not_hidden():
    one = pd.DataFrame({"class_name": ["axon"], "Dice_generalist": [0.9], "Dice_dedicated": [0.8]})
    result = paired_ttest(one).iloc[0]
    assert result.n_pairs == 1 and math.isnan(result.p_value) and result.note == "fewer than 2 pairs"
    equal = pd.DataFrame({"class_name": ["axon"] * 3, "Dice_generalist": [1.0, 0.75, 0.5],
                          "Dice_dedicated": [0.75, 0.5, 0.25]})
    assert "all differences equal" in paired_ttest(equal).iloc[0].note
    with pytest.raises(ValueError, match="alternative"):
        paired_ttest(equal, alternative="bigger")


def test_pairs_need_both_models_on_the_source(per_case):
    with pytest.raises(ValueError, match="no evaluation of model 'C' on target 'A'"):
        generalist_vs_dedicated_pairs(per_case, "AGG", {"A": "C"})
    with pytest.raises(ValueError, match="no evaluation of the generalist 'GEN'"):
        generalist_vs_dedicated_pairs(per_case, "GEN", {"A": "A"})
    with pytest.raises(ValueError, match="pairing"):
        generalist_vs_dedicated_pairs(per_case, "AGG", {"A": "A"}, pairing="subject")


def test_ood_table_compares_generalist_with_matched_best_and_mean(per_case):
    matrix = dice_matrix(per_case, held_out=["H"])
    table = ood_table(matrix, "AGG", ["A", "B"], {"H": "A"})
    assert list(table.class_name) == ["myelin", "axon"]
    myelin = table.iloc[0]
    assert myelin.Dice_generalist == pytest.approx(dice(7, 1, 1))
    assert myelin.matched_dedicated == "A" and myelin.Dice_matched_dedicated == pytest.approx(dice(4, 4, 4))
    assert myelin.best_dedicated == "B" and myelin.Dice_best_dedicated == pytest.approx(dice(6, 2, 2))
    assert myelin.Dice_mean_dedicated == pytest.approx((dice(4, 4, 4) + dice(6, 2, 2)) / 2)
    assert myelin.generalist_minus_matched == pytest.approx(dice(7, 1, 1) - dice(4, 4, 4))
    unmatched = ood_table(matrix, "AGG", ["A", "B"], {"H": None}).iloc[1]
    assert unmatched.matched_dedicated == "" and math.isnan(unmatched.Dice_matched_dedicated)
    assert unmatched.best_dedicated == "A"
    with pytest.raises(ValueError, match="not a dedicated model"):
        ood_table(matrix, "AGG", ["A", "B"], {"H": "AGG"})


def test_heatmap_prints_every_value_and_outlines_in_domain_cells(per_case, tmp_path, monkeypatch):
    matrix = dice_matrix(per_case, {"A": ["A"], "B": ["B"], "AGG": ["A", "B"]}, held_out=["H"])
    drawn = {}

    def keep(figure, path, **savefig_kwargs):
        drawn["figure"] = figure
        return path

    monkeypatch.setattr(outputs, "save_figure", keep)
    plot_dice_heatmaps(matrix, tmp_path / "h.png", generalist="AGG")
    axes = [a for a in drawn["figure"].axes if a.get_title().startswith("Dice")]
    assert [a.get_title() for a in axes] == ["Dice, myelin", "Dice, axon"]
    for axis, class_name in zip(axes, ("myelin", "axon")):
        texts = sorted(t.get_text() for t in axis.texts)
        wide = matrix_of_class(matrix, class_name)
        assert texts == sorted(f"{v:.3f}" for v in wide.to_numpy().ravel())
        assert [t.get_text() for t in axis.get_yticklabels()] == ["A", "B", "H (held out)"]
        assert [t.get_text() for t in axis.get_xticklabels()] == ["A", "B", "AGG\n(generalist)"]
        assert len(axis.patches) == 4  # in-domain outlines
    monkeypatch.undo()
    path = plot_dice_heatmaps(matrix, tmp_path / "heat.png", ["axon"], generalist="AGG")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 300
    assert [p.name for p in tmp_path.iterdir()] == ["heat.png"]  # no temporary file left


# ------------------------------------------------------------------------------------------- datasets and commands
LABELS = {"background": 0, "myelin": 1, "axon": 2}


def tiny_source(raw, dataset_id, name, modality="TEM", labels=LABELS, n_train=5, n_test=2, test_labels=True):
    """A 16x16 dataset with labelled test cases; every label image holds all three classes."""
    rng = np.random.default_rng(dataset_id)
    with NnUNetRawWriter(raw, dataset_id, name, labels) as writer:
        for i in range(n_train + n_test):
            label = np.zeros((16, 16), np.uint8)
            label[2:10, 2:10], label[4:8, 4:8] = 1, 2
            label = np.roll(label, rng.integers(0, 6, 2), axis=(0, 1))
            test = i >= n_train
            writer.add_case(rng.integers(0, 255, (16, 16)).astype(np.uint8),
                            label if (not test or test_labels) else None, split="test" if test else "train",
                            subject=f"{name}-s{i}", modality=modality, pixel_size_um=0.1)
        return writer.finish()


@pytest.fixture
def nnunet_folders(tmp_path):
    raw, pre, res = tmp_path / "raw", tmp_path / "pre", tmp_path / "res"
    for folder in (raw, pre, res):
        folder.mkdir()
    tiny_source(raw, 11, "TEM1", "TEM")
    tiny_source(raw, 12, "SEM1", "SEM")
    tiny_source(raw, 13, "SEM2", "SEM")
    return raw, pre, res


def test_prepare_experiment_aggregates_training_sources_and_matches_held_out(nnunet_folders, capsys):
    raw, pre, res = nnunet_folders
    settings = NnUNetSettings(trainer="nnUNetTrainerCPUSmoke", folds=(0,), device="cpu",
                              cpu_plans={"patch_size": [16, 16], "features_per_stage": [8, 16],
                                         "batch_size": 2})
    design = prepare_experiment([11, "Dataset012_SEM1"], raw, pre, res, 20, "AGG", held_out=["13"],
                                nnunet=settings, aggregate_folds=2, progress=False)
    assert [s.name for s in design.sources] == ["TEM1", "SEM1"] and design.generalist == "AGG"
    assert [m.name for m in design.models] == ["TEM1", "SEM1", "AGG"]
    assert [t.name for t in design.targets] == ["TEM1", "SEM1", "SEM2"]
    assert design.held_out[0].matched_dedicated == "SEM1"  # the one training source of its modality
    assert design.aggregate.modality == "SEM+TEM" and design.nnunet.plans == "nnUNetPlans_cpu"
    manifest = pd.read_csv(raw / "Dataset020_AGG" / "manifest.csv")
    assert set(manifest.source_dataset) == {"Dataset011_TEM1", "Dataset012_SEM1"}  # held-out source left out
    assert (pre / "Dataset020_AGG" / "splits_final.json").is_file()
    assert ExperimentDesign.from_json(design.to_json()) == design
    # a second experiment on the same sources reuses the aggregate; other sources are refused
    again = prepare_experiment(["Dataset012_SEM1", 11], raw, pre, res, 20, "AGG", nnunet=settings,
                               aggregate_folds=2, progress=False)
    assert "Reusing the aggregated dataset" in capsys.readouterr().out and not again.held_out
    with pytest.raises(FileExistsError, match="aggregates .*Dataset011_TEM1.*not .*Dataset013_SEM2"):
        prepare_experiment([11, 12, 13], raw, pre, res, 20, "AGG", nnunet=settings, aggregate_folds=2,
                           progress=False)
    explicit = prepare_experiment([11, 12], raw, pre, res, 20, "AGG", held_out=["13=TEM1"], nnunet=settings,
                                  aggregate_folds=2, progress=False)
    assert explicit.held_out[0].matched_dedicated == "TEM1"


def test_prepare_experiment_refuses_what_it_cannot_compare(nnunet_folders, tmp_path):
    raw, pre, res = nnunet_folders
    with pytest.raises(ValueError, match="at least two training sources"):
        prepare_experiment([11, 12], raw, pre, res, 20, held_out=["12"])
    tiny_source(raw, 14, "Swapped", labels={"background": 0, "axon": 1, "myelin": 2})
    with pytest.raises(ValueError, match="Dataset014_Swapped/dataset.json: labels .* one label schema"):
        prepare_experiment([11, 14], raw, pre, res, 20)
    tiny_source(raw, 15, "NoTestLabels", test_labels=False)
    with pytest.raises(ValueError, match="Dataset015_NoTestLabels: 2 test image\\(s\\) have no label in labelsTs"):
        prepare_experiment([11, 15], raw, pre, res, 20)
    elsewhere = tiny_source(tmp_path / "elsewhere", 16, "Outside")
    with pytest.raises(ValueError, match="nnU-Net trains datasets of its raw folder only"):
        prepare_experiment([11, elsewhere], raw, pre, res, 20)
    with pytest.raises(ValueError, match="fold 3 does not exist with 2 aggregate folds"):
        prepare_experiment([11, 12], raw, pre, res, 20, nnunet=NnUNetSettings(folds=(3,)), aggregate_folds=2)
    with pytest.raises(FileExistsError, match="already uses dataset ID 11"):
        prepare_experiment([12, 13], raw, pre, res, 11, progress=False)
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset011_TEM1", "Dataset012_SEM1", "Dataset013_SEM2",
                                                     "Dataset014_Swapped", "Dataset015_NoTestLabels"]


def test_cli_writes_the_exact_commands(nnunet_folders, tmp_path, capsys):
    raw, pre, res = nnunet_folders
    out = tmp_path / "experiment"
    base = ["experiment", "11", "12", "--held-out", "13", "--aggregate-id", "20", "--raw", str(raw),
            "--preprocessed", str(pre), "--results", str(res), "-o", str(out)]
    assert main(base) == 0
    printed = capsys.readouterr().out
    script = (out / "commands.sh").read_text()
    assert script in printed and sorted(p.name for p in out.iterdir()) == ["commands.sh", "experiment.json"]
    lines = script.splitlines()
    assert f"export nnUNet_raw={raw}" in lines and 'eval "$(nnunet-ext env)"' in script
    assert "nnUNetv2_plan_and_preprocess -d 11 12 20 -c 2d --verify_dataset_integrity" in lines
    for dataset_id in (11, 12, 20):
        for fold in range(5):
            assert f"nnUNetv2_train {dataset_id} 2d {fold} -p nnUNetPlans -tr nnUNetTrainer -device cuda" in lines
    predict = [line for line in lines if line.startswith("nnUNetv2_predict")]
    assert len(predict) == 9  # 3 models x 3 test sets
    assert (f"nnUNetv2_predict -i {raw}/Dataset013_SEM2/imagesTs -o {out}/predictions/FULL_AGG/SEM2 -d 20 -c 2d "
            f"-f 0 1 2 3 4 -tr nnUNetTrainer -p nnUNetPlans -chk checkpoint_final.pth -device cuda") in lines
    assert lines[-1] == f"nnunet-ext experiment --evaluate-only -o {out}"
    assert "nnunet-ext aggregate 11 12" in script  # how the aggregate was made, for the record
    design = json.loads((out / "experiment.json").read_text())
    assert design["held_out"][0]["matched_dedicated"] == "SEM1"

    assert main(base) == 1 and "exists; use --overwrite" in capsys.readouterr().err
    smoke = base + ["--smoke", "--patch-size", "16", "16", "--features", "8", "16", "--overwrite"]
    assert main(smoke) == 0
    lines = (out / "commands.sh").read_text().splitlines()
    assert "nnunet-ext plans-cpu -d 20 -c 2d --patch-size 16 16 --features 8 16 --batch-size 8 --overwrite" in lines
    assert "nnUNetv2_plan_and_preprocess -d 11 12 20 --verify_dataset_integrity --no_pp -npfp 1" in lines
    assert "nnUNetv2_preprocess -d 11 12 20 -plans_name nnUNetPlans_cpu -c 2d -np 1" in lines
    assert "nnUNetv2_train 12 2d 0 -p nnUNetPlans_cpu -tr nnUNetTrainerCPUSmoke -device cpu" in lines
    assert not any(" 2d 1 " in line for line in lines)

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    assert main(base[:-2] + ["-o", str(precious), "--overwrite"]) == 1
    assert "not an experiment folder" in capsys.readouterr().err and (precious / "notes.txt").exists()
    assert main(base + ["--features", "8", "16", "--overwrite"]) == 1  # CPU plans options without CPU plans
    assert "apply to --cpu-plans" in capsys.readouterr().err


def test_evaluate_only_on_written_predictions(nnunet_folders, tmp_path, capsys):
    """Predictions made by hand (references, some corrupted) go through --evaluate-only to every result file."""
    raw, pre, res = nnunet_folders
    out = tmp_path / "experiment"
    assert main(["experiment", "11", "12", "--held-out", "13", "--aggregate-id", "20", "--raw", str(raw),
                 "--preprocessed", str(pre), "--results", str(res), "-o", str(out)]) == 0
    assert main(["experiment", "--evaluate-only", "-o", str(out)]) == 1
    assert "prediction folder(s) missing" in capsys.readouterr().err
    rng = np.random.default_rng(0)
    for model in ("TEM1", "SEM1", "FULL_AGG"):
        for target, folder in (("TEM1", "Dataset011_TEM1"), ("SEM1", "Dataset012_SEM1"), ("SEM2", "Dataset013_SEM2")):
            destination = out / "predictions" / model / target
            destination.mkdir(parents=True)
            for label_file in sorted((raw / folder / "labelsTs").glob("*.png")):
                label = np.array(Image.open(label_file))
                if model != target:  # other models get some pixels wrong
                    flip = rng.random(label.shape) < (0.1 if model == "FULL_AGG" else 0.3)
                    label = np.where(flip, rng.integers(0, 3, label.shape), label).astype(np.uint8)
                Image.fromarray(label).save(destination / label_file.name)
    assert main(["experiment", "--evaluate-only", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Paired t-test" in printed and "Out of distribution" in printed
    expected = {"per_case_metrics.csv", "dice_matrix.csv", "dice_matrix_myelin.csv", "dice_matrix_axon.csv",
                "dice_heatmap_myelin.png", "dice_heatmap_axon.png", "dice_heatmaps.png", "ttest.csv",
                "ttest_pairs.csv", "ood.csv"}
    assert expected <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    myelin = pd.read_csv(out / "dice_matrix_myelin.csv", index_col="target")
    assert myelin.loc["TEM1", "TEM1"] == 1.0 and myelin.loc["SEM1", "SEM1"] == 1.0
    assert myelin.loc["SEM2", "FULL_AGG"] == pytest.approx(evaluate_folder(
        out / "predictions" / "FULL_AGG" / "SEM2", raw / "Dataset013_SEM2" / "labelsTs", progress=False)
        .query("class_name == 'myelin'")["Dice"].mean())
    pairs = pd.read_csv(out / "ttest_pairs.csv")
    ttest = pd.read_csv(out / "ttest.csv")
    assert len(pairs) == 4 and (pairs.Dice_dedicated == 1.0).all()
    assert ttest.p_value[0] == pytest.approx(stats.ttest_rel(pairs.Dice_generalist, pairs.Dice_dedicated).pvalue)
    ood = pd.read_csv(out / "ood.csv")
    assert list(ood.matched_dedicated) == ["SEM1", "SEM1"] and (ood.best_dedicated == "FULL_AGG").sum() == 0
    per_case = pd.read_csv(out / "per_case_metrics.csv")
    assert per_case["HD95_um"].notna().all()  # pixel sizes from the manifests
    assert main(["experiment", "--evaluate-only", "-o", str(out)]) == 1
    assert "use --overwrite to replace the results" in capsys.readouterr().err
    shutil.rmtree(out / "predictions" / "SEM1" / "SEM2")
    assert main(["experiment", "--evaluate-only", "-o", str(out), "--overwrite"]) == 1
    assert (out / "ood.csv").exists()  # a failed evaluation leaves the previous results in place


def test_sources_with_fixed_folds_refuse_folds_they_do_not_have(nnunet_folders):
    """AxonCallosumEM and MTNeuro fix one fold (their region split); nnU-Net would silently train any other fold on
    a random 80:20 split, mixing the regions."""
    raw, pre, res = nnunet_folders
    rng = np.random.default_rng(0)
    with NnUNetRawWriter(raw, 17, "Regions", LABELS) as writer:
        for i, split in enumerate(["train"] * 4 + ["validation"] * 2 + ["test"] * 2):
            label = np.zeros((16, 16), np.uint8)
            label[2:10, 2:10], label[4:8, 4:8] = 1, 2
            writer.add_case(rng.integers(0, 255, (16, 16)).astype(np.uint8), label, split=split,
                            subject=f"r{i}", modality="SEM", pixel_size_um=0.1)
        writer.finish()
    with pytest.raises(ValueError, match=r"Dataset017_Regions fixes 1 fold\(s\) .*fold\(s\) 1, 2, 3, 4 .*train -f 0"):
        prepare_experiment([11, 17], raw, pre, res, 20, nnunet=NnUNetSettings(), progress=False)
    assert not (raw / "Dataset020_FULL_AGG").exists()  # refused before anything was aggregated
    design = prepare_experiment([11, 17], raw, pre, res, 20, nnunet=NnUNetSettings(folds=(0,)), aggregate_folds=2,
                                progress=False)
    assert design.nnunet.folds == (0,)
