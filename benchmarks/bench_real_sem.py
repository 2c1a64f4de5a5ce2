"""Real-data benchmark on ASTIH's SEM1 split: train on ads_sem without sub-rat6 on the CPU, score sub-rat6.

The field's protocol (ASTIH, MIDL 2026): pixel Dice / IoU of axon and myelin, fibre detection (instances by the
AxonDeepSeg watershed, one-to-one matching as stardist's at IoU 0.5; precision, recall, F1, and a threshold sweep),
plus what a neuroscientist needs: agreement of the morphometrics of the prediction with those of the manual masks
(matched fibres' axon diameter, myelin thickness and g-ratio: bias, 95 % limits of agreement, Pearson r, ICC(2,1);
per image: axon count, density, AVF, MVF, aggregate and mean g-ratio), before and after the post-processing for
morphometrics (``nnunet_ext.morphometrics.postprocess``).

Steps, each with the stock tools a user runs:

1. ``nnunet-ext convert bids ads_sem --test-subjects sub-rat6`` (nine training images of seven subjects);
   ``--aggregate`` also writes synthetic TEM phantoms (``nnunet-ext phantoms``), converts them and merges both
   with ``nnunet-ext aggregate``;
2. ``nnUNetv2_plan_and_preprocess --no_pp``, the real-SEM CPU plans ``nnUNetPlans_cpu_sem`` (256x256 patches, 5-stage
   U-Net 16-256 features, batch 4; nnU-Net's default augmentation; native pixels), ``nnUNetv2_preprocess``;
3. ``nnUNetv2_train D 2d all -p nnUNetPlans_cpu_sem -tr nnUNetTrainerCPUSEM -device cpu`` (or ``--trainer``, e.g.
   ``nnUNetTrainerVCVRL_CPUSEM``) under a time budget (``--budget-min``, default 30 minutes of training loop): the
   trainer shortens its poly learning-rate schedule to the epochs the budget affords and skips nnU-Net's final
   validation of the training images;
4. ``nnunet-ext segment`` on sub-rat6 (nnU-Net's sliding window with test-time mirroring);
5. the scoring above (``nnunet-ext evaluate --fibres --morphometrics`` on an ASTIH-style test folder, and in-process
   for every post-processing variant).

Writes under ``--out`` (default ``bench_real_sem_out``): ``results.json`` (every number, timings, load average),
``figures/`` (overlay of prediction vs reference on sub-rat6, Bland-Altman and scatter plots, detection sweep),
``evaluation/`` (CSVs), ``bench.log`` (every nnU-Net command and its output).

    python benchmarks/bench_real_sem.py                       # default: 30 min of training, ~40 min in all
    python benchmarks/bench_real_sem.py --budget-min 20 --out /tmp/sem
    python benchmarks/bench_real_sem.py --trainer nnUNetTrainerVCVRL_CPUSEM --out bench_real_sem_out_vcvrl
    python benchmarks/bench_real_sem.py --aggregate --out bench_real_sem_out_agg
    python benchmarks/bench_real_sem.py --reuse               # score an already trained model again
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ADS_SEM = REPO.parent / "shared" / "data" / "ads_sem"
TEST_SUBJECT = "sub-rat6"  # ASTIH's SEM1 test subject
DATASET_ID, DATASET_NAME = 950, "ADSSEM1"
PHANTOM_ID, PHANTOM_NAME = 951, "PhantomTEM"
AGGREGATE_ID, AGGREGATE_NAME = 952, "ADSSEM1plusTEM"
TARGETS = {"f1_iou0.5": 0.85, "axon_count_relative_error": 0.05, "gratio_aggregate_abs_error": 0.01,
           "dice_axon": 0.92, "dice_myelin": 0.87}


class LoadSampler:
    """Samples the 1-minute load average every ``interval`` seconds (the machine is shared)."""

    def __init__(self, interval: float = 15.0):
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._start = time.time()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval):
        while not self._stop.is_set():
            self.samples.append((round(time.time() - self._start, 1), os.getloadavg()[0]))
            self._stop.wait(interval)

    def summary(self, since: float = 0.0) -> dict:
        values = [v for t, v in self.samples if t >= since] or [os.getloadavg()[0]]
        return {"mean": round(float(np.mean(values)), 2), "max": round(float(np.max(values)), 2), "n": len(values)}

    def stop(self):
        self._stop.set()


def log_print(log_path: Path, text: str) -> None:
    print(text, flush=True)
    with open(log_path, "a") as log:
        log.write(f"# {text}\n")


def run_cli(args: list, env: dict, log_path: Path) -> None:
    """A console script of this environment (nnunet-ext, nnUNetv2_*), output to the log, failure raises."""
    from nnunet_ext.nnunet.commands import run_nnunet_command

    run_nnunet_command(args, env, log_path)


def prepare_dataset(args, env: dict, log_path: Path, timings: dict) -> int:
    """Convert (and aggregate), plan and preprocess; returns the dataset ID to train."""
    raw, pre = env["nnUNet_raw"], env["nnUNet_preprocessed"]
    log_print(log_path, f"[1/5] converting ads_sem ({TEST_SUBJECT} held out)"
                        f"{' + TEM phantoms, aggregated' if args.aggregate else ''}")
    start = time.perf_counter()
    run_cli(["nnunet-ext", "convert", "bids", str(ADS_SEM), "-d", DATASET_ID, "-n", DATASET_NAME,
             "--test-subjects", TEST_SUBJECT, "--raw", raw, "--preprocessed", pre, "--overwrite"], env, log_path)
    dataset_id = DATASET_ID
    if args.aggregate:
        phantoms = Path(args.out) / "phantoms_tem"
        run_cli(["nnunet-ext", "phantoms", str(phantoms), "--contrasts", "TEM", "--subjects", "5",
                 "--samples-per-subject", "2", "--size", "512", "512", "--pixel-size", "0.02",
                 "--axon-diameter", "0.3", "2", "--seed", "13", "--overwrite"], env, log_path)
        run_cli(["nnunet-ext", "convert", "bids", str(phantoms), "-d", PHANTOM_ID, "-n", PHANTOM_NAME,
                 "--raw", raw, "--preprocessed", pre, "--overwrite"], env, log_path)
        run_cli(["nnunet-ext", "aggregate", str(DATASET_ID), str(PHANTOM_ID), "-d", AGGREGATE_ID, "-n",
                 AGGREGATE_NAME, "--raw", raw, "--preprocessed", pre, "--overwrite"], env, log_path)
        dataset_id = AGGREGATE_ID
    timings["convert_s"] = round(time.perf_counter() - start, 1)
    log_print(log_path, f"[2/5] planning and preprocessing ({args.plans})")
    start = time.perf_counter()
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", "2d", "--no_pp", "-np", "1"], env, log_path)
    from nnunet_ext.nnunet.commands import applied_environment
    from nnunet_ext.nnunet.plans_cpu import write_sem_plans

    with applied_environment(env):
        write_sem_plans(dataset_id, overwrite=True)
    run_cli(["nnUNetv2_preprocess", "-d", dataset_id, "-plans_name", args.plans, "-c", "2d", "-np", "1"], env,
            log_path)
    timings["plan_preprocess_s"] = round(time.perf_counter() - start, 1)
    return dataset_id


def model_folder(env: dict, dataset_id: int, trainer: str, plans: str) -> Path:
    name = DATASET_NAME if dataset_id == DATASET_ID else AGGREGATE_NAME
    return Path(env["nnUNet_results"]) / f"Dataset{dataset_id:03d}_{name}" / f"{trainer}__{plans}__2d"


def train(args, env: dict, dataset_id: int, threads: int, log_path: Path, timings: dict) -> dict:
    from nnunet_ext.nnunet.commands import run_nnunet_command

    budget_s = args.budget_min * 60
    train_env = {**env, "nnUNet_n_proc_DA": "0", "OMP_NUM_THREADS": str(threads),
                 "NNUNET_EXT_TRAIN_BUDGET_S": str(budget_s)}
    log_print(log_path, f"[3/5] training {args.trainer} on dataset {dataset_id} (fold all), budget {args.budget_min} min "
                        f"of training loop, {threads} torch thread(s); follow it in {log_path}")
    start = time.perf_counter()
    run_nnunet_command(["nnUNetv2_train", dataset_id, "2d", "all", "-p", args.plans, "-tr", args.trainer,
                        "-device", "cpu"], train_env, log_path, progress_total=None)
    timings["train_s"] = round(time.perf_counter() - start, 1)
    return training_summary(model_folder(env, dataset_id, args.trainer, args.plans))


def training_summary(folder: Path) -> dict:
    """Epochs trained, iterations, final pseudo Dice, from nnU-Net's training log."""
    import re

    logs = sorted((folder / "fold_all").glob("training_log_*.txt"))
    if not logs:
        return {}
    text = logs[-1].read_text()
    epochs = [int(e) for e in re.findall(r"Epoch (\d+)\s*$", text, flags=re.M)]
    dice = re.findall(r"Pseudo dice \[(.*)\]", text)
    times = [float(t) for t in re.findall(r"Epoch time: ([0-9.]+) s", text)]
    budget = re.findall(r"training ends after epoch (\d+)", text)
    stamps = re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+): (?:Epoch \d+|Epoch time)", text, flags=re.M)
    loop_s = None
    if len(stamps) >= 2:
        from datetime import datetime

        first, last = (datetime.strptime(t, "%Y-%m-%d %H:%M:%S.%f") for t in (stamps[0], stamps[-1]))
        loop_s = round((last - first).total_seconds(), 1)
    return {"training_loop_s": loop_s, "epochs_trained": (max(epochs) + 1) if epochs else 0, "epoch_time_s_mean": round(float(np.mean(times)), 1)
            if times else None, "last_pseudo_dice": dice[-1] if dice else None,
            "budget_epochs": int(budget[-1]) if budget else None, "log": str(logs[-1])}


def predict(args, env: dict, model: Path, threads: int, log_path: Path, timings: dict) -> tuple[Path, Path]:
    """Copy sub-rat6's image (and sidecar) to a folder and segment it with ``nnunet-ext segment``."""
    images = Path(args.out) / "test_images"
    images.mkdir(parents=True, exist_ok=True)
    source = next((ADS_SEM / TEST_SUBJECT / "micr").glob(f"{TEST_SUBJECT}_*_SEM.png"))
    shutil.copy2(source, images / source.name)
    shutil.copy2(source.with_suffix(".json"), images / source.with_suffix(".json").name)
    predictions = Path(args.out) / "predictions"
    log_print(log_path, f"[4/5] segmenting {source.name} with nnunet-ext segment")
    start = time.perf_counter()
    run_cli(["nnunet-ext", "segment", "-i", str(images), "-o", str(predictions), "-m", str(model), "-f", "all",
             "--threads", str(threads), "--overwrite"], env, log_path)
    timings["predict_s"] = round(time.perf_counter() - start, 1)
    return source, predictions


def astih_folder(args, source: Path, predictions: Path) -> Path:
    """ASTIH's test-folder layout: <stem>.png, <stem>_seg-axonmyelin-manual.png, <stem>_seg-axon/-myelin.png."""
    folder = Path(args.out) / "astih_test"
    folder.mkdir(parents=True, exist_ok=True)
    stem = source.name[:-4]
    labels = ADS_SEM / "derivatives" / "labels" / TEST_SUBJECT / "micr"
    shutil.copy2(source, folder / source.name)
    shutil.copy2(source.with_suffix(".json"), folder / f"{stem}.json")
    shutil.copy2(labels / f"{stem}_seg-axonmyelin-manual.png", folder / f"{stem}_seg-axonmyelin-manual.png")
    for suffix in ("_seg-axon", "_seg-myelin"):
        shutil.copy2(predictions / f"{stem}{suffix}.png", folder / f"{stem}{suffix}.png")
    return folder


def pixel_scores(reference: np.ndarray, prediction: np.ndarray) -> dict:
    """Dice and IoU of one binary class (ASTIH: MONAI's DiceMetric / MeanIoU on binary masks)."""
    inter = np.count_nonzero(reference & prediction)
    total = np.count_nonzero(reference) + np.count_nonzero(prediction)
    union = total - inter
    return {"dice": inter * 2 / total if total else float("nan"), "iou": inter / union if union else float("nan")}


def score_variant(name: str, ref_axon, ref_myelin, axon, myelin, pixel_size: float, stem: str, out: Path,
                  figures: bool, note: str = "") -> dict:
    from nnunet_ext.evaluation import fibre_detection as fd
    from nnunet_ext.evaluation import morphometric_agreement as ma
    from nnunet_ext.io.atomic import write_csv_atomically

    result = ma.compare_image(ref_axon, ref_myelin, axon, myelin, pixel_size, image=stem, subject=TEST_SUBJECT)
    sweep = fd.match_sweep(result.reference_fibres, result.predicted_fibres, fd.DEFAULT_THRESHOLDS)
    statistics = ma.agreement_statistics(result.fibres)
    folder = out / "evaluation" / name
    folder.mkdir(parents=True, exist_ok=True)
    write_csv_atomically(result.fibres, folder / "fibres.csv", overwrite=True)
    write_csv_atomically(statistics, folder / "agreement.csv", overwrite=True)
    write_csv_atomically(ma.image_table([result.image_row]), folder / "images.csv", overwrite=True)
    write_csv_atomically(fd.detection_table(sweep, stem), folder / "detection_sweep.csv", overwrite=True)
    if figures:
        title = f"sub-rat6 matched fibres (IoU >= 0.5), post-processing: {name}; {note}"
        ma.plot_bland_altman(result.fibres, out / "figures" / f"bland_altman_{name}.png", statistics=statistics,
                             title=title)
        ma.plot_scatter(result.fibres, out / "figures" / f"scatter_{name}.png", statistics=statistics, title=title)
        fd.plot_sweep(fd.aggregate_detection(fd.detection_table(sweep, stem)),
                      out / "figures" / f"detection_sweep_{name}.png", overwrite=True,
                      title=f"sub-rat6 fibre detection ({name})\n{note}")
    detection = result.detection.as_dict()
    row = result.image_row
    by_metric = {r["metric"]: {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                               for k, v in r.items() if k != "metric"} for r in statistics.to_dict("records")}
    return {
        "pixel": {"axon": pixel_scores(ref_axon, axon), "myelin": pixel_scores(ref_myelin, myelin)},
        "detection_iou0.5": detection,
        "detection_sweep": [{k: s.as_dict()[k] for k in ("thresh", "tp", "fp", "fn", "precision", "recall", "f1",
                                                          "panoptic_quality")} for s in sweep],
        "fibre_agreement": by_metric,
        "image": {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()},
    }


def overlay_figure(image: np.ndarray, reference_fibres: np.ndarray, predicted_fibres: np.ndarray, matching,
                   path: Path, title: str) -> None:
    """sub-rat6 with reference (green) and predicted (magenta) fibre outlines, and the detection outcome."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    from nnunet_ext.io.atomic import save_figure

    grey = image.astype(np.float64)
    grey = (grey - grey.min()) / max(np.ptp(grey), 1e-9)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    outline = rgb.copy()
    outline[find_boundaries(reference_fibres, mode="inner")] = (0.1, 0.9, 0.1)
    outline[find_boundaries(predicted_fibres, mode="inner")] = (0.95, 0.1, 0.95)
    status = rgb * 0.6
    matched_true = np.isin(reference_fibres, matching.matched_pairs[:, 0]) & (reference_fibres > 0)
    matched_pred = np.isin(predicted_fibres, matching.matched_pairs[:, 1]) & (predicted_fibres > 0)
    fn = (reference_fibres > 0) & ~matched_true
    fp = (predicted_fibres > 0) & ~matched_pred
    status[matched_pred] = 0.5 * status[matched_pred] + 0.5 * np.array((0.2, 0.4, 1.0))
    status[fn] = 0.4 * status[fn] + 0.6 * np.array((1.0, 0.6, 0.0))
    status[fp] = 0.4 * status[fp] + 0.6 * np.array((1.0, 0.0, 0.0))
    figure, axes = plt.subplots(1, 2, figsize=(16, 5.6))
    axes[0].imshow(outline)
    axes[0].set_title("fibre outlines: reference (green), prediction (magenta)")
    axes[1].imshow(status)
    axes[1].set_title(f"IoU >= 0.5: matched (blue) {matching.tp}, missed reference (orange) {matching.fn}, "
                      f"extra prediction (red) {matching.fp}", fontsize=9)
    for axis in axes:
        axis.axis("off")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    save_figure(figure, path, overwrite=True, dpi=110)


def evaluate(args, source: Path, predictions: Path, env: dict, log_path: Path, timings: dict) -> dict:
    from nnunet_ext.evaluation import fibre_detection as fd
    from nnunet_ext.evaluation.fibre_folders import read_mask_pair
    from nnunet_ext.io.images import read_image_2d
    from nnunet_ext.io.pixel_size import find_pixel_size
    from nnunet_ext.morphometrics import postprocess as pp

    start = time.perf_counter()
    out = Path(args.out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    stem = source.name[:-4]
    folder = astih_folder(args, source, predictions)
    log_print(log_path, "[5/5] scoring: nnunet-ext evaluate --fibres --morphometrics, then every post-processing "
                        "variant")
    # the CLI on the ASTIH layout: per-image and per-dataset detection CSVs, the sweep plot, agreement CSVs
    run_cli(["nnunet-ext", "evaluate", str(folder), str(folder), "--fibres", "--morphometrics", "--iou-thresholds",
             "0.3", "0.95", "0.05", "--iou-range",
             "-o", str(out / "evaluation" / "cli" / "evaluation.csv"), "--overwrite"], env, log_path)
    pixel_size, _ = find_pixel_size(source)
    # as ASTIH reads them: axon > 200, myelin in (100, 200] of the axon+myelin mask; predicted masks non-zero
    ref_axon, ref_myelin = read_mask_pair([folder / f"{stem}_seg-axonmyelin-manual.png"], "axonmyelin")
    axon, myelin = read_mask_pair([folder / f"{stem}_seg-axon.png", folder / f"{stem}_seg-myelin.png"], "pair")
    image = read_image_2d(source)
    variants = {"raw": {"fill_holes": False, "min_axon_area_um2": 0.0, "min_myelin_coverage": 0.0,
                        "drop_orphan_myelin": False}}
    default = dict(pp.DEFAULT_POSTPROCESS)
    variants["default"] = default
    variants["fill_holes_only"] = {**variants["raw"], "fill_holes": True}
    variants["min_area_only"] = {**variants["raw"], "min_axon_area_um2": default["min_axon_area_um2"]}
    variants["myelin_ring_only"] = {**variants["raw"], "min_myelin_coverage": default["min_myelin_coverage"]}
    variants["default_coverage_0.25"] = {**default, "min_myelin_coverage": 0.25}
    variants["default_coverage_0.75"] = {**default, "min_myelin_coverage": 0.75}
    variants["default_min_area_0.2"] = {**default, "min_axon_area_um2": 0.2}
    variants["default_plus_orphan_myelin"] = {**default, "drop_orphan_myelin": True}
    results = {"pixel_size_um": pixel_size, "image": stem, "postprocess_variants": variants, "variants": {}}
    reference_only = score_variant("reference_vs_itself", ref_axon, ref_myelin, ref_axon, ref_myelin, pixel_size,
                                   stem, out, figures=False)
    results["reference_self_check_f1"] = reference_only["detection_iou0.5"]["f1"]
    for name, options in variants.items():
        p_axon, p_myelin, report = pp.postprocess_masks(axon, myelin, pixel_size, **options)
        scored = score_variant(name, ref_axon, ref_myelin, p_axon, p_myelin, pixel_size, stem, out,
                               figures=name in ("raw", "default"), note=getattr(args, "figure_note", ""))
        scored["postprocess_report"] = report
        results["variants"][name] = scored
        d, im = scored["detection_iou0.5"], scored["image"]
        log_print(log_path, f"{name:>28}: Dice axon {scored['pixel']['axon']['dice']:.4f} myelin "
                            f"{scored['pixel']['myelin']['dice']:.4f} | IoU0.5 P {d['precision']:.3f} R "
                            f"{d['recall']:.3f} F1 {d['f1']:.3f} | axons {im['axon_count_pred']} vs "
                            f"{im['axon_count_ref']} | g agg {im['gratio_aggregate_pred']:.4f} vs "
                            f"{im['gratio_aggregate_ref']:.4f}")
        if name in ("raw", "default"):
            ref_f = fd.fibre_instances(ref_axon, ref_myelin)
            pred_f = fd.fibre_instances(p_axon, p_myelin)
            overlay_figure(image, ref_f, pred_f, fd.match_instances(ref_f, pred_f, 0.5),
                           out / "figures" / f"overlay_sub-rat6_{name}.png",
                           f"sub-rat6 ({stem}), post-processing: {name}; {getattr(args, 'figure_note', '')}")
    timings["evaluate_s"] = round(time.perf_counter() - start, 1)
    return results


def targets_met(variant: dict) -> dict:
    image, detection, pixel = variant["image"], variant["detection_iou0.5"], variant["pixel"]
    values = {"f1_iou0.5": detection["f1"], "axon_count_relative_error": abs(image["axon_count_rel_error"]),
              "gratio_aggregate_abs_error": abs(image["gratio_aggregate_diff"]),
              "dice_axon": pixel["axon"]["dice"], "dice_myelin": pixel["myelin"]["dice"]}
    met = {}
    for key, target in TARGETS.items():
        lower_is_better = key.endswith("error")
        met[key] = {"value": values[key], "target": target,
                    "met": bool(values[key] <= target if lower_is_better else values[key] >= target)}
    return met


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "bench_real_sem_out"), help="output folder")
    parser.add_argument("--budget-min", type=float, default=30.0,
                        help="training budget in minutes of nnU-Net's training loop (default 30)")
    parser.add_argument("--trainer", default="nnUNetTrainerCPUSEM",
                        help="trainer (default nnUNetTrainerCPUSEM; nnUNetTrainerVCVRL_CPUSEM for VCV-RL)")
    parser.add_argument("--plans", default="nnUNetPlans_cpu_sem", help="plans name (written by this script)")
    parser.add_argument("--aggregate", action="store_true",
                        help="train on ads_sem (without sub-rat6) plus synthetic TEM phantoms via nnunet-ext aggregate")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for training and prediction (default: 1 when the machine is loaded, "
                             "else 2)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse a trained model in --out (skip conversion and training) and score again")
    args = parser.parse_args(argv)
    if not ADS_SEM.is_dir():
        print(f"ads_sem not found at {ADS_SEM}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    args.out = str(out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "bench.log"
    from nnunet_ext.nnunet.commands import cpu_environment

    env = cpu_environment(out / "nnunet")
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    threads = args.threads or (1 if load > 1.0 else 2)
    sampler = LoadSampler()
    timings: dict = {}
    wall = time.perf_counter()
    log_print(log_path, f"bench_real_sem: {time.strftime('%Y-%m-%d %H:%M:%S')}, load average {load:.2f} on "
                        f"{os.cpu_count()} cores, out {out}")
    dataset_id = AGGREGATE_ID if args.aggregate else DATASET_ID
    model = model_folder(env, dataset_id, args.trainer, args.plans)
    training = {}
    train_load = {}
    previous = {}
    if args.reuse and (model / "fold_all" / "checkpoint_final.pth").is_file():
        log_print(log_path, f"reusing {model}")
        training = training_summary(model)
        if (out / "results.json").is_file():  # the run that trained the model: its timings and load
            earlier = json.loads((out / "results.json").read_text())
            previous = {k: earlier.get(k) for k in ("date", "timings", "load_average_training", "load_average_run",
                                                    "threads")}
            train_load = earlier.get("load_average_training") or {}
    else:
        dataset_id = prepare_dataset(args, env, log_path, timings)
        started = time.time() - sampler._start
        training = train(args, env, dataset_id, threads, log_path, timings)
        train_load = sampler.summary(since=started)
    args.figure_note = (f"{args.trainer}{' + TEM phantoms' if args.aggregate else ''}, {args.budget_min:g} min CPU "
                        f"budget, {threads} thread(s), load average {train_load.get('mean', load):.1f} on "
                        f"{os.cpu_count()} cores during training")
    source, predictions = predict(args, env, model, threads, log_path, timings)
    evaluation = evaluate(args, source, predictions, env, log_path, timings)
    timings["total_s"] = round(time.perf_counter() - wall, 1)
    sampler.stop()
    results = {
        "benchmark": "bench_real_sem", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "test_subject": TEST_SUBJECT,
        "trainer": args.trainer, "plans": args.plans, "aggregate": args.aggregate, "budget_min": args.budget_min,
        "threads": threads, "cores": os.cpu_count(), "load_average_training": train_load,
        "load_average_run": sampler.summary(), "training": training, "timings": timings, "targets": TARGETS,
        "targets_met_default_postprocess": targets_met(evaluation["variants"]["default"]),
        "targets_met_raw": targets_met(evaluation["variants"]["raw"]), **evaluation,
    }
    if previous:
        results["training_run"] = previous
    from nnunet_ext.io.atomic import write_json_atomically

    write_json_atomically(json.loads(json.dumps(results, default=_json_default)), out / "results.json")
    raw, default = evaluation["variants"]["raw"], evaluation["variants"]["default"]
    for name, variant in (("raw", raw), ("default post-processing", default)):
        ga = variant["fibre_agreement"].get("gratio", {})
        print(f"{name}: Dice axon {variant['pixel']['axon']['dice']:.4f} myelin "
              f"{variant['pixel']['myelin']['dice']:.4f}; detection IoU 0.5 P "
              f"{variant['detection_iou0.5']['precision']:.3f} R {variant['detection_iou0.5']['recall']:.3f} F1 "
              f"{variant['detection_iou0.5']['f1']:.3f}; g-ratio bias {ga.get('bias')} LoA "
              f"[{ga.get('loa_low')}, {ga.get('loa_high')}]; aggregate g-ratio error "
              f"{variant['image']['gratio_aggregate_diff']:+.4f}; axon count error "
              f"{variant['image']['axon_count_rel_error']:+.1%}")
    print(f"run time {timings['total_s'] / 60:.1f} min (training {timings.get('train_s', 0) / 60:.1f} min, "
          f"load {results['load_average_run']}); wrote {out / 'results.json'} and {out / 'figures'}")
    return 0


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


if __name__ == "__main__":
    sys.exit(main())
