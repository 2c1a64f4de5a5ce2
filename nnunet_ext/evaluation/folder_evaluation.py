"""Scoring a folder of predictions against a folder of references: ``nnunet-ext evaluate``.

Files pair by identical name and are read with nnU-Net's own reader/writers (every format nnU-Net writes); labels,
regions and the ignore label come from ``dataset.json`` (or are given); each pair is scored with
:func:`~nnunet_ext.evaluation.segmentation_metrics.metrics_per_class`, in worker processes when asked. The result is a
per-case table, per-class means (NaN cases left out, as nnU-Net) and the mean IoU, written as one CSV (per-case rows,
then summary rows) and a PNG of box plots, both atomically.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from nnunet_ext.evaluation.segmentation_metrics import (COUNT_COLUMNS, METRIC_COLUMNS, SPACING_FROM_FILES, LabelOrRegion,
                                                        check_same_shape, dice_per_class, label_key, metrics_per_class,
                                                        normalise_label, axis_spacing)
from nnunet_ext.io.atomic import save_figure


def supported_file_endings() -> list[str]:
    """File endings nnU-Net's reader/writers know (longest first, so ``.nii.gz`` wins over ``.gz``)."""
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES

    endings = {e.lower() for io_class in LIST_OF_IO_CLASSES for e in io_class.supported_file_endings}
    return sorted(endings, key=len, reverse=True)


def _ending_of(name: str, endings: Sequence[str]) -> str | None:
    lower = name.lower()
    return next((e for e in endings if lower.endswith(e)), None)


def find_dataset_json(prediction_dir: Path, reference_dir: Path) -> Path | None:
    """The dataset.json nnUNetv2_predict copies into its output folder, or the raw dataset's beside labelsTr/Ts."""
    for candidate in (prediction_dir / "dataset.json", reference_dir.parent / "dataset.json"):
        if candidate.is_file():
            return candidate
    return None


def labels_from_dataset_json(dataset_json: dict) -> tuple[list[LabelOrRegion], dict, int | None]:
    """Foreground labels (or regions, for region-based datasets), their names and the ignore label.

    Uses nnU-Net's ``LabelManager``, so the classes are those nnU-Net's own evaluation scores.
    """
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    manager = LabelManager(dataset_json["labels"], regions_class_order=dataset_json.get("regions_class_order"))
    labels = [normalise_label(r) for r in (manager.foreground_regions if manager.has_regions
                                           else manager.foreground_labels)]
    names = {}
    for name, value in dataset_json["labels"].items():
        if name != "ignore":
            names[normalise_label(value)] = name
    return labels, names, manager.ignore_label


def _quiet():
    """Silence nnU-Net's reader chatter (tracebacks of readers it tries, "no spacing file" warnings)."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


def _read_segmentation(reader, path: Path) -> tuple[np.ndarray, dict]:
    """A label image as an int array without nnU-Net's channel axis (and without the dummy axis of 2D images)."""
    try:
        with _quiet():
            segmentation, properties = reader.read_seg(str(path))
    except Exception as error:  # nnU-Net readers raise RuntimeError/AssertionError/IO errors of their libraries
        raise ValueError(f"{path}: cannot be read as a segmentation by {type(reader).__name__}: {error}") from None
    if segmentation.shape[0] != 1:
        raise ValueError(f"{path}: a segmentation must have one channel, found {segmentation.shape[0]} "
                         "(RGB or grey+alpha image?)")
    segmentation = segmentation[0]
    if not np.all(np.mod(segmentation, 1) == 0):
        raise ValueError(f"{path}: label values must be integers")
    segmentation = segmentation.astype(np.int32)
    spacing = list(properties.get("spacing", [1.0] * segmentation.ndim))
    if segmentation.ndim == 3 and segmentation.shape[0] == 1:
        # nnU-Net stores 2D images as 3D with a dummy first axis (spacing 999 or 999 x the in-plane spacing).
        segmentation, spacing = segmentation[0], spacing[1:]
    return segmentation, {"spacing": spacing}


def allowed_label_values(dataset_json: dict, labels=None, ignore_label: int | None = None) -> set[int]:
    """Every value a segmentation of this dataset may hold: background, the labels (or the values of
    ``regions_class_order``), the ignore label, and any label asked for explicitly."""
    allowed = {0}
    for value in list(dataset_json.get("labels", {}).values()) + list(dataset_json.get("regions_class_order") or []):
        allowed.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    for label in labels or ():
        allowed.update(int(v) for v in (label if isinstance(label, (list, tuple)) else [label]))
    if ignore_label is not None:
        allowed.add(int(ignore_label))
    return allowed


def _check_label_values(path: Path, array: np.ndarray, allowed: set[int]) -> None:
    """Refuse a segmentation holding values that are no label of the dataset: they would be scored as background
    (an axon written as 7 scores Dice 0, an AxonDeepSeg 0/127/255 mask quietly lower)."""
    values = np.unique(array)
    unknown = [int(v) for v in values if int(v) not in allowed]
    if unknown:
        hint = ""
        if set(unknown) <= {127, 255}:
            hint = (" (an AxonDeepSeg 0/127/255 mask? convert it to nnU-Net's labels, or score it without a "
                    "dataset.json with --labels 127 255)")
        raise ValueError(f"{path}: label value(s) {unknown[:10]}{' ...' if len(unknown) > 10 else ''} are not labels "
                         f"of the dataset.json (allowed: {sorted(allowed)}); they would silently count as "
                         f"background{hint}")


def _spacing_from_file(reader, path: Path, file_spacing: list) -> list:
    name = type(reader).__name__
    if name == "NaturalImage2DIO":
        raise ValueError(f"{path}: PNG/BMP files hold no pixel size; give --pixel-size (or a per-case table)")
    if name == "Tiff3DIO":
        ending = _ending_of(path.name, [".tiff", ".tif"]) or path.suffix
        if not (path.parent / (path.name[: -len(ending)] + ".json")).is_file():
            raise ValueError(f"{path}: no spacing file {path.name[: -len(ending)]}.json beside it (nnU-Net's Tiff3DIO "
                             "convention); give --pixel-size instead")
    return file_spacing


def _evaluate_case(task: dict) -> list[dict]:
    """Rows of one case (run in worker processes, hence a plain dict in and out)."""
    prediction, prediction_info = _read_segmentation(task["reader"], task["prediction_file"])
    reference, reference_info = _read_segmentation(task["reader"], task["reference_file"])
    check_same_shape(prediction, reference, where=f"{task['prediction_file']} vs {task['reference_file']}: ")
    allowed = task.get("allowed_values")
    if allowed is not None:
        for path, array in ((task["prediction_file"], prediction), (task["reference_file"], reference)):
            _check_label_values(path, array, allowed)
    spacing = task["spacing"]
    if isinstance(spacing, str) and spacing == SPACING_FROM_FILES:
        spacing = _spacing_from_file(task["reader"], task["reference_file"], reference_info["spacing"])
    labels = task["labels"]
    if labels is None:  # labels found in this case; absent ones are filled in later, once all cases are known
        present = np.union1d(np.unique(reference), np.unique(prediction))
        labels = [int(v) for v in present if v != 0 and v != task["ignore_label"]]
    try:
        metrics = metrics_per_class(prediction, reference, labels, spacing, task["ignore_label"])
    except ValueError as error:
        raise ValueError(f"{task['reference_file']}: {error}") from None
    spacing_text = "" if spacing is None else " ".join(f"{s:g}" for s in axis_spacing(spacing, reference.ndim))
    rows = []
    for label, values in metrics.items():
        rows.append({"case": task["case"], "label": label, **values, "spacing": spacing_text,
                     "n_pixels": int(reference.size), "shape": reference.shape,
                     "reference_file": str(task["reference_file"]),
                     "prediction_file": str(task["prediction_file"])})
    return rows


def evaluate_folder(
    prediction_dir: str | os.PathLike,
    reference_dir: str | os.PathLike,
    labels=None,
    spacing=None,
    dataset_json: str | os.PathLike | dict | None = None,
    ignore_label: int | None = None,
    class_names: Mapping | None = None,
    allow_missing: bool = False,
    num_processes: int = 1,
    progress: bool = True,
):
    """Score every prediction of a folder against the reference of the same file name.

    Parameters
    ----------
    prediction_dir, reference_dir : path-like
        Folders of label images in any format nnU-Net reads (PNG, TIFF, NIfTI, ...; 2D or 3D), e.g. the output
        of ``nnUNetv2_predict`` and a ``labelsTs`` folder. Files pair by identical name.
    labels : iterable of int or tuple of int, optional
        Labels or regions to score. Default: the foreground labels (or regions) of the dataset.json, else every
        non-zero value found in the reference or prediction files (a label absent from a case then gets NaN there).
    spacing : float, sequence, ``"from_files"`` or mapping, optional
        Pixel size per axis for ``HD95_um``: one number (isotropic), one per axis, ``"from_files"`` (the spacing
        nnU-Net's reader reports; PNG has none), or ``{case: spacing}`` (e.g. from a conversion manifest).
    dataset_json : path or dict, optional
        Default: ``prediction_dir/dataset.json`` (copied there by nnUNetv2_predict), else
        ``reference_dir/../dataset.json``. Gives file ending, reader/writer, labels, names and ignore label.
    ignore_label : int, optional
        Overrides the dataset.json's ignore label.
    class_names : mapping, optional
        ``{label: name}``, overriding the dataset.json's names.
    allow_missing : bool
        Skip references without prediction (nnU-Net's ``chill``) instead of raising.
    num_processes : int
        Worker processes (spawned, as nnU-Net's evaluation does).
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    pandas.DataFrame
        One row per case and label: ``case, label, class_name, Dice, IoU, F1, precision, recall, HD95_px,
        HD95_um, TP, FP, FN, TN, n_ref, n_pred, spacing, reference_file, prediction_file``; ``label`` is
        nnU-Net's text key (``"1"``, ``"(1, 2)"``). See :func:`per_class_means` for the summary.
    """
    import pandas as pd
    from tqdm import tqdm

    prediction_dir, reference_dir = Path(prediction_dir), Path(reference_dir)
    for folder in (prediction_dir, reference_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"folder not found: {folder}")

    dataset = _load_dataset_json(dataset_json, prediction_dir, reference_dir)
    names: dict = {}
    if dataset is not None:
        dataset_labels, names, dataset_ignore = labels_from_dataset_json(dataset)
        labels = dataset_labels if labels is None else labels
        ignore_label = dataset_ignore if ignore_label is None else ignore_label
    if labels is not None:
        labels = [normalise_label(label) for label in labels]
        if not labels:
            raise ValueError("no label to evaluate")
    names.update({normalise_label(k): v for k, v in (class_names or {}).items()})

    file_ending = dataset["file_ending"].lower() if dataset is not None else _common_ending(reference_dir)
    references = _files_by_case(reference_dir, file_ending)
    predictions = _files_by_case(prediction_dir, file_ending)
    if not references:
        raise FileNotFoundError(f"no {file_ending} file in {reference_dir}")
    if not predictions:
        raise FileNotFoundError(f"no {file_ending} file in {prediction_dir}")
    without_reference = sorted(set(predictions) - set(references))
    if without_reference:
        raise ValueError(f"{len(without_reference)} prediction(s) have no reference of the same name in "
                         f"{reference_dir}: {_preview(without_reference)}")
    without_prediction = sorted(set(references) - set(predictions))
    if without_prediction and not allow_missing:
        raise ValueError(f"{len(without_prediction)} reference(s) have no prediction in {prediction_dir}: "
                         f"{_preview(without_prediction)} (use --allow-missing to evaluate only the predicted cases)")
    cases = sorted(predictions)

    reader = _reader_for(file_ending, references[cases[0]], dataset)
    # with a dataset.json, values outside its labels are refused rather than scored as background
    allowed = None if dataset is None else allowed_label_values(dataset, labels, ignore_label)
    tasks = []
    for case in cases:
        case_spacing = spacing
        if isinstance(spacing, Mapping):
            if case not in spacing:
                raise ValueError(f"no pixel size given for case {case!r}")
            case_spacing = spacing[case]
        tasks.append({"case": case, "prediction_file": predictions[case], "reference_file": references[case],
                      "reader": reader, "labels": labels, "spacing": case_spacing, "ignore_label": ignore_label,
                      "allowed_values": allowed})

    rows: list[dict] = []
    bar = tqdm(total=len(tasks), desc="evaluating", unit="case", disable=not progress)
    if num_processes > 1 and len(tasks) > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(min(num_processes, len(tasks))) as pool:
            for case_rows in pool.imap(_evaluate_case, tasks):
                rows.extend(case_rows)
                bar.update()
    else:
        for task in tasks:
            rows.extend(_evaluate_case(task))
            bar.update()
    bar.close()

    table = pd.DataFrame(rows)
    if labels is None:
        table = _fill_absent_labels(table)
    table["class_name"] = [names.get(label, label_key(label)) for label in table["label"]]
    table["label"] = [label_key(label) for label in table["label"]]
    table = table.drop(columns=["n_pixels", "shape"])
    columns = ["case", "label", "class_name", *METRIC_COLUMNS, *COUNT_COLUMNS, "spacing", "reference_file",
               "prediction_file"]
    return table[columns].reset_index(drop=True)


def _fill_absent_labels(table):
    """Without explicit labels each case scored its own labels; add NaN rows for labels another case has."""
    import pandas as pd

    all_labels = sorted(set(table["label"]), key=lambda label: (isinstance(label, tuple), label))
    extra = []
    for case, group in table.groupby("case", sort=False):
        first = group.iloc[0]
        for label in set(all_labels) - set(group["label"]):
            # Absent from both images: TP = FP = FN = 0, metrics NaN (nnU-Net's convention).
            extra.append({**first.to_dict(), "label": label, **dict.fromkeys(METRIC_COLUMNS, float("nan")),
                          "TP": 0, "FP": 0, "FN": 0, "TN": int(first["TP"] + first["FP"] + first["FN"] + first["TN"]),
                          "n_ref": 0, "n_pred": 0})
    if extra:
        table = pd.concat([table, pd.DataFrame(extra)], ignore_index=True)
    order = {label: i for i, label in enumerate(all_labels)}
    table["_order"] = table["label"].map(order)
    return table.sort_values(["case", "_order"], kind="stable").drop(columns="_order")


def per_class_means(per_case):
    """Per-class summary of :func:`evaluate_folder`'s table, plus one row averaging the classes.

    Parameters
    ----------
    per_case : pandas.DataFrame
        The per-case table (extra rows of other folders may be concatenated before, with their own ``case``).

    Returns
    -------
    pandas.DataFrame
        One row per ``label`` (first-seen order): ``class_name``, the mean over cases of each metric (NaN cases
        left out, as nnU-Net's ``nanmean``), ``Dice_pooled`` and ``IoU_pooled`` (from the TP/FP/FN summed over
        all cases, i.e. the dataset as one image), ``n_cases`` and ``n_cases_defined`` (cases where the class is
        in the reference or the prediction). A last row, ``label = "mean"``, averages the class rows: its ``IoU``
        is the mean IoU over classes (mIoU) and its ``Dice`` the mean Dice. Background counts only if label 0
        was evaluated.
    """
    import pandas as pd

    summary_rows = []
    for label, group in per_case.groupby("label", sort=False):
        tp, fp, fn = (float(group[c].sum()) for c in ("TP", "FP", "FN"))
        row = {"label": label, "class_name": group["class_name"].iloc[0]}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (e.g. HD95_um without spacing)
            row.update({metric: float(np.nanmean(group[metric].to_numpy(dtype=float))) for metric in METRIC_COLUMNS})
        row["Dice_pooled"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        row["IoU_pooled"] = tp / (tp + fp + fn) if tp + fp + fn else float("nan")
        row["n_cases"] = len(group)
        row["n_cases_defined"] = int(group["Dice"].notna().sum())
        summary_rows.append(row)
    summary = pd.DataFrame(summary_rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_row = {"label": "mean", "class_name": "mean over classes",
                    **{c: float(np.nanmean(summary[c].to_numpy(dtype=float)))
                       for c in (*METRIC_COLUMNS, "Dice_pooled", "IoU_pooled")},
                    "n_cases": int(per_case["case"].nunique()),
                    "n_cases_defined": int(summary["n_cases_defined"].min())}
    return pd.concat([summary, pd.DataFrame([mean_row])], ignore_index=True)


def mean_iou(per_case) -> float:
    """Mean over the evaluated classes of the per-class mean IoU (the ``IoU`` of :func:`per_class_means`' last row)."""
    return float(per_class_means(per_case)["IoU"].iloc[-1])


def dice_scores_on_folder(prediction_dir, reference_dir, labels, class_names: Mapping | None = None) -> dict:
    """Mean Dice per class of a predictions folder against a labels folder (e.g. PNGs: 0 bg, 1 myelin, 2 axon).

    Returns ``{class name or label: mean Dice}`` (NaN cases left out, as nnU-Net). HD95 is not computed here.
    """
    prediction_dir, reference_dir = Path(prediction_dir), Path(reference_dir)
    labels = [normalise_label(label) for label in labels]
    dataset = _load_dataset_json(None, prediction_dir, reference_dir)
    file_ending = dataset["file_ending"].lower() if dataset is not None else _common_ending(reference_dir)
    references = _files_by_case(reference_dir, file_ending)
    predictions = _files_by_case(prediction_dir, file_ending)
    missing = sorted(set(predictions) - set(references))
    if missing:
        raise ValueError(f"prediction(s) without reference in {reference_dir}: {_preview(missing)}")
    if not predictions:
        raise FileNotFoundError(f"no {file_ending} prediction in {prediction_dir}")
    reader = _reader_for(file_ending, references[sorted(predictions)[0]], dataset)
    per_label: dict = {label: [] for label in labels}
    for case in sorted(predictions):
        prediction, _ = _read_segmentation(reader, predictions[case])
        reference, _ = _read_segmentation(reader, references[case])
        check_same_shape(prediction, reference, where=f"{predictions[case]} vs {references[case]}: ")
        for label, score in dice_per_class(prediction, reference, labels).items():
            per_label[label].append(score)
    names = dict(class_names or {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {names.get(label, label): float(np.nanmean(scores)) for label, scores in per_label.items()}


def _load_dataset_json(dataset_json, prediction_dir: Path, reference_dir: Path) -> dict | None:
    if isinstance(dataset_json, Mapping):
        return dict(dataset_json)
    path = Path(dataset_json) if dataset_json is not None else find_dataset_json(prediction_dir, reference_dir)
    if path is None:
        return None
    if not path.is_file():
        raise FileNotFoundError(f"dataset.json not found: {path}")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    for key in ("labels", "file_ending"):
        if key not in content:
            raise ValueError(f"{path}: missing {key!r}")
    return content


def _common_ending(folder: Path) -> str:
    endings = supported_file_endings()
    found = {_ending_of(p.name, endings) for p in folder.iterdir() if p.is_file()} - {None}
    if not found:
        raise FileNotFoundError(f"no file nnU-Net can read ({', '.join(endings)}) in {folder}")
    if len(found) > 1:
        raise ValueError(f"{folder} mixes file endings {sorted(found)}; give a dataset.json naming the file_ending")
    return found.pop()


def _files_by_case(folder: Path, file_ending: str) -> dict[str, Path]:
    return {p.name[: -len(file_ending)]: p for p in sorted(folder.iterdir())
            if p.is_file() and p.name.lower().endswith(file_ending) and not p.name.startswith(".")}


def _reader_for(file_ending: str, example_file: Path, dataset: dict | None):
    from nnunetv2.imageio.reader_writer_registry import (
        determine_reader_writer_from_dataset_json,
        determine_reader_writer_from_file_ending,
    )

    try:
        with _quiet():
            if dataset is not None:
                reader_class = determine_reader_writer_from_dataset_json(dataset, str(example_file), verbose=False)
            else:
                try:  # readers registered for this ending first, then any reader that can open the file
                    reader_class = determine_reader_writer_from_file_ending(file_ending, str(example_file),
                                                                            verbose=False)
                except RuntimeError:
                    reader_class = determine_reader_writer_from_file_ending(
                        file_ending, str(example_file), allow_nonmatching_filename=True, verbose=False)
    except RuntimeError:
        raise ValueError(f"{example_file}: no nnU-Net reader/writer can read this file") from None
    return reader_class()


def _preview(names: Sequence[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (" ..." if len(names) > n else "")


# ------------------------------------------------------------------------------------------------------ outputs
def metrics_table_for_csv(per_case, summary=None):
    """The per-case rows followed by the summary rows (``case = "mean"``), as the CSV stores them."""
    import pandas as pd

    summary = per_class_means(per_case) if summary is None else summary
    summary_rows = summary.assign(case="mean")
    table = pd.concat([per_case, summary_rows], ignore_index=True)[
        [*per_case.columns, *[c for c in summary_rows.columns if c not in per_case.columns]]
    ]
    # Counts stay integers although the summary rows leave them empty.
    for column in (*COUNT_COLUMNS, "n_cases", "n_cases_defined"):
        if column in table:
            table[column] = table[column].astype("Int64")
    return table


def plot_metrics(per_case, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Box plots of the per-case Dice, IoU and HD95 of each class (points: cases), saved as PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; use --overwrite to replace it")
    hd_column = "HD95_um" if per_case["HD95_um"].notna().any() else "HD95_px"
    panels = (("Dice", "Dice"), ("IoU", "IoU"), (hd_column, "HD95 (um)" if hd_column == "HD95_um" else "HD95 (px)"))
    groups = list(per_case.groupby("label", sort=False))
    class_names = [group["class_name"].iloc[0] for _, group in groups]
    figure, axes = plt.subplots(1, 3, figsize=(4 + 1.2 * len(groups) * 3, 4), squeeze=False)
    rng = np.random.default_rng(0)
    for axis, (column, title) in zip(axes[0], panels):
        values = [group[column].to_numpy(dtype=float) for _, group in groups]
        values = [v[np.isfinite(v)] for v in values]
        axis.boxplot(values, showfliers=False)
        axis.set_xticks(range(1, len(class_names) + 1), class_names, rotation=30, ha="right")
        for position, v in enumerate(values, start=1):
            axis.scatter(position + rng.uniform(-0.12, 0.12, v.size), v, s=10, alpha=0.6, color="tab:blue")
        if column in ("Dice", "IoU"):
            axis.set_ylim(-0.02, 1.02)
        axis.set_title(title)
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle(f"{per_case['case'].nunique()} cases")
    figure.tight_layout()
    return save_figure(figure, path)
