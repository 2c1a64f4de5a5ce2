"""ViT-UNETR networks, pretrained weights from each release's own key format, and 2D-to-3D inflation.

Checkpoints are built here from tiny timm models whose keys are rewritten to each release's format (SAM:
``image_encoder.*`` with ``mlp.lin1``; DINO: a training checkpoint's ``teacher`` with ``module.backbone.``; MAE:
``{"model": ...}`` with its decoder; BEiT: the shared relative-position table of self-supervised checkpoints), so the
loader is tested on the formats users have without downloading anything.
"""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from nnunet_ext.networks.inflation import (inflate_patch_embedding, inflate_position_embedding,
                                           inflate_vit_state_dict)
from nnunet_ext.networks.pretrained import LoadReport, load_pretrained_encoder, read_checkpoint
from nnunet_ext.networks.unetr import ViTUNETR, default_decoder_strides
from nnunet_ext.networks.vit_encoders import evenly_spaced_blocks

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}
TINY_SAM = {**TINY, "window_size": 2, "global_attn_indexes": [1]}


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights everywhere (zero-initialised tables and biases too), so equality tests mean something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model.eval()


def write_original_sam_checkpoint(path, config: dict, image_size: int = 64, seed: int = 0):
    """A tiny SAM checkpoint in segment-anything's format; returns (path, timm model with the same weights).

    The timm model uses SAM's LayerNorm eps (1e-6, segment-anything's build_sam), so it computes what SAM computes.
    """
    from functools import partial

    from timm.models.vision_transformer_sam import VisionTransformerSAM

    source = _randomise(VisionTransformerSAM(img_size=image_size, patch_size=16, use_rel_pos=True, neck_chans=16,
                                             num_classes=0, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                                             **config), seed)
    state = {"image_encoder." + k.replace("mlp.fc", "mlp.lin"): v for k, v in source.state_dict().items()}
    state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.randn(2, 8)
    state["mask_decoder.iou_token.weight"] = torch.randn(1, 8)
    torch.save(state, path)
    return path, source


def _timm_vit(config: dict, image_size: int = 64, seed: int = 0, **kwargs):
    from timm.models.vision_transformer import VisionTransformer

    return _randomise(VisionTransformer(img_size=image_size, patch_size=16, num_classes=0, global_pool="",
                                        **config, **kwargs), seed)


def write_dino_checkpoint(path, config: dict, image_size: int = 224, seed: int = 0):
    """A DINO training checkpoint (``teacher`` with ``module.backbone.`` keys, a projection head, ``args``)."""
    source = _timm_vit(config, image_size, seed)
    teacher = {f"module.backbone.{k}": v for k, v in source.state_dict().items()}
    teacher["module.head.mlp.0.weight"] = torch.randn(8, config["embed_dim"])
    torch.save({"teacher": teacher, "student": teacher, "epoch": 3, "args": argparse.Namespace(arch="vit_base")},
               path)
    return path, source


def write_mae_checkpoint(path, config: dict, image_size: int = 224, seed: int = 0):
    """MAE's release format: ``{"model": encoder + mask token + decoder}``."""
    source = _timm_vit(config, image_size, seed)
    mae = dict(source.state_dict(), mask_token=torch.randn(1, 1, 16), decoder_pos_embed=torch.randn(16, 32))
    torch.save({"model": mae}, path)
    return path, source


def write_beit_checkpoint(path, config: dict, image_size: int = 64, seed: int = 0):
    """A self-supervised BEiT checkpoint: one shared relative-position table, mask token and LM head."""
    from timm.models.beit import Beit

    source = _randomise(Beit(img_size=image_size, patch_size=16, num_classes=0, use_abs_pos_emb=False,
                             use_shared_rel_pos_bias=True, init_values=0.1, **config), seed)
    state = dict(source.state_dict(), mask_token=torch.randn(1, 1, config["embed_dim"]))
    state["lm_head.weight"] = torch.randn(10, config["embed_dim"])
    torch.save({"model": state}, path)
    return path, source


def write_timm_checkpoint(path, config: dict, image_size: int = 64, seed: int = 0):
    """A timm state dict, as ``.safetensors`` or a plain ``.pth`` (after the suffix of ``path``)."""
    source = _timm_vit(config, image_size, seed)
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file(source.state_dict(), str(path))
    else:
        torch.save(source.state_dict(), path)
    return path, source


def _same_features(network: ViTUNETR, source, x: torch.Tensor) -> float:
    """Largest difference between the network's tapped features and the source model's same blocks."""
    with torch.no_grad():
        ours = network.encoder(x)
        reference = source.forward_intermediates(x, indices=sorted({t - 1 for t in network.encoder.taps}),
                                                 intermediates_only=True)
    by_block = dict(zip(sorted({t - 1 for t in network.encoder.taps}), reference))
    return max(float((o - by_block[t - 1]).abs().max()) for o, t in zip(ours, network.encoder.taps))


# ---------------------------------------------------------------------------------------------------- architecture

def test_decoder_strides_and_skip_blocks():
    assert default_decoder_strides([16, 16]) == [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]]
    # a 5-slice token is restored in one step at the coarsest level; a 4-slice one over the two coarsest
    assert [s[0] for s in default_decoder_strides([5, 16, 16])] == [1, 1, 1, 1, 5]
    assert [s[0] for s in default_decoder_strides([4, 16, 16])] == [1, 1, 1, 2, 2]
    assert evenly_spaced_blocks(12, 4) == [3, 6, 9, 12]
    assert evenly_spaced_blocks(24, 4) == [6, 12, 18, 24]
    assert evenly_spaced_blocks(2, 4) == [1, 1, 2, 2]


def test_cli_offers_every_backbone():
    from nnunet_ext.networks.vit_encoders import BACKBONES
    from nnunet_ext.nnunet.cli import BACKBONE_CHOICES  # kept torch-free for a fast --help

    assert set(BACKBONE_CHOICES) == set(BACKBONES)


@pytest.mark.parametrize("backbone, config, shape, tokens", [
    ("sam_vit_b", TINY_SAM, (64, 48), None),
    ("vit_b", TINY, (32, 64), None),
    ("beit_b", TINY, (48, 48), None),
    ("vit_b", TINY, (16, 32, 32), None),
    ("vit_b", TINY, (5, 32, 48), (5, 16, 16)),
])
def test_outputs_restore_the_input_shape_with_deep_supervision(backbone, config, shape, tokens):
    network = ViTUNETR(2, 3, shape, backbone=backbone, backbone_kwargs=config, patch_embed_size=tokens,
                       decoder_features=8, input_channel_mode="sum")
    x = torch.randn(1, 2, *shape)
    outputs = network(x)
    scales = np.cumprod(np.array(network.strides), axis=0)[:-1]  # what nnU-Net's trainer computes from the plans
    assert [tuple(o.shape) for o in outputs] == [(1, 3, *(np.array(shape) // s)) for s in scales]
    sum(o.mean() for o in outputs).backward()  # every level is trained
    assert network.encoder.vit.patch_embed.proj.weight.grad is not None
    network.decoder.deep_supervision = False  # nnU-Net's set_deep_supervision_enabled does exactly this
    assert tuple(network(x).shape) == (1, 3, *shape)


def test_skips_are_the_outputs_of_blocks_3_6_9_12():
    network = ViTUNETR(1, 2, (32, 32), backbone="vit_b", backbone_kwargs={"embed_dim": 16, "num_heads": 2},
                       decoder_features=4).eval()
    assert network.encoder.taps == [3, 6, 9, 12]
    seen = {}
    for i, block in enumerate(network.encoder.vit.blocks):
        block.register_forward_hook(lambda module, args, out, i=i: seen.__setitem__(i + 1, out))
    with torch.no_grad():
        features = network.encoder(torch.randn(1, 3, 32, 32))
    for block, feature in zip([3, 6, 9, 12], features):
        tokens = seen[block][:, 1:]  # after the class token
        assert torch.equal(feature, tokens.transpose(1, 2).reshape(1, 16, 2, 2))


def test_bad_configurations_are_refused_clearly():
    with pytest.raises(ValueError, match="not divisible by the token size"):
        ViTUNETR(1, 2, (40, 40), backbone="vit_b", backbone_kwargs=TINY)
    with pytest.raises(ValueError, match="2D only"):
        ViTUNETR(1, 2, (16, 32, 32), backbone="sam_vit_b", backbone_kwargs=TINY_SAM)
    with pytest.raises(ValueError, match="'repeat' takes 1 or 3 input channels.*'sum'"):
        ViTUNETR(2, 2, (32, 32), backbone="vit_b", backbone_kwargs=TINY)
    with pytest.raises(ValueError, match="multiply to"):
        ViTUNETR(1, 2, (32, 32), backbone="vit_b", backbone_kwargs=TINY, strides=[[1, 1], [2, 2], [2, 2]])


def test_vit_b_sizes_match_timm_without_head_and_neck():
    """Full-size backbones, built on the meta device (shapes only): our encoder is timm's minus head/neck/norm."""
    import timm

    with torch.device("meta"):
        for backbone, timm_name, size, dropped in [("sam_vit_b", "samvit_base_patch16", 1024, ("neck", "head")),
                                                   ("vit_b", "vit_base_patch16_224", 224, ("norm", "head"))]:
            network = ViTUNETR(1, 3, (size, size), backbone=backbone)
            reference = timm.create_model(timm_name, pretrained=False, num_classes=0)
            kept = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith(dropped))
            assert sum(p.numel() for p in network.encoder.parameters()) == kept
            assert 85e6 < kept < 91e6  # ViT-B: 86 M parameters (SAM: + relative position tables)
            assert network.encoder.taps == [3, 6, 9, 12]


# ---------------------------------------------------------------------------------------------- pretrained weights

@pytest.mark.parametrize("shape", [(64, 64), (48, 80)])
def test_original_sam_checkpoint_loads_completely_and_reproduces_sam(tmp_path, shape, capsys):
    path, source = write_original_sam_checkpoint(tmp_path / "sam_vit_tiny.pth", TINY_SAM, image_size=64)
    network = ViTUNETR(1, 2, shape, backbone="sam_vit_b", backbone_kwargs=TINY_SAM).eval()
    report = load_pretrained_encoder(network, path)
    assert report.source == "sam"
    assert report.loaded == sorted(network.encoder.vit.state_dict()) and report.initialised == []
    assert all(k.startswith(("image_encoder.neck.", "prompt_encoder.", "mask_decoder.")) for k in report.skipped)
    assert len(report.skipped) == 4 + 2 + 2  # neck: 2 convs + 2 LayerNorm2d (weight, bias)
    if shape != (64, 64):  # absolute and relative position embeddings follow the patch grid
        assert {"pos_embed", "blocks.1.attn.rel_pos_h", "blocks.1.attn.rel_pos_w"} <= set(report.adapted)
    assert f"loaded {len(report.loaded)} tensors" in capsys.readouterr().out
    # timm's SAM resizes position embeddings at run time exactly as the loader does once
    assert _same_features(network, source, torch.randn(1, 3, *shape)) < 1e-5


def test_timm_safetensors_and_grey_input_modes(tmp_path):
    _, source = write_timm_checkpoint(tmp_path / "vit_tiny.safetensors", TINY, image_size=64)
    repeat = ViTUNETR(1, 2, (64, 64), backbone="vit_b", backbone_kwargs=TINY).eval()
    summed = ViTUNETR(1, 2, (64, 64), backbone="vit_b", backbone_kwargs=TINY, input_channel_mode="sum").eval()
    for network in (repeat, summed):
        report = load_pretrained_encoder(network, tmp_path / "vit_tiny.safetensors", verbose=False)
        assert report.initialised == [] and report.skipped == ["norm.bias", "norm.weight"]
    assert summed.encoder.vit.patch_embed.proj.weight.shape[1] == 1
    assert torch.allclose(summed.encoder.vit.patch_embed.proj.weight,
                          source.patch_embed.proj.weight.sum(dim=1, keepdim=True))
    grey = torch.randn(1, 1, 64, 64)
    assert _same_features(repeat, source, grey.expand(-1, 3, -1, -1)) < 1e-5
    with torch.no_grad():  # summing RGB kernels == repeating grey to RGB, at load time
        difference = max(float((a - b).abs().max()) for a, b in zip(summed.encoder(grey),
                                                                     repeat.encoder(grey.expand(-1, 3, -1, -1))))
    assert difference < 1e-5


def test_dino_training_checkpoint_and_mae_release(tmp_path):
    _, source = write_dino_checkpoint(tmp_path / "dino_checkpoint.pth", TINY, image_size=224)
    write_mae_checkpoint(tmp_path / "mae_pretrain_vit_tiny.pth", TINY, image_size=224)  # same seed: same weights

    network = ViTUNETR(1, 2, (96, 64), backbone="vit_b", backbone_kwargs=TINY).eval()
    dino = load_pretrained_encoder(network, tmp_path / "dino_checkpoint.pth", source="dino", verbose=False)
    assert dino.initialised == [] and "pos_embed" in dino.adapted  # 14 x 14 grid resampled to 6 x 4
    assert set(dino.skipped) == {"head.mlp.0.weight", "norm.weight", "norm.bias"}
    reference = _timm_vit(TINY, image_size=224)
    reference.load_state_dict(source.state_dict())
    from timm.layers import resample_abs_pos_embed
    with torch.no_grad():
        reference.pos_embed = torch.nn.Parameter(resample_abs_pos_embed(source.pos_embed, [6, 4]))
        reference.patch_embed.img_size, reference.patch_embed.grid_size = (96, 64), (6, 4)
    assert _same_features(network, reference, torch.randn(1, 3, 96, 64)) < 1e-5

    network = ViTUNETR(1, 2, (96, 64), backbone="vit_b", backbone_kwargs=TINY).eval()  # fresh weights
    mae_report = load_pretrained_encoder(network, tmp_path / "mae_pretrain_vit_tiny.pth", verbose=False)
    assert mae_report.source == "mae" and mae_report.initialised == []
    assert {"mask_token", "decoder_pos_embed"} <= set(mae_report.skipped)
    assert _same_features(network, reference, torch.randn(1, 3, 96, 64)) < 1e-5


def test_beit_self_supervised_checkpoint_with_shared_relative_positions(tmp_path):
    _, source = write_beit_checkpoint(tmp_path / "beit_tiny_pt22k.pth", TINY)
    network = ViTUNETR(1, 2, (64, 64), backbone="beit_b", backbone_kwargs=TINY).eval()
    report = load_pretrained_encoder(network, tmp_path / "beit_tiny_pt22k.pth", verbose=False)
    assert report.source == "beit" and report.initialised == []
    assert "rel_pos_bias.relative_position_bias_table" not in report.skipped  # copied into every block
    assert _same_features(network, source, torch.randn(1, 3, 64, 64)) < 1e-5


def test_mismatched_checkpoints_are_refused(tmp_path):
    path, _ = write_original_sam_checkpoint(tmp_path / "sam.pth", TINY_SAM)
    with pytest.raises(ValueError, match="does not fit backbone 'vit_b'"):
        load_pretrained_encoder(ViTUNETR(1, 2, (64, 64), backbone="vit_b", backbone_kwargs=TINY), path)
    torch.save(_timm_vit({**TINY, "embed_dim": 48}).state_dict(), tmp_path / "wide.pth")
    with pytest.raises(ValueError, match="do not fit backbone 'vit_b' \\(another model size"):
        load_pretrained_encoder(ViTUNETR(1, 2, (64, 64), backbone="vit_b", backbone_kwargs=TINY),
                                tmp_path / "wide.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: cannot be read"):
        read_checkpoint(tmp_path / "junk.pth")


def test_checkpoint_in_wrappers_loads_and_says_what_was_stripped(tmp_path, capsys):
    """An extra ``encoder.`` prefix (and Lightning's ``state_dict`` / ``model.``) used to match nothing."""
    _, source = write_timm_checkpoint(tmp_path / "plain.pth", TINY, image_size=64)
    wrapped = {f"model.encoder.{k}": v for k, v in source.state_dict().items()}
    wrapped["model.decoder.head.weight"] = torch.randn(2, 8)  # a decoder beside the encoder: skipped
    torch.save({"state_dict": wrapped, "epoch": 3}, tmp_path / "wrapped.ckpt")
    torch.save({f"encoder.{k}": v for k, v in source.state_dict().items()}, tmp_path / "encoder_prefix.pth")

    for name, stripped in [("encoder_prefix.pth", ["'encoder.' prefix (30 keys)"]),
                           ("wrapped.ckpt", ["'state_dict' nesting", "'model.' prefix (31 keys)",
                                             "'encoder.' prefix (30 keys)"])]:
        network = ViTUNETR(1, 2, (64, 64), backbone="vit_b", backbone_kwargs=TINY).eval()
        report = load_pretrained_encoder(network, tmp_path / name)
        assert report.unwrapped == stripped
        assert report.loaded == sorted(network.encoder.vit.state_dict()) and report.initialised == []
        printed = capsys.readouterr().out
        assert f"loaded {len(report.loaded)} tensors" in printed and "stripped " + ", ".join(stripped) in printed
        assert _same_features(network, source, torch.randn(1, 3, 64, 64)) < 1e-5

    # the SAM key format behind a DDP wrapper: only module. goes, image_encoder. is SAM's own
    path, sam = write_original_sam_checkpoint(tmp_path / "sam.pth", TINY_SAM)
    original = torch.load(path)
    torch.save({f"module.{k}": v for k, v in original.items()}, tmp_path / "sam_ddp.pth")
    network = ViTUNETR(1, 2, (64, 64), backbone="sam_vit_b", backbone_kwargs=TINY_SAM).eval()
    report = load_pretrained_encoder(network, tmp_path / "sam_ddp.pth", verbose=False)
    assert report.source == "sam" and report.initialised == []
    assert report.unwrapped == [f"'module.' prefix ({len(original)} keys)"]
    assert _same_features(network, sam, torch.randn(1, 3, 64, 64)) < 1e-5


def test_checkpoint_that_matches_nothing_is_refused_naming_keys(tmp_path):
    network = ViTUNETR(1, 2, (64, 64), backbone="vit_b", backbone_kwargs=TINY)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    torch.save({"conv1.weight": torch.randn(8, 3, 7, 7), "layer1.0.bn1.weight": torch.randn(8),
                "fc.weight": torch.randn(10, 8)}, tmp_path / "resnet.pth")
    with pytest.raises(ValueError) as refused:
        load_pretrained_encoder(network, tmp_path / "resnet.pth")
    message = str(refused.value)
    assert "26 of the 26 core tensors of backbone 'vit_b' (patch embedding, transformer blocks) have no match" \
        in message
    assert "Encoder keys without a match: patch_embed.proj.weight, patch_embed.proj.bias, blocks.0.norm1.weight" \
        in message
    assert "Checkpoint keys not used: conv1.weight, layer1.0.bn1.weight, fc.weight." in message
    assert "Wrappers stripped: none" in message
    assert all(torch.equal(v, network.state_dict()[k]) for k, v in before.items())  # refused before loading

    # a wrapper the loader does not know: refused too, and the message shows the prefix
    _, source = write_timm_checkpoint(tmp_path / "plain.pth", TINY, image_size=64)
    torch.save({f"net.{k}": v for k, v in source.state_dict().items()}, tmp_path / "net_prefix.pth")
    with pytest.raises(ValueError, match=r"Checkpoint keys not used: net\.cls_token, net\.pos_embed"):
        load_pretrained_encoder(network, tmp_path / "net_prefix.pth")

    # a shallower model of the same width leaves whole blocks uninitialised: refused, unless asked for
    torch.save(_timm_vit({**TINY, "depth": 1}).state_dict(), tmp_path / "shallow.pth")
    with pytest.raises(ValueError, match=r"12 of the 26 core tensors.*without a match: blocks\.1\.norm1\.weight"):
        load_pretrained_encoder(network, tmp_path / "shallow.pth")
    partial = load_pretrained_encoder(network, tmp_path / "shallow.pth", require_core=False, verbose=False)
    assert len(partial.initialised) == 12 and all(k.startswith("blocks.1.") for k in partial.initialised)


def test_report_names_what_was_skipped():
    report = LoadReport("w.pth", "sam", loaded=["a"], skipped=["image_encoder.neck.0.weight", "mask_decoder.x"])
    assert str(report) == ("pretrained encoder from w.pth [sam]: loaded 1 tensors, skipped 2 "
                           "(image_encoder.neck, mask_decoder), newly initialised 0")


def test_sam_backbone_uses_sams_layernorm_eps(tmp_path):
    """segment-anything builds its image encoder with LayerNorm eps 1e-6; timm's VisionTransformerSAM defaults to
    1e-5, which shows on low-contrast tokens."""
    network = ViTUNETR(1, 2, (64, 64), backbone="sam_vit_b", backbone_kwargs=TINY_SAM).eval()
    norms = [m for m in network.encoder.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * TINY_SAM["depth"] and {m.eps for m in norms} == {1e-6}
    path, sam = write_original_sam_checkpoint(tmp_path / "sam.pth", TINY_SAM)
    load_pretrained_encoder(network, path, verbose=False)
    with torch.no_grad():  # tokens of small variance, where eps matters
        for model in (network.encoder.vit, sam):
            model.pos_embed.mul_(0.01)
            model.patch_embed.proj.bias.mul_(0.01)
    assert _same_features(network, sam, 0.01 * torch.randn(1, 3, 64, 64)) < 1e-6


def emsam_public_decoder(embed_dim: int = 768, in_channels: int = 3, classes: int = 3) -> torch.nn.Module:
    """Stand-in with the layers of the public EM-SAM decoder (pytorch_connectomics projects/EM-SAM, ``unetr``), for
    counting: 3x3 conv + BatchNorm + ReLU blocks, 2x2 transposed convolutions (alone, or followed by a 3x3 conv +
    BatchNorm + ReLU), channels 32/64 at full resolution up to 512 at 1/8, 1024 where two 512 maps are concatenated.
    Built from that description, not from its code."""
    from torch import nn

    def conv(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(True))

    def up(i, o):
        return nn.ConvTranspose2d(i, o, 2, stride=2)

    def up_conv(i, o):
        return nn.Sequential(up(i, o), nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(True))

    e = embed_dim
    return nn.ModuleDict({
        "stem": nn.Sequential(conv(in_channels, 32), conv(32, 64)),
        "skip3": nn.Sequential(up_conv(e, 512), up_conv(512, 256), up_conv(256, 128)),
        "skip6": nn.Sequential(up_conv(e, 512), up_conv(512, 256)),
        "skip9": up_conv(e, 512),
        "bottleneck_up": up(e, 512),
        "merge9": nn.Sequential(conv(1024, 512), conv(512, 512), conv(512, 512), up(512, 256)),
        "merge6": nn.Sequential(conv(512, 256), conv(256, 256), up(256, 128)),
        "merge3": nn.Sequential(conv(256, 128), conv(128, 128), up(128, 64)),
        "head": nn.Sequential(conv(128, 64), conv(64, 64), nn.Conv2d(64, classes, 1)),
    })


def test_decoder_features_that_match_the_public_emsam_decoder():
    """docs/transformers.md: 16 features give 1.89 M decoder parameters, the public EM-SAM decoder has 28.36 M;
    64 gives its channel widths (64..512, 17.31 M), 84 its parameter count (28.05 M)."""
    public = sum(p.numel() for p in emsam_public_decoder().parameters())
    assert round(public / 1e6, 2) == 28.36
    with torch.device("meta"):
        counts = {f: sum(p.numel() for p in ViTUNETR(1, 3, (1024, 1024), backbone="sam_vit_b",
                                                      decoder_features=f).decoder.parameters())
                  for f in (16, 64, 84)}
        widths = ViTUNETR(1, 3, (1024, 1024), backbone="sam_vit_b", decoder_features=64).decoder
    assert {f: round(c / 1e6, 2) for f, c in counts.items()} == {16: 1.89, 64: 17.31, 84: 28.05}
    assert abs(counts[84] / public - 1) < 0.02
    assert [b.conv_block.conv1.conv.out_channels for b in widths.up_blocks] == [64, 128, 256, 512]


# ------------------------------------------------------------------------------------------------------ inflation

def test_inflation_formulas():
    weight = torch.randn(8, 3, 16, 16)
    average = inflate_patch_embedding(weight, 5, "average")
    centre = inflate_patch_embedding(weight, 5, "centre")
    assert average.shape == centre.shape == (8, 3, 5, 16, 16)
    for k in range(5):
        assert torch.equal(average[:, :, k], weight / 5)
        assert torch.equal(centre[:, :, k], weight if k == 2 else torch.zeros_like(weight))
    assert torch.equal(inflate_patch_embedding(weight, 4, "centre")[:, :, 2], weight)  # k_d // 2
    with pytest.raises(ValueError, match="unknown inflation strategy"):
        inflate_patch_embedding(weight, 3, "middle")

    pos = torch.randn(1, 1 + 4 * 4, 8)
    inflated = inflate_position_embedding(pos, (3, 2, 6))
    from timm.layers import resample_abs_pos_embed
    planar = resample_abs_pos_embed(pos, [2, 6], num_prefix_tokens=1)
    assert inflated.shape == (1, 1 + 3 * 2 * 6, 8) and torch.equal(inflated[:, 0], pos[:, 0])
    assert all(torch.equal(inflated[:, 1 + d * 12: 13 + d * 12], planar[:, 1:]) for d in range(3))


def _patch_embedding_3d(strategy: str, depth: int):
    source = _timm_vit(TINY, image_size=64)
    network = ViTUNETR(1, 2, (depth, 64, 64), backbone="vit_b", backbone_kwargs=TINY,
                       patch_embed_size=(depth, 16, 16), input_channel_mode="sum")
    state, adapted = inflate_vit_state_dict(source.state_dict(), network.encoder.vit, strategy)
    assert set(adapted) == {"patch_embed.proj.weight"}  # same in-plane grid: position embedding only repeated
    network.encoder.vit.load_state_dict({k: v for k, v in state.items() if not k.startswith("norm.")})
    return source, network.encoder.vit


def test_average_inflation_of_a_depth_constant_input_gives_the_2d_embedding():
    source, vit3d = _patch_embedding_3d("average", 5)
    image = torch.randn(1, 1, 64, 64)
    volume = image.unsqueeze(2).expand(-1, -1, 5, -1, -1)
    with torch.no_grad():
        tokens_3d = vit3d.patch_embed(volume)  # (1, 1 * 4 * 4, C)
        tokens_2d = source.patch_embed(image.expand(-1, 3, -1, -1))  # RGB kernels summed == grey repeated
    assert torch.allclose(tokens_3d, tokens_2d, atol=1e-5)


def test_centre_inflation_sees_only_the_centre_slice():
    source, vit3d = _patch_embedding_3d("centre", 5)
    volume = torch.randn(1, 1, 5, 64, 64)
    changed = volume.clone()
    changed[:, :, [0, 1, 3, 4]] = torch.randn(1, 1, 4, 64, 64)
    with torch.no_grad():
        tokens = vit3d.patch_embed(volume)
        assert torch.equal(tokens, vit3d.patch_embed(changed))
        tokens_2d = source.patch_embed(volume[:, :, 2].expand(-1, 3, -1, -1))
    assert torch.allclose(tokens, tokens_2d, atol=1e-5)


def test_inflated_3d_vit_reproduces_the_2d_vit_on_a_depth_constant_volume(tmp_path):
    """Without a class token, repeated position embeddings and duplicated tokens leave attention unchanged: every
    depth slice of the 3D encoder's features equals the 2D encoder's (loaded through the public loader)."""
    config = {**TINY, "class_token": False}
    source = _timm_vit(config, image_size=64)
    torch.save(source.state_dict(), tmp_path / "vit_no_cls.pth")
    network = ViTUNETR(1, 2, (32, 64, 64), backbone="vit_b", backbone_kwargs=config).eval()
    report = load_pretrained_encoder(network, tmp_path / "vit_no_cls.pth", inflation="average", verbose=False)
    assert report.initialised == [] and set(report.adapted) == {"patch_embed.proj.weight", "pos_embed"}
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features_3d = network.encoder(image.unsqueeze(2).expand(-1, -1, 32, -1, -1))
        features_2d = source.forward_intermediates(image, indices=[0, 1], intermediates_only=True)
    for feature, block in zip(features_3d, network.encoder.taps):
        assert feature.shape == (1, 32, 2, 4, 4)
        for d in range(2):
            assert torch.allclose(feature[:, :, d], features_2d[block - 1], atol=1e-4)
    assert len(report.loaded) == len(network.encoder.vit.state_dict())


@pytest.mark.parametrize("shape", [(112, 448), (448, 112)])
def test_2d_position_embedding_follows_the_grid_not_the_token_count(tmp_path, shape):
    """A 224-pixel ViT's 14 x 14 table on a 7 x 28 grid has the same token count: it must still be resampled (timm's
    filter compares counts and leaves it as it is)."""
    from timm.layers import resample_abs_pos_embed

    _, source = write_timm_checkpoint(tmp_path / "vit_224.pth", TINY, image_size=224)
    network = ViTUNETR(1, 2, shape, backbone="vit_b", backbone_kwargs=TINY).eval()
    grid = [s // 16 for s in shape]
    assert network.encoder.vit.pos_embed.shape == source.pos_embed.shape  # 1 + 196 tokens either way
    report = load_pretrained_encoder(network, tmp_path / "vit_224.pth", verbose=False)
    assert "pos_embed" in report.adapted
    expected = resample_abs_pos_embed(source.pos_embed, grid, old_size=[14, 14], num_prefix_tokens=1)
    assert torch.allclose(network.encoder.vit.pos_embed, expected)
    # what timm computes when it runs the 224-pixel model at this size with dynamic image sizes
    reference = _timm_vit(TINY, image_size=224, dynamic_img_size=True)
    reference.load_state_dict(source.state_dict())
    assert _same_features(network, reference, torch.randn(1, 3, *shape)) < 1e-5


def test_3d_position_embedding_follows_the_grid_not_the_token_count(tmp_path):
    """A 4 x 7 x 7 grid has 196 tokens like the 14 x 14 table: the table must still be resampled to 7 x 7 and
    repeated over the 4 depth slabs (it used to be copied unchanged)."""
    _, source = write_timm_checkpoint(tmp_path / "vit_224.pth", TINY, image_size=224)
    network = ViTUNETR(1, 2, (16, 112, 112), backbone="vit_b", backbone_kwargs=TINY,
                       patch_embed_size=(4, 16, 16)).eval()
    assert network.encoder.vit.patch_embed.grid_size == (4, 7, 7)
    assert network.encoder.vit.pos_embed.shape == source.pos_embed.shape
    report = load_pretrained_encoder(network, tmp_path / "vit_224.pth", verbose=False)
    assert set(report.adapted) == {"patch_embed.proj.weight", "pos_embed"}
    expected = inflate_position_embedding(source.pos_embed, (4, 7, 7), old_grid=(14, 14))
    assert torch.equal(network.encoder.vit.pos_embed, expected)
    table = network.encoder.vit.pos_embed[0, 1:].reshape(4, 49, -1)
    assert all(torch.equal(table[d], table[0]) for d in range(4))  # every depth slab: the same in-plane table
    assert not torch.equal(network.encoder.vit.pos_embed, source.pos_embed)

    # an already inflated (3D) state dict keeps its table
    state, adapted = inflate_vit_state_dict(network.encoder.vit.state_dict(), network.encoder.vit)
    assert adapted == [] and torch.equal(state["pos_embed"], network.encoder.vit.pos_embed)
