"""Aggregate morphometrics of an image or a region of interest: AVF, MVF, aggregate g-ratio, axon density, ..."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from nnunet_ext.io.pixel_size import check_pixel_size
from nnunet_ext.morphometrics.axon import as_binary_mask, axon_morphometrics, prepare_masks

# Keys of aggregate_morphometrics(), in the order of the aggregate CSV.
AGGREGATE_KEYS = [
    "image", "area (mm^2)", "axon_count", "axon_density (per mm^2)", "avf", "mvf", "gratio_aggregate",
    "mean_axon_diam (um)", "std_axon_diam (um)", "mean_myelin_thickness (um)", "std_myelin_thickness (um)",
    "mean_gratio", "std_gratio", "invalid_gratio_count", "invalid_gratio_fraction", "border_touching_count",
    "mean_myelin_diam_est (um)", "mean_myelin_thickness_est (um)", "note",
]
# The *_est keys are AxonDeepSeg's estimator (mean myelin diameter = mean axon diameter / aggregate g-ratio) applied
# to our axons: 8-connected, after any filter. They were named *_ads until AxonDeepSeg's own aggregate figures were
# found to differ: its get_aggregate_morphometrics measures the axon mask alone, so its axons (count, density, mean
# diameter) are the 4-connected components; ads_aggregate_morphometrics() gives those figures as it computes them.


def ads_axon_diameters(axon: np.ndarray, pixel_size: float, axon_shape: str = "circle",
                       roi: np.ndarray | None = None) -> np.ndarray:
    """Diameters (um) of the axons AxonDeepSeg's aggregate counts: 4-connected components of the axon mask (those
    whose centroid pixel is in ``roi``), equivalent-circle diameter or moment-ellipse minor axis."""
    from scipy import ndimage as ndi

    from nnunet_ext.morphometrics import kernels as _kernels
    from nnunet_ext.morphometrics.axon import _shape_properties

    labels, n = ndi.label(axon, output=np.int32)  # the default structure: 4-connectivity, as ADS without myelin
    if n == 0:
        return np.zeros(0)
    count, _, sums, mu, mu_exact, mu_exact_ok, _ = _kernels.label_stats(labels, n, 0, 0)
    if axon_shape == "circle":
        diameters = np.sqrt(4 * count[1:] / np.pi)
    else:
        diameters = _shape_properties(count, mu, mu_exact, mu_exact_ok)[3][1:]
    if roi is not None:
        centroids = np.floor(sums[1:] / count[1:, None]).astype(np.int64)
        diameters = diameters[roi[centroids[:, 0], centroids[:, 1]]]
    return diameters * pixel_size


def ads_aggregate_morphometrics(axon_mask, myelin_mask, pixel_size_um, axon_shape: str = "circle") -> dict:
    """AxonDeepSeg 5.5's ``get_aggregate_morphometrics``, same keys and definitions: AVF and MVF (nonzero pixels of
    each mask, so a pixel in both counts twice), ``gratio_aggr``, ``mean_axon_diam`` over the 4-connected
    components of the axon mask, ``mean_myelin_diam`` = mean_axon_diam / gratio_aggr, ``mean_myelin_thickness``,
    ``axon_density_mm2`` (4-connected components per mm^2). Our ``axon_count`` and means use 8-connected axons,
    as ADS's per-axon table does; the two counts differ where axons touch only diagonally."""
    pixel_size = check_pixel_size(pixel_size_um)
    axon = as_binary_mask(axon_mask, "axon mask")
    myelin = as_binary_mask(myelin_mask, "myelin mask")
    avf = np.count_nonzero(axon) / axon.size
    mvf = np.count_nonzero(myelin) / myelin.size
    gratio = math.sqrt(1 / (1 + mvf / avf)) if avf else float("nan")
    diameters = ads_axon_diameters(axon, pixel_size, axon_shape)
    mean_axon_diam = float(np.mean(diameters)) if len(diameters) else float("nan")
    mean_myelin_diam = mean_axon_diam / gratio
    return {"avf": avf, "mvf": mvf, "gratio_aggr": gratio, "mean_axon_diam": mean_axon_diam,
            "mean_myelin_diam": mean_myelin_diam, "mean_myelin_thickness": mean_myelin_diam / 2 - mean_axon_diam / 2,
            "axon_density_mm2": len(diameters) / (axon.size * pixel_size ** 2 / 1e6)}


def aggregate_morphometrics(axon_mask, myelin_mask, pixel_size_um, per_axon: pd.DataFrame | None = None,
                            roi_mask=None) -> dict:
    """Aggregate morphometrics of one image, or of the part of it inside ``roi_mask``.

    Parameters
    ----------
    axon_mask, myelin_mask : (H, W) array
        Binary masks (bool, 0/1 or 0/255).
    pixel_size_um : float
        Pixel size in micrometres.
    per_axon : pandas.DataFrame, optional
        The table :func:`axon_morphometrics` returned for these masks (computed, with ``axon_shape="circle"``, when
        not given).
    roi_mask : (H, W) array, optional
        Region of interest (e.g. a nerve or corpus callosum outline). Areas and fractions are taken inside it, and
        an axon belongs to it when its centroid pixel does.

    Returns
    -------
    dict
        Keys ``AGGREGATE_KEYS``:

        - ``avf``, ``mvf``: axon and myelin area fractions of the image (or ROI); ``gratio_aggregate`` =
          1 / sqrt(1 + MVF / AVF) (Stikov et al. 2015, as AxonDeepSeg);
        - ``axon_count`` and ``axon_density (per mm^2)``; ``area (mm^2)`` of the image or ROI;
        - mean and standard deviation (sample, ddof=1) of axon diameter over all axons, and of myelin thickness
          and g-ratio over the axons with a valid g-ratio (0 < g < 1);
        - ``invalid_gratio_count`` / ``invalid_gratio_fraction``: axons whose g-ratio is NaN, <= 0 or >= 1 (no
          myelin, fibre narrower than the axon, ...; see the per-axon ``note`` column);
        - ``border_touching_count``: fibres touching the image border;
        - ``mean_myelin_diam_est (um)`` and ``mean_myelin_thickness_est (um)``: AxonDeepSeg's estimator (mean axon
          diameter / aggregate g-ratio) over these axons (8-connected, filtered as ``per_axon``). AxonDeepSeg's own
          aggregate counts 4-connected axons: :func:`ads_aggregate_morphometrics` gives its figures;
        - ``note``: why a value is NaN (no axons, empty ROI, ...), empty otherwise;
        - ``image``: the ``image`` of ``per_axon`` when it has one.
    """
    pixel_size = check_pixel_size(pixel_size_um)
    axon, myelin = prepare_masks(axon_mask, myelin_mask)
    if per_axon is None:
        per_axon = axon_morphometrics(axon, myelin, pixel_size)
    if roi_mask is not None:
        roi = as_binary_mask(roi_mask, "ROI mask")
        if roi.shape != axon.shape:
            raise ValueError(f"ROI mask {roi.shape} and axon mask {axon.shape} have different shapes")
        roi_pixels = int(np.count_nonzero(roi))
        axon_pixels = int(np.count_nonzero(axon & roi))
        myelin_pixels = int(np.count_nonzero(myelin & roi))
        if len(per_axon):
            rows = np.floor(per_axon["y0 (px)"].to_numpy()).astype(np.int64)
            cols = np.floor(per_axon["x0 (px)"].to_numpy()).astype(np.int64)
            per_axon = per_axon[roi[rows, cols]]
    else:
        roi_pixels = axon.size
        axon_pixels = int(np.count_nonzero(axon))
        myelin_pixels = int(np.count_nonzero(myelin))
    image_names = per_axon["image"].dropna().unique() if "image" in per_axon else []
    result = aggregate_from_counts(per_axon, roi_pixels, axon_pixels, myelin_pixels, pixel_size)
    result["image"] = image_names[0] if len(image_names) == 1 else None
    return {key: result[key] for key in AGGREGATE_KEYS}


def aggregate_from_counts(per_axon: pd.DataFrame, area_pixels: int, axon_pixels: int, myelin_pixels: int,
                          pixel_size: float) -> dict:
    """Aggregate metrics from pixel counts of a region and the per-axon rows that belong to it.

    This is what :func:`aggregate_morphometrics` and the tile maps share; counts are in pixels.
    """
    notes = []
    area_mm2 = area_pixels * pixel_size ** 2 / 1e6
    count = int(len(per_axon))
    nan = float("nan")
    if area_pixels == 0:
        notes.append("empty region: fractions and density undefined")
        avf = mvf = density = nan
    else:
        avf = axon_pixels / area_pixels
        mvf = myelin_pixels / area_pixels
        density = count / area_mm2
    if area_pixels and axon_pixels == 0:
        notes.append("no axon pixels: aggregate g-ratio undefined")
        gratio_aggregate = nan
    elif area_pixels:
        gratio_aggregate = math.sqrt(1 / (1 + mvf / avf))
    else:
        gratio_aggregate = nan
    diam = per_axon["axon_diam (um)"].to_numpy(dtype=float)
    valid = per_axon["gratio_valid"].to_numpy(dtype=bool)
    thickness = per_axon["myelin_thickness (um)"].to_numpy(dtype=float)[valid]
    gratio = per_axon["gratio"].to_numpy(dtype=float)[valid]
    if count == 0:
        notes.append("no axons: per-axon means undefined")
    elif count == 1:
        notes.append("one axon: standard deviations undefined")

    def mean(values):
        return float(np.mean(values)) if len(values) else nan

    def std(values):
        return float(np.std(values, ddof=1)) if len(values) > 1 else nan

    if count and not valid.any():
        notes.append("no axon with a valid g-ratio: myelin thickness and g-ratio means undefined")
    mean_diam = mean(diam)
    if count and math.isfinite(gratio_aggregate) and gratio_aggregate > 0:
        mean_myelin_diam_est = mean_diam / gratio_aggregate
        mean_thickness_est = mean_myelin_diam_est / 2 - mean_diam / 2
    else:
        mean_myelin_diam_est = mean_thickness_est = nan
    invalid = int(count - np.count_nonzero(valid))
    return {
        "area (mm^2)": area_mm2,
        "axon_count": count,
        "axon_density (per mm^2)": density,
        "avf": avf,
        "mvf": mvf,
        "gratio_aggregate": gratio_aggregate,
        "mean_axon_diam (um)": mean_diam,
        "std_axon_diam (um)": std(diam),
        "mean_myelin_thickness (um)": mean(thickness),
        "std_myelin_thickness (um)": std(thickness),
        "mean_gratio": mean(gratio),
        "std_gratio": std(gratio),
        "invalid_gratio_count": invalid,
        "invalid_gratio_fraction": invalid / count if count else nan,
        "border_touching_count": int(per_axon["image_border_touching"].to_numpy(dtype=bool).sum()),
        "mean_myelin_diam_est (um)": mean_myelin_diam_est,
        "mean_myelin_thickness_est (um)": mean_thickness_est,
        "note": "; ".join(notes),
    }
