"""Command-line registration for nnunet_ext.evaluation: ``evaluate``, ``experiment`` and ``tracing-metrics``.

Only argparse here; the metric modules (nnU-Net, torch) are imported inside the handlers.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from pathlib import Path

EVALUATE_DESCRIPTION = """\
Score a folder of predicted label images against a folder of references (2D or 3D, any format nnU-Net reads:
PNG, TIFF, NIfTI, ...; files pair by identical name). Per case and per class: Dice, IoU, F1 (= Dice at pixel
level), precision, recall, HD95 in pixels and, when the pixel size is known, in um; then per-class means (NaN
cases left out, as nnU-Net), Dice/IoU pooled over all cases, and the mean IoU over classes (mIoU).

Empty masks: a class absent from both reference and prediction gets NaN for every metric (nnU-Net's convention;
left out of the means). A class in only one of them gets Dice = IoU = F1 = 0, precision or recall 0, and HD95 =
the image diagonal. HD95 equals MONAI's compute_hausdorff_distance(percentile=95): the larger of the two directed
95th percentiles of boundary-to-boundary distances.

Labels and the ignore label come from the dataset.json that nnUNetv2_predict copies into PRED_DIR (or
GT_DIR/../dataset.json), else from --labels, else every non-zero value found. The CSV holds the per-case rows then
the summary rows (case = "mean"; the row with label "mean" averages the classes: its IoU is the mIoU); a PNG of box
plots is written beside it."""

TRACING_DESCRIPTION = """\
Vaa3D neuron_distance scores between two SWC reconstructions (or two folders of them, paired by file name):
every parent-child edge is sampled at N = int(1 + length + 0.5) points, each point's distance to the nearest edge
of the other tree is taken; ESA = mean of the two directional mean distances (ESA_12: from A's points to B),
DSA = the same over points at distance >= THRESHOLD (one direction alone if only it has such points, 0 if neither),
PDS = mean of the two fractions of points at >= THRESHOLD. Units: SWC coordinates (voxels), or scaled by
--spacing."""


EXPERIMENT_DESCRIPTION = """\
AxonDeepSeg's generalist-versus-dedicated experiment on converted nnU-Net datasets. Every training SOURCE gets a
dedicated model trained on it alone; the training sources are aggregated (as 'nnunet-ext aggregate' does: test sets
unioned, folds that validate on every source) into one dataset for the generalist model. Sources given with
--held-out are left out of every training and scored out of distribution. Every source needs a labelled test set
(imagesTs + labelsTs) and all share one label schema.

Without --run: writes OUT/commands.sh (the exact nnU-Net commands that plan, train every model, predict every test
set with every model into OUT/predictions/<model>/<target>, then 'nnunet-ext experiment --evaluate-only -o OUT')
and OUT/experiment.json, and prints the commands. With --run: runs them here (models whose final checkpoints exist
are reused unless --retrain) and evaluates. --smoke is a quick CPU check: nnUNetTrainerCPUSmoke (2 epochs), the
small CPU plans, fold 0.

Results (in OUT): per_case_metrics.csv (every model, test set, image, class and metric); dice_matrix.csv and
dice_matrix_<class>.csv (mean Dice over a test set's images; rows test sets, columns models); heat maps
dice_heatmap_<class>.png and dice_heatmaps.png (values in the cells, in-domain cells outlined); ttest.csv and
ttest_pairs.csv: scipy's paired t-test (ttest_rel) of generalist versus dedicated Dice on in-domain pairs (each
training source with the model trained on it alone, and the generalist), over all classes and per class. --pairs
source (default, the paper's): one pair per source and class, of the mean Dice on its test set; --pairs image: one
pair per test image and class (more pairs, but images of one source are not independent samples). ood.csv: on
held-out sources, the generalist against the matched dedicated model (SOURCE=DEDICATED, else the one training
source of the same modality), the best and the mean dedicated model."""


def register_cli(subparsers) -> None:
    evaluate = subparsers.add_parser(
        "evaluate",
        help="Dice, IoU, F1, precision, recall, HD95 of a predictions folder against references (CSV + PNG)",
        description=EVALUATE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_argument("prediction_dir", metavar="PRED_DIR", type=Path, help="folder of predicted label images")
    evaluate.add_argument("reference_dir", metavar="GT_DIR", type=Path, help="folder of reference label images")
    evaluate.add_argument("-o", "--output", type=Path, default=None,
                          help="CSV to write (default: PRED_DIR/evaluation.csv); the plot goes beside it as .png")
    evaluate.add_argument("--labels", nargs="+", metavar="LABEL", default=None,
                          help="labels to score: 1 2, regions as 1,2 (union), optionally named: myelin=1 axon=2 "
                               "fibre=1,2 (default: dataset.json, else every non-zero value found)")
    spacing = evaluate.add_mutually_exclusive_group()
    spacing.add_argument("--pixel-size", nargs="+", type=float, metavar="UM", default=None,
                         help="pixel size in um: one value (isotropic) or one per array axis, for HD95_um")
    spacing.add_argument("--spacing-from-files", action="store_true",
                         help="take the spacing nnU-Net's reader reports for each reference file (NIfTI header, "
                              "Tiff3DIO .json; PNG has none), assumed to be in um")
    spacing.add_argument("--pixel-size-table", type=Path, metavar="CSV", default=None,
                         help="CSV with a case column (case, case_id) and a pixel size column (pixel_size_um, "
                              "pixel_size, 'pixel size (um)'), e.g. a conversion manifest")
    evaluate.add_argument("--dataset-json", type=Path, default=None,
                          help="dataset.json giving file ending, labels and ignore label (default: found as above)")
    evaluate.add_argument("--ignore-label", type=int, default=None,
                          help="reference value left out of all metrics (default: dataset.json's 'ignore')")
    evaluate.add_argument("--allow-missing", action="store_true",
                          help="evaluate only the predicted cases when some references have no prediction")
    evaluate.add_argument("-np", "--num-processes", type=int, default=1, help="worker processes (default 1)")
    evaluate.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing CSV/PNG")
    evaluate.set_defaults(func=_run_evaluate)

    experiment = subparsers.add_parser(
        "experiment",
        help="generalist vs dedicated models: aggregate, train (commands or --run), Dice heat maps, t-test, OOD",
        description=EXPERIMENT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    experiment.add_argument("sources", nargs="*", metavar="SOURCE",
                            help="converted raw datasets: IDs, DatasetXXX_Name or folders in --raw")
    experiment.add_argument("-o", "--output", type=Path, required=True, help="experiment folder to write")
    experiment.add_argument("--aggregate-id", type=int, help="dataset ID of the generalist's aggregated dataset")
    experiment.add_argument("--aggregate-name", default="FULL_AGG", help="its name (default FULL_AGG)")
    experiment.add_argument("--held-out", action="append", default=[], metavar="SOURCE[=DEDICATED]",
                            help="source left out of every training, scored out of distribution; =DEDICATED names "
                                 "the training source whose dedicated model it is compared with (default: the one "
                                 "of the same modality). Repeat for several")
    experiment.add_argument("--raw", default=os.environ.get("nnUNet_raw"), help="nnU-Net raw folder ($nnUNet_raw)")
    experiment.add_argument("--preprocessed", default=os.environ.get("nnUNet_preprocessed"),
                            help="nnU-Net preprocessed folder ($nnUNet_preprocessed)")
    experiment.add_argument("--results", default=os.environ.get("nnUNet_results"),
                            help="nnU-Net results folder ($nnUNet_results)")
    nnunet = experiment.add_argument_group("nnU-Net settings (the same for every model)")
    nnunet.add_argument("-c", "--configuration", default="2d", help="configuration (default 2d)")
    nnunet.add_argument("-tr", "--trainer", default=None, help="trainer (default nnUNetTrainer; --smoke: "
                                                               "nnUNetTrainerCPUSmoke)")
    nnunet.add_argument("-p", "--plans", default=None, help="plans name (default nnUNetPlans)")
    nnunet.add_argument("--planner", default=None, help="experiment planner for nnUNetv2_plan_and_preprocess -pl")
    nnunet.add_argument("-f", "--folds", nargs="+", default=None,
                        help="folds to train, ensembled for prediction (default 0 1 2 3 4; --smoke: 0)")
    nnunet.add_argument("--device", default=None, choices=("cuda", "cpu", "mps"),
                        help="device (default cuda; --smoke: cpu)")
    nnunet.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth",
                        help="checkpoint used for prediction (default checkpoint_final.pth)")
    nnunet.add_argument("--cpu-plans", action="store_true",
                        help="train with the small CPU plans variant (nnUNetPlans_cpu, see 'nnunet-ext plans-cpu')")
    nnunet.add_argument("--patch-size", type=int, nargs="+", default=None,
                        help="CPU plans: patch size (default 128 128, or 64 64 64 in 3D)")
    nnunet.add_argument("--features", type=int, nargs="+", default=None,
                        help="CPU plans: features per stage (default 16 32 64 128)")
    nnunet.add_argument("--batch-size", type=int, default=None, help="CPU plans: batch size (default 8)")
    nnunet.add_argument("--smoke", action="store_true",
                        help="quick CPU check: nnUNetTrainerCPUSmoke, CPU plans, device cpu, fold 0 (explicit "
                             "options win)")
    aggregation = experiment.add_argument_group("aggregation (see 'nnunet-ext aggregate')")
    aggregation.add_argument("--aggregate-folds", type=int, default=5, help="folds of the aggregate (default 5)")
    aggregation.add_argument("--seed", type=int, default=0, help="seed of its fold assignment (default 0)")
    aggregation.add_argument("--group-by", nargs="+", metavar="CHOICE",
                             help="keep cases of a subject (default), sample or case together: one choice, or "
                                  "DATASET=CHOICE pairs")
    statistics = experiment.add_argument_group("statistics")
    statistics.add_argument("--pairs", choices=("source", "image"), default="source",
                            help="t-test pairs: per source and class (default, the paper's) or per test image "
                                 "and class")
    statistics.add_argument("--alternative", choices=("two-sided", "greater", "less"), default="two-sided",
                            help="alternative hypothesis; 'greater': the generalist's Dice is greater")
    mode = experiment.add_mutually_exclusive_group()
    mode.add_argument("--run", action="store_true", help="run the commands here, then evaluate")
    mode.add_argument("--evaluate-only", action="store_true",
                      help="evaluate the predictions commands.sh wrote into OUT/predictions (reads "
                           "OUT/experiment.json; no SOURCE needed)")
    experiment.add_argument("--retrain", action="store_true", help="with --run: train models even if trained")
    experiment.add_argument("--overwrite", action="store_true", help="replace a previous experiment's output")
    experiment.set_defaults(func=_run_experiment)

    tracing = subparsers.add_parser(
        "tracing-metrics",
        help="ESA, DSA, PDS (Vaa3D neuron_distance) between two SWC files or two folders of SWC files",
        description=TRACING_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tracing.add_argument("swc_a", metavar="A", type=Path, help="SWC file (e.g. the reference), or a folder of them")
    tracing.add_argument("swc_b", metavar="B", type=Path, help="SWC file (the reconstruction), or a folder of them")
    tracing.add_argument("-o", "--output", type=Path, default=None,
                         help="CSV to write (required for folders; optional for two files)")
    tracing.add_argument("--spacing", nargs="+", type=float, metavar="S", default=None,
                         help="scale of x, y, z (one value or three), e.g. um per voxel; default: SWC units")
    tracing.add_argument("--threshold", type=float, default=2.0,
                         help="distance from which a point is 'different structure' (Vaa3D: 2), after scaling")
    tracing.add_argument("--allow-missing", action="store_true",
                         help="folder mode: skip files that have no counterpart of the same name")
    tracing.add_argument("--overwrite", action="store_true", help="replace an existing CSV")
    tracing.set_defaults(func=_run_tracing_metrics)


def parse_label_argument(text: str):
    """``"2"`` -> (None, 2); ``"1,2"`` -> (None, (1, 2)); ``"axon=2"`` -> ("axon", 2)."""
    name, _, values = text.rpartition("=")
    try:
        numbers = tuple(int(v) for v in values.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--labels: {text!r} is not LABEL, LABEL,LABEL,... or NAME=LABEL[,LABEL...]") from None
    if not numbers:
        raise ValueError(f"--labels: {text!r} names no label")
    return (name or None), (numbers[0] if len(numbers) == 1 else numbers)


def read_pixel_size_table(path: Path) -> dict:
    """``{case: pixel size}`` from a CSV with a case column and a pixel size column (names matched loosely)."""
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(f"pixel size table not found: {path}")
    table = pd.read_csv(path)

    def normalise(column: str) -> str:
        return re.sub(r"[^0-9a-z]+", "_", column.lower()).strip("_")

    columns = {normalise(c): c for c in table.columns}
    case_column = next((columns[c] for c in ("case", "case_id", "case_identifier") if c in columns), None)
    size_column = next((columns[c] for c in ("pixel_size_um", "pixel_size", "pixelsize") if c in columns), None)
    if case_column is None or size_column is None:
        raise ValueError(f"{path}: needs a case column (case, case_id) and a pixel size column (pixel_size_um, "
                         f"pixel_size); found {list(table.columns)}")
    sizes = pd.to_numeric(table[size_column], errors="coerce")
    bad = table.loc[~(sizes > 0), case_column].astype(str).tolist()
    if bad:
        raise ValueError(f"{path}: missing or non-positive pixel size for case(s) {', '.join(bad[:5])}")
    return dict(zip(table[case_column].astype(str), sizes.astype(float)))


def _run_evaluate(args) -> int:
    from nnunet_ext.evaluation import segmentation_metrics as sm

    labels, names = None, {}
    if args.labels:
        labels = []
        for text in args.labels:
            name, label = parse_label_argument(text)
            labels.append(label)
            if name:
                names[label] = name
    if args.pixel_size is not None:
        spacing = args.pixel_size[0] if len(args.pixel_size) == 1 else args.pixel_size
    elif args.spacing_from_files:
        spacing = sm.SPACING_FROM_FILES
    elif args.pixel_size_table is not None:
        spacing = read_pixel_size_table(args.pixel_size_table)
    else:
        spacing = None
    if args.num_processes < 1:
        raise ValueError("--num-processes must be at least 1")

    output = args.output or args.prediction_dir / "evaluation.csv"
    plot_path = output.with_suffix(".png")
    # Refuse before the (possibly long) evaluation rather than after it.
    for path in (output, *(() if args.no_plot else (plot_path,))):
        if path.exists() and not args.overwrite:
            raise FileExistsError(f"{path} exists; use --overwrite to replace it")

    per_case = sm.evaluate_folder(
        args.prediction_dir, args.reference_dir, labels=labels, spacing=spacing, dataset_json=args.dataset_json,
        ignore_label=args.ignore_label, class_names=names, allow_missing=args.allow_missing,
        num_processes=args.num_processes,
    )
    summary = sm.per_class_means(per_case)
    sm.write_csv_atomically(sm.metrics_table_for_csv(per_case, summary), output, overwrite=args.overwrite)
    if not args.no_plot:
        sm.plot_metrics(per_case, plot_path, overwrite=args.overwrite)

    shown = summary[["class_name", "Dice", "IoU", "precision", "recall", "HD95_px", "HD95_um", "n_cases_defined"]]
    print(f"{per_case['case'].nunique()} cases, {len(summary) - 1} classes")
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"mIoU {summary['IoU'].iloc[-1]:.4f}   mean Dice {summary['Dice'].iloc[-1]:.4f}")
    print(f"wrote {output}" + ("" if args.no_plot else f" and {plot_path}"))
    return 0


def _run_experiment(args) -> int:
    from nnunet_ext.evaluation import experiment as ex

    if args.evaluate_only:
        if args.sources:
            raise ValueError("--evaluate-only reads OUT/experiment.json; give no SOURCE")
        results = ex.evaluate_experiment(args.output, overwrite=args.overwrite)
        print(ex.format_results(results, results["design"]))
        print(f"wrote {len(results['files'])} result files into {results['output_dir']}")
        return 0
    if not args.sources and not args.held_out:
        raise ValueError("give the source datasets (IDs, names or folders)")
    if args.aggregate_id is None:
        raise ValueError("--aggregate-id is required: the dataset ID of the generalist's aggregated dataset")
    missing = [name for name, value in (("--raw/$nnUNet_raw", args.raw), ("--preprocessed/$nnUNet_preprocessed",
                                                                          args.preprocessed),
                                        ("--results/$nnUNet_results", args.results)) if not value]
    if missing:
        raise ValueError(f"nnU-Net's folders are not set: {', '.join(missing)}")
    if args.retrain and not args.run:
        raise ValueError("--retrain applies to --run")
    cpu_plans = args.cpu_plans or args.smoke
    if not cpu_plans and any(v is not None for v in (args.patch_size, args.features, args.batch_size)):
        raise ValueError("--patch-size, --features and --batch-size apply to --cpu-plans (or --smoke)")
    if cpu_plans and args.plans is not None:
        raise ValueError("--plans cannot be combined with --cpu-plans/--smoke (they train nnUNetPlans_cpu)")
    settings = ex.NnUNetSettings(
        configuration=args.configuration,
        trainer=args.trainer or ("nnUNetTrainerCPUSmoke" if args.smoke else "nnUNetTrainer"),
        plans=args.plans or "nnUNetPlans", planner=args.planner,
        folds=tuple(args.folds or ((0,) if args.smoke else (0, 1, 2, 3, 4))),
        device=args.device or ("cpu" if args.smoke else "cuda"), checkpoint=args.checkpoint,
        cpu_plans=None if not cpu_plans else {
            "patch_size": args.patch_size or ([128, 128] if args.configuration.startswith("2d") else [64, 64, 64]),
            "features_per_stage": list(args.features or (16, 32, 64, 128)), "batch_size": args.batch_size or 8})
    from nnunet_ext.dataset_conversion.aggregate import _parse_group_by

    # Refuse an existing output before creating the aggregate, not after.
    ex.check_output_folder(args.output.resolve(), args.overwrite)
    design = ex.prepare_experiment(
        args.sources, args.raw, args.preprocessed, args.results, args.aggregate_id, args.aggregate_name,
        held_out=args.held_out, nnunet=settings, aggregate_folds=args.aggregate_folds, seed=args.seed,
        group_by=_parse_group_by(args.group_by or []), pairing=args.pairs, alternative=args.alternative)
    # The command line, for the script's header (only when run as nnunet-ext, not through main() from Python).
    invocation = ("nnunet-ext " + " ".join(shlex.quote(a) for a in sys.argv[1:])
                  if Path(sys.argv[0]).name == "nnunet-ext" else "")
    if not args.run:
        script = ex.write_experiment_plan(design, args.output, overwrite=args.overwrite, invocation=invocation)
        print(script.read_text())
        print(f"wrote {script} and {script.parent / ex.DESIGN_FILE}; run the script (or this command with --run), "
              f"it ends with the evaluation")
        return 0
    results = ex.run_experiment(design, args.output, overwrite=args.overwrite, retrain=args.retrain,
                                invocation=invocation)
    print(ex.format_results(results, design))
    print(f"wrote {results['output_dir']} ({len(results['files'])} result files, predictions, commands.sh, "
          f"logs/nnunet.log)")
    return 0


def _run_tracing_metrics(args) -> int:
    from nnunet_ext.evaluation import tracing_metrics as tm
    from nnunet_ext.evaluation.segmentation_metrics import write_csv_atomically

    spacing = None
    if args.spacing is not None:
        if len(args.spacing) not in (1, 3):
            raise ValueError("--spacing takes one value or three (x y z)")
        spacing = args.spacing[0] if len(args.spacing) == 1 else args.spacing
    for path in (args.swc_a, args.swc_b):
        if not path.exists():
            raise FileNotFoundError(f"not found: {path}")
    if args.output is not None and args.output.exists() and not args.overwrite:
        raise FileExistsError(f"{args.output} exists; use --overwrite to replace it")

    if args.swc_a.is_dir() and args.swc_b.is_dir():
        if args.output is None:
            raise ValueError("folder mode needs -o CSV")
        table = tm.neuron_distance_on_folders(args.swc_a, args.swc_b, spacing=spacing, threshold=args.threshold,
                                              allow_missing=args.allow_missing)
        columns = ["ESA_12", "ESA_21", "ESA", "DSA", "PDS"]
        print(table[["name", *columns]].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        means = table[columns].mean()
        print("mean  " + "  ".join(f"{c} {means[c]:.4f}" for c in columns))
        write_csv_atomically(table, args.output, overwrite=args.overwrite)
        print(f"wrote {args.output} ({len(table)} pairs)")
        return 0
    if args.swc_a.is_dir() or args.swc_b.is_dir():
        raise ValueError("give two SWC files or two folders, not one of each")

    metrics = tm.neuron_distance(args.swc_a, args.swc_b, spacing=spacing, threshold=args.threshold)
    unit = "" if spacing is None else " (scaled units)"
    print(f"A = {args.swc_a}\nB = {args.swc_b}")
    print(f"entire-structure average from A to B (ESA_12) = {metrics.ESA_12:.6f}{unit}")
    print(f"entire-structure average from B to A (ESA_21) = {metrics.ESA_21:.6f}{unit}")
    print(f"entire-structure average (ESA)                = {metrics.ESA:.6f}{unit}")
    print(f"different-structure average (DSA)             = {metrics.DSA:.6f}{unit}")
    print(f"percent of different structure (PDS)          = {metrics.PDS:.6f}  "
          f"(A: {metrics.PDS_12:.4f}, B: {metrics.PDS_21:.4f}; points >= {args.threshold:g})")
    if args.output is not None:
        import pandas as pd

        row = {"name": args.swc_a.name, "file_1": str(args.swc_a), "file_2": str(args.swc_b), **metrics.as_dict()}
        write_csv_atomically(pd.DataFrame([row]), args.output, overwrite=args.overwrite)
        print(f"wrote {args.output}")
    return 0
