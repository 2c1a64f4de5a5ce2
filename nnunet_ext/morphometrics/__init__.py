"""Axon and myelin morphometrics: per-axon (AxonDeepSeg 5.5-compatible) and aggregate metrics.

Public API
----------
masks_from_label_image(label, myelin_label=1, axon_label=2) -> (axon_mask, myelin_mask)
axon_morphometrics(axon_mask, myelin_mask, pixel_size_um, axon_shape="circle", image_name=None) -> DataFrame
aggregate_morphometrics(axon_mask, myelin_mask, pixel_size_um, per_axon=None, roi_mask=None) -> dict

See ``docs/morphometrics.md`` for definitions and the deliberate differences from AxonDeepSeg.

The names below are imported on first use, so that importing this package (as ``nnunet-ext --help`` does) stays
instant: pandas, SciPy and the numba kernels load only when something is measured.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "ADS_COLUMNS": "axon",
    "ADS_DIFFERENCES": "axon",
    "COLUMNS": "axon",
    "as_binary_mask": "axon",
    "axon_morphometrics": "axon",
    "masks_from_label_image": "axon",
    "AGGREGATE_KEYS": "aggregate_metrics",
    "aggregate_morphometrics": "aggregate_metrics",
    "DEFAULT_POSTPROCESS": "postprocess",
    "postprocess_masks": "postprocess",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
