"""Segmentation metrics per case and per class: Dice, IoU, F1, precision, recall and HD95.

Builds on nnU-Net's own evaluation (``nnunetv2.evaluation.evaluate_predictions``): the same masks of labels and
regions (``region_or_label_to_mask``), the same confusion counts with the ignore label left out
(``compute_tp_fp_fn_tn``), the same Dice and IoU, the same reader/writers for every nnU-Net file format, and the same
handling of a class absent from both reference and prediction. On top of it: F1, precision, recall, HD95 (in pixels
and in physical units), per-class means and the mean IoU over classes.

Definitions (per case and per label or region, from the pixel counts TP, FP, FN)
--------------------------------------------------------------------------------
- ``Dice = 2 TP / (2 TP + FP + FN)``, ``IoU = TP / (TP + FP + FN)``: exactly nnU-Net's.
- ``F1 = 2 precision recall / (precision + recall)``, which at pixel level equals Dice; it is reported under its
  own name because papers (MTNeuro, BigNeuron) tabulate "F1".
- ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``.
- ``HD95``: the value of MONAI's ``compute_hausdorff_distance(percentile=95)`` (the reference most segmentation
  papers cite, so our figures compare with theirs): the larger of the two directed 95th percentiles of the
  distances between the boundary pixels of prediction and reference (boundary = mask minus its erosion), exact
  Euclidean distances, in pixels (``HD95_px``, unit spacing) and in the unit of the spacing (``HD95_um``) when a
  pixel size or spacing is known (otherwise NaN). Computed with MONAI's own CPU steps on scipy (see :func:`hd95`
  for why, and the test that pins it to MONAI).

Empty masks
-----------
- Class absent from both reference and prediction (TP + FP + FN = 0): every metric is NaN, as nnU-Net sets Dice
  and IoU to NaN there; means over cases ignore NaN (``nanmean``, as nnU-Net), so such cases do not count.
- Class present in only one of them: Dice = IoU = F1 = 0, and the undefined ratio of precision or recall (0 / 0)
  is 0 too (the case is an error for that class and must weigh on the means); HD95 is the image diagonal (the
  largest distance possible in the image, the convention of e.g. the BraTS challenge), since MONAI's infinity would
  make every mean infinite.

Spacing is per array axis, in nnU-Net's axis order (2D: rows, columns; 3D: nnU-Net's first, second, third axis).
Scoring whole folders of nnU-Net files (pairing, reading, tables, plot) is
:mod:`nnunet_ext.evaluation.folder_evaluation`.
"""
from __future__ import annotations

from typing import Union

import numpy as np

LabelOrRegion = Union[int, tuple[int, ...]]

#: Metric columns of the per-case table, in order.
METRIC_COLUMNS = ("Dice", "IoU", "F1", "precision", "recall", "HD95_px", "HD95_um")
COUNT_COLUMNS = ("TP", "FP", "FN", "TN", "n_ref", "n_pred")
SPACING_FROM_FILES = "from_files"


# ----------------------------------------------------------------------------------------------------------------
# Pure functions on arrays
# ----------------------------------------------------------------------------------------------------------------
def label_key(label: LabelOrRegion) -> str:
    """The text key of a label or region, as nnU-Net's summary.json writes it (``"1"``, ``"(1, 2)"``)."""
    from nnunetv2.evaluation.evaluate_predictions import label_or_region_to_key

    return label_or_region_to_key(normalise_label(label))


def normalise_label(label) -> LabelOrRegion:
    if isinstance(label, (tuple, list)):
        values = tuple(int(v) for v in label)
        return values[0] if len(values) == 1 else values
    return int(label)


def _mask(segmentation: np.ndarray, label: LabelOrRegion) -> np.ndarray:
    # nnU-Net's own region handling: a tuple is the union of its labels.
    from nnunetv2.evaluation.evaluate_predictions import region_or_label_to_mask

    return region_or_label_to_mask(segmentation, label)


def dice_per_class(prediction: np.ndarray, reference: np.ndarray, labels) -> dict:
    """Dice of each label (or region) between two label images of the same shape.

    Parameters
    ----------
    prediction, reference : ndarray of int
        Label images (2D or 3D), e.g. 0 background, 1 myelin, 2 axon.
    labels : iterable of int or tuple of int
        Labels to score; a tuple is a region (union of labels), as in nnU-Net.

    Returns
    -------
    dict
        ``{label: Dice}``; NaN where the label is in neither image (nnU-Net's convention).
    """
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    check_same_shape(prediction, reference)
    scores = {}
    for label in labels:
        label = normalise_label(label)
        predicted, expected = _mask(prediction, label), _mask(reference, label)
        tp = np.count_nonzero(predicted & expected)
        errors = np.count_nonzero(predicted ^ expected)
        scores[label] = 2 * tp / (2 * tp + errors) if tp + errors else float("nan")
    return scores


def hd95(prediction_mask: np.ndarray, reference_mask: np.ndarray, spacing=None) -> float:
    """95th-percentile Hausdorff distance between two binary masks, as MONAI computes it.

    Parameters
    ----------
    prediction_mask, reference_mask : ndarray of bool, 2D or 3D
    spacing : float or sequence of float, optional
        Pixel size per axis (default 1: the result is in pixels).

    Returns
    -------
    float
        The value of MONAI's ``compute_hausdorff_distance(percentile=95, directed=False, spacing=...)``: the larger
        of the two directed 95th percentiles (linear interpolation) of the distances from each boundary pixel of
        one mask to the nearest boundary pixel of the other; boundary = mask minus its erosion (cross-shaped
        element, outside the image counts as background). NaN if both masks are empty; the image diagonal (in the
        unit of ``spacing``) if exactly one is empty.

    Notes
    -----
    The steps are those MONAI 1.6 runs on CPU (scipy's ``binary_erosion`` for the boundaries, a ``cKDTree`` for the
    exact Euclidean distances), written against scipy directly because importing MONAI (all of monai, torchvision)
    takes 5 to 20 s per process, more than evaluating a typical folder, and again in every worker. A test checks
    the result against MONAI's function on 2D and anisotropic 3D masks.
    """
    from scipy import ndimage
    from scipy.spatial import cKDTree

    prediction_mask = np.asarray(prediction_mask, dtype=bool)
    reference_mask = np.asarray(reference_mask, dtype=bool)
    check_same_shape(prediction_mask, reference_mask)
    spacing_per_axis = axis_spacing(spacing, prediction_mask.ndim)
    predicted_any, reference_any = prediction_mask.any(), reference_mask.any()
    if not predicted_any and not reference_any:
        return float("nan")
    if not predicted_any or not reference_any:
        return float(np.linalg.norm(np.asarray(prediction_mask.shape) * spacing_per_axis))
    # Work inside the bounding box of both masks plus a one-pixel margin: erosion and boundaries are unchanged.
    box = ndimage.find_objects((prediction_mask | reference_mask).astype(np.uint8))[0]
    box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, prediction_mask.shape))
    offsets = np.array([s.start for s in box], dtype=np.float64)

    def boundary_points(mask: np.ndarray) -> np.ndarray:
        cropped = mask[box]
        return (np.argwhere(cropped & ~ndimage.binary_erosion(cropped)) + offsets) * spacing_per_axis

    prediction_boundary, reference_boundary = boundary_points(prediction_mask), boundary_points(reference_mask)
    prediction_to_reference = cKDTree(reference_boundary).query(prediction_boundary, k=1)[0]
    reference_to_prediction = cKDTree(prediction_boundary).query(reference_boundary, k=1)[0]
    return float(max(np.percentile(prediction_to_reference, 95), np.percentile(reference_to_prediction, 95)))


def metrics_per_class(
    prediction: np.ndarray,
    reference: np.ndarray,
    labels,
    spacing=None,
    ignore_label: int | None = None,
) -> dict:
    """Every metric of this module for each label or region of one case (see the module docstring).

    Parameters
    ----------
    prediction, reference : ndarray of int, same shape (2D or 3D)
    labels : iterable of int or tuple of int
        A tuple is a region (union of labels).
    spacing : float or sequence of float, optional
        Pixel size per axis; gives ``HD95_um`` (NaN without it).
    ignore_label : int, optional
        Reference pixels with this value are left out of every metric, as nnU-Net does.

    Returns
    -------
    dict
        ``{label: {"Dice", "IoU", "F1", "precision", "recall", "HD95_px", "HD95_um", "TP", "FP", "FN", "TN",
        "n_ref", "n_pred"}}``.
    """
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn

    prediction, reference = np.asarray(prediction), np.asarray(reference)
    check_same_shape(prediction, reference)
    ignore_mask = reference == ignore_label if ignore_label is not None else None
    spacing_per_axis = None if spacing is None else axis_spacing(spacing, reference.ndim)
    results = {}
    for label in labels:
        label = normalise_label(label)
        reference_mask, prediction_mask = _mask(reference, label), _mask(prediction, label)
        tp, fp, fn, tn = (int(v) for v in compute_tp_fp_fn_tn(reference_mask, prediction_mask, ignore_mask))
        if ignore_mask is not None:
            prediction_mask = prediction_mask & ~ignore_mask
        row = {**_overlap_scores(tp, fp, fn)}
        row["HD95_px"] = hd95(prediction_mask, reference_mask)
        if spacing_per_axis is None:
            row["HD95_um"] = float("nan")
        elif np.allclose(spacing_per_axis, spacing_per_axis[0]):
            # Isotropic: the distances scale exactly, no second pass needed.
            row["HD95_um"] = row["HD95_px"] * float(spacing_per_axis[0])
        else:
            row["HD95_um"] = hd95(prediction_mask, reference_mask, spacing_per_axis)
        row.update(TP=tp, FP=fp, FN=fn, TN=tn, n_ref=tp + fn, n_pred=tp + fp)
        results[label] = row
    return results


def _overlap_scores(tp: int, fp: int, fn: int) -> dict:
    if tp + fp + fn == 0:  # absent from both: undefined, as in nnU-Net
        return dict.fromkeys(("Dice", "IoU", "F1", "precision", "recall"), float("nan"))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "Dice": 2 * tp / (2 * tp + fp + fn),
        "IoU": tp / (tp + fp + fn),
        "F1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "precision": precision,
        "recall": recall,
    }


def check_same_shape(prediction: np.ndarray, reference: np.ndarray, where: str = "") -> None:
    if prediction.shape != reference.shape:
        raise ValueError(
            f"{where}prediction shape {prediction.shape} differs from reference shape {reference.shape}"
        )


def axis_spacing(spacing, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    values = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if values.size == 1:
        values = np.repeat(values, ndim)
    if values.size != ndim:
        raise ValueError(f"spacing {list(values)} has {values.size} values for a {ndim}D image")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing must be positive and finite, got {list(values)}")
    return values
