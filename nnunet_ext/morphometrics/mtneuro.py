"""MTNeuro task-3 semantic features of 4-class label maps (0 background, 1 blood vessel, 2 cell, 3 myelinated axon).

Quesada et al. (2022) describe, per slice: the proportion of vessel and of axon pixels, the number of cells, their
size and the mean distance between each cell and its nearest neighbour (k = 1), all from connected components of
the one class against everything else.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

MTNEURO_COLUMNS = ["slice", "vessel_fraction", "axon_fraction", "cell_count", "mean_cell_size (px)",
                   "mean_cell_nn_distance (px)", "mean_cell_size (um^2)", "mean_cell_nn_distance (um)", "note"]


def semantic_features(label_map, pixel_size_um: float | None = None, vessel_label: int = 1, cell_label: int = 2,
                      axon_label: int = 3, connectivity: int = 2) -> pd.DataFrame:
    """Per-slice semantic features of an MTNeuro label map.

    Parameters
    ----------
    label_map : (H, W) or (Z, H, W) integer array
        0 background, 1 vessel, 2 cell, 3 axon (other values are background). A 3D stack gives one row per slice.
    pixel_size_um : float, optional
        Adds the sizes and distances in um^2 and um (NaN columns otherwise).
    vessel_label, cell_label, axon_label : int
    connectivity : {1, 2}
        Cells are connected components with 4- (1) or 8-connectivity (2, default).

    Returns
    -------
    pandas.DataFrame
        ``MTNEURO_COLUMNS``; cell distances are between centroids. ``note`` says why a value is NaN (fewer than
        two cells: no nearest neighbour; no cells: no size).
    """
    from nnunet_ext.morphometrics.axon import check_pixel_size

    labels = np.asarray(label_map)
    if labels.ndim == 2:
        labels = labels[None]
    if labels.ndim != 3:
        raise ValueError(f"label map must be 2D or 3D (Z, H, W), got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise ValueError(f"label map must hold integer labels, got {labels.dtype}")
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 or 2, got {connectivity}")
    scale = check_pixel_size(pixel_size_um) if pixel_size_um is not None else np.nan
    structure = ndi.generate_binary_structure(2, connectivity)
    records = []
    for index, plane in enumerate(labels):
        cells, count = ndi.label(plane == cell_label, structure=structure)
        notes = []
        if count:
            sizes = np.bincount(cells.ravel())[1:]
            centroids = np.asarray(ndi.center_of_mass(np.ones_like(cells), cells, np.arange(1, count + 1)))
            mean_size = float(sizes.mean())
        else:
            mean_size = np.nan
            notes.append("no cells: size undefined")
        if count >= 2:
            distances, _ = cKDTree(centroids).query(centroids, k=2)
            mean_distance = float(distances[:, 1].mean())
        else:
            mean_distance = np.nan
            notes.append("fewer than two cells: nearest-neighbour distance undefined")
        records.append({
            "slice": index,
            "vessel_fraction": float(np.count_nonzero(plane == vessel_label)) / plane.size,
            "axon_fraction": float(np.count_nonzero(plane == axon_label)) / plane.size,
            "cell_count": int(count),
            "mean_cell_size (px)": mean_size,
            "mean_cell_nn_distance (px)": mean_distance,
            "mean_cell_size (um^2)": mean_size * scale ** 2,
            "mean_cell_nn_distance (um)": mean_distance * scale,
            "note": "; ".join(notes),
        })
    return pd.DataFrame(records, columns=MTNEURO_COLUMNS)
