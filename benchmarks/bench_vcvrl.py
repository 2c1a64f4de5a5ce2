"""Cost of the VCV-RL similarity loss: train-step time, FLOPs and peak memory against nnUNetTrainer; inference time.

Both trainers get the same nnU-Net plans and the same synthetic batches (three classes in blobs), so data loading is
left out and only the training step is compared. Plans (``PLANS``): the CPU plans of ``nnunet-ext plans-cpu`` (a
4-stage PlainConvUNet with 16 to 128 features, 128x128 patches and batch 8 in 2D; 64^3 patches and batch 2 in 3D),
and nnU-Net's default 2D topology (7 stages, 32 to 512 features, batch 12) at a 256x256 patch. The heads cost a fixed
~6.7 GFLOP per step (3 pools x 513 rows through 512-wide MLPs), so the ratio is largest on the tiniest plans. Steps of the two
trainers alternate, so that load from other processes on the machine hits both alike; medians are reported.

    python benchmarks/bench_vcvrl.py                  # all plans below (about 10 min on the idle 2-core machine)
    python benchmarks/bench_vcvrl.py --plans cpu-2d --steps 20
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

DATASET = "Dataset986_VCVRLBench"
DATA_IDENTIFIER = "bench"


# name: (dimension, features per stage, patch, batch size, what it is)
PLANS = {
    "cpu-2d": (2, (16, 32, 64, 128), (128, 128), 8,
               "nnUNetPlans_cpu 2D (`nnunet-ext plans-cpu`: the test and demo plans, 4 stages 16..128)"),
    "cpu-3d": (3, (16, 32, 64, 128), (64, 64, 64), 2, "nnUNetPlans_cpu 3D (4 stages 16..128)"),
    "default-2d": (2, (32, 64, 128, 256, 512, 512, 512), (256, 256), 12,
                   "nnU-Net's default 2D topology (7 stages 32..512, batch 12) at a 256x256 patch"),
}


def cpu_plans(name: str) -> tuple[dict, str]:
    """nnU-Net plans for one entry of ``PLANS`` (PlainConvUNet with nnU-Net's default layers)."""
    from nnunet_ext.nnunet.plans_cpu import plain_unet_plans

    _, features, patch, batch_size, _ = PLANS[name]
    return plain_unet_plans(DATASET, patch, features, batch_size, plans_name="nnUNetPlans_cpu",
                            data_identifier=DATA_IDENTIFIER)


def set_up_nnunet_folders(base: Path) -> None:
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (base / variable).mkdir(parents=True, exist_ok=True)
        os.environ[variable] = str(base / variable)
    data_folder = base / "nnUNet_preprocessed" / DATASET / DATA_IDENTIFIER
    data_folder.mkdir(parents=True, exist_ok=True)
    (data_folder / "case.b2nd").touch()  # nnU-Net infers its dataset class from the file ending


def make_trainer(kind: str, plans_name: str):
    import contextlib
    import io

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_ext.trainers.vcvrl import nnUNetTrainerVCVRL

    cls = nnUNetTrainerVCVRL if kind == "vcvrl" else nnUNetTrainer
    plans, configuration = cpu_plans(plans_name)
    plans["continue_training"] = False
    dataset_json = {"channel_names": {"0": "image"}, "labels": {"background": 0, "myelin": 1, "axon": 2},
                    "numTraining": 10, "file_ending": ".nii.gz"}
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's banner and log lines
        trainer = cls(copy.deepcopy(plans), configuration, 0, dataset_json, torch.device("cpu"))
        trainer.initialize()
        trainer.on_train_epoch_start()
    return trainer


def synthetic_batch(trainer, seed: int) -> dict:
    """Three classes in smooth blobs, an image that shows them, and nnU-Net's deep-supervision targets."""
    generator = torch.Generator().manual_seed(seed)
    shape = trainer.configuration_manager.patch_size
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    noise = torch.rand(trainer.batch_size, 1, *[s // 8 for s in shape], generator=generator)
    labels = (F.interpolate(noise, size=shape, mode=mode, align_corners=False) * 3).long().clamp(max=2).float()
    image = labels + 0.5 * torch.randn(labels.shape, generator=generator)
    targets = [labels if all(s == 1 for s in scale) else
               F.interpolate(labels, size=[round(n * s) for n, s in zip(shape, scale)], mode="nearest")
               for scale in trainer._get_deep_supervision_scales()]
    return {"data": image, "target": targets}


def timed_step(trainer, batch) -> float:
    start = time.perf_counter()
    trainer.train_step(batch)
    return time.perf_counter() - start


def step_flops(trainer, batch) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        trainer.train_step(batch)
    return counter.get_total_flops()


def similarity_part_seconds(trainer, batch, repeats: int) -> float:
    """Time of the VCV-RL part alone: pools, sampling, embeddings, descriptors, heads forward and backward."""
    with torch.no_grad():
        output = trainer.network(batch["data"])
    features = trainer._encoder_features.detach().requires_grad_(True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            pools = trainer._pools(output, batch["target"])
        trainer.vcvrl_loss(features, pools).backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def inference_seconds(trainers, repeats: int) -> list[float]:
    """Median forward time of one patch (eval, no deep supervision) of each trainer's network, alternated."""
    image = torch.randn(1, 1, *trainers[0].configuration_manager.patch_size)
    times = [[] for _ in trainers]
    for trainer in trainers:
        trainer.network.eval()
        trainer.set_deep_supervision_enabled(False)
    with torch.no_grad():
        for _ in range(repeats + 1):
            for trainer, kept in zip(trainers, times):
                start = time.perf_counter()
                trainer.network(image)
                kept.append(time.perf_counter() - start)
    for trainer in trainers:
        trainer.set_deep_supervision_enabled(True)
        trainer.network.train()
    return [statistics.median(kept[1:]) for kept in times]


def flops_on_meta(dim: int, features, patch, batch_size: int, pools: int = 3,
                  anchors: int = 512) -> tuple[float, float]:
    """(network, heads) FLOPs of one training step's forward + backward, counted on meta tensors (nothing computed).

    The heads see ``pools x (anchors + 1)`` rows (anchors and one descriptor per pool); pools, sampling and the
    descriptor means add no FLOPs worth counting (checked against the measured CPU plans step).
    """
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from torch.utils.flop_counter import FlopCounterMode

    from nnunet_ext.trainers.losses.vcvrl_loss import SimSiamHeads

    conv, norm = (torch.nn.Conv2d, torch.nn.InstanceNorm2d) if dim == 2 else (torch.nn.Conv3d, torch.nn.InstanceNorm3d)
    stages = len(features)
    with torch.device("meta"):
        network = PlainConvUNet(1, stages, list(features), conv, 3, [1] + [2] * (stages - 1), 2, 3, 2, True, norm,
                                {"eps": 1e-5, "affine": True}, None, None, torch.nn.LeakyReLU, {"inplace": True},
                                deep_supervision=True)
        image = torch.randn(batch_size, 1, *patch)
        heads = SimSiamHeads(features[-1])
        rows = torch.randn(pools * (anchors + 1), features[-1], requires_grad=True)
    with FlopCounterMode(display=False) as network_counter:
        sum(output.sum() for output in network(image)).backward()
    with FlopCounterMode(display=False) as heads_counter:
        projection, prediction = heads(rows)
        (projection.sum() + prediction.sum()).backward()
    return network_counter.get_total_flops(), heads_counter.get_total_flops()


# typical nnU-Net default plans for GPU training (ResEnc-free PlainConvUNet), for the FLOP ratio only
DEFAULT_SIZED_PLANS = {
    "2D, 512x512 patch, batch 12, 32..512 features (7 stages)": (2, (32, 64, 128, 256, 512, 512, 512), (512, 512), 12),
    "3D, 128^3 patch, batch 2, 32..320 features (6 stages)": (3, (32, 64, 128, 256, 320, 320), (128, 128, 128), 2),
}


def peak_rss_worker(kind: str, plans_name: str, steps: int) -> None:
    """Runs in a fresh process: a few steps of one trainer, then prints the process's peak resident memory."""
    with tempfile.TemporaryDirectory() as folder:
        set_up_nnunet_folders(Path(folder))
        trainer = make_trainer(kind, plans_name)
        batch = synthetic_batch(trainer, 0)
        for _ in range(steps):
            trainer.train_step(batch)
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def peak_rss_mib(kind: str, plans_name: str, steps: int) -> float:
    result = subprocess.run([sys.executable, __file__, "--rss-worker", kind, "--plans", plans_name,
                             "--steps", str(steps)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def benchmark(plans_name: str, steps: int, warmup: int, extras: bool = True) -> dict:
    """Step times (alternated), and with ``extras`` the VCV-RL part alone, FLOPs, peak RSS and inference."""
    base, vcvrl = make_trainer("base", plans_name), make_trainer("vcvrl", plans_name)
    batches = [synthetic_batch(base, seed) for seed in range(3)]
    for i in range(warmup):
        timed_step(base, batches[i % 3])
        timed_step(vcvrl, batches[i % 3])
    base_times, vcvrl_times = [], []
    for i in range(steps):  # alternate, so that load from other processes hits both alike
        base_times.append(timed_step(base, batches[i % 3]))
        vcvrl_times.append(timed_step(vcvrl, batches[i % 3]))
    result = {
        "plans": plans_name,
        "patch": base.configuration_manager.patch_size,
        "batch": base.batch_size,
        "base_step_s": statistics.median(base_times),
        "vcvrl_step_s": statistics.median(vcvrl_times),
        "step_ratio": statistics.median(vcvrl_times) / statistics.median(base_times),
        "pairwise_ratio": statistics.median(v / b for v, b in zip(vcvrl_times, base_times)),
        "similarity_part_s": similarity_part_seconds(vcvrl, batches[0], max(3, steps // 2)),
    }
    if extras:
        base_inference, vcvrl_inference = inference_seconds([base, vcvrl], max(3, steps // 2))
        result.update({
            "base_gflop": step_flops(base, batches[0]) / 1e9,
            "vcvrl_gflop": step_flops(vcvrl, batches[0]) / 1e9,
            "base_inference_s": base_inference,
            "vcvrl_inference_s": vcvrl_inference,
            "base_peak_rss_mib": peak_rss_mib("base", plans_name, 3),
            "vcvrl_peak_rss_mib": peak_rss_mib("vcvrl", plans_name, 3),
        })
    return result


def report(r: dict) -> None:
    print(f"\n{r['plans']}: {PLANS[r['plans']][4]}\n  patch {r['patch']}, batch {r['batch']}, 3 classes, "
          f"nnUNetTrainerVCVRL defaults (512 anchors per pool, hybrid, strict descriptors)")
    print(f"  train step        nnUNetTrainer {r['base_step_s'] * 1e3:8.0f} ms   VCV-RL "
          f"{r['vcvrl_step_s'] * 1e3:8.0f} ms   ratio {r['step_ratio']:.3f} (pairwise median "
          f"{r['pairwise_ratio']:.3f}; target <= 1.15)")
    print(f"  VCV-RL part alone {r['similarity_part_s'] * 1e3:8.0f} ms (pools, sampling, descriptors, "
          f"heads forward + backward)")
    if "base_gflop" not in r:
        return
    print(f"  FLOPs per step    nnUNetTrainer {r['base_gflop']:8.2f} G    VCV-RL {r['vcvrl_gflop']:8.2f} G"
          f"    ratio {r['vcvrl_gflop'] / r['base_gflop']:.3f}")
    print(f"  peak RSS (3 steps) nnUNetTrainer {r['base_peak_rss_mib']:7.0f} MiB  VCV-RL "
          f"{r['vcvrl_peak_rss_mib']:7.0f} MiB  (+{r['vcvrl_peak_rss_mib'] - r['base_peak_rss_mib']:.0f})")
    print(f"  inference (1 patch) nnUNetTrainer {r['base_inference_s'] * 1e3:6.0f} ms  VCV-RL "
          f"{r['vcvrl_inference_s'] * 1e3:6.0f} ms  (same network class and weights layout)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", choices=sorted(PLANS), action="append",
                        help="plans to compare on (repeatable; default cpu-2d, cpu-3d and default-2d)")
    parser.add_argument("--steps", type=int, default=30,
                        help="timed steps per trainer on the CPU plans (default 30: fewer are noisy)")
    parser.add_argument("--default-steps", type=int, default=3,
                        help="timed steps per trainer on default-2d (about 15 s each here; default 3)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rss-worker", choices=("base", "vcvrl"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    plans_names = args.plans or ["cpu-2d", "cpu-3d", "default-2d"]
    if args.rss_worker:
        peak_rss_worker(args.rss_worker, plans_names[0], args.steps)
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average before: "
          f"{os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as folder:
        set_up_nnunet_folders(Path(folder))
        for name in plans_names:
            if name.startswith("default"):  # a step takes seconds: fewer steps, no FLOP/RSS extras
                report(benchmark(name, args.default_steps, 1, extras=False))
            else:
                report(benchmark(name, args.steps, args.warmup))
    print("\nFLOPs per training step on nnU-Net default-sized plans (3 pools, 512 anchors; meta tensors):")
    for name, (dim, features, patch, batch_size) in DEFAULT_SIZED_PLANS.items():
        network_flops, heads_flops = flops_on_meta(dim, features, patch, batch_size)
        print(f"  {name}: network {network_flops / 1e9:7.0f} G, heads {heads_flops / 1e9:5.1f} G, "
              f"ratio {1 + heads_flops / network_flops:.4f}")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
