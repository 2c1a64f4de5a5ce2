"""Short trainers for CPU smoke runs, tests and the demo.

nnU-Net's default schedule (1000 epochs of 250 iterations) is sized for a GPU. On a laptop-class CPU a small
network from :func:`nnunet_ext.trainers.plans.write_cpu_plans` trains in minutes with these schedules.
"""
from __future__ import annotations

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerCPUSmoke(nnUNetTrainer):
    """Two epochs of four iterations: checks that training, checkpointing, validation and prediction run."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.num_iterations_per_epoch = 4
        self.num_val_iterations_per_epoch = 2


class nnUNetTrainerCPUDemo(nnUNetTrainer):
    """The demo's schedule: 30 epochs of 20 iterations with a higher starting learning rate.

    With the CPU plans (small 2D U-Net, 128x128 patches) this is a few minutes on two cores and reaches Dice > 0.8
    for axon and myelin on the synthetic phantoms.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 30
        self.num_iterations_per_epoch = 20
        self.num_val_iterations_per_epoch = 4
        # few epochs: nnU-Net's poly schedule from 1e-2 decays too early to converge; start higher.
        self.initial_lr = 2e-2
