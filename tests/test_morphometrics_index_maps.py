"""AxonDeepSeg 5.5's index images and instance maps: names, values and positions written out by hand."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nnunet_ext.cli import main as cli_main


def _scene(tmp_path):
    """60x80 label: fibre 1 (8x8, axon 4x4 inside) at rows 10-17, cols 10-17; fibre 2 at rows 30-37, cols 50-57."""
    label = np.zeros((60, 80), np.uint8)
    for row, col in ((10, 10), (30, 50)):
        label[row:row + 8, col:col + 8] = 1
        label[row + 2:row + 6, col + 2:col + 6] = 2
    (tmp_path / "in").mkdir()
    Image.fromarray(label).save(tmp_path / "in" / "s.png")
    return label


def test_index_images_and_instance_maps(tmp_path):
    label = _scene(tmp_path)
    assert cli_main(["morphometrics", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--pixel-size", "0.1",
                     "--no-qc", "-c"]) == 0
    out = tmp_path / "out"
    # raw instance map: 16-bit, fibre k = axon k (its axon and the myelin around it)
    instance = np.array(Image.open(out / "s_instance-map.png"))
    expected = np.zeros((60, 80), np.int64)
    expected[10:18, 10:18] = 1
    expected[30:38, 50:58] = 2
    np.testing.assert_array_equal(instance, expected)
    # colorized: ADS's colour cycle (217, 237, 146), (118, 200, 147), ... on black
    colorized = np.array(Image.open(out / "s_colorized.png").convert("RGB"))
    assert tuple(colorized[12, 12]) == (217, 237, 146) and tuple(colorized[32, 52]) == (118, 200, 147)
    assert tuple(colorized[0, 0]) == (0, 0, 0)
    # index image: numbers 0 and 1 (table rows) in 255 near the centroids (13.5, 13.5) and (33.5, 53.5), font
    # size 10 (ADS's minimum; mean diameter 4.5 px / 3 < 10): drawn from (x0 - 5, y0 - 5)
    index = np.array(Image.open(out / "s_index.png"))
    assert index.dtype == np.uint8 and index.max() == 255
    rows, cols = np.nonzero(index)
    near_first = (abs(cols - 13.5) < 12) & (abs(rows - 13.5) < 12)
    near_second = (abs(cols - 53.5) < 12) & (abs(rows - 33.5) < 12)
    assert near_first.any() and near_second.any() and (near_first | near_second).all()
    assert cols[near_first].min() >= 8 and rows[near_first].min() >= 8  # from (x0 - 5, y0 - 5) rounded
    # coloured index: background black, myelin red, axon blue, numbers white
    coloured = np.array(Image.open(out / "s_axonmyelin_index.png").convert("RGB"))
    assert tuple(coloured[0, 79]) == (0, 0, 0)
    assert tuple(coloured[10, 17]) == (255, 0, 0) and tuple(coloured[32, 55]) == (0, 0, 255)
    np.testing.assert_array_equal(np.all(coloured == 255, axis=-1), index >= 128)


def test_defaults_and_opt_out(tmp_path):
    _scene(tmp_path)
    cli_main(["morphometrics", str(tmp_path / "in"), "-o", str(tmp_path / "a"), "--pixel-size", "0.1", "--no-qc"])
    assert (tmp_path / "a" / "s_index.png").is_file() and (tmp_path / "a" / "s_axonmyelin_index.png").is_file()
    assert not (tmp_path / "a" / "s_instance-map.png").exists()
    cli_main(["morphometrics", str(tmp_path / "in"), "-o", str(tmp_path / "b"), "--pixel-size", "0.1", "--no-qc",
              "--no-index-maps"])
    assert not (tmp_path / "b" / "s_index.png").exists()


def test_uaxon_and_nerve_index_images(tmp_path):
    label = _scene(tmp_path)
    label[50:54, 5:9] = 3  # an unmyelinated axon
    Image.fromarray(label).save(tmp_path / "in" / "s.png")
    nerve = np.zeros((60, 80), np.uint8)
    nerve[5:58, 2:78] = 255
    Image.fromarray(nerve).save(tmp_path / "nerve.png")
    cli_main(["morphometrics", str(tmp_path / "in" / "s.png"), "-o", str(tmp_path / "out"), "--pixel-size", "0.1",
              "--no-qc", "--nerve", str(tmp_path / "nerve.png")])
    uaxon = np.array(Image.open(tmp_path / "out" / "s_uaxon_index.png").convert("RGB"))
    assert tuple(uaxon[50, 5]) == (0, 0, 255) and tuple(uaxon[12, 12]) == (0, 0, 0)
    nerve_index = np.array(Image.open(tmp_path / "out" / "s_nerve_index.png").convert("RGB"))
    assert tuple(nerve_index[6, 3]) == (0, 0, 255) and tuple(nerve_index[0, 0]) == (0, 0, 0)
