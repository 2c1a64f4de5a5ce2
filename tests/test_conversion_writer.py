"""The shared nnU-Net raw writer: layout, atomicity, overwrite and ID safety, folds, file copies with label remaps."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from nnunet_ext.dataset_conversion.nnunet_raw import (AXON_MYELIN_LABELS, NnUNetRawWriter, check_splits,
                                                      read_manifest)


class _SerialPool:
    """Stands in for nnU-Net's spawn pool so that its dataset check runs in this process (seconds, not minutes)."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def starmap(self, function, arguments):
        return [function(*a) for a in arguments]


class _SerialContext:
    Pool = _SerialPool


def verify_in_process(folder, monkeypatch) -> None:
    """nnU-Net's ``verify_dataset_integrity`` (what ``--verify_dataset_integrity`` runs), without worker processes."""
    from nnunetv2.experiment_planning import verify_dataset_integrity as module

    monkeypatch.setattr(module.multiprocessing, "get_context", lambda *a, **k: _SerialContext())
    module.verify_dataset_integrity(str(folder), 1)


def _image(seed, shape=(32, 40), dtype=np.uint8):
    return np.random.default_rng(seed).integers(0, 200, shape).astype(dtype)


def _label(seed, shape=(32, 40), n=3):
    return np.random.default_rng(seed).integers(0, n, shape).astype(np.uint8)


def test_writes_nnunet_layout_manifest_and_validation_fold(tmp_path, monkeypatch):
    with NnUNetRawWriter(tmp_path, 7, "Toy", AXON_MYELIN_LABELS, case_prefix="TOY") as writer:
        writer.add_case(_image(0), _label(0), subject="sub-a", pixel_size_um=0.1, source_files=["a.png"])
        writer.add_case(_image(1), _label(1), split="validation", subject="sub-b")
        writer.add_case(_image(2, dtype=np.uint16), None, split="test", subject="sub-c")
        writer.add_case(_image(3), _label(3), split="test", subject="sub-d", region="r1")
        folder = writer.finish()
    assert folder == tmp_path / "Dataset007_Toy"
    assert sorted(os.listdir(folder / "imagesTr")) == ["TOY_000_0000.png", "TOY_001_0000.png"]
    assert sorted(os.listdir(folder / "imagesTs")) == ["TOY_002_0000.png", "TOY_003_0000.png"]
    assert sorted(os.listdir(folder / "labelsTs")) == ["TOY_003.png"]
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["numTraining"] == 2 and dataset_json["labels"] == AXON_MYELIN_LABELS
    assert dataset_json["channel_names"] == {"0": "rescale_to_0_1"}
    assert json.loads((folder / "splits_final.json").read_text()) == [{"train": ["TOY_000"], "val": ["TOY_001"]}]
    manifest = read_manifest(folder)
    assert manifest["split"].tolist() == ["train", "validation", "test", "test"]
    assert manifest.columns[:7].tolist() == ["case_id", "split", "source_files", "subject", "sample", "modality",
                                             "pixel_size_um"]
    assert manifest.loc[0, "source_files"].endswith("a.png") and manifest.loc[0, "pixel_size_um"] == 0.1
    from PIL import Image

    assert np.array(Image.open(folder / "imagesTs" / "TOY_002_0000.png")).dtype == np.uint16  # 16 bit stays
    verify_in_process(folder, monkeypatch)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_error_leaves_nothing_and_existing_dataset_is_kept(tmp_path):
    existing = tmp_path / "Dataset001_A"
    existing.mkdir()
    (existing / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="--overwrite"):
        NnUNetRawWriter(tmp_path, 1, "A")
    with pytest.raises(FileExistsError, match="already uses dataset ID 1"):
        NnUNetRawWriter(tmp_path, 1, "B")
    with pytest.raises(ValueError, match="label values \\[7\\]"):
        with NnUNetRawWriter(tmp_path, 2, "C") as writer:
            writer.add_case(_image(0), _label(0))
            writer.add_case(_image(1), np.full((32, 40), 7, np.uint8), source_files=["bad_mask.png"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset001_A"]
    assert (existing / "keep.txt").read_text() == "user data"
    with NnUNetRawWriter(tmp_path, 1, "A", overwrite=True) as writer:
        writer.add_case(_image(0), _label(0))
        writer.finish()
    assert not (existing / "keep.txt").exists() and (existing / "dataset.json").is_file()


@pytest.mark.parametrize("problem, match", [
    (lambda w: w.add_case(_image(0), _label(0, (30, 40))), "label shape"),
    (lambda w: w.add_case(_image(0), None), "train cases need a label"),
    (lambda w: w.add_case(_image(0), _label(0).astype(float)), "integer array"),
    (lambda w: w.add_case(_image(0, (4, 32, 40)), None, split="test"), "2D images"),
    (lambda w: w.add_case(_image(0), _label(0), split="val"), "split must be one of"),
])
def test_bad_cases_are_named(tmp_path, problem, match):
    with pytest.raises(ValueError, match=match):
        with NnUNetRawWriter(tmp_path, 3, "Bad") as writer:
            problem(writer)
    assert list(tmp_path.iterdir()) == []


def test_preprocessed_splits_and_id_clash(tmp_path):
    preprocessed = tmp_path / "pre"
    (preprocessed / "Dataset004_Other").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="Dataset004_Other"):
        NnUNetRawWriter(tmp_path / "raw", 4, "Mine", preprocessed_root=preprocessed)
    target = preprocessed / "Dataset005_Mine" / "splits_final.json"
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps([{"train": ["x"], "val": ["y"]}]))
    with pytest.raises(FileExistsError, match="other folds"):
        with NnUNetRawWriter(tmp_path / "raw", 5, "Mine", preprocessed_root=preprocessed) as writer:
            writer.add_case(_image(0), _label(0))
            writer.add_case(_image(1), _label(1), split="validation")
            writer.finish()
    assert not (tmp_path / "raw" / "Dataset005_Mine").exists()
    with NnUNetRawWriter(tmp_path / "raw", 5, "Mine", preprocessed_root=preprocessed, overwrite=True) as writer:
        writer.add_case(_image(0), _label(0))
        writer.add_case(_image(1), _label(1), split="validation")
        writer.finish()
    assert json.loads(target.read_text()) == [{"train": ["Mine_000"], "val": ["Mine_001"]}]


def test_check_splits_rejects_leaks_and_unknown_cases():
    with pytest.raises(ValueError, match="both train and val"):
        check_splits([{"train": ["a", "b"], "val": ["b"]}], ["a", "b"])
    with pytest.raises(ValueError, match="not training cases"):
        check_splits([{"train": ["a"], "val": ["z"]}], ["a", "b"])


@pytest.mark.parametrize("ending", [".nii.gz", ".tif"])
def test_3d_spacing_and_copy_with_label_remap(tmp_path, ending, monkeypatch):
    labels = {"background": 0, "neuron": 1}
    spacing = (2.0, 0.5, 0.25)
    with NnUNetRawWriter(tmp_path, 8, "Vol", labels, channel_names={"0": "zscore"}, file_ending=ending) as writer:
        for seed in range(2):
            writer.add_case(_image(seed, (6, 16, 20)), _label(seed, (6, 16, 20), 2), spacing=spacing)
        source = writer.finish()
    verify_in_process(source, monkeypatch)
    # copy into a dataset whose labels swap: 0 -> 1, 1 -> 0
    with NnUNetRawWriter(tmp_path, 9, "Copy", {"background": 0, "other": 1}, channel_names={"0": "zscore"},
                         file_ending=ending) as writer:
        writer.add_case_files([source / "imagesTr" / f"Vol_000_0000{ending}"], source / "labelsTr" / f"Vol_000{ending}",
                              label_lookup=np.array([1, 0]))
        with pytest.raises(ValueError, match="no mapping"):
            writer.add_case_files([source / "imagesTr" / f"Vol_001_0000{ending}"],
                                  source / "labelsTr" / f"Vol_001{ending}", label_lookup=np.array([0]))
        copy = writer.finish()
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    reader = determine_reader_writer_from_dataset_json(json.loads((copy / "dataset.json").read_text()),
                                                       str(copy / "imagesTr" / f"Copy_000_0000{ending}"))()
    original, props = reader.read_seg(str(source / "labelsTr" / f"Vol_000{ending}"))
    remapped, copy_props = reader.read_seg(str(copy / "labelsTr" / f"Copy_000{ending}"))
    np.testing.assert_array_equal(remapped, 1 - original)
    np.testing.assert_allclose(copy_props["spacing"], spacing)
    image, image_props = reader.read_images([str(copy / "imagesTr" / f"Copy_000_0000{ending}")])
    np.testing.assert_allclose(image_props["spacing"], spacing)
    assert pd.read_csv(copy / "manifest.csv")["case_id"].tolist() == ["Copy_000"]


def test_threaded_writes_match_serial_ones_and_failures_surface(tmp_path, monkeypatch):
    folders = []
    for threads in (1, 3):
        with NnUNetRawWriter(tmp_path / f"t{threads}", 10, "Threads", write_threads=threads) as writer:
            for seed in range(12):
                writer.add_case(_image(seed, (64, 80)), _label(seed, (64, 80)), split="test" if seed > 9 else "train")
            folders.append(writer.finish())
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        names = sorted(os.listdir(folders[0] / sub))
        assert names == sorted(os.listdir(folders[1] / sub)) and names
        for name in names:
            assert (folders[0] / sub / name).read_bytes() == (folders[1] / sub / name).read_bytes()

    def broken_write(self, array, path, spacing):
        raise OSError("disk full")

    monkeypatch.setattr(NnUNetRawWriter, "_write_array", broken_write)
    with pytest.raises(OSError, match="Broken_000_0000.png: writing failed \\(disk full\\)"):
        with NnUNetRawWriter(tmp_path / "broken", 11, "Broken", write_threads=2) as writer:
            for seed in range(12):
                writer.add_case(_image(seed), _label(seed))
            writer.finish()
    assert list((tmp_path / "broken").iterdir()) == []
