"""Plans variants for the transformer networks: patch sizes that suit a 16-pixel tokenizer, and our network class.

``write_vit_plans`` derives ``nnUNetPlans_<backbone>`` (e.g. ``nnUNetPlans_sam_vit_b``) from nnU-Net's plans with
:func:`nnunet_ext.nnunet.plans_cpu.derive_plans`. The configuration's ``architecture`` then names
:class:`nnunet_ext.networks.unetr.ViTUNETR` with all its arguments, including nnU-Net-style ``strides`` from which
the stock trainer derives its deep-supervision scales, so ``nnUNetv2_train`` and ``nnUNetv2_predict`` rebuild the
same network from the plans alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from nnunet_ext.networks.unetr import ViTUNETR, default_decoder_strides
from nnunet_ext.networks.vit_encoders import backbone_config
from nnunet_ext.nnunet.plans_cpu import derive_plans, preprocessed_dataset_folder

VIT_NETWORK_CLASS = "nnunet_ext.networks.unetr.ViTUNETR"
# EM-SAM's input is 1024 x 1024 (SAM's own); the ViT, MAE and BEiT baselines of AxonCallosumEM use 224 x 224.
DEFAULT_2D_PATCH = {"sam": 1024, "vit": 224, "beit": 224}
DEFAULT_BATCH_SIZE = 2  # AxonCallosumEM's mini-batch


def vit_plans_name(backbone: str) -> str:
    """Default plans name of a backbone: ``nnUNetPlans_<backbone>``."""
    return f"nnUNetPlans_{backbone}"


def fit_patch_size(patch_size: Sequence[int], patch_embed_size: Sequence[int]) -> list[int]:
    """Each axis rounded down to a multiple of the token size (at least one token)."""
    return [max(p, (int(s) // p) * p) for s, p in zip(patch_size, patch_embed_size)]


def vit_architecture(input_shape: Sequence[int], backbone: str, patch_embed_size: Sequence[int] | None = None,
                     decoder_features: int = 16, input_channel_mode: str = "repeat",
                     backbone_kwargs: dict | None = None, skip_blocks: Sequence[int] | None = None,
                     drop_path_rate: float = 0.0) -> dict:
    """The plans' ``architecture`` entry for :class:`~nnunet_ext.networks.unetr.ViTUNETR` (checked by building it)."""
    import torch

    dims = len(input_shape)
    patch_embed_size = [int(p) for p in (patch_embed_size or [16] * dims)]
    arch_kwargs = {
        "input_shape": [int(s) for s in input_shape],
        "backbone": backbone,
        "patch_embed_size": patch_embed_size,
        "strides": default_decoder_strides(patch_embed_size),
        "skip_blocks": None if skip_blocks is None else [int(b) for b in skip_blocks],
        "decoder_features": int(decoder_features),
        "input_channel_mode": input_channel_mode,
        "backbone_kwargs": dict(backbone_kwargs or {}),
        "drop_path_rate": float(drop_path_rate),
        "norm_name": "instance",
        "res_block": True,
    }
    # fail now, with the network's own message, rather than at the start of training
    with torch.device("meta"):  # shapes only, no memory
        ViTUNETR(input_channels=1, num_classes=2, deep_supervision=True, **arch_kwargs)
    return {"network_class_name": VIT_NETWORK_CLASS, "arch_kwargs": arch_kwargs, "_kw_requires_import": []}


def write_vit_plans(dataset: str | int, configuration: str = "2d", backbone: str = "sam_vit_b",
                    patch_size: Sequence[int] | None = None, patch_embed_size: Sequence[int] | None = None,
                    batch_size: int = DEFAULT_BATCH_SIZE, decoder_features: int = 16,
                    input_channel_mode: str = "repeat", backbone_kwargs: dict | None = None,
                    source_plans: str = "nnUNetPlans", target_plans: str | None = None,
                    overwrite: bool = False, reuse_preprocessed: bool = False) -> Path:
    """Write a transformer plans variant of one configuration.

    Parameters
    ----------
    dataset : str or int
        Dataset ID or name, planned by nnU-Net (``<source_plans>.json`` exists).
    configuration : str
        ``2d`` or a 3D configuration (``3d_fullres``).
    backbone : str
        ``sam_vit_b`` (EM-SAM), ``sam_vit_l``, ``sam_vit_h``, ``vit_b`` (scratch, timm, DINO, MAE), ``vit_l``,
        ``beit_b``.
    patch_size : sequence of int, optional
        Network input; must be divisible by the token size. Default 2D: 1024 x 1024 for SAM, 224 x 224 otherwise;
        3D: nnU-Net's planned patch rounded down to whole tokens.
    patch_embed_size : sequence of int, optional
        Token size, default 16 per axis; 3D may be thin in depth, e.g. ``(5, 16, 16)`` for 5-slice blocks.
    batch_size : int
        Default 2 (AxonCallosumEM's recipe).
    decoder_features, input_channel_mode, backbone_kwargs
        See :class:`~nnunet_ext.networks.unetr.ViTUNETR` (``backbone_kwargs`` e.g. a tiny test size).
    source_plans, target_plans, overwrite
        As :func:`~nnunet_ext.nnunet.plans_cpu.derive_plans`; ``target_plans`` defaults to ``nnUNetPlans_<backbone>``.
    reuse_preprocessed : bool
        Keep the source configuration's ``data_identifier``, so training reads the data already preprocessed for
        ``source_plans`` and ``nnUNetv2_preprocess`` need not run again. Safe because only the patch size, batch size
        and network change, none of which enters preprocessing (spacing, normalisation and resampling are kept).
        The source data must exist. Do not run ``nnUNetv2_preprocess`` for the new plans (nnU-Net would delete and
        rewrite the shared folder), and write them again if the source plans are re-planned.

    Returns
    -------
    Path
        The written plans file.
    """
    family, _ = backbone_config(backbone, backbone_kwargs)
    source_identifiers = _source_data_identifiers(dataset, source_plans) if reuse_preprocessed else {}

    def edit(name: str, config: dict) -> None:
        dims = len(config["patch_size"])
        if dims == 3 and family != "vit":
            raise ValueError(f"configuration {name} is 3D but backbone {backbone!r} is 2D only; use vit_b (its 2D "
                             f"weights can be inflated) or a 2d configuration")
        tokens = [int(p) for p in (patch_embed_size or [16] * dims)]
        if len(tokens) != dims:
            raise ValueError(f"configuration {name} is {dims}D but patch_embed_size {list(tokens)} is not")
        if patch_size is None:
            patch = [DEFAULT_2D_PATCH[family]] * 2 if dims == 2 else fit_patch_size(config["patch_size"], tokens)
        else:
            patch = [int(s) for s in patch_size]
            if len(patch) != dims or any(s % p for s, p in zip(patch, tokens)):
                raise ValueError(f"patch size {patch} does not suit configuration {name} ({dims}D) with tokens of "
                                 f"{tokens}: each axis must be a multiple of the token size, e.g. "
                                 f"{fit_patch_size(patch, tokens) if len(patch) == dims else 'one value per axis'}")
        config["patch_size"] = patch
        config["batch_size"] = int(batch_size)
        config["architecture"] = vit_architecture(patch, backbone, tokens, decoder_features, input_channel_mode,
                                                  backbone_kwargs)
        if reuse_preprocessed:
            identifier = source_identifiers[name]
            data = preprocessed_dataset_folder(dataset) / identifier
            if not data.is_dir() or not any(data.iterdir()):
                raise FileNotFoundError(
                    f"{data}: no preprocessed data of {source_plans} configuration {name} to reuse; run "
                    f"'nnUNetv2_preprocess -d {dataset} -plans_name {source_plans} -c {name}' first, or leave out "
                    f"reuse_preprocessed (--reuse-preprocessed) and preprocess for the new plans")
            config["data_identifier"] = identifier

    return derive_plans(dataset, target_plans or vit_plans_name(backbone), edit, [configuration],
                        source_plans=source_plans, overwrite=overwrite)


def _source_data_identifiers(dataset: str | int, source_plans: str) -> dict[str, str]:
    """``data_identifier`` of each configuration of ``source_plans`` (``inherits_from`` resolved)."""
    import json

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    source_file = preprocessed_dataset_folder(dataset) / f"{source_plans}.json"
    if not source_file.is_file():  # derive_plans says what to run
        return {}
    try:
        plans = PlansManager(json.loads(source_file.read_text()))
    except json.JSONDecodeError as error:
        raise ValueError(f"{source_file}: not valid JSON ({error}); plan the dataset again with nnU-Net") from None
    return {name: plans.get_configuration(name).data_identifier for name in plans.available_configurations}


def check_vit_configuration(configuration_manager, trainer_name: str, families: Sequence[str] | None = None,
                            dims: int | None = None) -> None:
    """Raise ``ValueError`` saying which ``nnunet-ext plans-vit`` to run when a configuration does not fit a trainer."""
    arch = configuration_manager.configuration.get("architecture", {})
    kwargs = arch.get("arch_kwargs", {})
    wanted = f"a {' or '.join(families)} backbone" if families else "a transformer network"
    example = {"sam": "sam_vit_b", "vit": "vit_b", "beit": "beit_b"}[families[0]] if families else "sam_vit_b"
    hint = (f"; write fitting plans with 'nnunet-ext plans-vit -d DATASET -c "
            f"{'3d_fullres' if dims == 3 else '2d'} --backbone {example}' and train with '-p nnUNetPlans_{example}'")
    if arch.get("network_class_name") != VIT_NETWORK_CLASS:
        raise ValueError(f"{trainer_name} needs plans whose network is {VIT_NETWORK_CLASS}, these name "
                         f"{arch.get('network_class_name')}{hint}")
    family, _ = backbone_config(kwargs.get("backbone", ""), kwargs.get("backbone_kwargs"))
    if families and family not in families:
        raise ValueError(f"{trainer_name} needs {wanted}, the plans use {kwargs.get('backbone')!r}{hint}")
    if dims is not None and len(configuration_manager.patch_size) != dims:
        raise ValueError(f"{trainer_name} is a {dims}D trainer, the configuration is "
                         f"{len(configuration_manager.patch_size)}D{hint}")
