"""``nnunet-ext segment``: trained nnU-Net models on images, folders, BIDS datasets and whole slides.

Modules
-------
predictor
    Loading a trained-model folder with nnU-Net's own predictor (folds and checkpoint as ``nnUNetv2_predict``) and
    one-piece prediction of images that fit in memory.
slides
    Block-wise, resumable whole-slide prediction into chunked Zarr on Dask, identical to one-piece prediction.
batch
    Inputs (image, folder, BIDS, slides), AxonDeepSeg-named outputs, and the chained morphometrics.
"""
from nnunet_ext.segmentation.segment_files import (SegmentationInput, discover_segmentation_inputs, segment_inputs,
                                           write_ads_masks)
from nnunet_ext.segmentation.predictor import ModelSpec, load_predictor, predict_image, resolve_model_folder
from nnunet_ext.io.slides import SlideSource, read_labels
from nnunet_ext.segmentation.slide_prediction import segment_slide

__all__ = ["ModelSpec", "SegmentationInput", "SlideSource", "discover_segmentation_inputs", "load_predictor",
           "predict_image", "read_labels", "resolve_model_folder", "segment_inputs", "segment_slide",
           "write_ads_masks"]
