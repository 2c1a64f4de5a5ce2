"""Nerve and fascicle morphometrics with AxonDeepSeg 5.5's definitions (``axondeepseg_morphometrics -n``), plus
per-fascicle AVF, MVF and aggregate g-ratio, which ADS does not give.

ADS reads a ``<stem>_seg-nerve.png`` mask; each 4-connected component (``measure.label(connectivity=1)`` of its
``get_axon_morphometrics(im_myelin=None)``) is a fascicle, numbered from 0 in raster order of its first pixel. Their
areas go to ``<stem>_nerve_morphometrics.json`` (``fascicle_areas`` ``{"0": {"value", "unit": "um^2"}}``,
``total_area``). Axons and myelin outside the nerve are removed and the axons measured again; each axon belongs to
the fascicle under ``(int(y0), int(x0))`` of its centroid, and the JSON gains each fascicle's ``axon_density`` and
``total_axon_density`` (axons assigned to a fascicle / total area, ``{"value", "unit": "axon/um^2"}``, rounded to 5
decimals). ADS assigns axons with an 8-connected relabelling of the nerve mask (``measure.label`` default); here both
steps use the 4-connected fascicles, which differ only for fascicles touching at a corner.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from nnunet_ext.morphometrics.aggregate_metrics import aggregate_from_counts

#: ADS's output name: ``<stem>_nerve_morphometrics.json``.
NERVE_JSON_SUFFIX = "_nerve_morphometrics.json"
FASCICLE_CSV_SUFFIX = "_fascicles.csv"
#: Columns the nerve mode adds to the aggregate CSV.
NERVE_COLUMNS = ["fascicle_count", "nerve_area_um2", "total_axon_density_per_um2"]


def fascicle_labels(nerve_mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected fascicles of a nerve mask, labelled 1..n in raster order (ADS's ids are these minus 1)."""
    from nnunet_ext.morphometrics import kernels  # scipy.ndimage.label's labels, without importing SciPy

    return kernels.label_components_4(np.asarray(nerve_mask) != 0)


def nerve_morphometrics(nerve_mask, axon, myelin, per_axon: pd.DataFrame, pixel_size_um: float
                        ) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """ADS's nerve JSON (with our per-fascicle additions), the per-axon table with ``fascicle_id`` (-1: centroid
    outside every fascicle), and a per-fascicle table.

    ``axon``/``myelin`` must already be restricted to the nerve and ``per_axon`` measured on them (see
    :func:`restrict_to_nerve`).
    """
    from nnunet_ext.morphometrics import kernels

    labels, count = fascicle_labels(nerve_mask)
    pixels = kernels.label_stats(labels, count, 0, 0)[0]
    axon_pixels = np.bincount(labels[axon], minlength=count + 1)
    myelin_pixels = np.bincount(labels[myelin], minlength=count + 1)
    rows = np.clip(per_axon["y0 (px)"].to_numpy(float).astype(np.int64), 0, labels.shape[0] - 1)
    cols = np.clip(per_axon["x0 (px)"].to_numpy(float).astype(np.int64), 0, labels.shape[1] - 1)
    fascicle = labels[rows, cols].astype(np.int64) - 1 if len(per_axon) else np.zeros(0, np.int64)
    return fascicle_report(per_axon.assign(fascicle_id=fascicle), (pixels, axon_pixels, myelin_pixels),
                           pixel_size_um)


def fascicle_report(per_axon: pd.DataFrame, counts: tuple, pixel_size_um: float
                    ) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """:func:`nerve_morphometrics`' outputs from a per-axon table with ``fascicle_id`` and each fascicle's
    ``(pixels, axon pixels, myelin pixels)`` (arrays indexed by fascicle label 1..n, index 0 unused): the one
    definition of the JSON and the fascicle table, for images and for slides measured chunk by chunk."""
    pixels, axon_pixels, myelin_pixels = (np.asarray(c) for c in counts)
    count = len(pixels) - 1
    pixel_area = pixel_size_um ** 2
    fascicle = per_axon["fascicle_id"].to_numpy(np.int64)
    # each fascicle's rows in one sort (a slide's noisy nerve mask may have tens of thousands of fascicles)
    order = np.argsort(fascicle, kind="stable")
    bounds = np.searchsorted(fascicle[order], np.arange(count + 1))
    fascicle_areas, records = {}, []
    for index in range(count):
        area = float(pixels[index + 1] * pixel_area)
        members = per_axon.iloc[order[bounds[index]:bounds[index + 1]]]
        density = round(len(members) / area, 5) if area > 0 else 0
        extra = aggregate_from_counts(members, int(pixels[index + 1]), int(axon_pixels[index + 1]),
                                      int(myelin_pixels[index + 1]), pixel_size_um)
        fascicle_areas[str(index)] = {"value": area, "unit": "um^2",
                                      "axon_density": {"value": density, "unit": "axon/um^2"},
                                      "axon_count": len(members), "avf": extra["avf"], "mvf": extra["mvf"],
                                      "gratio_aggregate": extra["gratio_aggregate"]}
        records.append({"fascicle_id": index, "area (um^2)": area, "axon_count": len(members),
                        "axon_density (axon/um^2)": density, **{k: extra[k] for k in (
                            "avf", "mvf", "gratio_aggregate", "mean_axon_diam (um)", "mean_gratio", "note")}})
    total_area = float(pixels[1:].sum() * pixel_area)
    assigned = int(np.count_nonzero(fascicle >= 0))
    data = {"fascicle_areas": fascicle_areas, "total_area": {"value": total_area, "unit": "um^2"},
            "total_axon_density": {"value": round(assigned / total_area, 5) if total_area > 0 else 0,
                                   "unit": "axon/um^2"}}
    columns = ["fascicle_id", "area (um^2)", "axon_count", "axon_density (axon/um^2)", "avf", "mvf",
               "gratio_aggregate", "mean_axon_diam (um)", "mean_gratio", "note"]
    return data, per_axon, pd.DataFrame(records, columns=columns)


def restrict_to_nerve(axon: np.ndarray, myelin: np.ndarray, nerve: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ADS's ``remove_outside_nerve``: axon and myelin pixels outside the nerve become background."""
    if nerve.shape != axon.shape:
        raise ValueError(f"nerve mask {nerve.shape} and label {axon.shape} have different shapes")
    return axon & nerve, myelin & nerve
