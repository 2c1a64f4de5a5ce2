"""Command-line registration for ``nnunet-ext report`` (parser only; the work happens in the handler)."""
from __future__ import annotations

import math


def _edge(text: str) -> float:
    value = float(text)  # accepts "inf"
    if math.isnan(value):
        raise ValueError(f"bin edge {text!r} is not a number")
    return value


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="study report: morphometrics per subject and group, diameter bins, statistics, HTML page",
        description="Summarise per-axon morphometrics (from 'nnunet-ext morphometrics' or AxonDeepSeg) per image, "
                    "subject and group, binned by axon diameter; compare groups on subject-level values (Welch / "
                    "Mann-Whitney, ANOVA / Kruskal-Wallis, effect sizes) and with linear mixed models (random "
                    "intercept per subject); fit g-ratio vs diameter; write tidy CSVs, PNG figures and one "
                    "self-contained report.html. INPUT: morphometrics output folders, AxonDeepSeg subject folders "
                    "(<subject>/<image>_axon_morphometrics.xlsx), BIDS derivatives trees, or tables.",
        epilog="Subjects come from BIDS 'sub-' entities, else the folder holding each table. Groups and covariates "
               "come from the BIDS participants.tsv / samples.tsv above the inputs, or from --participants tables "
               "(keyed by participant_id, sample_id or image).")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="folders or per-axon tables (CSV/XLSX)")
    parser.add_argument("-o", "--output", required=True, help="report folder (replaced only with --overwrite)")
    parser.add_argument("--participants", action="append", default=None, metavar="TABLE",
                        help="covariate table (TSV/CSV/XLSX) keyed by participant_id, sample_id or image; "
                             "repeatable (default: BIDS participants.tsv and samples.tsv above the inputs)")
    parser.add_argument("--group-by", default=None, metavar="COLUMN",
                        help="covariate column defining the groups to compare")
    parser.add_argument("--groups", nargs="+", default=None, metavar="GROUP",
                        help="group order; the first is the reference (default: sorted)")
    parser.add_argument("--covariate", action="append", default=[], metavar="COLUMN",
                        help="covariate column added to the mixed models (repeatable)")
    parser.add_argument("--subject-entity", default="sub", metavar="ENTITY",
                        help="BIDS entity naming the units of analysis (default sub; 'sample' makes samples the "
                             "units)")
    parser.add_argument("--metrics", nargs="+", default=None, metavar="COLUMN",
                        help="further per-axon columns to summarise, e.g. 'axon_area (um^2)' 'fiber_diam (um)' "
                             "(axon diameter, myelin thickness and g-ratio always are)")
    bins = parser.add_argument_group("diameter bins")
    choice = bins.add_mutually_exclusive_group()
    choice.add_argument("--bins", nargs="+", type=_edge, default=None, metavar="EDGE",
                        help="bin edges in um, lower edge included, e.g. --bins 0 0.5 1 2 4 inf (default: "
                             "AxonDeepSeg's 0.5 1 1.25 1.5 1.75 inf)")
    choice.add_argument("--quantiles", type=int, default=None, metavar="N",
                        help="N bins with equal numbers of axons (quantiles of the pooled diameter)")
    bins.add_argument("--ads-bins", action="store_true",
                      help="also write AxonDeepSeg's per-subject binned statistics (axondeepseg_aggregate's "
                           "statistics_per_axon_caliber table: CSV, and XLSX with openpyxl)")
    filters = parser.add_argument_group("filters (stated in the report)")
    filters.add_argument("--keep-invalid-gratio", action="store_true",
                         help="keep axons whose g-ratio is NaN or outside (0, 1) (default: dropped, as AxonDeepSeg)")
    filters.add_argument("--drop-border", action="store_true", help="drop fibres touching the image border")
    filters.add_argument("--min-diameter", type=float, default=None, metavar="UM", help="drop smaller axons")
    filters.add_argument("--max-diameter", type=float, default=None, metavar="UM", help="drop larger axons")
    stats = parser.add_argument_group("statistics")
    stats.add_argument("--test", choices=("auto", "parametric", "rank"), default="auto",
                       help="subject-level group test: parametric (Welch / ANOVA), rank (Mann-Whitney / "
                            "Kruskal-Wallis), or auto (parametric unless Shapiro-Wilk rejects normality; default)")
    stats.add_argument("--mixed-model", choices=("group+diameter", "group", "none"), default="group+diameter",
                       help="mixed models per metric: metric ~ group [+ diameter] + (1 | subject) "
                            "(default group+diameter)")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    parser.add_argument("--title", default=None, help="page title (default 'Study report')")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    parser.set_defaults(func=_run)


def _command_line(args) -> str:
    """The command as typed when run from a shell, else rebuilt from the options."""
    import shlex
    import sys
    from pathlib import Path

    if Path(sys.argv[0]).name.startswith("nnunet-ext") and "report" in sys.argv[1:]:
        return shlex.join(["nnunet-ext", *sys.argv[1:]])
    parts = ["nnunet-ext", "report", *args.inputs, "-o", args.output]
    for table in args.participants or []:
        parts += ["--participants", table]
    for option in ("group_by", "subject_entity", "title", "min_diameter", "max_diameter", "quantiles"):
        value = getattr(args, option)
        if value is not None and not (option == "subject_entity" and value == "sub"):
            parts += [f"--{option.replace('_', '-')}", str(value)]
    if args.groups:
        parts += ["--groups", *args.groups]
    for column in args.covariate:
        parts += ["--covariate", column]
    if args.metrics:
        parts += ["--metrics", *args.metrics]
    if args.bins:
        parts += ["--bins", *(f"{e:g}" for e in args.bins)]
    if args.test != "auto":
        parts += ["--test", args.test]
    if args.mixed_model != "group+diameter":
        parts += ["--mixed-model", args.mixed_model]
    for flag in ("ads_bins", "keep_invalid_gratio", "drop_border", "no_figures", "overwrite"):
        if getattr(args, flag):
            parts.append(f"--{flag.replace('_', '-')}")
    return shlex.join(str(p) for p in parts)


def _run(args) -> int:
    from nnunet_ext.report.filters import Filters
    from nnunet_ext.report.inputs import CORE_METRICS
    from nnunet_ext.report.workflow import run_report

    filters = Filters(gratio_valid=not args.keep_invalid_gratio, drop_border=args.drop_border,
                      min_diameter=args.min_diameter, max_diameter=args.max_diameter)
    result = run_report(
        args.inputs, args.output, participants=args.participants, group_by=args.group_by, groups=args.groups,
        subject_entity=args.subject_entity, covariates=args.covariate,
        metrics=list(CORE_METRICS) + list(args.metrics or []), filters=filters, bin_edges=args.bins,
        quantiles=args.quantiles, ads=args.ads_bins, test=args.test, mixed=args.mixed_model,
        make_figures=not args.no_figures, title=args.title, command=_command_line(args), overwrite=args.overwrite)
    info = result["info"]
    counts = info["counts"]
    print(f"{counts['subjects']} subject(s), {counts['images']} image(s), {counts['axons_kept']:,} of "
          f"{counts['axons_read']:,} axons kept -> {result['html']}")
    for warning in result["warnings"]:
        print(f"  warning: {warning}")
    tests = result["tests"]
    if len(tests):
        for _, row in tests.iterrows():
            if row["status"] == "done":
                print(f"  {row['metric']}: {row['test']} p = {row['p_value']:.3g}, {row['effect_size_name']} "
                      f"{row['effect_size']:.3g} ({row['groups']})")
            else:
                print(f"  {row['metric']}: not tested: {row['reason']}")
    print(f"  {info['timings_s']['total']:.1f} s")
    return 0
