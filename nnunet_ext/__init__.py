"""nnunet-ext: nnU-Net v2 extensions for generalist axon and myelin segmentation in microscopy.

Subpackages
-----------
dataset_conversion
    Sources (BIDS microscopy, synthetic phantoms, ...) to nnU-Net raw format through one shared writer.
trainers
    nnU-Net trainer subclasses, found by the stock ``nnUNetv2_train``/``nnUNetv2_predict`` through
    ``nnUNet_extTrainer`` (see :mod:`nnunet_ext.nnunet.environment`).
morphometrics
    Per-axon and aggregate axon/myelin measurements (g-ratio, axon diameter, AVF, MVF, density).
evaluation
    Segmentation metrics.
"""

__version__ = "0.1.0"
