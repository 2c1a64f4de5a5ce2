"""Shared fixtures: a tiny nnU-Net dataset built from synthetic BIDS phantoms, planned with the CPU plans, a model
trained on it through the stock ``nnUNetv2_train``, and a tiny 3D dataset of synthetic tubes (session-scoped: built
once, reused by every test that needs it).

Tests that train or predict carry the ``slow`` marker; they run in CI too (``pytest`` runs everything).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

TINY_DATASET_ID = 901
TINY_DATASET_NAME = "TinyPhantoms"
TUBES_DATASET_ID = 902
TUBES_DATASET_NAME = "Tubes"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository (real public sample data); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"sample data not found at {SHARED_DATA}")
    return SHARED_DATA


@dataclass
class TinyNnUNetDataset:
    base: Path           # holds nnUNet_raw, nnUNet_preprocessed, nnUNet_results
    env: dict            # environment for nnU-Net's console scripts
    dataset_id: int
    dataset_name: str    # DatasetXXX_Name
    configuration: str
    plans: str
    bids_root: Path | None = None  # the phantoms' BIDS source (None for datasets written straight to nnU-Net)

    @property
    def raw_folder(self) -> Path:
        return self.base / "nnUNet_raw" / self.dataset_name

    @property
    def results_folder(self) -> Path:
        return self.base / "nnUNet_results" / self.dataset_name


@pytest.fixture(scope="session")
def tiny_nnunet_dataset(tmp_path_factory) -> TinyNnUNetDataset:
    """Phantoms (TEM + SEM, 96x96 px) -> BIDS -> nnU-Net raw -> nnU-Net plans -> CPU plans (48x48 patches) ->
    preprocessed. About half a minute, most of it nnU-Net's start-up."""
    from nnunet_ext.dataset_conversion.bids_microscopy import convert_bids_microscopy
    from nnunet_ext.phantoms.bids_writer import write_bids_phantom_dataset
    from nnunet_ext.nnunet.commands import cpu_environment, plan_and_preprocess_cpu

    base = tmp_path_factory.mktemp("nnunet")
    env = cpu_environment(base)
    bids = write_bids_phantom_dataset(base / "bids", contrasts=("TEM", "SEM"), n_subjects=4, samples_per_subject=1,
                                      shape=(96, 96), pixel_size_um=0.1, seed=7, progress=False)
    destination = convert_bids_microscopy(bids, env["nnUNet_raw"], TINY_DATASET_ID, TINY_DATASET_NAME,
                                          test_subjects=["sub-04"], progress=False)
    plans = plan_and_preprocess_cpu(TINY_DATASET_ID, env, "2d", patch_size=(48, 48), batch_size=4,
                                    features_per_stage=(8, 16, 32), log_file=base / "nnunet.log")
    return TinyNnUNetDataset(base, env, TINY_DATASET_ID, destination.name, "2d", plans, bids)


@pytest.fixture(scope="session")
def smoke_trained_model(tiny_nnunet_dataset):
    """``nnUNetv2_train <tiny> 2d 0 -p nnUNetPlans_cpu -tr nnUNetTrainerCPUSmoke -device cpu`` (stock command).

    Returns the fold's output folder."""
    from nnunet_ext.nnunet.commands import train

    ds = tiny_nnunet_dataset
    train(ds.dataset_id, ds.configuration, 0, "nnUNetTrainerCPUSmoke", ds.env, plans=ds.plans,
          log_file=ds.base / "nnunet.log")
    return ds.results_folder / f"nnUNetTrainerCPUSmoke__{ds.plans}__{ds.configuration}" / "fold_0"


def _tube_volume(rng, shape=(32, 32, 32), n_tubes=3, radius=2.0):
    """Bright tubes (straight neurites) in noise, and their label."""
    import numpy as np

    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    for _ in range(n_tubes):
        point = rng.uniform(6, np.array(shape) - 6)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        offset = grid - point
        distance = np.linalg.norm(offset - (offset @ direction)[..., None] * direction, axis=-1)
        label[distance < radius] = 1
    image = 100 * label + rng.normal(20, 15, shape)
    return image.astype(np.float32), label


@pytest.fixture(scope="session")
def tiny_tubes_dataset(tmp_path_factory) -> TinyNnUNetDataset:
    """A tiny 3D dataset (four 32^3 training volumes of bright tubes, one validation, one test volume), planned with
    the 3D CPU plans (32^3 patches, ``3d_fullres``) and preprocessed."""
    import numpy as np

    from nnunet_ext.dataset_conversion.nnunet_raw import NnUNetRawWriter
    from nnunet_ext.nnunet.commands import cpu_environment, plan_and_preprocess_cpu

    base = tmp_path_factory.mktemp("nnunet3d")
    env = cpu_environment(base)
    rng = np.random.default_rng(11)
    with NnUNetRawWriter(env["nnUNet_raw"], TUBES_DATASET_ID, TUBES_DATASET_NAME,
                         labels={"background": 0, "neurite": 1}, channel_names={"0": "fluorescence"},
                         file_ending=".nii.gz", preprocessed_root=env["nnUNet_preprocessed"]) as writer:
        for index in range(6):
            image, label = _tube_volume(rng)
            split = "validation" if index == 4 else "test" if index == 5 else "train"
            writer.add_case(image, label, split=split, spacing=(1.0, 1.0, 1.0))
        raw_folder = writer.finish()
    plans = plan_and_preprocess_cpu(TUBES_DATASET_ID, env, "3d_fullres", patch_size=(32, 32, 32), batch_size=2,
                                    features_per_stage=(4, 8, 16), log_file=base / "nnunet.log")
    return TinyNnUNetDataset(base, env, TUBES_DATASET_ID, raw_folder.name, "3d_fullres", plans)
