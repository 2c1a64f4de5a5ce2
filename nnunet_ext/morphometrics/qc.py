"""Quality-control overlay PNG: axons and myelin coloured over the image, invalid g-ratios circled in red."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

AXON_RGB = (0.15, 0.55, 1.0)
MYELIN_RGB = (1.0, 0.85, 0.1)
INVALID_RGB = (1.0, 0.0, 0.0)


def overlay_rgb(axon: np.ndarray, myelin: np.ndarray, image: np.ndarray | None = None, step: int = 1,
                alpha: float = 0.45) -> np.ndarray:
    """RGB float image: the grey image (or black) with axons blue and myelin yellow, every ``step``-th pixel."""
    axon = axon[::step, ::step]
    myelin = myelin[::step, ::step]
    if image is not None:
        grey = np.asarray(image, dtype=np.float32)
        if grey.ndim == 3:
            grey = grey[..., :3].mean(axis=-1)
        grey = grey[::step, ::step]
        low, high = np.percentile(grey, (0.5, 99.5)) if grey.size else (0, 1)
        grey = np.clip((grey - low) / max(high - low, 1e-6), 0, 1)
    else:
        grey = np.zeros(axon.shape, np.float32)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for mask, colour in ((axon, AXON_RGB), (myelin, MYELIN_RGB)):
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour, np.float32)
    return rgb


def save_qc_overlay(path: str | os.PathLike, axon: np.ndarray, myelin: np.ndarray, per_axon: pd.DataFrame,
                    pixel_size_um: float, image: np.ndarray | None = None, max_side: int = 4000) -> Path:
    """Write a QC overlay PNG at image resolution (subsampled above ``max_side`` pixels).

    Axons are blue and myelin yellow over the grey microscopy image (black without one); axons whose g-ratio is
    invalid are circled in red (the ``note`` column of the per-axon CSV says why).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.draw import circle_perimeter

    if image is not None and np.asarray(image).shape[:2] != axon.shape:
        image = None  # a microscopy image of another size cannot be overlaid
    step = max(1, int(np.ceil(max(axon.shape) / max_side)))
    rgb = overlay_rgb(axon, myelin, image, step)
    invalid = per_axon[~per_axon["gratio_valid"].to_numpy(dtype=bool)] if len(per_axon) else per_axon
    for _, row in invalid.iterrows():
        radius_px = max(4, int(round(np.sqrt(row["axon_area (um^2)"] / np.pi) / pixel_size_um / step)) + 3)
        for width in (0, 1):
            rr, cc = circle_perimeter(int(row["y0 (px)"] / step), int(row["x0 (px)"] / step), radius_px + width,
                                      shape=rgb.shape[:2])
            rgb[rr, cc] = INVALID_RGB
    path = Path(path)
    plt.imsave(path, np.clip(rgb, 0, 1))
    return path
