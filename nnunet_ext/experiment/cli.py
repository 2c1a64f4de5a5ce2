"""Command-line registration of the generalist-versus-dedicated experiment: ``nnunet-ext experiment``.

Only argparse here; the experiment modules (nnU-Net, pandas, matplotlib) are imported inside the handler so that
``nnunet-ext --help`` starts instantly.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from nnunet_ext.nnunet.plans_cpu import CPU_BATCH_SIZE, CPU_FEATURES_PER_STAGE, default_cpu_patch_size

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


def _run_experiment(args) -> int:
    # Imported here, not at the top, so that `nnunet-ext --help` stays instant (see the module docstring).
    from nnunet_ext.dataset_conversion.aggregate_datasets import parse_group_by
    from nnunet_ext.experiment.design import DESIGN_FILE, NnUNetSettings, prepare_experiment
    from nnunet_ext.experiment.outputs import (check_output_folder, evaluate_experiment, format_results,
                                               run_experiment, write_experiment_plan)

    if args.evaluate_only:
        if args.sources:
            raise ValueError("--evaluate-only reads OUT/experiment.json; give no SOURCE")
        results = evaluate_experiment(args.output, overwrite=args.overwrite)
        print(format_results(results, results["design"]))
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
    settings = NnUNetSettings(
        configuration=args.configuration,
        trainer=args.trainer or ("nnUNetTrainerCPUSmoke" if args.smoke else "nnUNetTrainer"),
        plans=args.plans or "nnUNetPlans", planner=args.planner,
        folds=tuple(args.folds or ((0,) if args.smoke else (0, 1, 2, 3, 4))),
        device=args.device or ("cpu" if args.smoke else "cuda"), checkpoint=args.checkpoint,
        cpu_plans=None if not cpu_plans else {
            "patch_size": args.patch_size or list(default_cpu_patch_size(args.configuration)),
            "features_per_stage": list(args.features or CPU_FEATURES_PER_STAGE),
            "batch_size": args.batch_size or CPU_BATCH_SIZE})
    # Refuse an existing output before creating the aggregate, not after.
    check_output_folder(args.output.resolve(), args.overwrite)
    design = prepare_experiment(
        args.sources, args.raw, args.preprocessed, args.results, args.aggregate_id, args.aggregate_name,
        held_out=args.held_out, nnunet=settings, aggregate_folds=args.aggregate_folds, seed=args.seed,
        group_by=parse_group_by(args.group_by or []), pairing=args.pairs, alternative=args.alternative)
    # The command line, for the script's header (only when run as nnunet-ext, not through main() from Python).
    invocation = ("nnunet-ext " + " ".join(shlex.quote(a) for a in sys.argv[1:])
                  if Path(sys.argv[0]).name == "nnunet-ext" else "")
    if not args.run:
        script = write_experiment_plan(design, args.output, overwrite=args.overwrite, invocation=invocation)
        print(script.read_text())
        print(f"wrote {script} and {script.parent / DESIGN_FILE}; run the script (or this command with --run), "
              f"it ends with the evaluation")
        return 0
    results = run_experiment(design, args.output, overwrite=args.overwrite, retrain=args.retrain,
                             invocation=invocation)
    print(format_results(results, design))
    print(f"wrote {results['output_dir']} ({len(results['files'])} result files, predictions, commands.sh, "
          f"logs/nnunet.log)")
    return 0
