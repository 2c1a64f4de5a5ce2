"""Fibre detection and morphometric agreement over folders: ``nnunet-ext evaluate --fibres / --morphometrics``.

Three reference layouts are recognised in ``GT_DIR`` (in this order):

BIDS dataset (AxonDeepSeg's)
    ``sub-*/micr/<stem>.<ext>`` with ``derivatives/labels/sub-*/micr/<stem>_seg-axonmyelin-<suffix>.png`` (or the
    ``_seg-axon-``/``_seg-myelin-`` pair); pixel sizes from the BIDS sidecars (inheritance as the converter's).
ASTIH test folder
    ``<stem>_seg-axonmyelin-<suffix>.png`` (or the pair) anywhere under ``GT_DIR``, usually beside ``<stem>.png``;
    pixel size from ``<stem>.json`` or ``pixel_size_in_micrometer.txt`` beside it.
nnU-Net label folder
    ``<case>.<ext>`` label images (0 background, 1 myelin, 2 axon unless ``dataset.json`` names them otherwise);
    pixel size and subject from the conversion's ``manifest.csv`` next to the folder when there.

Predictions for a reference ``<stem>`` are looked up anywhere under ``PRED_DIR`` (which may be ``GT_DIR``):
``<stem>_seg-axon.png`` + ``<stem>_seg-myelin.png`` (what ``nnunet-ext segment`` and AxonDeepSeg write), else
``<stem>_seg-axonmyelin.png``, else a label image ``<stem>.<ext>`` (nnU-Net's output; not in ASTIH/BIDS layouts,
where ``<stem>.png`` is the microscopy image). Masks are read as ASTIH reads them: an axon+myelin image as axon > 200
and myelin in (100, 200]; separate masks as non-zero.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

LABEL_EXTENSIONS = (".png", ".tif", ".tiff", ".nii.gz", ".nrrd", ".mha")


@dataclass
class FibreCase:
    """One reference image and its prediction."""

    name: str
    reference: list[Path]
    reference_kind: str  # "axonmyelin", "pair" or "labels"
    prediction: list[Path] = field(default_factory=list)
    prediction_kind: str = ""
    subject: str | None = None
    pixel_size_um: float | None = None
    pixel_size_source: str = ""


def _subject_of(name: str) -> str | None:
    match = re.match(r"(sub-[A-Za-z0-9]+)", name)
    return match.group(1) if match else None


def _strip(name: str) -> str:
    lower = name.lower()
    for ending in LABEL_EXTENSIONS:
        if lower.endswith(ending):
            return name[: -len(ending)]
    return name


def read_mask_pair(paths: Sequence[Path], kind: str, myelin_label: int = 1,
                   axon_label: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Axon and myelin masks from an axon+myelin image, a pair of masks or a label image."""
    from nnunet_ext.io.images import read_image_2d

    if kind == "axonmyelin":
        image = read_image_2d(paths[0])
        return image > 200, (image > 100) & (image <= 200)
    if kind == "pair":
        axon = read_image_2d(paths[0]) != 0
        myelin = read_image_2d(paths[1]) != 0
        if axon.shape != myelin.shape:
            raise ValueError(f"{paths[0]} {axon.shape} and {paths[1]} {myelin.shape} differ in shape")
        return axon, myelin & ~axon
    labels = read_image_2d(paths[0])
    return labels == axon_label, labels == myelin_label


def _reference_masks(gt_dir: Path, suffix: str) -> dict[str, tuple[list[Path], str]]:
    found: dict[str, tuple[list[Path], str]] = {}
    for path in sorted(gt_dir.rglob(f"*_seg-axonmyelin-{suffix}.png")):
        found[path.name[: -len(f"_seg-axonmyelin-{suffix}.png")]] = ([path], "axonmyelin")
    for path in sorted(gt_dir.rglob(f"*_seg-axon-{suffix}.png")):
        stem = path.name[: -len(f"_seg-axon-{suffix}.png")]
        myelin = path.with_name(f"{stem}_seg-myelin-{suffix}.png")
        if stem not in found and myelin.is_file():
            found[stem] = ([path, myelin], "pair")
    return found


def _index(folder: Path) -> dict[str, Path]:
    """File name -> path for every file under ``folder`` (first found wins)."""
    index: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            index.setdefault(path.name, path)
    return index


def _find_prediction(stem: str, index: dict[str, Path], allow_label_image: bool) -> tuple[list[Path], str]:
    axon, myelin = index.get(f"{stem}_seg-axon.png"), index.get(f"{stem}_seg-myelin.png")
    if axon and myelin:
        return [axon, myelin], "pair"
    if f"{stem}_seg-axonmyelin.png" in index:
        return [index[f"{stem}_seg-axonmyelin.png"]], "axonmyelin"
    if allow_label_image:
        for ending in LABEL_EXTENSIONS:
            if f"{stem}{ending}" in index:
                return [index[f"{stem}{ending}"]], "labels"
    return [], ""


def _manifest(gt_dir: Path) -> dict[str, dict]:
    for candidate in (gt_dir.parent / "manifest.csv", gt_dir / "manifest.csv"):
        if candidate.is_file():
            import pandas as pd

            table = pd.read_csv(candidate)
            if "case_id" in table:
                return {str(r["case_id"]): r for r in table.to_dict("records")}
    return {}


def discover_fibre_cases(prediction_dir: str | Path, reference_dir: str | Path, label_suffix: str = "manual",
                         allow_missing: bool = False, pixel_size_um: float | None = None,
                         pixel_sizes: dict | None = None) -> list[FibreCase]:
    """Pair every reference with its prediction (see the module's docstring for the layouts).

    Raises ``FileNotFoundError`` naming the references without a prediction (unless ``allow_missing``: they are
    left out) and when no reference is found.
    """
    from nnunet_ext.io.bids import find_bids_images, find_sidecar, is_bids_dataset
    from nnunet_ext.io.pixel_size import PixelSizeNotFoundError, find_pixel_size

    pred_dir, gt_dir = Path(prediction_dir), Path(reference_dir)
    for folder, what in ((pred_dir, "prediction"), (gt_dir, "reference")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: {what} folder not found")
    cases: list[FibreCase] = []
    if is_bids_dataset(gt_dir) and (gt_dir / "derivatives").is_dir():
        for image in find_bids_images(gt_dir, label_suffix):
            if not image.has_label:
                continue
            kind = "axonmyelin" if "axonmyelin" in image.label_files else "pair"
            sidecar = find_sidecar(image.path, gt_dir)
            cases.append(FibreCase(image.stem, image.used_label_files, kind, subject=image.subject and
                                   f"sub-{image.subject}", pixel_size_um=image.pixel_size_um,
                                   pixel_size_source=str(sidecar) if sidecar else ""))
        layout_has_images = True
    else:
        references = _reference_masks(gt_dir, label_suffix)
        layout_has_images = bool(references)
        for stem, (paths, kind) in sorted(references.items()):
            case = FibreCase(stem, paths, kind, subject=_subject_of(stem))
            try:
                case.pixel_size_um, case.pixel_size_source = find_pixel_size(paths[0].with_name(f"{stem}.png"))
            except PixelSizeNotFoundError:
                pass
            cases.append(case)
        if not references:  # an nnU-Net label folder
            manifest = _manifest(gt_dir)
            for path in sorted(p for p in gt_dir.iterdir() if p.is_file() and _strip(p.name) != p.name):
                stem = _strip(path.name)
                row = manifest.get(stem, {})
                size = row.get("pixel_size_um")
                subject = row.get("subject")
                cases.append(FibreCase(stem, [path], "labels",
                                       subject=str(subject) if isinstance(subject, str) else None,
                                       pixel_size_um=float(size) if size is not None and np.isfinite(size) else None,
                                       pixel_size_source="manifest.csv" if size is not None else ""))
    if not cases:
        raise FileNotFoundError(f"{gt_dir}: no references found (BIDS derivatives, <stem>_seg-axonmyelin-"
                                f"{label_suffix}.png masks, or nnU-Net label images)")
    index = _index(pred_dir)
    missing = []
    for case in cases:
        case.prediction, case.prediction_kind = _find_prediction(case.name, index, not layout_has_images
                                                                 or pred_dir.resolve() != gt_dir.resolve())
        if case.prediction_kind == "labels" and layout_has_images and case.prediction[0].suffix == ".png":
            # <stem>.png beside masks of an image layout may be the microscopy image: a label image has few values
            from nnunet_ext.io.images import read_image_2d

            if np.unique(read_image_2d(case.prediction[0])).size > 16:
                case.prediction, case.prediction_kind = [], ""
        if not case.prediction:
            missing.append(case.name)
        if pixel_size_um is not None:
            case.pixel_size_um, case.pixel_size_source = float(pixel_size_um), "option"
        elif pixel_sizes and case.name in pixel_sizes:
            case.pixel_size_um, case.pixel_size_source = float(pixel_sizes[case.name]), "table"
    if missing and not allow_missing:
        raise FileNotFoundError(f"{pred_dir}: no prediction for {len(missing)} reference(s): "
                                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} (expected "
                                f"<stem>_seg-axon.png + <stem>_seg-myelin.png, <stem>_seg-axonmyelin.png or a label "
                                f"image <stem>.png); --allow-missing scores the others")
    return [c for c in cases if c.prediction]


@dataclass
class FibreEvaluation:
    """Tables of a folder evaluation (what the CLI writes)."""

    detection: "pd.DataFrame"  # noqa: F821  per image and threshold, with pixel Dice/IoU
    dataset: "pd.DataFrame"  # noqa: F821  per threshold (ASTIH aggregation)
    fibres: "pd.DataFrame | None" = None  # noqa: F821  matched pairs
    statistics: "pd.DataFrame | None" = None  # noqa: F821  per metric (all, then per subject)
    images: "pd.DataFrame | None" = None  # noqa: F821
    subjects: "pd.DataFrame | None" = None  # noqa: F821


def _dice_iou(reference: np.ndarray, prediction: np.ndarray) -> tuple[float, float]:
    inter = np.count_nonzero(reference & prediction)
    total = np.count_nonzero(reference) + np.count_nonzero(prediction)
    union = total - inter
    return (2 * inter / total if total else float("nan")), (inter / union if union else float("nan"))


def evaluate_fibre_cases(cases: Sequence[FibreCase], thresholds: Sequence[float] = (0.5,),
                         match_threshold: float = 0.5, morphometrics: bool = False, axon_shape: str = "circle",
                         postprocess: dict | None = None, myelin_label: int = 1, axon_label: int = 2,
                         progress: bool = True) -> FibreEvaluation:
    """Detection at every threshold (and, with ``morphometrics``, agreement at ``match_threshold``) per case.

    ``postprocess``: options of :func:`nnunet_ext.morphometrics.postprocess.postprocess_masks` applied to the
    predictions first (None: as predicted).
    """
    import pandas as pd
    from tqdm import tqdm

    from nnunet_ext.evaluation import fibre_detection as fd
    from nnunet_ext.evaluation import morphometric_agreement as ma

    if morphometrics:
        unknown = [c.name for c in cases if c.pixel_size_um is None]
        if unknown:
            raise ValueError(f"pixel size unknown for {', '.join(unknown[:5])}: give --pixel-size or "
                             f"--pixel-size-table, or put <stem>.json (BIDS 'PixelSize') beside the references")
    thresholds = sorted({float(t) for t in thresholds} | {float(match_threshold)})
    detection_rows, fibre_tables, image_rows = [], [], []
    for case in tqdm(cases, desc="fibres", unit="image", disable=not progress):
        ref_axon, ref_myelin = read_mask_pair(case.reference, case.reference_kind, myelin_label, axon_label)
        axon, myelin = read_mask_pair(case.prediction, case.prediction_kind, myelin_label, axon_label)
        if ref_axon.shape != axon.shape:
            raise ValueError(f"{case.name}: reference {ref_axon.shape} and prediction {axon.shape} differ in shape")
        if postprocess is not None:
            from nnunet_ext.morphometrics.postprocess import postprocess_masks

            axon, myelin, _ = postprocess_masks(axon, myelin, case.pixel_size_um, **postprocess)
        dice_axon, iou_axon = _dice_iou(ref_axon, axon)
        dice_myelin, iou_myelin = _dice_iou(ref_myelin, myelin)
        pixel = {"dice_axon": dice_axon, "iou_axon": iou_axon, "dice_myelin": dice_myelin, "iou_myelin": iou_myelin}
        if morphometrics:
            comparison = ma.compare_image(ref_axon, ref_myelin, axon, myelin, case.pixel_size_um, case.name,
                                          case.subject, match_threshold, axon_shape)
            ref_fibres, pred_fibres = comparison.reference_fibres, comparison.predicted_fibres
            fibre_tables.append(comparison.fibres)
            image_rows.append({**comparison.image_row, **pixel})
        else:
            ref_fibres = fd.fibre_instances(ref_axon, ref_myelin)
            pred_fibres = fd.fibre_instances(axon, myelin)
        table = fd.detection_table(fd.match_sweep(ref_fibres, pred_fibres, thresholds), case.name)
        table.insert(1, "subject", case.subject)
        for key, value in pixel.items():
            table[key] = value
        detection_rows.append(table)
    detection = pd.concat(detection_rows, ignore_index=True)
    dataset = fd.aggregate_detection(detection)
    for key in ("dice_axon", "iou_axon", "dice_myelin", "iou_myelin"):
        dataset[key] = float(detection.drop_duplicates("image")[key].mean())
    result = FibreEvaluation(detection, dataset)
    if morphometrics:
        result.fibres = pd.concat(fibre_tables, ignore_index=True)
        overall = ma.agreement_statistics(result.fibres)
        overall.insert(0, "subject", "all")
        per_subject = ma.agreement_statistics(result.fibres.assign(subject=result.fibres["subject"].fillna(
            result.fibres["image"])), by=["subject"]) if result.fibres["subject"].notna().any() else None
        result.statistics = pd.concat([overall, per_subject], ignore_index=True) if per_subject is not None \
            else overall
        result.images = ma.image_table(image_rows)
        result.subjects = ma.subject_table(result.images)
    return result


def output_paths(csv_path: Path) -> dict[str, Path]:
    """Where ``nnunet-ext evaluate --fibres/--morphometrics`` writes, from the ``-o`` CSV path."""
    base = csv_path.with_suffix("")
    return {"detection": Path(f"{base}_fibres.csv"), "dataset": Path(f"{base}_fibres_dataset.csv"),
            "sweep_png": Path(f"{base}_fibres_sweep.png"), "fibres": Path(f"{base}_agreement_fibres.csv"),
            "statistics": Path(f"{base}_agreement_statistics.csv"),
            "images": Path(f"{base}_agreement_images.csv"), "subjects": Path(f"{base}_agreement_subjects.csv"),
            "bland_altman": Path(f"{base}_bland_altman.png"), "scatter": Path(f"{base}_scatter.png")}


def write_fibre_evaluation(result: FibreEvaluation, csv_path: Path, sweep_plot: bool, overwrite: bool) -> list[Path]:
    """Write the tables (atomically) and figures; returns the paths written."""
    from nnunet_ext.evaluation import fibre_detection as fd
    from nnunet_ext.evaluation import morphometric_agreement as ma
    from nnunet_ext.io.atomic import write_csv_atomically

    paths = output_paths(csv_path)
    written = [write_csv_atomically(result.detection, paths["detection"], overwrite=overwrite),
               write_csv_atomically(result.dataset, paths["dataset"], overwrite=overwrite)]
    if sweep_plot:
        written.append(fd.plot_sweep(result.dataset, paths["sweep_png"], overwrite=overwrite))
    if result.fibres is not None:
        for key in ("fibres", "statistics", "images", "subjects"):
            written.append(write_csv_atomically(getattr(result, key), paths[key], overwrite=overwrite))
        overall = result.statistics[result.statistics["subject"] == "all"].drop(columns="subject")
        written.append(ma.plot_bland_altman(result.fibres, paths["bland_altman"], statistics=overall,
                                            overwrite=overwrite))
        written.append(ma.plot_scatter(result.fibres, paths["scatter"], statistics=overall, overwrite=overwrite))
    return written


def labels_from_dataset_json(folder: Path) -> tuple[int, int]:
    """Myelin and axon label values from a dataset.json in or beside ``folder`` (default 1 and 2)."""
    for candidate in (folder / "dataset.json", folder.parent / "dataset.json"):
        if candidate.is_file():
            labels = json.loads(candidate.read_text()).get("labels", {})
            myelin, axon = labels.get("myelin", 1), labels.get("axon", 2)
            if isinstance(myelin, int) and isinstance(axon, int):
                return myelin, axon
    return 1, 2
