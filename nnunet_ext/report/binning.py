"""Axon-diameter bins: AxonDeepSeg's, user edges or quantiles; AxonDeepSeg's per-subject binned statistics table.

``axondeepseg_aggregate`` (AxonDeepSeg 5.5, ``AxonDeepSeg/morphometrics/aggregate.py``) does, per subject folder:
drop axons whose g-ratio is NaN or >= 1, cut ``axon_diam (um)`` into ``[0.5, 1), [1, 1.25), [1.25, 1.5),
[1.5, 1.75), [1.75, inf)`` (``pd.cut(..., right=False)``, labels ``0.5-1`` ... ``1.75-``; smaller axons fall in no
bin), and for each of ``Axon Diameter``, ``G-Ratio`` and ``Myelin Thickness`` and each bin takes
``round(x, 2)`` of the pandas ``mean``, ``std`` (ddof 1), ``min``, ``max`` and ``median`` (an empty bin has no
values). :func:`ads_binned_statistics` does the same with the same pandas calls, per subject of a study.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from nnunet_ext.report.filters import valid_gratio
from nnunet_ext.report.inputs import string_keys

__all__ = [
    "ADS_BIN_EDGES", "ADS_BIN_LABELS", "ADS_METRICS", "ADS_STATISTICS", "Bins", "ads_bins", "user_bins",
    "quantile_bins", "assign_bins", "ads_binned_statistics", "ads_wide_table", "binned_summary",
]

ADS_BIN_EDGES = (0.5, 1.0, 1.25, 1.5, 1.75, math.inf)
ADS_BIN_LABELS = ("0.5-1", "1-1.25", "1.25-1.5", "1.5-1.75", "1.75-")
#: (AxonDeepSeg's name, column), in this order (AxonDeepSeg keeps them in a set, so its row order varies).
ADS_METRICS = (("Axon Diameter", "axon_diam (um)"), ("G-Ratio", "gratio"),
               ("Myelin Thickness", "myelin_thickness (um)"))
ADS_STATISTICS = ("Mean", "Standard Deviation", "Min", "Max", "Median")


class Bins:
    """Diameter bins ``[edges[i], edges[i + 1])`` with labels.

    Parameters
    ----------
    edges : sequence of float
        Strictly increasing; the last may be ``inf``.
    labels : sequence of str, optional
        Default ``a-b`` (``a-`` for an infinite upper edge).
    kind : str
        ``ads``, ``edges`` or ``quantiles`` (stated in the report).
    """

    def __init__(self, edges, labels=None, kind: str = "edges"):
        edges = [float(e) for e in edges]
        if len(edges) < 2:
            raise ValueError(f"bins need at least two edges, got {edges}")
        if any(math.isnan(e) for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"bin edges must increase strictly, got {', '.join(f'{e:g}' for e in edges)}")
        self.edges = tuple(edges)
        self.labels = tuple(labels) if labels is not None else tuple(
            f"{a:g}-" if math.isinf(b) else f"{a:g}-{b:g}" for a, b in zip(edges, edges[1:]))
        if len(self.labels) != len(edges) - 1:
            raise ValueError("one label per bin expected")
        self.kind = kind

    def describe(self) -> str:
        spans = ", ".join(f"[{a:g}, {b:g})" for a, b in zip(self.edges, self.edges[1:]))
        what = {"ads": "AxonDeepSeg's bins", "quantiles": "quantile bins of the pooled axon diameter",
                "edges": "bins"}[self.kind]
        return f"{what} (um, lower edge included): {spans}"

    def __repr__(self) -> str:
        return f"Bins({list(self.edges)}, kind={self.kind!r})"


def ads_bins() -> Bins:
    """AxonDeepSeg's bins: 0.5-1, 1-1.25, 1.25-1.5, 1.5-1.75, 1.75+ um, lower edge included."""
    return Bins(ADS_BIN_EDGES, ADS_BIN_LABELS, kind="ads")


def user_bins(edges) -> Bins:
    """Bins from edges given on the command line (``0 0.5 1 2 4 inf``)."""
    return Bins(edges, kind="edges")


def quantile_bins(diameters, n: int) -> Bins:
    """``n`` bins holding about equal numbers of axons: edges at the quantiles of ``diameters``.

    The first edge is 0 and the last ``inf`` so that every axon falls in a bin; repeated quantiles (ties) merge
    bins.
    """
    if n < 1:
        raise ValueError(f"--quantiles {n}: at least 1 bin")
    values = np.asarray(diameters, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("--quantiles: no axon diameters to take quantiles of")
    inner = np.unique(np.quantile(values, np.linspace(0, 1, n + 1)[1:-1]))
    inner = inner[inner > 0]
    edges = [0.0, *inner.tolist(), math.inf]
    labels = [f"{a:.3g}-" if math.isinf(b) else f"{a:.3g}-{b:.3g}" for a, b in zip(edges, edges[1:])]
    if len(set(labels)) < len(labels):
        labels = None  # edges too close for 3 digits: full precision
    return Bins(edges, labels, kind="quantiles")


def assign_bins(diameters, bins: Bins) -> pd.Categorical:
    """The bin of each diameter (``pd.cut(right=False)``); NaN outside every bin."""
    return pd.cut(np.asarray(diameters, dtype=np.float64), bins=list(bins.edges), labels=list(bins.labels),
                  right=False)


def _ads_statistics(values: pd.Series) -> list:
    # the calls and rounding of AxonDeepSeg's get_statistics
    return [round(values.mean(), 2), round(values.std(), 2), round(values.min(), 2), round(values.max(), 2),
            round(values.median(), 2)]


def ads_binned_statistics(axons: pd.DataFrame, subjects=None, unit: str = "subject"
                          ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """AxonDeepSeg's per-subject binned statistics (``axondeepseg_aggregate``), for every subject.

    Parameters
    ----------
    axons : DataFrame
        Per-axon rows with ``unit``, ``axon_diam (um)``, ``gratio`` and ``myelin_thickness (um)``. No filter should
        have been applied besides those the user asked for; the g-ratio filter is applied here, as AxonDeepSeg does.
    subjects : sequence, optional
        Subjects to report, in order (default: those in ``axons``); a subject without axons gets empty values.
    unit : str
        Column naming the subject.

    Returns
    -------
    statistics : DataFrame
        Tidy: ``subject``, ``metric`` (AxonDeepSeg's name), ``statistic``, ``bin``, ``value`` (rounded to 2
        decimals; NaN for an empty bin or the standard deviation of one axon), in AxonDeepSeg's order.
    counts : DataFrame
        ``subject``, ``bin``, ``axon_count`` (AxonDeepSeg's bar plot), every bin of every subject.
    """
    bins = ads_bins()
    if subjects is None:
        subjects = [str(s) for s in pd.unique(string_keys(axons[unit]))]
    kept = axons.loc[valid_gratio(axons["gratio"]), [unit] + [c for _, c in ADS_METRICS]]
    kept = kept.assign(_bin=assign_bins(kept["axon_diam (um)"].to_numpy(), bins))
    groups = {str(k): v for k, v in kept.groupby(string_keys(kept[unit]), sort=False, observed=True)}
    rows, count_rows = [], []
    empty = kept.iloc[:0]
    for subject in subjects:
        data = groups.get(str(subject), empty)
        by_bin = {label: part for label, part in data.groupby("_bin", observed=True)}
        for metric_name, column in ADS_METRICS:
            for label in bins.labels:
                part = by_bin.get(label)
                values = _ads_statistics(part[column]) if part is not None and len(part) else [np.nan] * 5
                rows += [(subject, metric_name, statistic, label, float(value))
                         for statistic, value in zip(ADS_STATISTICS, values)]
        count_rows += [(subject, label, int(len(by_bin[label])) if label in by_bin else 0) for label in bins.labels]
    statistics = pd.DataFrame(rows, columns=["subject", "metric", "statistic", "bin", "value"])
    counts = pd.DataFrame(count_rows, columns=["subject", "bin", "axon_count"])
    return statistics, counts


def ads_wide_table(statistics: pd.DataFrame, subject) -> pd.DataFrame:
    """One subject's table in AxonDeepSeg's layout (``statistics_per_axon_caliber.xlsx``): rows (Metric,
    Statistic), one column per bin."""
    part = statistics.loc[statistics["subject"] == subject]
    shape = (len(ADS_METRICS), len(ADS_BIN_LABELS), len(ADS_STATISTICS))
    # ads_binned_statistics writes each subject's rows in the order metric -> bin -> statistic
    expected = [(m, b, s) for m, _ in ADS_METRICS for b in ADS_BIN_LABELS for s in ADS_STATISTICS]
    if list(zip(part["metric"], part["bin"], part["statistic"])) != expected:
        raise ValueError(f"statistics of subject {subject!r} are not in ads_binned_statistics' order")
    values = part["value"].to_numpy(float).reshape(shape).transpose(0, 2, 1).reshape(-1, shape[1])
    index = pd.MultiIndex.from_tuples([(m, s) for m, _ in ADS_METRICS for s in ADS_STATISTICS],
                                      names=["Metric", "Statistic"])
    return pd.DataFrame(values, index=index, columns=list(ADS_BIN_LABELS))


def binned_summary(axons: pd.DataFrame, bins: Bins, by, metrics) -> pd.DataFrame:
    """Count, mean, SD, median, min and max of each metric per unit and diameter bin.

    Parameters
    ----------
    axons : DataFrame
        Per-axon rows (already filtered) with the ``by`` columns, ``axon_diam (um)`` and ``metrics``.
    bins : Bins
    by : list of str
        Unit columns (e.g. ``["group", "subject"]``); categorical columns keep every category, so a unit without
        axons in a bin gets a row with count 0.
    metrics : sequence of str

    Returns
    -------
    DataFrame
        Tidy: ``by`` columns, ``bin``, ``bin_lower``, ``bin_upper``, ``metric``, ``n``, ``mean``, ``sd``,
        ``median``, ``min``, ``max`` (one row per unit, bin and metric).
    """
    data = axons[list(by) + list(dict.fromkeys(["axon_diam (um)", *metrics]))].copy()
    data["bin"] = assign_bins(data["axon_diam (um)"].to_numpy(), bins)
    pieces = []
    for metric in metrics:
        grouped = data.groupby(list(by) + ["bin"], observed=False, sort=True)[metric]
        table = grouped.agg(["count", "mean", "std", "median", "min", "max"]).reset_index()
        table = table.rename(columns={"count": "n", "std": "sd"})
        table.insert(len(by) + 1, "metric", metric)
        pieces.append(table)
    result = pd.concat(pieces, ignore_index=True)
    lower = dict(zip(bins.labels, bins.edges[:-1]))
    upper = dict(zip(bins.labels, bins.edges[1:]))
    result.insert(len(by) + 1, "bin_lower", result["bin"].map(lower).astype(float))
    result.insert(len(by) + 2, "bin_upper", result["bin"].map(upper).astype(float))
    result["n"] = result["n"].astype(int)
    return result
