"""Command-line registration of dataset conversion: ``nnunet-ext convert <source>`` and ``nnunet-ext aggregate``."""
from __future__ import annotations

import importlib

# Modules that add a source to ``nnunet-ext convert`` through ``register_convert_cli(convert_subparsers)``.
CONVERTER_MODULES = (
    "nnunet_ext.dataset_conversion.bids_microscopy",
    "nnunet_ext.dataset_conversion.axoncallosum",
    "nnunet_ext.dataset_conversion.mtneuro",
    "nnunet_ext.dataset_conversion.bigneuron",
)


def register_cli(subparsers) -> None:
    convert = subparsers.add_parser(
        "convert", help="convert a microscopy source to an nnU-Net raw dataset (with manifest.csv)",
        description="Convert a source dataset to nnU-Net raw format through one shared writer: imagesTr/labelsTr/"
                    "imagesTs(/labelsTs), dataset.json, a manifest.csv of where every case came from, and "
                    "splits_final.json where the source fixes a validation set. Nothing is written unless the "
                    "whole conversion succeeds, and an existing dataset is replaced only with --overwrite.")
    sources = convert.add_subparsers(dest="source", metavar="SOURCE", required=True)
    for module_name in CONVERTER_MODULES:
        importlib.import_module(module_name).register_convert_cli(sources)
    importlib.import_module("nnunet_ext.dataset_conversion.aggregate_datasets").register_cli(subparsers)
