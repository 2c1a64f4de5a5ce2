"""nnU-Net's DDP training path with our trainers, on the CPU: two processes, gloo, tiny phantoms.

nnU-Net 2.8's ``nnUNetv2_train -num_gpus 2`` cannot run on a CPU: ``run_training`` asserts a CUDA device,
``setup_ddp`` hard-codes the NCCL back end and ``torch.cuda.set_device``, the trainer's ``__init__`` puts every DDP
worker on ``cuda:<rank>`` (and builds a CUDA ``GradScaler``), and it wraps the network with
``DDP(network, device_ids=[rank])``, which only GPU modules accept. Each worker here therefore does what
``run_ddp`` does with those four things replaced: a gloo process group, the trainer built by nnU-Net's own
``get_trainer_from_args`` (trainer found by name through ``nnUNet_extTrainer``) and then put on the CPU without a
grad scaler, and nnU-Net's ``DDP`` name pointing at ``DistributedDataParallel`` without ``device_ids``. Everything
else is nnU-Net's: per-worker batch size and oversampling, the DDP-wrapped network (and ``SyncBatchNorm``
conversion), the Dice loss's all-gather, the barriers, ``all_gather_object`` of losses and validation counts, rank-0
checkpoints, and the whole ``run_training`` loop with our ``train_step``.

Checked on both workers: the same network weights and gradients, VCV-RL's heads' gradients averaged (equal to the
mean of the workers' local gradients, which differ), descriptors averaged, and the whole VCV-RL state (heads,
BatchNorm statistics, descriptors, iteration counter) identical; for a transformer trainer (tiny SAM encoder + UNETR),
that DDP finds no unused parameter and the workers agree. What this cannot check is NCCL itself, CUDA streams and
mixed precision under DDP: ``test_gpu.py::test_stock_ddp_two_gpus`` runs the stock command where two GPUs exist.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddp_recording import (RECORD_VARIABLE, VCVRL_TRAINER, VIT_TRAINER, check_network_agrees,  # noqa: E402
                           check_vcvrl_agrees, load_records, write_recording_trainers, write_tiny_sam_plans)

WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_ddp(module, device_ids=None, **kwargs):
    """nnU-Net passes ``device_ids=[rank]``, which DistributedDataParallel accepts for GPU modules only."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, **kwargs)


def _ddp_worker(rank: int, world_size: int, port: int, runs: list) -> None:
    """One DDP worker: nnU-Net's run_ddp with a gloo group and the trainer on the CPU (see the module docstring)."""
    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module
        from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

        nnunet_trainer_module.DDP = _cpu_ddp
        for dataset_id, configuration, trainer_name, plans in runs:
            trainer = get_trainer_from_args(str(dataset_id), configuration, 0, trainer_name, plans, False,
                                            device=torch.device("cpu"))
            assert trainer.is_ddp and trainer.device == torch.device("cuda", rank)  # what nnU-Net does in DDP
            trainer.device = torch.device("cpu")
            trainer.grad_scaler = None  # nnU-Net builds it for CUDA only
            maybe_load_checkpoint(trainer, False, False, None)
            trainer.run_training()
            dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_records(tiny_nnunet_dataset, tmp_path_factory, monkeypatch_module):
    """Both trainers trained by two gloo workers (2 epochs of 4 iterations each); returns the records folder."""
    ds = tiny_nnunet_dataset
    base = tmp_path_factory.mktemp("ddp")
    trainers_folder = write_recording_trainers(base / "trainers")
    env = {**ds.env, "nnUNet_extTrainer": ds.env["nnUNet_extTrainer"] + os.pathsep + str(trainers_folder),
           "nnUNet_results": str(base / "nnUNet_results"),  # apart from other tests' models of this dataset
           "nnUNet_n_proc_DA": "0", "nnUNet_compile": "f", RECORD_VARIABLE: str(base / "records"),
           "OMP_NUM_THREADS": "1"}
    vit_plans = write_tiny_sam_plans(ds, env)  # tiny SAM + UNETR on the phantoms' preprocessed data (CLI)
    for name, value in env.items():  # the spawned workers inherit this process's environment
        if name.startswith("nnUNet") or name in (RECORD_VARIABLE, "OMP_NUM_THREADS"):
            monkeypatch_module.setenv(name, value)
    runs = [(ds.dataset_id, "2d", VCVRL_TRAINER, ds.plans), (ds.dataset_id, "2d", VIT_TRAINER, vit_plans)]
    context = torch.multiprocessing.start_processes(_ddp_worker, args=(WORLD_SIZE, _free_port(), runs),
                                                    nprocs=WORLD_SIZE, join=False, start_method="spawn")
    deadline = time.monotonic() + 900
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the DDP workers did not finish within 15 minutes")
    return base


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_vcvrl_ddp_workers_agree(ddp_records):
    records = load_records(ddp_records / "records", VCVRL_TRAINER, WORLD_SIZE)
    assert [r["batch_size"] for r in records] == [2, 2]  # nnU-Net split the plans' batch of 4 over the workers
    assert all(len(r["similarity_losses"]) == 8 for r in records)  # 2 epochs x 4 iterations on each worker
    check_network_agrees(records)
    check_vcvrl_agrees(records)


def test_vcvrl_ddp_checkpoint_holds_the_common_state(ddp_records, tiny_nnunet_dataset):
    records = load_records(ddp_records / "records", VCVRL_TRAINER, WORLD_SIZE)
    fold = ddp_records / "nnUNet_results" / tiny_nnunet_dataset.dataset_name / \
        f"{VCVRL_TRAINER}__{tiny_nnunet_dataset.plans}__2d" / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    state = checkpoint["vcvrl"]["state_dict"]
    assert list(state) == records[1]["vcvrl_keys"]
    for saved, held in zip(state.values(), records[1]["vcvrl_state"]):  # rank 0 wrote it; rank 1 holds the same
        assert torch.equal(saved, held)
    assert int(state["iteration"]) == 8 and state["descriptors.initialised"].all()
    assert all(not key.startswith("module.") for key in checkpoint["network_weights"])  # nnU-Net unwrapped DDP


def test_transformer_ddp_workers_agree(ddp_records):
    records = load_records(ddp_records / "records", VIT_TRAINER, WORLD_SIZE)
    assert [r["batch_size"] for r in records] == [1, 1]  # plans-vit's batch of 2 over two workers
    check_network_agrees(records)  # a parameter without gradient would have stopped DDP at the second step
