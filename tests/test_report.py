"""``nnunet-ext report``: AxonDeepSeg-compatible binned table, a real study on ads_sem, statistics, bad input, and the
HTML page in a headless browser.

The per-axon tables come from ``nnunet-ext morphometrics`` run on ads_sem's manual masks, as a user would. The study's
two groups are made up (sub-rat1..4 "control", sub-rat5..8 "treated"): ads_sem has no groups.
"""
from __future__ import annotations

import csv
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nnunet_ext.cli import main

MADE_UP_GROUPS = {f"sub-rat{i}": ("control" if i <= 4 else "treated") for i in range(1, 9)}
CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"]

# AxonDeepSeg's documented aggregate rules (axondeepseg_aggregate, AxonDeepSeg 5.5), written out independently
ADS_RULE_BINS = [(0.5, 1.0, "0.5-1"), (1.0, 1.25, "1-1.25"), (1.25, 1.5, "1.25-1.5"), (1.5, 1.75, "1.5-1.75"),
                 (1.75, math.inf, "1.75-")]
ADS_RULE_METRICS = [("Axon Diameter", "axon_diam (um)"), ("G-Ratio", "gratio"),
                    ("Myelin Thickness", "myelin_thickness (um)")]
ADS_RULE_STATISTICS = ["Mean", "Standard Deviation", "Min", "Max", "Median"]


def _number(text: str) -> float:
    return float(text) if text not in ("", "nan", "NaN") else math.nan


def independent_ads_table(per_axon_csvs, subject_of) -> tuple[dict, dict]:
    """The binned statistics by AxonDeepSeg's rules, with the csv module, plain loops and numpy: g-ratio NaN or
    outside (0, 1) dropped; bins [lo, hi) with lo <= diameter < hi; mean, SD (ddof 1), min, max, median of each
    metric, each rounded to 2 decimals; no value for an empty bin (or the SD of one axon)."""
    rows_by_subject: dict[str, list[dict]] = {}
    for path in per_axon_csvs:
        with open(path, newline="") as handle:
            rows_by_subject.setdefault(subject_of(path), []).extend(csv.DictReader(handle))
    table, counts = {}, {}
    for subject, rows in rows_by_subject.items():
        kept = [r for r in rows if 0 < _number(r["gratio"]) < 1]  # NaN compares False: dropped too
        for lo, hi, label in ADS_RULE_BINS:
            members = [r for r in kept if lo <= _number(r["axon_diam (um)"]) < hi]
            counts[(subject, label)] = len(members)
            for name, column in ADS_RULE_METRICS:
                values = np.array([_number(r[column]) for r in members])
                if values.size:
                    statistics = [values.mean(), values.std(ddof=1) if values.size > 1 else math.nan, values.min(),
                                  values.max(), np.median(values)]
                else:
                    statistics = [math.nan] * 5
                for statistic, value in zip(ADS_RULE_STATISTICS, statistics):
                    table[(subject, name, statistic, label)] = round(float(value), 2) if value == value else math.nan
    return table, counts


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def run(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def morphometrics(tmp_path_factory, shared_data) -> Path:
    """``nnunet-ext morphometrics`` on the ten ads_sem images (manual masks)."""
    out = tmp_path_factory.mktemp("report_inputs") / "morphometrics"
    assert run("morphometrics", shared_data / "ads_sem", "-o", out, "--no-qc") == 0
    return out


@pytest.fixture(scope="module")
def participants(tmp_path_factory) -> Path:
    """A MADE-UP two-group participants table (ads_sem has no groups)."""
    path = tmp_path_factory.mktemp("report_participants") / "participants_made_up.tsv"
    pd.DataFrame({"participant_id": list(MADE_UP_GROUPS), "condition": list(MADE_UP_GROUPS.values()),
                  "age_weeks": [8, 9, 8, 10, 9, 8, 10, 9]}).to_csv(path, sep="\t", index=False)
    return path


@pytest.fixture(scope="module")
def study(morphometrics, participants, tmp_path_factory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("report_study") / "report"
    started = time.perf_counter()
    assert run("report", morphometrics, "-o", out, "--participants", participants, "--group-by", "condition",
               "--ads-bins") == 0
    return out, time.perf_counter() - started


def per_axon_tables(morphometrics: Path) -> list[Path]:
    return sorted(morphometrics.glob("sub-*_axon_morphometrics.csv"))


# ------------------------------------------------------------------------------------------------------------------
# AxonDeepSeg-compatible table


def test_ads_bins_equal_independent_rules(study, morphometrics):
    out, _ = study
    expected, expected_counts = independent_ads_table(per_axon_tables(morphometrics), lambda p: p.name.split("_")[0])
    assert len(expected) == 8 * 3 * 5 * 5
    tidy = pd.read_csv(out / "ads_bins" / "statistics_per_axon_caliber.csv")
    assert len(tidy) == len(expected)
    got = {(r.subject, r.metric, r.statistic, r.bin): r.value for r in tidy.itertuples()}
    assert got.keys() == expected.keys()
    differing = [key for key in expected if not same(got[key], expected[key])]
    assert differing == []
    assert tidy["value"].notna().sum() > 550  # real numbers, not an all-NaN table
    counts = pd.read_csv(out / "ads_bins" / "axon_count.csv")
    assert {(r.subject, r.bin): r.axon_count for r in counts.itertuples()} == expected_counts
    assert sum(expected_counts.values()) > 7000
    # AxonDeepSeg's own layout per subject: rows (Metric, Statistic), one column per bin, CSV and XLSX
    for subject in MADE_UP_GROUPS:
        for wide in (pd.read_csv(out / "ads_bins" / subject / "statistics_per_axon_caliber.csv", index_col=[0, 1]),
                     pd.read_excel(out / "ads_bins" / subject / "statistics_per_axon_caliber.xlsx", index_col=[0, 1])):
            assert list(wide.columns) == [label for _, _, label in ADS_RULE_BINS]
            assert list(wide.index) == [(m, s) for m, _ in ADS_RULE_METRICS for s in ADS_RULE_STATISTICS]
            for (metric, statistic), row in wide.iterrows():
                for label, value in row.items():
                    assert same(float(value), expected[(subject, metric, statistic, label)])


def test_ads_format_tables_in_subject_folders(morphometrics, tmp_path):
    """AxonDeepSeg's input layout: one folder per subject, tables with ADS's columns only (index column, no image
    column), one of them .xlsx; subjects are the folders."""
    ads_columns = ["x0 (px)", "y0 (px)", "gratio", "axon_area (um^2)", "axon_perimeter (um)", "myelin_area (um^2)",
                   "axon_diam (um)", "myelin_thickness (um)", "axonmyelin_area (um^2)", "axonmyelin_perimeter (um)",
                   "eccentricity", "orientation", "fiber_eccentricity", "fiber_orientation", "solidity",
                   "image_border_touching", "bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x"]
    layout = tmp_path / "ads_layout"
    sources = per_axon_tables(morphometrics)
    for path in sources:
        subject, rest = path.name.split("_", 1)
        folder = layout / subject.replace("sub-", "")  # rat1 ...: no BIDS entity, the folder names the subject
        folder.mkdir(parents=True, exist_ok=True)
        table = pd.read_csv(path)[ads_columns]
        target = folder / rest.replace(".csv", ".xlsx" if subject == "sub-rat8" else ".csv")
        table.to_excel(target) if target.suffix == ".xlsx" else table.to_csv(target)
    out = tmp_path / "report"
    assert run("report", layout, "-o", out, "--ads-bins", "--no-figures") == 0
    expected, _ = independent_ads_table(sources, lambda p: p.name.split("_")[0].replace("sub-", ""))
    tidy = pd.read_csv(out / "ads_bins" / "statistics_per_axon_caliber.csv")
    got = {(r.subject, r.metric, r.statistic, r.bin): r.value for r in tidy.itertuples()}
    assert got.keys() == expected.keys()
    assert all(same(got[k], expected[k]) for k in expected)
    subjects = pd.read_csv(out / "tables" / "subjects.csv")
    assert list(subjects["subject"]) == [f"rat{i}" for i in range(1, 9)]
    assert list(subjects["n_images"]) == [1, 1, 3, 1, 1, 1, 1, 1]


def test_bids_derivatives_tree_with_filters_and_bins(morphometrics, shared_data, tmp_path):
    """A BIDS derivatives tree finds the dataset's participants.tsv and samples.tsv above it; user bins, filters and
    a covariate; without aggregate tables the aggregate g-ratio comes from the per-axon areas (and says so)."""
    bids = tmp_path / "bids"
    chosen = {"sub-rat1": "sample-data1", "sub-rat2": "sample-data5", "sub-rat5": "sample-data14",
              "sub-rat6": "sample-data15"}
    for subject, sample in chosen.items():
        folder = bids / "derivatives" / "morphometrics" / subject / "micr"
        folder.mkdir(parents=True)
        shutil.copy(morphometrics / f"{subject}_{sample}_SEM_axon_morphometrics.csv", folder)
    shutil.copy(shared_data / "ads_sem" / "samples.tsv", bids)
    (bids / "participants.tsv").write_text("participant_id\tcondition\tage_weeks\n" + "".join(
        f"{s}\t{MADE_UP_GROUPS[s]}\t{8 + i}\n" for i, s in enumerate(chosen)))
    out = tmp_path / "report"
    assert run("report", bids / "derivatives" / "morphometrics", "-o", out, "--group-by", "condition",
               "--covariate", "age_weeks", "--bins", "0", "0.5", "1", "2", "4", "inf", "--drop-border",
               "--min-diameter", "0.3", "--no-figures") == 0
    info = (out / "report.json").read_text()
    assert "participants.tsv (per subject" in info and "samples.tsv (per sample, key 'sample_id')" in info
    images = pd.read_csv(out / "tables" / "images.csv")
    assert list(images["group"]) == ["control", "control", "treated", "treated"]
    filters = pd.read_csv(out / "tables" / "filters.csv").set_index("image")
    for subject, sample in chosen.items():
        table = pd.read_csv(morphometrics / f"{subject}_{sample}_SEM_axon_morphometrics.csv")
        valid = (table["gratio"] > 0) & (table["gratio"] < 1)
        border = table["image_border_touching"].astype(bool)
        row = filters.loc[f"{subject}_{sample}_SEM"]
        assert row["invalid_gratio"] == (~valid).sum()
        assert row["border_touching"] == (valid & border).sum()
        assert row["below_min_diameter"] == (valid & ~border & (table["axon_diam (um)"] < 0.3)).sum()
        assert row["axons_kept"] == (valid & ~border & (table["axon_diam (um)"] >= 0.3)).sum()
        image = images.set_index("image").loc[f"{subject}_{sample}_SEM"]
        assert image["gratio_aggregate_source"] == "per-axon areas"
        assert image["gratio_aggregate"] == pytest.approx(
            1 / math.sqrt(1 + table["myelin_area (um^2)"].sum() / table["axon_area (um^2)"].sum()), rel=1e-12)
    assert filters["border_touching"].sum() > 0 and filters["below_min_diameter"].sum() > 0
    binned = pd.read_csv(out / "tables" / "binned_subjects.csv")
    assert list(pd.unique(binned["bin"])) == ["0-0.5", "0.5-1", "1-2", "2-4", "4-"]
    kept = filters.groupby(filters.index.str.split("_").str[0])["axons_kept"].sum()
    assert binned.loc[binned["metric"] == "gratio"].groupby("subject")["n"].sum().to_dict() == kept.to_dict()
    terms = pd.read_csv(out / "tables" / "mixed_models.csv")
    assert set(terms.loc[terms["metric"] == "gratio", "term"]) == {"Intercept", "group[treated]", "axon_diam",
                                                                    "age_weeks"}


# ------------------------------------------------------------------------------------------------------------------
# The real study


def test_study_statistics_on_ads_sem(study, morphometrics):
    out, elapsed = study
    axons = pd.concat([pd.read_csv(p).assign(subject=p.name.split("_")[0]) for p in per_axon_tables(morphometrics)],
                      ignore_index=True)
    valid = axons.loc[(axons["gratio"] > 0) & (axons["gratio"] < 1)].copy()
    valid["condition"] = valid["subject"].map(MADE_UP_GROUPS)
    subjects = pd.read_csv(out / "tables" / "subjects.csv").set_index("subject")
    assert list(subjects.index) == list(MADE_UP_GROUPS)
    assert subjects["n_axons"].to_dict() == valid.groupby("subject").size().to_dict()
    assert subjects["n_axons"].sum() == 7959 and len(axons) == 7963  # 4 invalid g-ratios dropped
    means = valid.groupby("subject")["gratio"].mean()
    np.testing.assert_allclose(subjects.loc[means.index, "gratio mean"], means, rtol=1e-12)
    # aggregate g-ratio of sub-rat3's three images: AVF and MVF pooled over their areas
    aggregate = pd.read_csv(morphometrics / "aggregate_morphometrics.csv")
    rat3 = aggregate.loc[aggregate["image"].str.startswith("sub-rat3_")]
    avf = (rat3["avf"] * rat3["area (mm^2)"]).sum() / rat3["area (mm^2)"].sum()
    mvf = (rat3["mvf"] * rat3["area (mm^2)"]).sum() / rat3["area (mm^2)"].sum()
    assert subjects.loc["sub-rat3", "gratio_aggregate"] == pytest.approx(1 / math.sqrt(1 + mvf / avf), rel=1e-12)
    assert subjects.loc["sub-rat3", "axon_density (per mm^2)"] == pytest.approx(
        subjects.loc["sub-rat3", "n_axons"] / rat3["area (mm^2)"].sum(), rel=1e-12)

    # subject-level tests, recomputed here with scipy from the per-axon CSVs
    tests = pd.read_csv(out / "tables" / "group_tests.csv")
    row = tests.loc[(tests["bin"] == "all") & (tests["metric"] == "g-ratio, subject mean")].iloc[0]
    control = means[[s for s, g in MADE_UP_GROUPS.items() if g == "control"]].to_numpy()
    treated = means[[s for s, g in MADE_UP_GROUPS.items() if g == "treated"]].to_numpy()
    welch = stats.ttest_ind(treated, control, equal_var=False)
    mann_whitney = stats.mannwhitneyu(treated, control, alternative="two-sided")
    by_test = {row["test"]: (row["statistic"], row["p_value"]), row["alt_test"]: (row["alt_statistic"],
                                                                                   row["alt_p_value"])}
    assert by_test["Welch's t-test"] == pytest.approx((welch.statistic, welch.pvalue), rel=1e-10)
    assert by_test["Mann-Whitney U"] == pytest.approx((mann_whitney.statistic, mann_whitney.pvalue), rel=1e-10)
    assert row["groups"] == "control: 4; treated: 4" and row["status"] == "done"
    assert "one value per subject" in row["reason"]

    # mixed model, recomputed with statsmodels' formula interface from its default starting values
    import statsmodels.formula.api as smf

    model = pd.read_csv(out / "tables" / "mixed_models.csv")
    group_term = model.loc[(model["metric"] == "gratio") & (model["term"] == "group[treated]")].iloc[0]
    data = valid.rename(columns={"axon_diam (um)": "diam"})
    reference = smf.mixedlm("gratio ~ C(condition) + diam", data, groups=data["subject"]).fit(reml=True)
    name = "C(condition)[T.treated]"
    assert group_term["coef"] == pytest.approx(reference.fe_params[name], rel=1e-4)
    assert group_term["se"] == pytest.approx(reference.bse_fe[name], rel=1e-3)
    fits = pd.read_csv(out / "tables" / "mixed_model_fits.csv").set_index("metric")
    assert fits.loc["gratio", "n_axons"] == 7959 and fits.loc["gratio", "n_subjects"] == 8
    assert bool(fits.loc["gratio", "converged"])

    # g-ratio vs diameter, one subject, against scipy
    line = stats.linregress(valid.loc[valid["subject"] == "sub-rat5", "axon_diam (um)"],
                            valid.loc[valid["subject"] == "sub-rat5", "gratio"])
    subject_fits = pd.read_csv(out / "tables" / "gratio_fits_subjects.csv").set_index("subject")
    assert subject_fits.loc["sub-rat5", "slope"] == pytest.approx(line.slope, rel=1e-9)
    assert subject_fits.loc["sub-rat5", "intercept"] == pytest.approx(line.intercept, rel=1e-9)
    half = stats.t.ppf(0.975, subject_fits.loc["sub-rat5", "n"] - 2) * line.stderr
    assert subject_fits.loc["sub-rat5", "slope_ci_high"] == pytest.approx(line.slope + half, rel=1e-9)

    # tidy tables: one row per subject x bin x metric
    binned = pd.read_csv(out / "tables" / "binned_subjects.csv")
    assert len(binned) == 8 * 5 * 3
    assert binned.loc[binned["metric"] == "gratio"].groupby("subject")["n"].sum().le(
        subjects["n_axons"]).all()
    info = (out / "report.json").read_text()
    assert "pixel sizes differ between images" in info
    assert elapsed < 60  # the figure to report comes from benchmarks/bench_report.py --ads-sem


def test_page_content(study):
    out, _ = study
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count('<img alt="') == 5 and page.count("data:image/png;base64,") == 5
    assert "http://" not in page and "https://" not in page and "src=\"figures/" not in page  # self-contained
    for text in ("The study at a glance", "pixel sizes differ", "Welch", "Mann-Whitney", "Mixed models",
                 "group[treated]", "AxonDeepSeg bins", "--group-by condition", "--ads-bins", "g-ratio valid"):
        assert text in page, text
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["bin_counts.png", "binned_means.png", "distributions.png", "gratio_vs_diameter.png",
                       "subject_values.png"]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install chromium): the headless "
                                             "browser check of report.html cannot run")
def test_page_in_headless_chromium(study, tmp_path):
    out, _ = study

    def load(page: Path) -> tuple[str, str]:
        profile = tmp_path / f"profile-{page.stem}"
        done = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                               page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout, done.stderr

    def console_lines(stderr: str) -> list[str]:
        return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]

    # the check itself sees a broken page
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>console.error('boom'); notDefined();</script></body></html>")
    _, stderr = load(broken)
    assert any("Uncaught ReferenceError" in line for line in console_lines(stderr))

    dom, stderr = load(out / "report.html")
    assert console_lines(stderr) == []
    body = re.search(r"<body[^>]*>", dom).group(0)
    tables = (out / "report.html").read_text().count('<table class="sortable"')
    assert tables >= 10
    assert f'data-sort-ready="{tables}"' in body  # the sort script ran over every table
    assert 'data-figures-loaded="5/5"' in body    # every embedded figure decoded (naturalWidth > 0)
    assert 'data-js-errors="0"' in body
    for table_id in ("table-groups", "table-tests", "table-mixed-terms", "table-subjects", "table-images",
                     "table-ads"):
        assert f'id="{table_id}"' in dom


# ------------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.fixture
def small_study(morphometrics, shared_data, tmp_path) -> Path:
    """Three ads_sem images (pixel sizes 0.18, 0.093 and 0.07 um; sub-rat2's table in nm) and sub-rat9, an image
    without axons (../shared/data/noaxons at 0.1 um, measured by 'nnunet-ext morphometrics' into a sub-rat9
    folder)."""
    folder = tmp_path / "study"
    folder.mkdir()
    for name in ("sub-rat1_sample-data1_SEM", "sub-rat2_sample-data5_SEM", "sub-rat8_sample-V915_SEM"):
        shutil.copy(morphometrics / f"{name}_axon_morphometrics.csv", folder)
    shutil.copy(morphometrics / "aggregate_morphometrics.csv", folder)
    path = folder / "sub-rat2_sample-data5_SEM_axon_morphometrics.csv"
    table = pd.read_csv(path)
    for column in list(table.columns):
        if column.endswith("(um)"):
            table[column] *= 1000.0
        elif column.endswith("(um^2)"):
            table[column] *= 1e6
    table.columns = [c.replace("(um^2)", "(nm²)").replace("(um)", "(nm)") for c in table.columns]
    table.to_csv(path, index=False)
    assert run("morphometrics", shared_data / "noaxons" / "image_seg-axon.png", "-o", folder / "sub-rat9",
               "--pixel-size", "0.1", "--no-qc") == 0
    return folder


def test_bad_input_is_stated(small_study, morphometrics, tmp_path, capsys):
    groups = tmp_path / "groups.csv"
    groups.write_text("participant_id,genotype\nsub-rat1,wt\nsub-rat2,wt\nsub-rat8,ko\nsub-rat9,ko\n")
    out = tmp_path / "report"
    assert run("report", small_study, "-o", out, "--participants", groups, "--group-by", "genotype", "--ads-bins",
               "--no-figures") == 0
    printed = capsys.readouterr().out
    subjects = pd.read_csv(out / "tables" / "subjects.csv").set_index("subject")
    # a subject with no axons: a row with count 0 (and its area: density 0), no means
    assert subjects.loc["sub-rat9", "n_axons"] == 0 and subjects.loc["sub-rat9", "n_images"] == 1
    assert subjects.loc["sub-rat9", "axon_density (per mm^2)"] == 0
    assert math.isnan(subjects.loc["sub-rat9", "gratio mean"])
    ads = pd.read_csv(out / "ads_bins" / "statistics_per_axon_caliber.csv")
    assert ads.loc[ads["subject"] == "sub-rat9", "value"].isna().all() and len(ads.loc[ads["subject"] == "sub-rat9"])
    counts = pd.read_csv(out / "ads_bins" / "axon_count.csv")
    assert counts.loc[counts["subject"] == "sub-rat9", "axon_count"].tolist() == [0] * 5
    # nm converted to um, and said
    original = pd.read_csv(morphometrics / "sub-rat2_sample-data5_SEM_axon_morphometrics.csv")
    original = original.loc[(original["gratio"] > 0) & (original["gratio"] < 1)]
    assert subjects.loc["sub-rat2", "axon_diam (um) mean"] == pytest.approx(original["axon_diam (um)"].mean(),
                                                                            rel=1e-12)
    info = (out / "report.json").read_text()
    assert re.search(r"units differ between tables \(nm, um\)", info)
    # mixed pixel sizes stated, with the sizes
    assert "pixel sizes differ between images: 0.07 um (1 image(s)), 0.093 um (1 image(s)), 0.1 um (1 image(s)), " \
        "0.18 um (1 image(s))" in info
    # group 'ko' has one subject with a g-ratio (sub-rat9 has none): the test is refused, and says why
    tests = pd.read_csv(out / "tables" / "group_tests.csv")
    row = tests.loc[(tests["bin"] == "all") & (tests["metric"] == "g-ratio, subject mean")].iloc[0]
    assert row["status"] == "refused" and math.isnan(row["p_value"])
    assert "'ko' has 1 subject(s) with a value" in row["reason"] and "at least 2" in row["reason"]
    fits = pd.read_csv(out / "tables" / "mixed_model_fits.csv")
    assert (fits["status"] == "refused").all() and fits["reason"].str.contains("'ko' has 1").all()
    assert "not tested" in printed and "at least 2" in (out / "report.html").read_text()

    # an unknown group column names the columns that exist
    assert run("report", small_study, "-o", tmp_path / "other", "--participants", groups, "--group-by",
               "condition") == 1
    error = capsys.readouterr().err
    assert error.startswith("nnunet-ext report: error: --group-by 'condition': no such column")
    assert "Columns that exist: genotype" in error
    assert not (tmp_path / "other").exists()

    # the report folder is replaced only with --overwrite
    (out / "mine.txt").write_text("keep me unless --overwrite")
    assert run("report", small_study, "-o", out, "--no-figures") == 1
    assert "exists; use --overwrite" in capsys.readouterr().err and (out / "mine.txt").exists()
    assert run("report", small_study, "-o", out, "--no-figures", "--overwrite") == 0
    assert not (out / "mine.txt").exists() and (out / "report.html").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report")]  # no staging left behind


def test_inconsistent_inputs_are_refused(small_study, tmp_path):
    from nnunet_ext.report.workflow import run_report

    # an image's table given twice
    with pytest.raises(ValueError, match="appears in two tables"):
        run_report([small_study, small_study / "sub-rat1_sample-data1_SEM_axon_morphometrics.csv"], tmp_path / "a",
                   make_figures=False)
    # a group that differs between images of one subject
    images = tmp_path / "images.tsv"
    images.write_text("image\tregion\nsub-rat1_sample-data1_SEM\tdorsal\nsub-rat2_sample-data5_SEM\tventral\n")
    sub_rat1_twice = tmp_path / "two"
    (sub_rat1_twice / "a").mkdir(parents=True)
    (sub_rat1_twice / "b").mkdir()
    shutil.copy(small_study / "sub-rat1_sample-data1_SEM_axon_morphometrics.csv", sub_rat1_twice / "a")
    shutil.copy(small_study / "sub-rat2_sample-data5_SEM_axon_morphometrics.csv",
                sub_rat1_twice / "b" / "sub-rat1_sample-data5_SEM_axon_morphometrics.csv")
    images.write_text("image\tregion\nsub-rat1_sample-data1_SEM\tdorsal\nsub-rat1_sample-data5_SEM\tventral\n")
    with pytest.raises(ValueError, match="differs between images of one subject"):
        run_report([sub_rat1_twice], tmp_path / "b", participants=[images], group_by="region", make_figures=False)
    # ... which is fine when samples are the units
    result = run_report([sub_rat1_twice], tmp_path / "c", participants=[images], group_by="region",
                        subject_entity="sample", make_figures=False, mixed="none", progress=False)
    assert list(result["subjects"]["subject"]) == ["sample-data1", "sample-data5"]
    assert "'dorsal' has 1" in result["tests"]["reason"].iloc[0]
    # no tables at all
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no per-axon morphometrics tables"):
        run_report([tmp_path / "empty"], tmp_path / "d")


# ------------------------------------------------------------------------------------------------------------------
# Pure functions


def test_group_comparison_effect_sizes():
    from nnunet_ext.report.statistics import compare_groups, holm

    a = np.array([0.61, 0.63, 0.60, 0.64, 0.62])
    b = np.array([0.66, 0.65, 0.69, 0.64, 0.67, 0.70])
    values = pd.DataFrame({"group": ["a"] * 5 + ["b"] * 6, "v": np.r_[a, b]})
    result = compare_groups(values, "v", order=["a", "b"], test="parametric")
    pooled = math.sqrt(((4 * a.var(ddof=1)) + 5 * b.var(ddof=1)) / 9)
    assert result["effect_size"] == pytest.approx((b.mean() - a.mean()) / pooled * (1 - 3 / (4 * 11 - 9)))
    assert result["difference"] == pytest.approx(b.mean() - a.mean())
    welch = stats.ttest_ind(b, a, equal_var=False)
    assert (result["p_value"], result["ci_low"]) == pytest.approx((welch.pvalue, welch.confidence_interval().low))
    # rank-biserial correlation from the pairs: P(b > a) - P(b < a)
    pairs = np.sign(b[:, None] - a[None, :])
    assert result["alt_effect_size"] == pytest.approx(pairs.mean())
    assert compare_groups(values, "v", order=["a", "b"], test="rank")["test"] == "Mann-Whitney U"
    # three groups: ANOVA with eta squared, Kruskal-Wallis with epsilon squared
    c = np.array([0.58, 0.59, 0.57])
    three = pd.DataFrame({"group": ["a"] * 5 + ["b"] * 6 + ["c"] * 3, "v": np.r_[a, b, c]})
    result = compare_groups(three, "v", test="parametric")
    everything = np.r_[a, b, c]
    between = sum(len(x) * (x.mean() - everything.mean()) ** 2 for x in (a, b, c))
    assert result["test"] == "one-way ANOVA"
    assert result["effect_size"] == pytest.approx(between / ((everything - everything.mean()) ** 2).sum())
    assert result["p_value"] == pytest.approx(stats.f_oneway(a, b, c).pvalue)
    assert result["alt_effect_size"] == pytest.approx(stats.kruskal(a, b, c).statistic / (len(everything) - 1))
    # refusal
    one = pd.DataFrame({"group": ["a", "a", "b"], "v": [1.0, 2.0, 3.0]})
    refused = compare_groups(one, "v")
    assert refused["status"] == "refused" and "'b' has 1" in refused["reason"]
    from statsmodels.stats.multitest import multipletests

    p = np.array([0.01, 0.04, np.nan, 0.03, 0.2])
    expected = multipletests(p[np.isfinite(p)], method="holm")[1]
    np.testing.assert_allclose(holm(p)[np.isfinite(p)], expected)
    assert np.isnan(holm(p)[2])


def test_random_intercept_reml_equals_statsmodels():
    import statsmodels.api as sm

    from nnunet_ext.report.statistics import random_intercept_reml

    rng = np.random.default_rng(3)
    subject = rng.integers(0, 10, 1500)
    x = rng.gamma(4, 0.5, 1500)
    y = 0.5 + 0.03 * x + 0.02 * (subject % 2) + rng.normal(0, 0.03, 10)[subject] + rng.normal(0, 0.05, 1500)
    design = np.column_stack([np.ones_like(x), subject % 2, x])
    beta, ratio, sigma2 = random_intercept_reml(y, design, subject)
    reference = sm.MixedLM(y, design, groups=subject).fit(reml=True)
    np.testing.assert_allclose(beta, reference.fe_params, rtol=1e-5)
    assert ratio == pytest.approx(float(reference.cov_re.iloc[0, 0] if hasattr(reference.cov_re, "iloc")
                                        else reference.cov_re[0, 0]) / reference.scale, rel=1e-3)
    assert sigma2 == pytest.approx(reference.scale, rel=1e-5)


def test_bins():
    from nnunet_ext.report.binning import Bins, assign_bins, ads_bins, quantile_bins, user_bins

    assert ads_bins().labels == ("0.5-1", "1-1.25", "1.25-1.5", "1.5-1.75", "1.75-")
    bins = user_bins([0, 0.5, 1, 2, 4, math.inf])
    assert bins.labels == ("0-0.5", "0.5-1", "1-2", "2-4", "4-")
    assert list(assign_bins([0.5, 0.49, 4.0, 100.0], bins).astype(str)) == ["0.5-1", "0-0.5", "4-", "4-"]
    with pytest.raises(ValueError, match="increase strictly"):
        Bins([0, 1, 1, 2])
    diameters = np.random.default_rng(0).gamma(4, 0.5, 10_000)
    quantiles = quantile_bins(diameters, 4)
    counts = pd.Series(assign_bins(diameters, quantiles)).value_counts()
    assert len(counts) == 4 and counts.min() >= 2499 and counts.sum() == 10_000


def test_cli_parser_imports_nothing_heavy():
    code = ("import sys, nnunet_ext.report.cli as c, argparse; p = argparse.ArgumentParser(); "
            "c.register_cli(p.add_subparsers()); print(sorted(m for m in ('pandas', 'scipy', 'matplotlib', "
            "'statsmodels') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
