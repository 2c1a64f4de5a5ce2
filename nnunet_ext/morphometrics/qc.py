"""Quality-control overlay PNG: axons and myelin coloured over the image, invalid g-ratios circled in red.

The overlay is drawn from the masks already in memory as one byte per pixel (a palette image: 64 grey levels under
each class, plus red), subsampled so that its longer side is at most ``max_side`` pixels, and written by Pillow
with fast deflate (``compress_level=1``, Huffman coding only: 2-3 times faster than level 1's default strategy
for 4 % larger files on noisy micrographs): about 3 ms for a 600 x 600 overlay and 11 ms for 1278 x 924, against
0.17-1.5 s for the matplotlib RGBA figure of earlier versions.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

AXON_RGB = (0.15, 0.55, 1.0)
MYELIN_RGB = (1.0, 0.85, 0.1)
INVALID_RGB = (1.0, 0.0, 0.0)
QC_MAX_SIDE = 1280  # longer side of the overlay; larger images are subsampled by a whole factor
_GREY_LEVELS = 64  # grey levels under each class (palette: 3 classes x 64 + red = 193 colours)
_INVALID_INDEX = 3 * _GREY_LEVELS
_Z_HUFFMAN_ONLY = 2  # zlib strategy


def _palette(alpha: float = 0.45) -> np.ndarray:
    """(256, 3) uint8: grey ramp, the ramp blended with blue (axon), with yellow (myelin), then red."""
    grey = np.linspace(0.0, 1.0, _GREY_LEVELS)[:, None].repeat(3, axis=1)
    parts = [grey] + [(1 - alpha) * grey + alpha * np.asarray(colour) for colour in (AXON_RGB, MYELIN_RGB)]
    palette = np.zeros((256, 3), np.float64)
    palette[:3 * _GREY_LEVELS] = np.concatenate(parts)
    palette[_INVALID_INDEX] = INVALID_RGB
    return np.round(palette * 255).astype(np.uint8)


def _grey_levels(image: np.ndarray | None, shape: tuple[int, int], step: int) -> np.ndarray:
    """The image subsampled by ``step``, stretched between its 0.5 and 99.5 percentiles, as 0.._GREY_LEVELS-1."""
    if image is None:
        return np.zeros(shape, np.uint8)
    grey = np.asarray(image)
    if grey.ndim == 3:
        grey = grey[::step, ::step, :3].astype(np.float32).mean(axis=-1)
    else:
        grey = grey[::step, ::step]
    if grey.size == 0:
        return np.zeros(shape, np.uint8)
    if grey.dtype in (np.uint8, np.uint16):  # percentiles from a histogram: no sort
        cumulative = np.cumsum(np.bincount(grey.ravel()))
        low = int(np.searchsorted(cumulative, 0.005 * grey.size))
        high = int(np.searchsorted(cumulative, 0.995 * grey.size))
    else:
        grey = grey.astype(np.float32)
        low, high = np.percentile(grey, (0.5, 99.5))
    scale = (_GREY_LEVELS - 1) / max(float(high) - float(low), 1e-6)
    if grey.dtype == np.uint8:  # one lookup per pixel
        table = np.clip((np.arange(256) - low) * scale + 0.5, 0, _GREY_LEVELS - 1).astype(np.uint8)
        return table[grey]
    return np.clip((grey - np.float32(low)) * np.float32(scale) + 0.5, 0, _GREY_LEVELS - 1).astype(np.uint8)


def overlay_indices(axon: np.ndarray, myelin: np.ndarray, image: np.ndarray | None = None, step: int = 1
                    ) -> np.ndarray:
    """Palette indices of the overlay (every ``step``-th pixel): grey level + 64 x (1 axon, 2 myelin)."""
    axon = np.asarray(axon, bool)[::step, ::step]
    myelin = np.asarray(myelin, bool)[::step, ::step]
    indices = _grey_levels(image, axon.shape, step)
    indices += np.where(axon, np.uint8(_GREY_LEVELS), np.where(myelin, np.uint8(2 * _GREY_LEVELS), np.uint8(0)))
    return indices


def overlay_rgb(axon: np.ndarray, myelin: np.ndarray, image: np.ndarray | None = None, step: int = 1,
                alpha: float = 0.45) -> np.ndarray:
    """RGB float image: the grey image (or black) with axons blue and myelin yellow, every ``step``-th pixel."""
    return _palette(alpha)[overlay_indices(axon, myelin, image, step)].astype(np.float32) / 255


def _circle(indices: np.ndarray, row: float, col: float, radius: float) -> None:
    """Draw a two-pixel-wide circle outline in red (clipped to the image)."""
    for r in (radius, radius + 1):
        angles = np.linspace(0, 2 * np.pi, max(16, int(8 * r)), endpoint=False)
        rows = np.round(row + r * np.sin(angles)).astype(np.int64)
        cols = np.round(col + r * np.cos(angles)).astype(np.int64)
        inside = (rows >= 0) & (rows < indices.shape[0]) & (cols >= 0) & (cols < indices.shape[1])
        indices[rows[inside], cols[inside]] = _INVALID_INDEX


def save_qc_overlay(path: str | os.PathLike, axon: np.ndarray, myelin: np.ndarray, per_axon: pd.DataFrame,
                    pixel_size_um: float, image: np.ndarray | None = None, max_side: int = QC_MAX_SIDE) -> Path:
    """Write a QC overlay PNG, subsampled by a whole factor so that its longer side is at most ``max_side``.

    Axons are blue and myelin yellow over the grey microscopy image (black without one); axons whose g-ratio is
    invalid are circled in red (the ``note`` column of the per-axon CSV says why). One byte per pixel (palette
    PNG), fast deflate (Huffman only).
    """
    from PIL import Image

    if image is not None and np.asarray(image).shape[:2] != np.shape(axon):
        image = None  # a microscopy image of another size cannot be overlaid
    step = max(1, int(np.ceil(max(np.shape(axon)) / max_side)))
    indices = overlay_indices(axon, myelin, image, step)
    if len(per_axon):
        invalid = per_axon[~per_axon["gratio_valid"].to_numpy(dtype=bool)]
        radii = np.sqrt(invalid["axon_area (um^2)"].to_numpy(float) / np.pi) / pixel_size_um / step
        for row, col, radius in zip(invalid["y0 (px)"].to_numpy(float) / step,
                                    invalid["x0 (px)"].to_numpy(float) / step, radii):
            _circle(indices, row, col, max(4, int(round(radius)) + 3))
    figure = Image.fromarray(indices)
    figure.putpalette(_palette().tobytes())
    path = Path(path)
    figure.save(path, format="PNG", compress_level=1, compress_type=_Z_HUFFMAN_ONLY)
    return path
