"""segment writes AxonDeepSeg 5.5's <stem>_seg-uaxon.png when the model has an 'unmyelinated axon' class."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from PIL import Image

from nnunet_ext.segmentation import segment_files


def _segment(tmp_path, monkeypatch, labels_map):
    labels = np.array([[0, 1, 2, 3], [3, 3, 0, 2]], np.uint8)
    Image.fromarray(np.full((2, 4), 50, np.uint8)).save(tmp_path / "img.png")
    monkeypatch.setattr(segment_files, "predict_image", lambda predictor, image, return_probabilities: labels)
    item = SimpleNamespace(path=tmp_path / "img.png", name="img")
    out = tmp_path / "out"
    out.mkdir()
    record = segment_files._segment_image_input(item, out, None, labels_map,
                                                segment_files.axon_myelin_values(labels_map), False)
    return out, record


def test_uaxon_mask_written_for_a_four_class_model(tmp_path, monkeypatch):
    out, record = _segment(tmp_path, monkeypatch, {"background": 0, "myelin": 1, "axon": 2,
                                                   "unmyelinated axon": 3})
    uaxon = np.array(Image.open(out / "img_seg-uaxon.png"))
    np.testing.assert_array_equal(uaxon, [[0, 0, 0, 255], [255, 255, 0, 0]])
    np.testing.assert_array_equal(np.array(Image.open(out / "img_seg-axon.png")), [[0, 0, 255, 0], [0, 0, 0, 255]])
    assert record.fractions["unmyelinated axon"] == 3 / 8


def test_no_uaxon_mask_for_a_three_class_model(tmp_path, monkeypatch):
    out, _ = _segment(tmp_path, monkeypatch, {"background": 0, "myelin": 1, "axon": 2})
    assert not (out / "img_seg-uaxon.png").exists() and (out / "img_seg-axon.png").exists()
