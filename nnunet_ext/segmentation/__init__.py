"""``nnunet-ext segment``: trained nnU-Net models on images, folders, BIDS datasets and whole slides.

Modules
-------
predictor
    Loading a trained-model folder with nnU-Net's own predictor (folds and checkpoint as ``nnUNetv2_predict``) and
    one-piece prediction of images that fit in memory.
slide_tiling, slide_normalisation, slide_prediction
    Block-wise, resumable whole-slide prediction into chunked Zarr on Dask, identical to one-piece prediction: which
    tiles a block runs, the whole-slide normalisation statistics, and running the blocks.
segment_files
    Inputs (image, folder, BIDS, slides), AxonDeepSeg-named outputs, and the chained morphometrics.

The names below are imported on first use, so that importing this package (as ``nnunet-ext --help`` does through
its CLI module) stays instant: nnU-Net, torch and the morphometrics load only when something is segmented.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "SegmentationInput": "nnunet_ext.segmentation.segment_files",
    "discover_segmentation_inputs": "nnunet_ext.segmentation.segment_files",
    "segment_inputs": "nnunet_ext.segmentation.segment_files",
    "write_ads_masks": "nnunet_ext.segmentation.segment_files",
    "ModelSpec": "nnunet_ext.segmentation.predictor",
    "load_predictor": "nnunet_ext.segmentation.predictor",
    "predict_image": "nnunet_ext.segmentation.predictor",
    "resolve_model_folder": "nnunet_ext.segmentation.predictor",
    "segment_slide": "nnunet_ext.segmentation.slide_prediction",
    "SlideSource": "nnunet_ext.io.slides",
    "read_labels": "nnunet_ext.io.slides",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
