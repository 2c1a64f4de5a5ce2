"""Whole-slide segmentation on CPU: throughput and peak memory of block-wise prediction (``segment_slide``) against
nnU-Net's own one-piece predictor, measured in the same run with the same model and settings.

A synthetic slide (phantom nerve tissue of axons and myelin, blank flat-grey regions, and a zero margin that nnU-Net
crops away) is written chunk by chunk as a chunked Zarr and kept in the work folder for later runs. A 2D nnU-Net
with fixed random weights is saved as a trained-model folder that ``initialize_from_trained_model_folder`` loads (or
``--model`` names a trained one): ``--arch tiny`` is a 3-stage PlainConvUNet with 4-8-16 features on 256x256 patches
(7.6 k parameters, 3.1 kFLOP per pixel of a tile, 12.4 kFLOP per slide pixel at step 0.5), ``--arch demo`` the demo's
4-stage 16-128 features on 96x96 patches (483 k parameters, 70 kFLOP per tile pixel: 23x; measured 6-7x slower, as
instance norms and activations weigh more than FLOPs in so thin a network). Prediction settings are those users pick
for throughput: no test-time mirroring, nnU-Net's default tile step 0.5 (``--step-size``); block-wise runs
``--workers`` blocks at once with the cores shared among them. Each measurement runs in a fresh process: wall and CPU
seconds, the peak resident memory of the whole process (``ru_maxrss``, imports included) and the peak above the
loaded model (sampled every 20 ms while it predicts).

    # the issue's benchmark: a 1-gigapixel slide (32768 x 32768) and nnU-Net one piece on a 4096 x 4096 image;
    # about 15 min on an idle 2-core machine (the slide is written once, in about 1 min, and kept in the work folder)
    python benchmarks/bench_segment.py --gigapixel
    # a quick check and extrapolation (about 3 min idle)
    python benchmarks/bench_segment.py --gigapixel --side 8192 --reference-side 2048
    # peak memory against the block size
    python benchmarks/bench_segment.py --gigapixel --side 8192 --block-size 1024 2048 4096 --reference-side 1024

Prints one line per measurement, the ratios, and for slides below a gigapixel the time a gigapixel would take.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

# name: (patch edge, features per stage)
ARCHITECTURES = {"tiny": (256, (4, 8, 16)), "demo": (96, (16, 32, 64, 128))}
GIGAPIXEL_SIDE = 32768  # 32768^2 = 1.07e9 pixels
SLIDE_FORMAT = 2  # bump when synthetic_slide changes what it writes: cached slides are rewritten


def fixed_weight_model(folder: Path, patch: int = 96, features=(16, 32, 64, 128), seed: int = 0) -> Path:
    """An nnU-Net trained-model folder (plans, dataset.json, fold_0/checkpoint_final.pth) holding a 2D PlainConvUNet
    with fixed random weights: loads through ``initialize_from_trained_model_folder`` like any trained model."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ext.nnunet.plans_cpu import plain_unet_plans

    plans, _ = plain_unet_plans("Dataset999_BenchSlides", [patch, patch], features, 8, plans_name="nnUNetPlans_bench",
                                image_reader_writer="NaturalImage2DIO", intensity_properties={
                                    "max": 255.0, "mean": 110.0, "median": 105.0, "min": 0.0,
                                    "percentile_00_5": 5.0, "percentile_99_5": 232.0, "std": 66.0})
    # as nnU-Net plans 2D images: read as (1, y, x) volumes
    plans.update(original_median_spacing_after_transp=[999.0, 1.0, 1.0],
                 original_median_shape_after_transp=[1, 512, 512], transpose_forward=[0, 1, 2],
                 transpose_backward=[0, 1, 2])
    dataset = {"channel_names": {"0": "grey"}, "labels": {"background": 0, "myelin": 1, "axon": 2},
               "numTraining": 0, "file_ending": ".png"}
    model = folder / "nnUNetTrainer__nnUNetPlans_bench__2d"
    (model / "fold_0").mkdir(parents=True, exist_ok=True)
    (model / "plans.json").write_text(json.dumps(plans, indent=1))
    (model / "dataset.json").write_text(json.dumps(dataset, indent=1))
    manager = PlansManager(plans)
    torch.manual_seed(seed)
    network = nnUNetTrainer.build_network_architecture(manager, manager.get_configuration("2d"), 1, 3,
                                                       enable_deep_supervision=False)
    checkpoint = model / "fold_0" / "checkpoint_final.pth"
    temporary = checkpoint.with_name(checkpoint.name + ".tmp")
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "2d"}, "inference_allowed_mirroring_axes": (0, 1)}, temporary)
    os.replace(temporary, checkpoint)
    return model


def network_cost(model: str) -> dict:
    """Parameters and forward FLOPs (convolutions, as torch's FlopCounterMode counts them) of one patch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from nnunet_ext.segmentation.predictor import ModelSpec, load_predictor

    predictor = load_predictor(ModelSpec(model, use_mirroring=False))
    patch = [int(p) for p in predictor.configuration_manager.patch_size]
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        predictor.network(torch.zeros(1, 1, *patch))
    return {"parameters": sum(p.numel() for p in predictor.network.parameters()), "patch": patch,
            "flops_per_patch": counter.get_total_flops()}


def synthetic_slide(path: Path, side: int, chunk: int = 2048, tile: int = 1024, margin: int = 300,
                    seed: int = 0, progress: bool = True) -> Path:
    """A ``side`` x ``side`` uint8 Zarr slide, written chunk by chunk (memory: one chunk) and reused when present.

    Tissue tiles of ``tile`` pixels (four phantom nerve textures of axons and myelin, TEM- and SEM-like, flipped
    per tile so the slide does not repeat every tile) alternate with blank flat-grey tiles (one in three), inside a
    zero margin that nnU-Net crops away. The store is built under a temporary name and renamed when complete.
    """
    import zarr
    from tqdm import tqdm

    from nnunet_ext.phantoms.generator import generate_phantom

    recipe = {"format": SLIDE_FORMAT, "side": side, "chunk": chunk, "tile": tile, "margin": margin, "seed": seed}
    if path.exists():
        try:
            if dict(zarr.open_array(str(path), mode="r").attrs).get("synthetic_slide") == recipe:
                return path
        except Exception:  # not a readable array: written by something else, replace it
            pass
        shutil.rmtree(path)
    if chunk % tile:
        raise ValueError(f"chunk {chunk} must be a multiple of the tile {tile}")
    textures = [generate_phantom((tile, tile), contrast=contrast, seed=seed + i).image
                for i, contrast in enumerate(("TEM", "SEM", "TEM", "SEM"))]
    staging = path.with_name(path.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    array = zarr.open_array(str(staging), mode="w", shape=(side, side), chunks=(chunk, chunk), dtype=np.uint8,
                            fill_value=0)
    grid = [(y, x) for y in range(0, side, chunk) for x in range(0, side, chunk)]
    for y, x in tqdm(grid, desc=f"writing slide {side}x{side}", unit="chunk", disable=not progress):
        h, w = min(chunk, side - y), min(chunk, side - x)
        block = np.empty((h, w), np.uint8)
        for ty in range(0, h, tile):
            for tx in range(0, w, tile):
                row, col = (y + ty) // tile, (x + tx) // tile
                part = block[ty:ty + tile, tx:tx + tile]
                if (row + col) % 3 == 2:
                    part[:] = 128  # blank: flat grey, predicted like any tissue
                    continue
                texture = textures[(row * 7 + col * 3) % 4]
                flips = (row * 5 + col) % 4
                texture = texture[::-1] if flips & 1 else texture
                texture = texture[:, ::-1] if flips & 2 else texture
                part[:] = texture[:part.shape[0], :part.shape[1]]
        # the zero margin, cut out of the chunks at the slide's border
        block[:max(0, margin - y)] = 0
        block[max(0, side - margin - y):] = 0
        block[:, :max(0, margin - x)] = 0
        block[:, max(0, side - margin - x):] = 0
        array[y:y + h, x:x + w] = block
    array.attrs["synthetic_slide"] = recipe
    os.replace(staging, path)
    return path


def _measure(target, *args) -> dict:
    """Run ``target(*args)`` in a fresh process (memory figures are its own)."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(target, args)


class _PeakMemory:
    """Resident memory of this process sampled every 20 ms while the block runs: its peak and its value before.

    (``ru_maxrss`` would report the transient peak of importing torch and nnU-Net instead.)"""

    def __enter__(self):
        import psutil

        self._process = psutil.Process()
        self.before_mb = self.peak_mb = self._process.memory_info().rss / 2**20
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak_mb = max(self.peak_mb, self._process.memory_info().rss / 2**20)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._process.memory_info().rss / 2**20)


def _process_figures(memory: _PeakMemory, seconds: float, cpu_seconds: float) -> dict:
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_mb": memory.peak_mb,
            "rss_before_mb": memory.before_mb,
            "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # kB on Linux


def run_one_piece(model: str, slide: str, side: int, threads: int | None, tta: bool, step: float) -> dict:
    """nnU-Net's own predictor (``predict_single_npy_array``) on a ``side`` x ``side`` crop held in memory."""
    import torch
    import zarr

    from nnunet_ext.segmentation.predictor import ModelSpec, cached_predictor, predict_image

    predictor = cached_predictor(ModelSpec(model, threads=threads, use_mirroring=tta, tile_step_size=step))
    image = np.asarray(zarr.open_array(slide, mode="r")[:side, :side])
    with _PeakMemory() as memory:
        started, cpu = time.perf_counter(), time.process_time()
        predict_image(predictor, image)
        figures = _process_figures(memory, time.perf_counter() - started, time.process_time() - cpu)
    return {"what": f"nnU-Net one piece {side}x{side} ({torch.get_num_threads()} torch threads)",
            "megapixels": side * side / 1e6, **figures}


def run_block_wise(model: str, slide: str, out: str, block: int, threads: int | None, tta: bool, step: float,
                   workers: int, progress: bool) -> dict:
    import torch

    from nnunet_ext.segmentation.predictor import ModelSpec, cached_predictor
    from nnunet_ext.segmentation.slide_prediction import segment_slide

    spec = ModelSpec(model, threads=threads, use_mirroring=tta, tile_step_size=step)
    cached_predictor(spec)
    per_worker = threads or max(1, torch.get_num_threads() // workers)  # as segment_slide shares the cores
    with _PeakMemory() as memory:
        started, cpu = time.perf_counter(), time.process_time()
        result = segment_slide(slide, out, spec, block_size=block, workers=workers, overwrite=True,
                               progress=progress)
        figures = _process_figures(memory, time.perf_counter() - started, time.process_time() - cpu)
    side = result.shape[0]
    return {"what": f"block-wise {side}x{side} (block {block}, {result.blocks} blocks, {workers} Dask threads x "
                    f"{per_worker} torch threads; statistics pass {result.statistics_seconds:.0f} s)",
            "megapixels": side * side / 1e6, "block": block, "workers": workers * per_worker, **figures}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gigapixel", action="store_true",
                        help="the issue's benchmark: --arch tiny, slide 32768^2, reference 4096^2, block 4096, no "
                             "test-time mirroring, work folder kept in the system's temporary folder (the options "
                             "below override)")
    parser.add_argument("--side", type=int, nargs="+", default=None,
                        help="slide edge(s) in pixels (default 32768: 1.07 gigapixels)")
    parser.add_argument("--reference-side", type=int, nargs="+", default=None,
                        help="edge(s) of the in-memory image for nnU-Net's one-piece predictor (default 2048; 4096 "
                             "with --gigapixel)")
    parser.add_argument("--block-size", type=int, nargs="+", default=None,
                        help="block edge(s); several give peak memory against the block (default 2048; 4096 with "
                             "--gigapixel)")
    parser.add_argument("--workers", type=int, default=2, help="local Dask threads (blocks predicted at once)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: one-piece all cores as nnU-Net; block-wise cores / workers)")
    parser.add_argument("--disable-tta", action="store_true", help="no test-time mirroring (4x fewer passes)")
    parser.add_argument("--step-size", type=float, default=0.5, help="sliding-window tile step (nnU-Net's 0.5)")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default=None,
                        help="fixed-weight network (default demo; tiny with --gigapixel)")
    parser.add_argument("--model", default=None, help="a trained-model folder instead of a fixed-weight network")
    parser.add_argument("--work-dir", default=None,
                        help="slides (kept and reused) and outputs (deleted) go here (default: a new temporary "
                             "folder; with --gigapixel <tmp>/nnunet_ext_bench_segment, so the slide is written once)")
    args = parser.parse_args(argv)
    giga = args.gigapixel
    sides = args.side or [GIGAPIXEL_SIDE]
    reference_sides = args.reference_side or [4096 if giga else 2048]
    block_sizes = args.block_size or [4096 if giga else 2048]
    arch = args.arch or ("tiny" if giga else "demo")
    tta = not (args.disable_tta or giga)
    if args.work_dir:
        work = Path(args.work_dir)
    elif giga:
        work = Path(tempfile.gettempdir()) / "nnunet_ext_bench_segment"
    else:
        work = Path(tempfile.mkdtemp(prefix="bench_segment_"))
    work.mkdir(parents=True, exist_ok=True)
    patch, features = ARCHITECTURES[arch]
    model = args.model or str(fixed_weight_model(work / f"model_{arch}", patch=patch, features=features))
    cost = _measure(network_cost, model)
    tiles_per_pixel = 1 / args.step_size ** 2  # tiles covering a pixel inside a large slide
    flops_per_pixel = cost["flops_per_patch"] / (cost["patch"][0] * cost["patch"][1]) * tiles_per_pixel * (
        4 if tta else 1)
    print(f"model {model}: {cost['parameters']:,} parameters, patch {cost['patch']}, "
          f"{cost['flops_per_patch'] / 1e6:.0f} MFLOP per patch = {flops_per_pixel / 1e3:.1f} kFLOP per slide pixel "
          f"(step {args.step_size}: {tiles_per_pixel:.0f} tiles per pixel; mirroring {tta})", flush=True)
    print(f"CPU cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; work dir {work}", flush=True)
    sizes = set(sides) | ({max(reference_sides)} if max(reference_sides) > max(sides) else set())
    slides = {}
    for side in sorted(sizes):
        started = time.perf_counter()
        slides[side] = str(synthetic_slide(work / f"slide_{side}.zarr", side))
        print(f"synthetic slide {side}x{side} ({side * side / 1e6:.0f} MP) ready in {time.perf_counter() - started:.0f}"
              f" s: {slides[side]}", flush=True)
    reference_slide = slides[min(s for s in slides if s >= max(reference_sides))]
    results = []
    for side in reference_sides:
        results.append(_measure(run_one_piece, model, reference_slide, side, args.threads, tta, args.step_size))
        print(_line(results[-1]), flush=True)
    for side in sides:
        for block in block_sizes:
            out = str(work / f"slide_{side}_seg.zarr")
            results.append(_measure(run_block_wise, model, slides[side], out, block, args.threads, tta,
                                    args.step_size, args.workers, True))
            print(_line(results[-1]), flush=True)
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(out + ".partial", ignore_errors=True)
    one_piece = [r for r in results if r["what"].startswith("nnU-Net")]
    blocks = [r for r in results if r["what"].startswith("block")]
    if one_piece and blocks:
        reference = max(one_piece, key=lambda r: r["megapixels"])
        for r in blocks:
            print(f"block-wise {r['megapixels']:.0f} MP (block {r['block']}) / nnU-Net one piece "
                  f"{reference['megapixels']:.0f} MP: throughput x{_rate(r) / _rate(reference):.2f} "
                  f"(per CPU second x{_cpu_rate(r) / _cpu_rate(reference):.2f}), memory above the model "
                  f"{_increment(r):.0f} MB vs {_increment(reference):.0f} MB")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    for r in blocks:
        if r["megapixels"] < GIGAPIXEL_SIDE ** 2 / 1e6:
            idle = GIGAPIXEL_SIDE ** 2 / 1e6 / _cpu_rate(r) / min(cores, r["workers"])
            print(f"extrapolated to the 1-gigapixel slide ({GIGAPIXEL_SIDE}^2) with block {r['block']}: "
                  f"{GIGAPIXEL_SIDE ** 2 / 1e6 / _rate(r) / 60:.0f} min at this run's {_rate(r):.2f} MP/s; "
                  f"{idle / 60:.0f} min on {min(cores, r['workers'])} idle cores at its "
                  f"{_cpu_rate(r):.2f} MP per CPU second; memory as measured (bounded by the block)")
    return 0


def _rate(result: dict) -> float:
    return result["megapixels"] / max(result["seconds"], 1e-9)


def _cpu_rate(result: dict) -> float:
    return result["megapixels"] / max(result["cpu_seconds"], 1e-9)


def _increment(result: dict) -> float:
    return result["peak_rss_mb"] - result["rss_before_mb"]


def _line(result: dict) -> str:
    return (f"{result['what']}: {result['megapixels']:.1f} MP in {result['seconds']:.1f} s = {_rate(result):.3f} "
            f"MP/s ({result['cpu_seconds']:.0f} CPU s, {_cpu_rate(result):.3f} MP per CPU s); peak RSS of the process "
            f"{result['process_peak_rss_mb']:.0f} MB, {_increment(result):.0f} MB above the loaded model "
            f"({_increment(result) * 2**20 / (result['megapixels'] * 1e6):.1f} bytes per pixel)")


if __name__ == "__main__":
    sys.exit(main())
