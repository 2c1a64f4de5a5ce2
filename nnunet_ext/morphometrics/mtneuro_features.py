"""MTNeuro task-3 semantic features of 4-class label maps (0 background, 1 blood vessel, 2 cell, 3 myelinated axon).

Quesada et al. (2022) describe, per slice: the proportion of vessel and of axon pixels, the number of cells, their
size and the mean distance between each cell and its nearest neighbour (k = 1), all from connected components of
the one class against everything else.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from nnunet_ext.io.atomic import write_csv_atomically
from nnunet_ext.io.images import read_label_volume, strip_extension
from nnunet_ext.io.pixel_size import PixelSizeNotFoundError, check_pixel_size, find_pixel_size

MTNEURO_CSV = "mtneuro_semantic_features.csv"
MTNEURO_EXTENSIONS = (".png", ".tif", ".tiff", ".nii.gz", ".nii", ".nrrd", ".mha", ".npy")
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


def find_label_maps(path: str | os.PathLike) -> list[Path]:
    """The label maps under ``path``: the file itself, or every ``MTNEURO_EXTENSIONS`` file of a folder (sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name.lower().endswith(MTNEURO_EXTENSIONS))
    if not files:
        raise FileNotFoundError(f"{path}: no label maps ({', '.join(MTNEURO_EXTENSIONS)}) found")
    return files


def run_semantic_features(path: str | os.PathLike, out_dir: str | os.PathLike, pixel_size_um: float | None = None,
                          vessel_label: int = 1, cell_label: int = 2, axon_label: int = 3, connectivity: int = 2,
                          overwrite: bool = False) -> pd.DataFrame:
    """Semantic features of every label map under ``path``, written to ``out_dir/mtneuro_semantic_features.csv``.

    Parameters
    ----------
    path : file or folder
        4-class label maps (nnU-Net predictions of an MTNeuro dataset: 2D ``.png`` slices or 3D ``.nii.gz``
        sub-volumes; TIFF stacks and ``.npy`` cutouts too), see :func:`find_label_maps`.
    out_dir : folder
    pixel_size_um : float, optional
        For every map; otherwise each map's own (``<name>.json`` sidecar or ``pixel_size_in_micrometer.txt``, as
        :func:`~nnunet_ext.io.pixel_size.find_pixel_size`), and without one the um columns stay NaN. A sidecar
        or text file that is there but unreadable raises ``ValueError`` naming it.
    vessel_label, cell_label, axon_label, connectivity
        As :func:`semantic_features`.
    overwrite : bool
        Replace an existing CSV.

    Returns
    -------
    pandas.DataFrame
        ``image``, ``pixel_size_um`` and ``MTNEURO_COLUMNS``, one row per slice of every map. The CSV is written
        to a temporary file and moved into place.
    """

    files = find_label_maps(path)
    out_dir = Path(out_dir)
    target = out_dir / MTNEURO_CSV
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; use --overwrite to replace it")
    tables = []
    for file in files:
        try:
            size = find_pixel_size(file, pixel_size_um)[0]
        except PixelSizeNotFoundError:  # none given: sizes and distances in px only; a broken file still raises
            size = None
        labels = read_label_volume(file)
        try:
            table = semantic_features(labels, size, vessel_label, cell_label, axon_label, connectivity)
        except ValueError as error:
            raise ValueError(f"{file}: {error}") from None
        table.insert(0, "pixel_size_um", np.nan if size is None else size)
        table.insert(0, "image", strip_extension(file.name))
        tables.append(table)
    combined = pd.concat(tables, ignore_index=True)
    write_csv_atomically(combined, target, overwrite=overwrite, na_rep="NaN")
    return combined
