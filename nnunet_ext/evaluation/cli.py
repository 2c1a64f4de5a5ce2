"""Command-line registration for nnunet_ext.evaluation: ``evaluate`` and ``tracing-metrics``.

Only argparse here; the metric modules (nnU-Net, torch) are imported inside the handlers.
"""
from __future__ import annotations

import argparse
import re
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
GT_DIR/../dataset.json), else from --labels, else every non-zero value found. With a dataset.json, a prediction or
reference holding a value that is none of its labels (nor --labels, nor the ignore label) is refused, naming the file
and the values, instead of being scored as background. The CSV holds the per-case rows then
the summary rows (case = "mean"; the row with label "mean" averages the classes: its IoU is the mIoU); a PNG of box
plots is written beside it."""

TRACING_DESCRIPTION = """\
Vaa3D neuron_distance scores between two SWC reconstructions (or two folders of them, paired by file name):
every parent-child edge is sampled at N = int(1 + length + 0.5) points, each point's distance to the nearest edge
of the other tree is taken; ESA = mean of the two directional mean distances (ESA_12: from A's points to B),
DSA = the same over points at distance >= THRESHOLD (one direction alone if only it has such points, 0 if neither),
PDS = mean of the two fractions of points at >= THRESHOLD. Units: SWC coordinates (voxels), or scaled by
--spacing."""


class ParagraphHelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions to the terminal as the other subcommands' help, but keeps blank-line paragraph breaks
    (RawDescriptionHelpFormatter printed hand-wrapped lines too wide for the terminal, and one-line group texts of
    hundreds of characters)."""

    def _fill_text(self, text, width, indent):
        import textwrap

        # break_on_hyphens=False: "nnU-Net" and "--option" stay whole.
        return "\n\n".join(textwrap.fill(" ".join(p.split()), width, initial_indent=indent,
                                          subsequent_indent=indent, break_on_hyphens=False)
                            for p in re.split(r"\n\s*\n", text.strip()))


def register_cli(subparsers) -> None:
    evaluate = subparsers.add_parser(
        "evaluate",
        help="Dice, IoU, F1, precision, recall, HD95 of a predictions folder against references (CSV + PNG)",
        description=EVALUATE_DESCRIPTION,
        formatter_class=ParagraphHelpFormatter,
    )
    evaluate.add_argument("prediction_dir", metavar="PRED_DIR", type=Path, help="folder of predicted label images")
    evaluate.add_argument("reference_dir", metavar="GT_DIR", type=Path,
                          help="folder of reference label images (with --fibres/--morphometrics also a BIDS dataset "
                               "or an ASTIH test folder)")
    evaluate.add_argument("-o", "--output", type=Path, default=None,
                          help="CSV to write (default: PRED_DIR/evaluation.csv); the plot goes beside it as .png. "
                               "With --fibres/--morphometrics only its name is used, as the prefix <out> of "
                               "<out>_fibres.csv, <out>_fibres_dataset.csv, <out>_agreement_*.csv, ... (<out> = -o "
                               "without .csv); the CSV itself is not written")
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
    fibres = evaluate.add_argument_group(
        "fibre detection and morphometric agreement (ASTIH's protocol)",
        "With --fibres or --morphometrics, GT_DIR may be a BIDS dataset (derivatives/labels), an ASTIH test folder "
        "(<stem>_seg-axonmyelin-manual.png) or an nnU-Net label folder, and PRED_DIR holds <stem>_seg-axon.png + "
        "<stem>_seg-myelin.png (nnunet-ext segment), <stem>_seg-axonmyelin.png or label images (PRED_DIR may be "
        "GT_DIR). Fibres: the axon + myelin watershed of the morphometrics (AxonDeepSeg's), matched one-to-one as "
        "stardist's matching; per image TP/FP/FN, precision, recall, accuracy, F1, mean matched score, panoptic "
        "quality and pixel Dice/IoU of axon and myelin (<out>_fibres.csv), per dataset TP/FP/FN summed and rates "
        "averaged over images as ASTIH, pooled rates beside (<out>_fibres_dataset.csv); <out> is -o without .csv "
        "(default PRED_DIR/evaluation), and -o's CSV itself is not written in this mode.")
    fibres.add_argument("--fibres", action="store_true", help="fibre detection metrics")
    fibres.add_argument("--iou-thresholds", nargs="+", metavar="T", default=None,
                        help="matching thresholds of a sweep: values (0.5 0.75), or a range written 0.3 ... 0.95 "
                             "(step 0.05) or 0.3 0.4 ... 0.9 (step from the first two), or START STOP STEP with "
                             "--iou-range; writes every threshold to the CSVs and <out>_fibres_sweep.png")
    fibres.add_argument("--iou-range", action="store_true",
                        help="read --iou-thresholds as START STOP STEP (inclusive), e.g. 0.3 0.95 0.05")
    fibres.add_argument("--match-threshold", type=float, default=0.5,
                        help="IoU at which fibres match for detection and agreement (default 0.5, ASTIH's)")
    fibres.add_argument("--morphometrics", action="store_true",
                        help="morphometric agreement of matched fibres (axon diameter, myelin thickness, g-ratio: "
                             "bias, 95%% limits of agreement, Pearson r, ICC(2,1)) and per image / subject (axon count, "
                             "density, AVF, MVF, aggregate and mean g-ratio, relative errors): <out>_agreement_*.csv, "
                             "<out>_bland_altman.png, <out>_scatter.png; needs pixel sizes (sidecars, manifest.csv, "
                             "--pixel-size or --pixel-size-table)")
    fibres.add_argument("--axon-shape", choices=("circle", "ellipse"), default="circle",
                        help="axon diameter as equivalent circle (default) or ellipse minor axis")
    fibres.add_argument("--postprocess", action="store_true",
                        help="post-process the predictions for morphometrics first (nnunet-ext morphometrics "
                             "--postprocess's defaults)")
    fibres.add_argument("--label-suffix", default="manual",
                        help="reference masks <stem>_seg-axonmyelin-<SUFFIX>.png (default: manual)")
    evaluate.set_defaults(func=_run_evaluate)

    tracing = subparsers.add_parser(
        "tracing-metrics",
        help="ESA, DSA, PDS (Vaa3D neuron_distance) between two SWC files or two folders of SWC files",
        description=TRACING_DESCRIPTION,
        formatter_class=ParagraphHelpFormatter,
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
    from nnunet_ext.io.pixel_size import PLAUSIBLE_PIXEL_SIZE_UM

    low, high = PLAUSIBLE_PIXEL_SIZE_UM
    implausible = table.loc[(sizes < low) | (sizes > high), case_column].astype(str).tolist()
    if implausible:
        raise ValueError(f"{path}: implausible pixel size for case(s) {', '.join(implausible[:5])}: accepted are "
                         f"{low:g} to {high:g} um per pixel")
    return dict(zip(table[case_column].astype(str), sizes.astype(float)))


def fibre_only_layout(reference_dir: Path, label_suffix: str = "manual") -> str | None:
    """``"a BIDS dataset"`` or ``"an ASTIH test folder"`` when ``reference_dir`` holds its references in a layout that
    only ``--fibres``/``--morphometrics`` read, else None (an nnU-Net label folder, or a folder of masks alone)."""
    from nnunet_ext.io.bids import is_bids_dataset

    if not reference_dir.is_dir():
        return None
    if is_bids_dataset(reference_dir):
        return "a BIDS dataset"
    masks = [p for pattern in (f"*_seg-axonmyelin-{label_suffix}.png", f"*_seg-axon-{label_suffix}.png")
             for p in reference_dir.rglob(pattern)]
    # Masks only below GT_DIR leave nothing to pair; masks beside their microscopy image <stem>.png would pair
    # predictions with the images. A flat folder of masks alone is still scored (e.g. with --labels 127 255).
    if masks and (all(m.parent != reference_dir for m in masks)
                  or any(m.with_name(m.name.split("_seg-")[0] + ".png").is_file() for m in masks)):
        return "an ASTIH test folder"
    return None


def _run_evaluate(args) -> int:
    if args.fibres or args.morphometrics or args.iou_thresholds:
        return _run_fibre_evaluation(args)
    layout = fibre_only_layout(args.reference_dir, args.label_suffix)
    if layout is not None:
        raise ValueError(f"{args.reference_dir}: GT_DIR is {layout}: pixel Dice/IoU/HD95 need nnU-Net label folders "
                         f"(PRED_DIR and GT_DIR holding label images of the same names, e.g. nnUNetv2_predict's "
                         f"output and labelsTs); add --fibres (fibre detection, with pixel Dice/IoU of axon and "
                         f"myelin) or --morphometrics")
    from nnunet_ext.evaluation import folder_evaluation as fe
    from nnunet_ext.io.atomic import write_csv_atomically
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
        from nnunet_ext.io.pixel_size import check_pixel_size

        for value in args.pixel_size:
            try:
                check_pixel_size(value)
            except ValueError as error:
                raise ValueError(f"--pixel-size: {error}") from None
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

    per_case = fe.evaluate_folder(
        args.prediction_dir, args.reference_dir, labels=labels, spacing=spacing, dataset_json=args.dataset_json,
        ignore_label=args.ignore_label, class_names=names, allow_missing=args.allow_missing,
        num_processes=args.num_processes,
    )
    summary = fe.per_class_means(per_case)
    write_csv_atomically(fe.metrics_table_for_csv(per_case, summary), output, overwrite=args.overwrite)
    if not args.no_plot:
        fe.plot_metrics(per_case, plot_path, overwrite=args.overwrite)

    shown = summary[["class_name", "Dice", "IoU", "precision", "recall", "HD95_px", "HD95_um", "n_cases_defined"]]
    print(f"{per_case['case'].nunique()} cases, {len(summary) - 1} classes")
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"mIoU {summary['IoU'].iloc[-1]:.4f}   mean Dice {summary['Dice'].iloc[-1]:.4f}")
    print(f"wrote {output}" + ("" if args.no_plot else f" and {plot_path}"))
    return 0


def iou_thresholds(values, as_range: bool) -> list[float]:
    """``--iou-thresholds``: the values; ``A ... B`` (step 0.05) or ``A A2 ... B`` (step A2 - A); or START STOP STEP
    (inclusive) with ``--iou-range``."""
    values = list(values)
    if "..." in values:
        at = values.index("...")
        if as_range or at not in (1, 2) or len(values) != at + 2:
            raise ValueError("--iou-thresholds: write a range as START ... STOP or START NEXT ... STOP")
        try:
            numbers = [float(v) for v in values if v != "..."]
        except ValueError:
            raise ValueError(f"--iou-thresholds: {' '.join(values)} holds a value that is not a number") from None
        step = numbers[1] - numbers[0] if at == 2 else 0.05
        values, as_range = [numbers[0], numbers[-1], step], True
    try:
        values = [float(v) for v in values]
    except ValueError:
        raise ValueError(f"--iou-thresholds: {' '.join(map(str, values))} holds a value that is not a number") from None
    if not as_range:
        return values
    if len(values) != 3 or values[2] <= 0 or values[1] < values[0]:
        raise ValueError("--iou-range needs --iou-thresholds START STOP STEP with STEP > 0 and STOP >= START")
    start, stop, step = values
    count = int(round((stop - start) / step)) + 1
    return [round(start + i * step, 10) for i in range(count) if start + i * step <= stop + 1e-9]


def _run_fibre_evaluation(args) -> int:
    from nnunet_ext.evaluation import fibre_folders as ff

    thresholds = iou_thresholds(args.iou_thresholds, args.iou_range) if args.iou_thresholds else [args.match_threshold]
    for value in [*thresholds, args.match_threshold]:
        if not 0 <= value <= 1:
            raise ValueError(f"IoU thresholds must be between 0 and 1, got {value}")
    if args.pixel_size is not None and len(args.pixel_size) != 1:
        raise ValueError("--pixel-size takes one value with --fibres/--morphometrics (2D images)")
    if args.spacing_from_files:
        raise ValueError("--spacing-from-files is not used with --fibres/--morphometrics; pixel sizes come from "
                         "sidecars, manifest.csv, --pixel-size or --pixel-size-table")
    output = args.output or args.prediction_dir / "evaluation.csv"
    paths = ff.output_paths(output)
    planned = [paths["detection"], paths["dataset"]] + ([paths["sweep_png"]] if len(thresholds) > 1 else [])
    if args.morphometrics:
        planned += [paths[k] for k in ("fibres", "statistics", "images", "subjects", "bland_altman", "scatter")]
    for path in planned:
        if path.exists() and not args.overwrite:
            raise FileExistsError(f"{path} exists; use --overwrite to replace it")
    pixel_sizes = read_pixel_size_table(args.pixel_size_table) if args.pixel_size_table is not None else None
    cases = ff.discover_fibre_cases(args.prediction_dir, args.reference_dir, args.label_suffix,
                                    args.allow_missing, args.pixel_size[0] if args.pixel_size else None, pixel_sizes)
    myelin_label, axon_label = ff.labels_from_dataset_json(args.reference_dir)
    postprocess = None
    if args.postprocess:
        from nnunet_ext.morphometrics.postprocess import DEFAULT_POSTPROCESS

        postprocess = dict(DEFAULT_POSTPROCESS)
    result = ff.evaluate_fibre_cases(cases, thresholds, args.match_threshold, args.morphometrics, args.axon_shape,
                                     postprocess, myelin_label, axon_label)
    output.parent.mkdir(parents=True, exist_ok=True)
    written = ff.write_fibre_evaluation(result, output, len(thresholds) > 1, args.overwrite)
    row = result.dataset[result.dataset["thresh"] == args.match_threshold].iloc[0]
    print(f"{len(cases)} image(s); fibres at IoU {args.match_threshold:g}: TP {row['tp']} FP {row['fp']} FN "
          f"{row['fn']}; precision {row['precision']:.4f} recall {row['recall']:.4f} F1 {row['f1']:.4f} (means over "
          f"images); panoptic quality {row['panoptic_quality']:.4f}; Dice axon {row['dice_axon']:.4f} myelin "
          f"{row['dice_myelin']:.4f}")
    if result.statistics is not None:
        overall = result.statistics[result.statistics["subject"] == "all"]
        for record in overall.to_dict("records"):
            print(f"  {record['metric']:>16}: n {record['n']}, bias {record['bias']:+.4f}, 95% LoA "
                  f"[{record['loa_low']:+.4f}, {record['loa_high']:+.4f}], r {record['pearson_r']:.3f}, ICC(2,1) "
                  f"{record['icc_2_1']:.3f}")
        for record in result.images.to_dict("records"):
            print(f"  {record['image']}: axons {record['axon_count_pred']} vs {record['axon_count_ref']} "
                  f"({record['axon_count_rel_error']:+.1%}), aggregate g-ratio {record['gratio_aggregate_pred']:.4f} "
                  f"vs {record['gratio_aggregate_ref']:.4f}")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _run_tracing_metrics(args) -> int:
    from nnunet_ext.evaluation import tracing_metrics as tm
    from nnunet_ext.io.atomic import write_csv_atomically

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
