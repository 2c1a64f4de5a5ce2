"""``nnunet-ext demo``: the whole pipeline on a laptop-class CPU, on synthetic microscopy with known truth.

synthetic TEM-like and SEM-like phantoms (BIDS) -> nnU-Net raw dataset -> nnU-Net fingerprint, plans and the CPU
plans variant -> ``nnUNetv2_train`` with :class:`~nnunet_ext.trainers.cpu.nnUNetTrainerCPUDemo` -> ``nnUNetv2_predict``
on the held-out subject -> Dice per class -> per-axon and aggregate morphometrics, compared with the phantoms' truth.

Every nnU-Net step runs through nnU-Net's own console commands, as a user's scripts would; ``demo.log`` in the output
folder holds their output and the exact command lines.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from nnunet_ext.io.atomic import save_figure
from nnunet_ext.nnunet.plans_cpu import CPU_BATCH_SIZE, CPU_FEATURES_PER_STAGE

DEMO_MARKER = ".nnunet_ext_demo"
DEMO_DATASET_ID = 900
DEMO_DATASET_NAME = "DemoPhantoms"
DEMO_TRAINER = "nnUNetTrainerCPUDemo"
DEMO_CONFIGURATION = "2d"
DEMO_FOLD = 0


@dataclass
class DemoSettings:
    """What the demo generates and how it trains (the defaults are the documented demo)."""

    contrasts: tuple[str, ...] = ("TEM", "SEM")
    n_subjects: int = 5               # the last one is held out for testing
    samples_per_subject: int = 2      # per contrast
    image_size: int = 256
    pixel_size_um: float = 0.08
    axon_diameter_um: tuple[float, float] = (0.8, 2.4)
    patch_size: int = 96
    batch_size: int = CPU_BATCH_SIZE
    features_per_stage: tuple[int, ...] = CPU_FEATURES_PER_STAGE
    trainer: str = DEMO_TRAINER
    seed: int = 0


def _prepare_output(out: Path, overwrite: bool) -> None:
    """Create ``out``; replace it only if it is a previous demo's output or ``overwrite`` is given."""
    if out.exists() and any(out.iterdir()):
        if not (out / DEMO_MARKER).is_file() and not overwrite:
            raise FileExistsError(f"{out} exists and is not a previous demo output; choose another --out or pass "
                                  f"--overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("Output of 'nnunet-ext demo'; the next demo run in this folder replaces it.\n")


class _Steps:
    """Numbered step headers with their wall times."""

    def __init__(self, total: int):
        self.total, self.index, self.times = total, 0, {}
        self._name, self._start = None, None

    def start(self, name: str) -> None:
        self.finish()
        self.index += 1
        self._name, self._start = name, time.perf_counter()
        print(f"\n[{self.index}/{self.total}] {name}", flush=True)

    def finish(self) -> None:
        if self._name is not None:
            self.times[self._name] = round(time.perf_counter() - self._start, 1)
            print(f"      done in {self.times[self._name]:.1f} s", flush=True)
            self._name = None


def run_demo(out: str | os.PathLike = "nnunet_ext_demo", overwrite: bool = False,
             settings: DemoSettings | None = None) -> dict:
    """Run the demo pipeline into ``out`` and return its summary (also written to ``out/summary.json``)."""
    # Imported here, not at the top: this module also registers the 'demo' subcommand, and these imports (torch,
    # nnU-Net, numba through morphometrics) would take seconds off every 'nnunet-ext --help'.
    import pandas as pd

    from nnunet_ext.dataset_conversion.bids_microscopy import convert_bids_microscopy
    from nnunet_ext.phantoms.bids_writer import write_bids_phantom_dataset
    from nnunet_ext.nnunet.commands import cpu_environment, plan_and_preprocess_cpu, predict, train
    import nnunet_ext.trainers as trainers

    settings = settings or DemoSettings()
    out = Path(out).resolve()
    _prepare_output(out, overwrite)
    log = out / "demo.log"
    env = cpu_environment(out)
    steps = _Steps(7)
    wall_start = time.perf_counter()

    steps.start(f"Synthetic {' and '.join(settings.contrasts)} phantoms as a BIDS microscopy dataset")
    held_out = f"sub-{settings.n_subjects:02d}"
    bids = write_bids_phantom_dataset(
        out / "bids", contrasts=settings.contrasts, n_subjects=settings.n_subjects,
        samples_per_subject=settings.samples_per_subject, shape=(settings.image_size,) * 2,
        pixel_size_um=settings.pixel_size_um, axon_diameter_um=settings.axon_diameter_um, seed=settings.seed)

    steps.start(f"Converting to nnU-Net raw (labels 0 background, 1 myelin, 2 axon; {held_out} held out)")
    raw = convert_bids_microscopy(bids, env["nnUNet_raw"], DEMO_DATASET_ID, DEMO_DATASET_NAME,
                                  test_subjects=[held_out])
    manifest = pd.read_csv(raw / "manifest.csv")

    steps.start("nnU-Net fingerprint and plans, CPU plans variant, preprocessing")
    plans = plan_and_preprocess_cpu(DEMO_DATASET_ID, env, DEMO_CONFIGURATION, patch_size=(settings.patch_size,) * 2,
                                    batch_size=settings.batch_size, features_per_stage=settings.features_per_stage,
                                    log_file=log)

    trainer = settings.trainer
    steps.start(f"Training: nnUNetv2_train {DEMO_DATASET_ID} {DEMO_CONFIGURATION} {DEMO_FOLD} -p {plans} "
                f"-tr {trainer} -device cpu")
    train(DEMO_DATASET_ID, DEMO_CONFIGURATION, DEMO_FOLD, trainer, env, plans=plans, log_file=log,
          epochs=_trainer_epochs(getattr(trainers, trainer)))
    model_folder = out / "nnUNet_results" / raw.name / f"{trainer}__{plans}__{DEMO_CONFIGURATION}"

    steps.start("Predicting the held-out images: nnUNetv2_predict")
    predictions = out / "predictions"
    predict(raw / "imagesTs", predictions, DEMO_DATASET_ID, DEMO_CONFIGURATION, [DEMO_FOLD], trainer, env,
            plans=plans, log_file=log)

    steps.start("Dice per class against the held-out labels")
    dice_table, dice_summary = _evaluate(predictions, raw / "labelsTs", out / "evaluation")

    steps.start("Morphometrics of the predictions (per axon and aggregate), compared with the phantoms' truth")
    morph = _morphometrics(predictions, raw / "labelsTs", manifest, out / "morphometrics")
    truth = pd.read_csv(bids / "derivatives" / "truth" / "phantom_truth.csv")
    test_stems = set(manifest.loc[manifest.split == "test", "source_files"].map(
        lambda s: Path(s.split(";")[0]).name.rsplit(".", 1)[0]))
    truth_test = truth[truth["image"].isin(test_stems)]
    figure = _overview_figure(raw, predictions, manifest, out / "figures" / "demo_overview.png")
    steps.finish()

    summary = {
        "dice": {name: round(float(value), 4) for name, value in dice_summary.items()},
        "test_images": int((manifest.split == "test").sum()),
        "train_images": int((manifest.split == "train").sum()),
        "axons_measured": int(morph["axons"]),
        "mean_gratio_predicted": round(float(morph["mean_gratio"]), 4),
        "mean_gratio_ground_truth_masks": round(float(morph["mean_gratio_reference"]), 4),
        "mean_gratio_phantom_truth": round(float(truth_test["gratio"].mean()), 4),
        "aggregate_gratio_predicted": round(float(morph["aggregate_gratio"]), 4),
        "step_seconds": steps.times,
        "wall_seconds": round(time.perf_counter() - wall_start, 1),
        "settings": asdict(settings),
        "outputs": {
            "bids_dataset": str(bids),
            "nnunet_raw_dataset": str(raw),
            "model": str(model_folder),
            "training_curve": str(model_folder / f"fold_{DEMO_FOLD}" / "progress.png"),
            "predictions": str(predictions),
            "dice_per_case": str(dice_table),
            "per_axon_morphometrics": str(morph["per_axon_csv"]),
            "aggregate_morphometrics": str(morph["aggregate_csv"]),
            "overview_figure": str(figure),
            "nnunet_log": str(log),
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_summary(summary, out)
    return summary


def _trainer_epochs(trainer_class) -> int | None:
    """The number of epochs a trainer class runs (its ``schedule_epochs``), read without building it."""
    return getattr(trainer_class, "schedule_epochs", None)


def _evaluate(predictions: Path, labels: Path, out: Path):
    from nnunet_ext.evaluation.folder_evaluation import evaluate_folder, per_class_means

    out.mkdir(parents=True, exist_ok=True)
    table = evaluate_folder(predictions, labels, labels=[1, 2], progress=False)
    table.to_csv(out / "metrics_per_case.csv", index=False)
    means = per_class_means(table)
    means.to_csv(out / "metrics_mean.csv", index=False)
    dice = {str(row["class_name"]): float(row["Dice"]) for _, row in means.iterrows() if row["label"] != "mean"}
    return out / "metrics_per_case.csv", dice


def _morphometrics(predictions: Path, labels: Path, manifest, out: Path) -> dict:
    """Per-axon and aggregate morphometrics of every prediction (and of its ground truth, for comparison)."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from nnunet_ext.morphometrics import aggregate_morphometrics, axon_morphometrics, masks_from_label_image

    out.mkdir(parents=True, exist_ok=True)
    pixel_sizes = dict(zip(manifest.case_id, manifest.pixel_size_um))
    per_axon_tables, aggregates = [], []
    reference_gratios = []
    for prediction in sorted(predictions.glob("*.png")):
        case = prediction.name[: -len(".png")]
        pixel_size = float(pixel_sizes[case])
        axon, myelin = masks_from_label_image(np.array(Image.open(prediction)))
        per_axon = axon_morphometrics(axon, myelin, pixel_size, image_name=case)
        per_axon.to_csv(out / f"{case}_axon_morphometrics.csv", index=False)
        per_axon_tables.append(per_axon)
        aggregates.append({**aggregate_morphometrics(axon, myelin, pixel_size, per_axon=per_axon), "image": case,
                           "source": "prediction"})
        ref_axon, ref_myelin = masks_from_label_image(np.array(Image.open(labels / prediction.name)))
        reference = axon_morphometrics(ref_axon, ref_myelin, pixel_size, image_name=case)
        reference_gratios.append(reference.loc[reference["gratio_valid"], "gratio"])
        aggregates.append({**aggregate_morphometrics(ref_axon, ref_myelin, pixel_size, per_axon=reference),
                           "image": case, "source": "ground truth"})
    per_axon_all = pd.concat(per_axon_tables, ignore_index=True)
    per_axon_all.to_csv(out / "axon_morphometrics.csv", index=False)
    aggregate = pd.DataFrame(aggregates)
    aggregate.to_csv(out / "aggregate_morphometrics.csv", index=False)
    valid = per_axon_all.loc[per_axon_all["gratio_valid"], "gratio"]
    predicted = aggregate[aggregate.source == "prediction"]
    return {"axons": len(per_axon_all), "mean_gratio": valid.mean(),
            "mean_gratio_reference": pd.concat(reference_gratios).mean(),
            "aggregate_gratio": predicted["gratio_aggregate"].mean(),
            "per_axon_csv": out / "axon_morphometrics.csv", "aggregate_csv": out / "aggregate_morphometrics.csv"}


def _overview_figure(raw: Path, predictions: Path, manifest, path: Path) -> Path:
    """Image, ground truth and prediction of every held-out image, one row each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import ListedColormap
    from PIL import Image

    cases = sorted(manifest.loc[manifest.split == "test", "case_id"])
    modality = dict(zip(manifest.case_id, manifest.modality))
    classes = ListedColormap(["black", "gold", "royalblue"])
    fig, axes = plt.subplots(len(cases), 3, figsize=(9, 3 * len(cases)), squeeze=False)
    for row, case in zip(axes, cases):
        image = np.array(Image.open(raw / "imagesTs" / f"{case}_0000.png"))
        truth = np.array(Image.open(raw / "labelsTs" / f"{case}.png"))
        prediction = np.array(Image.open(predictions / f"{case}.png"))
        row[0].imshow(image, cmap="gray")
        row[0].set_title(f"{case} ({modality[case]})", fontsize=9)
        row[1].imshow(truth, cmap=classes, vmin=0, vmax=2, interpolation="nearest")
        row[1].set_title("ground truth (myelin, axon)", fontsize=9)
        row[2].imshow(prediction, cmap=classes, vmin=0, vmax=2, interpolation="nearest")
        row[2].set_title("nnU-Net prediction", fontsize=9)
        for ax in row:
            ax.set_axis_off()
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)


def _print_summary(summary: dict, out: Path) -> None:
    dice = ", ".join(f"{name} {value:.3f}" for name, value in summary["dice"].items())
    lines = [
        "",
        "=" * 78,
        "nnunet-ext demo finished",
        f"  wall time            {summary['wall_seconds'] / 60:.1f} min "
        f"(training {summary['step_seconds'].get(next(k for k in summary['step_seconds'] if k.startswith('Training')), 0):.0f} s)",
        f"  Dice on held-out     {dice}  ({summary['test_images']} images; trained on {summary['train_images']})",
        f"  axons measured       {summary['axons_measured']}",
        f"  mean g-ratio         {summary['mean_gratio_predicted']:.3f} predicted, "
        f"{summary['mean_gratio_ground_truth_masks']:.3f} on the ground-truth masks, "
        f"{summary['mean_gratio_phantom_truth']:.3f} phantom truth",
        f"  aggregate g-ratio    {summary['aggregate_gratio_predicted']:.3f} (1/sqrt(1 + MVF/AVF), predicted)",
        "  outputs",
    ]
    lines += [f"    {name:24s} {path}" for name, path in summary["outputs"].items()]
    lines += [f"    {'summary':24s} {out / 'summary.json'}", "=" * 78]
    print("\n".join(lines), flush=True)


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the whole pipeline on synthetic data on the CPU (about 5 minutes)",
        description="Synthetic TEM/SEM phantoms -> nnU-Net raw -> plan/preprocess (CPU plans) -> nnUNetv2_train "
                    f"({DEMO_TRAINER}) -> nnUNetv2_predict -> Dice per class -> per-axon and aggregate "
                    "morphometrics CSVs, with a summary at the end. Runs on the CPU; no downloads.")
    parser.add_argument("--out", default="nnunet_ext_demo",
                        help="output folder (default: ./nnunet_ext_demo); a previous demo output there is replaced")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out even if it is not a previous demo output")
    parser.add_argument("--seed", type=int, default=DemoSettings.seed, help="phantom seed")
    parser.set_defaults(func=_run_cli)


def _run_cli(args) -> int:
    summary = run_demo(args.out, overwrite=args.overwrite, settings=DemoSettings(seed=args.seed))
    return 0 if summary else 1
