"""nnU-Net trainer subclasses of nnunet-ext, found by the stock ``nnUNetv2_train -tr NAME`` and ``nnUNetv2_predict``.

Every trainer that the stock commands should find is listed in :data:`TRAINER_MODULES` (and so in ``__all__``); the
shim module in ``nnunet_search_path/`` exposes them for nnU-Net's ``nnUNet_extTrainer`` lookup. Names start with
``nnUNetTrainer``, contain no ``__`` and differ from nnU-Net's own (checked by the tests).

Trainers are imported on first access (PEP 562), so that importing this package stays cheap (``nnunet-ext --help``)
and nnU-Net's lookup of one trainer imports only that trainer's module.
"""
from __future__ import annotations

import importlib

# trainer name -> module of nnunet_ext.trainers defining it
TRAINER_MODULES = {
    "nnUNetTrainerCPUDemo": "cpu",
    "nnUNetTrainerCPUSmoke": "cpu",
    "nnUNetTrainerCPUSEM": "cpu",
    "nnUNetTrainerVCVRL_CPUSEM": "cpu_vcvrl",
    "nnUNetTrainerVCVRL": "vcvrl",
    "nnUNetTrainerVCVRL_CPUSmoke": "vcvrl",
    "nnUNetTrainerVCVRL_hardAnchors": "vcvrl",
    "nnUNetTrainerVCVRL_noMomentum": "vcvrl",
    "nnUNetTrainerVCVRL_randomAnchors": "vcvrl",
    "nnUNetTrainerVCVRL_relaxedDescriptor": "vcvrl",
    "nnUNetTrainerVCVRL_voxelPairs": "vcvrl",
    "nnUNetTrainerEMSAM": "transformers",
    "nnUNetTrainerEMSAM_VCVRL": "transformers",
    "nnUNetTrainerViT": "transformers",
    "nnUNetTrainerViT3DInflated": "transformers",
    "nnUNetTrainerViT3DInflatedAverage": "transformers",
    "nnUNetTrainerViTBEiT": "transformers",
    "nnUNetTrainerViTDINO": "transformers",
    "nnUNetTrainerViTMAE": "transformers",
    "nnUNetTrainerViTPretrained": "transformers",
}

__all__ = list(TRAINER_MODULES)


def __getattr__(name: str):
    if name in TRAINER_MODULES:
        return getattr(importlib.import_module(f"{__name__}.{TRAINER_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
