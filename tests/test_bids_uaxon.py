"""convert bids --uaxon {drop,label,error}: unmyelinated-axon masks (AxonDeepSeg 5.5's _seg-uaxon-manual.png)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from nnunet_ext.cli import main as cli_main
from nnunet_ext.dataset_conversion.bids_microscopy import convert_bids_microscopy
from nnunet_ext.dataset_conversion.nnunet_raw import read_manifest


def _uaxon_bids(root):
    """Two 30x30 SEM images: the first has a uaxon mask of two 4x4 squares, one of whose pixels (1) lies under
    the axonmyelin mask's myelin; the second has none."""
    (root / "sub-a" / "micr").mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "u", "BIDSVersion": "1.8.0"}))
    labels = root / "derivatives" / "labels" / "sub-a" / "micr"
    labels.mkdir(parents=True)
    for index in (1, 2):
        stem = f"sub-a_sample-{index}_SEM"
        Image.fromarray(np.full((30, 30), 100, np.uint8)).save(root / "sub-a" / "micr" / f"{stem}.png")
        (root / "sub-a" / "micr" / f"{stem}.json").write_text(json.dumps({"PixelSize": [0.1, 0.1],
                                                                          "PixelSizeUnits": "um"}))
        mask = np.zeros((30, 30), np.uint8)
        mask[5:15, 5:15] = 127
        mask[8:12, 8:12] = 255
        Image.fromarray(mask).save(labels / f"{stem}_seg-axonmyelin-manual.png")
    uaxon = np.zeros((30, 30), np.uint8)
    uaxon[20:24, 20:24] = 255  # 16 px free
    uaxon[14:18, 14:18] = 255  # 16 px, one (14, 14) under myelin
    Image.fromarray(uaxon).save(labels / "sub-a_sample-1_SEM_seg-uaxon-manual.png")
    return root


def _labels(folder):
    manifest = read_manifest(folder)
    return [np.array(Image.open(folder / "labelsTr" / f"{case}.png")) for case in manifest["case_id"]], manifest


def test_default_drops_with_counts_in_a_warning(tmp_path):
    root = _uaxon_bids(tmp_path / "bids")
    with pytest.warns(UserWarning, match=r"1 image\(s\) with unmyelinated-axon masks, 32 px \(1 px under"):
        folder = convert_bids_microscopy(root, tmp_path / "raw", 11, "Default", progress=False)
    (first, second), _ = _labels(folder)
    assert set(np.unique(first)) == {0, 1, 2}
    assert json.loads((folder / "dataset.json").read_text())["labels"] == {"background": 0, "myelin": 1, "axon": 2}


def test_explicit_drop_is_quiet_and_label_adds_class_3(tmp_path, capsys):
    root = _uaxon_bids(tmp_path / "bids")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert_bids_microscopy(root, tmp_path / "raw", 12, "Drop", uaxon="drop", progress=False)
    assert "Dropped 1 image(s)" in capsys.readouterr().out
    folder = convert_bids_microscopy(root, tmp_path / "raw", 13, "Label", uaxon="label", progress=False)
    (first, second), manifest = _labels(folder)
    expected = np.zeros((30, 30), np.uint8)
    expected[5:15, 5:15] = 1
    expected[8:12, 8:12] = 2
    expected[20:24, 20:24] = 3
    expected[14:18, 14:18] = 3
    expected[14, 14] = 1  # myelin wins where the masks overlap
    np.testing.assert_array_equal(first, expected)
    assert 3 not in second
    labels = json.loads((folder / "dataset.json").read_text())["labels"]
    assert labels == {"background": 0, "myelin": 1, "axon": 2, "unmyelinated axon": 3}
    assert "seg-uaxon-manual.png" in manifest["source_files"].iloc[0]


def test_error_refuses_and_cli_option(tmp_path, capsys):
    root = _uaxon_bids(tmp_path / "bids")
    with pytest.raises(ValueError, match=r"1 image\(s\) have unmyelinated-axon masks"):
        convert_bids_microscopy(root, tmp_path / "raw", 14, "Error", uaxon="error", progress=False)
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())
    code = cli_main(["convert", "bids", str(root), "-d", "15", "-n", "Cli", "--raw", str(tmp_path / "raw"),
                     "--uaxon", "label"])
    assert code == 0
    assert "Labelled 1 image(s)" in capsys.readouterr().out
