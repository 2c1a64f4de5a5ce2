#!/usr/bin/env python
"""GPU readiness check: every nnunet-ext trainer through the stock nnU-Net commands on CUDA, and ``segment``.

One command on a machine with a CUDA GPU and nnunet-ext installed::

    python benchmarks/gpu_check.py                  # full check (estimated about 20 min on one H100: docs/gpu.md)
    python benchmarks/gpu_check.py --quick          # 3 runs, compile off, 60 iterations, 8k slide (est. 3-3.5 min)
    python benchmarks/gpu_check.py --compile off    # the full check without torch.compile (estimated about 7 min)
    python benchmarks/gpu_check.py --dry-run        # no GPU: the same steps on the CPU at tiny sizes (a few minutes)

It prepares itself on synthetic data, only through user-facing commands run as subprocesses (``nnunet-ext
phantoms``, ``nnunet-ext convert bids``, ``nnUNetv2_plan_and_preprocess``, ``nnunet-ext plans-cpu`` /
``plans-vit``, ``nnUNetv2_train ... -device cuda``, ``nnUNetv2_predict``, ``nnunet-ext segment``):

1. 2D: phantoms (TEM + SEM, 1024 x 1024) -> BIDS -> nnU-Net raw -> nnU-Net's plans and preprocessing -> ViT plans
   (``plans-vit --reuse-preprocessed``); 3D: synthetic tube volumes written in nnU-Net's raw format -> plans ->
   ``plans-vit`` for a 3D ViT with 4 x 16 x 16 tokens. Pretrained trainers get a randomly initialised checkpoint in
   their release's format unless their variable (``NNUNET_EXT_SAM_CHECKPOINT``, ``NNUNET_EXT_INFLATE_CHECKPOINT``)
   names a real file: speed and memory do not depend on the weights.
2. Trains each run with the stock ``nnUNetv2_train`` for one epoch of ``--iterations`` iterations (default 200) with
   nnU-Net's mixed precision (autocast float16 + GradScaler) and ``torch.compile`` as nnU-Net sets it
   (``nnUNet_compile`` false and true): ``nnUNetTrainer`` (the reference), ``nnUNetTrainerVCVRL`` on the same plans,
   ``nnUNetTrainerEMSAM`` at 1024^2 and 512^2, ``nnUNetTrainerViT`` (ViT-B/16, 224^2), ``nnUNetTrainerViT3DInflated``.
   The trainers are nnunet-ext's own with a one-epoch schedule and a timer: subclasses named ``<Trainer>GPUCheck``
   in a folder this script writes and adds to ``nnUNet_extTrainer``. They time every ``train_step`` between two
   ``torch.cuda.synchronize()`` (the step) and from one step's start to the next (the step plus any wait for data),
   keep each iteration's loss, and read ``torch.cuda.max_memory_allocated`` after the last training step. nnU-Net's
   final validation (a sliding-window prediction of every validation case) is skipped; one validation iteration per
   epoch runs, as in any nnU-Net epoch.
3. ``nnUNetv2_predict`` loads each run's ``checkpoint_final.pth`` and segments one test image (checkpoint loads: yes/no).
4. ``nnunet-ext segment`` on a 16k x 16k synthetic slide (tiled phantoms, Zarr) against ``nnUNetv2_predict`` on a
   4k x 4k image with the same model (the reference run's), no test-time mirroring in either.

It prints one table and writes it to ``OUT/gpu_check.md`` and everything measured to ``OUT/gpu_check.json``
(default ``OUT``: ``./gpu_check``; each command's output is in ``OUT/logs/``). Per training run: seconds per
iteration (median of the last 50 steps; with the wait for data as a second figure), images and megapixels
(megavoxels in 3D) per second, peak GPU memory, the ratio of the step time to the reference step (same compile
setting), whether every loss was finite, and whether ``nnUNetv2_predict`` loaded the checkpoint. Without CUDA it
stops with a message, unless ``--dry-run`` (or ``--device cpu``) runs the same pipeline on the CPU at tiny sizes,
which checks the script and the commands, not speed.

Prepared data is kept in ``OUT/work`` and reused by the next run with the same sizes (``--fresh`` rebuilds it).
Exit code: 0 when every step worked, 1 when a step failed (the table says which, the log why), 2 without CUDA.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

TIMING_FILE = "gpu_check_timing.json"
TRAINER_SUFFIX = "GPUCheck"
TRAINERS_MODULE_NAME = "nnunet_ext_gpu_check_trainers.py"
TIMED_STEPS = 50  # the median is taken over the last TIMED_STEPS steps
DATASET_2D = (951, "GPUCheckPhantoms")
DATASET_3D = (952, "GPUCheckTubes")
ITERATIONS_VARIABLE = "NNUNET_EXT_GPU_CHECK_ITERATIONS"
VAL_ITERATIONS_VARIABLE = "NNUNET_EXT_GPU_CHECK_VAL_ITERATIONS"
SAM_VARIABLE = "NNUNET_EXT_SAM_CHECKPOINT"
INFLATE_VARIABLE = "NNUNET_EXT_INFLATE_CHECKPOINT"

TINY_SAM = {"embed_dim": 32, "depth": 2, "num_heads": 2, "window_size": 2, "global_attn_indexes": [1]}
TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2}
# the real ViT-B sizes (what the plans-vit defaults build) for the random-weight release checkpoints
SAM_VIT_B = {"embed_dim": 768, "depth": 12, "num_heads": 12, "window_size": 14, "global_attn_indexes": [2, 5, 8, 11]}
VIT_B = {"embed_dim": 768, "depth": 12, "num_heads": 12}


# ------------------------------------------------------------------------------------------------------ the runs
@dataclass(frozen=True)
class Run:
    """One training run: trainer, plans and the options of ``plans-vit`` that make them (None: nnU-Net's plans)."""

    key: str
    trainer: str
    dims: str  # "2d" or "3d"
    plans: str
    vit_options: tuple | None  # full-size plans-vit options
    tiny_vit_options: tuple | None  # --tiny plans-vit options
    weights_variable: str | None = None
    what: str = ""

    @property
    def configuration(self) -> str:
        return "2d" if self.dims == "2d" else "3d_fullres"

    @property
    def dataset_id(self) -> int:
        return DATASET_2D[0] if self.dims == "2d" else DATASET_3D[0]


def _vit(backbone, patch, tokens=None, kwargs=None):
    options = ["--backbone", backbone, "--patch-size", *map(str, patch)]
    if tokens:
        options += ["--patch-embed-size", *map(str, tokens)]
    if kwargs:
        options += ["--backbone-kwargs", json.dumps(kwargs), "--decoder-features", "8"]
    return tuple(options)


RUNS = {run.key: run for run in [
    Run("reference", "nnUNetTrainer", "2d", "nnUNetPlans", None, None,
        what="nnU-Net's own trainer and 2D plans (the reference step)"),
    Run("vcvrl", "nnUNetTrainerVCVRL", "2d", "nnUNetPlans", None, None,
        what="VCV-RL similarity loss on the reference's plans"),
    Run("emsam1024", "nnUNetTrainerEMSAM", "2d", "nnUNetPlans_gpucheck_sam1024",
        _vit("sam_vit_b", (1024, 1024)), _vit("sam_vit_b", (64, 64), kwargs=TINY_SAM), SAM_VARIABLE,
        "EM-SAM (SAM ViT-B + UNETR) at 1024^2, batch 2"),
    Run("emsam512", "nnUNetTrainerEMSAM", "2d", "nnUNetPlans_gpucheck_sam512",
        _vit("sam_vit_b", (512, 512)), _vit("sam_vit_b", (32, 32), kwargs=TINY_SAM), SAM_VARIABLE,
        "EM-SAM at 512^2, batch 2"),
    Run("vit", "nnUNetTrainerViT", "2d", "nnUNetPlans_gpucheck_vit224",
        _vit("vit_b", (224, 224)), _vit("vit_b", (32, 32), kwargs=TINY_VIT), None,
        "ViT-B/16 + UNETR from scratch at 224^2, batch 2"),
    Run("vit3d", "nnUNetTrainerViT3DInflated", "3d", "nnUNetPlans_gpucheck_vit3d",
        _vit("vit_b", (64, 128, 128), (4, 16, 16)), _vit("vit_b", (16, 32, 32), (4, 16, 16), TINY_VIT),
        INFLATE_VARIABLE, "2D ViT-B inflated to 3D, 4x16x16 tokens on 64x128x128, batch 2"),
    Run("reference3d", "nnUNetTrainer", "3d", "nnUNetPlans", None, None,
        what="nnU-Net's own trainer and 3d_fullres plans (3D reference; not run by default)"),
]}
DEFAULT_RUNS = ("reference", "vcvrl", "emsam1024", "emsam512", "vit", "vit3d")
QUICK_RUNS = ("reference", "vcvrl", "emsam1024")
TINY_CPU_PLANS = "nnUNetPlans_gpucheck_cpu"  # --tiny: small U-Net plans for the reference runs


@dataclass(frozen=True)
class Sizes:
    """Data and run sizes of one mode."""

    phantom_side: int
    phantom_subjects: int
    phantom_samples: int
    tube_shape: tuple
    tube_volumes: int
    iterations: int
    slide_side: int
    reference_side: int
    block_size: int
    tiny: bool

    def data_key(self) -> dict:
        return {"phantom_side": self.phantom_side, "phantom_subjects": self.phantom_subjects,
                "phantom_samples": self.phantom_samples, "tube_shape": list(self.tube_shape),
                "tube_volumes": self.tube_volumes, "tiny": self.tiny}


FULL = Sizes(1024, 3, 2, (64, 160, 160), 9, 200, 16384, 4096, 4096, False)
QUICK = Sizes(1024, 3, 2, (64, 160, 160), 9, 60, 8192, 4096, 4096, False)  # the same data as FULL (shared)
TINY = Sizes(128, 4, 1, (16, 48, 48), 7, 6, 512, 256, 256, True)  # 6 training cases: nnU-Net's 5 folds need 5

# Rough H100 figures for the duration estimate printed at the start (assumptions, not measurements): seconds per
# training step with nnU-Net's mixed precision, start-up of one nnUNetv2_train process (interpreter, CUDA, data
# augmentation workers, checkpoints) and torch.compile's first compilation.
# (nnU-Net plans the phantoms' 2D configuration as a 9-stage U-Net, 32..512 features, 1024x1024 patches, batch 2)
ESTIMATED_STEP_S = {"reference": 0.20, "vcvrl": 0.21, "emsam1024": 0.30, "emsam512": 0.09, "vit": 0.03,
                    "vit3d": 0.06, "reference3d": 0.25}
ESTIMATED_START_S = 20.0
ESTIMATED_COMPILE_S = 75.0
ESTIMATED_PREPARE_S = 40.0  # 2D and 3D side by side
ESTIMATED_SEGMENT_MPS = 15.0  # megapixels per second of nnU-Net's default 2D U-Net on a slide, no mirroring


def estimate_seconds(runs, compile_settings, sizes: Sizes, predict: bool, segment: bool) -> float:
    seconds = ESTIMATED_PREPARE_S
    for key in runs:
        for setting in compile_settings:
            seconds += ESTIMATED_START_S + sizes.iterations * ESTIMATED_STEP_S[key]
            seconds += ESTIMATED_COMPILE_S if setting == "on" else 0
    if predict:
        seconds += 20 * math.ceil(len(runs) / 3)  # three at a time
    if segment:
        seconds += 2 * 20 + (sizes.slide_side ** 2 + sizes.reference_side ** 2) / 1e6 / ESTIMATED_SEGMENT_MPS
    return seconds


# --------------------------------------------------------------------------------------------- the timed trainers
TRAINERS_MODULE = '''"""Written by benchmarks/gpu_check.py: the trainers it times, nnunet-ext's own with a one-epoch schedule.

``<Trainer>GPUCheck`` is ``<Trainer>`` with ``num_epochs = 1``, ``$''' + ITERATIONS_VARIABLE + '''`` training iterations
and ``$''' + VAL_ITERATIONS_VARIABLE + '''`` validation iterations, nnU-Net's final validation skipped, and a timer
around ``train_step``; the network, loss, optimiser, mixed precision and torch.compile are the trainer's own. At the
end of training it writes ''' + TIMING_FILE + ''' into the fold's output folder.
"""
import json
import os
import platform
import time

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

import nnunet_ext.trainers as _nnunet_ext_trainers

BASES = {bases!r}


def _autocast_dtype():
    """The dtype of nnU-Net's ``torch.autocast("cuda", enabled=True)`` (it names none: torch's default)."""
    try:
        dtype = torch.get_autocast_dtype("cuda")
    except AttributeError:  # torch < 2.4
        dtype = torch.get_autocast_gpu_dtype()
    return str(dtype).replace("torch.", "")


class _GPUCheck:
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = int(os.environ.get("''' + ITERATIONS_VARIABLE + '''", "200"))
        self.num_val_iterations_per_epoch = int(os.environ.get("''' + VAL_ITERATIONS_VARIABLE + '''", "1"))
        self._gpu_check = {{"step_seconds": [], "iteration_seconds": [], "losses": [], "similarity_losses": []}}
        self._gpu_check_last_start = None
        threads = os.environ.get("OMP_NUM_THREADS", "")
        if self.device.type == "cpu" and threads.isdigit() and int(threads) > 0:  # --dry-run on a shared CPU
            torch.set_num_threads(int(threads))

    def _gpu_check_sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_start(self):
        started = time.perf_counter()
        super().on_train_start()
        self._gpu_check["on_train_start_seconds"] = time.perf_counter() - started
        self._gpu_check_sync()
        self._gpu_check_loop_start = time.perf_counter()

    def train_step(self, batch):
        start = time.perf_counter()  # the previous step ended synchronised
        record = self._gpu_check
        if self._gpu_check_last_start is None:
            record["first_batch_wait_seconds"] = start - self._gpu_check_loop_start
        else:
            record["iteration_seconds"].append(start - self._gpu_check_last_start)
        self._gpu_check_last_start = start
        result = super().train_step(batch)
        self._gpu_check_sync()
        record["step_seconds"].append(time.perf_counter() - start)
        record["losses"].append(float(np.mean(result["loss"])))
        if "similarity_loss" in result:
            record["similarity_losses"].append(float(np.mean(result["similarity_loss"])))
        return result

    def on_train_epoch_end(self, train_outputs):
        if self.device.type == "cuda":  # the training peak, before validation and checkpoints
            self._gpu_check["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(self.device)
            self._gpu_check["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(self.device)
        super().on_train_epoch_end(train_outputs)

    def on_train_end(self):
        super().on_train_end()
        if self.local_rank != 0:
            return
        network = self.network.module if self.is_ddp else self.network
        network = getattr(network, "_orig_mod", network)
        heads = getattr(self, "vcvrl_loss", None)
        record = dict(self._gpu_check)
        record.update(
            trainer=self.__class__.__name__, base_trainer=BASES[self.__class__.__name__],
            device=str(self.device), device_name=torch.cuda.get_device_name(self.device)
            if self.device.type == "cuda" else platform.processor() or "cpu",
            compile_active=bool(self._do_i_compile()),
            autocast=_autocast_dtype() if self.device.type == "cuda" else None,
            grad_scaler=self.grad_scaler is not None, batch_size=int(self.batch_size),
            patch_size=[int(p) for p in self.configuration_manager.patch_size],
            parameters=int(sum(p.numel() for p in network.parameters())),
            head_parameters=int(sum(p.numel() for p in heads.parameters())) if heads is not None else 0,
            torch=torch.__version__, iterations=self.num_iterations_per_epoch,
            overall_peak_allocated_bytes=torch.cuda.max_memory_allocated(self.device)
            if self.device.type == "cuda" else None)
        target = os.path.join(self.output_folder, "''' + TIMING_FILE + '''")
        with open(target + ".tmp", "w") as handle:
            json.dump(record, handle, indent=1)
        os.replace(target + ".tmp", target)

    def perform_actual_validation(self, save_probabilities=False):
        self.print_to_log_file("gpu_check: nnU-Net's final validation skipped (nnUNetv2_predict checks inference)")


for _name, _base in BASES.items():
    _parent = nnUNetTrainer if _base == "nnUNetTrainer" else getattr(_nnunet_ext_trainers, _base)
    globals()[_name] = type(_name, (_GPUCheck, _parent), {{"__module__": __name__}})
'''


def write_trainers_module(folder: Path, runs) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    bases = {RUNS[key].trainer + TRAINER_SUFFIX: RUNS[key].trainer for key in runs}
    (folder / TRAINERS_MODULE_NAME).write_text(TRAINERS_MODULE.format(bases=bases))
    return folder


# ------------------------------------------------------------------------------------------------- running commands
COMMAND_SECONDS: list[dict] = []  # every command's wall time, for the report (calibrates the estimates)


class StepFailed(RuntimeError):
    """A command failed; the message names its log."""


def console_script(name: str) -> str:
    """An installed console script, preferably the one beside this interpreter (the package's own lookup)."""
    from nnunet_ext.nnunet.commands import console_script as find_console_script

    try:
        return find_console_script(name)
    except FileNotFoundError:
        raise StepFailed(f"command {name} not found: is nnunet-ext installed in this Python environment "
                         f"({sys.executable})?") from None


def log_tail(log: Path, lines: int = 25) -> str:
    try:
        return "".join(log.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return ""


def run_command(args, env: dict, log: Path, timeout: float) -> float:
    """Run one command (console script name first) with its output appended to ``log``; returns wall seconds."""
    command = [console_script(args[0]) if os.path.sep not in str(args[0]) else str(args[0]), *map(str, args[1:])]
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "a") as handle:
        handle.write(f"$ {shlex.join(command)}\n")
        handle.flush()
        process = subprocess.Popen(command, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise StepFailed(f"{args[0]} did not finish within {timeout:.0f} s (killed); log: {log}") from None
    seconds = time.perf_counter() - started
    with open(log, "a") as handle:
        handle.write(f"# exit code {code} after {seconds:.1f} s\n")
    COMMAND_SECONDS.append({"command": " ".join(map(str, args[:3])), "log": log.name, "seconds": round(seconds, 2),
                            "exit_code": code})
    if code != 0:
        raise StepFailed(f"{args[0]} failed with exit code {code}; log: {log}\n{log_tail(log)}")
    return seconds


def measured_command(args, memory_file: Path) -> list:
    """``args`` run through this script's --measure-gpu-memory wrapper (the console script's own entry point in a
    process that records torch.cuda's peak allocation at exit)."""
    return [sys.executable, str(Path(__file__).resolve()), "--measure-gpu-memory", str(memory_file), "--",
            *map(str, args)]


def run_measured_entry_point(memory_file: str, argv: list) -> int:
    """Run console script ``argv[0]`` in this process; write its peak GPU memory to ``memory_file`` at the end."""
    from importlib.metadata import entry_points

    name, arguments = argv[0], argv[1:]
    found = [ep for ep in entry_points(group="console_scripts") if ep.name == name]
    if not found:
        print(f"gpu_check: no console script {name!r} in this environment", file=sys.stderr)
        return 127
    entry = found[0].load()
    sys.argv = [name, *arguments]
    code = 0
    try:
        result = entry()
        code = result if isinstance(result, int) else 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        import torch

        memory = {"max_memory_allocated": None, "max_memory_reserved": None}
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # this process's GPU (cuda:0 for segment)
            memory = {"max_memory_allocated": torch.cuda.max_memory_allocated(),
                      "max_memory_reserved": torch.cuda.max_memory_reserved()}
        Path(memory_file).write_text(json.dumps(memory))
    return code


# -------------------------------------------------------------------------------------------------- the environment
def nnunet_env(work: Path, device: str) -> dict:
    """nnU-Net's variables from ``nnunet-ext env --base`` (its folders under ``work``), for every command."""
    (work / "nnunet").mkdir(parents=True, exist_ok=True)
    done = subprocess.run([console_script("nnunet-ext"), "env", "--base", str(work / "nnunet")],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise StepFailed(f"nnunet-ext env --base {work / 'nnunet'} failed:\n{done.stdout}{done.stderr}")
    output = done.stdout
    env = dict(os.environ)
    exported = set()
    for line in output.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, value = words[1].split("=", 1)
            env[name] = value
            exported.add(name)
    if not {"nnUNet_extTrainer", "nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"} <= exported:
        raise StepFailed(f"'nnunet-ext env --base' did not export nnU-Net's four variables:\n{output}")
    env.setdefault("nnUNet_def_n_proc", "1" if device == "cpu" else "8")
    if device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")
    if env.get("nnUNet_n_proc_DA") == "0":  # nnU-Net's planner calls torch.set_num_threads with it: 0 fails there
        env.pop("nnUNet_n_proc_DA")
    return env


def device_report(device: str) -> dict:
    import torch

    report = {"python": platform.python_version(), "torch": torch.__version__,
              "torch_cuda": torch.version.cuda, "platform": platform.platform(), "device": device}
    from importlib.metadata import PackageNotFoundError, version

    for package in ("nnunetv2", "nnunet-ext", "timm", "monai"):
        try:
            report[package] = version(package)
        except PackageNotFoundError:
            report[package] = None
    if device == "cuda":
        report["gpu"] = torch.cuda.get_device_name(0)
        report["gpu_count"] = torch.cuda.device_count()
        report["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
        try:
            report["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                              capture_output=True, text=True, timeout=30).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            report["driver"] = None
    else:
        report["gpu"] = None
        report["cpu_count"] = os.cpu_count()
    return report


# ------------------------------------------------------------------------------------------------ preparing data
def write_tube_dataset(raw: Path, shape, volumes: int, seed: int = 0) -> Path:
    """A 3D dataset in nnU-Net's raw format: bright tubes (neurites) in noise, one volume held out as imagesTs."""
    import numpy as np
    import SimpleITK as sitk

    folder = raw / f"Dataset{DATASET_3D[0]:03d}_{DATASET_3D[1]}"
    if folder.exists():
        shutil.rmtree(folder)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    axes = [np.arange(s, dtype=np.float32) for s in shape]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
    for index in range(volumes):
        label = np.zeros(shape, np.uint8)
        for _ in range(max(3, int(np.prod(shape) ** (1 / 3) / 8))):
            point = rng.uniform(0.2, 0.8, 3) * np.array(shape)
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            offset = grid - point
            along = offset @ direction
            distance = np.linalg.norm(offset - along[..., None] * direction, axis=-1)
            label[distance < rng.uniform(1.5, 3.0)] = 1
        image = (100 * label + rng.normal(20, 15, shape)).astype(np.float32)
        split = "Ts" if index == volumes - 1 else "Tr"
        case = f"tubes_{index:03d}"
        for array, name in ((image, f"images{split}/{case}_0000.nii.gz"), (label, f"labels{split}/{case}.nii.gz")):
            item = sitk.GetImageFromArray(array)
            item.SetSpacing((1.0, 1.0, 1.0))
            sitk.WriteImage(item, str(folder / name))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "fluorescence"}, "labels": {"background": 0, "neurite": 1},
        "numTraining": volumes - 1, "file_ending": ".nii.gz", "name": DATASET_3D[1]}, indent=2))
    return folder


def write_release_checkpoints(folder: Path, tiny: bool) -> dict:
    """Randomly initialised checkpoints in the releases' formats: SAM (``image_encoder.*``, as
    ``sam_vit_b_01ec64.pth``) and a timm ViT-B/16 (for inflation). Real weights change neither speed nor memory."""
    import torch
    from timm.models.vision_transformer import VisionTransformer
    from timm.models.vision_transformer_sam import VisionTransformerSAM

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    sam_config, vit_config = (TINY_SAM, TINY_VIT) if tiny else (SAM_VIT_B, VIT_B)
    sam = VisionTransformerSAM(img_size=64 if tiny else 1024, patch_size=16, use_rel_pos=True,
                               neck_chans=16 if tiny else 256, num_classes=0, **sam_config)
    state = {"image_encoder." + k.replace("mlp.fc", "mlp.lin"): v for k, v in sam.state_dict().items()}
    sam_path = folder / ("sam_tiny_random.pth" if tiny else "sam_vit_b_random_init.pth")
    torch.save(state, sam_path)
    vit = VisionTransformer(img_size=64 if tiny else 224, patch_size=16, num_classes=0, global_pool="",
                            **vit_config)
    vit_path = folder / ("vit_tiny_random.pth" if tiny else "vit_b16_random_init.pth")
    torch.save(vit.state_dict(), vit_path)
    return {SAM_VARIABLE: str(sam_path), INFLATE_VARIABLE: str(vit_path)}


def prepare(work: Path, env: dict, runs, sizes: Sizes, logs: Path, fresh: bool, timeout: float) -> dict:
    """Datasets, plans and preprocessing for the selected runs (kept for the next run with the same sizes)."""
    marker = work / "prepared.json"
    need_3d = any(RUNS[key].dims == "3d" for key in runs)
    # the plans each dataset needs: what the runs train with, and what the ViT plans are derived from
    wanted = {"sizes": sizes.data_key(), "format": 1,
              "plans_2d": sorted({run_plans(RUNS[key], sizes) for key in runs if RUNS[key].dims == "2d"}),
              "plans_3d": sorted({run_plans(RUNS[key], sizes) for key in runs if RUNS[key].dims == "3d"})}
    if not fresh and marker.is_file() and _covers(json.loads(marker.read_text()), wanted):
        print(f"  reusing the prepared data in {work} (--fresh rebuilds it)")
        return json.loads(marker.read_text())["weights"]
    marker.unlink(missing_ok=True)
    log = logs / "prepare.log"
    np_processes = "1" if sizes.tiny else "8"
    raw = Path(env["nnUNet_raw"])
    started = time.perf_counter()

    def prepare_2d():
        bids = work / "bids"
        run_command(["nnunet-ext", "phantoms", bids, "--contrasts", "TEM", "SEM", "--subjects",
                     sizes.phantom_subjects, "--samples-per-subject", sizes.phantom_samples, "--size",
                     sizes.phantom_side, sizes.phantom_side, "--seed", 0, "--overwrite"], env, log, timeout)
        run_command(["nnunet-ext", "convert", "bids", bids, "-d", DATASET_2D[0], "-n", DATASET_2D[1],
                     "--test-subjects", f"sub-{sizes.phantom_subjects:02d}", "--overwrite"], env, log, timeout)
        run_command(["nnUNetv2_plan_and_preprocess", "-d", DATASET_2D[0], "-c", "2d", "-np", np_processes,
                     "--verify_dataset_integrity"], env, log, timeout)
        if sizes.tiny:
            run_command(["nnunet-ext", "plans-cpu", "-d", DATASET_2D[0], "-c", "2d", "--patch-size", 64, 64,
                         "--features", 8, 16, 32, "--batch-size", 4, "--plans-name", TINY_CPU_PLANS, "--overwrite"],
                        env, log, timeout)
            run_command(["nnUNetv2_preprocess", "-d", DATASET_2D[0], "-plans_name", TINY_CPU_PLANS, "-c", "2d",
                         "-np", np_processes], env, log, timeout)
        for key in runs:
            run = RUNS[key]
            if run.dims == "2d" and run.vit_options:
                plans_vit(run, env, log, timeout, sizes)

    def prepare_3d():
        log_3d = logs / "prepare_3d.log"
        write_tube_dataset(raw, sizes.tube_shape, sizes.tube_volumes)
        run_command(["nnUNetv2_plan_and_preprocess", "-d", DATASET_3D[0], "-c", "3d_fullres", "-np", np_processes,
                     "--verify_dataset_integrity"], env, log_3d, timeout)
        if sizes.tiny and "reference3d" in runs:
            run_command(["nnunet-ext", "plans-cpu", "-d", DATASET_3D[0], "-c", "3d_fullres", "--patch-size", 16, 32,
                         32, "--features", 4, 8, 16, "--batch-size", 2, "--plans-name", TINY_CPU_PLANS,
                         "--overwrite"], env, log_3d, timeout)
            run_command(["nnUNetv2_preprocess", "-d", DATASET_3D[0], "-plans_name", TINY_CPU_PLANS, "-c",
                         "3d_fullres", "-np", np_processes], env, log_3d, timeout)
        for key in runs:
            run = RUNS[key]
            if run.dims == "3d" and run.vit_options:
                plans_vit(run, env, log_3d, timeout, sizes)

    # the 2D and 3D preparations are independent: side by side on a GPU machine's cores, one after the other on a
    # small CPU
    with ThreadPoolExecutor(max_workers=1 if sizes.tiny else 2) as pool:
        jobs = [pool.submit(prepare_2d)] + ([pool.submit(prepare_3d)] if need_3d else [])
        weights = write_release_checkpoints(work / "weights", sizes.tiny)
        for job in jobs:
            job.result()
    marker.write_text(json.dumps({**wanted, "weights": weights, "seconds": time.perf_counter() - started}))
    return weights


def _covers(have: dict, wanted: dict) -> bool:
    """Whether prepared data (``have``, from prepared.json) holds everything ``wanted`` needs."""
    return (have.get("sizes") == wanted["sizes"] and have.get("format") == wanted["format"]
            and set(wanted["plans_2d"]) <= set(have.get("plans_2d", []))
            and set(wanted["plans_3d"]) <= set(have.get("plans_3d", [])))


def plans_vit(run: Run, env: dict, log: Path, timeout: float, sizes: Sizes) -> None:
    options = run.tiny_vit_options if sizes.tiny else run.vit_options
    run_command(["nnunet-ext", "plans-vit", "-d", run.dataset_id, "-c", run.configuration, *options,
                 "--source-plans", "nnUNetPlans", "--reuse-preprocessed", "--plans-name", run.plans, "--overwrite"],
                env, log, timeout)


def run_plans(run: Run, sizes: Sizes) -> str:
    """The plans a run trains with: in --tiny mode the reference runs use the small U-Net plans."""
    return TINY_CPU_PLANS if sizes.tiny and run.vit_options is None else run.plans


# ------------------------------------------------------------------------------------------------------ training
@dataclass
class TrainingResult:
    key: str
    trainer: str
    compile: str  # "on" / "off": nnUNet_compile as set
    configuration: str
    plans: str
    ok: bool = False
    error: str | None = None
    log: str = ""
    wall_seconds: float | None = None
    model_folder: str | None = None
    timing: dict = field(default_factory=dict)
    predict_ok: bool | None = None
    predict_seconds: float | None = None
    predict_error: str | None = None

    def median(self, name: str) -> float | None:
        values = self.timing.get(name) or []
        return statistics.median(values[-TIMED_STEPS:]) if values else None


def train(run: Run, setting: str, env: dict, work: Path, logs: Path, sizes: Sizes, weights: dict, device: str,
          iterations: int, timeout: float) -> TrainingResult:
    plans = run_plans(run, sizes)
    trainer = run.trainer + TRAINER_SUFFIX
    results_root = work / f"results_compile_{setting}"
    log = logs / f"train_{run.key}_compile_{setting}.log"
    log.unlink(missing_ok=True)
    result = TrainingResult(run.key, run.trainer, setting, run.configuration, plans, log=str(log))
    dataset = DATASET_2D if run.dims == "2d" else DATASET_3D
    model = results_root / f"Dataset{dataset[0]:03d}_{dataset[1]}" / f"{trainer}__{plans}__{run.configuration}"
    timing_file = model / "fold_0" / TIMING_FILE
    timing_file.unlink(missing_ok=True)
    run_env = {**env, "nnUNet_results": str(results_root), "nnUNet_compile": "t" if setting == "on" else "f",
               ITERATIONS_VARIABLE: str(iterations), VAL_ITERATIONS_VARIABLE: "1"}
    if device == "cpu":  # augmentation in the training process: no worker processes to start on a small CPU
        run_env["nnUNet_n_proc_DA"] = "0"
    if run.weights_variable:
        run_env[run.weights_variable] = weights[run.weights_variable]
    try:
        result.wall_seconds = run_command(["nnUNetv2_train", run.dataset_id, run.configuration, 0, "-p", plans,
                                           "-tr", trainer, "-device", device], run_env, log, timeout)
        if not timing_file.is_file():
            raise StepFailed(f"training finished without {timing_file}; log: {log}")
        result.timing = json.loads(timing_file.read_text())
        result.model_folder = str(model)
        losses = result.timing.get("losses", []) + result.timing.get("similarity_losses", [])
        result.ok = bool(losses) and all(math.isfinite(v) for v in losses)
        if not result.ok:
            result.error = "non-finite loss"
    except StepFailed as error:
        result.error = str(error)
    return result


def predict_check(result: TrainingResult, run: Run, env: dict, work: Path, logs: Path, device: str,
                  timeout: float) -> None:
    """``nnUNetv2_predict`` loads the run's checkpoint_final.pth and segments one test image."""
    dataset = DATASET_2D if run.dims == "2d" else DATASET_3D
    raw_tests = Path(env["nnUNet_raw"]) / f"Dataset{dataset[0]:03d}_{dataset[1]}" / "imagesTs"
    source = sorted(raw_tests.glob("*_0000.*"))
    log = logs / f"predict_{run.key}_compile_{result.compile}.log"
    log.unlink(missing_ok=True)
    started = time.perf_counter()
    try:
        if not source:
            raise StepFailed(f"no test image in {raw_tests}")
        inputs = work / "predict_inputs" / f"{run.key}_{result.compile}"
        outputs = work / "predictions" / f"{run.key}_{result.compile}"
        for folder in (inputs, outputs):
            shutil.rmtree(folder, ignore_errors=True)
        inputs.mkdir(parents=True)
        shutil.copy(source[0], inputs / source[0].name)
        run_command(["nnUNetv2_predict", "-i", inputs, "-o", outputs, "-d", run.dataset_id, "-c", run.configuration,
                     "-f", 0, "-tr", run.trainer + TRAINER_SUFFIX, "-p", result.plans, "-chk",
                     "checkpoint_final.pth", "-device", device, "--disable_tta", "-npp", 0, "-nps", 0],
                    {**env, "nnUNet_results": str(work / f"results_compile_{result.compile}")}, log, timeout)
        ending = "".join(source[0].suffixes)
        written = outputs / source[0].name.replace("_0000" + ending, ending)
        if not written.is_file():
            raise StepFailed(f"nnUNetv2_predict wrote no {written.name}; log: {log}")
        result.predict_ok = True
    except StepFailed as error:
        result.predict_ok = False
        result.predict_error = str(error)
    result.predict_seconds = time.perf_counter() - started


# ------------------------------------------------------------------------------------------------------- segment
@dataclass
class SegmentResult:
    name: str
    command: str
    megapixels: float
    ok: bool = False
    error: str | None = None
    wall_seconds: float | None = None
    reported_seconds: float | None = None  # as the command printed it (segment: after start-up)
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    log: str = ""

    @property
    def megapixels_per_second(self) -> float | None:
        return self.megapixels / self.wall_seconds if self.ok and self.wall_seconds else None


def write_slide(work: Path, side: int, tile: int, reference_side: int) -> tuple[Path, Path]:
    """A ``side``^2 uint8 Zarr slide tiled with the phantoms (random flips and turns) and a ``reference_side``^2 PNG
    cut from it (nnU-Net's input naming), kept for later runs."""
    import numpy as np
    import zarr
    from PIL import Image

    slide = work / "slides" / f"slide_{side}.zarr"
    reference = work / "slides" / f"reference_{reference_side}" / "slide_0000.png"
    if slide.is_dir() and (slide / ".complete").is_file() and reference.is_file():
        return slide, reference.parent
    shutil.rmtree(slide, ignore_errors=True)
    phantoms = [np.asarray(Image.open(p).convert("L")) for p in sorted((work / "bids").glob("sub-*/micr/*.png"))]
    phantoms = [p[:tile, :tile] for p in phantoms if min(p.shape) >= tile]
    if not phantoms:
        raise StepFailed(f"no phantom of {tile} px in {work / 'bids'} to tile a slide with")
    rng = np.random.default_rng(0)
    array = zarr.open_array(str(slide), mode="w", shape=(side, side), chunks=(tile, tile), dtype="uint8")
    for y in range(0, side, tile):
        row = np.zeros((min(tile, side - y), side), np.uint8)
        for x in range(0, side, tile):
            piece = np.rot90(phantoms[rng.integers(len(phantoms))], k=int(rng.integers(4)))
            if rng.integers(2):
                piece = piece[:, ::-1]
            row[:, x:x + tile] = piece[:row.shape[0], :min(tile, side - x)]
        array[y:y + row.shape[0], :] = row
    (slide / ".complete").write_text("")
    reference.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array[:reference_side, :reference_side])).save(reference)
    return slide, reference.parent


def segment_benchmark(model: TrainingResult, env: dict, work: Path, logs: Path, device: str, sizes: Sizes,
                      timeout: float) -> list[SegmentResult]:
    try:
        slide, reference_folder = write_slide(work, sizes.slide_side, sizes.phantom_side, sizes.reference_side)
    except StepFailed as error:
        return [SegmentResult("slide", "", 0, error=str(error))]
    run_env = {**env, "nnUNet_results": str(work / f"results_compile_{model.compile}")}
    if device == "cpu":
        run_env.setdefault("OMP_NUM_THREADS", "1")
    outputs = work / "segment_outputs"
    shutil.rmtree(outputs, ignore_errors=True)
    results = []
    memory_files = work / "memory"
    memory_files.mkdir(exist_ok=True)
    jobs = [
        ("segment", f"nnunet-ext segment on a {sizes.slide_side}^2 slide (Zarr, block {sizes.block_size}, "
                    f"2 Dask workers{' sharing the GPU' if device == 'cuda' else ''})", sizes.slide_side ** 2 / 1e6,
         ["nnunet-ext", "segment", "-m", model.model_folder, "-i", slide, "-o", outputs / "slide", "-f", "0",
          "-device", device, "--disable-tta", "--block-size", sizes.block_size, "--overwrite"]),
        ("nnUNetv2_predict", f"nnUNetv2_predict on a {sizes.reference_side}^2 PNG (one piece)",
         sizes.reference_side ** 2 / 1e6,
         ["nnUNetv2_predict", "-i", reference_folder, "-o", outputs / "reference", "-d", DATASET_2D[0], "-c", "2d",
          "-f", 0, "-tr", model.trainer + TRAINER_SUFFIX, "-p", model.plans, "-chk", "checkpoint_final.pth",
          "-device", device, "--disable_tta", "-npp", 0, "-nps", 0]),
    ]
    for name, what, megapixels, args in jobs:
        log = logs / f"segment_{name}.log"
        log.unlink(missing_ok=True)
        memory_file = memory_files / f"{name}.json"
        memory_file.unlink(missing_ok=True)
        result = SegmentResult(name, what, megapixels, log=str(log))
        try:
            result.wall_seconds = run_command(measured_command(args, memory_file), run_env, log, timeout)
            result.ok = True
            if memory_file.is_file():
                memory = json.loads(memory_file.read_text())
                result.peak_allocated_bytes = memory.get("max_memory_allocated")
                result.peak_reserved_bytes = memory.get("max_memory_reserved")
            reported = re.search(r"megapixels in ([0-9.]+) s", log.read_text(errors="replace"))
            if reported:
                result.reported_seconds = float(reported.group(1))
        except StepFailed as error:
            result.error = str(error)
        results.append(result)
    return results


# ---------------------------------------------------------------------------------------------------- the table
def _gib(value) -> str:
    return f"{value / 2 ** 30:.2f}" if value else "n/a"


def _number(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"


def training_rows(results: list[TrainingResult]) -> list[dict]:
    references = {(r.key, r.compile): r.median("step_seconds") for r in results
                  if r.key in ("reference", "reference3d") and r.ok}
    rows = []
    for result in results:
        timing = result.timing
        step = result.median("step_seconds")
        iteration = result.median("iteration_seconds")
        batch = timing.get("batch_size")
        patch = timing.get("patch_size") or []
        pixels = math.prod(patch) if patch else None
        # 3D runs against the 3D reference when it ran, otherwise (and 2D runs always) against the 2D reference
        reference_key = "reference3d" if result.configuration != "2d" and any(
            k == "reference3d" for k, _ in references) else "reference"
        reference = references.get((reference_key, result.compile)) or next(
            (v for (k, _), v in references.items() if k == reference_key), None)
        compile_text = result.compile
        if timing and timing.get("compile_active") is False and result.compile == "on":
            compile_text = "on (inactive: nnU-Net compiles on CUDA only)"
        rows.append({
            "run": result.key, "trainer": result.trainer, "configuration": result.configuration,
            "patch": "x".join(map(str, patch)) if patch else "n/a", "batch": batch, "compile": compile_text,
            "step_s": step, "iteration_s": iteration,
            "images_per_s": batch / step if batch and step else None,
            "megapixels_per_s": batch * pixels / 1e6 / step if batch and pixels and step else None,
            "peak_gib": timing.get("peak_allocated_bytes", 0) / 2 ** 30 if timing.get("peak_allocated_bytes")
            else None,
            "ratio_to_reference": step / reference if step and reference else None,
            "reference": reference_key,
            "timed_steps": min(len(timing.get("step_seconds", [])), TIMED_STEPS),
            "first_step_s": (timing.get("step_seconds") or [None])[0],
            "losses_finite": result.ok if result.timing else None,
            "predict": {True: "yes", False: "no", None: "not run"}[result.predict_ok],
            "status": "ok" if result.ok else f"FAILED: {(result.error or '').splitlines()[0]}",
        })
    return rows


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# nnunet-ext GPU check ({report['mode']})", "",
             f"{env.get('gpu') or 'CPU (dry run: tiny sizes, not a measurement)'}; torch {env['torch']} "
             f"(CUDA {env.get('torch_cuda')}), nnU-Net {env.get('nnunetv2')}, nnunet-ext {env.get('nnunet-ext')}; "
             f"{report['date']}; {report['seconds'] / 60:.1f} min in all.", "",
             f"Training: `nnUNetv2_train ... -device {env['device']}`, one epoch of {report['iterations']} "
             f"iterations, " + (f"nnU-Net's mixed precision (autocast {report['autocast']}, GradScaler)"
                                 if report.get("autocast") else "no mixed precision (nnU-Net uses it on CUDA only)")
             + f". s/iter: median of the last "
             f"{TIMED_STEPS} `train_step`s between `torch.cuda.synchronize()` calls (with data: from one step's "
             f"start to the next). Peak: `torch.cuda.max_memory_allocated` after the last step. x ref: step time "
             f"over nnUNetTrainer's with the same compile setting.", "",
             "| run | trainer | patch x batch | compile | s/iter | s/iter with data | images/s | MP/s | "
             "peak GPU GiB | x ref | losses finite | nnUNetv2_predict loads | status |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"]
    for row in report["training"]:
        lines.append(
            f"| {row['run']} | {row['trainer']} | {row['configuration']} {row['patch']} x {row['batch']} | "
            f"{row['compile']} | {_number(row['step_s'])} | {_number(row['iteration_s'])} | "
            f"{_number(row['images_per_s'])} | {_number(row['megapixels_per_s'])} | "
            f"{_number(row['peak_gib'])} | {_number(row['ratio_to_reference'])}"
            f"{' (2D ref)' if row['reference'] == 'reference' and row['configuration'] != '2d' and row['ratio_to_reference'] else ''} | "
            f"{'n/a' if row['losses_finite'] is None else 'yes' if row['losses_finite'] else 'no'} | "
            f"{row['predict']} | {row['status']} |")
    if report.get("segment"):
        lines += ["", "Whole-slide prediction with the reference run's model (no test-time mirroring). Wall time "
                  "includes each command's start-up and model load; 'reported' is segment's own figure.", "",
                  "| command | megapixels | wall s | MP/s (wall) | reported s | peak GPU GiB (allocated) | status |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for item in report["segment"]:
            lines.append(
                f"| {item['command'] or item['name']} | {item['megapixels']:.1f} | {_number(item['wall_seconds'])} | "
                f"{_number(item['megapixels_per_second'])} | {_number(item['reported_seconds'])} | "
                f"{_gib(item['peak_allocated_bytes'])} | "
                f"{'ok' if item['ok'] else 'FAILED: ' + (item['error'] or '').splitlines()[0]} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="GPU readiness check of nnunet-ext: trains every trainer through the stock nnUNetv2_train on "
                    "CUDA (mixed precision, torch.compile off and on), checks that nnUNetv2_predict loads each "
                    "checkpoint, and times 'nnunet-ext segment' on a 16k slide against nnUNetv2_predict on 4k. "
                    "Prints one table and writes it as Markdown and JSON.")
    parser.add_argument("--out", type=Path, default=Path("gpu_check"),
                        help="output folder: gpu_check.md, gpu_check.json, logs/, work/ (default ./gpu_check)")
    parser.add_argument("--quick", action="store_true",
                        help=f"runs {', '.join(QUICK_RUNS)} with compile off, {QUICK.iterations} iterations, a "
                             f"{QUICK.slide_side}^2 slide (about 3 min on an H100)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda (default); cpu runs the dry run (implies --tiny)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny data, networks and iteration counts: checks the pipeline, measures nothing "
                             "(also on CUDA)")
    parser.add_argument("--dry-run", action="store_true", help="the same as --device cpu --tiny: no GPU needed")
    parser.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=None,
                        help=f"training runs (default: {' '.join(DEFAULT_RUNS)}; --quick: {' '.join(QUICK_RUNS)})")
    parser.add_argument("--compile", choices=("both", "off", "on"), default=None,
                        help="nnUNet_compile settings to run (default both; --quick and the dry run: off)")
    parser.add_argument("--iterations", type=int, default=None,
                        help=f"training iterations per run (default {FULL.iterations}, --quick {QUICK.iterations}, "
                             f"--tiny {TINY.iterations}); the median is over the last {TIMED_STEPS}")
    parser.add_argument("--slide-side", type=int, default=None,
                        help=f"slide edge for segment (default {FULL.slide_side}, --quick {QUICK.slide_side})")
    parser.add_argument("--skip-predict", action="store_true", help="do not check the checkpoints with "
                                                                    "nnUNetv2_predict")
    parser.add_argument("--skip-segment", action="store_true", help="no segment / nnUNetv2_predict slide timing")
    parser.add_argument("--fresh", action="store_true", help="rebuild the prepared data in OUT/work")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed to one command (default 1800)")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device, args.tiny = "cpu", True
    if args.device == "cpu":
        args.tiny = True
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--measure-gpu-memory"]:  # internal: gpu_check.py --measure-gpu-memory FILE -- COMMAND ...
        command = argv[3:] if argv[2:3] == ["--"] else argv[2:]
        return run_measured_entry_point(argv[1], command)
    args = parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: CUDA is not available (torch {torch.__version__}, built for CUDA {torch.version.cuda}, "
              f"{torch.cuda.device_count()} device(s) visible). Run it on a machine with an NVIDIA GPU and a CUDA "
              f"build of torch, or check the script itself on the CPU with --dry-run (tiny sizes, no measurement).",
              file=sys.stderr)
        return 2
    sizes = TINY if args.tiny else QUICK if args.quick else FULL
    runs = list(dict.fromkeys(args.runs or (QUICK_RUNS if args.quick else DEFAULT_RUNS)))
    compile_choice = args.compile or ("off" if args.quick or args.device == "cpu" else "both")
    compile_settings = ["off", "on"] if compile_choice == "both" else [compile_choice]
    iterations = args.iterations or sizes.iterations
    if args.slide_side:
        sizes = Sizes(**{**asdict(sizes), "slide_side": args.slide_side})
    mode = ("dry run on the CPU" if args.device == "cpu" else "tiny on CUDA" if args.tiny
            else "quick" if args.quick else "full")
    out = args.out.resolve()
    work, logs = out / "work", out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    timeout = args.timeout
    segment_wanted = not args.skip_segment and "reference" in runs  # segment uses the reference run's model
    print(f"gpu_check ({mode}): runs {', '.join(runs)}; compile {', '.join(compile_settings)}; {iterations} "
          f"iterations each; output {out}")
    if args.device == "cuda" and not args.tiny:
        estimate = estimate_seconds(runs, compile_settings, sizes, not args.skip_predict, segment_wanted)
        print(f"  estimated duration on one H100: about {estimate / 60:.0f} min (an estimate from assumed step, "
              f"start-up and compile times, see docs/gpu.md)")
    started = time.perf_counter()
    environment = device_report(args.device)
    failures = []
    try:
        env = nnunet_env(work, args.device)
        trainers_folder = write_trainers_module(work / "trainers", runs)
        env["nnUNet_extTrainer"] = env["nnUNet_extTrainer"] + os.pathsep + str(trainers_folder)
        print("1. preparing datasets, plans and checkpoints ...")
        weights = prepare(work, env, runs, sizes, logs, args.fresh, timeout)
    except StepFailed as error:
        print(f"gpu_check: preparation failed: {error}", file=sys.stderr)
        return 1
    for variable in (SAM_VARIABLE, INFLATE_VARIABLE):  # a real release file named by the user is used as such
        given = os.environ.get(variable, "")
        if given and Path(given).expanduser().is_file():
            weights[variable] = str(Path(given).expanduser())

    results: list[TrainingResult] = []
    print("2. training through nnUNetv2_train ...")
    for key in runs:
        for setting in compile_settings:
            result = train(RUNS[key], setting, env, work, logs, sizes, weights, args.device, iterations, timeout)
            results.append(result)
            step = result.median("step_seconds")
            print(f"   {key:12s} compile {setting:3s}: " + (
                f"{step:.4f} s/step, peak {_gib(result.timing.get('peak_allocated_bytes'))} GiB, "
                f"{result.wall_seconds:.0f} s in all" if result.ok else f"FAILED ({result.log})"))
            if not result.ok:
                failures.append(f"training {key} compile {setting}")

    if not args.skip_predict:
        print("3. nnUNetv2_predict loads each checkpoint ...")
        chosen = {}
        for result in results:  # one prediction per run, from the compiled run's checkpoint when there is one
            if result.ok and (result.key not in chosen or result.compile == "on"):
                chosen[result.key] = result
        with ThreadPoolExecutor(max_workers=1 if args.device == "cpu" else 3) as pool:
            list(pool.map(lambda r: predict_check(r, RUNS[r.key], env, work, logs, args.device, timeout),
                          chosen.values()))
        for result in chosen.values():
            print(f"   {result.key:12s} compile {result.compile:3s}: "
                  + ("loaded and predicted" if result.predict_ok else f"FAILED ({result.predict_error})"))
            if not result.predict_ok:
                failures.append(f"nnUNetv2_predict {result.key}")

    segment_results = []
    if segment_wanted:
        model = next((r for r in results if r.key == "reference" and r.ok and r.compile == "off"), None) or \
            next((r for r in results if r.key == "reference" and r.ok), None)
        if model is None:
            failures.append("segment (no reference model)")
        else:
            print(f"4. nnunet-ext segment on {sizes.slide_side}^2 against nnUNetv2_predict on "
                  f"{sizes.reference_side}^2 ...")
            segment_results = segment_benchmark(model, env, work, logs, args.device, sizes, timeout)
            for item in segment_results:
                print(f"   {item.name}: " + (f"{item.wall_seconds:.1f} s, {item.megapixels_per_second:.2f} MP/s"
                                           if item.ok else f"FAILED ({item.error})"))
                if not item.ok:
                    failures.append(item.name)

    report = {
        "mode": mode, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": time.perf_counter() - started,
        "iterations": iterations, "timed_steps": TIMED_STEPS, "runs": runs, "compile": compile_settings,
        "environment": environment, "sizes": asdict(sizes),
        "autocast": next((r.timing.get("autocast") for r in results if r.timing.get("autocast")), None),
        "training": training_rows(results),
        "training_raw": [asdict(r) for r in results],
        "segment": [dict(asdict(s), megapixels_per_second=s.megapixels_per_second) for s in segment_results],
        "failures": failures, "command_seconds": COMMAND_SECONDS,
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    table = markdown(report)
    (out / "gpu_check.md").write_text(table)
    print("\n" + table)
    print(f"written: {out / 'gpu_check.md'}, {out / 'gpu_check.json'}; logs in {logs}")
    if failures:
        print(f"gpu_check: {len(failures)} step(s) failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
