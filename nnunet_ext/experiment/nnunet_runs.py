"""The experiment's nnU-Net runs: the commands that plan, train and predict (``commands.sh``), and running them here.

Every model gets the same configuration, trainer, plans, folds and checkpoint
(:class:`~nnunet_ext.experiment.design.NnUNetSettings`). The script (:func:`experiment_script`) is what a user runs
on a GPU machine; :func:`train_and_predict` runs the same steps in this process (``--run``).
"""
from __future__ import annotations

import contextlib
import os
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from nnunet_ext import __version__, trainers
from nnunet_ext.experiment.design import PREDICTIONS_DIR, ExperimentDataset, ExperimentDesign
from nnunet_ext.nnunet.commands import (applied_environment, cpu_environment, plan_and_preprocess_cpu,
                                        run_nnunet_command, train)


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


def trainer_epochs(trainer: str) -> int | None:
    """Epochs a trainer runs (for the progress bar): the ``schedule_epochs`` of one of nnunet-ext's trainers.

    None for nnU-Net's own trainers, trainers that keep nnU-Net's schedule, and names nnunet-ext does not define
    (``nnUNetv2_train`` itself says when a trainer does not exist).
    """
    if trainer not in trainers.TRAINER_MODULES:
        return None
    return getattr(getattr(trainers, trainer), "schedule_epochs", None)


def _is_trained(design: ExperimentDesign, model: ExperimentDataset) -> bool:
    folder = design.model_folder(model)
    return all((folder / f"fold_{fold}" / "checkpoint_final.pth").is_file() for fold in design.nnunet.folds)


def train_and_predict(design: ExperimentDesign, output_dir: Path, predictions_root: Path, log_file: Path,
                      retrain: bool = False, progress: bool = True) -> None:
    """Plan, train (models whose every fold has a final checkpoint are reused unless ``retrain``) and predict.

    Training runs the stock ``nnUNetv2_train`` console script (and planning ``nnUNetv2_plan_and_preprocess``, or for
    the CPU plans variant :func:`~nnunet_ext.nnunet.commands.plan_and_preprocess_cpu`, the same steps as
    :func:`planning_commands` in this process). Prediction runs ``nnUNetv2_predict``'s steps in this process, one
    model load per model (:func:`predict_test_sets`). Predictions go to ``predictions_root/<model>/<target>``; the
    prediction commands written to the log name ``output_dir``, the experiment folder of ``commands.sh``.
    """
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
    epochs = trainer_epochs(s.trainer) if to_train and progress else None
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
        predict_test_sets(design, model, predictions_root, env, log_file, on_each=lambda: bar.update(),
                          output_dir=output_dir)
    bar.close()
    print(f"  predicted {bar.n} test sets in {time.perf_counter() - started:.0f} s", flush=True)


def predict_test_sets(design: ExperimentDesign, model: ExperimentDataset, predictions_root: Path, env: dict,
                      log_file: Path | None = None, on_each=None, output_dir: Path | None = None) -> None:
    """Predict every target's test set with one model: what ``nnUNetv2_predict`` runs, loading the model once.

    ``nnUNetv2_predict``'s own steps (``nnUNetPredictor`` with its defaults: step 0.5, Gaussian weighting, mirroring;
    ``predict_from_files_sequential``, i.e. ``-npp 0 -nps 0``), run in this process: one command per model and test
    set would import torch and nnU-Net again each time, tens of seconds on a small CPU for seconds of inference.
    Each prediction is logged as the ``nnUNetv2_predict`` command of ``commands.sh`` in ``output_dir`` (default:
    the parent of ``predictions_root``).
    """
    import torch  # heavy: only when predicting
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    s = design.nnunet
    output_dir = predictions_root.parent if output_dir is None else output_dir
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
                print(f"# {prediction_command(design, model, target, output_dir)}", flush=True)
                destination.mkdir(parents=True, exist_ok=True)
                predictor.predict_from_files_sequential(str(Path(design.raw_root) / target.folder / "imagesTs"),
                                                        str(destination), save_probabilities=False, overwrite=True)
                if on_each is not None:
                    on_each()
    finally:
        if log is not None:
            log.close()
