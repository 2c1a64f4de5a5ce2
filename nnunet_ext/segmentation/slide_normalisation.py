"""Whole-slide statistics for nnU-Net's preprocessing, gathered block by block.

nnU-Net crops an image to the bounding box of its nonzero pixels and normalises it with statistics of the whole
image (z-score: mean and standard deviation). A first pass over the slide collects exact integer moments and the
nonzero box per block (:func:`block_statistics`), combined without rounding (:func:`combine_statistics`), so that
every block is normalised exactly as the one-piece image would be (:func:`normalize_block`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np

from nnunet_ext.io.slides import open_slide


@dataclass
class SlideStatistics:
    """What nnU-Net's preprocessing needs from the whole slide: grey-value statistics and the nonzero box."""

    pixels: int
    mean: float
    std: float
    minimum: float
    maximum: float
    nonzero_box: list[list[int]] | None  # [[y0, y1], [x0, x1]], None for an all-zero slide

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def block_statistics(source, core) -> dict:
    """Exact integer moments of one block core (pixels, zeros, sum, sum of squares, smallest nonzero and largest
    value) and the bounding box of its nonzero pixels in slide coordinates: a few numbers per block, whatever the
    slide's size."""
    slide = open_slide(source)
    y0, y1, x0, x1 = core
    window = slide.read(y0, y1, x0, x1)
    # a histogram of the 8- or 16-bit grey values gives every moment exactly, without int64 copies of the block
    counts = np.bincount(window.ravel(), minlength=2)
    present = np.flatnonzero(counts)
    grey = np.arange(counts.size, dtype=object)  # Python integers: sums of squares cannot overflow
    rows, cols = np.flatnonzero(window.any(axis=1)), np.flatnonzero(window.any(axis=0))
    box = None if rows.size == 0 else [y0 + int(rows[0]), y0 + int(rows[-1]) + 1, x0 + int(cols[0]),
                                       x0 + int(cols[-1]) + 1]
    nonzero_values = present[present > 0]
    return {"pixels": int(window.size), "zeros": int(counts[0]),
            "sum": int((counts[present].astype(object) * grey[present]).sum()),
            "squares": int((counts[present].astype(object) * grey[present] ** 2).sum()),
            "min_nonzero": int(nonzero_values[0]) if nonzero_values.size else None,
            "max": int(present[-1]) if present.size else 0, "box": box}


def combine_statistics(parts, shape: Sequence[int]) -> SlideStatistics:
    """Statistics of the slide cropped to its nonzero box, as nnU-Net normalises after cropping, from
    :func:`block_statistics` results of blocks tiling a slide of ``shape``. Exact: integer sums, then one rounding.
    """
    parts = list(parts)
    boxes = [p["box"] for p in parts if p["box"] is not None]
    if not boxes:  # an all-zero slide: nothing to normalise, nothing to predict
        return SlideStatistics(pixels=0, mean=0.0, std=0.0, minimum=0.0, maximum=0.0, nonzero_box=None)
    box = [min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes), max(b[3] for b in boxes)]
    pixels = (box[1] - box[0]) * (box[3] - box[2])
    # every pixel outside the nonzero box is 0: zeros inside it are the zeros counted minus those outside
    zeros_inside = sum(p["zeros"] for p in parts) - (int(shape[0]) * int(shape[1]) - pixels)
    total, squares = sum(p["sum"] for p in parts), sum(p["squares"] for p in parts)
    mean = Fraction(total, pixels)
    variance = Fraction(squares, pixels) - mean * mean
    minimum = 0 if zeros_inside > 0 else min(p["min_nonzero"] for p in parts if p["min_nonzero"] is not None)
    return SlideStatistics(pixels=pixels, mean=float(mean), std=math.sqrt(float(variance)), minimum=float(minimum),
                           maximum=float(max(p["max"] for p in parts)),
                           nonzero_box=[[box[0], box[1]], [box[2], box[3]]])


def check_slide_preprocessing(predictor, name: str = "slide") -> tuple[str, bool]:
    """The model's normalisation scheme, after checking that block-wise prediction can reproduce nnU-Net's
    preprocessing for it (no resampling, no transposition, no normalisation inside a hole-filled mask)."""
    configuration = predictor.configuration_manager
    if [float(s) for s in configuration.spacing] != [1.0, 1.0]:
        raise ValueError(f"{name}: the model resamples images to spacing {configuration.spacing}; block-wise slide "
                         f"prediction supports models trained on 2D images at their own pixel size (spacing 1, 1, "
                         f"as nnU-Net's NaturalImage2DIO gives)")
    if list(predictor.plans_manager.transpose_forward) != [0, 1, 2]:
        raise ValueError(f"{name}: the model's plans transpose axes {predictor.plans_manager.transpose_forward}; "
                         f"not supported for slides")
    scheme = configuration.normalization_schemes[0]
    use_mask = bool(configuration.use_mask_for_norm[0])
    supported = ("ZScoreNormalization", "RescaleTo01Normalization", "CTNormalization", "NoNormalization",
                 "RGBTo01Normalization")
    if scheme not in supported:
        raise ValueError(f"{name}: normalisation {scheme} is not supported for slides ({', '.join(supported)})")
    if use_mask and scheme == "ZScoreNormalization":
        raise ValueError(f"{name}: the model normalises inside the hole-filled nonzero mask (use_mask_for_norm), "
                         f"which cannot be computed block by block")
    return scheme, use_mask


def normalize_block(window: np.ndarray, predictor, statistics: SlideStatistics) -> np.ndarray:
    """nnU-Net's normalisation of one window, with the whole slide's statistics where the scheme needs them.

    The arithmetic is nnU-Net's (float32, same operations in the same order), so windows normalise exactly as the
    slide would in one piece.
    """
    configuration = predictor.configuration_manager
    scheme = configuration.normalization_schemes[0]
    image = window.astype(np.float32)
    if scheme == "ZScoreNormalization":
        mean, std = np.float32(statistics.mean), np.float32(statistics.std)
        image -= mean
        image /= max(std, 1e-8)
    elif scheme == "RescaleTo01Normalization":
        image -= np.float32(statistics.minimum)
        image /= np.clip(np.float32(statistics.maximum) - np.float32(statistics.minimum), a_min=1e-8, a_max=None)
    else:  # pixel-wise schemes: nnU-Net's own classes
        from nnunetv2.preprocessing.normalization import default_normalization_schemes as schemes

        normalizer = getattr(schemes, scheme)(
            use_mask_for_norm=bool(configuration.use_mask_for_norm[0]),
            intensityproperties=predictor.plans_manager.foreground_intensity_properties_per_channel["0"])
        image = normalizer.run(image, None)
    return image
