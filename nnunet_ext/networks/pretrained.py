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
the file), and what wrappers were stripped from the keys (``module.``, ``encoder.``, ``backbone.``, ``model.``
prefixes; ``teacher``/``model``/``state_dict``/``module`` nesting). It refuses tensors whose shapes do not fit (a
checkpoint of another model size) and a checkpoint that leaves any of the encoder's core tensors (patch embedding,
transformer blocks) uninitialised, naming unmatched keys of both sides: such a file is another model or another key
format, and training would silently start from scratch.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from nnunet_ext.networks.inflation import inflate_vit_state_dict, square_grid

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
    #: wrappers stripped from the file's keys before matching, e.g. ``'teacher' nesting``, ``'module.' prefix``
    unwrapped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        def some(names: list[str]) -> str:
            groups = sorted({".".join(n.split(".")[:2]) if n.split(".")[0] in ("blocks", "image_encoder")
                             else n.split(".")[0] for n in names})
            return f" ({', '.join(groups[:8])}{', ...' if len(groups) > 8 else ''})" if names else ""

        return (f"pretrained encoder from {self.path} [{self.source}]: loaded {len(self.loaded)} tensors"
                f"{f' ({len(self.adapted)} adapted: ' + ', '.join(self.adapted) + ')' if self.adapted else ''}, "
                f"skipped {len(self.skipped)}{some(self.skipped)}, "
                f"newly initialised {len(self.initialised)}{some(self.initialised)}"
                f"{'; stripped ' + ', '.join(self.unwrapped) if self.unwrapped else ''}")


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
    """Tensors of a checkpoint file, unwrapped from containers and key prefixes (see :func:`unwrap_state_dict`).

    ``.safetensors`` files are read with safetensors; other files with ``torch.load(weights_only=True)`` (only
    ``argparse.Namespace``, which DINO and MAE training checkpoints keep under ``args``, is allowed besides tensors).
    """
    return _read_checkpoint(path)[0]


def _read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], list[str]]:
    """:func:`read_checkpoint` and the wrappers it stripped."""
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
    state, unwrapped = unwrap_state_dict(state)
    if not state:
        raise ValueError(f"{path}: no tensors found")
    return state, unwrapped


#: nesting keys of training checkpoints (DINO's ``teacher``, MAE's and BEiT's ``model``, Lightning's ``state_dict``)
CONTAINERS = ("teacher", "model", "state_dict", "module")
#: key prefixes of wrappers: DDP / DataParallel, encoder-decoder models, DINO's backbone, Lightning modules
WRAPPER_PREFIXES = ("module.", "encoder.", "backbone.", "model.")
#: the encoder's core tensors (timm names): a checkpoint must initialise all of them
CORE_TENSORS = ("patch_embed.", "blocks.")
#: keys an encoder release starts with once unwrapped (SAM's image encoder, or a timm ViT / BEiT)
_CORE_KEY_STARTS = ("image_encoder.", "patch_embed.", "blocks.", "pos_embed", "cls_token")


def _without_wrappers(key: str) -> str:
    while True:
        prefix = next((p for p in WRAPPER_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            return key
        key = key[len(prefix):]


def unwrap_state_dict(state: dict) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The encoder's tensors of a checkpoint dict, with containers and wrapper prefixes removed.

    Containers (:data:`CONTAINERS`) are descended while the dict holds one. Then, as long as no key starts like an
    encoder release (``image_encoder.``, ``patch_embed.``, ``blocks.``, ``pos_embed``, ``cls_token``), the wrapper
    prefix (:data:`WRAPPER_PREFIXES`) in front of most of the keys that hide encoder tensors is stripped; keys
    outside it (a projection head, a decoder) are kept as they are and end up skipped.

    Returns
    -------
    (dict, list of str)
        The tensors and what was stripped, in order (e.g. ``["'teacher' nesting", "'module.' prefix (12 keys)"]``).
    """
    unwrapped = []
    descended = True
    while descended:
        descended = False
        for container in CONTAINERS:
            if isinstance(state.get(container), dict):
                state = state[container]
                unwrapped.append(f"'{container}' nesting")
                descended = True
                break
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    while state and not any(k.startswith(_CORE_KEY_STARTS) for k in state):
        hiding = {}  # wrapper prefix -> keys behind it that are encoder tensors once all wrappers are removed
        for key in state:
            prefix = next((p for p in WRAPPER_PREFIXES if key.startswith(p)), None)
            if prefix is not None and _without_wrappers(key).startswith(_CORE_KEY_STARTS):
                hiding[prefix] = hiding.get(prefix, 0) + 1
        if not hiding:
            break  # nothing recognisable: matching fails and the loader names the keys
        prefix = max(hiding, key=hiding.get)
        count = sum(k.startswith(prefix) for k in state)
        state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
        unwrapped.append(f"'{prefix}' prefix ({count} keys)")
    return state, unwrapped


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
        if encoder.family == "vit" and getattr(state_dict.get("pos_embed"), "ndim", 0) == 3:
            # timm's filter resamples only when the token count differs: a 14 x 14 table would stay as it is on a
            # 7 x 28 grid (112 x 448 input). Compare grid shapes, and resample here when they differ.
            from timm.layers import resample_abs_pos_embed
            prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
            old_grid = square_grid(state_dict["pos_embed"], prefix, model.patch_embed.grid_size)
            if old_grid != tuple(model.patch_embed.grid_size):
                state_dict["pos_embed"] = resample_abs_pos_embed(
                    state_dict["pos_embed"], new_size=list(model.patch_embed.grid_size), old_size=list(old_grid),
                    num_prefix_tokens=prefix)
                adapted.append("pos_embed")
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
                            verbose: bool = True, require_core: bool = True) -> LoadReport:
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
    require_core : bool
        Refuse a checkpoint that leaves any tensor of the patch embedding or of the transformer blocks uninitialised
        (default). ``False`` loads whatever matches (a deliberate partial initialisation).

    Returns
    -------
    LoadReport

    Raises
    ------
    ValueError
        When the checkpoint's family does not match the backbone, tensors do not fit (another model size), or the
        encoder's core tensors find no match in the file (another model, or keys in an unknown wrapper); the message
        names unmatched keys of both sides. The network is left unchanged.
    """
    encoder = getattr(network, "encoder", network)
    original, unwrapped = _read_checkpoint(path)
    source_used = detect_source(original) if source == "auto" else source
    mapped, origin, adapted = convert_state_dict(original, encoder, source_used, inflation)
    own = encoder.vit.state_dict()
    mismatched = [f"{k}: file {tuple(v.shape)} vs network {tuple(own[k].shape)}"
                  for k, v in mapped.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise ValueError(f"{path}: {len(mismatched)} tensors do not fit backbone {encoder.backbone!r} (another model "
                         f"size?): " + "; ".join(mismatched[:5]))
    loadable = {k: v for k, v in mapped.items() if k in own}
    used_originals = {origin[k] for k in loadable}
    report = LoadReport(
        path=str(path), source=source_used, loaded=sorted(loadable), adapted=[k for k in adapted if k in loadable],
        skipped=sorted(k for k in original if k not in used_originals),
        initialised=sorted(k for k in own if k not in loadable), unwrapped=unwrapped)
    core = [k for k in own if k.startswith(CORE_TENSORS)]
    missing_core = [k for k in core if k not in loadable]
    if require_core and missing_core:
        def few(names):  # in the order of the state dict: patch embedding first
            return ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "") \
                if names else "none"

        raise ValueError(
            f"{path}: {len(missing_core)} of the {len(core)} core tensors of backbone {encoder.backbone!r} (patch "
            f"embedding, transformer blocks) have no match in the checkpoint [{source_used}] and would stay randomly "
            f"initialised; refusing to load it (is it another model, or are its keys wrapped in an unknown "
            f"prefix?). Encoder keys without a match: {few(missing_core)}. Checkpoint keys not used: "
            f"{few([k for k in original if k not in used_originals])}. Wrappers stripped: "
            f"{', '.join(unwrapped) or 'none'} (recognised: {', '.join(WRAPPER_PREFIXES)} prefixes and "
            f"{', '.join(CONTAINERS)} nesting). Matched: {len(loadable)} tensors.")
    encoder.vit.load_state_dict(loadable, strict=False)
    if verbose:
        print(report)
    return report
