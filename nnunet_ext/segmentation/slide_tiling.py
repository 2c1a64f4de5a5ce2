"""Where a slide block reads, and which of nnU-Net's sliding-window tiles it runs.

The sliding-window grid is nnU-Net's own (``compute_steps_for_sliding_window``) over the whole cropped slide; each
block reads the window that the tiles overlapping its core reach into, so every core pixel receives the same patch
predictions as in a one-piece run (see :mod:`nnunet_ext.segmentation.slide_prediction`).
"""
from __future__ import annotations

from typing import Sequence


def axis_tiles(extent: int, patch: int, step_size: float) -> list[int]:
    """Tile starts along one axis of the cropped slide, as nnU-Net's sliding window places them (after padding an
    axis shorter than the patch to the patch)."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    return compute_steps_for_sliding_window((max(extent, patch),), (patch,), step_size)[0]


def axis_window(core: tuple[int, int], box: tuple[int, int], tiles: Sequence[int], patch: int):
    """Window to read for one block along one axis, and the tiles to run in it.

    Parameters
    ----------
    core : (int, int)
        The block's core in slide coordinates.
    box : (int, int)
        The nonzero bounding box of the slide along this axis (nnU-Net predicts inside it only).
    tiles : sequence of int
        Tile starts of the whole cropped slide (:func:`axis_tiles`).

    Returns
    -------
    None when the core misses the box, else ``(window, starts, inner)``: the window in slide coordinates, the
    tile starts relative to the window, and the part of the core inside the box relative to the window.
    """
    low, high = max(core[0], box[0]), min(core[1], box[1])
    if low >= high:
        return None
    extent = box[1] - box[0]
    if extent <= patch:  # nnU-Net pads this axis to one patch: read all of it, one tile
        return (box[0], box[1]), [0], (low - box[0], high - box[0])
    local_low, local_high = low - box[0], high - box[0]
    covering = [s for s in tiles if s < local_high and s + patch > local_low]
    start, stop = covering[0], covering[-1] + patch
    return (box[0] + start, box[0] + stop), [s - start for s in covering], (local_low - start, local_high - start)
