"""ViT encoder + UNETR convolutional decoder, 2D or 3D, buildable from nnU-Net plans alone.

:class:`ViTUNETR` is what an ``nnUNetPlans_<backbone>`` plans file names as its ``network_class_name`` (see
:mod:`nnunet_ext.nnunet.plans_vit`); nnU-Net's ``get_network_from_plans`` builds it with
``input_channels``, ``num_classes``, ``deep_supervision`` and the plans' ``arch_kwargs``, so ``nnUNetv2_predict``
rebuilds the very network that was trained. The decoder follows UNETR (Hatamizadeh et al., WACV 2022) and MONAI's
``UNETR`` blocks: the transformer's token maps from evenly spaced blocks are brought up to 1/8, 1/4 and 1/2 of the
input resolution by transposed convolutions, a full-resolution convolutional stem sees the raw input, and
``UnetrUpBlock`` stages merge them from coarse to fine.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetResBlock, get_conv_layer

from nnunet_ext.networks.vit_encoders import ViTEncoder, backbone_config, evenly_spaced_blocks

INPUT_CHANNEL_MODES = ("repeat", "sum")


def default_decoder_strides(patch_embed_size: Sequence[int], levels: int = 4) -> list[list[int]]:
    """nnU-Net-style ``strides`` of the decoder: ``[1, ...]`` for the stem, then one up-sampling factor per level.

    Per axis, the factors multiply to the token size. Factors of 2 go to the coarsest levels first and any remainder
    (an odd token depth such as 5) to the coarsest level, so a thin axis keeps full resolution in the fine levels,
    as nnU-Net pools an anisotropic axis late. Token 16: ``[1, 2, 2, 2, 2]``; token 5: ``[1, 1, 1, 1, 5]``;
    token 4: ``[1, 1, 1, 2, 2]`` (listed from full resolution to the token grid).
    """
    per_axis = []
    for size in patch_embed_size:
        size = int(size)
        twos = 0
        while size % 2 == 0 and twos < levels:
            size //= 2
            twos += 1
        coarse_first = [2 if i < twos else 1 for i in range(levels)]
        coarse_first[0] *= size
        per_axis.append(coarse_first[::-1])  # fine -> coarse
    return [[1] * len(patch_embed_size)] + [[axis[level] for axis in per_axis] for level in range(levels)]


class ProgressiveUpsampling(nn.Module):
    """UNETR's projection of a token map to a finer level: MONAI's ``UnetrPrUpBlock`` with a factor per step.

    ``UnetrPrUpBlock`` uses one up-sampling factor for every step; anisotropic 3D tokens (5 x 16 x 16) need a
    different factor per step, so this chains the same parts (a transposed convolution, then transposed convolution +
    residual block per further step) from MONAI's own building blocks.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, factors: Sequence[Sequence[int]],
                 norm_name: str | tuple, res_block: bool = True):
        super().__init__()
        block = UnetResBlock if res_block else UnetBasicBlock
        self.transp_conv_init = get_conv_layer(spatial_dims, in_channels, out_channels, kernel_size=factors[0],
                                               stride=factors[0], conv_only=True, is_transposed=True)
        self.blocks = nn.ModuleList([
            nn.Sequential(
                get_conv_layer(spatial_dims, out_channels, out_channels, kernel_size=f, stride=f, conv_only=True,
                               is_transposed=True),
                block(spatial_dims, out_channels, out_channels, kernel_size=3, stride=1, norm_name=norm_name))
            for f in factors[1:]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.transp_conv_init(x)
        for block in self.blocks:
            x = block(x)
        return x


class UNETRDecoder(nn.Module):
    """Convolutional decoder over token maps with deep-supervision heads (``self.deep_supervision`` as nnU-Net's)."""

    def __init__(self, spatial_dims: int, input_channels: int, num_classes: int, embed_dim: int,
                 strides: Sequence[Sequence[int]], features: int, norm_name: str | tuple, res_block: bool,
                 deep_supervision: bool):
        super().__init__()
        self.deep_supervision = deep_supervision
        levels = len(strides) - 1
        channels = [features * 2 ** level for level in range(levels)] + [embed_dim]
        # level 0: full-resolution convolutional stem on the raw input (UNETR's encoder1)
        self.stem = UnetrBasicBlock(spatial_dims, input_channels, channels[0], kernel_size=3, stride=1,
                                    norm_name=norm_name, res_block=res_block)
        # levels 1..levels-1: token maps brought up through the levels above them (UNETR's encoder2..4)
        self.skip_projections = nn.ModuleList([
            ProgressiveUpsampling(spatial_dims, embed_dim, channels[level],
                                  [strides[k] for k in range(levels, level, -1)], norm_name, res_block)
            for level in range(1, levels)])
        # up_blocks[level] merges level+1 into level (UNETR's decoder2..5)
        self.up_blocks = nn.ModuleList([
            UnetrUpBlock(spatial_dims, channels[level + 1], channels[level], kernel_size=3,
                         upsample_kernel_size=strides[level + 1], norm_name=norm_name, res_block=res_block)
            for level in range(levels)])
        self.seg_layers = nn.ModuleList([UnetOutBlock(spatial_dims, channels[level], num_classes)
                                         for level in range(levels)])

    def forward(self, image: torch.Tensor, token_maps: Sequence[torch.Tensor]):
        levels = len(self.up_blocks)
        skips = [self.stem(image)] + [proj(t) for proj, t in zip(self.skip_projections, token_maps[:-1])]
        x = token_maps[-1]
        outputs = []
        for level in range(levels - 1, -1, -1):
            x = self.up_blocks[level](x, skips[level])
            if self.deep_supervision or level == 0:
                outputs.append(self.seg_layers[level](x))
        outputs = outputs[::-1]  # full resolution first, as nnU-Net's deep-supervision loss expects
        return outputs if self.deep_supervision else outputs[0]


class ViTUNETR(AbstractDynamicNetworkArchitectures):
    """Transformer encoder (SAM, ViT, BEiT; 2D, or 3D ViT) with a UNETR decoder, for nnU-Net.

    Parameters
    ----------
    input_channels, num_classes : int
        Set by nnU-Net from the dataset.
    input_shape : sequence of int
        Patch size the network runs on (plans' ``patch_size``); divisible by ``patch_embed_size``.
    backbone : str
        Key of :data:`nnunet_ext.networks.vit_encoders.BACKBONES`, e.g. ``sam_vit_b`` (EM-SAM), ``vit_b``, ``beit_b``.
    patch_embed_size : sequence of int, optional
        Token size per axis, default 16 on every axis. 3D may use a thinner depth, e.g. ``(5, 16, 16)``.
    strides : list of list of int, optional
        Decoder levels as nnU-Net writes them: ``[1, ...]`` then the up-sampling factor of each level, fine to coarse;
        per axis their product is the token size. Default :func:`default_decoder_strides` (4 levels). nnU-Net's
        trainer derives its deep-supervision scales from these.
    skip_blocks : sequence of int, optional
        1-based transformer blocks feeding the levels from fine to coarse, the last one the bottleneck; default evenly
        spaced (ViT-B: 3, 6, 9, 12).
    decoder_features : int
        Channels of the full-resolution level; doubled at each coarser level (UNETR's ``feature_size``).
    input_channel_mode : {"repeat", "sum"}
        "repeat": the patch embedding keeps 3 (RGB) input channels and a grey input is repeated to 3 channels.
        "sum": the patch embedding takes ``input_channels`` directly (pretrained RGB kernels are summed to grey when
        loaded, timm's ``adapt_input_conv``).
    backbone_kwargs : dict, optional
        Overrides of the backbone's size (embed_dim, depth, num_heads, window_size, global_attn_indexes...).
    drop_path_rate : float
        Stochastic depth in the transformer.
    norm_name : str
        MONAI norm of the decoder (``"instance"``, nnU-Net's and UNETR's default).
    res_block : bool
        Residual decoder blocks (UNETR's default).
    deep_supervision : bool
        Return one output per decoder level (full resolution first) instead of the full-resolution one only.
    """

    def __init__(self, input_channels: int, num_classes: int, input_shape: Sequence[int], backbone: str = "vit_b",
                 patch_embed_size: Sequence[int] | None = None, strides: Sequence[Sequence[int]] | None = None,
                 skip_blocks: Sequence[int] | None = None, decoder_features: int = 16,
                 input_channel_mode: str = "repeat", backbone_kwargs: dict | None = None,
                 drop_path_rate: float = 0.0, norm_name: str = "instance", res_block: bool = True,
                 deep_supervision: bool = True):
        super().__init__()
        spatial_dims = len(input_shape)
        patch_embed_size = list(patch_embed_size) if patch_embed_size is not None else [16] * spatial_dims
        strides = [list(s) for s in strides] if strides is not None else default_decoder_strides(patch_embed_size)
        self._check_strides(strides, patch_embed_size)
        levels = len(strides) - 1
        if input_channel_mode not in INPUT_CHANNEL_MODES:
            raise ValueError(f"input_channel_mode must be one of {INPUT_CHANNEL_MODES}, got {input_channel_mode!r}")
        if input_channel_mode == "repeat" and input_channels not in (1, 3):
            raise ValueError(f"input_channel_mode 'repeat' takes 1 or 3 input channels, the data has "
                             f"{input_channels}; use 'sum' (patch embedding on {input_channels} channels)")
        _, kwargs = backbone_config(backbone, backbone_kwargs)
        if skip_blocks is None:
            skip_blocks = evenly_spaced_blocks(int(kwargs["depth"]), levels)
        if len(skip_blocks) != levels:
            raise ValueError(f"skip_blocks {list(skip_blocks)} must name {levels} blocks, one per decoder level")
        self.input_channels = input_channels
        self.input_channel_mode = input_channel_mode
        self.strides = strides
        self.encoder = ViTEncoder(backbone, input_shape, patch_embed_size,
                                  3 if input_channel_mode == "repeat" else input_channels, skip_blocks,
                                  backbone_kwargs, drop_path_rate)
        self.decoder = UNETRDecoder(spatial_dims, input_channels, num_classes, self.encoder.embed_dim, strides,
                                    decoder_features, norm_name, res_block, deep_supervision)
        # keys read by nnU-Net's pretraining tools (AbstractDynamicNetworkArchitectures)
        self.key_to_encoder = "encoder.vit"
        self.key_to_stem = "encoder.vit.patch_embed"
        self.keys_to_in_proj = ("encoder.vit.patch_embed.proj",)
        self.key_to_lpe = "encoder.vit.pos_embed" if getattr(self.encoder.vit, "pos_embed", None) is not None \
            else None

    @staticmethod
    def _check_strides(strides: list[list[int]], patch_embed_size: list[int]) -> None:
        if len(strides) < 2 or any(len(s) != len(patch_embed_size) for s in strides):
            raise ValueError(f"strides {strides} must list at least 2 levels of {len(patch_embed_size)} factors")
        if any(f != 1 for f in strides[0]):
            raise ValueError(f"strides {strides}: the first level is the full-resolution stem and must be all 1")
        product = np.prod(np.array(strides), axis=0).tolist()
        if product != [int(p) for p in patch_embed_size]:
            raise ValueError(f"strides {strides} multiply to {product} per axis, but the token size is "
                             f"{list(patch_embed_size)}")

    def forward(self, x: torch.Tensor):
        encoder_input = x
        if self.input_channel_mode == "repeat" and self.input_channels == 1:
            encoder_input = x.expand(-1, 3, *x.shape[2:])
        return self.decoder(x, self.encoder(encoder_input))
