"""nnunet-ext: nnU-Net v2 extensions for generalist axon and myelin segmentation in microscopy.

Subpackages, from the bottom up (each imports only those listed before it)
-------------------------------------------------------------------------
io
    Every rule about microscopy files: images and label maps, BIDS and AxonDeepSeg conventions, pixel sizes, whole
    slides, SWC, atomic writes.
dataset_conversion
    Sources (BIDS microscopy, AxonCallosumEM, MTNeuro, BigNeuron) to nnU-Net raw format through one shared writer;
    aggregation into one generalist dataset.
phantoms
    Synthetic myelinated-axon phantoms with exactly known truth, as BIDS datasets.
networks
    Standalone networks: ViT/SAM encoders with a UNETR decoder, 2D-to-3D inflation, pretrained weights.
nnunet
    nnU-Net plumbing: ``nnUNet_extTrainer`` and its folders, running its commands, plans variants.
trainers
    nnU-Net trainer subclasses, found by the stock ``nnUNetv2_train``/``nnUNetv2_predict`` through
    ``nnUNet_extTrainer`` (see :mod:`nnunet_ext.nnunet.environment`).
morphometrics
    Per-axon and aggregate axon/myelin measurements (g-ratio, axon diameter, AVF, MVF, density), images to slides.
segmentation
    ``nnunet-ext segment``: nnU-Net prediction of images, BIDS datasets and whole slides beyond memory.
evaluation
    Segmentation metrics (Dice, IoU, F1, HD95) and neuron tracing metrics.
experiment, report
    Workflows: the generalist-versus-dedicated experiment; study reports per subject and group.
"""

__version__ = "0.1.0"
