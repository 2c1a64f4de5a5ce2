"""Per image, per subject and per group summaries of a study's axons.

Counts, mean, median and SD of each metric over the axons kept by the filters; the aggregate g-ratio
``1 / sqrt(1 + MVF / AVF)`` from AVF and MVF when the image-level table gives them (otherwise from the summed axon and
myelin areas of the per-axon tables, which the report states); axon density (kept axons per mm^2) where the imaged area
is known. Subjects pool their images' axons; groups summarise their subjects' values (subjects are the units).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from nnunet_ext.report.inputs import string_keys

__all__ = ["STATISTICS", "metric_summary", "image_table", "subject_table", "group_table", "wide_column"]

STATISTICS = ("n", "mean", "sd", "median", "min", "max")


def wide_column(metric: str, statistic: str) -> str:
    """Name of a statistic's column in the wide tables: ``gratio mean``, ``axon_diam (um) median``."""
    return f"{metric} {statistic}"


def metric_summary(axons: pd.DataFrame, by: str, metrics, units=None) -> pd.DataFrame:
    """Tidy per-unit statistics: one row per unit and metric.

    Parameters
    ----------
    axons : DataFrame
        Per-axon rows with column ``by`` and the metric columns.
    by : str
        Unit column (``image`` or ``subject``).
    metrics : sequence of str
    units : sequence, optional
        Every unit to report, in order; a unit without axons gets ``n`` 0 and NaN statistics.

    Returns
    -------
    DataFrame
        ``by``, ``metric``, ``n``, ``mean``, ``sd`` (ddof 1), ``median``, ``min``, ``max``.
    """
    keys = string_keys(axons[by])
    if units is None:
        units = list(pd.unique(keys.astype(str)))
    units = [str(u) for u in units]
    pieces = []
    for metric in metrics:
        grouped = axons[metric].groupby(keys, sort=False, observed=True)
        table = grouped.agg(["count", "mean", "std", "median", "min", "max"]).reindex(units)
        table = table.rename(columns={"count": "n", "std": "sd"})
        table["n"] = table["n"].fillna(0).astype(int)
        table.index.name = by
        table = table.reset_index()
        table.insert(1, "metric", metric)
        pieces.append(table)
    return pd.concat(pieces, ignore_index=True)


def _aggregate_gratio(avf, mvf):
    avf, mvf = np.asarray(avf, dtype=float), np.asarray(mvf, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(avf > 0, 1.0 / np.sqrt(1.0 + mvf / avf), np.nan)


def _wide(tidy: pd.DataFrame, by: str, statistics=("mean", "median", "sd")) -> pd.DataFrame:
    pieces = []
    for metric, part in tidy.groupby("metric", sort=False):
        part = part.set_index(by)[list(statistics)]
        part.columns = [wide_column(metric, s) for s in statistics]
        pieces.append(part)
    return pd.concat(pieces, axis=1)


def image_table(kept: pd.DataFrame, images: pd.DataFrame, metrics, area_sums: pd.DataFrame | None = None
                ) -> pd.DataFrame:
    """One row per image.

    Parameters
    ----------
    kept : DataFrame
        Axons kept by the filters (``image`` column).
    images : DataFrame
        The study's images (``image``, ``subject``, ``group``, ``pixel_size_um``, ``area (mm^2)``, ``avf``, ``mvf``).
    metrics : sequence of str
    area_sums : DataFrame, optional
        ``image``, ``axon_area_sum``, ``myelin_area_sum`` over all axons (before filters): the aggregate g-ratio of
        images without AVF/MVF.

    Returns
    -------
    DataFrame
        ``image``, ``subject``, ``group``, ``pixel_size_um``, ``area (mm^2)``, ``n_axons``, ``axon_density (per
        mm^2)``, ``avf``, ``mvf``, ``gratio_aggregate``, ``gratio_aggregate_source``, then mean, median and SD of
        each metric.
    """
    tidy = metric_summary(kept, "image", metrics, units=images["image"])
    wide = _wide(tidy, "image")
    counts = tidy.loc[tidy["metric"] == metrics[0]].set_index("image")["n"]
    table = images[["image", "subject", "group", "pixel_size_um", "area (mm^2)", "avf", "mvf"]].copy()
    table["n_axons"] = table["image"].map(counts).fillna(0).astype(int)
    area = pd.to_numeric(table["area (mm^2)"], errors="coerce")
    with np.errstate(invalid="ignore", divide="ignore"):
        table["axon_density (per mm^2)"] = np.where(area > 0, table["n_axons"] / area, np.nan)
    table["gratio_aggregate"] = _aggregate_gratio(table["avf"], table["mvf"])
    table["gratio_aggregate_source"] = np.where(table["gratio_aggregate"].notna(), "AVF/MVF", "")
    if area_sums is not None:
        sums = area_sums.set_index("image")
        axon_sum = table["image"].map(sums["axon_area_sum"])
        myelin_sum = table["image"].map(sums["myelin_area_sum"])
        fallback = _aggregate_gratio(axon_sum, myelin_sum)
        use = table["gratio_aggregate"].isna() & np.isfinite(fallback) & table["avf"].isna()
        table.loc[use, "gratio_aggregate"] = fallback[use.to_numpy()]
        table.loc[use, "gratio_aggregate_source"] = "per-axon areas"
        table["axon_area_sum (um^2)"] = axon_sum.to_numpy()
        table["myelin_area_sum (um^2)"] = myelin_sum.to_numpy()
    return table.join(wide, on="image")


def subject_table(kept: pd.DataFrame, images_table: pd.DataFrame, subjects: pd.DataFrame, metrics,
                  covariates=()) -> pd.DataFrame:
    """One row per subject: its images' axons pooled.

    The aggregate g-ratio pools AVF and MVF over the subject's images weighted by their areas (equivalently, total
    axon area over total myelin area); without AVF/MVF, the summed per-axon areas. Density is kept axons over the
    total area, when every image's area is known.

    Returns
    -------
    DataFrame
        ``subject``, ``group``, covariates, ``n_images``, ``n_axons``, ``area (mm^2)``, ``axon_density (per mm^2)``,
        ``gratio_aggregate``, then mean, median and SD of each metric (NaN for a subject with no axon).
    """
    order = list(subjects["subject"].astype(str))
    tidy = metric_summary(kept, "subject", metrics, units=order)
    wide = _wide(tidy, "subject")
    counts = tidy.loc[tidy["metric"] == metrics[0]].set_index("subject")["n"]
    per = images_table.assign(subject=images_table["subject"].astype(str))
    area = pd.to_numeric(per["area (mm^2)"], errors="coerce")
    per = per.assign(_area=area, _avf_area=per["avf"] * area, _mvf_area=per["mvf"] * area,
                     _area_known=area.notna())
    grouped = per.groupby("subject", sort=False)
    sums = grouped[["_area", "_avf_area", "_mvf_area"]].sum(min_count=1)
    known = grouped["_area_known"].all()
    table = subjects[["subject", "group", *covariates]].copy()
    table["subject"] = table["subject"].astype(str)
    table["n_images"] = table["subject"].map(grouped.size()).fillna(0).astype(int)
    table["n_axons"] = table["subject"].map(counts).fillna(0).astype(int)
    total_area = table["subject"].map(sums["_area"].where(known))
    table["area (mm^2)"] = total_area
    with np.errstate(invalid="ignore", divide="ignore"):
        table["axon_density (per mm^2)"] = np.where(total_area > 0, table["n_axons"] / total_area, np.nan)
    gratio = _aggregate_gratio(table["subject"].map(sums["_avf_area"]), table["subject"].map(sums["_mvf_area"]))
    if "axon_area_sum (um^2)" in per:
        fallback_sums = grouped[["axon_area_sum (um^2)", "myelin_area_sum (um^2)"]].sum(min_count=1)
        fallback = _aggregate_gratio(table["subject"].map(fallback_sums["axon_area_sum (um^2)"]),
                                     table["subject"].map(fallback_sums["myelin_area_sum (um^2)"]))
        no_avf = table["subject"].map(grouped["avf"].apply(lambda v: v.isna().all())).fillna(True).to_numpy(bool)
        gratio = np.where(np.isnan(gratio) & no_avf, fallback, gratio)
    table["gratio_aggregate"] = gratio
    return table.join(wide, on="subject")


def group_table(subjects_table: pd.DataFrame, values) -> pd.DataFrame:
    """One row per group: its subjects' values summarised (subjects are the units).

    Parameters
    ----------
    subjects_table : DataFrame
        :func:`subject_table`'s result.
    values : sequence of str
        Subject-level columns to summarise (e.g. ``gratio mean``, ``gratio_aggregate``).

    Returns
    -------
    DataFrame
        ``group``, ``n_subjects``, ``n_axons``, then for each value ``<value> | mean``, ``| sd`` and ``| sem``
        across the group's subjects (subjects without a value are left out of that value).
    """
    data = subjects_table.dropna(subset=["group"])
    grouped = data.groupby("group", observed=True, sort=True)
    table = pd.DataFrame({"n_subjects": grouped.size(), "n_axons": grouped["n_axons"].sum()})
    for value in values:
        stats = grouped[value].agg(["mean", "std", "count"])
        table[f"{value} | mean"] = stats["mean"]
        table[f"{value} | sd"] = stats["std"]
        with np.errstate(invalid="ignore", divide="ignore"):
            table[f"{value} | sem"] = stats["std"] / np.sqrt(stats["count"])
    table.index = table.index.astype(str)
    return table.reset_index().rename(columns={"index": "group"})
