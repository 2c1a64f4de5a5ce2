"""The experiment's outputs: the plan folder, the whole run, the result tables and heat maps, the text summary.

:func:`write_experiment_plan` writes ``experiment.json`` and ``commands.sh``; :func:`run_experiment` runs them here
and evaluates; :func:`evaluate_experiment` evaluates the predictions ``commands.sh`` made. Folders are built beside
their destination and moved into place when complete (:mod:`nnunet_ext.io.atomic`).
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnunet_ext.experiment.comparison import (class_names, dice_matrix, generalist_vs_dedicated_pairs,
                                              matrix_of_class, ood_table, paired_ttest)
from nnunet_ext.experiment.design import COMMANDS_FILE, DESIGN_FILE, PREDICTIONS_DIR, ExperimentDesign
from nnunet_ext.experiment.nnunet_runs import experiment_script, train_and_predict
from nnunet_ext.experiment.scoring import evaluate_predictions
from nnunet_ext.io.atomic import publish_files, save_figure, scratch_folder, staging_folder

#: Files :func:`write_experiment_results` writes whatever the classes (per-class files are added to these).
RESULT_FILES = ("per_case_metrics.csv", "dice_matrix.csv", "dice_heatmaps.png", "ttest.csv", "ttest_pairs.csv")


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


def check_output_folder(output_dir: Path, overwrite: bool) -> None:
    """Refuse an existing non-empty folder unless ``overwrite``, and even then one that is not an experiment's."""
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        if not overwrite:
            raise FileExistsError(f"{output_dir} exists; use --overwrite to replace it")
        if not (output_dir / DESIGN_FILE).is_file():
            raise FileExistsError(f"{output_dir} is not an experiment folder (no {DESIGN_FILE}); --overwrite only "
                                  f"replaces a previous experiment's output, choose another folder")


def write_experiment_plan(design: ExperimentDesign, output_dir: str | os.PathLike, overwrite: bool = False,
                          invocation: str = "") -> Path:
    """Write ``experiment.json`` and ``commands.sh`` into ``output_dir`` (temporary folder, then moved)."""
    output_dir = Path(output_dir).resolve()
    check_output_folder(output_dir, overwrite)
    with staging_folder(output_dir, overwrite=True) as staging:  # check_output_folder decided on overwriting
        _write_plan_files(design, staging, output_dir, invocation)
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
    with staging_folder(output_dir, overwrite=True) as staging:  # check_output_folder decided on overwriting
        log_file = staging / "logs" / "nnunet.log"
        log_file.parent.mkdir()
        try:
            _write_plan_files(design, staging, output_dir, invocation)
            train_and_predict(design, output_dir, staging / PREDICTIONS_DIR, log_file, retrain, progress)
            per_case = evaluate_predictions(design, staging / PREDICTIONS_DIR, progress)
            results = write_experiment_results(per_case, design, staging)
            if output_dir.exists() and not overwrite and any(output_dir.iterdir()):  # appeared meanwhile
                raise FileExistsError(f"{output_dir} exists; use --overwrite to replace it")
        except BaseException:
            if log_file.is_file():
                kept = output_dir.parent / f"{output_dir.name}.failed-nnunet.log"
                shutil.copyfile(log_file, kept)
                print(f"nnU-Net's log of the failed run: {kept}", file=sys.stderr)
            raise
    results["files"] = [output_dir / p.relative_to(staging) for p in results["files"]]
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
    with scratch_folder(output_dir) as staging:
        results = write_experiment_results(per_case, design, staging)
        for path in existing:
            path.unlink()
        publish_files(staging, output_dir)
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
