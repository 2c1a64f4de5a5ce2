"""The generalist-versus-dedicated experiment of AxonDeepSeg's multi-domain aggregation study, on nnU-Net datasets.

Given several converted source datasets (nnU-Net raw datasets with a test set), the experiment

1. uses every training source as the dataset of one *dedicated* model, and aggregates the training sources into one
   dataset for the *generalist* model (:func:`nnunet_ext.dataset_conversion.aggregate_datasets.aggregate_datasets`: test sets
   unioned, folds that validate on every source);
2. writes the exact nnU-Net commands that plan, train and predict (``commands.sh``), or runs them;
3. predicts every source's test set (``imagesTs``) with every model and scores it against ``labelsTs``
   (:func:`nnunet_ext.evaluation.segmentation_metrics.evaluate_folder`);
4. assembles a Dice matrix per class (rows: target test sets, columns: models), drawn as heat maps; the paired
   t-test of generalist versus dedicated on in-domain pairs; and an out-of-distribution table for sources held out
   of every training.

Definitions
-----------
- Dice of a model on a target, per class: the mean over the target's test images of the per-image Dice, images where
  the class is in neither reference nor prediction left out (nnU-Net's convention; ``Dice`` of
  :func:`~nnunet_ext.evaluation.segmentation_metrics.per_class_means`). The matrix CSV also gives the pooled Dice
  (all test pixels as one image).
- In-domain pairs: for each training source, the dedicated model trained on it and the generalist, both scored on
  that source's test set. Dedicated models scored on other sources are left out of the test, as in the paper.
- ``pairing="source"`` (default, the paper's: "pairs of Dice score", N = 8 for 4 sources x 2 classes): one pair per
  training source and class, of the two models' mean Dice on that source's test set.
  ``pairing="image"``: one pair per test image of a training source and class (both Dice defined). This gives more
  pairs, but the images of one source are not independent samples of the population of datasets the claim is about,
  so its p-value is an optimistic one; prefer ``source`` when there are enough sources.
  Both are tested with :func:`scipy.stats.ttest_rel` (generalist minus dedicated: positive t favours the generalist),
  over all classes together (the paper) and for each class alone.
- Out-of-distribution: a held-out source is in no training set; every model is scored on its test set. The table
  compares the generalist with the dedicated model matched to it (given as ``HELD_OUT=SOURCE``, or the one training
  source of the same modality in the manifests; the paper compares SEM2 with the SEM model), the best and the mean of
  the dedicated models.
"""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

PAIRINGS = ("source", "image")
ALTERNATIVES = ("two-sided", "greater", "less")
DEDICATED, GENERALIST = "dedicated", "generalist"
DESIGN_FILE = "experiment.json"
COMMANDS_FILE = "commands.sh"
PREDICTIONS_DIR = "predictions"
#: Files :func:`write_experiment_results` writes whatever the classes (per-class files are added to these).
RESULT_FILES = ("per_case_metrics.csv", "dice_matrix.csv", "dice_heatmaps.png", "ttest.csv", "ttest_pairs.csv")


# ----------------------------------------------------------------------------------------------------------------
# Design
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ExperimentDataset:
    """One nnU-Net raw dataset of the experiment.

    ``name`` labels it in tables and plots (the dataset name without ``DatasetXXX_``); ``role`` is ``"source"``
    (a training source: dedicated model and target), ``"held_out"`` (target only) or ``"aggregate"`` (the
    generalist's training set).
    """

    name: str
    folder: str
    dataset_id: int
    role: str
    modality: str = ""
    matched_dedicated: str | None = None  # held-out only: the dedicated model it is compared with


@dataclass
class NnUNetSettings:
    """How every model is planned, trained and used for prediction (the same for all, so the comparison is fair)."""

    configuration: str = "2d"
    trainer: str = "nnUNetTrainer"
    plans: str = "nnUNetPlans"
    planner: str | None = None            # -pl of nnUNetv2_plan_and_preprocess (nnU-Net's default planner if None)
    folds: tuple = (0, 1, 2, 3, 4)        # trained, then ensembled for prediction (the paper ensembles 5 folds)
    device: str = "cuda"
    checkpoint: str = "checkpoint_final.pth"
    cpu_plans: dict | None = None         # {"patch_size", "features_per_stage", "batch_size"}: nnUNetPlans_cpu

    def __post_init__(self):
        self.folds = tuple(_fold_value(f) for f in self.folds)
        if not self.folds:
            raise ValueError("no fold to train")
        if self.cpu_plans is not None:
            from nnunet_ext.nnunet.plans_cpu import CPU_PLANS_NAME

            self.plans = CPU_PLANS_NAME


@dataclass
class ExperimentDesign:
    """Everything needed to write the commands, run them, and evaluate: stored as ``experiment.json``."""

    sources: list[ExperimentDataset]
    held_out: list[ExperimentDataset]
    aggregate: ExperimentDataset
    raw_root: str
    preprocessed_root: str
    results_root: str
    nnunet: NnUNetSettings = field(default_factory=NnUNetSettings)
    pairing: str = "source"
    alternative: str = "two-sided"
    aggregate_command: str = ""

    def __post_init__(self):
        if self.pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {self.pairing!r}")
        if self.alternative not in ALTERNATIVES:
            raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {self.alternative!r}")
        names = [d.name for d in (*self.sources, *self.held_out, self.aggregate)]
        if len(set(names)) != len(names):
            raise ValueError(f"datasets need distinct names in tables and plots, got {names}")

    @property
    def generalist(self) -> str:
        return self.aggregate.name

    @property
    def models(self) -> list[ExperimentDataset]:
        """Dedicated models (one per training source), then the generalist."""
        return [*self.sources, self.aggregate]

    @property
    def targets(self) -> list[ExperimentDataset]:
        """Test sets scored: training sources, then held-out sources."""
        return [*self.sources, *self.held_out]

    @property
    def dedicated_of(self) -> dict[str, str]:
        """``{training source: its dedicated model}`` (the in-domain pairs of the t-test)."""
        return {s.name: s.name for s in self.sources}

    @property
    def ood_matches(self) -> dict[str, str | None]:
        return {h.name: h.matched_dedicated for h in self.held_out}

    def model_folder(self, model: ExperimentDataset) -> Path:
        s = self.nnunet
        return Path(self.results_root) / model.folder / f"{s.trainer}__{s.plans}__{s.configuration}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, where: str = DESIGN_FILE) -> "ExperimentDesign":
        try:
            content = json.loads(text)
            return cls(sources=[ExperimentDataset(**d) for d in content["sources"]],
                       held_out=[ExperimentDataset(**d) for d in content["held_out"]],
                       aggregate=ExperimentDataset(**content["aggregate"]),
                       nnunet=NnUNetSettings(**content["nnunet"]),
                       **{k: content[k] for k in ("raw_root", "preprocessed_root", "results_root", "pairing",
                                                  "alternative", "aggregate_command")})
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{where}: not an experiment design written by nnunet-ext ({error})") from None


def _fold_value(fold) -> int | str:
    if str(fold) == "all":
        return "all"
    try:
        return int(fold)
    except (TypeError, ValueError):
        raise ValueError(f"fold must be an integer or 'all', got {fold!r}") from None


def _dataset_id(folder: Path) -> int:
    match = re.fullmatch(r"Dataset(\d{3})_.+", folder.name)
    if not match:
        raise ValueError(f"{folder}: not an nnU-Net dataset folder name (DatasetXXX_Name)")
    return int(match.group(1))


def _short_name(folder_name: str) -> str:
    return re.sub(r"^Dataset\d{3}_", "", folder_name)


def _modality(folder: Path) -> str:
    from nnunet_ext.dataset_conversion.nnunet_raw import read_manifest

    try:
        manifest = read_manifest(folder)
    except FileNotFoundError:
        return ""
    if "modality" not in manifest:
        return ""
    return "+".join(sorted({m for m in manifest["modality"].astype(str) if m}))


def _read_dataset_json(folder: Path) -> dict:
    path = folder / "dataset.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found; is {folder} an nnU-Net raw dataset?") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def _check_test_set(folder: Path, file_ending: str) -> int:
    images = sorted((folder / "imagesTs").glob(f"*_0000{file_ending}")) if (folder / "imagesTs").is_dir() else []
    if not images:
        raise ValueError(f"{folder}: no test image in imagesTs; every source needs a test set to be scored on "
                         f"(convert it with test subjects)")
    labels = folder / "labelsTs"
    missing = [p.name for p in images if not (labels / (p.name[: -len(f"_0000{file_ending}")] + file_ending)).is_file()]
    if missing:
        raise ValueError(f"{folder}: {len(missing)} test image(s) have no label in labelsTs ({', '.join(missing[:3])}"
                         f"{' ...' if len(missing) > 3 else ''}); the experiment scores labelled test sets only")
    return len(images)


def prepare_experiment(sources: Sequence[str | int | os.PathLike], raw_root: str | os.PathLike,
                       preprocessed_root: str | os.PathLike, results_root: str | os.PathLike, aggregate_id: int,
                       aggregate_name: str = "FULL_AGG", held_out: Sequence[str] = (),
                       nnunet: NnUNetSettings | None = None, aggregate_folds: int = 5, seed: int = 0,
                       group_by: str | Mapping[str, str] = "subject", pairing: str = "source",
                       alternative: str = "two-sided", progress: bool = True) -> ExperimentDesign:
    """Resolve the datasets and create the generalist's aggregated dataset (or reuse it); return the design.

    Parameters
    ----------
    sources : sequence of path, ``DatasetXXX_Name`` or ID
        Converted raw datasets in ``raw_root``, each with a labelled test set. Those not named in ``held_out``
        are training sources: each gets a dedicated model, and all of them are aggregated for the generalist.
    raw_root, preprocessed_root, results_root : path
        nnU-Net's three folders.
    aggregate_id, aggregate_name : int, str
        The aggregated dataset ``DatasetXXX_Name``. If it exists and aggregates exactly the training sources, it is
        reused; otherwise an existing folder is an error.
    held_out : sequence of str
        ``SOURCE`` or ``SOURCE=DEDICATED``: sources left out of every training and scored out of distribution
        (they need not be repeated in ``sources``). ``DEDICATED`` names the training source whose dedicated model
        the out-of-distribution table compares with; by default the one training source of the same modality.
    nnunet : NnUNetSettings
        Configuration, trainer, plans, folds, device, checkpoint of every model.
    aggregate_folds, seed, group_by :
        Folds of the aggregated dataset (see :func:`~nnunet_ext.dataset_conversion.aggregate_datasets.aggregate_datasets`).
    pairing, alternative :
        The t-test's pairs (``"source"`` or ``"image"``, see the module docstring) and alternative hypothesis.
    """
    from nnunet_ext.dataset_conversion.aggregate_datasets import aggregate_datasets, resolve_dataset
    from nnunet_ext.dataset_conversion.nnunet_raw import dataset_folder_name, read_manifest

    nnunet = nnunet or NnUNetSettings()
    raw_root, preprocessed_root, results_root = (Path(p).resolve() for p in (raw_root, preprocessed_root,
                                                                             results_root))
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")

    def resolve(reference) -> Path:
        folder = resolve_dataset(reference, raw_root).resolve()
        if folder.parent != raw_root:
            raise ValueError(f"{folder}: nnU-Net trains datasets of its raw folder only ({raw_root}); move or convert "
                             f"the dataset there")
        return folder

    held_out_folders: dict[Path, str | None] = {}
    for spec in held_out:
        text = str(spec)
        match = None
        if "=" in text and not Path(text).is_dir():
            text, _, match = text.rpartition("=")
        held_out_folders[resolve(text)] = match or None
    folders = list(dict.fromkeys([resolve(s) for s in sources] + list(held_out_folders)))
    training = [f for f in folders if f not in held_out_folders]
    if len(training) < 2:
        raise ValueError(f"the experiment needs at least two training sources (one dedicated model each, aggregated "
                         f"for the generalist); got {[f.name for f in training]}")

    dataset_jsons = {f: _read_dataset_json(f) for f in folders}
    first = folders[0]
    for folder in folders[1:]:
        for key in ("labels", "file_ending", "channel_names"):
            if dataset_jsons[folder].get(key) != dataset_jsons[first].get(key):
                raise ValueError(f"{folder / 'dataset.json'}: {key} {dataset_jsons[folder].get(key)!r} differ from "
                                 f"{first / 'dataset.json'}'s {dataset_jsons[first].get(key)!r}; every model is "
                                 f"scored on every test set class by class, so the sources need one label schema, "
                                 f"file format and channels (convert or aggregate them with one schema first)")
    for folder in folders:
        _check_test_set(folder, dataset_jsons[folder]["file_ending"])

    names = [_short_name(f.name) for f in folders]
    if len(set(names)) != len(names):  # two datasets with one name under different IDs: keep the IDs
        names = [f.name for f in folders]
    name_of = dict(zip(folders, names))
    modality_of = {f: _modality(f) for f in folders}

    def matched(folder: Path) -> str | None:
        explicit = held_out_folders[folder]
        if explicit is not None:
            by_name = [t for t in training if explicit in (name_of[t], t.name)]
            target = by_name[0] if by_name else resolve(explicit)
            if target not in training:
                raise ValueError(f"--held-out {folder.name}={explicit}: {target.name} is not a training source")
            return name_of[target]
        same = [t for t in training if modality_of[folder] and modality_of[t] == modality_of[folder]]
        return name_of[same[0]] if len(same) == 1 else None

    source_entries = [ExperimentDataset(name_of[f], f.name, _dataset_id(f), "source", modality_of[f])
                      for f in training]
    held_out_entries = [ExperimentDataset(name_of[f], f.name, _dataset_id(f), "held_out", modality_of[f], matched(f))
                        for f in folders if f in held_out_folders]

    for fold in nnunet.folds:
        if fold != "all" and fold >= aggregate_folds:
            raise ValueError(f"fold {fold} does not exist with {aggregate_folds} aggregate folds (--aggregate-folds)")
    aggregate_folder = raw_root / dataset_folder_name(aggregate_id, aggregate_name)
    if aggregate_folder in folders:
        raise ValueError(f"{aggregate_folder.name} is one of the sources; choose another --aggregate-id or name")
    command = " ".join(["nnunet-ext", "aggregate", *[str(_dataset_id(f)) for f in training], "--raw",
                        shlex.quote(str(raw_root)), "--preprocessed", shlex.quote(str(preprocessed_root)), "-d",
                        str(aggregate_id), "-n", aggregate_name, "--folds", str(aggregate_folds), "--seed", str(seed)]
                       + _group_by_arguments(group_by))
    if aggregate_folder.is_dir():
        manifest = read_manifest(aggregate_folder)
        existing = set(manifest["source_dataset"]) if "source_dataset" in manifest else set()
        splits_file = aggregate_folder / "splits_final.json"
        n_splits = len(json.loads(splits_file.read_text())) if splits_file.is_file() else None
        if existing != {f.name for f in training} or n_splits != aggregate_folds:
            raise FileExistsError(f"{aggregate_folder} exists but aggregates {sorted(existing)} in {n_splits} folds, "
                                  f"not {sorted(f.name for f in training)} in {aggregate_folds}; choose another "
                                  f"--aggregate-id/--aggregate-name, or remove it")
        print(f"Reusing the aggregated dataset {aggregate_folder} ({', '.join(sorted(existing))})")
    else:
        aggregate_folder = aggregate_datasets(training, raw_root, aggregate_id, aggregate_name,
                                              n_folds=aggregate_folds, seed=seed, group_by=group_by,
                                              preprocessed_root=preprocessed_root, progress=progress)
    aggregate_entry = ExperimentDataset(_short_name(aggregate_folder.name), aggregate_folder.name, aggregate_id,
                                        "aggregate", "+".join(sorted({m for f in training
                                                                      for m in modality_of[f].split("+") if m})))
    return ExperimentDesign(source_entries, held_out_entries, aggregate_entry, str(raw_root), str(preprocessed_root),
                            str(results_root), nnunet, pairing, alternative, command)


def _group_by_arguments(group_by) -> list[str]:
    if isinstance(group_by, str):
        return [] if group_by == "subject" else ["--group-by", group_by]
    return ["--group-by", *[f"{k}={v}" for k, v in group_by.items()]]


# ----------------------------------------------------------------------------------------------------------------
# nnU-Net commands
# ----------------------------------------------------------------------------------------------------------------
def _ids(datasets: Sequence[ExperimentDataset]) -> list[str]:
    return [str(d.dataset_id) for d in datasets]


def planning_commands(design: ExperimentDesign, datasets: Sequence[ExperimentDataset] | None = None) -> list[str]:
    """nnU-Net's fingerprint, plans and preprocessing of the models' datasets (the CPU plans variant if set)."""
    s = design.nnunet
    ids = _ids(design.models if datasets is None else datasets)
    planner = ["-pl", s.planner] if s.planner else []
    if s.cpu_plans is None:
        return [" ".join(["nnUNetv2_plan_and_preprocess", "-d", *ids, "-c", s.configuration, *planner,
                          "--verify_dataset_integrity"])]
    cpu = s.cpu_plans
    lines = [" ".join(["nnUNetv2_plan_and_preprocess", "-d", *ids, *planner, "--verify_dataset_integrity", "--no_pp",
                       "-npfp", "1"])]
    for dataset_id in ids:
        lines.append(" ".join(["nnunet-ext", "plans-cpu", "-d", dataset_id, "-c", s.configuration,
                               "--patch-size", *map(str, cpu["patch_size"]),
                               "--features", *map(str, cpu["features_per_stage"]),
                               "--batch-size", str(cpu["batch_size"]), "--overwrite"]))
    lines.append(" ".join(["nnUNetv2_preprocess", "-d", *ids, "-plans_name", s.plans, "-c", s.configuration,
                           "-np", "1"]))
    return lines


def training_commands(design: ExperimentDesign, model: ExperimentDataset) -> list[str]:
    s = design.nnunet
    return [" ".join(["nnUNetv2_train", str(model.dataset_id), s.configuration, str(fold), "-p", s.plans, "-tr",
                      s.trainer, "-device", s.device]) for fold in s.folds]


def prediction_folder(output_dir: str | os.PathLike, model: ExperimentDataset, target: ExperimentDataset) -> Path:
    """Where the predictions of ``model`` on ``target``'s test set go: ``OUT/predictions/<model>/<target>``."""
    return Path(output_dir) / PREDICTIONS_DIR / model.name / target.name


def prediction_command(design: ExperimentDesign, model: ExperimentDataset, target: ExperimentDataset,
                       output_dir: str | os.PathLike) -> str:
    s = design.nnunet
    images = Path(design.raw_root) / target.folder / "imagesTs"
    return " ".join(["nnUNetv2_predict", "-i", shlex.quote(str(images)), "-o",
                     shlex.quote(str(prediction_folder(output_dir, model, target))), "-d", str(model.dataset_id),
                     "-c", s.configuration, "-f", *map(str, s.folds), "-tr", s.trainer, "-p", s.plans, "-chk",
                     s.checkpoint, "-device", s.device])


def experiment_script(design: ExperimentDesign, output_dir: str | os.PathLike, invocation: str = "") -> str:
    """The shell script that plans, trains and predicts every model, then assembles the results."""
    from nnunet_ext import __version__

    output_dir = Path(output_dir)
    s = design.nnunet
    model_lines = [f"#   {m.name}: {'generalist' if m.role == 'aggregate' else 'dedicated'}, {m.folder}"
                   + (f" (aggregates {', '.join(x.name for x in design.sources)})" if m.role == "aggregate" else "")
                   for m in design.models]
    target_lines = [f"#   {t.name}: {t.folder}/imagesTs" + (" (held out of every training)" if t.role == "held_out"
                                                              else "") for t in design.targets]
    lines = [
        "#!/usr/bin/env bash",
        f"# Generalist-versus-dedicated experiment, written by nnunet-ext {__version__} on "
        f"{time.strftime('%Y-%m-%d %H:%M')}.",
        *([f"# Written by: {invocation}"] if invocation else []),
        "# Models:", *model_lines, "# Test sets (every model predicts every one):", *target_lines,
        "set -euo pipefail",
        f"export nnUNet_raw={shlex.quote(design.raw_root)}",
        f"export nnUNet_preprocessed={shlex.quote(design.preprocessed_root)}",
        f"export nnUNet_results={shlex.quote(design.results_root)}",
        'eval "$(nnunet-ext env)"  # lets nnUNetv2_train/nnUNetv2_predict find nnunet-ext\'s trainers',
        "",
        "# 1. Datasets: the dedicated models train on the sources as they are; the generalist's aggregated dataset",
        "#    was written by 'nnunet-ext experiment' with:",
        f"#    {design.aggregate_command}",
        "",
        "# 2. Fingerprint, plans and preprocessing",
        *planning_commands(design),
        "",
        f"# 3. Training: {len(design.models)} models x {len(s.folds)} fold(s)",
        *[line for m in design.models for line in training_commands(design, m)],
        "",
        f"# 4. Prediction of every test set by every model ({'ensemble of folds ' if len(s.folds) > 1 else 'fold '}"
        f"{' '.join(map(str, s.folds))})",
        *[prediction_command(design, m, t, output_dir) for m in design.models for t in design.targets],
        "",
        "# 5. Dice matrix and heat maps per class, paired t-test, out-of-distribution table",
        f"nnunet-ext experiment --evaluate-only -o {shlex.quote(str(output_dir))}",
        "",
    ]
    return "\n".join(lines)


def _trainer_epochs(trainer: str) -> int | None:
    """Epochs a trainer runs (for the progress bar), read from the source of the first class that sets them."""
    import contextlib
    import inspect
    import io

    try:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates its search
            trainer_class = recursive_find_trainer_class_by_name(trainer)
    except Exception:  # unknown trainer: nnUNetv2_train itself will say so
        return None
    for klass in inspect.getmro(trainer_class):
        try:
            match = re.search(r"self\.num_epochs\s*=\s*(\d+)", inspect.getsource(klass.__init__))
        except (OSError, TypeError):
            continue
        if match:
            return int(match.group(1))
    return None


def _is_trained(design: ExperimentDesign, model: ExperimentDataset) -> bool:
    folder = design.model_folder(model)
    return all((folder / f"fold_{fold}" / "checkpoint_final.pth").is_file() for fold in design.nnunet.folds)


def train_and_predict(design: ExperimentDesign, output_dir: Path, predictions_root: Path, log_file: Path,
                      retrain: bool = False, progress: bool = True) -> None:
    """Plan, train (models whose every fold has a final checkpoint are reused unless ``retrain``) and predict.

    Training runs the stock ``nnUNetv2_train`` console script (and planning ``nnUNetv2_plan_and_preprocess``, or for
    the CPU plans variant :func:`~nnunet_ext.nnunet.commands.plan_and_preprocess_cpu`, the same steps as
    :func:`planning_commands` in this process). Prediction runs ``nnUNetv2_predict``'s steps in this process, one
    model load per model (:func:`predict_test_sets`). Predictions go to ``predictions_root/<model>/<target>``.
    """
    from tqdm import tqdm

    from nnunet_ext.nnunet.commands import (applied_environment, cpu_environment, plan_and_preprocess_cpu,
                                            run_nnunet_command, train)

    s = design.nnunet
    env = cpu_environment(base_env={**os.environ, "nnUNet_raw": design.raw_root,
                                    "nnUNet_preprocessed": design.preprocessed_root,
                                    "nnUNet_results": design.results_root})
    to_train = [m for m in design.models if retrain or not _is_trained(design, m)]
    for model in design.models:
        if model not in to_train:
            print(f"Reusing the trained model {design.model_folder(model)} (folds {' '.join(map(str, s.folds))}; "
                  f"--retrain trains it again)")
    if to_train:
        print(f"Planning and preprocessing {', '.join(m.folder for m in to_train)} (log: {log_file})", flush=True)
        started = time.perf_counter()
        if s.cpu_plans is None:
            for line in planning_commands(design, to_train):
                run_nnunet_command(shlex.split(line), env, log_file)
        else:
            for model in to_train:
                plan_and_preprocess_cpu(model.dataset_id, env, s.configuration,
                                        patch_size=s.cpu_plans["patch_size"], batch_size=s.cpu_plans["batch_size"],
                                        features_per_stage=s.cpu_plans["features_per_stage"], log_file=log_file)
        print(f"  planned in {time.perf_counter() - started:.0f} s", flush=True)
    epochs = None
    if to_train and progress:
        with applied_environment(env):  # nnU-Net's trainer lookup reads nnUNet_extTrainer from os.environ
            epochs = _trainer_epochs(s.trainer)
    for model in to_train:
        for fold in s.folds:
            print(f"Training {model.name}: nnUNetv2_train {model.dataset_id} {s.configuration} {fold} -p {s.plans} "
                  f"-tr {s.trainer} -device {s.device}", flush=True)
            started = time.perf_counter()
            train(model.dataset_id, s.configuration, fold, s.trainer, env, plans=s.plans, device=s.device,
                  log_file=log_file, epochs=epochs)
            print(f"  trained in {time.perf_counter() - started:.0f} s", flush=True)
    started = time.perf_counter()
    bar = tqdm(total=len(design.models) * len(design.targets), desc="Predicting test sets", unit="model x target",
               disable=not progress)
    for model in design.models:
        predict_test_sets(design, model, predictions_root, env, log_file, on_each=lambda: bar.update())
    bar.close()
    print(f"  predicted {bar.n} test sets in {time.perf_counter() - started:.0f} s", flush=True)


def predict_test_sets(design: ExperimentDesign, model: ExperimentDataset, predictions_root: Path, env: dict,
                      log_file: Path | None = None, on_each=None) -> None:
    """Predict every target's test set with one model: what ``nnUNetv2_predict`` runs, loading the model once.

    ``nnUNetv2_predict``'s own steps (``nnUNetPredictor`` with its defaults: step 0.5, Gaussian weighting, mirroring;
    ``predict_from_files_sequential``, i.e. ``-npp 0 -nps 0``), run in this process: one command per model and test
    set would import torch and nnU-Net again each time, tens of seconds on a small CPU for seconds of inference.
    """
    import contextlib

    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_ext.nnunet.commands import applied_environment

    s = design.nnunet
    log = open(log_file, "a") if log_file else None
    try:
        with applied_environment(env), contextlib.ExitStack() as stack:
            if log is not None:
                stack.enter_context(contextlib.redirect_stdout(log))
                stack.enter_context(contextlib.redirect_stderr(log))
            device = torch.device(s.device)
            predictor = nnUNetPredictor(perform_everything_on_device=device.type == "cuda", device=device,
                                        allow_tqdm=False)
            predictor.initialize_from_trained_model_folder(str(design.model_folder(model)), list(s.folds),
                                                           checkpoint_name=s.checkpoint)
            for target in design.targets:
                destination = predictions_root / model.name / target.name
                print(f"# {prediction_command(design, model, target, predictions_root.parent)}", flush=True)
                destination.mkdir(parents=True, exist_ok=True)
                predictor.predict_from_files_sequential(str(Path(design.raw_root) / target.folder / "imagesTs"),
                                                        str(destination), save_probabilities=False, overwrite=True)
                if on_each is not None:
                    on_each()
    finally:
        if log is not None:
            log.close()


# ----------------------------------------------------------------------------------------------------------------
# Evaluation of the predictions
# ----------------------------------------------------------------------------------------------------------------
def _test_pixel_sizes(folder: Path) -> dict | None:
    """``{case: pixel size in um}`` of the test cases, when the manifest gives every one (for HD95 in um)."""
    from nnunet_ext.dataset_conversion.nnunet_raw import read_manifest

    try:
        manifest = read_manifest(folder)
    except FileNotFoundError:
        return None
    if "pixel_size_um" not in manifest:
        return None
    test = manifest[manifest["split"] == "test"]
    sizes = test["pixel_size_um"].astype(float)
    if test.empty or not np.all(np.isfinite(sizes)) or not np.all(sizes > 0):
        return None
    return dict(zip(test["case_id"], sizes))


def evaluate_predictions(design: ExperimentDesign, predictions_root: str | os.PathLike, progress: bool = True):
    """Score ``predictions_root/<model>/<target>`` against every target's ``labelsTs``.

    Returns
    -------
    pandas.DataFrame
        :func:`~nnunet_ext.evaluation.segmentation_metrics.evaluate_folder`'s per-case rows (every metric) of every
        model and target, with columns ``model``, ``model_kind`` (dedicated or generalist), ``target`` and
        ``target_role`` (source or held_out) first. HD95_um uses the pixel sizes of the target's manifest.
    """
    import pandas as pd
    from tqdm import tqdm

    from nnunet_ext.evaluation.segmentation_metrics import evaluate_folder

    predictions_root = Path(predictions_root)
    pairs = [(m, t) for m in design.models for t in design.targets]
    missing = [str(predictions_root / m.name / t.name) for m, t in pairs
               if not (predictions_root / m.name / t.name).is_dir()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} prediction folder(s) missing, e.g. {missing[0]}; run the "
                                f"prediction commands of {COMMANDS_FILE} first")
    tables = []
    for model, target in tqdm(pairs, desc="Evaluating", unit="model x target", disable=not progress):
        folder = Path(design.raw_root) / target.folder
        table = evaluate_folder(predictions_root / model.name / target.name, folder / "labelsTs",
                                spacing=_test_pixel_sizes(folder), dataset_json=folder / "dataset.json",
                                progress=False)
        table.insert(0, "target_role", target.role)
        table.insert(0, "target", target.name)
        table.insert(0, "model_kind", GENERALIST if model.role == "aggregate" else DEDICATED)
        table.insert(0, "model", model.name)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


# ----------------------------------------------------------------------------------------------------------------
# Assembly: pure functions on tables
# ----------------------------------------------------------------------------------------------------------------
def dice_matrix(per_case, in_domain: Mapping[str, Sequence[str]] | None = None,
                held_out: Sequence[str] = ()):
    """Dice of every model on every target, per class, from per-case rows.

    Parameters
    ----------
    per_case : pandas.DataFrame
        Rows of :func:`evaluate_predictions` (columns ``model``, ``target``, ``case``, ``label``, ``class_name``,
        the metrics and TP/FP/FN).
    in_domain : mapping, optional
        ``{model: [targets it was trained on]}``, marks the in-domain cells.
    held_out : sequence of str
        Targets held out of every training.

    Returns
    -------
    pandas.DataFrame
        One row per target, model and class (models and targets in first-seen order, classes in label order):
        ``Dice`` (mean over test images, NaN images left out: the ``Dice`` of
        :func:`~nnunet_ext.evaluation.segmentation_metrics.per_class_means`), ``Dice_pooled``, ``IoU``,
        ``n_cases``, ``n_cases_defined``, ``in_domain``, ``held_out_target``.
    """
    import pandas as pd

    from nnunet_ext.evaluation.segmentation_metrics import per_class_means

    in_domain = {k: set(v) for k, v in (in_domain or {}).items()}
    rows = []
    for (model, target), group in per_case.groupby(["model", "target"], sort=False):
        means = per_class_means(group)
        for row in means[means["label"] != "mean"].itertuples():
            rows.append({"target": target, "model": model, "label": row.label, "class_name": row.class_name,
                         "Dice": row.Dice, "Dice_pooled": row.Dice_pooled, "IoU": row.IoU,
                         "n_cases": row.n_cases, "n_cases_defined": row.n_cases_defined,
                         "in_domain": target in in_domain.get(model, ()), "held_out_target": target in held_out})
    matrix = pd.DataFrame(rows)
    if matrix.empty:
        raise ValueError("no evaluation row to build a Dice matrix from")
    targets = list(dict.fromkeys(per_case["target"]))
    models = list(dict.fromkeys(per_case["model"]))
    labels = list(dict.fromkeys(per_case["label"]))
    order = matrix.assign(_t=matrix["target"].map(targets.index), _m=matrix["model"].map(models.index),
                          _l=matrix["label"].map(labels.index))
    return order.sort_values(["_l", "_t", "_m"], kind="stable").drop(columns=["_t", "_m", "_l"]).reset_index(drop=True)


def class_names(matrix) -> list[str]:
    """Classes of a matrix in label order."""
    return list(dict.fromkeys(matrix["class_name"]))


def matrix_of_class(matrix, class_name: str, value: str = "Dice"):
    """The Dice matrix of one class as a table: rows targets, columns models (first-seen order)."""
    subset = matrix[matrix["class_name"] == class_name]
    if subset.empty:
        raise ValueError(f"no class {class_name!r} in the matrix (classes: {class_names(matrix)})")
    wide = subset.pivot(index="target", columns="model", values=value)
    wide = wide.loc[list(dict.fromkeys(subset["target"])), list(dict.fromkeys(subset["model"]))]
    wide.index.name, wide.columns.name = "target", None
    return wide


def generalist_vs_dedicated_pairs(per_case, generalist: str, dedicated_of: Mapping[str, str],
                                  pairing: str = "source"):
    """The in-domain pairs of Dice scores (generalist, dedicated) the paired t-test compares.

    Parameters
    ----------
    per_case : pandas.DataFrame
        Per-case rows (see :func:`dice_matrix`).
    generalist : str
        The generalist model's name.
    dedicated_of : mapping
        ``{training source (target name): the dedicated model trained on it alone}``.
    pairing : {"source", "image"}
        ``source``: one pair per source and class, of the two models' mean Dice on the source's test set (the
        matrix cells). ``image``: one pair per test image and class, where both Dice are defined.

    Returns
    -------
    pandas.DataFrame
        ``target, class_name, [case], dedicated_model, Dice_dedicated, Dice_generalist, difference`` (generalist
        minus dedicated); pairs with an undefined Dice (class in no image) are dropped.
    """
    import pandas as pd

    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
    known_models, known_targets = set(per_case["model"]), set(per_case["target"])
    for target, model in dedicated_of.items():
        if model not in known_models or target not in known_targets:
            raise ValueError(f"no evaluation of model {model!r} on target {target!r}")
    if generalist not in known_models:
        raise ValueError(f"no evaluation of the generalist {generalist!r}")
    frames = []
    if pairing == "source":
        matrix = dice_matrix(per_case)
        for target, model in dedicated_of.items():
            cells = matrix[matrix["target"] == target].pivot(index=["label", "class_name"], columns="model",
                                                             values="Dice")
            frames.append(pd.DataFrame({"target": target, "class_name": cells.index.get_level_values("class_name"),
                                        "dedicated_model": model, "Dice_dedicated": cells[model].to_numpy(),
                                        "Dice_generalist": cells[generalist].to_numpy()}))
    else:
        for target, model in dedicated_of.items():
            on_target = per_case[per_case["target"] == target]
            keys = ["case", "label", "class_name"]
            dedicated = on_target[on_target["model"] == model][[*keys, "Dice"]]
            general = on_target[on_target["model"] == generalist][[*keys, "Dice"]]
            merged = dedicated.merge(general, on=keys, suffixes=("_dedicated", "_generalist"), validate="one_to_one")
            if len(merged) != len(dedicated) or len(merged) != len(general):
                raise ValueError(f"{target}: the dedicated and generalist models were scored on different images")
            frames.append(merged.assign(target=target, dedicated_model=model).drop(columns="label"))
    pairs = pd.concat(frames, ignore_index=True)
    pairs = pairs.dropna(subset=["Dice_dedicated", "Dice_generalist"]).reset_index(drop=True)
    pairs["difference"] = pairs["Dice_generalist"] - pairs["Dice_dedicated"]
    columns = ["target", "class_name", *(["case"] if pairing == "image" else []), "dedicated_model",
               "Dice_dedicated", "Dice_generalist", "difference"]
    return pairs[columns]


def paired_ttest(pairs, alternative: str = "two-sided", pairing: str = "source"):
    """``scipy.stats.ttest_rel`` of generalist versus dedicated Dice, over all classes and per class.

    Parameters
    ----------
    pairs : pandas.DataFrame
        :func:`generalist_vs_dedicated_pairs`' output.
    alternative : {"two-sided", "greater", "less"}
        ``greater``: the generalist's Dice is greater.

    Returns
    -------
    pandas.DataFrame
        One row for all classes together (``scope = "all classes"``, the paper's test), then one per class:
        ``n_pairs``, the two means, ``mean_difference`` (generalist minus dedicated), ``t_statistic``, ``p_value``,
        ``alternative``, ``pairing``. With fewer than two pairs t and p are NaN; with identical differences scipy's
        own result (NaN, or infinite t) is kept and ``note`` says why.
    """
    import pandas as pd
    from scipy.stats import ttest_rel

    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    rows = []
    scopes = [("all classes", pairs)] + [(name, group) for name, group in pairs.groupby("class_name", sort=False)]
    for scope, group in scopes:
        generalist = group["Dice_generalist"].to_numpy(dtype=float)
        dedicated = group["Dice_dedicated"].to_numpy(dtype=float)
        row = {"scope": scope, "pairing": pairing, "n_pairs": len(group),
               "mean_Dice_generalist": float(np.mean(generalist)) if len(group) else math.nan,
               "mean_Dice_dedicated": float(np.mean(dedicated)) if len(group) else math.nan,
               "mean_difference": float(np.mean(generalist - dedicated)) if len(group) else math.nan,
               "t_statistic": math.nan, "p_value": math.nan, "alternative": alternative, "note": ""}
        if len(group) < 2:
            row["note"] = "fewer than 2 pairs"
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # zero variance of the differences
                result = ttest_rel(generalist, dedicated, alternative=alternative)
            row["t_statistic"], row["p_value"] = float(result.statistic), float(result.pvalue)
            differences = generalist - dedicated
            if np.allclose(differences, differences[0], rtol=0, atol=1e-12):
                row["note"] = "all differences equal: the test is undefined"
        rows.append(row)
    return pd.DataFrame(rows)


def ood_table(matrix, generalist: str, dedicated_models: Sequence[str], held_out: Mapping[str, str | None]):
    """Generalist versus dedicated models on targets held out of every training, per class.

    Parameters
    ----------
    matrix : pandas.DataFrame
        :func:`dice_matrix`' output.
    generalist : str
    dedicated_models : sequence of str
    held_out : mapping
        ``{held-out target: matched dedicated model or None}``.

    Returns
    -------
    pandas.DataFrame
        One row per held-out target and class: ``Dice_generalist``, ``matched_dedicated`` and its
        ``Dice_matched_dedicated``, ``generalist_minus_matched``, ``best_dedicated`` and ``Dice_best_dedicated``,
        ``Dice_mean_dedicated``, ``n_cases``.
    """
    import pandas as pd

    rows = []
    for target, matched in held_out.items():
        on_target = matrix[matrix["target"] == target]
        if on_target.empty:
            raise ValueError(f"held-out target {target!r} is not in the matrix")
        if matched is not None and matched not in dedicated_models:
            raise ValueError(f"{target}: matched model {matched!r} is not a dedicated model ({list(dedicated_models)})")
        for class_name in class_names(on_target):
            cells = on_target[on_target["class_name"] == class_name].set_index("model")
            dedicated = cells.loc[list(dedicated_models), "Dice"].astype(float)
            general = float(cells.loc[generalist, "Dice"])
            matched_dice = float(dedicated[matched]) if matched is not None else math.nan
            best = dedicated.idxmax() if dedicated.notna().any() else None
            rows.append({"target": target, "class_name": class_name, "Dice_generalist": general,
                         "matched_dedicated": matched or "", "Dice_matched_dedicated": matched_dice,
                         "generalist_minus_matched": general - matched_dice,
                         "best_dedicated": best or "", "Dice_best_dedicated": float(dedicated.max()),
                         "Dice_mean_dedicated": float(dedicated.mean()),
                         "n_cases": int(cells.loc[generalist, "n_cases"])})
    return pd.DataFrame(rows)


def plot_dice_heatmaps(matrix, path: str | os.PathLike, classes: Sequence[str] | None = None,
                       generalist: str | None = None, title: str | None = None) -> Path:
    """Heat maps of the Dice matrix, one panel per class: rows targets, columns models, values in the cells.

    In-domain cells (a model on a test set of its training data) are outlined; held-out targets are marked in
    the row labels and the generalist in the column labels. Saved with the Agg backend through a temporary file.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    path = Path(path)
    classes = list(classes) if classes is not None else class_names(matrix)
    targets = list(dict.fromkeys(matrix["target"]))
    models = list(dict.fromkeys(matrix["model"]))
    held = set(matrix.loc[matrix["held_out_target"], "target"])
    row_labels = [f"{t} (held out)" if t in held else t for t in targets]
    column_labels = [f"{m}\n(generalist)" if m == generalist else m for m in models]
    cell = 0.9
    label_width = 0.3 + 0.08 * max(len(label) for label in row_labels)
    width = len(classes) * (label_width + 0.6 + cell * len(models)) + 1.0
    height = 1.8 + cell * len(targets)
    figure, axes = plt.subplots(1, len(classes), figsize=(width, height), squeeze=False, layout="constrained")
    image = None
    for axis, class_name in zip(axes[0], classes):
        wide = matrix_of_class(matrix, class_name).reindex(index=targets, columns=models)
        values = wide.to_numpy(dtype=float)
        image = axis.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        axis.set_facecolor("0.85")
        subset = matrix[matrix["class_name"] == class_name]
        in_domain = set(zip(subset.loc[subset["in_domain"], "target"], subset.loc[subset["in_domain"], "model"]))
        for i, target in enumerate(targets):
            for j, model in enumerate(models):
                value = values[i, j]
                text = "n/a" if not np.isfinite(value) else f"{value:.3f}"
                colour = "black" if np.isfinite(value) and value > 0.6 else "white"
                if not np.isfinite(value):
                    colour = "black"
                axis.text(j, i, text, ha="center", va="center", color=colour, fontsize=9)
                if (target, model) in in_domain:
                    # inset, so that the outlines of neighbouring cells stay apart
                    axis.add_patch(Rectangle((j - 0.44, i - 0.44), 0.88, 0.88, fill=False, edgecolor="tab:red",
                                             lw=2))
        axis.set_xticks(range(len(models)), column_labels, fontsize=9)
        axis.set_yticks(range(len(targets)), row_labels, fontsize=9)
        axis.set_xlabel("model (trained on)")
        axis.set_ylabel("test set (target)")
        axis.set_title(f"Dice, {class_name}")
    figure.colorbar(image, ax=list(axes[0]), fraction=0.05 / len(classes), pad=0.02, label="Dice")
    figure.suptitle(title or "Dice per test set and model (red outline: in-domain)", fontsize=10)
    return _save_figure(figure, path)


def _save_figure(figure, path: Path) -> Path:
    from nnunet_ext.evaluation.segmentation_metrics import save_figure

    return save_figure(figure, path, bbox_inches="tight")


def _file_part(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", str(name)).strip("_") or "class"


def write_experiment_results(per_case, design: ExperimentDesign, folder: str | os.PathLike) -> dict:
    """Write the matrix, heat maps, t-test and OOD table of a per-case table into ``folder`` (which must exist).

    Files: ``per_case_metrics.csv`` (every model, target, test image and class, every metric), ``dice_matrix.csv``
    (long), ``dice_matrix_<class>.csv`` (rows targets, columns models), ``dice_heatmap_<class>.png`` and
    ``dice_heatmaps.png`` (all classes), ``ttest.csv`` and ``ttest_pairs.csv``, ``ood.csv`` (with held-out sources).

    Returns
    -------
    dict
        ``{"matrix", "pairs", "ttest", "ood"}`` tables and ``"files"``, the written paths.
    """
    folder = Path(folder)
    in_domain = {s.name: [s.name] for s in design.sources}
    in_domain[design.generalist] = [s.name for s in design.sources]
    matrix = dice_matrix(per_case, in_domain, [h.name for h in design.held_out])
    pairs = generalist_vs_dedicated_pairs(per_case, design.generalist, design.dedicated_of, design.pairing)
    ttest = paired_ttest(pairs, design.alternative, design.pairing)
    files = [folder / "per_case_metrics.csv", folder / "dice_matrix.csv", folder / "ttest.csv",
             folder / "ttest_pairs.csv"]
    per_case.to_csv(files[0], index=False)
    matrix.to_csv(files[1], index=False)
    ttest.to_csv(files[2], index=False)
    pairs.to_csv(files[3], index=False)
    for class_name in class_names(matrix):
        wide_path = folder / f"dice_matrix_{_file_part(class_name)}.csv"
        matrix_of_class(matrix, class_name).to_csv(wide_path)
        files.append(wide_path)
        files.append(plot_dice_heatmaps(matrix, folder / f"dice_heatmap_{_file_part(class_name)}.png", [class_name],
                                        design.generalist))
    files.append(plot_dice_heatmaps(matrix, folder / "dice_heatmaps.png", generalist=design.generalist))
    ood = None
    if design.held_out:
        ood = ood_table(matrix, design.generalist, [s.name for s in design.sources], design.ood_matches)
        ood.to_csv(folder / "ood.csv", index=False)
        files.append(folder / "ood.csv")
    return {"matrix": matrix, "pairs": pairs, "ttest": ttest, "ood": ood, "files": files}


# ----------------------------------------------------------------------------------------------------------------
# The whole experiment into an output folder
# ----------------------------------------------------------------------------------------------------------------
def check_output_folder(output_dir: Path, overwrite: bool) -> None:
    """Refuse an existing non-empty folder unless ``overwrite``, and even then one that is not an experiment's."""
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        if not overwrite:
            raise FileExistsError(f"{output_dir} exists; use --overwrite to replace it")
        if not (output_dir / DESIGN_FILE).is_file():
            raise FileExistsError(f"{output_dir} is not an experiment folder (no {DESIGN_FILE}); --overwrite only "
                                  f"replaces a previous experiment's output, choose another folder")


def _replace_folder(temporary: Path, output_dir: Path) -> None:
    if output_dir.exists():
        old = output_dir.parent / f".{output_dir.name}.replaced-{os.getpid()}"
        os.replace(output_dir, old)
        os.replace(temporary, output_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(temporary, output_dir)


def write_experiment_plan(design: ExperimentDesign, output_dir: str | os.PathLike, overwrite: bool = False,
                          invocation: str = "") -> Path:
    """Write ``experiment.json`` and ``commands.sh`` into ``output_dir`` (temporary folder, then moved)."""
    output_dir = Path(output_dir).resolve()
    check_output_folder(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.incomplete-", dir=output_dir.parent))
    try:
        _write_plan_files(design, temporary, output_dir, invocation)
        _replace_folder(temporary, output_dir)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return output_dir / COMMANDS_FILE


def _write_plan_files(design: ExperimentDesign, folder: Path, final_dir: Path, invocation: str) -> None:
    (folder / DESIGN_FILE).write_text(design.to_json())
    script = folder / COMMANDS_FILE
    script.write_text(experiment_script(design, final_dir, invocation))
    script.chmod(0o755)


def run_experiment(design: ExperimentDesign, output_dir: str | os.PathLike, overwrite: bool = False,
                   retrain: bool = False, invocation: str = "", progress: bool = True) -> dict:
    """Train every model, predict every test set, evaluate, and write everything into ``output_dir``.

    The folder is assembled beside its destination and moved into place when complete; nnU-Net's output goes to
    ``logs/nnunet.log`` in it (kept as ``<output_dir>.failed-nnunet.log`` if a step fails).

    Returns
    -------
    dict
        As :func:`write_experiment_results`, with ``per_case`` and ``output_dir``.
    """
    output_dir = Path(output_dir).resolve()
    check_output_folder(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.incomplete-", dir=output_dir.parent))
    log_file = temporary / "logs" / "nnunet.log"
    log_file.parent.mkdir()
    try:
        _write_plan_files(design, temporary, output_dir, invocation)
        train_and_predict(design, temporary, temporary / PREDICTIONS_DIR, log_file, retrain, progress)
        per_case = evaluate_predictions(design, temporary / PREDICTIONS_DIR, progress)
        results = write_experiment_results(per_case, design, temporary)
        if output_dir.exists() and not overwrite and any(output_dir.iterdir()):  # appeared meanwhile
            raise FileExistsError(f"{output_dir} exists; use --overwrite to replace it")
        _replace_folder(temporary, output_dir)
    except BaseException:
        if log_file.is_file():
            kept = output_dir.parent / f"{output_dir.name}.failed-nnunet.log"
            shutil.copyfile(log_file, kept)
            print(f"nnU-Net's log of the failed run: {kept}", file=sys.stderr)
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    results["files"] = [output_dir / p.relative_to(temporary) for p in results["files"]]
    return {**results, "per_case": per_case, "output_dir": output_dir}


def evaluate_experiment(output_dir: str | os.PathLike, overwrite: bool = False, progress: bool = True) -> dict:
    """Evaluate the predictions that ``commands.sh`` wrote into ``output_dir/predictions`` and write the results.

    The result files are written to a temporary folder, then moved into ``output_dir``; existing result files are
    replaced only with ``overwrite``.
    """
    output_dir = Path(output_dir).resolve()
    design_file = output_dir / DESIGN_FILE
    if not design_file.is_file():
        raise FileNotFoundError(f"{design_file}: not found; is {output_dir} an experiment folder written by "
                                f"'nnunet-ext experiment'?")
    design = ExperimentDesign.from_json(design_file.read_text(), str(design_file))
    existing = [p for p in output_dir.iterdir() if p.name in RESULT_FILES or p.name == "ood.csv"
                or re.fullmatch(r"dice_(matrix|heatmap)_.+\.(csv|png)", p.name)]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; use --overwrite to replace the results")
    per_case = evaluate_predictions(design, output_dir / PREDICTIONS_DIR, progress)
    temporary = Path(tempfile.mkdtemp(prefix=".results.incomplete-", dir=output_dir))
    try:
        results = write_experiment_results(per_case, design, temporary)
        for path in existing:
            path.unlink()
        for path in results["files"]:
            os.replace(path, output_dir / path.name)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    results["files"] = [output_dir / p.name for p in results["files"]]
    return {**results, "per_case": per_case, "output_dir": output_dir, "design": design}


def format_results(results: dict, design: ExperimentDesign) -> str:
    """Text summary: the Dice matrix of each class, the t-test and the OOD table."""
    matrix = results["matrix"]
    lines = []
    for class_name in class_names(matrix):
        wide = matrix_of_class(matrix, class_name)
        lines += [f"Dice, {class_name} (rows: test sets, columns: models; generalist {design.generalist})",
                  wide.to_string(float_format=lambda v: f"{v:.3f}"), ""]
    lines.append(f"Paired t-test, generalist vs dedicated, in-domain pairs per {design.pairing} and class "
                 f"({design.alternative}):")
    for row in results["ttest"].itertuples():
        lines.append(f"  {row.scope:<14} N={row.n_pairs:<3} generalist {row.mean_Dice_generalist:.3f}  dedicated "
                     f"{row.mean_Dice_dedicated:.3f}  difference {row.mean_difference:+.3f}  t={row.t_statistic:.3f}"
                     f"  p={row.p_value:.4g}" + (f"  ({row.note})" if row.note else ""))
    if results["ood"] is not None:
        lines += ["", "Out of distribution (held-out test sets):",
                  results["ood"].drop(columns="n_cases").to_string(index=False, float_format=lambda v: f"{v:.3f}")]
    return "\n".join(lines)
