"""The ``nnunet-ext`` command line: one entry point, one subcommand per job.

Each subcommand lives beside the code it drives, in a module exposing ``register_cli(subparsers)``; that
function only builds the argparse parser (heavy imports such as torch happen inside the handler), so that
``nnunet-ext --help`` answers instantly.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from nnunet_ext import __version__

# Modules that contribute subcommands, in the order they are listed in --help.
COMMAND_MODULES = (
    "nnunet_ext.demo",
    "nnunet_ext.nnunet.environment",
    "nnunet_ext.dataset_conversion.cli",
    "nnunet_ext.phantoms.cli",
    "nnunet_ext.nnunet.plans_cpu",
    "nnunet_ext.nnunet.cli",
    "nnunet_ext.segmentation.cli",
    "nnunet_ext.morphometrics.cli",
    "nnunet_ext.report.cli",
    "nnunet_ext.evaluation.cli",
    "nnunet_ext.experiment.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet-ext",
        description="nnU-Net v2 extensions for generalist axon and myelin segmentation in microscopy: dataset "
        "conversion, trainers for the stock nnUNetv2_train/nnUNetv2_predict, evaluation and morphometrics.",
        epilog="Run 'nnunet-ext COMMAND --help' for the options of one command. "
        "Start with 'nnunet-ext demo' to see the whole pipeline on synthetic data.",
    )
    parser.add_argument("--version", action="version", version=f"nnunet-ext {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    import warnings

    default_format = warnings.formatwarning

    def user_facing(message, category, filename, lineno, line=None):
        # our warnings name the file and what is wrong; the source line of the warn() call says nothing to a user
        if category is UserWarning:
            return f"nnunet-ext {args.command}: warning: {message}\n"
        return default_format(message, category, filename, lineno, line)

    warnings.formatwarning = user_facing
    try:
        result = args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        # Input problems: say what is wrong with which file, without a traceback.
        print(f"nnunet-ext {args.command}: error: {error}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = default_format
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
