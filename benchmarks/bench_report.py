"""Benchmark: ``nnunet-ext report`` as a whole process, on a large synthetic study and on the real ads_sem study.

Synthetic (default): 1,000,000 axons over 100 subjects (2 images each, two groups of 50), written as per-axon CSVs
with every column of ``nnunet-ext morphometrics`` and an ``aggregate_morphometrics.csv`` (pixel size, area, AVF,
MVF), plus a participants table. The g-ratio is drawn as ``0.55 + 0.02 d + 0.01 [treated] + u_subject + e``
(``u ~ N(0, 0.02^2)``, ``e ~ N(0, 0.05^2)``), so the group effect the mixed model reports can be checked against the
truth (0.01). The timed command is ``nnunet-ext report <tables> -o <out> --participants <tsv> --group-by group
--ads-bins --overwrite`` in a fresh process (start-up and imports included); the stage times come from its
``report.json``.

``--ads-sem``: measures the ten ads_sem images with ``nnunet-ext morphometrics`` (manual masks), then times
``nnunet-ext report`` on those per-axon CSVs with a made-up two-group participants table (sub-rat1..4 "control",
sub-rat5..8 "treated": invented for the demonstration, not a property of the data); ``--screenshot PNG`` saves a
headless Chromium screenshot of the page. With ``--ads-python`` (the Python of a separate environment with
``axondeepseg`` installed; never a project dependency), AxonDeepSeg's own ``axondeepseg_aggregate`` runs on the same
tables in its layout (one folder per subject, ``.xlsx`` tables, ``_seg-axonmyelin.png`` beside them) and its
``statistics_per_axon_caliber.xlsx`` is compared value by value with the report's ``--ads-bins`` tables.

    python benchmarks/bench_report.py [--axons 1000000 --subjects 100] [--work DIR] [--keep]
    python benchmarks/bench_report.py --ads-sem [--screenshot docs/images/report_ads_sem.png] [--ads-python PY]

The synthetic tables take about a minute to write (not timed); the report itself is the measurement.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
NNUNET_EXT = str(Path(sys.executable).with_name("nnunet-ext"))
COLUMNS = ["axon_id", "x0 (px)", "y0 (px)", "gratio", "axon_area (um^2)", "axon_perimeter (um)",
           "myelin_area (um^2)", "axon_diam (um)", "myelin_thickness (um)", "axonmyelin_area (um^2)",
           "axonmyelin_perimeter (um)", "eccentricity", "orientation", "fiber_eccentricity", "fiber_orientation",
           "solidity", "image_border_touching", "bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x",
           "fiber_diam (um)", "gratio_valid", "note", "image"]
MADE_UP_GROUPS = {f"sub-rat{i}": ("control" if i <= 4 else "treated") for i in range(1, 9)}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def write_synthetic_study(folder: Path, n_axons: int, n_subjects: int, images_per_subject: int = 2,
                          seed: int = 0) -> tuple[Path, Path]:
    """Per-axon CSVs, aggregate CSV and participants table of a synthetic two-group study."""
    rng = np.random.default_rng(seed)
    tables = folder / "morphometrics"
    tables.mkdir(parents=True, exist_ok=True)
    n_images = n_subjects * images_per_subject
    per_image = np.full(n_images, n_axons // n_images)
    per_image[: n_axons - per_image.sum()] += 1
    subject_effect = rng.normal(0, 0.02, n_subjects)
    aggregate_rows, participants = [], []
    for s in range(n_subjects):
        subject = f"sub-{s + 1:03d}"
        group = "control" if s < n_subjects // 2 else "treated"
        participants.append({"participant_id": subject, "group": group, "age_weeks": int(rng.integers(8, 20))})
        for k in range(images_per_subject):
            index = s * images_per_subject + k
            n = int(per_image[index])
            image = f"{subject}_sample-{k + 1}_SEM"
            diam = rng.gamma(4.0, 0.5, n) + 0.2
            gratio = 0.55 + 0.02 * diam + (0.01 if group == "treated" else 0.0) + subject_effect[s] + \
                rng.normal(0, 0.05, n)
            gratio[rng.random(n) < 0.002] = 1.0  # a few axons without myelin, as real tables have
            thickness = diam / 2 * (1 / gratio - 1)
            fiber = diam + 2 * thickness
            axon_area = np.pi * diam ** 2 / 4
            fibre_area = np.pi * fiber ** 2 / 4
            table = pd.DataFrame({
                "axon_id": np.arange(1, n + 1), "x0 (px)": rng.uniform(0, 4000, n), "y0 (px)": rng.uniform(0, 4000, n),
                "gratio": gratio, "axon_area (um^2)": axon_area, "axon_perimeter (um)": np.pi * diam,
                "myelin_area (um^2)": fibre_area - axon_area, "axon_diam (um)": diam,
                "myelin_thickness (um)": thickness, "axonmyelin_area (um^2)": fibre_area,
                "axonmyelin_perimeter (um)": np.pi * fiber, "eccentricity": rng.uniform(0, 0.9, n),
                "orientation": rng.uniform(-1.57, 1.57, n), "fiber_eccentricity": rng.uniform(0, 0.9, n),
                "fiber_orientation": rng.uniform(-1.57, 1.57, n), "solidity": rng.uniform(0.85, 1, n),
                "image_border_touching": rng.random(n) < 0.03, "bbox_min_y": 0, "bbox_min_x": 0, "bbox_max_y": 10,
                "bbox_max_x": 10, "fiber_diam (um)": fiber, "gratio_valid": (gratio > 0) & (gratio < 1),
                "note": "", "image": image})
            table.to_csv(tables / f"{image}_axon_morphometrics.csv", index=False)
            area_mm2 = 0.1
            aggregate_rows.append({"image": image, "source": "synthetic", "pixel_size_um": 0.1,
                                   "pixel_size_source": "synthetic", "axon_shape": "circle", "roi": "",
                                   "filters": "none", "axons_filtered_out": 0, "area (mm^2)": area_mm2,
                                   "axon_count": n, "avf": axon_area.sum() / 1e6 / area_mm2,
                                   "mvf": (fibre_area - axon_area).sum() / 1e6 / area_mm2})
    pd.DataFrame(aggregate_rows).to_csv(tables / "aggregate_morphometrics.csv", index=False)
    participants_path = folder / "participants.tsv"
    pd.DataFrame(participants).to_csv(participants_path, sep="\t", index=False)
    return tables, participants_path


def timed(command: list[str], cwd: Path | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    return elapsed, done.stdout


def chromium_screenshot(html: Path, png: Path, width: int = 1400, height: int = 2600) -> None:
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if binary is None:
        print("no chromium binary: no screenshot")
        return
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--hide-scrollbars",
                        f"--window-size={width},{height}", "--virtual-time-budget=5000",
                        f"--screenshot={png.resolve()}", html.resolve().as_uri()],
                       capture_output=True, timeout=120, check=True)
    print(f"screenshot: {png}")


ADS_COLUMNS = ["x0 (px)", "y0 (px)", "gratio", "axon_area (um^2)", "axon_perimeter (um)", "myelin_area (um^2)",
               "axon_diam (um)", "myelin_thickness (um)", "axonmyelin_area (um^2)", "axonmyelin_perimeter (um)",
               "eccentricity", "orientation", "fiber_eccentricity", "fiber_orientation", "solidity",
               "image_border_touching", "bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x"]


def compare_with_axondeepseg(ads_python: str, morphometrics: Path, report: Path, work: Path) -> None:
    """Run AxonDeepSeg's axondeepseg_aggregate on the same per-axon tables and compare its tables with ours."""
    layout = work / "ads_layout"
    labels = DATA / "ads_sem" / "derivatives" / "labels"
    for path in sorted(morphometrics.glob("sub-*_axon_morphometrics.csv")):
        image = path.name[: -len("_axon_morphometrics.csv")]
        subject = image.split("_")[0]
        (layout / subject).mkdir(parents=True, exist_ok=True)
        pd.read_csv(path)[ADS_COLUMNS].to_excel(layout / subject / f"{image}_axon_morphometrics.xlsx")
        shutil.copy(labels / subject / "micr" / f"{image}_seg-axonmyelin-manual.png",
                    layout / subject / f"{image}_seg-axonmyelin.png")
    elapsed, _ = timed([ads_python, "-c", "import sys; from AxonDeepSeg.morphometrics.aggregate import main; "
                        "main(['-i', sys.argv[1]])", str(layout)], cwd=work)  # it writes axondeepseg.log in cwd
    total, equal = 0, 0
    for folder in sorted((layout / "morphometrics_agg").iterdir()):
        theirs = pd.read_excel(folder / "statistics_per_axon_caliber.xlsx", index_col=[0, 1])
        for ours in (pd.read_csv(report / "ads_bins" / folder.name / "statistics_per_axon_caliber.csv",
                                 index_col=[0, 1]),
                     pd.read_excel(report / "ads_bins" / folder.name / "statistics_per_axon_caliber.xlsx",
                                   index_col=[0, 1])):
            assert list(ours.columns) == list(theirs.columns)
            for key, row in theirs.iterrows():
                for label, value in row.items():
                    total += 1
                    mine = float(ours.loc[key, label])
                    equal += (np.isnan(mine) and np.isnan(float(value))) or mine == float(value)
    print(f"AxonDeepSeg's axondeepseg_aggregate ({elapsed:.1f} s): {equal} of {total} values equal to the report's "
          f"--ads-bins tables (CSV and XLSX, {total // 150} subjects)")


def print_report_figures(out: Path) -> None:
    info = json.loads((out / "report.json").read_text())
    print("stages (s, inside the process): " + ", ".join(f"{k} {v:.2f}" for k, v in info["timings_s"].items()))
    print(f"counts: {info['counts']}")
    for warning in info["warnings"]:
        print(f"warning: {warning}")
    tests = pd.read_csv(out / "tables" / "group_tests.csv")
    main = tests.loc[tests["bin"] == "all"]
    print("\nsubject-level group comparisons:")
    for _, row in main.iterrows():
        print(f"  {row['metric']}: {row['means']}; {row['test']} statistic {row['statistic']:.3f}, "
              f"p = {row['p_value']:.3g} (Holm {row['p_holm']:.3g}), {row['effect_size_name']} "
              f"{row['effect_size']:.3f}; also {row['alt_test']} p = {row['alt_p_value']:.3g}")
    models = pd.read_csv(out / "tables" / "mixed_models.csv")
    fits = pd.read_csv(out / "tables" / "mixed_model_fits.csv")
    print("\nmixed models (REML, random intercept per subject):")
    for _, fit in fits.iterrows():
        term = models.loc[(models["metric"] == fit["metric"]) & models["term"].str.startswith("group[")]
        for _, row in term.iterrows():
            print(f"  {fit['formula']}: {row['term']} {row['coef']:.4f} [{row['ci_low']:.4f}, {row['ci_high']:.4f}],"
                  f" p = {row['p_value']:.3g}; ICC {fit['icc']:.3f}; n = {fit['n_axons']:,} axons / "
                  f"{fit['n_subjects']} subjects")
    slopes = pd.read_csv(out / "tables" / "gratio_slopes_across_subjects.csv")
    print("\ng-ratio vs diameter, mean subject line per group (95 % CI over subjects):")
    for _, row in slopes.iterrows():
        print(f"  {row['group']}: slope {row['mean_slope']:.4f} [{row['slope_ci_low']:.4f}, "
              f"{row['slope_ci_high']:.4f}], intercept {row['mean_intercept']:.3f} "
              f"[{row['intercept_ci_low']:.3f}, {row['intercept_ci_high']:.3f}] ({row['n_subjects']} subjects)")


def synthetic(args) -> None:
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_report_"))
    try:
        started = time.perf_counter()
        tables, participants = write_synthetic_study(work, args.axons, args.subjects)
        print(f"synthetic study: {args.axons:,} axons, {args.subjects} subjects, "
              f"{len(list(tables.glob('*_axon_morphometrics.csv')))} tables, written in "
              f"{time.perf_counter() - started:.1f} s (not timed) under {work}")
        out = work / "report"
        command = [NNUNET_EXT, "report", str(tables), "-o", str(out), "--participants", str(participants),
                   "--group-by", "group", "--ads-bins", "--overwrite"]
        times = []
        for _ in range(args.repeats):
            elapsed, _ = timed(command)
            times.append(elapsed)
        print(f"\n'nnunet-ext report' whole process: {min(times):.2f} s (best of {args.repeats}: "
              f"{', '.join(f'{t:.2f}' for t in times)}; target < 30 s); report.html "
              f"{(out / 'report.html').stat().st_size / 1e6:.2f} MB")
        print_report_figures(out)
        print("\ntruth: group effect on the g-ratio 0.01 (treated - control) at equal diameter; slope 0.02 per um")
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)


def ads_sem(args) -> None:
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_report_ads_sem_"))
    try:
        morphometrics = work / "morphometrics"
        elapsed, _ = timed([NNUNET_EXT, "morphometrics", str(DATA / "ads_sem"), "-o", str(morphometrics),
                            "--no-qc", "--overwrite"])
        print(f"'nnunet-ext morphometrics' on ads_sem's manual masks: {elapsed:.2f} s (not part of the report time)")
        participants = work / "participants_made_up.tsv"
        pd.DataFrame({"participant_id": list(MADE_UP_GROUPS), "condition": list(MADE_UP_GROUPS.values())}).to_csv(
            participants, sep="\t", index=False)
        print("made-up groups (not a property of the data): " + ", ".join(f"{s} {g}" for s, g in
                                                                         MADE_UP_GROUPS.items()))
        out = work / "report"
        command = [NNUNET_EXT, "report", str(morphometrics), "-o", str(out), "--participants", str(participants),
                   "--group-by", "condition", "--ads-bins", "--title", "ads_sem: made-up two-group study",
                   "--overwrite"]
        times = []
        for _ in range(args.repeats):
            elapsed, stdout = timed(command)
            times.append(elapsed)
        print(stdout)
        print(f"'nnunet-ext report' whole process: {min(times):.2f} s (best of {args.repeats}: "
              f"{', '.join(f'{t:.2f}' for t in times)}; target < 10 s)")
        print_report_figures(out)
        if args.screenshot:
            chromium_screenshot(out / "report.html", Path(args.screenshot))
        if args.ads_python:
            compare_with_axondeepseg(args.ads_python, morphometrics, out, work)
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--axons", type=int, default=1_000_000)
    parser.add_argument("--subjects", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary working folder")
    parser.add_argument("--ads-sem", action="store_true", help="the real ads_sem study instead")
    parser.add_argument("--screenshot", default=None, help="with --ads-sem: save the page's screenshot here")
    parser.add_argument("--ads-python", default=None,
                        help="with --ads-sem: Python of an environment with axondeepseg, to compare with its "
                             "axondeepseg_aggregate")
    args = parser.parse_args()
    (ads_sem if args.ads_sem else synthetic)(args)


if __name__ == "__main__":
    main()
