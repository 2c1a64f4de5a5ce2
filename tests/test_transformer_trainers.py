"""Transformer trainers: schedule, plans variant, checks, and a real nnUNetv2_train + nnUNetv2_predict run (EM-SAM,
tiny SAM from an original-format checkpoint) on the shared tiny phantom dataset."""
from __future__ import annotations

import json
import math
import os
import textwrap

import numpy as np
import pytest
import torch

from nnunet_ext.trainers.transformers import (WarmupCosineLRScheduler, nnUNetTrainerEMSAM, nnUNetTrainerViT,
                                              nnUNetTrainerViT3DInflated, nnUNetTrainerViTBEiT)

TINY_SAM = {"embed_dim": 32, "depth": 2, "num_heads": 2, "window_size": 2, "global_attn_indexes": [1]}


def test_warmup_then_cosine_schedule():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = WarmupCosineLRScheduler(optimizer, 0.1, warmup_steps=4, max_steps=24)
    rates = []
    for epoch in range(24):
        scheduler.step(epoch)
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])  # linear warm-up reaches the peak at step 4
    assert rates[14] == pytest.approx(0.05)  # half-way through the cosine
    assert rates[23] == pytest.approx(0.05 * (1 + math.cos(math.pi * 19 / 20)))
    assert all(a >= b for a, b in zip(rates[4:], rates[5:]))


class _Configuration:
    """Just what the trainers' checks read from nnU-Net's ConfigurationManager."""

    def __init__(self, architecture: dict, patch_size):
        self.configuration = {"architecture": architecture}
        self.patch_size = list(patch_size)
        self.network_arch_class_name = architecture["network_class_name"]
        self.network_arch_init_kwargs = architecture["arch_kwargs"]
        self.network_arch_init_kwargs_req_import = architecture["_kw_requires_import"]


def test_trainers_build_the_plans_network_and_refuse_unfit_plans():
    from nnunet_ext.networks.unetr import ViTUNETR
    from nnunet_ext.trainers.vit_plans import vit_architecture

    sam = _Configuration(vit_architecture([32, 32], "sam_vit_b", backbone_kwargs=TINY_SAM), [32, 32])
    network = nnUNetTrainerEMSAM.build_network_architecture(None, sam, 1, 3, True)
    assert isinstance(network, ViTUNETR) and network.encoder.family == "sam"
    assert len(network(torch.zeros(1, 1, 32, 32))) == 4
    with pytest.raises(ValueError, match="needs a beit backbone.*plans-vit .*--backbone beit_b"):
        nnUNetTrainerViTBEiT.build_network_architecture(None, sam, 1, 3, True)
    with pytest.raises(ValueError, match="3D trainer"):
        nnUNetTrainerViT3DInflated.build_network_architecture(
            None, _Configuration(vit_architecture([32, 32], "vit_b", backbone_kwargs={"embed_dim": 16, "depth": 1,
                                                                                          "num_heads": 1}),
                                 [32, 32]), 1, 3, True)
    inflated = _Configuration(vit_architecture([5, 32, 32], "vit_b", [5, 16, 16], backbone_kwargs={
        "embed_dim": 16, "depth": 1, "num_heads": 1}), [5, 32, 32])
    network = nnUNetTrainerViT3DInflated.build_network_architecture(None, inflated, 1, 3, True)
    assert network.strides[-1] == [5, 2, 2] and network(torch.zeros(1, 1, 5, 32, 32))[0].shape == (1, 3, 5, 32, 32)
    unet = _Configuration({"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                           "arch_kwargs": {}, "_kw_requires_import": []}, [64, 64])
    with pytest.raises(ValueError, match="nnunet-ext plans-vit"):
        nnUNetTrainerViT.build_network_architecture(None, unet, 1, 3, True)


def test_missing_checkpoint_variable_names_the_variable(monkeypatch, tmp_path):
    from nnunet_ext.networks.pretrained import checkpoint_path_from_env

    monkeypatch.delenv("NNUNET_EXT_SAM_CHECKPOINT", raising=False)
    with pytest.raises(FileNotFoundError, match="NNUNET_EXT_SAM_CHECKPOINT is not set"):
        checkpoint_path_from_env(nnUNetTrainerEMSAM.checkpoint_variable)
    monkeypatch.setenv("NNUNET_EXT_SAM_CHECKPOINT", str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match="NNUNET_EXT_SAM_CHECKPOINT=.*nope.pth: no such file"):
        checkpoint_path_from_env("NNUNET_EXT_SAM_CHECKPOINT")


def _write_short_trainer(folder):
    """A test-only trainer with a few iterations, in its own folder added to nnUNet_extTrainer."""
    folder.mkdir()
    (folder / "nnunet_ext_test_transformer_trainers.py").write_text(textwrap.dedent("""
        import torch
        from nnunet_ext.trainers.transformers import nnUNetTrainerEMSAM

        class nnUNetTrainerEMSAMTestSmoke(nnUNetTrainerEMSAM):
            def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
                super().__init__(plans, configuration, fold, dataset_json, device)
                self.num_epochs = 1
                self.num_iterations_per_epoch = 2
                self.num_val_iterations_per_epoch = 1

            def perform_actual_validation(self, save_probabilities=False):
                # nnU-Net's final sliding-window validation takes a minute on a busy CPU; the
                # nnUNetv2_predict run below exercises the same inference path
                self.print_to_log_file("final validation skipped by the test trainer")
        """))


@pytest.mark.slow
def test_emsam_trains_with_nnunetv2_train_and_predicts_without_the_checkpoint(tiny_nnunet_dataset, tmp_path,
                                                                              monkeypatch):
    from PIL import Image
    from test_networks import write_original_sam_checkpoint

    from nnunet_ext.cli import main
    from nnunet_ext.networks.unetr import ViTUNETR
    from nnunet_ext.nnunet_commands import predict, run_nnunet_command, train
    from nnunet_ext.trainers.vit_plans import write_vit_plans

    ds = tiny_nnunet_dataset
    log = tmp_path / "nnunet.log"
    plans = "nnUNetPlans_samtiny"
    monkeypatch.setenv("nnUNet_preprocessed", ds.env["nnUNet_preprocessed"])
    assert main(["plans-vit", "-d", str(ds.dataset_id), "-c", "2d", "--backbone", "sam_vit_b", "--patch-size", "48",
                 "48", "--decoder-features", "8", "--backbone-kwargs", json.dumps(TINY_SAM), "--plans-name", plans,
                 "--overwrite"]) == 0  # the CLI in-process: spares a torch start-up
    plans_file = ds.base / "nnUNet_preprocessed" / ds.dataset_name / f"{plans}.json"
    architecture = json.loads(plans_file.read_text())["configurations"]["2d"]["architecture"]
    assert architecture["network_class_name"] == "nnunet_ext.networks.unetr.ViTUNETR"
    assert architecture["arch_kwargs"]["strides"] == [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]]
    with pytest.raises(ValueError, match=r"multiple of the token size, e\.g\. \[32, 32\]"):
        write_vit_plans(ds.dataset_id, "2d", "vit_b", patch_size=[40, 40], target_plans="nnUNetPlans_unfit")
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_vit_plans(ds.dataset_id, "2d", "sam_vit_b", patch_size=[48, 48], target_plans=plans)
    run_nnunet_command(["nnUNetv2_preprocess", "-d", ds.dataset_id, "-plans_name", plans, "-c", "2d", "-np", "1"],
                       ds.env, log)

    checkpoint, _ = write_original_sam_checkpoint(tmp_path / "sam_tiny.pth", TINY_SAM, image_size=64)
    _write_short_trainer(tmp_path / "trainers")
    env = {**ds.env, "nnUNet_extTrainer": ds.env["nnUNet_extTrainer"] + os.pathsep + str(tmp_path / "trainers"),
           "NNUNET_EXT_SAM_CHECKPOINT": str(checkpoint)}
    train(ds.dataset_id, "2d", 0, "nnUNetTrainerEMSAMTestSmoke", env, plans=plans, log_file=log)
    fold = ds.results_folder / f"nnUNetTrainerEMSAMTestSmoke__{plans}__2d" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    training_log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    encoder_tensors = len(ViTUNETR(1, 3, **architecture["arch_kwargs"]).encoder.vit.state_dict())
    assert f"[sam]: loaded {encoder_tensors} tensors" in training_log and "newly initialised 0" in training_log

    # prediction rebuilds the network from the plans alone: no checkpoint variable needed
    env.pop("NNUNET_EXT_SAM_CHECKPOINT")
    output = tmp_path / "predicted"
    predict(ds.raw_folder / "imagesTs", output, ds.dataset_id, "2d", [0], "nnUNetTrainerEMSAMTestSmoke", env,
            plans=plans, log_file=log)
    images = sorted((ds.raw_folder / "imagesTs").glob("*_0000.*"))
    predictions = sorted(p for p in output.iterdir() if p.name.endswith(images[0].suffix))
    assert len(predictions) == len(images) > 0
    label = np.asarray(Image.open(predictions[0]))
    assert label.shape == np.asarray(Image.open(images[0])).shape[:2]
    assert set(np.unique(label)) <= {0, 1, 2}
