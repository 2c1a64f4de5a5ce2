"""nnUNetTrainerVCVRL in-process, on nnU-Net plans written here and synthetic batches (no data loading).

Checks what the issue requires of the trainer: the heads stay outside ``self.network`` (saved weights load into the
plain nnU-Net network), the optimiser covers them, the checkpoint resumes them exactly, and a training step works in
2D and 3D, with and without deep supervision, for labels with an ignore label and for regions.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunet_ext.trainers.losses.vcvrl_loss import VCVRLConfig
from nnunet_ext.nnunet.plans_cpu import plain_unet_plans
from nnunet_ext.trainers.vcvrl import CHECKPOINT_KEY, SIMILARITY_LOG_KEY, nnUNetTrainerVCVRL

DATASET = "Dataset987_VCVRLUnit"
LABELS = {"background": 0, "myelin": 1, "axon": 2}
SMALL = dict(num_anchors=64, projector_hidden=64, projector_dim=64, predictor_hidden=16)


# Small heads keep these tests at a few seconds on two CPU cores (the paper's 512-wide heads on 3 x 512 anchors
# cost about a GFLOP per step); the shipped trainers with the paper's sizes run in test_vcvrl_nnunet.py.
class SmallVCVRL(nnUNetTrainerVCVRL):
    vcvrl_config = VCVRLConfig(**SMALL)


class SmallVCVRLRelaxed(nnUNetTrainerVCVRL):
    vcvrl_config = VCVRLConfig(**SMALL, pairing="relaxed")


class SmallVCVRLVoxelPairs(nnUNetTrainerVCVRL):
    vcvrl_config = VCVRLConfig(**SMALL, pairing="voxel")


class SmallVCVRLSecondStage(nnUNetTrainerVCVRL):
    vcvrl_config = VCVRLConfig(**SMALL, encoder_stage=1)


@pytest.fixture
def nnunet_folders(tmp_path, monkeypatch):
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / variable).mkdir()
        monkeypatch.setenv(variable, str(tmp_path / variable))
    # nnU-Net infers its dataset class from the preprocessed files' ending when it initialises
    data_folder = tmp_path / "nnUNet_preprocessed" / DATASET / "vcvrl_unit"
    data_folder.mkdir(parents=True)
    (data_folder / "case.b2nd").touch()
    return tmp_path


def _trainer(cls=SmallVCVRL, patch=(32, 32), labels=None, regions_class_order=None,
             deep_supervision=True, fold=0, architecture=None):
    plans, configuration = plain_unet_plans(DATASET, patch, features_per_stage=(4, 8, 16), batch_size=2,
                                            data_identifier="vcvrl_unit")
    if architecture is not None:  # another network in the same plans (nnunet-ext plans-vit writes the same entry)
        plans["configurations"][configuration]["architecture"] = architecture
    plans["continue_training"] = False
    dataset_json = {"channel_names": {"0": "image"}, "labels": labels or LABELS, "numTraining": 4,
                    "file_ending": ".nii.gz"}
    if regions_class_order is not None:
        dataset_json["regions_class_order"] = regions_class_order
    trainer = cls(copy.deepcopy(plans), configuration, fold, dataset_json, torch.device("cpu"))
    trainer.enable_deep_supervision = deep_supervision
    trainer.initialize()
    trainer.on_train_epoch_start()
    return trainer


def _batch(trainer, seed=0, ignore_label=None):
    """Blobby label map (every class present) at the patch size, with nnU-Net's deep-supervision targets."""
    generator = torch.Generator().manual_seed(seed)
    shape = trainer.configuration_manager.patch_size
    dim = len(shape)
    noise = torch.rand(trainer.batch_size, 1, *[s // 4 for s in shape], generator=generator)
    smooth = F.interpolate(noise, size=shape, mode="bilinear" if dim == 2 else "trilinear", align_corners=False)
    labels = (smooth * 3).long().clamp(max=2)
    if ignore_label is not None:
        labels[..., :2] = ignore_label
    image = labels.float() + 0.5 * torch.randn(labels.shape, generator=generator)
    if trainer.label_manager.has_regions:
        regions = [torch.isin(labels, torch.tensor(r if isinstance(r, (list, tuple)) else [r]))
                   for r in trainer.label_manager.foreground_regions]
        if trainer.label_manager.has_ignore_label:
            regions.append(labels == trainer.label_manager.ignore_label)
        target = torch.cat(regions, 1).float()
    else:
        target = labels.float()
    scales = trainer._get_deep_supervision_scales()
    if scales is None:
        return {"data": image, "target": target}
    targets = [target if all(s == 1 for s in scale) else
               F.interpolate(target, size=[round(n * s) for n, s in zip(shape, scale)], mode="nearest")
               for scale in scales]
    return {"data": image, "target": targets}


def _head_parameters(trainer):
    return [p.detach().clone() for p in trainer.vcvrl_loss.parameters()]


def test_heads_live_outside_the_network_and_the_optimiser_covers_them(nnunet_folders):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    trainer = _trainer(cls=nnUNetTrainerVCVRL)  # the shipped default
    plain = nnUNetTrainer.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, trainer.num_input_channels,
        trainer.label_manager.num_segmentation_heads, True)
    assert trainer.network.state_dict().keys() == plain.state_dict().keys()
    assert sum(p.numel() for p in trainer.network.parameters()) == sum(p.numel() for p in plain.parameters())
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in trainer.vcvrl_loss.parameters()} <= optimised
    assert {id(p) for p in trainer.network.parameters()} <= optimised
    trainer.lr_scheduler.step(trainer.num_epochs // 2)
    learning_rates = [group["lr"] for group in trainer.optimizer.param_groups]
    assert len(learning_rates) == 2 and learning_rates[0] == learning_rates[1] < trainer.initial_lr
    # the projector takes the bottleneck's channels; one pool per class
    assert trainer.vcvrl_loss.heads.projector[0].in_features == 16
    assert trainer.vcvrl_loss.heads.projector[-2].out_features == 512  # the paper's d_p
    assert trainer.vcvrl_loss.heads.predictor[0].out_features == 128
    assert trainer.vcvrl_loss.descriptors.values.shape == (3, 16)
    assert trainer.vcvrl_loss.total_iterations == trainer.num_epochs * trainer.num_iterations_per_epoch


@pytest.mark.parametrize("setting", ["2d", "2d_no_deep_supervision", "3d", "ignore_label", "regions_with_ignore",
                                     "voxel_pairs", "encoder_stage_1"])
def test_train_step_updates_network_and_heads(nnunet_folders, setting):
    kwargs, ignore = {}, None
    if setting == "2d_no_deep_supervision":
        kwargs["deep_supervision"] = False
    elif setting == "3d":
        kwargs.update(patch=(16, 16, 16))
    elif setting == "ignore_label":
        kwargs["labels"] = {**LABELS, "ignore": 3}
        ignore = 3
    elif setting == "regions_with_ignore":
        kwargs.update(labels={"background": 0, "fibre": [1, 2], "axon": 2, "ignore": 3}, regions_class_order=[1, 2])
        ignore = 3
    elif setting == "voxel_pairs":
        kwargs["cls"] = SmallVCVRLVoxelPairs
    elif setting == "encoder_stage_1":
        kwargs["cls"] = SmallVCVRLSecondStage
    trainer = _trainer(**kwargs)
    expected_channels = 8 if setting == "encoder_stage_1" else 16  # features (4, 8, 16); bottleneck by default
    assert trainer.vcvrl_loss.heads.projector[0].in_features == expected_channels
    expected_pools = 3  # three classes, or two regions plus background
    assert trainer.vcvrl_loss.num_pools == expected_pools
    heads_before = _head_parameters(trainer)
    network_before = [p.detach().clone() for p in trainer.network.parameters()]
    for step in range(2):
        result = trainer.train_step(_batch(trainer, seed=step, ignore_label=ignore))
        assert np.isfinite(result["loss"]) and np.isfinite(result["similarity_loss"])
        assert result["similarity_loss"] > 0
    assert trainer.vcvrl_loss.iteration.item() == 2
    assert any(not torch.equal(a, b) for a, b in zip(heads_before, trainer.vcvrl_loss.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(network_before, trainer.network.parameters()))


def test_checkpoint_resumes_exactly_and_loads_into_the_plain_network(nnunet_folders, tmp_path):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    trainer = _trainer(cls=SmallVCVRLRelaxed)
    for step in range(2):
        trainer.train_step(_batch(trainer, seed=step))
    trainer.on_train_epoch_end([{"loss": np.float32(0.5), "similarity_loss": np.float32(0.2)},
                                {"loss": np.float32(0.7), "similarity_loss": np.float32(0.4)}])
    assert trainer.logger.get_value(SIMILARITY_LOG_KEY, step=-1) == pytest.approx(0.3)
    checkpoint_file = str(tmp_path / "checkpoint.pth")
    trainer.save_checkpoint(checkpoint_file)

    resumed = _trainer(cls=SmallVCVRLRelaxed)
    resumed.load_checkpoint(checkpoint_file)
    for name, value in trainer.vcvrl_loss.state_dict().items():
        assert torch.equal(value, resumed.vcvrl_loss.state_dict()[name]), name
    assert resumed.vcvrl_loss.iteration.item() == 2
    assert resumed.logger.get_value(SIMILARITY_LOG_KEY, step=None) == [pytest.approx(0.3)]
    # the same next step on both gives the same result: optimiser momentum, heads, descriptors all restored
    batch = _batch(trainer, seed=7)
    torch.manual_seed(3)
    original = trainer.train_step(copy.deepcopy(batch))
    torch.manual_seed(3)
    again = resumed.train_step(copy.deepcopy(batch))
    assert original["loss"] == pytest.approx(again["loss"], abs=1e-6)
    assert original["similarity_loss"] == pytest.approx(again["similarity_loss"], abs=1e-6)
    for a, b in zip(trainer.vcvrl_loss.parameters(), resumed.vcvrl_loss.parameters()):
        assert torch.allclose(a, b, atol=1e-6)

    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    assert set(checkpoint[CHECKPOINT_KEY]) == {"config", "state_dict"}
    plain = nnUNetTrainer.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, trainer.num_input_channels,
        trainer.label_manager.num_segmentation_heads, False)
    plain.load_state_dict(checkpoint["network_weights"])  # strict: exactly the base architecture's weights
    saved = _trainer(cls=SmallVCVRLRelaxed)
    saved.network.load_state_dict(checkpoint["network_weights"])
    saved.set_deep_supervision_enabled(False)
    image = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain.eval()(image), saved.network.eval()(image))


def test_missing_encoder_stage_is_a_clear_error(nnunet_folders):
    class NoSuchStage(nnUNetTrainerVCVRL):
        vcvrl_config = VCVRLConfig(**SMALL, encoder_stage=5)

    with pytest.raises(ValueError, match="encoder_stage 5 does not exist"):
        _trainer(cls=NoSuchStage)


def test_resuming_with_other_settings_is_an_error(nnunet_folders, tmp_path):
    trainer = _trainer()
    trainer.train_step(_batch(trainer))
    trainer.save_checkpoint(str(tmp_path / "checkpoint.pth"))
    other = _trainer(cls=SmallVCVRLRelaxed)
    with pytest.raises(ValueError, match="VCV-RL settings"):
        other.load_checkpoint(str(tmp_path / "checkpoint.pth"))


def test_encoder_features_are_found_through_torch_compile(nnunet_folders):
    trainer = _trainer(patch=(16, 16))
    network = trainer.network
    # dynamo's graph capture is what must keep the hook's side effect; the "eager" backend skips code generation
    trainer.network = torch.compile(network, backend="eager")
    assert trainer._plain_network() is network
    for step in range(2):
        result = trainer.train_step(_batch(trainer, seed=step))
        assert math.isfinite(float(result["similarity_loss"])) and result["similarity_loss"] > 0


# ------------------------------------------------------------------------------------- transformer networks (ViTUNETR)

TINY_SAM = {"embed_dim": 32, "depth": 2, "num_heads": 2, "window_size": 2, "global_attn_indexes": [1]}


def _vit_architecture(patch, backbone="sam_vit_b", **kwargs):
    from nnunet_ext.nnunet.plans_vit import vit_architecture

    config = TINY_SAM if backbone.startswith("sam") else {"embed_dim": 32, "depth": 2, "num_heads": 2}
    return vit_architecture(patch, backbone, backbone_kwargs=config, decoder_features=4, **kwargs)


@pytest.mark.parametrize("setting", ["sam_2d", "vit_3d"])
def test_vcvrl_trains_a_transformer_network_on_its_last_tapped_block(nnunet_folders, setting):
    """docs/vcvrl.md: any nnU-Net network with an encoder; ViTUNETR used to be refused (no output_channels)."""
    from nnunet_ext.networks.unetr import ViTUNETR

    patch, backbone, tokens = ((32, 32), "sam_vit_b", None) if setting == "sam_2d" else \
        ((8, 32, 32), "vit_b", [4, 16, 16])
    trainer = _trainer(patch=patch, architecture=_vit_architecture(patch, backbone, patch_embed_size=tokens))
    network = trainer.network
    assert isinstance(network, ViTUNETR) and network.encoder.output_channels == [32] * 4
    assert trainer.vcvrl_loss.heads.projector[0].in_features == 32  # the transformer's width
    seen = {}
    network.encoder.vit.blocks[-1].register_forward_hook(lambda module, args, out: seen.__setitem__("block", out))
    loss_forward = trainer.vcvrl_loss.forward
    trainer.vcvrl_loss.forward = lambda features, pools: (seen.__setitem__("features", features.detach()),
                                                          loss_forward(features, pools))[1]
    heads_before = _head_parameters(trainer)
    embedding_before = network.encoder.vit.patch_embed.proj.weight.detach().clone()
    result = trainer.train_step(_batch(trainer))
    assert np.isfinite(result["loss"]) and result["similarity_loss"] > 0
    # the loss saw the last block's tokens as a map (timm's SAM blocks give NHWC; the 3D ViT a class token first)
    block = seen["block"].detach().float()
    expected = block.movedim(-1, 1) if setting == "sam_2d" else \
        block[:, 1:].transpose(1, 2).reshape(block.shape[0], 32, *network.encoder.grid_size)
    assert torch.equal(seen["features"], expected)
    assert any(not torch.equal(a, b) for a, b in zip(heads_before, trainer.vcvrl_loss.parameters()))
    assert not torch.equal(embedding_before, network.encoder.vit.patch_embed.proj.weight)  # the encoder learns


def test_emsam_vcvrl_loads_sam_and_follows_the_emsam_recipe(nnunet_folders, tmp_path, monkeypatch):
    from test_networks import write_original_sam_checkpoint

    from nnunet_ext.trainers.transformers import WarmupCosineLRScheduler, nnUNetTrainerEMSAM_VCVRL

    class Small(nnUNetTrainerEMSAM_VCVRL):
        vcvrl_config = VCVRLConfig(**SMALL)

    path, sam = write_original_sam_checkpoint(tmp_path / "sam_vit_b_tiny.pth", TINY_SAM, image_size=64)
    monkeypatch.setenv("NNUNET_EXT_SAM_CHECKPOINT", str(path))
    trainer = _trainer(cls=Small, architecture=_vit_architecture((32, 32)))
    encoder = trainer.network.encoder.vit
    assert torch.equal(encoder.blocks[0].attn.qkv.weight, sam.blocks[0].attn.qkv.weight)  # SAM's weights loaded
    assert isinstance(trainer.lr_scheduler, WarmupCosineLRScheduler)  # EM-SAM's schedule, heads included
    assert len(trainer.optimizer.param_groups) == 2 and trainer.optimizer.defaults["momentum"] == 0.9
    assert not trainer.optimizer.defaults["nesterov"]
    trainer.lr_scheduler.step(trainer.num_epochs // 2)
    half_way = trainer.lr_scheduler.lr_at(trainer.num_epochs // 2)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [half_way, half_way]
    assert trainer.vcvrl_loss.heads.projector[0].in_features == TINY_SAM["embed_dim"]
    for step in range(2):
        result = trainer.train_step(_batch(trainer, seed=step))
        assert np.isfinite(result["loss"]) and result["similarity_loss"] > 0
    assert trainer.vcvrl_loss.iteration.item() == 2

    # a checkpoint that matches nothing stops the trainer instead of training from scratch
    torch.save({"conv1.weight": torch.randn(8, 3, 7, 7)}, tmp_path / "resnet.pth")
    monkeypatch.setenv("NNUNET_EXT_SAM_CHECKPOINT", str(tmp_path / "resnet.pth"))
    with pytest.raises(ValueError, match="core tensors of backbone 'sam_vit_b'.*no match"):
        _trainer(cls=Small, architecture=_vit_architecture((32, 32)))
