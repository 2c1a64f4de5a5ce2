"""Morphometric maps: aggregate metrics on a grid of tiles (AxonCallosumEM, Figure 3), as a table and heat maps."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from nnunet_ext.io.atomic import save_figure
from nnunet_ext.io.pixel_size import check_pixel_size
from nnunet_ext.morphometrics.aggregate_metrics import aggregate_from_counts
from nnunet_ext.morphometrics.axon import as_binary_mask, axon_morphometrics, prepare_masks

# Metrics drawn as heat maps by default, with their colour-bar labels.
MAP_METRICS = {
    "mean_axon_diam (um)": "mean axon diameter (um)",
    "std_axon_diam (um)": "axon diameter std (um)",
    "axon_density (per mm^2)": "axon density (per mm²)",
    "avf": "axon volume fraction (AVF)",
    "mvf": "myelin volume fraction (MVF)",
    "gratio_aggregate": "aggregate g-ratio",
}
TILE_COLUMNS = ["tile_row", "tile_col", "y_min (px)", "x_min (px)", "y_max (px)", "x_max (px)"]


def tile_size_in_pixels(pixel_size_um: float, tile_size_px: int | None = None,
                        tile_size_um: float | None = None) -> int:
    """Tile edge in pixels from exactly one of ``tile_size_px`` and ``tile_size_um``."""
    if (tile_size_px is None) == (tile_size_um is None):
        raise ValueError("give exactly one of tile_size_px and tile_size_um")
    if tile_size_um is not None:
        if not math.isfinite(float(tile_size_um)) or tile_size_um <= 0:
            raise ValueError(f"tile size must be a positive number of um, got {tile_size_um!r}")
        tile_size_px = max(1, int(round(float(tile_size_um) / check_pixel_size(pixel_size_um))))
    if int(tile_size_px) != tile_size_px or tile_size_px < 1:
        raise ValueError(f"tile size must be a positive whole number of pixels, got {tile_size_px!r}")
    return int(tile_size_px)


def tile_pixel_counts(mask: np.ndarray, tile: int) -> np.ndarray:
    """Number of set pixels of ``mask`` in each ``tile`` x ``tile`` tile (edge tiles may be smaller)."""
    height, width = mask.shape
    rows, cols = -(-height // tile), -(-width // tile)
    padded = np.zeros((rows * tile, cols * tile), dtype=np.int64 if tile * tile > 2 ** 31 else np.int32)
    padded[:height, :width] = mask
    return padded.reshape(rows, tile, cols, tile).sum(axis=(1, 3), dtype=np.int64)


def tiles_from_counts(per_axon: pd.DataFrame, area_counts: np.ndarray, axon_counts: np.ndarray,
                      myelin_counts: np.ndarray, tile: int, shape: tuple[int, int], pixel_size: float
                      ) -> pd.DataFrame:
    """One row of aggregate metrics per tile, from per-tile pixel counts and the per-axon table.

    An axon belongs to the tile holding its centroid pixel. Used by :func:`tile_morphometrics` and by the
    whole-slide path, which adds the counts up chunk by chunk.
    """
    n_rows, n_cols = area_counts.shape
    if len(per_axon):
        tile_of_axon = (np.floor(per_axon["y0 (px)"].to_numpy()).astype(np.int64) // tile) * n_cols + \
                       np.floor(per_axon["x0 (px)"].to_numpy()).astype(np.int64) // tile
        groups = {key: rows for key, rows in per_axon.groupby(tile_of_axon, sort=False)}
    else:
        groups = {}
    empty = per_axon.iloc[:0]
    records = []
    for r in range(n_rows):
        for c in range(n_cols):
            record = {"tile_row": r, "tile_col": c, "y_min (px)": r * tile, "x_min (px)": c * tile,
                      "y_max (px)": min((r + 1) * tile, shape[0]), "x_max (px)": min((c + 1) * tile, shape[1])}
            record.update(aggregate_from_counts(groups.get(r * n_cols + c, empty), int(area_counts[r, c]),
                                                int(axon_counts[r, c]), int(myelin_counts[r, c]), pixel_size))
            records.append(record)
    return pd.DataFrame(records)


def tile_morphometrics(axon_mask, myelin_mask, pixel_size_um, tile_size_px: int | None = None,
                       tile_size_um: float | None = None, per_axon: pd.DataFrame | None = None,
                       roi_mask=None) -> pd.DataFrame:
    """Aggregate metrics on a grid of square tiles (a morphometric map).

    Parameters
    ----------
    axon_mask, myelin_mask : (H, W) array
        Binary masks.
    pixel_size_um : float
    tile_size_px, tile_size_um : int or float
        Tile edge, in pixels or micrometres (exactly one).
    per_axon : pandas.DataFrame, optional
        :func:`axon_morphometrics` of these masks (computed when not given).
    roi_mask : (H, W) array, optional
        Only pixels and axons (by centroid) inside it count; tiles outside it get NaN with a note.

    Returns
    -------
    pandas.DataFrame
        One row per tile (row-major): ``TILE_COLUMNS`` then the keys of
        :func:`~nnunet_ext.morphometrics.aggregate_metrics.aggregate_from_counts` (AVF, MVF, aggregate g-ratio, density,
        mean/std axon diameter, ...).
    """
    pixel_size = check_pixel_size(pixel_size_um)
    tile = tile_size_in_pixels(pixel_size, tile_size_px, tile_size_um)
    axon, myelin = prepare_masks(axon_mask, myelin_mask)
    if per_axon is None:
        per_axon = axon_morphometrics(axon, myelin, pixel_size)
    if roi_mask is not None:
        roi = as_binary_mask(roi_mask, "ROI mask")
        if roi.shape != axon.shape:
            raise ValueError(f"ROI mask {roi.shape} and axon mask {axon.shape} have different shapes")
        axon, myelin = axon & roi, myelin & roi
        if len(per_axon):
            rows = np.floor(per_axon["y0 (px)"].to_numpy()).astype(np.int64)
            cols = np.floor(per_axon["x0 (px)"].to_numpy()).astype(np.int64)
            per_axon = per_axon[roi[rows, cols]]
        area = tile_pixel_counts(roi, tile)
    else:
        area = tile_pixel_counts(np.ones(axon.shape, bool), tile)
    return tiles_from_counts(per_axon, area, tile_pixel_counts(axon, tile), tile_pixel_counts(myelin, tile), tile,
                             axon.shape, pixel_size)


def save_map_pngs(tiles: pd.DataFrame, out_prefix: str | os.PathLike, pixel_size_um: float,
                  metrics: dict[str, str] | None = None, title: str | None = None) -> list[Path]:
    """Write one heat-map PNG per metric, ``<out_prefix>_map-<metric>.png``; returns the paths.

    Tiles without a value (outside the ROI, no axons) are left blank. Axes are in micrometres.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = MAP_METRICS if metrics is None else metrics
    n_rows = int(tiles["tile_row"].max()) + 1
    n_cols = int(tiles["tile_col"].max()) + 1
    height_um = tiles["y_max (px)"].max() * pixel_size_um
    width_um = tiles["x_max (px)"].max() * pixel_size_um
    paths = []
    for column, label in metrics.items():
        grid = np.full((n_rows, n_cols), np.nan)
        grid[tiles["tile_row"].to_numpy(), tiles["tile_col"].to_numpy()] = tiles[column].to_numpy(dtype=float)
        figure, axes = plt.subplots(figsize=(6.4, 6.4 * max(0.3, min(3.0, height_um / max(width_um, 1e-9)))))
        image = axes.imshow(np.ma.masked_invalid(grid), cmap="viridis", interpolation="nearest",
                            extent=(0, width_um, height_um, 0))
        figure.colorbar(image, ax=axes, label=label, shrink=0.8)
        axes.set_xlabel("x (um)")
        axes.set_ylabel("y (um)")
        axes.set_title(f"{title}: {label}" if title else label, fontsize=10)
        safe = column.split(" ")[0]
        path = Path(f"{out_prefix}_map-{safe}.png")
        paths.append(save_figure(figure, path, dpi=100, bbox_inches="tight"))
    return paths
