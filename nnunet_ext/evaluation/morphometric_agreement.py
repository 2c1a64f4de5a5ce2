"""Agreement of morphometrics measured on a prediction with those measured on the manual masks.

Three levels, one table each:

fibres
    Reference and predicted fibres are matched one-to-one (:func:`nnunet_ext.evaluation.fibre_detection.match_instances`,
    IoU >= 0.5 by default); each matched pair gives the reference and predicted axon diameter, myelin thickness,
    g-ratio (and fibre diameter), from :func:`nnunet_ext.morphometrics.axon_morphometrics` on each mask pair.
    :func:`agreement_statistics` summarises them per metric: n, mean of each, bias (mean of predicted - reference),
    SD of the differences, 95 % limits of agreement (bias +/- 1.96 SD, Bland & Altman 1986), Pearson r, and
    ICC(2,1) (Shrout & Fleiss 1979: two-way random effects, absolute agreement, single measurement; McGraw & Wong's
    ICC(A,1)), with ICC(3,1) (consistency) beside it. g-ratio and myelin thickness use the pairs where both g-ratios
    are valid (0 < g < 1).
images
    Per image (:func:`compare_image`): reference and predicted axon count, axon density, AVF, MVF, aggregate g-ratio,
    mean g-ratio, mean axon diameter and mean myelin thickness (``aggregate_morphometrics``), their differences and
    relative errors, with the detection counts.
subjects
    Per subject (:func:`subject_table`): the images of a subject pooled: counts summed, density = count / area,
    AVF and MVF area-weighted, aggregate g-ratio from the pooled AVF and MVF, means weighted by the number of axons
    (of valid g-ratios for g-ratio and thickness).

Pure functions on arrays and tables; figures through :func:`plot_bland_altman` and :func:`plot_scatter`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from nnunet_ext.io.atomic import save_figure

#: Per-fibre metrics compared: name -> per-axon column of the morphometrics table.
FIBRE_METRICS = {"axon_diam": "axon_diam (um)", "myelin_thickness": "myelin_thickness (um)", "gratio": "gratio",
                 "fiber_diam": "fiber_diam (um)"}
UNITS = {"axon_diam": "um", "myelin_thickness": "um", "gratio": "", "fiber_diam": "um"}
#: Image-level quantities compared: name -> key of ``aggregate_morphometrics``.
IMAGE_METRICS = {"axon_count": "axon_count", "axon_density": "axon_density (per mm^2)", "avf": "avf", "mvf": "mvf",
                 "gratio_aggregate": "gratio_aggregate", "mean_gratio": "mean_gratio",
                 "mean_axon_diam": "mean_axon_diam (um)", "mean_myelin_thickness": "mean_myelin_thickness (um)",
                 "invalid_gratio_count": "invalid_gratio_count"}
STATISTICS_COLUMNS = ["metric", "unit", "n", "mean_ref", "mean_pred", "bias", "sd_diff", "loa_low", "loa_high",
                      "pearson_r", "icc_2_1", "icc_3_1", "mean_abs_diff", "bias_relative"]


def icc(ratings: np.ndarray) -> dict:
    """Intraclass correlations of an (n subjects, k raters) array without missing values (Shrout & Fleiss 1979).

    Returns
    -------
    dict
        ``icc_2_1`` = (MSR - MSE) / (MSR + (k - 1) MSE + k (MSC - MSE) / n): two-way random effects, absolute
        agreement, single rater; ``icc_3_1`` = (MSR - MSE) / (MSR + (k - 1) MSE): two-way mixed, consistency.
        MSR, MSC, MSE: mean squares of rows (subjects), columns (raters) and residual. NaN with fewer than two
        subjects or when the denominator is zero.
    """
    x = np.asarray(ratings, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"ratings must be (n subjects, k >= 2 raters), got shape {x.shape}")
    n, k = x.shape
    if n < 2 or not np.all(np.isfinite(x)):
        return {"icc_2_1": float("nan"), "icc_3_1": float("nan")}
    grand = x.mean()
    ss_rows = k * np.sum((x.mean(axis=1) - grand) ** 2)
    ss_cols = n * np.sum((x.mean(axis=0) - grand) ** 2)
    ss_total = np.sum((x - grand) ** 2)
    ss_error = ss_total - ss_rows - ss_cols
    msr = ss_rows / (n - 1)
    msc = ss_cols / (k - 1)
    mse = ss_error / ((n - 1) * (k - 1))
    d21 = msr + (k - 1) * mse + k * (msc - mse) / n
    d31 = msr + (k - 1) * mse
    return {"icc_2_1": float((msr - mse) / d21) if d21 != 0 else float("nan"),
            "icc_3_1": float((msr - mse) / d31) if d31 != 0 else float("nan")}


def agreement(reference, prediction) -> dict:
    """Bland-Altman and correlation statistics of paired values (NaN pairs dropped).

    Returns
    -------
    dict
        ``n``, ``mean_ref``, ``mean_pred``, ``bias`` = mean(pred - ref), ``sd_diff`` (ddof 1), ``loa_low`` /
        ``loa_high`` = bias -/+ 1.96 sd_diff, ``pearson_r``, ``icc_2_1``, ``icc_3_1``, ``mean_abs_diff``,
        ``bias_relative`` = bias / mean_ref. NaN where undefined (fewer than two pairs, constant values).
    """
    ref = np.asarray(reference, dtype=np.float64)
    pred = np.asarray(prediction, dtype=np.float64)
    if ref.shape != pred.shape:
        raise ValueError(f"reference {ref.shape} and prediction {pred.shape} differ in shape")
    keep = np.isfinite(ref) & np.isfinite(pred)
    ref, pred = ref[keep], pred[keep]
    n = int(ref.size)
    nan = float("nan")
    out = {"n": n, "mean_ref": nan, "mean_pred": nan, "bias": nan, "sd_diff": nan, "loa_low": nan, "loa_high": nan,
           "pearson_r": nan, "icc_2_1": nan, "icc_3_1": nan, "mean_abs_diff": nan, "bias_relative": nan}
    if n == 0:
        return out
    diff = pred - ref
    out.update(mean_ref=float(ref.mean()), mean_pred=float(pred.mean()), bias=float(diff.mean()),
               mean_abs_diff=float(np.abs(diff).mean()))
    out["bias_relative"] = out["bias"] / out["mean_ref"] if out["mean_ref"] != 0 else nan
    if n >= 2:
        sd = float(diff.std(ddof=1))
        out.update(sd_diff=sd, loa_low=out["bias"] - 1.96 * sd, loa_high=out["bias"] + 1.96 * sd)
        if ref.std() > 0 and pred.std() > 0:
            out["pearson_r"] = float(np.corrcoef(ref, pred)[0, 1])
        out.update(icc(np.stack([ref, pred], 1)))
    return out


@dataclass
class ImageComparison:
    """Everything :func:`compare_image` measures on one image."""

    image: str | None
    subject: str | None
    reference_fibres: np.ndarray
    predicted_fibres: np.ndarray
    detection: "Matching"  # noqa: F821 (fibre_detection.Matching)
    fibres: pd.DataFrame
    image_row: dict
    reference_aggregate: dict
    predicted_aggregate: dict


def _relative(pred, ref) -> float:
    try:
        pred, ref = float(pred), float(ref)
    except (TypeError, ValueError):
        return float("nan")
    return (pred - ref) / ref if ref != 0 and np.isfinite(ref) and np.isfinite(pred) else float("nan")


def compare_image(ref_axon, ref_myelin, pred_axon, pred_myelin, pixel_size_um: float, image: str | None = None,
                  subject: str | None = None, thresh: float = 0.5, axon_shape: str = "circle") -> ImageComparison:
    """Detection and morphometric agreement of one predicted image against its manual masks.

    Parameters
    ----------
    ref_axon, ref_myelin, pred_axon, pred_myelin : (H, W) binary arrays
    pixel_size_um : float
    image, subject : str, optional
        Written to the tables.
    thresh : float
        IoU at which fibres match (default 0.5, ASTIH's).
    axon_shape : {"circle", "ellipse"}
        As :func:`nnunet_ext.morphometrics.axon_morphometrics`.

    Returns
    -------
    ImageComparison
        ``fibres``: one row per matched pair (``ref_axon_id``, ``pred_axon_id``, ``iou``, ``ref_<metric>``,
        ``pred_<metric>`` for ``FIBRE_METRICS``, ``gratio_valid_both``); ``image_row``: ``<metric>_ref``,
        ``<metric>_pred``, ``<metric>_diff`` (pred - ref) and ``<metric>_rel_error`` ((pred - ref) / ref) for
        ``IMAGE_METRICS``, the image area, and TP / FP / FN / precision / recall / F1 at ``thresh``.
    """
    from nnunet_ext.evaluation.fibre_detection import fibre_instances, match_instances
    from nnunet_ext.morphometrics.aggregate_metrics import aggregate_morphometrics
    from nnunet_ext.morphometrics.axon import axon_morphometrics, prepare_masks

    ref_axon, ref_myelin = prepare_masks(ref_axon, ref_myelin)
    pred_axon, pred_myelin = prepare_masks(pred_axon, pred_myelin)
    if ref_axon.shape != pred_axon.shape:
        raise ValueError(f"reference {ref_axon.shape} and prediction {pred_axon.shape} differ in shape")
    ref_table = axon_morphometrics(ref_axon, ref_myelin, pixel_size_um, axon_shape, image)
    pred_table = axon_morphometrics(pred_axon, pred_myelin, pixel_size_um, axon_shape, image)
    ref_fibres = fibre_instances(ref_axon, ref_myelin)
    pred_fibres = fibre_instances(pred_axon, pred_myelin)
    detection = match_instances(ref_fibres, pred_fibres, thresh)
    pairs = detection.matched_pairs
    ref_rows = ref_table.set_index("axon_id").loc[pairs[:, 0]] if len(pairs) else ref_table.iloc[:0]
    pred_rows = pred_table.set_index("axon_id").loc[pairs[:, 1]] if len(pairs) else pred_table.iloc[:0]
    columns = {"image": image, "subject": subject, "ref_axon_id": pairs[:, 0], "pred_axon_id": pairs[:, 1],
               "iou": detection.matched_scores.astype(np.float64)}
    for name, column in FIBRE_METRICS.items():
        columns[f"ref_{name}"] = ref_rows[column].to_numpy(dtype=np.float64)
        columns[f"pred_{name}"] = pred_rows[column].to_numpy(dtype=np.float64)
    columns["gratio_valid_both"] = (ref_rows["gratio_valid"].to_numpy(dtype=bool)
                                    & pred_rows["gratio_valid"].to_numpy(dtype=bool))
    fibres = pd.DataFrame(columns)
    ref_aggregate = aggregate_morphometrics(ref_axon, ref_myelin, pixel_size_um, per_axon=ref_table)
    pred_aggregate = aggregate_morphometrics(pred_axon, pred_myelin, pixel_size_um, per_axon=pred_table)
    row = {"image": image, "subject": subject, "pixel_size_um": float(pixel_size_um),
           "area (mm^2)": ref_aggregate["area (mm^2)"]}
    for name, key in IMAGE_METRICS.items():
        ref_value, pred_value = ref_aggregate[key], pred_aggregate[key]
        row[f"{name}_ref"] = ref_value
        row[f"{name}_pred"] = pred_value
        row[f"{name}_diff"] = (float(pred_value) - float(ref_value)) if ref_value is not None else float("nan")
        row[f"{name}_rel_error"] = _relative(pred_value, ref_value)
    row.update({"n_valid_gratio_ref": int(ref_table["gratio_valid"].sum()),
                "n_valid_gratio_pred": int(pred_table["gratio_valid"].sum()), "iou_thresh": float(thresh),
                "tp": detection.tp, "fp": detection.fp, "fn": detection.fn, "precision": detection.precision,
                "recall": detection.recall, "f1": detection.f1})
    return ImageComparison(image, subject, ref_fibres, pred_fibres, detection, fibres, row, ref_aggregate,
                           pred_aggregate)


def agreement_statistics(fibres: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """:func:`agreement` per fibre metric (and per group of ``by`` columns, e.g. ``["subject"]``).

    g-ratio and myelin thickness use the pairs whose two g-ratios are valid (``gratio_valid_both``); axon and fibre
    diameter use every matched pair.
    """
    groups = [((), fibres)] if not by else list(fibres.groupby(list(by), sort=True))
    rows = []
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        for name in FIBRE_METRICS:
            subset = group[group["gratio_valid_both"]] if name in ("gratio", "myelin_thickness") else group
            stats = agreement(subset[f"ref_{name}"], subset[f"pred_{name}"])
            rows.append({**dict(zip(by, key)), "metric": name, "unit": UNITS[name], **stats})
    return pd.DataFrame(rows, columns=[*by, *STATISTICS_COLUMNS])


def image_table(rows: Sequence[dict]) -> pd.DataFrame:
    """The per-image rows of :func:`compare_image` as a table."""
    return pd.DataFrame(list(rows))


def subject_table(images: pd.DataFrame) -> pd.DataFrame:
    """Per-subject agreement from the per-image table (images without a subject form their own subject).

    Pooling: counts summed; density = count / area; AVF and MVF weighted by image area; aggregate g-ratio =
    1 / sqrt(1 + MVF / AVF) of the pooled fractions; mean axon diameter weighted by axon count; mean g-ratio and
    mean myelin thickness weighted by the number of valid g-ratios. Columns as the image table:
    ``<metric>_ref``, ``_pred``, ``_diff``, ``_rel_error``, plus ``n_images`` and the summed TP / FP / FN.
    """
    images = images.copy()
    images["subject"] = images["subject"].fillna(images["image"])
    rows = []
    for subject, group in images.groupby("subject", sort=True):
        area = group["area (mm^2)"].astype(float)
        row = {"subject": subject, "n_images": len(group), "area (mm^2)": float(area.sum())}
        for side in ("ref", "pred"):
            count = group[f"axon_count_{side}"].astype(float)
            valid = group[f"n_valid_gratio_{side}"].astype(float)
            avf = float(np.sum(group[f"avf_{side}"] * area) / area.sum())
            mvf = float(np.sum(group[f"mvf_{side}"] * area) / area.sum())

            def weighted(column, weights):
                values = group[column].astype(float)
                keep = np.isfinite(values) & (weights > 0)
                return float(np.sum(values[keep] * weights[keep]) / weights[keep].sum()) if keep.any() else np.nan

            row.update({f"axon_count_{side}": int(count.sum()),
                        f"axon_density_{side}": float(count.sum() / area.sum()),
                        f"avf_{side}": avf, f"mvf_{side}": mvf,
                        f"gratio_aggregate_{side}": float(1 / np.sqrt(1 + mvf / avf)) if avf > 0 else np.nan,
                        f"mean_gratio_{side}": weighted(f"mean_gratio_{side}", valid),
                        f"mean_axon_diam_{side}": weighted(f"mean_axon_diam_{side}", count),
                        f"mean_myelin_thickness_{side}": weighted(f"mean_myelin_thickness_{side}", valid),
                        f"invalid_gratio_count_{side}": int(group[f"invalid_gratio_count_{side}"].sum())})
        for name in ("axon_count", "axon_density", "avf", "mvf", "gratio_aggregate", "mean_gratio", "mean_axon_diam",
                     "mean_myelin_thickness", "invalid_gratio_count"):
            row[f"{name}_diff"] = float(row[f"{name}_pred"]) - float(row[f"{name}_ref"])
            row[f"{name}_rel_error"] = _relative(row[f"{name}_pred"], row[f"{name}_ref"])
        for column in ("tp", "fp", "fn"):
            row[column] = int(group[column].sum())
        rows.append(row)
    return pd.DataFrame(rows)


_LABELS = {"axon_diam": "axon diameter (um)", "myelin_thickness": "myelin thickness (um)", "gratio": "g-ratio",
           "fiber_diam": "fibre diameter (um)"}


def _metric_panels(fibres: pd.DataFrame, metrics, statistics, panel_width: float):
    """A figure with one panel per metric, and per panel (axis, metric, reference values, predicted values, the
    metric's row of :func:`agreement_statistics`); g-ratio and myelin thickness only where both g-ratios are valid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(metrics or ("axon_diam", "myelin_thickness", "gratio"))
    statistics = agreement_statistics(fibres) if statistics is None else statistics
    figure, axes = plt.subplots(1, len(metrics), figsize=(panel_width * len(metrics), 4), squeeze=False)
    panels = []
    for axis, name in zip(axes[0], metrics):
        subset = fibres[fibres["gratio_valid_both"]] if name in ("gratio", "myelin_thickness") else fibres
        panels.append((axis, name, subset[f"ref_{name}"].to_numpy(float), subset[f"pred_{name}"].to_numpy(float),
                       statistics[statistics["metric"] == name].iloc[0]))
    return figure, panels


def _save_panels(figure, path, title: str | None, overwrite: bool):
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return save_figure(figure, path, overwrite=overwrite, dpi=110)


def plot_bland_altman(fibres: pd.DataFrame, path, metrics: Sequence[str] | None = None,
                      statistics: pd.DataFrame | None = None, title: str | None = None, overwrite: bool = True):
    """Bland-Altman plots (difference pred - ref against the pair's mean), one panel per metric, as one PNG."""
    figure, panels = _metric_panels(fibres, metrics, statistics, 4.6)
    for axis, name, ref, pred, stats in panels:
        axis.scatter((ref + pred) / 2, pred - ref, s=5, alpha=0.45, color="tab:blue", linewidths=0)
        for value, style, label in ((stats["bias"], "-", f"bias {stats['bias']:+.3g}"),
                                    (stats["loa_low"], "--", f"95% LoA [{stats['loa_low']:+.3g}, "
                                                             f"{stats['loa_high']:+.3g}]"),
                                    (stats["loa_high"], "--", None)):
            if np.isfinite(value):
                axis.axhline(value, color="tab:red", ls=style, lw=1, label=label)
        axis.axhline(0, color="grey", lw=0.6)
        axis.set_xlabel(f"mean of prediction and reference: {_LABELS[name]}")
        axis.set_ylabel("prediction - reference")
        axis.set_title(f"{_LABELS[name]} (n = {int(stats['n'])}, ICC(2,1) {stats['icc_2_1']:.2f})", fontsize=9)
        axis.legend(fontsize=7, loc="best")
        axis.grid(alpha=0.3)
    return _save_panels(figure, path, title, overwrite)


def plot_scatter(fibres: pd.DataFrame, path, metrics: Sequence[str] | None = None,
                 statistics: pd.DataFrame | None = None, title: str | None = None, overwrite: bool = True):
    """Predicted against reference value per matched fibre, with the identity line, one panel per metric."""
    figure, panels = _metric_panels(fibres, metrics, statistics, 4.2)
    for axis, name, ref, pred, stats in panels:
        axis.scatter(ref, pred, s=5, alpha=0.45, color="tab:green", linewidths=0)
        finite = np.concatenate([ref, pred])
        finite = finite[np.isfinite(finite)]
        if finite.size:
            low, high = float(finite.min()), float(finite.max())
            axis.plot([low, high], [low, high], color="grey", lw=0.8, label="identity")
        axis.set_xlabel(f"reference {_LABELS[name]}")
        axis.set_ylabel(f"prediction {_LABELS[name]}")
        axis.set_title(f"r = {stats['pearson_r']:.3f}, ICC(2,1) = {stats['icc_2_1']:.3f}, n = {int(stats['n'])}",
                       fontsize=9)
        axis.grid(alpha=0.3)
    return _save_panels(figure, path, title, overwrite)
