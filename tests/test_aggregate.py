"""``nnunet-ext aggregate``: merged datasets, folds that validate on every source, label schemas, and a short nnU-Net
training on an aggregate."""
from __future__ import annotations

import filecmp
import json
import os

import numpy as np
import pytest
from PIL import Image

from nnunet_ext.dataset_conversion.aggregate_datasets import aggregate_datasets, grouped_folds
from nnunet_ext.dataset_conversion.bids_microscopy import convert_bids_microscopy
from nnunet_ext.dataset_conversion.nnunet_raw import NnUNetRawWriter, read_manifest
from test_conversion_writer import verify_in_process


@pytest.fixture(scope="module")
def two_contrasts(tmp_path_factory):
    """TEM and SEM phantoms of the same eight animals, converted as two datasets (sub-08 held out as test)."""
    from nnunet_ext.phantoms.bids_writer import write_bids_phantom_dataset

    base = tmp_path_factory.mktemp("agg")
    bids = write_bids_phantom_dataset(base / "bids", contrasts=("TEM", "SEM"), n_subjects=8, samples_per_subject=2,
                                      shape=(96, 96), seed=3, progress=False)
    raw = base / "raw"
    for dataset_id, contrast in ((41, "TEM"), (42, "SEM")):
        convert_bids_microscopy(bids, raw, dataset_id, contrast, modalities=[contrast], test_subjects=["08"],
                                progress=False)
    return raw


def _fold_checks(folder):
    manifest = read_manifest(folder).set_index("case_id")
    splits = json.loads((folder / "splits_final.json").read_text())
    training = manifest[manifest["split"] != "test"]
    sources = set(training["source_dataset"])
    seen = []
    for fold in splits:
        val, train = manifest.loc[fold["val"]], manifest.loc[fold["train"]]
        assert set(val["source_dataset"]) == sources  # every fold validates on every source
        assert not set(val["subject"]) & set(train["subject"])  # no subject on both sides
        assert sorted(fold["train"] + fold["val"]) == sorted(training.index)
        seen += fold["val"]
    assert sorted(seen) == sorted(training.index)  # each training case validated exactly once
    return manifest, splits


def test_aggregate_two_sources(two_contrasts, tmp_path, monkeypatch):
    raw = two_contrasts
    preprocessed = tmp_path / "pre"
    folder = aggregate_datasets(["Dataset041_TEM", 42], raw, 43, "FULL_AGG", preprocessed_root=preprocessed,
                                progress=False)
    manifest, splits = _fold_checks(folder)
    assert len(splits) == 5
    assert manifest.groupby(["source_dataset", "split"]).size().to_dict() == {
        ("Dataset041_TEM", "test"): 2, ("Dataset041_TEM", "train"): 14,
        ("Dataset042_SEM", "test"): 2, ("Dataset042_SEM", "train"): 14}
    # cases are copies of their sources, renamed; test sets are unioned with their labels
    for case_id, row in manifest.iterrows():
        kind = ("imagesTs", "labelsTs") if row.split == "test" else ("imagesTr", "labelsTr")
        source = raw / row.source_dataset
        assert filecmp.cmp(folder / kind[0] / f"{case_id}_0000.png",
                           source / kind[0] / f"{row.source_case_id}_0000.png", shallow=False)
        assert filecmp.cmp(folder / kind[1] / f"{case_id}.png", source / kind[1] / f"{row.source_case_id}.png",
                           shallow=False)
        assert row.source_files.endswith("_seg-axonmyelin-manual.png")  # provenance back to the BIDS files
    assert sorted(os.listdir(folder / "imagesTs")) == [f"{c}_0000.png" for c in
                                                        sorted(manifest.index[manifest["split"] == "test"])]
    assert json.loads((preprocessed / "Dataset043_FULL_AGG" / "splits_final.json").read_text()) == splits
    verify_in_process(folder, monkeypatch)


def test_folds_are_deterministic_with_a_seed(two_contrasts):
    raw = two_contrasts

    def folds_by_source_case(dataset_id, seed):
        folder = aggregate_datasets([raw / "Dataset041_TEM", raw / "Dataset042_SEM"], raw, dataset_id, f"Seed{seed}x"
                                    f"{dataset_id}", seed=seed, progress=False)
        manifest = read_manifest(folder).set_index("case_id")
        splits = json.loads((folder / "splits_final.json").read_text())
        return [sorted(manifest.loc[f["val"], "source_case_id"] + "@" + manifest.loc[f["val"], "source_dataset"])
                for f in splits]

    seed_0 = folds_by_source_case(44, 0)
    assert folds_by_source_case(45, 0) == seed_0
    # 7 training subjects in 5 folds: another seed pairs them differently (not only in another fold order)
    assert {frozenset(f) for f in folds_by_source_case(46, 1)} != {frozenset(f) for f in seed_0}


def test_grouped_folds_need_enough_groups_per_source():
    import pandas as pd

    cases = pd.DataFrame({"case_id": [f"c{i}" for i in range(12)], "source": ["A"] * 8 + ["B"] * 4,
                          "group": [f"a{i // 2}" for i in range(8)] + ["b0", "b0", "b1", "b1"]})
    with pytest.raises(ValueError, match="B: only 2 group\\(s\\) of training cases for 3 folds.*--group-by B=sample"):
        grouped_folds(cases, n_folds=3)
    folds = grouped_folds(cases, n_folds=2, seed=5)
    assert {folds["c8"], folds["c10"]} == {0, 1} and folds["c8"] == folds["c9"]
    assert sorted(folds.values()) == [0] * 6 + [1] * 6  # balanced: groups of two, four per fold and source mix


def _tiny_dataset(raw, dataset_id, name, labels, subjects, ending=".png", channel_names=None, values=None):
    rng = np.random.default_rng(dataset_id)
    with NnUNetRawWriter(raw, dataset_id, name, labels, file_ending=ending, channel_names=channel_names) as writer:
        for subject in subjects:
            label = rng.integers(0, len(labels), (16, 16)).astype(np.uint8) if values is None else \
                rng.choice(values, (16, 16)).astype(np.uint8)
            writer.add_case(rng.integers(0, 255, (16, 16)).astype(np.uint8), label, subject=subject)
        return writer.finish()


def test_label_schemas_are_matched_by_name_or_mapped(tmp_path):
    raw = tmp_path / "raw"
    subjects = [f"s{i}" for i in range(5)]
    reference = _tiny_dataset(raw, 51, "Ref", {"background": 0, "myelin": 1, "axon": 2}, subjects)
    swapped = _tiny_dataset(raw, 52, "Swapped", {"background": 0, "axon": 1, "myelin": 2},
                            [f"t{i}" for i in range(5)])
    vessels = _tiny_dataset(raw, 53, "Vessels", {"background": 0, "myelin": 1, "axon": 2, "vessel": 3},
                            [f"u{i}" for i in range(5)])
    folder = aggregate_datasets([reference, swapped], raw, 54, "ByName", progress=False)
    manifest = read_manifest(folder)
    for row in manifest[manifest["source_dataset"] == "Dataset052_Swapped"].itertuples():
        original = np.array(Image.open(swapped / "labelsTr" / f"{row.source_case_id}.png"))
        merged = np.array(Image.open(folder / "labelsTr" / f"{row.case_id}.png"))
        np.testing.assert_array_equal(merged, np.array([0, 2, 1])[original])  # axon 1 -> 2, myelin 2 -> 1
    with pytest.raises(ValueError, match="Dataset053_Vessels/dataset.json: label 'vessel' \\(3\\) has no "
                                         "counterpart.*--label-map"):
        aggregate_datasets([reference, vessels], raw, 55, "NoMap", progress=False)
    assert not (raw / "Dataset055_NoMap").exists()
    folder = aggregate_datasets([reference, vessels], raw, 55, "Mapped", progress=False,
                                label_mapping={"Dataset053_Vessels": {"vessel": "background"}})
    row = read_manifest(folder).query("source_dataset == 'Dataset053_Vessels'").iloc[0]
    original = np.array(Image.open(vessels / "labelsTr" / f"{row.source_case_id}.png"))
    np.testing.assert_array_equal(np.array(Image.open(folder / "labelsTr" / f"{row.case_id}.png")),
                                  np.where(original == 3, 0, original))


def test_incompatible_or_unsafe_requests_are_refused(tmp_path, capsys):
    from nnunet_ext.cli import main

    raw = tmp_path / "raw"
    labels = {"background": 0, "myelin": 1, "axon": 2}
    subjects = [f"s{i}" for i in range(5)]
    a = _tiny_dataset(raw, 61, "A", labels, subjects)
    b = _tiny_dataset(raw, 62, "B", labels, [f"t{i}" for i in range(5)])
    _tiny_dataset(raw, 63, "Nifti", labels, subjects, ending=".nii.gz")
    _tiny_dataset(raw, 64, "Zscore", labels, subjects, channel_names={"0": "zscore"})
    _tiny_dataset(raw, 65, "Few", labels, ["x", "x", "x", "y", "y"])
    common = ["--raw", str(raw), "-d", "66", "-n", "AGG"]
    for sources, message in ((["61", "63"], "file_ending '.nii.gz' differs"),
                             (["61", "64"], "channel_names .* differs"),
                             (["61", "61"], "each dataset may be listed once"),
                             (["61", "65"], "Dataset065_Few: only 2 group\\(s\\)"),
                             (["61", "99"], "dataset ID 99: no dataset"),
                             (["61", "62", "--label-map", str(tmp_path / "none.json")], "none.json: cannot read")):
        assert main(["aggregate", *sources, *common]) == 1
        assert __import__("re").search(message, capsys.readouterr().err), message
    assert main(["aggregate", "61", "65", *common, "--group-by", "Dataset065_Few=case"]) == 0
    assert main(["aggregate", "61", "62", *common]) == 1
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(["aggregate", "61", "62", "--raw", str(raw), "-d", "61", "-n", "Other"]) == 1
    assert "already uses dataset ID 61" in capsys.readouterr().err
    assert main(["aggregate", str(a), str(b), *common, "--overwrite", "--folds", "3"]) == 0
    assert len(json.loads((raw / "Dataset066_AGG" / "splits_final.json").read_text())) == 3


@pytest.mark.slow
def test_train_one_fold_on_an_aggregate_with_the_cpu_trainer(tmp_path):
    """Aggregate two converted datasets, plan and preprocess with nnU-Net (checking integrity), train fold 0 with
    nnUNetTrainerCPUSmoke on our folds."""
    from nnunet_ext.phantoms.bids_writer import write_bids_phantom_dataset
    from nnunet_ext.nnunet.commands import cpu_environment, plan_and_preprocess_cpu, train

    env = cpu_environment(tmp_path)
    raw, preprocessed = env["nnUNet_raw"], env["nnUNet_preprocessed"]
    bids = write_bids_phantom_dataset(tmp_path / "bids", contrasts=("TEM", "SEM"), n_subjects=5,
                                      samples_per_subject=1, shape=(128, 128), seed=1, progress=False)
    for dataset_id, contrast in ((71, "TEM"), (72, "SEM")):
        convert_bids_microscopy(bids, raw, dataset_id, contrast, modalities=[contrast], progress=False)
    aggregate_datasets([71, 72], raw, 73, "AGG", preprocessed_root=preprocessed, progress=False)
    splits_file = tmp_path / "nnUNet_preprocessed" / "Dataset073_AGG" / "splits_final.json"
    ours = json.loads(splits_file.read_text())
    log = tmp_path / "nnunet.log"
    plans = plan_and_preprocess_cpu(73, env, "2d", patch_size=(64, 64), batch_size=4, log_file=log)
    assert "verify_dataset_integrity Done" in log.read_text()
    train(73, "2d", 0, "nnUNetTrainerCPUSmoke", env, plans=plans, log_file=log)
    fold = tmp_path / "nnUNet_results" / "Dataset073_AGG" / f"nnUNetTrainerCPUSmoke__{plans}__2d" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    validated = sorted(p.name.removesuffix(".png") for p in (fold / "validation").glob("*.png"))
    assert validated == sorted(ours[0]["val"])  # nnU-Net validated on our fold 0, which holds both sources
    assert json.loads(splits_file.read_text()) == ours
