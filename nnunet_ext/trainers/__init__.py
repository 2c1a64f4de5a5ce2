"""nnU-Net trainer subclasses of nnunet-ext, found by the stock ``nnUNetv2_train -tr NAME`` and ``nnUNetv2_predict``.

Every trainer that the stock commands should find is exported here (``__all__``); the shim module in
``nnunet_search_path/`` re-exports this list for nnU-Net's ``nnUNet_extTrainer`` lookup. Names start with
``nnUNetTrainer``, contain no ``__`` and differ from nnU-Net's own (checked by the tests).
"""
from nnunet_ext.trainers.cpu import nnUNetTrainerCPUDemo, nnUNetTrainerCPUSmoke

__all__ = [
    "nnUNetTrainerCPUDemo",
    "nnUNetTrainerCPUSmoke",
]
