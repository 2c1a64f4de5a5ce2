"""Shim that nnU-Net imports as a top-level module when it scans ``nnUNet_extTrainer``.

nnU-Net removes this module from ``sys.modules`` after the lookup; the trainers themselves are imported by absolute
import from ``nnunet_ext.trainers``, so the class nnU-Net uses is the very object defined there.
"""
from nnunet_ext.trainers import *  # noqa: F401,F403
from nnunet_ext.trainers import __all__  # noqa: F401
