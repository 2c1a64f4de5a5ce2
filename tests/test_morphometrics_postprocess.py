"""Post-processing of predicted masks for morphometrics."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nnunet_ext.morphometrics.postprocess import (DEFAULT_POSTPROCESS, NO_POSTPROCESS, myelin_coverage,
                                                  postprocess_masks)

ADS_SEM = Path(__file__).resolve().parents[2] / "shared" / "data" / "ads_sem"


def scene():
    """A myelinated axon with a hole, an unmyelinated axon, a 2x2 fragment in the background, orphan myelin."""
    axon = np.zeros((60, 80), bool)
    myelin = np.zeros_like(axon)
    yy, xx = np.mgrid[:60, :80]
    d2 = (yy - 20) ** 2 + (xx - 20) ** 2
    axon[d2 <= 64] = True
    myelin[(d2 > 64) & (d2 <= 144)] = True
    axon[20, 20] = False                      # a one-pixel hole
    axon[(yy - 20) ** 2 + (xx - 55) ** 2 <= 36] = True   # no myelin ring
    axon[50:52, 10:12] = True                 # fragment: 4 px
    myelin[45:55, 60:70] = True               # myelin without an axon
    return axon, myelin


def test_each_rule():
    axon, myelin = scene()
    out_axon, out_myelin, report = postprocess_masks(axon, myelin, 0.1, **DEFAULT_POSTPROCESS)
    assert report == {"axons_in": 3, "holes_filled_px": 1, "removed_small": 1, "removed_no_myelin_ring": 1,
                      "axons_out": 1, "orphan_myelin_removed_px": 0}
    assert out_axon[20, 20] and not out_axon[20, 55] and not out_axon[50, 10]
    assert np.array_equal(out_myelin, myelin)
    _, out_myelin, report = postprocess_masks(axon, myelin, 0.1, **{**DEFAULT_POSTPROCESS,
                                                                     "drop_orphan_myelin": True})
    assert report["orphan_myelin_removed_px"] == 100 and not out_myelin[50, 65] and out_myelin[20, 31]
    same_axon, same_myelin, report = postprocess_masks(axon, myelin, 0.1, **NO_POSTPROCESS)
    assert np.array_equal(same_axon, axon) and np.array_equal(same_myelin, myelin)
    assert report["axons_out"] == 3


def test_coverage_and_errors():
    axon, myelin = scene()
    from scipy import ndimage as ndi

    labels, n = ndi.label(axon, structure=np.ones((3, 3)))
    coverage = myelin_coverage(labels, n, myelin)
    assert coverage[0] > 0.98 and coverage[1] == 0.0 and coverage[2] == 0.0  # the hole counts as non-myelin
    with pytest.raises(ValueError, match="pixel size"):
        postprocess_masks(axon, myelin, None, min_axon_area_um2=0.1)
    with pytest.raises(ValueError, match="between 0 and 1"):
        postprocess_masks(axon, myelin, 0.1, min_myelin_coverage=2)


def test_defaults_keep_the_manual_axons_of_ads_sem_training_images():
    """The defaults are set so that they leave manual masks (nearly) intact: on one training image of ads_sem."""
    label = ADS_SEM / "derivatives" / "labels" / "sub-rat5" / "micr" / "sub-rat5_sample-data14_SEM_seg-axonmyelin-manual.png"
    if not label.is_file():
        pytest.skip("../shared/data/ads_sem not available")
    from nnunet_ext.io.images import read_image_2d

    image = read_image_2d(label)
    axon, myelin = image > 200, (image > 100) & (image <= 200)
    _, _, report = postprocess_masks(axon, myelin, 0.13, **DEFAULT_POSTPROCESS)
    assert report["removed_no_myelin_ring"] == 0 and report["removed_small"] == 0
    assert report["axons_out"] == report["axons_in"] == 2487


def test_morphometrics_cli_postprocess(tmp_path):
    from PIL import Image

    from nnunet_ext.cli import main

    axon, myelin = scene()
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(axon.astype(np.uint8) * 255).save(folder / "x_seg-axon.png")
    Image.fromarray(myelin.astype(np.uint8) * 255).save(folder / "x_seg-myelin.png")
    assert main(["morphometrics", str(folder), "-o", str(tmp_path / "raw"), "--pixel-size", "0.1", "--no-qc"]) == 0
    assert main(["morphometrics", str(folder), "-o", str(tmp_path / "pp"), "--pixel-size", "0.1", "--no-qc",
                 "--postprocess", "--pp-drop-orphan-myelin"]) == 0
    import pandas as pd

    raw = pd.read_csv(tmp_path / "raw" / "aggregate_morphometrics.csv").iloc[0]
    cleaned = pd.read_csv(tmp_path / "pp" / "aggregate_morphometrics.csv").iloc[0]
    assert raw["axon_count"] == 3 and cleaned["axon_count"] == 1
    assert "removed_no_myelin_ring=1" in cleaned["postprocess"] and cleaned["mvf"] < raw["mvf"]
    assert main(["morphometrics", str(folder), "-o", str(tmp_path / "x"), "--pixel-size", "0.1",
                 "--pp-min-axon-area", "1"]) == 1  # --pp-* without --postprocess
