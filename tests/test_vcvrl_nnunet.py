"""nnUNetTrainerVCVRL through the stock ``nnUNetv2_train`` and ``nnUNetv2_predict``, in 2D (phantoms) and 3D.

A few iterations each (``nnUNetTrainerVCVRL_CPUSmoke``: 2 epochs of 4 iterations, the paper's head sizes and 512
anchors per pool). Checked: the similarity loss is logged per epoch and plotted, the checkpoint carries the VCV-RL
state, and the saved network is nnU-Net's plain one: a copy of the model folder relabelled as ``nnUNetTrainer``
predicts exactly what ``nnUNetv2_predict -tr nnUNetTrainerVCVRL_CPUSmoke`` predicted.
"""
from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

TRAINER = "nnUNetTrainerVCVRL_CPUSmoke"


def _relabel_as_plain_nnunet(model_folder, target_folder):
    """Copy of a trained model whose checkpoint names ``nnUNetTrainer`` and holds nothing of VCV-RL."""
    target_folder.mkdir(parents=True)
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        shutil.copy(model_folder / name, target_folder / name)
    checkpoint = torch.load(model_folder / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                            weights_only=False)
    del checkpoint["vcvrl"]
    checkpoint["trainer_name"] = "nnUNetTrainer"
    (target_folder / "fold_0").mkdir()
    torch.save(checkpoint, target_folder / "fold_0" / "checkpoint_final.pth")


def _stock_predict(images_folder, output_folder, dataset_id, configuration, env, plans, log_file):
    """``nnUNetv2_predict -tr nnUNetTrainerVCVRL_CPUSmoke`` (without test-time mirroring, to keep the test short)."""
    from nnunet_ext.nnunet.commands import run_nnunet_command

    run_nnunet_command(["nnUNetv2_predict", "-i", images_folder, "-o", output_folder, "-d", dataset_id,
                        "-c", configuration, "-f", "0", "-tr", TRAINER, "-p", plans, "-chk", "checkpoint_final.pth",
                        "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta"], env, log_file)


def _predict_in_process(model_folder, images_folder, output_folder):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), perform_everything_on_device=False,
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=(0,),
                                                   checkpoint_name="checkpoint_final.pth")
    output_folder.mkdir(parents=True, exist_ok=True)
    predictor.predict_from_files_sequential(str(images_folder), str(output_folder), save_probabilities=False,
                                            overwrite=True)


def _check_training_outputs(fold_folder, iterations):
    log = "".join(p.read_text() for p in fold_folder.glob("training_log_*.txt"))
    similarity = [float(v) for v in re.findall(r"train_similarity_loss ([-0-9.e+na]+)", log)]
    assert len(similarity) == 2 and all(math.isfinite(v) and 0 < v for v in similarity), similarity
    assert (fold_folder / "progress_vcvrl.png").stat().st_size > 0
    assert (fold_folder / "progress.png").is_file()
    checkpoint = torch.load(fold_folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    state = checkpoint["vcvrl"]["state_dict"]
    assert int(state["iteration"]) == iterations
    assert state["descriptors.initialised"].all()  # every class was seen
    assert checkpoint["logging"]["train_similarity_losses"] == pytest.approx(similarity, abs=1e-4)
    assert not any(key.startswith(("heads", "descriptors", "vcvrl")) for key in checkpoint["network_weights"])


def _read(path):
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _check_predictions_match_plain_network(model_folder, images_folder, stock_predictions, tmp_path, ending):
    plain_model = tmp_path / "plain" / "nnUNetTrainer__plain__model"
    _relabel_as_plain_nnunet(model_folder, plain_model)
    plain_predictions = tmp_path / "plain_predictions"
    _predict_in_process(plain_model, images_folder, plain_predictions)
    cases = sorted(p.name for p in stock_predictions.glob(f"*{ending}"))
    assert cases
    for case in cases:
        assert np.array_equal(_read(stock_predictions / case), _read(plain_predictions / case)), case


def test_vcvrl_trains_and_predicts_2d_phantoms(tiny_nnunet_dataset, tmp_path):
    from nnunet_ext.nnunet.commands import train

    ds = tiny_nnunet_dataset
    train(ds.dataset_id, ds.configuration, 0, TRAINER, ds.env, plans=ds.plans, log_file=ds.base / "nnunet.log")
    model = ds.results_folder / f"{TRAINER}__{ds.plans}__{ds.configuration}"
    _check_training_outputs(model / "fold_0", iterations=8)

    predictions = tmp_path / "predictions"
    _stock_predict(ds.raw_folder / "imagesTs", predictions, ds.dataset_id, ds.configuration, ds.env, ds.plans,
                   ds.base / "nnunet.log")
    _check_predictions_match_plain_network(model, ds.raw_folder / "imagesTs", predictions, tmp_path, ".png")


def test_vcvrl_trains_and_predicts_3d(tiny_tubes_dataset, tmp_path):
    from nnunet_ext.nnunet.commands import train

    ds = tiny_tubes_dataset  # conftest.py: six 32^3 volumes of tubes, 3D CPU plans
    base, env, raw_folder, plans = ds.base, ds.env, ds.raw_folder, ds.plans
    train(ds.dataset_id, "3d_fullres", 0, TRAINER, env, plans=plans, log_file=base / "nnunet.log")
    model = base / "nnUNet_results" / raw_folder.name / f"{TRAINER}__{plans}__3d_fullres"
    _check_training_outputs(model / "fold_0", iterations=8)
    assert json.loads((model / "plans.json").read_text())["configurations"]["3d_fullres"]["patch_size"] == [32] * 3

    predictions = tmp_path / "predictions"
    _stock_predict(raw_folder / "imagesTs", predictions, ds.dataset_id, "3d_fullres", env, plans,
                   base / "nnunet.log")
    _check_predictions_match_plain_network(model, raw_folder / "imagesTs", predictions, tmp_path, ".nii.gz")
