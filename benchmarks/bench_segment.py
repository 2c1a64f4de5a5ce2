"""Whole-slide segmentation on CPU: throughput and peak memory of block-wise prediction (``segment_slide``) against
nnU-Net's own one-piece predictor, measured in the same run.

A synthetic slide (textured phantom tissue, blank regions and a zero margin nnU-Net crops away) is written as a
chunked Zarr; a tiny 2D nnU-Net with the demo's architecture (PlainConvUNet, 16-128 features, 96x96 patches) and
fixed random weights is saved as a trained-model folder (or ``--model`` names a trained one). Each measurement runs
in a fresh process; its resident memory is sampled while it predicts (peak, and the increment over the loaded model).

    python benchmarks/bench_segment.py                       # the 1-gigapixel slide (32768 x 32768)
    python benchmarks/bench_segment.py --side 4096 8192 --reference-side 1024 2048 --threads 1 --disable-tta

Prints one line per measurement and the ratios.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

DEMO_PATCH = 96
DEMO_FEATURES = (16, 32, 64, 128)


def fixed_weight_model(folder: Path, patch: int = DEMO_PATCH, features=DEMO_FEATURES, seed: int = 0) -> Path:
    """An nnU-Net trained-model folder (plans, dataset.json, fold_0/checkpoint_final.pth) holding a 2D PlainConvUNet
    with fixed random weights: loads through ``initialize_from_trained_model_folder`` like any trained model."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    stages = len(features)
    plans = {
        "dataset_name": "Dataset999_BenchSlides", "plans_name": "nnUNetPlans_bench",
        "original_median_spacing_after_transp": [999.0, 1.0, 1.0], "original_median_shape_after_transp": [1, 512, 512],
        "image_reader_writer": "NaturalImage2DIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {"max": 255.0, "mean": 110.0, "median": 105.0,
                                                              "min": 0.0, "percentile_00_5": 5.0,
                                                              "percentile_99_5": 232.0, "std": 66.0}},
        "configurations": {"2d": {
            "data_identifier": "nnUNetPlans_bench_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 8,
            "patch_size": [patch, patch], "median_image_size_in_voxels": [512.0, 512.0], "spacing": [1.0, 1.0],
            "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                   "force_separate_z": None},
            "architecture": {
                "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": {
                    "n_stages": stages, "features_per_stage": list(features), "conv_op": "torch.nn.modules.conv.Conv2d",
                    "kernel_sizes": [[3, 3]] * stages, "strides": [[1, 1]] + [[2, 2]] * (stages - 1),
                    "n_conv_per_stage": [2] * stages, "n_conv_per_stage_decoder": [2] * (stages - 1),
                    "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                    "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                    "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
            "batch_dice": True}},
    }
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
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "2d"}, "inference_allowed_mirroring_axes": (0, 1)},
               model / "fold_0" / "checkpoint_final.pth")
    return model


def synthetic_slide(path: Path, side: int, chunk: int = 2048, margin: int = 300, seed: int = 0) -> Path:
    """A ``side`` x ``side`` uint8 Zarr slide: phantom tissue tiles alternating with blank (flat grey) tiles, inside a
    zero margin. Written chunk by chunk (memory stays at one chunk)."""
    import zarr

    from nnunet_ext.dataset_conversion.phantoms import generate_phantom

    tiles = [generate_phantom((1024, 1024), contrast=c, seed=seed + i).image for i, c in enumerate(("TEM", "SEM"))]
    array = zarr.open_array(str(path), mode="w", shape=(side, side), chunks=(chunk, chunk), dtype=np.uint8,
                            fill_value=0)
    for y in range(0, side, chunk):
        for x in range(0, side, chunk):
            h, w = min(chunk, side - y), min(chunk, side - x)
            rows, cols = np.arange(y, y + h)[:, None], np.arange(x, x + w)[None, :]
            block = np.where(((rows // 1024 + cols // 1024) % 3 == 2), np.uint8(128),  # blank tiles, one in three
                             np.where((rows // 1024) % 2 == 0, tiles[0][rows % 1024, cols % 1024],
                                      tiles[1][rows % 1024, cols % 1024])).astype(np.uint8)
            inside = (rows >= margin) & (rows < side - margin) & (cols >= margin) & (cols < side - margin)
            array[y:y + h, x:x + w] = np.where(inside, block, 0)
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


def run_one_piece(model: str, slide: str, side: int, threads: int | None, tta: bool) -> dict:
    """nnU-Net's own predictor (``predict_single_npy_array``) on a ``side`` x ``side`` crop held in memory."""
    import zarr

    from nnunet_ext.segmentation.predictor import ModelSpec, cached_predictor, predict_image

    predictor = cached_predictor(ModelSpec(model, threads=threads, use_mirroring=tta))
    image = np.asarray(zarr.open_array(slide, mode="r")[:side, :side])
    with _PeakMemory() as memory:
        started = time.perf_counter()
        predict_image(predictor, image)
        seconds = time.perf_counter() - started
    return {"what": f"nnU-Net one piece {side}x{side}", "megapixels": side * side / 1e6, "seconds": seconds,
            "peak_rss_mb": memory.peak_mb, "rss_before_mb": memory.before_mb}


def run_block_wise(model: str, slide: str, out: str, block: int, threads: int | None, tta: bool,
                   workers: int) -> dict:
    from nnunet_ext.segmentation.predictor import ModelSpec, cached_predictor
    from nnunet_ext.segmentation.slides import segment_slide

    spec = ModelSpec(model, threads=threads, use_mirroring=tta)
    cached_predictor(spec)
    with _PeakMemory() as memory:
        result = segment_slide(slide, out, spec, block_size=block, workers=workers, overwrite=True, progress=False)
    side = result.shape[0]
    return {"what": f"block-wise {side}x{side} (block {block}, {result.blocks} blocks, {workers} Dask threads)",
            "megapixels": side * side / 1e6, "seconds": result.seconds, "peak_rss_mb": memory.peak_mb,
            "rss_before_mb": memory.before_mb}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, nargs="+", default=[32768],
                        help="slide edge(s) in pixels (32768: 1.07 gigapixels)")
    parser.add_argument("--reference-side", type=int, nargs="+", default=[2048],
                        help="edge(s) of the in-memory image for nnU-Net's one-piece predictor")
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=2, help="local Dask threads")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--disable-tta", action="store_true", help="no test-time mirroring (4x fewer passes)")
    parser.add_argument("--model", default=None, help="trained-model folder (default: fixed-weight demo network)")
    parser.add_argument("--work-dir", default=None, help="where slides and outputs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_segment_"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or str(fixed_weight_model(work / "model"))
    tta = not args.disable_tta
    print(f"model {model}; torch threads {args.threads or 'default'}; test-time mirroring {tta}; "
          f"work dir {work}", flush=True)
    results = []
    largest = max(args.side + args.reference_side)
    sizes = set(args.side) | ({max(args.reference_side)} if max(args.reference_side) > max(args.side) else set())
    slides = {}
    for side in sorted(sizes):
        started = time.perf_counter()
        slides[side] = str(synthetic_slide(work / f"slide_{side}.zarr", side))
        print(f"wrote synthetic slide {side}x{side} in {time.perf_counter() - started:.0f} s", flush=True)
    reference_slide = slides[min(s for s in slides if s >= max(args.reference_side))]
    for side in args.reference_side:
        results.append(_measure(run_one_piece, model, reference_slide, side, args.threads, tta))
        print(_line(results[-1]), flush=True)
    for side in args.side:
        out = str(work / f"slide_{side}_seg.zarr")
        results.append(_measure(run_block_wise, model, slides[side], out, args.block_size, args.threads, tta,
                                args.workers))
        print(_line(results[-1]), flush=True)
        shutil.rmtree(out, ignore_errors=True)
    one_piece = [r for r in results if r["what"].startswith("nnU-Net")]
    blocks = [r for r in results if r["what"].startswith("block")]
    if one_piece and blocks:
        reference = max(one_piece, key=lambda r: r["megapixels"])
        for r in blocks:
            print(f"block-wise {r['megapixels']:.0f} MP / nnU-Net one piece {reference['megapixels']:.0f} MP: "
                  f"throughput x{_rate(r) / _rate(reference):.2f}, memory increment "
                  f"{_increment(r):.0f} MB vs {_increment(reference):.0f} MB")
    if largest < 32768 and blocks:
        best = max(blocks, key=lambda r: r["megapixels"])
        print(f"extrapolated 1-gigapixel slide (32768^2) at {_rate(best):.3f} MP/s: "
              f"{32768 ** 2 / 1e6 / _rate(best) / 3600:.1f} h, peak memory as measured (bounded by the block)")
    return 0


def _rate(result: dict) -> float:
    return result["megapixels"] / max(result["seconds"], 1e-9)


def _increment(result: dict) -> float:
    return result["peak_rss_mb"] - result["rss_before_mb"]


def _line(result: dict) -> str:
    return (f"{result['what']}: {result['megapixels']:.1f} MP in {result['seconds']:.1f} s = {_rate(result):.3f} MP/s;"
            f" peak RSS {result['peak_rss_mb']:.0f} MB, {_increment(result):.0f} MB above the loaded model "
            f"({_increment(result) * 2**20 / (result['megapixels'] * 1e6):.1f} bytes per pixel)")


if __name__ == "__main__":
    sys.exit(main())
