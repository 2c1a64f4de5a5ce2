"""Run nnU-Net's own console commands (``nnUNetv2_plan_and_preprocess``, ``nnUNetv2_train``, ``nnUNetv2_predict``).

The demo and the tests drive nnU-Net exactly as a user's scripts do: the stock console scripts in a subprocess, with
an environment from :func:`nnunet_ext.nnunet.environment.nnunet_environment`. Output goes to a log file; a progress bar
follows nnU-Net's epochs; a failure raises with the tail of the log.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from nnunet_ext.nnunet.environment import nnunet_environment
from nnunet_ext.nnunet.plans_cpu import CPU_BATCH_SIZE, CPU_FEATURES_PER_STAGE, CPU_PLANS_NAME
from nnunet_ext.nnunet.plans_cpu import write_cpu_plans


class NnUNetCommandError(RuntimeError):
    """An nnU-Net command exited with an error."""


def cpu_environment(base_folder: str | os.PathLike | None = None, base_env: dict | None = None) -> dict[str, str]:
    """nnU-Net environment for CPU runs on a small machine.

    No ``torch.compile`` (slow to start, no gain on CPU) and one process for nnU-Net's background work
    (segmentation export, preprocessing), since spawning workers that each import torch costs more than it saves on
    two cores. ``nnUNet_n_proc_DA`` (data augmentation workers) is set only for training, see :func:`train`: the
    planner calls ``torch.set_num_threads`` with it and fails on 0.
    """
    env = nnunet_environment(base_folder, base_env)
    env.setdefault("nnUNet_compile", "f")
    env.setdefault("nnUNet_def_n_proc", "1")
    return env


def console_script(name: str) -> str:
    """Path of an installed console script, preferring the one beside the running interpreter (the venv's)."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"nnU-Net command {name} not found; is nnunetv2 installed in this environment?")
    return found


def run_nnunet_command(args: Sequence[str], env: dict, log_file: str | os.PathLike | None = None,
                       progress_total: int | None = None, progress_desc: str | None = None) -> None:
    """Run one nnU-Net console command; stream its output to ``log_file``.

    Parameters
    ----------
    args : sequence of str
        Command and arguments, e.g. ``["nnUNetv2_train", "5", "2d", "0"]``.
    env : dict
        Environment (see :func:`cpu_environment`).
    log_file : path, optional
        Where nnU-Net's output goes (appended). Without it, output is passed through to the console.
    progress_total : int, optional
        Number of epochs: shows a progress bar advanced by nnU-Net's ``Epoch N`` lines.
    """
    command = [console_script(args[0]), *map(str, args[1:])]
    tail: deque[str] = deque(maxlen=40)
    bar = tqdm(total=progress_total, desc=progress_desc or args[0], unit="epoch") if progress_total else None
    log = open(log_file, "a") if log_file else None
    try:
        if log:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
        # unbuffered, so that epochs reach the log and the progress bar as they happen
        process = subprocess.Popen(command, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in process.stdout:
            tail.append(line)
            if log:
                log.write(line)
                log.flush()  # so that 'tail -f demo.log' follows the epochs
            else:
                sys.stdout.write(line)
            if bar is not None:
                if re.search(r": Epoch (\d+)\s*$", line):
                    bar.update(1)
                dice = re.search(r"Pseudo dice \[(.*)\]", line)
                if dice:
                    bar.set_postfix_str("pseudo Dice " + ", ".join(re.findall(r"[0-9.]+(?=\))", dice.group(1))))
        code = process.wait()
    finally:
        if bar is not None:
            bar.close()
        if log:
            log.close()
    if code != 0:
        where = f" (full log: {log_file})" if log_file else ""
        raise NnUNetCommandError(f"{' '.join(map(str, args))} failed with exit code {code}{where}:\n"
                                 + "".join(tail))


@contextlib.contextmanager
def applied_environment(env: dict):
    """Run nnU-Net's Python API in this process under ``env``'s nnU-Net variables (restored afterwards)."""
    names = [k for k in env if k.startswith("nnUNet")]
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update({k: env[k] for k in names})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def plan_and_preprocess_cpu(dataset_id: int, env: dict, configuration: str = "2d",
                            patch_size: Sequence[int] | None = None, batch_size: int = CPU_BATCH_SIZE,
                            features_per_stage: Sequence[int] = CPU_FEATURES_PER_STAGE,
                            log_file: str | os.PathLike | None = None) -> str:
    """Fingerprint and plan a dataset with nnU-Net, derive the CPU plans, and preprocess that configuration.

    Runs nnU-Net's own planning API (what ``nnUNetv2_plan_and_preprocess`` calls) in this process, which saves
    several interpreter start-ups on a small machine; the output goes to ``log_file``. Returns the plans name.
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess)

    log = open(log_file, "a") if log_file else sys.stdout
    try:
        with applied_environment(env), contextlib.redirect_stdout(log):
            print(f"# nnUNetv2_plan_and_preprocess -d {dataset_id} --verify_dataset_integrity --no_pp -np 1")
            extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True)
            plan_experiments([dataset_id])
            print(f"# nnunet-ext plans-cpu -d {dataset_id} -c {configuration}")
            write_cpu_plans(dataset_id, configuration, patch_size, features_per_stage, batch_size, overwrite=True)
            print(f"# nnUNetv2_preprocess -d {dataset_id} -plans_name {CPU_PLANS_NAME} -c {configuration} -np 1")
            preprocess([dataset_id], CPU_PLANS_NAME, [configuration], [1], show_progress_bar=False)
    finally:
        if log_file:
            log.close()
    return CPU_PLANS_NAME


def train(dataset_id: int, configuration: str, fold: int | str, trainer: str, env: dict,
          plans: str = CPU_PLANS_NAME, device: str = "cpu", log_file: str | os.PathLike | None = None,
          epochs: int | None = None) -> None:
    """``nnUNetv2_train`` with our environment (data augmentation in the main process on CPU)."""
    env = {**env, "nnUNet_n_proc_DA": env.get("nnUNet_n_proc_DA", "0")}
    run_nnunet_command(["nnUNetv2_train", dataset_id, configuration, fold, "-p", plans, "-tr", trainer,
                        "-device", device], env, log_file, progress_total=epochs, progress_desc="Training")


def predict(input_folder: str | os.PathLike, output_folder: str | os.PathLike, dataset_id: int,
            configuration: str, folds: Sequence[int | str], trainer: str, env: dict, plans: str = CPU_PLANS_NAME,
            device: str = "cpu", checkpoint: str = "checkpoint_final.pth",
            log_file: str | os.PathLike | None = None) -> None:
    """``nnUNetv2_predict`` on a folder of ``<case>_0000.<ext>`` images."""
    run_nnunet_command(["nnUNetv2_predict", "-i", input_folder, "-o", output_folder, "-d", dataset_id,
                        "-c", configuration, "-f", *folds, "-tr", trainer, "-p", plans, "-chk", checkpoint,
                        "-device", device, "-npp", "1", "-nps", "1"], env, log_file)
