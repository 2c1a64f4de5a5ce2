"""Evaluation: segmentation metrics against nnU-Net-format references, and neuron tracing distances.

Modules
-------
segmentation_metrics
    Dice, IoU, F1, precision, recall, HD95 per case and class (pure functions on arrays).
folder_evaluation
    Scoring a folder of predictions against references (``nnunet-ext evaluate``): pairing, labels, CSV, plot.
fibre_detection
    Fibre instances (the morphometrics' watershed), one-to-one matching as stardist's, ASTIH's aggregation (pure).
morphometric_agreement
    Agreement of predicted with manual morphometrics: per fibre (bias, limits of agreement, r, ICC), image, subject.
fibre_folders
    ``nnunet-ext evaluate --fibres / --morphometrics``: ASTIH, BIDS and nnU-Net layouts, CSVs and figures.
tracing_metrics
    Vaa3D ``neuron_distance`` scores (ESA, DSA, PDS) between SWC reconstructions (``nnunet-ext tracing-metrics``).

The names below are imported on first use, so that importing this package (as ``nnunet-ext --help`` does) stays
instant: nnU-Net, torch and MONAI load only when a metric is computed.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "dice_per_class": "segmentation_metrics",
    "hd95": "segmentation_metrics",
    "metrics_per_class": "segmentation_metrics",
    "evaluate_folder": "folder_evaluation",
    "per_class_means": "folder_evaluation",
    "mean_iou": "folder_evaluation",
    "dice_scores_on_folder": "folder_evaluation",
    "fibre_instances": "fibre_detection",
    "match_instances": "fibre_detection",
    "match_sweep": "fibre_detection",
    "aggregate_detection": "fibre_detection",
    "compare_image": "morphometric_agreement",
    "agreement_statistics": "morphometric_agreement",
    "neuron_distance": "tracing_metrics",
    "neuron_distance_on_folders": "tracing_metrics",
    "TracingMetrics": "tracing_metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
