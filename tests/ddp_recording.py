"""Test helper (not a test module): trainers that record, on every DDP worker, what must agree across workers.

Used by ``test_ddp.py`` (two CPU processes, gloo) and ``test_gpu.py`` (the stock ``nnUNetv2_train -num_gpus 2``).
The trainers are written into a folder listed in ``nnUNet_extTrainer`` (see :func:`write_recording_trainers`), so
nnU-Net finds them by name like any other trainer; each worker saves its record to the folder named by
``NNUNET_EXT_TEST_DDP_RECORD`` at the end of training.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

RECORD_VARIABLE = "NNUNET_EXT_TEST_DDP_RECORD"
VCVRL_TRAINER = "nnUNetTrainerVCVRL_DDPRecord"
VIT_TRAINER = "nnUNetTrainerViT_DDPRecord"
TINY_SAM = {"embed_dim": 32, "depth": 2, "num_heads": 2, "window_size": 2, "global_attn_indexes": [1]}
TINY_SAM_PLANS = "nnUNetPlans_ddpsamtiny"


def write_tiny_sam_plans(dataset, env: dict) -> str:
    """``nnunet-ext plans-vit``: a tiny SAM + UNETR on the tiny dataset's preprocessed data (conftest's
    ``TinyNnUNetDataset``); returns the plans name."""
    subprocess.run([str(Path(sys.executable).parent / "nnunet-ext"), "plans-vit", "-d", str(dataset.dataset_id),
                    "-c", "2d", "--backbone", "sam_vit_b", "--patch-size", "48", "48", "--backbone-kwargs",
                    json.dumps(TINY_SAM), "--decoder-features", "8", "--source-plans", dataset.plans,
                    "--reuse-preprocessed", "--plans-name", TINY_SAM_PLANS, "--overwrite"], env=env, check=True,
                   capture_output=True, text=True)
    return TINY_SAM_PLANS

TRAINERS_MODULE = '''
"""Test-only trainers (tests/ddp_recording.py): short schedules that record per-worker DDP state."""
import sys

sys.path.insert(0, {tests_folder!r})

from ddp_recording import RecordsDDPState  # noqa: E402
from nnunet_ext.trainers.cpu import CPUSmokeSchedule  # noqa: E402
from nnunet_ext.trainers.transformers import nnUNetTrainerViT  # noqa: E402
from nnunet_ext.trainers.vcvrl import nnUNetTrainerVCVRL  # noqa: E402


class {vcvrl}(RecordsDDPState, CPUSmokeSchedule, nnUNetTrainerVCVRL):
    pass


class {vit}(RecordsDDPState, CPUSmokeSchedule, nnUNetTrainerViT):
    pass
'''


def write_recording_trainers(folder: Path) -> Path:
    """Write the recording trainers' module into ``folder`` (to list in ``nnUNet_extTrainer``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nnunet_ext_test_ddp_trainers.py").write_text(TRAINERS_MODULE.format(
        tests_folder=str(Path(__file__).resolve().parent), vcvrl=VCVRL_TRAINER, vit=VIT_TRAINER))
    return folder


def _clones(tensors) -> list[torch.Tensor]:
    return [t.detach().to("cpu", copy=True) for t in tensors]


class RecordsDDPState:
    """Mixin (first in the bases): keeps the last step's local and averaged VCV-RL gradients and descriptors, the
    network's gradients and every step's local losses; saves them with the final weights at the end of training."""

    def _record(self) -> dict:
        if not hasattr(self, "_ddp_record"):
            self._ddp_record = {"losses": [], "similarity_losses": []}
        return self._ddp_record

    def _average_head_gradients(self):
        parameters = list(self.vcvrl_loss.parameters())
        self._record()["head_grads_local"] = _clones(
            p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters)
        super()._average_head_gradients()
        self._record()["head_grads_averaged"] = _clones(p.grad for p in parameters)

    def _average_descriptors(self):
        descriptors = self.vcvrl_loss.descriptors
        self._record()["descriptors_local"] = (_clones([descriptors.values])[0],
                                               _clones([descriptors.initialised])[0])
        super()._average_descriptors()
        self._record()["descriptors_averaged"] = (_clones([descriptors.values])[0],
                                                  _clones([descriptors.initialised])[0])

    def train_step(self, batch: dict) -> dict:
        result = super().train_step(batch)
        record = self._record()
        record["losses"].append(float(result["loss"]))
        if "similarity_loss" in result:
            record["similarity_losses"].append(float(result["similarity_loss"]))
        record["network_grads"] = _clones(p.grad if p.grad is not None else torch.zeros_like(p)
                                          for p in self.network.parameters())
        return result

    def on_train_end(self):
        super().on_train_end()
        folder = os.environ.get(RECORD_VARIABLE)
        if not folder:
            return
        network = self.network.module if self.is_ddp else self.network
        network = getattr(network, "_orig_mod", network)
        record = dict(self._record(), rank=self.local_rank, is_ddp=self.is_ddp, batch_size=self.batch_size,
                      device=str(self.device), network_state=_clones(network.state_dict().values()),
                      network_keys=list(network.state_dict()))
        if getattr(self, "vcvrl_loss", None) is not None:
            state = self.vcvrl_loss.state_dict()
            record["vcvrl_keys"] = list(state)
            record["vcvrl_state"] = _clones(state.values())
        Path(folder).mkdir(parents=True, exist_ok=True)
        torch.save(record, Path(folder) / f"{self.__class__.__name__}_rank{self.local_rank}.pt")


def load_records(folder: Path, trainer: str, world_size: int = 2) -> list[dict]:
    records = [torch.load(Path(folder) / f"{trainer}_rank{rank}.pt", weights_only=False)
               for rank in range(world_size)]
    assert [r["rank"] for r in records] == list(range(world_size)) and all(r["is_ddp"] for r in records)
    return records


def _all_equal(name: str, first: list[torch.Tensor], other: list[torch.Tensor]) -> None:
    assert len(first) == len(other), name
    differing = [i for i, (a, b) in enumerate(zip(first, other)) if not torch.equal(a, b)]
    assert not differing, f"{name}: {len(differing)} of {len(first)} tensors differ between DDP workers"


def check_network_agrees(records: list[dict]) -> None:
    """Every worker ends with the same network weights and gradients although each saw other data."""
    first = records[0]
    for other in records[1:]:
        _all_equal("network weights", first["network_state"], other["network_state"])
        _all_equal("network gradients", first["network_grads"], other["network_grads"])
    # the workers' batches differed (otherwise agreement would prove nothing)
    assert any(r["losses"] != first["losses"] for r in records[1:]), "every worker saw the same batches"


def check_vcvrl_agrees(records: list[dict]) -> None:
    """Heads' gradients averaged (and equal), descriptors averaged (and equal), the whole VCV-RL state equal."""
    world_size = len(records)
    first = records[0]
    local = [r["head_grads_local"] for r in records]
    assert any(not torch.equal(a, b) for a, b in zip(local[0], local[1])), \
        "the workers' local head gradients were already equal: the test data cannot show their averaging"
    for index, averaged in enumerate(first["head_grads_averaged"]):
        expected = sum(worker[index] for worker in local) / world_size
        torch.testing.assert_close(averaged, expected, rtol=1e-5, atol=1e-7)
    values = [r["descriptors_local"][0] for r in records]
    seen = [r["descriptors_local"][1] for r in records]
    averaged_values, averaged_seen = first["descriptors_averaged"]
    for pool in range(averaged_values.shape[0]):
        having = [v[pool] for v, s in zip(values, seen) if bool(s[pool])]
        assert bool(averaged_seen[pool]) == bool(having)
        if having:
            torch.testing.assert_close(averaged_values[pool], sum(having) / len(having), rtol=1e-5, atol=1e-7)
    for other in records[1:]:
        _all_equal("averaged head gradients", first["head_grads_averaged"], other["head_grads_averaged"])
        _all_equal("descriptors", list(first["descriptors_averaged"]), list(other["descriptors_averaged"]))
        assert first["vcvrl_keys"] == other["vcvrl_keys"]
        _all_equal("VCV-RL state (heads, BatchNorm statistics, descriptors, iteration)", first["vcvrl_state"],
                   other["vcvrl_state"])
    assert any(r["similarity_losses"] != first["similarity_losses"] for r in records[1:])
