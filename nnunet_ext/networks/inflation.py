"""2D-to-3D weight inflation of a plain ViT (Zhang et al., ML4H 2022; Cheng et al., "Boosting 3D neuron
segmentation with a 2D ViT pretrained on natural images").

The 2D patch embedding kernel ``(C_out, C_in, 16, 16)`` becomes ``(C_out, C_in, k_d, 16, 16)``:

* ``"average"``: the 2D kernel divided by ``k_d`` on every slice, so an input that is constant along depth gives the
  2D model's patch embedding of one slice;
* ``"centre"``: the 2D kernel on slice ``k_d // 2`` and zeros elsewhere, so only the centre slice of each token
  matters at first (the better of the two on BigNeuron: Dice 0.5045 against 0.4942).

The absolute position embedding is interpolated in plane to the new token grid and repeated over depth; transformer
blocks are shape-agnostic and copied unchanged. Whether the table needs resampling is decided on grid shapes, not
token counts: a 4 x 7 x 7 grid has as many tokens as the 14 x 14 table of a 224-pixel ViT but needs it resampled to
7 x 7 and repeated 4 times. Every depth slab starts from the same in-plane table (the 2D table has no depth to give);
see docs/transformers.md.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

STRATEGIES = ("centre", "average")


def inflate_patch_embedding(weight: torch.Tensor, depth: int, strategy: str = "centre") -> torch.Tensor:
    """Inflate a 2D patch-embedding kernel ``(C_out, C_in, kh, kw)`` to ``(C_out, C_in, depth, kh, kw)``.

    Parameters
    ----------
    weight : torch.Tensor
        The 2D kernel (adapt its input channels first, e.g. RGB summed to grey, if needed).
    depth : int
        Kernel depth ``k_d`` (the token's number of slices), at least 1.
    strategy : {"centre", "average"}
        See the module docstring.

    Returns
    -------
    torch.Tensor
        The 3D kernel; the bias of the convolution is unchanged.
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a 2D kernel (C_out, C_in, kh, kw), got shape {tuple(weight.shape)}")
    if depth < 1:
        raise ValueError(f"kernel depth must be at least 1, got {depth}")
    if strategy == "average":
        return weight.unsqueeze(2).repeat(1, 1, depth, 1, 1) / depth
    if strategy == "centre":
        inflated = weight.new_zeros(weight.shape[0], weight.shape[1], depth, *weight.shape[2:])
        inflated[:, :, depth // 2] = weight
        return inflated
    raise ValueError(f"unknown inflation strategy {strategy!r}; choose one of {STRATEGIES}")


def inflate_position_embedding(pos_embed: torch.Tensor, grid_size: Sequence[int], num_prefix_tokens: int = 1,
                               old_grid: Sequence[int] | None = None) -> torch.Tensor:
    """Position embedding of a 2D ViT ``(1, prefix + h*w, C)`` to a 3D grid ``(1, prefix + D*H*W, C)``.

    The in-plane grid is interpolated to ``(H, W)`` with timm's ``resample_abs_pos_embed`` (bicubic, as timm does
    when a ViT runs at another resolution) and the result is repeated for each of the ``D`` token slices. Prefix
    (class) token embeddings are kept.
    """
    from timm.layers import resample_abs_pos_embed

    depth, height, width = (int(g) for g in grid_size)
    planar = resample_abs_pos_embed(pos_embed, new_size=[height, width], old_size=old_grid,
                                    num_prefix_tokens=num_prefix_tokens)
    prefix, grid = planar[:, :num_prefix_tokens], planar[:, num_prefix_tokens:]
    grid = grid.reshape(1, 1, height * width, -1).expand(1, depth, height * width, -1)
    return torch.cat([prefix, grid.reshape(1, depth * height * width, -1)], dim=1)


def square_grid(pos_embed: torch.Tensor, num_prefix_tokens: int = 1,
                same_count_grid: Sequence[int] | None = None) -> tuple[int, int]:
    """Grid ``(h, h)`` of a flat 2D position-embedding table ``(1, prefix + h*h, C)``.

    Flat tables do not record their grid; released 2D ViTs are square (14 x 14 at 224 pixels), as timm assumes too.
    A table that is not square is taken to be on ``same_count_grid`` when it has that many tokens (a checkpoint of
    the network's own, non-square size); otherwise it is refused.
    """
    tokens = pos_embed.shape[1] - num_prefix_tokens
    side = math.isqrt(max(tokens, 0))
    if tokens >= 1 and side * side == tokens:
        return side, side
    if same_count_grid is not None and math.prod(same_count_grid) == tokens:
        return tuple(int(g) for g in same_count_grid)
    raise ValueError(f"position embedding of shape {tuple(pos_embed.shape)} with {num_prefix_tokens} prefix "
                     f"token(s) is not a square grid of {tokens} tokens, nor the network's grid; another number of "
                     f"class/register tokens?")


def inflate_vit_state_dict(state_dict: dict[str, torch.Tensor], model: torch.nn.Module,
                           strategy: str = "centre") -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map a 2D timm-named ViT state dict onto a :class:`~nnunet_ext.networks.vit_encoders.VisionTransformer3d`.

    The patch embedding is inflated (after its input channels are adapted with timm's ``adapt_input_conv`` and its
    in-plane size resampled if the token size differs), the position embedding interpolated and repeated over
    depth; every other tensor is passed through unchanged.

    Returns
    -------
    (dict, list of str)
        The 3D state dict and the names of the tensors that were changed.
    """
    from timm.layers import resample_patch_embed
    from timm.models._manipulate import adapt_input_conv

    target_kernel = model.patch_embed.proj.weight.shape  # (C_out, C_in, kd, kh, kw)
    kernel = state_dict.get("patch_embed.proj.weight")
    two_d = kernel is None or kernel.ndim == 4  # a 3D state dict (already inflated) keeps its table
    out, adapted = {}, []
    for name, value in state_dict.items():
        if name == "patch_embed.proj.weight" and value.ndim == 4:
            if value.shape[1] != target_kernel[1]:
                value = adapt_input_conv(target_kernel[1], value)
            if tuple(value.shape[-2:]) != tuple(target_kernel[-2:]):
                value = resample_patch_embed(value, list(target_kernel[-2:]))
            value = inflate_patch_embedding(value, target_kernel[2], strategy)
            adapted.append(name)
        elif name == "pos_embed" and two_d:
            # compare grids, not token counts: (1, 14, 14) -> (4, 7, 7) keeps the count but not the layout
            old_grid = square_grid(value, model.num_prefix_tokens, model.patch_embed.grid_size[1:])
            if (1, *old_grid) != tuple(model.patch_embed.grid_size):
                value = inflate_position_embedding(value, model.patch_embed.grid_size, model.num_prefix_tokens,
                                                   old_grid=old_grid)
                adapted.append(name)
        out[name] = value
    return out, adapted
