"""Train-step time and peak memory of the transformer UNETRs against nnU-Net's default U-Net, same patch and batch.

Each case runs in a fresh process (so the peak resident memory of one case is not hidden by an earlier, bigger one):
it builds the network, runs one warm-up step, then times forward + cross-entropy on every deep-supervision output +
backward + SGD step. The U-Net is nnU-Net's PlainConvUNet with the stages, features and deep supervision nnU-Net
would plan for that patch.

    python benchmarks/bench_networks.py                      # CPU, 224 x 224 (2D) and 3D cases, batch 2
    python benchmarks/bench_networks.py --device cuda --full  # adds EM-SAM at its real 1024 x 1024

Prints one line per case: parameters (M), wall and CPU seconds per train step (CPU time summed over threads is the
steadier figure on a shared machine; on CUDA only wall time means anything), peak memory (CPU: resident set growth;
CUDA: max allocated), their ratios to the U-Net of the same patch, and the wall seconds of one inference forward pass
(one patch, no deep supervision, as nnUNetv2_predict runs it).

Networks: ``sam_vit_b`` is EM-SAM's; ``vit_b`` is the network of nnUNetTrainerViT and of the timm, MAE and DINO
trainers (same architecture, other weights); ``beit_b`` is BEiT's; the 3D ``vit_b`` cases are the inflated trainers'
(``5 x 16 x 16`` tokens as in the BigNeuron paper, and ``16^3``). Run time on an idle 2-core CPU: about 5 to 10
minutes for the default cases (eight subprocesses; the 64^3 cases are the slowest); the total is printed at the end.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CASES_2D = ["unet", "sam_vit_b", "vit_b", "beit_b"]
CASES_3D = ["unet", "vit_b"]


def nnunet_default_unet(patch_size, input_channels: int, num_classes: int):
    """PlainConvUNet as nnU-Net's default planner would configure it for this patch (isotropic spacing)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
    import torch.nn as nn

    dims = len(patch_size)
    _, pool_kernel_sizes, conv_kernel_sizes, _, _ = get_pool_and_conv_props([1.0] * dims, list(patch_size), 4,
                                                                            999999)
    stages = len(pool_kernel_sizes)
    cap = 512 if dims == 2 else 320
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    norm = nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d
    return PlainConvUNet(input_channels, stages, [min(32 * 2 ** i, cap) for i in range(stages)], conv,
                         conv_kernel_sizes, pool_kernel_sizes, [2] * stages, num_classes, [2] * (stages - 1),
                         conv_bias=True, norm_op=norm, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)


def run_case(case: str, patch_size: list[int], batch: int, device: str, steps: int, tokens: list[int] | None):
    import resource

    import torch
    import torch.nn.functional as F

    from nnunet_ext.networks.unetr import ViTUNETR

    torch.manual_seed(0)
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if case == "unet":
        network = nnunet_default_unet(patch_size, 1, 3)
    else:
        network = ViTUNETR(1, 3, patch_size, backbone=case, patch_embed_size=tokens)
    network = network.to(device).train()
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 1, *patch_size, device=device)
    target = torch.randint(0, 3, (batch, *patch_size), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            outputs = network(x)
            output = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
            loss = sum(F.cross_entropy(o.float(), F.interpolate(target[:, None].float(), o.shape[2:],
                                                                 mode="nearest")[:, 0].long())
                       for o in (outputs if isinstance(outputs, (list, tuple)) else [output]))
        loss.backward()
        optimizer.step()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    cpu_seconds = (time.process_time() - start_cpu) / steps  # all threads; steadier than wall time on a busy CPU
    if device == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib) / 1024
    # inference as nnUNetv2_predict runs it: eval mode, no deep supervision, one patch
    network.eval()
    network.decoder.deep_supervision = False  # nnU-Net's U-Net and ours both have decoder.deep_supervision
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
        network(x[:1])
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            network(x[:1])
        if device == "cuda":
            torch.cuda.synchronize()
    forward_s = (time.perf_counter() - start) / steps
    return {"case": case, "patch": patch_size, "batch": batch, "device": device,
            "params_m": sum(p.numel() for p in network.parameters()) / 1e6, "step_s": seconds, "cpu_s": cpu_seconds,
            "peak_mib": peak_mib, "forward_s": forward_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="also EM-SAM at 1024 x 1024 (GPU advised)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args()
    if args.case:
        spec = json.loads(args.case)
        print(json.dumps(run_case(spec["case"], spec["patch"], args.batch, args.device, args.steps,
                                  spec.get("tokens"))))
        return 0

    groups = [([224, 224], None, CASES_2D), ([5, 96, 96], [5, 16, 16], CASES_3D), ([64, 64, 64], None, CASES_3D)]
    if args.full:
        groups.append(([1024, 1024], None, ["unet", "sam_vit_b"]))
    print(f"{'network':<10} {'patch':<14} {'batch':>5} {'params M':>9} {'s/step':>8} {'CPU s/step':>11} "
          f"{'peak MiB':>9} {'time x U-Net':>13} {'memory x U-Net':>15} {'forward s':>10}", flush=True)
    timing = "cpu_s" if args.device == "cpu" else "step_s"  # the ratio uses CPU time on CPU, wall time on GPU
    started = time.perf_counter()
    for patch, tokens, cases in groups:
        reference = None
        for case in cases:
            spec = json.dumps({"case": case, "patch": patch, "tokens": tokens})
            result = subprocess.run([sys.executable, __file__, "--case", spec, "--device", args.device,
                                     "--steps", str(args.steps), "--batch", str(args.batch)],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                print(f"{case:<10} {'x'.join(map(str, patch)):<14} failed: {result.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(result.stdout.strip().splitlines()[-1])
            reference = reference or r
            print(f"{case:<10} {'x'.join(map(str, patch)):<14} {r['batch']:>5} {r['params_m']:>9.1f} "
                  f"{r['step_s']:>8.3f} {r['cpu_s']:>11.3f} {r['peak_mib']:>9.0f} "
                  f"{r[timing] / reference[timing]:>13.2f} {r['peak_mib'] / max(reference['peak_mib'], 1):>15.2f} "
                  f"{r['forward_s']:>10.3f}", flush=True)
    print(f"(ratios use {'CPU' if timing == 'cpu_s' else 'wall'} seconds per step; benchmark took "
          f"{time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
