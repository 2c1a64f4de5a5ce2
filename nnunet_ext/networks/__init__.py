"""Standalone networks of nnunet-ext, buildable without a trainer (nnU-Net builds them from plans).

* :class:`~nnunet_ext.networks.unetr.ViTUNETR`: SAM / ViT / BEiT encoder (2D) or ViT (3D) with a UNETR decoder;
* :mod:`~nnunet_ext.networks.pretrained`: local pretrained weights (SAM, timm, DINO, MAE, BEiT) into its encoder;
* :mod:`~nnunet_ext.networks.inflation`: 2D-to-3D inflation of ViT weights.

Imports are lazy so that ``import nnunet_ext.networks`` stays cheap.
"""
from __future__ import annotations

__all__ = ["ViTUNETR", "ViTEncoder", "VisionTransformer3d", "BACKBONES", "default_decoder_strides",
           "evenly_spaced_blocks", "load_pretrained_encoder", "inflate_patch_embedding",
           "inflate_position_embedding", "inflate_vit_state_dict"]

_WHERE = {
    "ViTUNETR": "unetr", "default_decoder_strides": "unetr",
    "ViTEncoder": "vit_encoders", "VisionTransformer3d": "vit_encoders", "BACKBONES": "vit_encoders",
    "evenly_spaced_blocks": "vit_encoders",
    "load_pretrained_encoder": "pretrained",
    "inflate_patch_embedding": "inflation", "inflate_position_embedding": "inflation",
    "inflate_vit_state_dict": "inflation",
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib
        return getattr(importlib.import_module(f"nnunet_ext.networks.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'nnunet_ext.networks' has no attribute {name!r}")
