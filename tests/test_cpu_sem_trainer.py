"""The real-SEM CPU trainer's time budget: it shortens the epochs and the learning-rate schedule together."""
from __future__ import annotations

import time

import pytest

from nnunet_ext.trainers.cpu import CPUSEMSchedule


class _FakeScheduler:
    max_steps = 300


class _FakeTrainer:
    def on_epoch_end(self):
        self.current_epoch += 1

    def print_to_log_file(self, *args):
        self.log.append(" ".join(map(str, args)))


class _Budgeted(CPUSEMSchedule, _FakeTrainer):
    pass


def make(budget_s):
    trainer = object.__new__(_Budgeted)
    trainer.current_epoch, trainer.num_epochs, trainer.log = 0, 300, []
    trainer.lr_scheduler = _FakeScheduler()
    trainer._budget_s, trainer._budget_started = budget_s, 1000.0
    return trainer


def test_budget_shortens_epochs_and_learning_rate_schedule(monkeypatch):
    trainer = make(100.0)
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    clock[0] += 20.0
    trainer.on_epoch_end()  # 1 epoch in 20 s: 4 more fit into the remaining 80 s
    assert trainer.num_epochs == 5 and trainer.lr_scheduler.max_steps == 5
    for _ in range(4):
        clock[0] += 20.0
        trainer.on_epoch_end()
    assert trainer.current_epoch == trainer.num_epochs == 5
    assert "training ends after epoch 5" in trainer.log[0]


def test_no_budget_keeps_the_schedule(monkeypatch):
    trainer = make(0.0)
    trainer.on_epoch_end()
    assert trainer.num_epochs == 300 and not trainer.log


def test_budget_from_environment(monkeypatch):
    monkeypatch.setenv("NNUNET_EXT_TRAIN_BUDGET_S", "1200")
    assert CPUSEMSchedule.time_budget_s() == 1200.0
    monkeypatch.setenv("NNUNET_EXT_TRAIN_BUDGET_S", "soon")
    with pytest.raises(ValueError, match="seconds"):
        CPUSEMSchedule.time_budget_s()
    monkeypatch.delenv("NNUNET_EXT_TRAIN_BUDGET_S")
    assert CPUSEMSchedule.time_budget_s() == 1800.0


def test_trainers_are_registered():
    import nnunet_ext.trainers as trainers

    for name in ("nnUNetTrainerCPUSEM", "nnUNetTrainerVCVRL_CPUSEM"):
        cls = getattr(trainers, name)
        assert cls.schedule_epochs == 300 and cls.schedule_iterations_per_epoch == 25 and cls.skip_final_validation
