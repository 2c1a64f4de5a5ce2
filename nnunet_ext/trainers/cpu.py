"""Short trainers for CPU smoke runs, tests and the demo.

nnU-Net's default schedule (1000 epochs of 250 iterations) is sized for a GPU. On a laptop-class CPU a small
network from :func:`nnunet_ext.nnunet.plans_cpu.write_cpu_plans` trains in minutes with these schedules.
"""
from __future__ import annotations

import os

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class _CPUThreadsMixin:
    """Honour ``OMP_NUM_THREADS`` on the CPU.

    ``nnUNetv2_train -device cpu`` sets torch to one thread per core, overriding ``OMP_NUM_THREADS``. On a machine
    that is busy with other work, fewer threads are much faster (measured here on two loaded cores: 2.3 s per step with
    two threads, 0.8 s with one), so our CPU trainers let the usual variable decide when it is set.
    """

    def _apply_cpu_threads(self) -> None:
        threads = os.environ.get("OMP_NUM_THREADS")
        if self.device.type == "cpu" and threads and threads.isdigit() and int(threads) > 0:
            torch.set_num_threads(int(threads))


class CPUSmokeSchedule(_CPUThreadsMixin):
    """Mixin (listed before the trainer class) with the smoke schedule: two epochs of four iterations."""

    #: The schedule, as class attributes: the demo and the experiment read it without building a trainer.
    schedule_epochs = 2
    schedule_iterations_per_epoch = 4
    schedule_val_iterations_per_epoch = 2

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.schedule_epochs
        self.num_iterations_per_epoch = self.schedule_iterations_per_epoch
        self.num_val_iterations_per_epoch = self.schedule_val_iterations_per_epoch
        self._apply_cpu_threads()


class nnUNetTrainerCPUSmoke(CPUSmokeSchedule, nnUNetTrainer):
    """Two epochs of four iterations: checks that training, checkpointing, validation and prediction run."""


class nnUNetTrainerCPUDemo(_CPUThreadsMixin, nnUNetTrainer):
    """The demo's schedule: 20 epochs of 20 iterations with a higher starting learning rate.

    With the CPU plans (small 2D U-Net, 128x128 patches) this is a few minutes on two cores and reaches Dice > 0.8
    for axon and myelin on the synthetic phantoms.
    """

    #: The schedule, as class attributes: the demo and the experiment read it without building a trainer.
    schedule_epochs = 20
    schedule_iterations_per_epoch = 20
    schedule_val_iterations_per_epoch = 4

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.schedule_epochs
        self.num_iterations_per_epoch = self.schedule_iterations_per_epoch
        self.num_val_iterations_per_epoch = self.schedule_val_iterations_per_epoch
        # few epochs: nnU-Net's poly schedule from 1e-2 decays too early to converge; start higher.
        self.initial_lr = 2e-2
        self._apply_cpu_threads()
