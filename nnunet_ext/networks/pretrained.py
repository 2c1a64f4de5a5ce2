"""Pretrained encoder weights from local files: original SAM, timm, DINO, MAE and BEiT releases.

Nothing is downloaded: the user names the file (an option, or an environment variable that a trainer reads). Each
release's keys are mapped to timm's parameter names with timm's own ``checkpoint_filter_fn`` of the model family
(SAM: ``image_encoder.*`` -> ``*``, ``mlp.lin1`` -> ``mlp.fc1``; ViT: patch-embed / position-embedding resampling;
BEiT: relative-position tables resized to the new window), then adapted to the network:

* SAM's absolute position embedding ``(1, 64, 64, C)`` is interpolated to the patch grid (bicubic, as timm does at
  run time) and the relative-position tables of the global-attention blocks to ``2 * grid - 1`` entries (linear, as
  SAM itself does at run time);
* BEiT's shared relative-position table (self-supervised checkpoints) is copied into every block, as BEiT's own
  fine-tuning code does;
* RGB patch-embedding kernels are summed to grey (timm's ``adapt_input_conv``) when the network's patch embedding
  takes the data's channels (``input_channel_mode="sum"``);
* 3D networks get the 2D weights inflated (:mod:`nnunet_ext.networks.inflation`).

:func:`load_pretrained_encoder` prints how many tensors were loaded, skipped (in the file but not part of the encoder:
SAM's neck, prompt encoder and mask decoder, MAE's decoder, heads) and newly initialised (in the encoder but not in
the file), and refuses tensors whose shapes do not fit (a checkpoint of another model size).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from nnunet_ext.networks.inflation import inflate_vit_state_dict

SOURCES = ("auto", "sam", "timm", "dino", "mae", "beit")
SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


@dataclass
class LoadReport:
    """What :func:`load_pretrained_encoder` did; ``str(report)`` is the line it prints."""

    path: str
    source: str
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        def some(names: list[str]) -> str:
            groups = sorted({".".join(n.split(".")[:2]) if n.split(".")[0] in ("blocks", "image_encoder")
                             else n.split(".")[0] for n in names})
            return f" ({', '.join(groups[:8])}{', ...' if len(groups) > 8 else ''})" if names else ""

        return (f"pretrained encoder from {self.path} [{self.source}]: loaded {len(self.loaded)} tensors"
                f"{f' ({len(self.adapted)} adapted: ' + ', '.join(self.adapted) + ')' if self.adapted else ''}, "
                f"skipped {len(self.skipped)}{some(self.skipped)}, "
                f"newly initialised {len(self.initialised)}{some(self.initialised)}")


def checkpoint_path_from_env(variable: str, what: str = "the pretrained checkpoint") -> Path:
    """The file named by environment variable ``variable``; a clear error naming it when unset or missing."""
    value = os.environ.get(variable, "").strip()
    if not value:
        raise FileNotFoundError(
            f"environment variable {variable} is not set; it must name {what} (a local file, nothing is "
            f"downloaded), e.g.\n    export {variable}=/path/to/checkpoint.pth")
    path = Path(value).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{variable}={value}: no such file ({what} expected)")
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from ``model``/``state_dict``/``module``/DINO ``teacher`` containers.

    ``.safetensors`` files are read with safetensors; other files with ``torch.load(weights_only=True)`` (only
    ``argparse.Namespace``, which DINO and MAE training checkpoints keep under ``args``, is allowed besides tensors).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unpickling failure means: not a checkpoint we can read safely
            raise ValueError(f"{path}: cannot be read as a PyTorch checkpoint of tensors ({error}); supported are "
                             f"{', '.join(SUFFIXES)} files holding a state dict") from error
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
    if "network_weights" in state:
        raise ValueError(f"{path} is an nnU-Net checkpoint; load it with nnUNetv2_train ... -pretrained_weights "
                         f"{path} instead")
    for container in ("teacher", "model", "state_dict", "module"):
        if container in state and isinstance(state[container], dict):
            state = state[container]
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    for prefix in ("module.", "backbone."):  # DDP and DINO's teacher wrappers
        if state and all(k.startswith(prefix) or k.startswith("head.") for k in state):
            state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
    if not state:
        raise ValueError(f"{path}: no tensors found")
    return state


def detect_source(state_dict: dict[str, torch.Tensor]) -> str:
    """Which release a state dict comes from: ``sam``, ``beit``, ``mae`` or ``timm`` (DINO's keys are timm's)."""
    keys = list(state_dict)
    if any(k.startswith("image_encoder.") for k in keys):
        return "sam"
    if any("relative_position_bias_table" in k or ".gamma_1" in k or k.endswith("attn.q_bias") for k in keys):
        return "beit"
    if any(k.startswith("decoder_") for k in keys):
        return "mae"
    return "timm"


_FAMILY_OF_SOURCE = {"sam": "sam", "beit": "beit", "timm": "vit", "dino": "vit", "mae": "vit"}


def convert_state_dict(state_dict: dict[str, torch.Tensor], encoder, source: str = "auto",
                       inflation: str = "centre") -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """Map a release's tensors onto ``encoder.vit`` (a :class:`~nnunet_ext.networks.vit_encoders.ViTEncoder`).

    Returns the mapped state dict, the original key of each mapped key, and the mapped keys whose tensors were
    adapted (resized, summed or inflated).
    """
    from timm.models._manipulate import adapt_input_conv

    detected = detect_source(state_dict)
    source = detected if source == "auto" else source
    if source not in _FAMILY_OF_SOURCE:
        raise ValueError(f"unknown checkpoint source {source!r}; choose one of {SOURCES}")
    if _FAMILY_OF_SOURCE[source] != encoder.family:
        raise ValueError(f"a {source} checkpoint does not fit backbone {encoder.backbone!r} ({encoder.family} "
                         f"family); use a {encoder.family} backbone or a matching checkpoint")
    model = encoder.vit
    state_dict = dict(state_dict)
    origin: dict[str, str] = {}
    adapted: list[str] = []

    if source == "beit" and "rel_pos_bias.relative_position_bias_table" in state_dict \
            and getattr(model, "rel_pos_bias", None) is None:
        # self-supervised BEiT shares one table; fine-tuning gives each block its own copy
        shared = state_dict.pop("rel_pos_bias.relative_position_bias_table")
        state_dict.pop("rel_pos_bias.relative_position_index", None)
        for i in range(len(model.blocks)):
            name = f"blocks.{i}.attn.relative_position_bias_table"
            state_dict[name] = shared.clone()
            origin[name] = "rel_pos_bias.relative_position_bias_table"

    if encoder.spatial_dims == 3:
        mapped, adapted = inflate_vit_state_dict(state_dict, model, inflation)
        origin.update({k: origin.get(k, k) for k in mapped})
    else:
        if encoder.family == "sam":
            from timm.models.vision_transformer_sam import checkpoint_filter_fn
        elif encoder.family == "beit":
            from timm.models.beit import checkpoint_filter_fn
        else:
            from timm.models.vision_transformer import checkpoint_filter_fn
        mapped = {}
        for key, value in state_dict.items():
            # one key at a time, to know where each mapped tensor came from
            for new_key, new_value in checkpoint_filter_fn({key: value}, model).items():
                mapped[new_key] = new_value
                origin[new_key] = origin.get(key, key)
                if new_value.shape != value.shape:
                    adapted.append(new_key)

    own = model.state_dict()
    for key, value in list(mapped.items()):
        if key not in own or value.shape == own[key].shape:
            continue
        if key == "pos_embed" and encoder.family == "sam":  # (1, 64, 64, C) at 1024 px -> the patch grid
            from timm.layers import resample_abs_pos_embed_nhwc
            mapped[key] = resample_abs_pos_embed_nhwc(value, list(own[key].shape[1:3]))
        elif key.endswith(("rel_pos_h", "rel_pos_w")):
            # SAM's get_rel_pos interpolates the same way when the token grid differs from the table
            mapped[key] = F.interpolate(value.T.unsqueeze(0), size=own[key].shape[0], mode="linear")[0].T
        elif key == "patch_embed.proj.weight" and value.shape[1] != own[key].shape[1]:
            mapped[key] = adapt_input_conv(own[key].shape[1], value)
        else:
            continue
        adapted.append(key)
    return mapped, origin, sorted(set(adapted))


def load_pretrained_encoder(network, path: str | os.PathLike, source: str = "auto", inflation: str = "centre",
                            verbose: bool = True) -> LoadReport:
    """Load a local pretrained checkpoint into the encoder of a :class:`~nnunet_ext.networks.unetr.ViTUNETR`.

    Parameters
    ----------
    network : ViTUNETR
        The network (or its ``encoder``).
    path : path
        Checkpoint file: original SAM (``sam_vit_b_01ec64.pth``), timm (``.pth``/``.safetensors``), DINO
        (``dino_vitbase16_pretrain.pth`` or a training checkpoint with ``teacher``), MAE (``mae_pretrain_vit_base.pth``)
        or BEiT (``beit_base_patch16_224_pt22k.pth``).
    source : {"auto", "sam", "timm", "dino", "mae", "beit"}
        Release format; ``auto`` recognises it from the keys.
    inflation : {"centre", "average"}
        How a 2D patch embedding becomes 3D (3D networks only).
    verbose : bool
        Print the report.

    Returns
    -------
    LoadReport

    Raises
    ------
    ValueError
        When the checkpoint's family does not match the backbone, or tensors do not fit (another model size).
    """
    encoder = getattr(network, "encoder", network)
    original = read_checkpoint(path)
    source_used = detect_source(original) if source == "auto" else source
    mapped, origin, adapted = convert_state_dict(original, encoder, source_used, inflation)
    own = encoder.vit.state_dict()
    mismatched = [f"{k}: file {tuple(v.shape)} vs network {tuple(own[k].shape)}"
                  for k, v in mapped.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise ValueError(f"{path}: {len(mismatched)} tensors do not fit backbone {encoder.backbone!r} (another model "
                         f"size?): " + "; ".join(mismatched[:5]))
    loadable = {k: v for k, v in mapped.items() if k in own}
    encoder.vit.load_state_dict(loadable, strict=False)
    used_originals = {origin[k] for k in loadable}
    report = LoadReport(
        path=str(path), source=source_used, loaded=sorted(loadable), adapted=[k for k in adapted if k in loadable],
        skipped=sorted(k for k in original if k not in used_originals),
        initialised=sorted(k for k in own if k not in loadable))
    if verbose:
        print(report)
    return report
