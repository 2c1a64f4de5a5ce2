"""A montage of phantoms above their truth, to see what the generator makes (``nnunet-ext phantoms --preview``)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnunet_ext.io.atomic import save_figure
from nnunet_ext.phantoms.generator import Phantom


def save_phantom_montage(phantoms: Sequence[Phantom], path: str | os.PathLike) -> Path:
    """Draw each phantom's image above its axon (red) / myelin (blue) overlay and save a PNG montage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(phantoms), figsize=(4 * len(phantoms), 8), squeeze=False)
    for column, phantom in enumerate(phantoms):
        axes[0, column].imshow(phantom.image, cmap="gray", vmin=0, vmax=255)
        axes[0, column].set_title(
            f"{phantom.contrast}: {len(phantom.truth)} axons, {phantom.pixel_size_um:g} um/px"
        )
        overlay = np.stack([phantom.image / 255.0] * 3, axis=-1) * 0.6
        overlay[phantom.axon_mask] = (0.9, 0.2, 0.2)
        overlay[phantom.myelin_mask] = (0.2, 0.4, 0.95)
        axes[1, column].imshow(overlay)
        axes[1, column].set_title("truth: axon red, myelin blue")
        for axis in axes[:, column]:
            axis.set_axis_off()
    figure.tight_layout()
    return save_figure(figure, path, dpi=100)
