"""--format xlsx: AxonDeepSeg's spreadsheet layout (unnamed 0-based index, its columns in its order, then ours)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nnunet_ext.cli import main as cli_main

pytest.importorskip("openpyxl")

# AxonDeepSeg 5.5's params.column_names_ordered with units, then the columns it appends (solidity, border info)
ADS_MYELINATED = ["x0 (px)", "y0 (px)", "gratio", "axon_area (um^2)", "axon_perimeter (um)", "myelin_area (um^2)",
                  "axon_diam (um)", "myelin_thickness (um)", "axonmyelin_area (um^2)", "axonmyelin_perimeter (um)",
                  "eccentricity", "orientation", "fiber_eccentricity", "fiber_orientation", "solidity",
                  "image_border_touching", "bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x"]
ADS_UNMYELINATED = ["x0 (px)", "y0 (px)", "axon_area (um^2)", "axon_perimeter (um)", "axon_diam (um)",
                    "eccentricity", "orientation", "solidity"]


def test_xlsx_has_ads_column_order_and_the_csv_values(tmp_path):
    label = np.zeros((40, 40), np.uint8)
    for row, col in ((4, 4), (20, 22)):
        label[row:row + 8, col:col + 8] = 1
        label[row + 2:row + 6, col + 2:col + 6] = 2
    label[33:36, 3:7] = 3
    (tmp_path / "in").mkdir()
    Image.fromarray(label).save(tmp_path / "in" / "s.png")
    for fmt in ("csv", "xlsx"):
        assert cli_main(["morphometrics", str(tmp_path / "in"), "-o", str(tmp_path / fmt), "--pixel-size", "0.1",
                         "--no-qc", "--no-index-maps", "--format", fmt]) == 0
    sheet = pd.read_excel(tmp_path / "xlsx" / "s_axon_morphometrics.xlsx", index_col=0)
    assert list(sheet.columns[:20]) == ADS_MYELINATED and sheet.index.tolist() == [0, 1]
    csv = pd.read_csv(tmp_path / "csv" / "s_axon_morphometrics.csv")
    np.testing.assert_allclose(sheet["gratio"], csv["gratio"])
    assert set(sheet.columns) == set(csv.columns)
    uaxon = pd.read_excel(tmp_path / "xlsx" / "s_uaxon_morphometrics.xlsx", index_col=0)
    assert list(uaxon.columns[:8]) == ADS_UNMYELINATED and len(uaxon) == 1
    assert uaxon["axon_area (um^2)"].iloc[0] == pytest.approx(12 * 0.01)
    assert not (tmp_path / "xlsx" / "s_axon_morphometrics.csv").exists()
    assert (tmp_path / "xlsx" / "axon_morphometrics.csv").is_file()
