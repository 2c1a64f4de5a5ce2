"""Inputs as users hand them to 'nnunet-ext morphometrics': real ADS axonmyelin masks with drifted grey values, a
converted dataset's labelsTr (pixel sizes from its manifest), a PNG with --chunk-size, warnings that name the file."""
from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nnunet_ext.cli import main as cli_main
from nnunet_ext.io.pixel_size import find_pixel_size
from test_morphometrics import synthetic_fibres


def _label(seed=3):
    axon, myelin = synthetic_fibres((120, 150), 40, seed=seed)
    label = np.zeros(axon.shape, np.uint8)
    label[myelin] = 1
    label[axon] = 2
    return label


def test_ads_axonmyelin_mask_with_drifted_values_reads_as_convert_bids(tmp_path, capsys):
    """ads_sem's sub-rat2 stores myelin as 128 with a few anti-aliased strays: read (with a warning naming the file
    and the values) instead of refused, with the same axons as the exact 0/127/255 mask."""
    label = _label()
    exact = np.select([label == 2, label == 1], [255, 127], 0).astype(np.uint8)
    drifted = np.where(exact == 127, 128, exact).astype(np.uint8)
    rows, cols = np.nonzero(exact == 255)
    drifted[rows[:3], cols[:3]] = 233  # three anti-aliased strays on axon pixels, far from every nominal value
    Image.fromarray(exact).save(tmp_path / "a_seg-axonmyelin.png")
    (tmp_path / "b").mkdir()
    Image.fromarray(drifted).save(tmp_path / "b" / "a_seg-axonmyelin.png")
    assert cli_main(["morphometrics", str(tmp_path / "a_seg-axonmyelin.png"), "-o", str(tmp_path / "exact"),
                     "--pixel-size", "0.1", "--no-qc"]) == 0
    # as a user runs it (a process: pytest's own warning capture would hide the CLI's format)
    run = subprocess.run([sys.executable, "-m", "nnunet_ext.cli", "morphometrics", str(tmp_path / "b"), "-o",
                          str(tmp_path / "drifted"), "--pixel-size", "0.1", "--no-qc"], capture_output=True,
                         text=True, check=True)
    assert "nnunet-ext morphometrics: warning: " in run.stderr
    assert "a_seg-axonmyelin.png: values other than 0/127/255" in run.stderr and "233 (3 px)" in run.stderr
    assert "warnings.warn" not in run.stderr  # a user-facing line, not Python's source line
    ours = pd.read_csv(tmp_path / "drifted" / "a_seg-axonmyelin_axon_morphometrics.csv")
    expected = pd.read_csv(tmp_path / "exact" / "a_seg-axonmyelin_axon_morphometrics.csv")
    assert len(ours) == len(expected) > 10
    coded = tmp_path / "c"
    coded.mkdir()
    Image.fromarray((label * 85).astype(np.uint8)).save(coded / "a_seg-axonmyelin.png")  # 0/85/170: another coding
    assert cli_main(["morphometrics", str(coded), "-o", str(tmp_path / "coded"), "--pixel-size", "0.1"]) != 0
    assert "refused rather than guessed" in capsys.readouterr().err


def test_labels_tr_takes_pixel_sizes_from_the_manifest(tmp_path):
    dataset = tmp_path / "Dataset901_X"
    (dataset / "labelsTr").mkdir(parents=True)
    for case, size in (("X_000", 0.1), ("X_001", 0.05)):
        Image.fromarray(_label()).save(dataset / "labelsTr" / f"{case}.png")
    with open(dataset / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "split", "pixel_size_um"])
        writer.writerows([["X_000", "train", 0.1], ["X_001", "train", 0.05]])
    assert find_pixel_size(dataset / "labelsTr" / "X_001.png") == (0.05, f"{dataset / 'manifest.csv'} (case X_001)")
    assert find_pixel_size(dataset / "imagesTr" / "X_000_0000.png")[0] == 0.1  # the channel suffix is the case's
    assert cli_main(["morphometrics", str(dataset / "labelsTr"), "-o", str(tmp_path / "out"), "--no-qc"]) == 0
    aggregate = pd.read_csv(tmp_path / "out" / "aggregate_morphometrics.csv")
    assert aggregate["pixel_size_um"].tolist() == [0.1, 0.05]
    assert aggregate["area (mm^2)"].iloc[0] == pytest.approx(4 * aggregate["area (mm^2)"].iloc[1])


def test_chunk_size_on_a_png_and_on_a_folder(tmp_path, capsys):
    label = _label()
    Image.fromarray(label).save(tmp_path / "s.png")
    assert cli_main(["morphometrics", str(tmp_path / "s.png"), "-o", str(tmp_path / "chunked"), "--pixel-size",
                     "0.1", "--chunk-size", "64", "--no-qc"]) == 0
    assert cli_main(["morphometrics", str(tmp_path / "s.png"), "-o", str(tmp_path / "memory"), "--pixel-size",
                     "0.1", "--no-qc", "--no-index-maps"]) == 0
    chunked = pd.read_csv(tmp_path / "chunked" / "s_axon_morphometrics.csv")
    memory = pd.read_csv(tmp_path / "memory" / "s_axon_morphometrics.csv")
    np.testing.assert_allclose(chunked["gratio"], memory["gratio"], rtol=1e-12)
    assert cli_main(["morphometrics", str(tmp_path), "-o", str(tmp_path / "x"), "--pixel-size", "0.1",
                     "--chunk-size", "64"]) != 0
    assert "a folder; the chunked path (--chunk-size) measures one label slide" in capsys.readouterr().err


def test_overlap_warning_names_the_masks(tmp_path):
    label = _label()
    axon, myelin = label == 2, label >= 1  # myelin covers the axons too
    for kind, mask in (("axon", axon), ("myelin", myelin)):
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / f"m_seg-{kind}.png")
    from nnunet_ext.morphometrics.measure_files import discover_inputs, run_morphometrics

    with pytest.warns(UserWarning, match=r"m_seg-axon\.png: \d+ pixel\(s\) are set in both"):
        run_morphometrics(discover_inputs(tmp_path, pixel_size_um=0.1), tmp_path / "out", qc=False)


def test_a_segment_output_tree_is_measured_again_without_options(tmp_path):
    """What 'segment' writes for a BIDS dataset (sub-*/micr with ADS masks, the label and the pixel-size sidecar)
    is found under the output root, each image with its own pixel size."""
    import json

    for subject, size in (("01", 0.1), ("02", 0.05)):
        folder = tmp_path / "seg" / f"sub-{subject}" / "micr"
        folder.mkdir(parents=True)
        label = _label(seed=int(subject))
        stem = f"sub-{subject}_sample-1_SEM"
        for kind, mask in (("axon", label == 2), ("myelin", label == 1)):
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{stem}_seg-{kind}.png")
        Image.fromarray(label).save(folder / f"{stem}.png")
        (folder / f"{stem}.json").write_text(json.dumps({"PixelSize": [size, size], "PixelSizeUnits": "um"}))
    assert cli_main(["morphometrics", str(tmp_path / "seg"), "-o", str(tmp_path / "out"), "--no-qc"]) == 0
    aggregate = pd.read_csv(tmp_path / "out" / "aggregate_morphometrics.csv")
    assert aggregate["image"].tolist() == ["sub-01_sample-1_SEM", "sub-02_sample-1_SEM"]
    assert aggregate["pixel_size_um"].tolist() == [0.1, 0.05]


def test_masks_in_bids_derivatives_take_the_image_sidecar():
    """A folder or mask inside a BIDS dataset's derivatives/labels finds its image's sidecar in the dataset (BIDS
    inheritance), the pixel size that the dataset root gives."""
    from pathlib import Path

    from nnunet_ext.morphometrics.measure_files import discover_inputs

    root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ads_sem"
    if not root.is_dir():
        pytest.skip(f"{root}: the shared sample data is not here")
    from_root = {i.name: i.pixel_size_um for i in discover_inputs(root)}
    inside = discover_inputs(root / "derivatives" / "labels" / "sub-rat3" / "micr")
    assert len(inside) == 3 and all(i.pixel_size_source.startswith("BIDS sidecar") for i in inside)
    assert {i.name: i.pixel_size_um for i in inside} == {n: from_root[n] for n in (i.name for i in inside)}
    single = discover_inputs(root / "derivatives" / "labels" / "sub-rat2" / "micr" /
                             "sub-rat2_sample-data5_SEM_seg-axonmyelin-manual.png")
    assert single[0].pixel_size_um == from_root["sub-rat2_sample-data5_SEM"]
