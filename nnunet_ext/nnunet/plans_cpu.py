"""Plans variants: copies of an nnU-Net plans file with a changed network or patch size, under a new plans name.

nnU-Net keeps one JSON plans file per plans name in the dataset's preprocessed folder; ``nnUNetv2_preprocess
-plans_name NAME`` and ``nnUNetv2_train ... -p NAME`` select it. Deriving a variant from the planner's output (rather
than writing a planner class, which nnU-Net only finds inside its own package) keeps everything nnU-Net inferred from
the dataset (spacing, normalisation, intensity properties) and changes only what we mean to change.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable, Sequence

from nnunet_ext.io.atomic import write_json_atomically

CPU_PLANS_NAME = "nnUNetPlans_cpu"
#: The CPU plans' defaults, stated once: a 4-stage U-Net with these features, this batch, these patches.
CPU_FEATURES_PER_STAGE = (16, 32, 64, 128)
CPU_BATCH_SIZE = 8
CPU_PATCH_SIZE_2D = (128, 128)
CPU_PATCH_SIZE_3D = (64, 64, 64)


def default_cpu_patch_size(configuration: str) -> tuple[int, ...]:
    """The CPU plans' patch size for an nnU-Net configuration (``2d`` or a 3D one)."""
    return CPU_PATCH_SIZE_2D if configuration.startswith("2d") else CPU_PATCH_SIZE_3D


def preprocessed_dataset_folder(dataset: str | int) -> Path:
    """The nnU-Net preprocessed folder of a dataset given by ID (``12``) or name (``Dataset012_X``)."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    return Path(nnUNet_preprocessed.require()) / maybe_convert_to_dataset_name(dataset)


def derive_plans(dataset: str | int, target_plans: str, edit: Callable[[str, dict], None],
                 configurations: Sequence[str], source_plans: str = "nnUNetPlans",
                 overwrite: bool = False) -> Path:
    """Write plans ``target_plans`` derived from ``source_plans``, keeping only ``configurations``.

    Parameters
    ----------
    dataset : str or int
        Dataset ID or name; its preprocessed folder must hold ``<source_plans>.json`` (run
        ``nnUNetv2_plan_and_preprocess`` or ``nnUNetv2_plan_experiment`` first).
    target_plans : str
        Name of the new plans (file ``<target_plans>.json``).
    edit : callable
        ``edit(configuration_name, configuration_dict)`` changes one configuration in place.
    configurations : sequence of str
        Configurations to keep and edit. Each gets its own ``data_identifier`` so its preprocessed data never
        mixes with the source plans'.
    source_plans : str
        Plans to start from.
    overwrite : bool
        Replace an existing ``<target_plans>.json``.

    Returns
    -------
    Path
        The written plans file.
    """
    folder = preprocessed_dataset_folder(dataset)
    source_file = folder / f"{source_plans}.json"
    target_file = folder / f"{target_plans}.json"
    if not source_file.is_file():
        raise FileNotFoundError(f"{source_file}: source plans not found; plan the dataset with nnU-Net first "
                                f"(nnUNetv2_plan_and_preprocess -d {dataset} --no_pp)")
    if target_file.exists() and not overwrite:
        raise FileExistsError(f"{target_file} exists; pass overwrite=True (--overwrite) to replace it")
    try:
        plans = json.loads(source_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{source_file}: not valid JSON ({error}); plan the dataset again with nnU-Net") from None
    if not isinstance(plans, dict) or not isinstance(plans.get("configurations"), dict):
        raise ValueError(f"{source_file}: not nnU-Net plans (no 'configurations' object)")
    missing = [c for c in configurations if c not in plans["configurations"]]
    if missing:
        raise ValueError(f"{source_file}: no configuration {missing}; it has {sorted(plans['configurations'])}")
    derived = copy.deepcopy(plans)
    derived["plans_name"] = target_plans
    derived["configurations"] = {}
    for name in configurations:
        configuration = _resolved_configuration(plans, name)
        configuration["data_identifier"] = f"{target_plans}_{name}"
        edit(name, configuration)
        derived["configurations"][name] = configuration
    return write_json_atomically(derived, target_file, indent=4)


def _resolved_configuration(plans: dict, name: str) -> dict:
    """A configuration with ``inherits_from`` folded in, so the derived plans stand alone."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return copy.deepcopy(PlansManager(plans).get_configuration(name).configuration)


def small_unet_edit(patch_size: Sequence[int], features_per_stage: Sequence[int] = CPU_FEATURES_PER_STAGE,
                    batch_size: int = CPU_BATCH_SIZE) -> Callable[[str, dict], None]:
    """Edit for :func:`derive_plans` that makes nnU-Net's PlainConvUNet small enough for CPU training.

    Stages are as many as ``features_per_stage`` has entries (each halves the patch after the first), so every
    patch dimension must be divisible by ``2 ** (len(features_per_stage) - 1)``.
    """
    n_stages = len(features_per_stage)
    factor = 2 ** (n_stages - 1)
    if any(int(s) % factor for s in patch_size):
        raise ValueError(f"patch size {tuple(patch_size)} must be divisible by {factor} for {n_stages} stages")

    def edit(name: str, configuration: dict) -> None:
        dim = len(configuration["patch_size"])
        if len(patch_size) != dim:
            raise ValueError(f"configuration {name} is {dim}D but patch size {tuple(patch_size)} is "
                             f"{len(patch_size)}D")
        arch = configuration["architecture"]["arch_kwargs"]
        configuration["patch_size"] = [int(s) for s in patch_size]
        configuration["batch_size"] = int(batch_size)
        arch["n_stages"] = n_stages
        arch["features_per_stage"] = [int(f) for f in features_per_stage]
        arch["kernel_sizes"] = [[3] * dim for _ in range(n_stages)]
        arch["strides"] = [[1] * dim] + [[2] * dim for _ in range(n_stages - 1)]
        arch["n_conv_per_stage"] = [2] * n_stages
        arch["n_conv_per_stage_decoder"] = [2] * (n_stages - 1)
    return edit


def plain_unet_plans(dataset_name: str, patch_size: Sequence[int],
                     features_per_stage: Sequence[int] = CPU_FEATURES_PER_STAGE, batch_size: int = CPU_BATCH_SIZE,
                     plans_name: str = "nnUNetPlans", data_identifier: str | None = None,
                     image_reader_writer: str = "SimpleITKIO",
                     intensity_properties: dict | None = None) -> tuple[dict, str]:
    """nnU-Net plans of one configuration with its PlainConvUNet, made without planning a dataset.

    For trainers and model folders built in memory (tests, benchmarks): the configuration nnU-Net's planner writes
    (z-score normalisation, its resampling functions, instance norm, leaky ReLU), sized by :func:`small_unet_edit`.

    Returns
    -------
    (dict, str)
        The plans and the configuration's name (``2d`` or ``3d_fullres``, from the patch's dimensions).
    """
    dim = len(patch_size)
    conv, norm = ("Conv2d", "InstanceNorm2d") if dim == 2 else ("Conv3d", "InstanceNorm3d")
    name = "2d" if dim == 2 else "3d_fullres"
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    configuration = {
        "data_identifier": data_identifier or f"{plans_name}_{name}", "preprocessor_name": "DefaultPreprocessor",
        "median_image_size_in_voxels": [int(s) for s in patch_size], "spacing": [1.0] * dim,
        "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resampling,
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {**resampling, "order": 1}, "batch_dice": True,
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "conv_op": f"torch.nn.modules.conv.{conv}", "conv_bias": True,
                "norm_op": f"torch.nn.modules.instancenorm.{norm}", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
                "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
    }
    configuration["patch_size"] = [int(s) for s in patch_size]
    small_unet_edit(patch_size, features_per_stage, batch_size)(name, configuration)  # patch, batch and stages
    plans = {
        "dataset_name": dataset_name, "plans_name": plans_name, "original_median_spacing_after_transp": [1.0] * dim,
        "original_median_shape_after_transp": [int(s) for s in patch_size], "image_reader_writer": image_reader_writer,
        "transpose_forward": list(range(dim)), "transpose_backward": list(range(dim)),
        "configurations": {name: configuration}, "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": intensity_properties or {
            "max": 1.0, "mean": 0.0, "median": 0.0, "min": -1.0, "percentile_00_5": -1.0, "percentile_99_5": 1.0,
            "std": 1.0}},
    }
    return plans, name


def write_cpu_plans(dataset: str | int, configuration: str = "2d", patch_size: Sequence[int] | None = None,
                    features_per_stage: Sequence[int] = CPU_FEATURES_PER_STAGE, batch_size: int = CPU_BATCH_SIZE,
                    source_plans: str = "nnUNetPlans", target_plans: str = CPU_PLANS_NAME,
                    overwrite: bool = False) -> Path:
    """Write the CPU-sized plans variant (default ``nnUNetPlans_cpu``) of one configuration.

    A 4-stage PlainConvUNet with 16 to 128 features on 128x128 (2D) or 64^3 (3D) patches: about 0.5 M parameters
    for 2D instead of nnU-Net's ~20-30 M.
    """
    if patch_size is None:
        patch_size = default_cpu_patch_size(configuration)
    return derive_plans(dataset, target_plans, small_unet_edit(patch_size, features_per_stage, batch_size),
                        [configuration], source_plans=source_plans, overwrite=overwrite)


#: Plans variant sized for real SEM on a CPU (``benchmarks/bench_real_sem.py``): 256x256 patches hold a few
#: large axons with their neighbours at 0.07-0.18 um/px (ads_sem's axons are 1-10 um wide: up to ~140 px), a 5-stage
#: U-Net (receptive field beyond 140 px) with 16-256 features, batch 4: twice the pixels of the demo's batch per step.
SEM_PLANS_NAME = "nnUNetPlans_cpu_sem"
SEM_FEATURES_PER_STAGE = (16, 32, 64, 128, 256)
SEM_BATCH_SIZE = 4
SEM_PATCH_SIZE_2D = (256, 256)


def write_sem_plans(dataset: str | int, configuration: str = "2d", source_plans: str = "nnUNetPlans",
                    overwrite: bool = False) -> Path:
    """Write the real-SEM CPU plans variant ``nnUNetPlans_cpu_sem`` (see :data:`SEM_PLANS_NAME`).

    Target spacing stays nnU-Net's (native pixels for PNG images, as AxonDeepSeg's generalist model); only the network,
    patch and batch change.
    """
    return write_cpu_plans(dataset, configuration, SEM_PATCH_SIZE_2D, SEM_FEATURES_PER_STAGE, SEM_BATCH_SIZE,
                           source_plans=source_plans, target_plans=SEM_PLANS_NAME, overwrite=overwrite)


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "plans-cpu", help="write the CPU-sized plans variant (nnUNetPlans_cpu) of a planned dataset",
        description="Derive a small-network plans file from nnU-Net's plans so training runs on a CPU in minutes. "
                    "Then: nnUNetv2_preprocess -d D -plans_name nnUNetPlans_cpu -c 2d; "
                    "nnUNetv2_train D 2d FOLD -p nnUNetPlans_cpu -tr nnUNetTrainerCPUDemo -device cpu.")
    parser.add_argument("-d", "--dataset", required=True, help="dataset ID or name (already planned by nnU-Net)")
    parser.add_argument("-c", "--configuration", default="2d", help="configuration to derive (default: 2d)")
    parser.add_argument("--patch-size", type=int, nargs="+", help="patch size (default 128 128, or 64 64 64 in 3D)")
    parser.add_argument("--features", type=int, nargs="+", default=list(CPU_FEATURES_PER_STAGE),
                        help="features per stage; also sets the number of stages (default: 16 32 64 128)")
    parser.add_argument("--batch-size", type=int, default=CPU_BATCH_SIZE)
    parser.add_argument("--source-plans", default="nnUNetPlans")
    parser.add_argument("--plans-name", default=CPU_PLANS_NAME, help=f"name of the new plans ({CPU_PLANS_NAME})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing plans file of that name")
    parser.set_defaults(func=_run_cli)


def _run_cli(args) -> int:
    path = write_cpu_plans(args.dataset, args.configuration, args.patch_size, args.features, args.batch_size,
                           args.source_plans, args.plans_name, args.overwrite)
    print(f"Wrote {path}")
    return 0
