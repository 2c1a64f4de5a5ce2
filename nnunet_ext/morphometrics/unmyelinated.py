"""Unmyelinated axons with AxonDeepSeg 5.5's definitions (``axondeepseg_morphometrics -u``).

ADS measures a ``<stem>_seg-uaxon.png`` mask alone: ``get_axon_morphometrics(im_axon=uaxon, im_myelin=None)``
labels it with ``skimage.measure.label(connectivity=1)`` (4-connected, unlike myelinated axons' 8) and reports per
region its centroid ``x0``/``y0`` (px), ``axon_diam`` (equivalent-circle diameter, or the ellipse minor axis with
``axon_shape="ellipse"``), ``axon_area``, ``axon_perimeter`` (skimage's 4-neighbourhood perimeter), ``solidity``,
``eccentricity`` and ``orientation``, in the column order of its ``params.column_names_ordered`` (``solidity``
last). ADS gives no border information in this mode; we add ``image_border_touching`` and the bounding box as in the
myelinated table, a 1-based ``uaxon_id`` and ``image``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from nnunet_ext.io.pixel_size import check_pixel_size

#: ADS 5.5's unmyelinated-axon columns, in the order its spreadsheet has them.
ADS_UAXON_COLUMNS = ["x0 (px)", "y0 (px)", "axon_area (um^2)", "axon_perimeter (um)", "axon_diam (um)",
                     "eccentricity", "orientation", "solidity"]
UAXON_COLUMNS = ["uaxon_id", *ADS_UAXON_COLUMNS, "image_border_touching", "bbox_min_y", "bbox_min_x", "bbox_max_y",
                 "bbox_max_x", "image", "note"]


def uaxon_labels(uaxon_mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of an unmyelinated-axon mask (ADS's ``measure.label(connectivity=1)``), int32, in
    raster order of their first pixels."""
    from nnunet_ext.morphometrics import kernels

    return kernels.label_components_4(np.asarray(uaxon_mask) != 0)


def uaxon_morphometrics(uaxon_mask, pixel_size_um: float, axon_shape: str = "circle",
                        image_name: str | None = None, labels: tuple[np.ndarray, int] | None = None,
                        return_first: bool = False):
    """Per-unmyelinated-axon table (:data:`UAXON_COLUMNS`), one row per 4-connected component in raster order.

    The region properties come from the compiled kernels of the myelinated axons (scikit-image's definitions, one
    pass over the image instead of ``regionprops``' ~1.5 ms an object). ``note`` is empty here (the chunked
    path notes axons cut by a chunk's halo). ``return_first`` also returns each axon's first pixel (raveled
    index), for the chunked path's raster order."""
    from nnunet_ext.morphometrics.axon import _finish, _InlineExecutor, _region_table

    pixel_size = check_pixel_size(pixel_size_um)
    if axon_shape not in ("circle", "ellipse"):
        raise ValueError(f"axon_shape must be 'circle' or 'ellipse', got {axon_shape!r}")
    label, count = labels if labels is not None else uaxon_labels(uaxon_mask)
    if count == 0:
        table = pd.DataFrame({c: pd.Series(dtype=float) for c in UAXON_COLUMNS})
        table = table.astype({"uaxon_id": np.int64, "image_border_touching": bool, "image": object, "note": object})
        return (table, np.zeros(0, np.int64)) if return_first else table
    with _InlineExecutor() as pool:
        region = _finish(_region_table(np.ascontiguousarray(label, dtype=np.int32), count, pool,
                                       with_convex_area=True))
    area = region["count"][1:].astype(np.float64)
    centroids = region["sums"][1:] / area[:, None]
    diameter = (4 * area / np.pi) ** 0.5 if axon_shape == "circle" else region["minor"][1:]
    bbox = region["bbox"][1:]
    height, width = label.shape
    table = pd.DataFrame({
        "uaxon_id": np.arange(1, count + 1, dtype=np.int64),
        "x0 (px)": centroids[:, 1], "y0 (px)": centroids[:, 0],
        "axon_area (um^2)": area * pixel_size ** 2, "axon_perimeter (um)": region["perimeter"][1:] * pixel_size,
        "axon_diam (um)": diameter * pixel_size, "eccentricity": region["eccentricity"][1:],
        "orientation": region["orientation"][1:], "solidity": area / region["convex"][1:],
        "image_border_touching": (bbox[:, 0] == 0) | (bbox[:, 1] == 0) | (bbox[:, 2] == height)
                                 | (bbox[:, 3] == width),
        "bbox_min_y": bbox[:, 0], "bbox_min_x": bbox[:, 1], "bbox_max_y": bbox[:, 2], "bbox_max_x": bbox[:, 3],
        "image": image_name, "note": "",
    })
    return (table, region["first"][1:]) if return_first else table


#: Aggregate columns of both populations (images without unmyelinated-axon masks leave them empty).
POPULATION_KEYS = ["uaxon_count", "uaxon_density (per mm^2)", "all_axon_density (per mm^2)", "myelinated_fraction",
                   "uaxon_diam_mean (um)", "uaxon_area_fraction"]


def population_summary(myelinated_count: int, uaxon_table: pd.DataFrame, area_um2: float) -> dict:
    """Both populations of one image: counts, densities per mm^2, the myelinated fraction (ADS gives none of these
    together), and the unmyelinated axons' mean diameter."""
    n_u = int(len(uaxon_table))
    area_mm2 = area_um2 * 1e-6
    total = myelinated_count + n_u
    return {
        "uaxon_count": n_u,
        "uaxon_density (per mm^2)": n_u / area_mm2 if area_mm2 > 0 else float("nan"),
        "all_axon_density (per mm^2)": total / area_mm2 if area_mm2 > 0 else float("nan"),
        "myelinated_fraction": myelinated_count / total if total else float("nan"),
        "uaxon_diam_mean (um)": float(uaxon_table["axon_diam (um)"].mean()) if n_u else float("nan"),
        "uaxon_area_fraction": float(uaxon_table["axon_area (um^2)"].sum() / area_um2) if area_um2 > 0 else
        float("nan"),
    }
