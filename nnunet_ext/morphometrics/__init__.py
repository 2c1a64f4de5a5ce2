"""Axon and myelin morphometrics: per-axon (AxonDeepSeg 5.5-compatible) and aggregate metrics.

Public API
----------
masks_from_label_image(label, myelin_label=1, axon_label=2) -> (axon_mask, myelin_mask)
axon_morphometrics(axon_mask, myelin_mask, pixel_size_um, axon_shape="circle", image_name=None) -> DataFrame
aggregate_morphometrics(axon_mask, myelin_mask, pixel_size_um, per_axon=None, roi_mask=None) -> dict

See ``docs/morphometrics.md`` for definitions and the deliberate differences from AxonDeepSeg.
"""
from nnunet_ext.morphometrics.aggregate import AGGREGATE_KEYS, aggregate_morphometrics
from nnunet_ext.morphometrics.axon import (
    ADS_COLUMNS,
    ADS_DIFFERENCES,
    COLUMNS,
    as_binary_mask,
    axon_morphometrics,
    masks_from_label_image,
)

__all__ = [
    "ADS_COLUMNS",
    "ADS_DIFFERENCES",
    "AGGREGATE_KEYS",
    "COLUMNS",
    "aggregate_morphometrics",
    "as_binary_mask",
    "axon_morphometrics",
    "masks_from_label_image",
]
