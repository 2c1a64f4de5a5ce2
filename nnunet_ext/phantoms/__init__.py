"""Synthetic myelinated-axon phantoms with exactly known truth, written as BIDS microscopy datasets;
``nnunet-ext phantoms``.

Modules
-------
geometry
    Fibre ellipses (axon and myelin from a g-ratio), their rasterisation and their placement without overlap.
rendering
    Grey levels and textures of each contrast (TEM, SEM, bright-field) over the masks.
generator
    :class:`Phantom` and :func:`generate_phantom`: one image with its masks and per-axon truth table.
bids_writer
    :func:`write_bids_phantom_dataset`: phantoms as a BIDS microscopy dataset laid out like AxonDeepSeg's.
preview
    :func:`save_phantom_montage`: images above their truth, as one PNG.
cli
    ``nnunet-ext phantoms`` (argparse only at import time).

The names below are imported on first use (PEP 562): ``nnunet-ext --help`` imports this package for the
subcommand's options, and the generator's imports (numpy, scipy, pandas) would slow it down.
"""
from __future__ import annotations

import importlib

#: Imaging contrasts the phantoms imitate (their BIDS modality suffixes); their looks are in ``rendering.STYLES``.
CONTRASTS = ("TEM", "SEM", "BF")

_EXPORTS = {
    "Phantom": "generator",
    "TRUTH_COLUMNS": "generator",
    "generate_phantom": "generator",
    "write_bids_phantom_dataset": "bids_writer",
    "save_phantom_montage": "preview",
}

__all__ = ["CONTRASTS", *sorted(_EXPORTS)]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
