"""AxonDeepSeg 5.5's per-axon algorithm, written out with scikit-image's per-object calls (slow).

This is the yardstick for :func:`nnunet_ext.morphometrics.axon_morphometrics`: the same steps as ADS's
``get_axon_morphometrics`` (8-connected axon labels, ``regionprops``, seeds at ``int(centroid)``,
``watershed(-edt, seeds, mask=axon | myelin)``, fibre = watershed region under the axon's centroid pixel), so tests
and benchmarks can compare against ADS on any masks without installing AxonDeepSeg. Not for production use: it
takes seconds per image and, like ADS, gives NaN where it finds no fibre.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage import measure
from skimage.segmentation import watershed

from nnunet_ext.morphometrics.axon import ADS_COLUMNS


def ads_axon_morphometrics(axon_mask: np.ndarray, myelin_mask: np.ndarray, pixel_size_um: float,
                           axon_shape: str = "circle") -> pd.DataFrame:
    """Per-axon table as AxonDeepSeg 5.5 computes it (columns ``ADS_COLUMNS``, one row per axon)."""
    axon = np.asarray(axon_mask).astype(bool)
    myelin = np.asarray(myelin_mask).astype(bool)
    labels = measure.label(axon, connectivity=2)
    axon_objects = measure.regionprops(labels)
    rows = [int(p.centroid[0]) for p in axon_objects]
    cols = [int(p.centroid[1]) for p in axon_objects]
    seeds = np.zeros(axon.shape, dtype=np.int32)
    for i, (r, c) in enumerate(zip(rows, cols)):
        seeds[r, c] = i + 1
    distance = ndi.distance_transform_edt(axon)
    fibre_labels = watershed(-distance, seeds, mask=axon | myelin)
    fibres = {p.label: p for p in measure.regionprops(fibre_labels)}

    def diameter(region):
        return region.equivalent_diameter_area if axon_shape == "circle" else region.axis_minor_length

    records = []
    for prop in axon_objects:
        y0, x0 = prop.centroid
        axon_diam = diameter(prop) * pixel_size_um
        record = {
            "x0 (px)": x0, "y0 (px)": y0, "axon_area (um^2)": prop.area * pixel_size_um ** 2,
            "axon_perimeter (um)": prop.perimeter * pixel_size_um, "axon_diam (um)": axon_diam,
            "eccentricity": prop.eccentricity, "orientation": prop.orientation, "solidity": prop.solidity,
        }
        fibre_label = fibre_labels[int(y0), int(x0)]
        if fibre_label:
            fibre = fibres[fibre_label]
            thickness = pixel_size_um * (diameter(fibre) - diameter(prop)) / 2
            bbox = fibre.bbox
            if axon_diam / 2 + thickness:
                record.update({
                    "gratio": (axon_diam / 2) / (axon_diam / 2 + thickness),
                    "myelin_thickness (um)": thickness,
                    "myelin_area (um^2)": pixel_size_um ** 2 * (fibre.area - prop.area),
                    "axonmyelin_area (um^2)": pixel_size_um ** 2 * fibre.area,
                    "axonmyelin_perimeter (um)": fibre.perimeter * pixel_size_um,
                })
            # else: ADS catches the ZeroDivisionError and leaves all five myelin values NaN
            record.update({
                "fiber_eccentricity": fibre.eccentricity, "fiber_orientation": fibre.orientation,
                "image_border_touching": bool(0 in bbox[:2] or bbox[2] == axon.shape[0] or bbox[3] == axon.shape[1]),
                "bbox_min_y": bbox[0], "bbox_min_x": bbox[1], "bbox_max_y": bbox[2], "bbox_max_x": bbox[3],
            })
        records.append(record)
    return pd.DataFrame(records, columns=ADS_COLUMNS)
