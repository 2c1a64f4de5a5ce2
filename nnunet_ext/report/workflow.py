"""``run_report``: read a study's per-axon tables, summarise, test, draw and write the report folder.

Output folder (built in a hidden staging sibling and swapped in whole; an existing folder is replaced only with
``overwrite``)::

    report.html                 the page (self-contained)
    report.json                 command, inputs, filters, bins, warnings, choices, timings, files
    tables/*.csv                every table, tidy (one row per unit / bin / metric) or one row per unit
    tables/report_tables.xlsx   the main tables as sheets (when openpyxl is installed)
    figures/*.png               the figures of the page
    ads_bins/                   with ads=True: AxonDeepSeg's per-subject binned statistics (CSV, XLSX)
"""
from __future__ import annotations

import platform
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from nnunet_ext.io.atomic import atomic_output_path, save_figure, staging_folder, write_csv_atomically, \
    write_json_atomically, write_text_atomically
from nnunet_ext.report import binning, figures, html, inputs, statistics, summaries
from nnunet_ext.report.filters import Filters, apply_filters

__all__ = ["MIXED_MODEL_CHOICES", "run_report"]

MIXED_MODEL_CHOICES = ("group+diameter", "group", "none")
ADS_DIR = "ads_bins"
ADS_TABLE = "statistics_per_axon_caliber"


def _natural(values) -> list:
    return sorted(values, key=lambda v: [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", str(v))])


def _has_openpyxl() -> bool:
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        return False
    return True


def _write_xlsx(sheets: dict, path: Path, index: bool = False) -> None:
    with atomic_output_path(path, overwrite=True, suffix=".xlsx") as temporary:
        with pd.ExcelWriter(temporary, engine="openpyxl") as writer:
            for name, table in sheets.items():
                table.to_excel(writer, sheet_name=name[:31], index=index)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "unnamed"


def run_report(input_paths, out_dir, *, participants=None, group_by: str | None = None, groups=None,
               subject_entity: str = "sub", covariates=(), metrics=inputs.CORE_METRICS, filters: Filters = Filters(),
               bin_edges=None, quantiles: int | None = None, ads: bool = False, test: str = "auto",
               mixed: str = "group+diameter", make_figures: bool = True, title: str | None = None,
               command: str | None = None, overwrite: bool = False, progress: bool = True) -> dict:
    """Make a study report.

    Parameters
    ----------
    input_paths : sequence of path-like
        Morphometrics output folders, AxonDeepSeg subject folders, BIDS derivatives trees or tables
        (:func:`nnunet_ext.report.inputs.find_axon_tables`).
    out_dir : path-like
        The report folder.
    participants : sequence of path-like, optional
        Covariate tables (keyed by ``participant_id``, ``sample_id`` or ``image``); default: the BIDS
        ``participants.tsv`` / ``samples.tsv`` above the inputs.
    group_by : str, optional
        Covariate column defining groups (none: one group, no comparison).
    groups : sequence of str, optional
        Group order; the first is the reference of differences and mixed models.
    subject_entity : str
        BIDS entity naming the units (``sub``; ``sample`` to make samples the units).
    covariates : sequence of str
        Covariate columns added to the mixed models and shown per subject.
    metrics : sequence of str
        Per-axon columns summarised (default: axon diameter, myelin thickness, g-ratio).
    filters : Filters
    bin_edges : sequence of float, optional
        Diameter bin edges (um); default AxonDeepSeg's bins.
    quantiles : int, optional
        Instead of ``bin_edges``: this many bins with equal numbers of axons (pooled over the study).
    ads : bool
        Also write AxonDeepSeg's per-subject binned statistics (``axondeepseg_aggregate``'s table).
    test : {"auto", "parametric", "rank"}
        Subject-level group test (:func:`nnunet_ext.report.statistics.compare_groups`).
    mixed : {"group+diameter", "group", "none"}
        Mixed models fitted per metric (diameter adjustment for the metrics other than the diameter).
    make_figures : bool
    title, command : str, optional
        Page title; the command line shown on the page.
    overwrite : bool
        Replace an existing ``out_dir``.
    progress : bool
        Progress bars.

    Returns
    -------
    dict
        Paths, counts, timings, warnings and the group test and mixed model tables.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    timings: dict[str, float] = {}
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; use --overwrite to replace it")
    if bin_edges is not None and quantiles is not None:
        raise ValueError("--bins and --quantiles exclude each other")
    if mixed not in MIXED_MODEL_CHOICES:
        raise ValueError(f"--mixed-model {mixed}: one of {', '.join(MIXED_MODEL_CHOICES)}")
    if test not in statistics.TESTS:
        raise ValueError(f"--test {test}: one of {', '.join(statistics.TESTS)}")
    metrics = list(dict.fromkeys([*inputs.CORE_METRICS, *metrics]))
    labels = {m: inputs.METRIC_LABELS.get(m, m) for m in metrics}

    # --- read ---------------------------------------------------------------------------------------------------
    covariate_paths = [Path(p) for p in participants] if participants else \
        inputs.find_bids_covariate_tables(input_paths)
    image_subjects = inputs.image_subjects_from_tables(covariate_paths) if covariate_paths else {}
    study = inputs.load_study(input_paths, metrics, subject_entity, image_subjects, progress)
    order_subjects = _natural(study.subjects["subject"])
    study.subjects = study.subjects.set_index("subject").loc[order_subjects].reset_index()
    study.images = study.images.iloc[np.argsort([order_subjects.index(s) for s in study.images["subject"]],
                                                kind="stable")].reset_index(drop=True)
    if covariate_paths:
        study = inputs.attach_covariates(study, covariate_paths)
    study = inputs.assign_groups(study, group_by, groups)
    unknown = [c for c in covariates if c not in study.covariate_columns]
    if unknown:
        raise ValueError(f"--covariate {', '.join(unknown)}: no such column. Columns that exist: "
                         f"{', '.join(study.covariate_columns) or 'none'}")
    order = [str(g) for g in study.subjects["group"].cat.categories]
    group_of = {str(s): (str(g) if pd.notna(g) else None) for s, g in zip(study.subjects["subject"],
                                                                            study.subjects["group"])}
    for column in covariates:
        study.axons[column] = study.axons["subject"].map(
            dict(zip(study.subjects["subject"].astype(str), study.subjects[column]))).astype(object)
    timings["read"] = time.perf_counter() - started

    # --- filter and bin -----------------------------------------------------------------------------------------
    t = time.perf_counter()
    axons = study.axons
    area_sums = None
    if {"axon_area (um^2)", "myelin_area (um^2)"} <= set(axons.columns):
        area_sums = axons.groupby("image", observed=False)[["axon_area (um^2)", "myelin_area (um^2)"]].sum(
            min_count=1).reset_index().rename(columns={"axon_area (um^2)": "axon_area_sum",
                                                       "myelin_area (um^2)": "myelin_area_sum"})
        area_sums["image"] = area_sums["image"].astype(str)
    kept, filter_counts = apply_filters(axons, filters)
    filter_counts = filter_counts.assign(subject=filter_counts["image"].astype(str).map(
        dict(zip(study.images["image"], study.images["subject"]))))
    if quantiles is not None:
        bins = binning.quantile_bins(kept["axon_diam (um)"], quantiles)
    elif bin_edges is not None:
        bins = binning.user_bins(bin_edges)
    else:
        bins = binning.ads_bins()
    timings["filter"] = time.perf_counter() - t

    # --- summaries ----------------------------------------------------------------------------------------------
    t = time.perf_counter()
    images_table = summaries.image_table(kept, study.images, metrics, area_sums)
    subjects_table = summaries.subject_table(kept, images_table, study.subjects, metrics, list(covariates))
    density_known = subjects_table["axon_density (per mm^2)"].notna().any()
    values = [summaries.wide_column(m, "mean") for m in metrics] + ["gratio_aggregate"] + \
        (["axon_density (per mm^2)"] if density_known else [])
    value_labels = {**{summaries.wide_column(m, "mean"): f"{labels[m]}, subject mean" for m in metrics},
                    "gratio_aggregate": "aggregate g-ratio (AVF/MVF)", "axon_density (per mm^2)":
                        "axon density (per mm^2)"}
    groups_table = summaries.group_table(subjects_table, values)
    tidy_images = summaries.metric_summary(kept, "image", metrics, units=study.images["image"])
    tidy_images.insert(1, "subject", tidy_images["image"].map(dict(zip(study.images["image"],
                                                                       study.images["subject"]))))
    tidy_images.insert(2, "group", tidy_images["subject"].map(group_of))
    tidy_subjects = summaries.metric_summary(kept, "subject", metrics, units=order_subjects)
    tidy_subjects.insert(1, "group", tidy_subjects["subject"].map(group_of))
    tidy_groups = _tidy_groups(subjects_table, values, order)
    binned_subjects = binning.binned_summary(kept.assign(subject=kept["subject"].cat.reorder_categories(
        order_subjects)), bins, ["subject"], metrics)
    binned_subjects.insert(1, "group", binned_subjects["subject"].astype(str).map(group_of))
    binned_subjects["subject"] = binned_subjects["subject"].astype(str)
    binned_subjects["bin"] = binned_subjects["bin"].astype(str)
    binned_groups = _binned_groups(binned_subjects, order, bins)
    timings["summaries"] = time.perf_counter() - t

    # --- statistics ---------------------------------------------------------------------------------------------
    t = time.perf_counter()
    compare = group_by is not None
    tests = pd.DataFrame()
    binned_tests = pd.DataFrame()
    model_terms, model_fits = pd.DataFrame(), pd.DataFrame()
    if compare:
        tests = statistics.group_tests(subjects_table, values, order, test, value_labels,
                                       extra_columns={"bin": "all"})
        pieces = []
        for label in bins.labels:
            part = binned_subjects.loc[binned_subjects["bin"] == label]
            wide = part.pivot(index="subject", columns="metric", values="mean")
            wide = wide.assign(group=wide.index.map(group_of))
            wide = wide.dropna(subset=["group"])
            pieces.append(statistics.group_tests(wide, metrics, order, test, labels, extra_columns={"bin": label}))
        binned_tests = pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame()
        if len(binned_tests):
            binned_tests["p_holm"] = statistics.holm(binned_tests["p_value"])
        if mixed != "none":
            term_pieces, fit_rows = [], []
            for metric in tqdm(metrics, desc="report: mixed models", unit="model",
                               disable=not progress or len(kept) < 200_000):
                terms, fit = statistics.mixed_model(kept.dropna(subset=["group"]), metric, order,
                                                    diameter=mixed == "group+diameter", covariates=list(covariates))
                term_pieces.append(terms)
                fit_rows.append(fit)
            model_terms = pd.concat([p for p in term_pieces if len(p)], ignore_index=True) \
                if any(len(p) for p in term_pieces) else pd.DataFrame()
            model_fits = pd.DataFrame(fit_rows)
    fits_subjects = statistics.gratio_fits(kept, "subject", units=order_subjects)
    fits_subjects.insert(1, "group", fits_subjects["subject"].map(group_of))
    fits_groups = statistics.gratio_fits(kept.dropna(subset=["group"]), "group", units=order)
    slopes = statistics.slopes_across_subjects(fits_subjects, group_of, order)
    timings["statistics"] = time.perf_counter() - t

    # --- AxonDeepSeg's table ------------------------------------------------------------------------------------
    ads_statistics = ads_counts = None
    if ads:
        t = time.perf_counter()
        ads_input, _ = apply_filters(axons, Filters(gratio_valid=False, drop_border=filters.drop_border,
                                                    min_diameter=filters.min_diameter,
                                                    max_diameter=filters.max_diameter))
        ads_statistics, ads_counts = binning.ads_binned_statistics(ads_input, order_subjects)
        timings["ads_bins"] = time.perf_counter() - t

    # --- write --------------------------------------------------------------------------------------------------
    warnings_list = list(study.warnings)
    empty = subjects_table.loc[subjects_table["n_axons"] == 0, "subject"].tolist()
    if empty:
        warnings_list.append(f"{len(empty)} subject(s) with no axon after the filters (count 0, no means): "
                             f"{', '.join(empty[:10])}")
    if compare:
        refused = tests.loc[tests["status"] != "done"] if len(tests) else tests
        if len(refused):
            warnings_list.append(f"group tests not done: {refused['reason'].iloc[0]}")
    xlsx = _has_openpyxl()
    files: list[str] = []
    figure_blocks: dict[str, tuple] = {}
    with staging_folder(out_dir, overwrite) as stage:
        t = time.perf_counter()
        (stage / "tables").mkdir()

        def csv(table: pd.DataFrame, name: str) -> None:
            write_csv_atomically(table, stage / "tables" / name, overwrite=True)
            files.append(f"tables/{name}")

        csv(images_table, "images.csv")
        csv(subjects_table, "subjects.csv")
        csv(groups_table, "groups.csv")
        csv(tidy_images, "summary_images.csv")
        csv(tidy_subjects, "summary_subjects.csv")
        csv(tidy_groups, "summary_groups.csv")
        csv(binned_subjects, "binned_subjects.csv")
        csv(binned_groups, "binned_groups.csv")
        csv(filter_counts, "filters.csv")
        csv(fits_subjects, "gratio_fits_subjects.csv")
        csv(fits_groups, "gratio_fits_groups.csv")
        csv(slopes, "gratio_slopes_across_subjects.csv")
        if compare:
            csv(pd.concat([tests, binned_tests], ignore_index=True), "group_tests.csv")
            if mixed != "none":
                csv(model_terms, "mixed_models.csv")
                csv(model_fits, "mixed_model_fits.csv")
        if xlsx:
            sheets = {"images": images_table, "subjects": subjects_table, "groups": groups_table,
                      "binned_subjects": binned_subjects, "binned_groups": binned_groups,
                      "gratio_fits_subjects": fits_subjects, "gratio_fits_groups": fits_groups}
            if compare:
                sheets["group_tests"] = pd.concat([tests, binned_tests], ignore_index=True)
                if len(model_terms):
                    sheets["mixed_models"] = model_terms
            _write_xlsx(sheets, stage / "tables" / "report_tables.xlsx")
            files.append("tables/report_tables.xlsx")
        if ads:
            ads_dir = stage / ADS_DIR
            ads_dir.mkdir()
            write_csv_atomically(ads_statistics, ads_dir / f"{ADS_TABLE}.csv", overwrite=True)
            write_csv_atomically(ads_counts, ads_dir / "axon_count.csv", overwrite=True)
            files += [f"{ADS_DIR}/{ADS_TABLE}.csv", f"{ADS_DIR}/axon_count.csv"]
            for subject in tqdm(order_subjects, desc="report: AxonDeepSeg tables", unit="subject",
                                disable=not progress or len(order_subjects) < 20):
                wide = binning.ads_wide_table(ads_statistics, subject)
                folder = ads_dir / _safe_name(subject)
                folder.mkdir(exist_ok=True)
                write_csv_atomically(wide, folder / f"{ADS_TABLE}.csv", overwrite=True, index=True)
                files.append(f"{ADS_DIR}/{folder.name}/{ADS_TABLE}.csv")
                if xlsx:
                    _write_xlsx({"statistics": wide}, folder / f"{ADS_TABLE}.xlsx", index=True)
                    files.append(f"{ADS_DIR}/{folder.name}/{ADS_TABLE}.xlsx")
        timings["write_tables"] = time.perf_counter() - t
        t = time.perf_counter()
        if make_figures:
            (stage / "figures").mkdir()
            count_table = binned_subjects.loc[binned_subjects["metric"] == metrics[0], ["subject", "bin", "n"]] \
                .rename(columns={"n": "axon_count"})
            jobs = [
                ("bin_counts", lambda: figures.bin_counts_figure(count_table, bins.labels, group_of),
                 "Axon count per diameter bin, per subject (AxonDeepSeg's axon_count plot)"),
                ("subject_values", lambda: figures.subject_values_figure(subjects_table, values, value_labels, order),
                 "Subject-level values per group: the values the group tests compare"),
                ("binned_means", lambda: figures.binned_means_figure(binned_subjects, metrics[:3], labels,
                                                                      bins.labels, order),
                 "Per diameter bin: mean of subject means per group, standard error over subjects"),
                ("gratio_vs_diameter", lambda: figures.gratio_diameter_figure(kept, fits_groups, fits_subjects,
                                                                               group_of, order),
                 "g-ratio vs axon diameter with least-squares lines per subject (thin) and group (thick)"),
                ("distributions", lambda: figures.distributions_figure(kept, metrics[:3], labels, order),
                 "Distributions of axon diameter, myelin thickness and g-ratio per group"),
            ]
            for name, make, caption in tqdm(jobs, desc="report: figures", unit="figure",
                                            disable=not progress or len(kept) < 200_000):
                path = save_figure(make(), stage / "figures" / f"{name}.png", dpi=100)
                files.append(f"figures/{name}.png")
                figure_blocks[name] = ("figure", path.read_bytes(), caption)
        timings["figures"] = time.perf_counter() - t
        info = {
            "title": title or "Study report", "command": command or "", "cwd": str(Path.cwd()),
            "inputs": [str(p) for p in input_paths], "covariate_tables": study.covariate_tables,
            "group_by": group_by, "groups": order if compare else [], "subject_entity": subject_entity,
            "covariates": list(covariates), "metrics": metrics, "filters": filters.describe(),
            "bins": {"kind": bins.kind, "edges": [e if np.isfinite(e) else "inf" for e in bins.edges],
                     "labels": list(bins.labels), "description": bins.describe()},
            "test": test, "mixed_model": mixed if compare else "none", "ads_bins": ads,
            "counts": {"images": int(len(study.images)), "subjects": int(len(study.subjects)),
                       "groups": len(order) if compare else 1, "axons_read": int(len(axons)),
                       "axons_kept": int(len(kept))},
            "warnings": warnings_list, "notes": study.notes, "versions": _versions(),
        }
        t = time.perf_counter()
        page = _page(info, images_table, subjects_table, groups_table, tests, binned_tests, model_terms, model_fits,
                     fits_subjects, fits_groups, slopes, binned_groups, binned_subjects, filter_counts, bins,
                     figure_blocks, ads_statistics, ads_counts, labels, value_labels, files, timings, started)
        write_text_atomically(stage / "report.html", page)
        files.append("report.html")
        timings["page"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - started
        info["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
        info["files"] = files + ["report.json"]
        write_json_atomically(info, stage / "report.json")
    return {"out_dir": out_dir, "html": out_dir / "report.html", "info": info, "tests": tests,
            "binned_tests": binned_tests, "mixed_models": model_terms, "mixed_model_fits": model_fits,
            "subjects": subjects_table, "groups": groups_table, "images": images_table,
            "ads_statistics": ads_statistics, "warnings": warnings_list, "timings": timings}


def _versions() -> dict:
    import matplotlib
    import scipy

    from nnunet_ext import __version__

    versions = {"nnunet-ext": __version__, "python": platform.python_version(), "pandas": pd.__version__,
                "numpy": np.__version__, "scipy": scipy.__version__, "matplotlib": matplotlib.__version__}
    try:
        import statsmodels

        versions["statsmodels"] = statsmodels.__version__
    except ImportError:  # pragma: no cover - a dependency
        pass
    return versions


def _tidy_groups(subjects_table: pd.DataFrame, values, order) -> pd.DataFrame:
    rows = []
    data = subjects_table.dropna(subset=["group"])
    for value in values:
        for group in order:
            part = data.loc[data["group"].astype(str) == group, value].dropna().to_numpy(float)
            k = len(part)
            rows.append({"group": group, "value": value, "n_subjects": k, "mean": part.mean() if k else np.nan,
                         "sd": part.std(ddof=1) if k > 1 else np.nan,
                         "sem": part.std(ddof=1) / np.sqrt(k) if k > 1 else np.nan,
                         "median": float(np.median(part)) if k else np.nan})
    return pd.DataFrame(rows)


def _binned_groups(binned_subjects: pd.DataFrame, order, bins) -> pd.DataFrame:
    data = binned_subjects.dropna(subset=["group"])
    with_axons = data.loc[data["n"] > 0]
    grouped = with_axons.groupby(["group", "bin", "metric"], sort=False)
    table = grouped.agg(n_subjects=("mean", "count"), n_axons=("n", "sum"), mean=("mean", "mean"),
                        sd=("mean", "std")).reset_index()
    table["sem"] = table["sd"] / np.sqrt(table["n_subjects"])
    # every group x bin x metric, in order
    index = pd.MultiIndex.from_product([order, list(bins.labels), list(pd.unique(binned_subjects["metric"]))],
                                       names=["group", "bin", "metric"])
    table = table.set_index(["group", "bin", "metric"]).reindex(index).reset_index()
    table["n_subjects"] = table["n_subjects"].fillna(0).astype(int)
    table["n_axons"] = table["n_axons"].fillna(0).astype(int)
    return table


def _page(info, images_table, subjects_table, groups_table, tests, binned_tests, model_terms, model_fits,
          fits_subjects, fits_groups, slopes, binned_groups, binned_subjects, filter_counts, bins, figure_blocks,
          ads_statistics, ads_counts, labels, value_labels, files, timings, started) -> str:
    Section = html.Section
    counts = info["counts"]
    compare = bool(info["group_by"])
    glance = [("images", counts["images"]), ("subjects", counts["subjects"]),
              ("groups", counts["groups"] if compare else "-"), ("axons read", f"{counts['axons_read']:,}"),
              ("axons kept", f"{counts['axons_kept']:,}")]
    at_glance = Section("glance", "The study at a glance", [("glance", glance)])
    if compare:
        at_glance.blocks.append(("p", f"Groups from column '{info['group_by']}': "
                                      + ", ".join(f"{g} ({int(n)} subjects)" for g, n in
                                                  zip(groups_table["group"], groups_table["n_subjects"]))
                                      + f"; reference group '{info['groups'][0]}'."))
    else:
        at_glance.blocks.append(("p", "No --group-by: all subjects form one group, no group comparison."))
    for warning in info["warnings"]:
        at_glance.blocks.append(("warn", warning))
    if compare and len(tests):
        key = tests[["metric", "means", "test", "p_value", "p_holm", "effect_size_name", "effect_size", "reason"]]
        at_glance.blocks.append(("table", key, "table-key-tests", "Key results: groups compared on subject-level "
                                                                  "values", False))
        if len(model_terms):
            terms = model_terms.loc[model_terms["term"].str.startswith("group["),
                                    ["formula", "term", "coef", "ci_low", "ci_high", "p_value"]]
            at_glance.blocks.append(("table", terms, "table-key-mixed", "Key results: group effects in the mixed "
                                                                        "models (axon level, 95 % CI)", False))
    at_glance.blocks += [("h3", "Filters"), ("list", info["filters"]), ("h3", "Diameter bins"),
                         ("p", info["bins"]["description"]), ("h3", "Command"),
                         ("pre", info["command"] or "(called from Python)"),
                         ("note", f"Working directory {info['cwd']}; covariate tables: "
                                  f"{'; '.join(info['covariate_tables']) or 'none'}.")]
    sections = [at_glance]

    group_section = Section("groups", "Groups")
    show_groups = groups_table.rename(columns=lambda c: c.replace(
        c.split(" | ")[0], value_labels.get(c.split(" | ")[0], c.split(" | ")[0])) if " | " in c else c)
    group_section.blocks.append(("table", show_groups, "table-groups",
                                 "Per group: subject-level values (mean, SD, standard error over subjects)", False))
    if compare:
        group_section.blocks.append(("note", "Subjects are the units: each test compares one value per subject "
                                             "(axons of one subject are not independent samples). The primary test "
                                             "and why it was chosen are in 'reason'; the other test is given "
                                             "beside it (alt_*). p_holm: Holm-adjusted over this table's tests."))
        shown = tests.drop(columns=["status"]) if len(tests) else tests
        group_section.blocks.append(("table", shown, "table-tests", "Group comparisons of subject-level values",
                                     False))
        if len(model_fits):
            group_section.blocks.append(("note", "Linear mixed models on the axons (statsmodels MixedLM, REML): "
                                                 "metric ~ group [+ axon diameter] [+ covariates] + random intercept "
                                                 "per subject. group[X] is the difference X - reference at equal "
                                                 "diameter; ICC: share of the variance between subjects."))
            group_section.blocks.append(("table", model_fits, "table-mixed-fits", "Mixed models", False))
            if len(model_terms):
                group_section.blocks.append(("table", model_terms, "table-mixed-terms",
                                             "Mixed model fixed effects (95 % CI)", False))
    for name in ("subject_values", "distributions", "gratio_vs_diameter"):
        if name in figure_blocks:
            group_section.blocks.append(figure_blocks[name])
    group_section.blocks.append(("table", fits_groups, "table-fits-groups",
                                 "g-ratio vs axon diameter per group: pooled axons (intervals treat axons as "
                                 "independent: too narrow for inference)", False))
    group_section.blocks.append(("table", slopes, "table-slopes",
                                 "g-ratio vs axon diameter per group: mean of subject lines, 95 % CI over subjects",
                                 False))
    sections.append(group_section)

    bin_section = Section("bins", "Diameter bins", [("p", info["bins"]["description"])])
    bin_section.blocks.append(("table", binned_groups.assign(metric=binned_groups["metric"].map(
        lambda m: labels.get(m, m))), "table-binned-groups",
        "Per group and bin: mean of subject means (subjects with axons in the bin)", False))
    if compare and len(binned_tests):
        bin_section.blocks.append(("table", binned_tests.drop(columns=["status"]), "table-binned-tests",
                                   "Group comparisons per bin (subject means within the bin)", False))
    for name in ("binned_means", "bin_counts"):
        if name in figure_blocks:
            bin_section.blocks.append(figure_blocks[name])
    bin_section.blocks.append(("table", binned_subjects, "table-binned-subjects",
                               "Per subject and bin (tidy)", True))
    sections.append(bin_section)

    subject_section = Section("subjects", "Subjects", [
        ("table", subjects_table, "table-subjects", "Per subject (images pooled)", False),
        ("table", fits_subjects, "table-fits-subjects", "g-ratio vs axon diameter per subject (95 % CI)", False)])
    sections.append(subject_section)
    image_section = Section("images", "Images", [
        ("table", images_table, "table-images", "Per image", False),
        ("table", filter_counts, "table-filters", "Axons removed by each filter, per image", False)])
    sections.append(image_section)
    if ads_statistics is not None:
        ads_section = Section("ads", "AxonDeepSeg bins", [
            ("p", "The table of AxonDeepSeg's axondeepseg_aggregate, per subject: axons with a g-ratio that is "
                  "NaN or outside (0, 1) dropped, bins 0.5-1, 1-1.25, 1.25-1.5, 1.5-1.75, 1.75- um (lower edge "
                  "included), mean, standard deviation, min, max and median rounded to 2 decimals. Other filters "
                  "of this report apply before it when asked for (none by default)."),
            ("table", ads_counts, "table-ads-counts", "Axon count per bin (after the g-ratio filter)", True),
            ("table", ads_statistics, "table-ads", f"{ADS_DIR}/{ADS_TABLE}.csv", True)])
        sections.append(ads_section)
    provenance = Section("provenance", "Provenance", [
        ("h3", "Inputs"), ("list", info["inputs"]), ("h3", "Notes"), ("list", info["notes"]),
        ("h3", "Files in this folder"), ("list", [*files, "report.json"]),
        ("h3", "Software"), ("list", [f"{k} {v}" for k, v in info["versions"].items()]),
        ("note", "Figures: the scatter shows at most 20,000 axons drawn at random (seed 0), kernel densities use at "
                 "most 5,000 axons per group; histograms, fits, box plots and counts use every axon."),
        ("note", "Time: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))])
    sections.append(provenance)
    subtitle = (f"{counts['subjects']} subjects, {counts['images']} images, {counts['axons_kept']:,} axons"
                + (f"; groups by '{info['group_by']}'" if compare else "")
                + f"; generated {time.strftime('%Y-%m-%d %H:%M:%S')} by nnunet-ext {info['versions']['nnunet-ext']}")
    return html.render_page(info["title"], subtitle, sections)
