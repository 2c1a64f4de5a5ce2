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

    def _apply_schedule(self) -> None:
        """nnU-Net's schedule from the class attributes ``schedule_*``, then the CPU threads."""
        self.num_epochs = self.schedule_epochs
        self.num_iterations_per_epoch = self.schedule_iterations_per_epoch
        self.num_val_iterations_per_epoch = self.schedule_val_iterations_per_epoch
        self._apply_cpu_threads()


class CPUSmokeSchedule(_CPUThreadsMixin):
    """Mixin (listed before the trainer class) with the smoke schedule: two epochs of four iterations."""

    #: The schedule, as class attributes: the demo and the experiment read it without building a trainer.
    schedule_epochs = 2
    schedule_iterations_per_epoch = 4
    schedule_val_iterations_per_epoch = 2

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._apply_schedule()


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
        # few epochs: nnU-Net's poly schedule from 1e-2 decays too early to converge; start higher.
        self.initial_lr = 2e-2
        self._apply_schedule()


class CPUSEMSchedule(_CPUThreadsMixin):
    """Mixin (listed before the trainer class) with a schedule sized for real SEM on a CPU, under a time budget.

    ``schedule_epochs`` x ``schedule_iterations_per_epoch`` is the most that is trained. After each epoch the trainer
    projects the remaining epochs from the mean epoch time so far and, when they would end past
    ``schedule_time_budget_s`` (environment ``NNUNET_EXT_TRAIN_BUDGET_S`` overrides it; 0 or unset in the class:
    no budget), shortens the run: ``num_epochs`` and the poly learning-rate schedule's ``max_steps`` shrink
    together, so the learning rate still decays to zero at the last epoch. ``skip_final_validation`` skips nnU-Net's
    validation of the whole training images after training (minutes on a CPU; benchmarks score their own test
    set); ``NNUNET_EXT_FINAL_VALIDATION=1`` or ``nnUNetv2_train --val`` runs it.
    """

    schedule_epochs = 300
    schedule_iterations_per_epoch = 25
    schedule_val_iterations_per_epoch = 2
    schedule_initial_lr = 2e-2
    schedule_time_budget_s = 1800.0
    skip_final_validation = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = self.schedule_initial_lr
        self._budget_s = self.time_budget_s()
        self._budget_started = None
        self._apply_schedule()

    @classmethod
    def time_budget_s(cls) -> float:
        """The training time budget in seconds (``NNUNET_EXT_TRAIN_BUDGET_S`` wins over the class attribute)."""
        text = os.environ.get("NNUNET_EXT_TRAIN_BUDGET_S")
        if text:
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"NNUNET_EXT_TRAIN_BUDGET_S must be a number of seconds, got {text!r}") from None
            if value < 0:
                raise ValueError(f"NNUNET_EXT_TRAIN_BUDGET_S must not be negative, got {value}")
            return value
        return float(cls.schedule_time_budget_s or 0)

    def on_train_start(self):
        import time

        super().on_train_start()
        self._budget_started = time.monotonic()

    def run_training(self):
        """nnU-Net's loop, with the number of epochs read at each epoch (the budget may shorten it)."""
        self.on_train_start()
        while self.current_epoch < self.num_epochs:
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = [self.train_step(next(self.dataloader_train))
                             for _ in range(self.num_iterations_per_epoch)]
            self.on_train_epoch_end(train_outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [self.validation_step(next(self.dataloader_val))
                               for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
        self.on_train_end()

    def on_epoch_end(self):
        import time

        super().on_epoch_end()  # increments current_epoch
        if not self._budget_s or self._budget_started is None:
            return
        done = self.current_epoch - getattr(self, "_budget_first_epoch", 0)
        elapsed = time.monotonic() - self._budget_started
        if done <= 0:
            return
        per_epoch = elapsed / done
        affordable = self.current_epoch + int(max(0.0, self._budget_s - elapsed) // per_epoch)
        if affordable < self.num_epochs:
            self.num_epochs = max(self.current_epoch, affordable)
            if hasattr(self, "lr_scheduler") and hasattr(self.lr_scheduler, "max_steps"):
                self.lr_scheduler.max_steps = self.num_epochs
            self.print_to_log_file(f"time budget {self._budget_s:.0f} s: {per_epoch:.1f} s per epoch, training "
                                   f"ends after epoch {self.num_epochs}")

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        # a continued run budgets the epochs it still trains
        self._budget_first_epoch = self.current_epoch

    def perform_actual_validation(self, save_probabilities: bool = False):
        trained_here = self._budget_started is not None  # nnUNetv2_train --val trains nothing: validate then
        if (self.skip_final_validation and trained_here
                and os.environ.get("NNUNET_EXT_FINAL_VALIDATION", "") not in ("1", "true")):
            self.print_to_log_file("final validation skipped (skip_final_validation; NNUNET_EXT_FINAL_VALIDATION=1 "
                                   "or nnUNetv2_train --val runs it)")
            return
        return super().perform_actual_validation(save_probabilities)


class nnUNetTrainerCPUSEM(CPUSEMSchedule, nnUNetTrainer):
    """Real SEM on a CPU within a time budget (default 30 minutes): up to 300 epochs of 25 iterations, learning rate
    2e-2 decaying to zero at the budget's last epoch, no final validation. Use with the ``nnUNetPlans_cpu_sem`` plans
    (``benchmarks/bench_real_sem.py``: 256x256 patches, 5-stage U-Net)."""
