"""Vision-transformer encoders that return feature maps from chosen blocks, in 2D (timm models) or 3D.

The 2D encoders are timm's own models (``VisionTransformer`` for ViT-B/16 from scratch and the timm, DINO and MAE
releases; ``VisionTransformerSAM`` for SAM's image encoder; ``Beit`` for BEiT), built with ``pretrained=False`` so
nothing is ever downloaded. The 3D encoder is :class:`VisionTransformer3d`, a plain ViT over 3D patches whose
parameters carry timm's ``VisionTransformer`` names, so that a 2D checkpoint maps onto it tensor by tensor (only
``patch_embed.proj.weight`` and ``pos_embed`` change shape, see :mod:`nnunet_ext.networks.inflation`).
"""
from __future__ import annotations

import copy
import math
from functools import partial
from typing import Sequence

import torch
from torch import nn

# name -> (family, constructor arguments). Families: "sam" (windowed attention with a few global blocks and
# relative position, 2D only), "vit" (plain ViT: timm/DINO/MAE weights, 2D or 3D), "beit" (relative position bias and
# layer scale, 2D only). The SAM configurations are those of segment-anything's build_sam_vit_{b,l,h}.
BACKBONES: dict[str, tuple[str, dict]] = {
    "sam_vit_b": ("sam", dict(embed_dim=768, depth=12, num_heads=12, window_size=14,
                              global_attn_indexes=(2, 5, 8, 11))),
    "sam_vit_l": ("sam", dict(embed_dim=1024, depth=24, num_heads=16, window_size=14,
                              global_attn_indexes=(5, 11, 17, 23))),
    "sam_vit_h": ("sam", dict(embed_dim=1280, depth=32, num_heads=16, window_size=14,
                              global_attn_indexes=(7, 15, 23, 31))),
    "vit_b": ("vit", dict(embed_dim=768, depth=12, num_heads=12)),
    "vit_l": ("vit", dict(embed_dim=1024, depth=24, num_heads=16)),
    "beit_b": ("beit", dict(embed_dim=768, depth=12, num_heads=12, init_values=0.1)),
}


#: LayerNorm epsilon of segment-anything's image encoder (``partial(torch.nn.LayerNorm, eps=1e-6)`` in build_sam);
#: timm's ViT and BEiT use 1e-6 too, timm's ``VisionTransformerSAM`` defaults to torch's 1e-5
SAM_EPS = 1e-6


def backbone_config(backbone: str, overrides: dict | None = None) -> tuple[str, dict]:
    """Family and constructor arguments of a named backbone, with ``overrides`` applied (e.g. a tiny test size)."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    family, kwargs = BACKBONES[backbone]
    kwargs = {**copy.deepcopy(kwargs), **(overrides or {})}
    if "global_attn_indexes" in kwargs:
        kwargs["global_attn_indexes"] = tuple(int(i) for i in kwargs["global_attn_indexes"])
    return family, kwargs


def evenly_spaced_blocks(depth: int, count: int) -> list[int]:
    """1-based indices of ``count`` blocks evenly spaced over ``depth``, ending with the last block.

    For ViT-B (depth 12) and 4 taps: ``[3, 6, 9, 12]``, UNETR's choice. Shallow test models repeat blocks
    (depth 2, 4 taps: ``[1, 1, 2, 2]``).
    """
    if depth < 1 or count < 1:
        raise ValueError(f"depth and count must be positive, got depth={depth}, count={count}")
    return [max(1, round(depth * (k + 1) / count)) for k in range(count)]


class PatchEmbed3d(nn.Module):
    """Non-overlapping 3D patches to tokens: one Conv3d with kernel = stride = ``patch_size``."""

    def __init__(self, input_shape: Sequence[int], patch_size: Sequence[int], in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = tuple(int(p) for p in patch_size)
        self.grid_size = tuple(int(s) // p for s, p in zip(input_shape, self.patch_size))
        self.num_patches = math.prod(self.grid_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, C), tokens in (d, h, w) raster order


class VisionTransformer3d(nn.Module):
    """Plain ViT on 3D patches with timm ``VisionTransformer`` parameter names.

    ``cls_token``, ``pos_embed`` (class token first, then the ``D' x H' x W'`` grid in raster order),
    ``patch_embed.proj`` (a Conv3d) and ``blocks.<i>`` (timm's ``vision_transformer.Block``) match a 2D timm ViT's
    state dict, so 2D weights load after :func:`~nnunet_ext.networks.inflation.inflate_vit_state_dict`. There is no
    final norm and no head: the UNETR decoder reads block outputs.
    """

    def __init__(self, input_shape: Sequence[int], patch_size: Sequence[int], in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, class_token: bool = True, drop_path_rate: float = 0.0):
        from timm.layers import trunc_normal_
        from timm.models._manipulate import named_apply
        from timm.models.vision_transformer import Block, init_weights_vit_timm

        super().__init__()
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed3d(input_shape, patch_size, in_chans, embed_dim)
        self.num_prefix_tokens = 1 if class_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + self.patch_embed.num_patches,
                                                  embed_dim))
        rates = [drop_path_rate * i / max(1, depth - 1) for i in range(depth)]  # timm's linear decay rule
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=rates[i])
            for i in range(depth)])
        # timm's ViT initialisation, so that training from scratch starts as timm's 2D ViT would
        trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        named_apply(init_weights_vit_timm, self)

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
        """Outputs of the 0-based blocks ``indices`` (sorted, unique) as ``(B, C, D', H', W')`` maps."""
        batch = x.shape[0]
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(batch, -1, -1), x], dim=1)
        x = x + self.pos_embed
        wanted = set(indices)
        outputs = []
        for i, block in enumerate(self.blocks[:max(indices) + 1]):
            x = block(x)
            if i in wanted:
                tokens = x[:, self.num_prefix_tokens:]
                outputs.append(tokens.transpose(1, 2).reshape(batch, self.embed_dim, *self.patch_embed.grid_size))
        return outputs


class ViTEncoder(nn.Module):
    """A transformer backbone (``self.vit``) returning the feature maps of chosen blocks.

    Parameters
    ----------
    backbone : str
        A key of :data:`BACKBONES` (``sam_vit_b``, ``vit_b``, ``beit_b``...).
    input_shape : sequence of int
        Spatial size of the network input (nnU-Net's patch size); divisible by ``patch_embed_size``.
    patch_embed_size : sequence of int
        Token size per axis. 2D backbones need square tokens (``(16, 16)``); 3D ones take ``(k_d, 16, 16)``.
    in_chans : int
        Channels of the patch embedding (3 to keep pretrained RGB weights as they are).
    taps : sequence of int
        1-based blocks whose outputs are returned, in this order (repeats allowed).
    backbone_kwargs : dict, optional
        Overrides of the backbone's constructor arguments (embed_dim, depth, num_heads, window_size...).
    drop_path_rate : float
        Stochastic depth of the transformer blocks.
    """

    def __init__(self, backbone: str, input_shape: Sequence[int], patch_embed_size: Sequence[int], in_chans: int,
                 taps: Sequence[int], backbone_kwargs: dict | None = None, drop_path_rate: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.family, kwargs = backbone_config(backbone, backbone_kwargs)
        self.embed_dim = int(kwargs["embed_dim"])
        self.depth = int(kwargs["depth"])
        self.spatial_dims = len(input_shape)
        input_shape = tuple(int(s) for s in input_shape)
        patch_embed_size = tuple(int(p) for p in patch_embed_size)
        if len(patch_embed_size) != self.spatial_dims:
            raise ValueError(f"patch_embed_size {patch_embed_size} and input_shape {input_shape} differ in dimension")
        bad = [s for s, p in zip(input_shape, patch_embed_size) if s % p]
        if bad:
            raise ValueError(f"input_shape {input_shape} is not divisible by the token size {patch_embed_size}")
        if any(not 1 <= t <= self.depth for t in taps):
            raise ValueError(f"skip blocks {list(taps)} must lie in 1..{self.depth} (the backbone's depth)")
        self.taps = [int(t) for t in taps]
        # channels of each returned map, as nnU-Net's encoders list theirs (read by nnUNetTrainerVCVRL: its default
        # encoder_stage -1 is the last tapped block, the bottleneck of the UNETR decoder)
        self.output_channels = [self.embed_dim] * len(self.taps)
        self.grid_size = tuple(s // p for s, p in zip(input_shape, patch_embed_size))
        self._unique_taps = sorted({t - 1 for t in self.taps})

        if self.spatial_dims == 3:
            if self.family != "vit":
                raise ValueError(f"backbone {backbone!r} ({self.family}) is 2D only; 3D networks need a plain ViT "
                                 f"(vit_b, vit_l), whose 2D weights can be inflated")
            self.vit = VisionTransformer3d(input_shape, patch_embed_size, in_chans,
                                           drop_path_rate=drop_path_rate, **kwargs)
            return
        if self.spatial_dims != 2:
            raise ValueError(f"input_shape {input_shape} must be 2D or 3D")
        if patch_embed_size[0] != patch_embed_size[1]:
            raise ValueError(f"2D backbones need square tokens, got patch_embed_size {patch_embed_size}")
        common = dict(img_size=input_shape, patch_size=patch_embed_size[0], in_chans=in_chans, num_classes=0,
                      drop_path_rate=drop_path_rate, **kwargs)
        if self.family == "sam":
            from timm.models.vision_transformer_sam import VisionTransformerSAM
            # neck_chans=0: no SAM neck (EM-SAM drops it); the final LayerNorm2d that replaces it is pruned below.
            # LayerNorm eps 1e-6 as segment-anything's build_sam (timm's VisionTransformerSAM defaults to 1e-5)
            vit = VisionTransformerSAM(use_rel_pos=True, neck_chans=0, norm_layer=partial(nn.LayerNorm, eps=SAM_EPS),
                                       **common)
        elif self.family == "vit":
            from timm.models.vision_transformer import VisionTransformer
            vit = VisionTransformer(global_pool="", **common)  # no pooling: the head is pruned anyway
        else:
            from timm.models.beit import Beit
            vit = Beit(use_abs_pos_emb=False, use_rel_pos_bias=True, **common)
        # drop the head, the final norm and any block after the last tap: unused parameters would be trained for
        # nothing (and break DDP)
        vit.prune_intermediate_layers(self._unique_taps, prune_norm=True, prune_head=True)
        self.vit = vit

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps ``(B, embed_dim, *grid)`` of the tapped blocks, in the order of ``taps``."""
        if self.spatial_dims == 3:
            features = self.vit.forward_intermediates(x, self._unique_taps)
        else:
            features = self.vit.forward_intermediates(x, indices=self._unique_taps, norm=False,
                                                      output_fmt="NCHW", intermediates_only=True)
        by_block = dict(zip(self._unique_taps, features))
        return [by_block[t - 1] for t in self.taps]
