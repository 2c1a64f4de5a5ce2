"""Figures of a study report (matplotlib, Agg). Each function returns a ``Figure``; the caller saves it.

Large studies are drawn from bounded samples where every point cannot be seen anyway (scatter: at most
``max_points`` axons, drawn at random with a fixed seed; kernel densities: estimated from at most ``max_kde`` axons per
group); the report states it. Histograms, fits, box plots and counts use every axon.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["group_colours", "bin_counts_figure", "subject_values_figure", "gratio_diameter_figure",
           "distributions_figure", "binned_means_figure"]

SMALL_MULTIPLES_MAX = 24


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def group_colours(order) -> dict:
    """A colour per group (tab10, cycling)."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    return {str(g): cmap(i % 10) for i, g in enumerate(order)}


def bin_counts_figure(counts: pd.DataFrame, bin_labels, group_of: dict | None = None, title: str = ""):
    """Axon count per diameter bin for every subject (AxonDeepSeg's ``axon_count.png``, all subjects at once).

    Up to ``SMALL_MULTIPLES_MAX`` subjects: one bar chart per subject; more: a heat map (subjects x bins, counts
    written in the cells while they fit).

    Parameters
    ----------
    counts : DataFrame
        ``subject``, ``bin``, ``axon_count``.
    bin_labels : sequence of str
    group_of : dict, optional
        ``{subject: group}`` shown in titles.
    """
    plt = _pyplot()
    subjects = list(dict.fromkeys(counts["subject"].astype(str)))
    table = counts.assign(subject=counts["subject"].astype(str)).pivot_table(
        index="subject", columns="bin", values="axon_count", aggfunc="sum", observed=False).reindex(
        index=subjects, columns=list(bin_labels)).fillna(0)
    group_of = group_of or {}
    if len(subjects) <= SMALL_MULTIPLES_MAX:
        cols = min(4, max(1, len(subjects)))
        rows = math.ceil(len(subjects) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows + 0.6), squeeze=False, sharex=True)
        for ax, subject in zip(axes.flat, subjects):
            ax.bar(range(len(bin_labels)), table.loc[subject].to_numpy(), color="#4c72b0")
            group = group_of.get(subject)
            ax.set_title(f"{subject}" + (f" ({group})" if group not in (None, "all") and pd.notna(group) else ""),
                         fontsize=9)
            ax.set_xticks(range(len(bin_labels)))
            ax.set_xticklabels(bin_labels, rotation=45, ha="right", fontsize=7)
            ax.tick_params(axis="y", labelsize=7)
        for ax in list(axes.flat)[len(subjects):]:
            ax.set_visible(False)
        for ax in axes[:, 0]:
            ax.set_ylabel("axons", fontsize=8)
        fig.supxlabel("axon diameter bin (um)", fontsize=9)
    else:
        fig, ax = plt.subplots(figsize=(1.1 * len(bin_labels) + 3, 0.16 * len(subjects) + 1.5))
        image = ax.imshow(table.to_numpy(), aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(bin_labels)))
        ax.set_xticklabels(bin_labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(subjects)))
        ax.set_yticklabels(subjects, fontsize=max(3, min(8, 700 / max(len(subjects), 1) / 1.2)))
        ax.set_xlabel("axon diameter bin (um)")
        fig.colorbar(image, ax=ax, label="axons")
        ax.set_title(title or "Axon count per diameter bin, per subject", fontsize=11)
        fig.tight_layout()
        return fig
    fig.suptitle(title or "Axon count per diameter bin, per subject", fontsize=11)
    fig.tight_layout()
    return fig


def subject_values_figure(subjects: pd.DataFrame, values, labels: dict, order, seed: int = 0):
    """Box plots of subject-level values per group, with every subject as a point (jittered)."""
    plt = _pyplot()
    colours = group_colours(order)
    rng = np.random.default_rng(seed)
    n = len(values)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    for ax, value in zip(axes.flat, values):
        data = [subjects.loc[subjects["group"].astype(str) == str(g), value].dropna().to_numpy(float) for g in order]
        ax.boxplot(data, positions=range(len(order)), widths=0.55, showfliers=False,
                   medianprops={"color": "black"})
        for i, (group, points) in enumerate(zip(order, data)):
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(points)), points, s=22, color=colours[str(group)],
                       edgecolor="black", linewidth=0.4, zorder=3)
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels([f"{g}\n(n={len(d)})" for g, d in zip(order, data)], fontsize=8)
        ax.set_title(labels.get(value, value), fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle("Subject-level values per group (one point per subject)", fontsize=11)
    fig.tight_layout()
    return fig


def gratio_diameter_figure(axons: pd.DataFrame, group_fits: pd.DataFrame, subject_fits: pd.DataFrame,
                           group_of: dict, order, max_points: int = 20000, seed: int = 0):
    """g-ratio against axon diameter: axons (a random sample of at most ``max_points``), each subject's line (thin)
    and each group's pooled line (thick) with its confidence band over the diameter range."""
    plt = _pyplot()
    colours = group_colours(order)
    data = axons[["group", "axon_diam (um)", "gratio"]].dropna()
    shown = data if len(data) <= max_points else data.sample(max_points, random_state=seed)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for group in order:
        part = shown.loc[shown["group"] == str(group)]
        ax.scatter(part["axon_diam (um)"], part["gratio"], s=3, alpha=0.25, color=colours[str(group)],
                   rasterized=True, label=None)
    xmax = float(np.nanpercentile(data["axon_diam (um)"], 99.5)) if len(data) else 1.0
    xs = np.linspace(0, xmax, 50)
    for _, fit in subject_fits.dropna(subset=["slope"]).iterrows():
        group = group_of.get(fit["subject"])
        if group is None or pd.isna(group):
            continue
        ax.plot(xs, fit["intercept"] + fit["slope"] * xs, color=colours[str(group)], linewidth=0.6, alpha=0.5)
    for _, fit in group_fits.dropna(subset=["slope"]).iterrows():
        colour = colours.get(str(fit["group"]), "black")
        ax.plot(xs, fit["intercept"] + fit["slope"] * xs, color=colour, linewidth=2.5,
                label=f"{fit['group']}: g = {fit['intercept']:.3f} + {fit['slope']:.4f} d (n = {int(fit['n']):,})")
    ax.set_xlim(0, xmax)
    ax.set_ylim(0, 1)
    ax.set_xlabel("axon diameter d (um)")
    ax.set_ylabel("g-ratio")
    sample_note = f"; {len(shown):,} of {len(data):,} axons shown" if len(shown) < len(data) else ""
    ax.set_title(f"g-ratio vs axon diameter (thin: subjects, thick: groups{sample_note})", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def distributions_figure(axons: pd.DataFrame, metrics, labels: dict, order, max_kde: int = 5000, seed: int = 0):
    """Per metric: a density histogram per group (all axons) and a Gaussian kernel density (at most ``max_kde``
    axons per group)."""
    from scipy.stats import gaussian_kde

    plt = _pyplot()
    colours = group_colours(order)
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        values = axons[metric].to_numpy(float)
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            ax.set_title(f"{labels.get(metric, metric)}: no values", fontsize=9)
            continue
        low, high = np.percentile(finite, [0.5, 99.5])
        if high <= low:
            low, high = low - 0.5, high + 0.5
        edges = np.linspace(low, high, 41)
        grid = np.linspace(low, high, 200)
        for group in order:
            part = axons.loc[axons["group"] == str(group), metric].to_numpy(float)
            part = part[np.isfinite(part)]
            if part.size == 0:
                continue
            colour = colours[str(group)]
            ax.hist(part, bins=edges, density=True, histtype="stepfilled", alpha=0.25, color=colour)
            sample = part if part.size <= max_kde else rng.choice(part, max_kde, replace=False)
            if sample.size >= 3 and np.ptp(sample) > 0:
                ax.plot(grid, gaussian_kde(sample)(grid), color=colour, linewidth=1.8,
                        label=f"{group} (n = {part.size:,})")
        ax.set_xlabel(labels.get(metric, metric), fontsize=9)
        ax.set_ylabel("density", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7)
    fig.suptitle("Distributions per group (histograms: all axons; lines: kernel density)", fontsize=11)
    fig.tight_layout()
    return fig


def binned_means_figure(binned: pd.DataFrame, metrics, labels: dict, bin_labels, order):
    """Per metric and diameter bin: each group's mean of subject means, with the standard error over subjects."""
    plt = _pyplot()
    colours = group_colours(order)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    positions = np.arange(len(bin_labels))
    width = 0.8 / max(len(order), 1)
    for ax, metric in zip(axes.flat, metrics):
        part = binned.loc[(binned["metric"] == metric) & (binned["n"] > 0)]
        for i, group in enumerate(order):
            rows = part.loc[part["group"].astype(str) == str(group)]
            stats = rows.groupby("bin", observed=False)["mean"].agg(["mean", "std", "count"]).reindex(bin_labels)
            sem = stats["std"] / np.sqrt(stats["count"])
            offset = (i - (len(order) - 1) / 2) * width
            ax.errorbar(positions + offset, stats["mean"], yerr=sem, fmt="o-", color=colours[str(group)],
                        capsize=3, markersize=4, linewidth=1.2, label=str(group))
        ax.set_xticks(positions)
        ax.set_xticklabels(bin_labels, rotation=45, ha="right", fontsize=8)
        ax.set_xlabel("axon diameter bin (um)", fontsize=9)
        ax.set_ylabel(f"{labels.get(metric, metric)}", fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
        ax.legend(fontsize=7)
    fig.suptitle("Per diameter bin: mean of subject means per group (bars: standard error over subjects)",
                 fontsize=11)
    fig.tight_layout()
    return fig
