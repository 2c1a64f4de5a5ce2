"""Conversion throughput against a plain copy of the same files, and the memory of tiling a large TIFF.

Run: ``python benchmarks/bench_conversion.py [--large-side 16384] [--keep DIR]``. Prints, for each converter, the
time, images and megapixels per second, and the ratio to ``shutil.copyfile`` of the very files it read, measured in
the same run; for AxonCallosumEM tiling of a synthetic ``side x side`` TIFF (uncompressed: memory-mapped; tiled
zlib: read through zarr) the peak memory of the converting process against the size of the image.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _copy_seconds(files, target: Path) -> float:
    target.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for index, path in enumerate(files):
        shutil.copyfile(path, target / f"{index}_{Path(path).name}")
    os.sync()
    return time.perf_counter() - start


def _timed(function, *args, **kwargs):
    """Result, wall seconds and CPU seconds of this process (the CPU time is what a busy machine does not inflate)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    os.sync()
    return result, time.perf_counter() - start, time.process_time() - cpu_start


def _row(name, seconds, cpu_seconds, n_images, megapixels, copy_seconds):
    print(f"{name:<36} wall {seconds:7.2f} s  CPU {cpu_seconds:7.2f} s | {n_images / cpu_seconds:7.1f} img/s "
          f"{megapixels / cpu_seconds:6.1f} MP/s per CPU s | {megapixels:6.1f} MP | copy {copy_seconds:5.2f} s, "
          f"wall x{seconds / copy_seconds:5.0f} of copy")


def bench_bids(work: Path) -> Path | None:
    from nnunet_ext.dataset_conversion.bids_microscopy import convert_bids_microscopy
    from nnunet_ext.dataset_conversion.nnunet_raw import read_manifest

    if not (DATA / "ads_sem").is_dir():
        print("ads_sem not available; BIDS benchmark skipped")
        return None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder, seconds, cpu = _timed(convert_bids_microscopy, DATA / "ads_sem", work / "raw", 1, "ADSSEM",
                                 test_subjects=["rat3"], progress=False)
    manifest = read_manifest(folder)
    files = [f for entry in manifest["source_files"] for f in entry.split(";")]
    from PIL import Image

    megapixels = sum(np.prod(Image.open(f).size) for f in files[::2]) / 1e6
    _row("BIDS ads_sem (10 SEM images)", seconds, cpu, len(manifest), megapixels,
         _copy_seconds(files, work / "copy_bids"))
    return folder


def bench_png_levels(folder: Path, work: Path) -> None:
    """Why the writer uses zlib level 1: time and size of the ads_sem images at PNG levels 1 and 6."""
    from PIL import Image

    images = [np.array(Image.open(p)) for p in sorted((folder / "imagesTr").glob("*.png"))]
    for level in (1, 6):
        start = time.process_time()
        size = 0
        for index, image in enumerate(images):
            path = work / f"level{level}_{index}.png"
            Image.fromarray(image).save(path, compress_level=level)
            size += path.stat().st_size
        print(f"  PNG compress_level={level}: CPU {time.process_time() - start:6.2f} s, {size / 2**20:6.1f} MiB "
              f"for the {len(images)} training images of ads_sem")


def _make_large_callosum(work: Path, side: int) -> dict:
    """An EM-like image and 0/1/2 label of side x side pixels, written uncompressed and tiled+zlib."""
    import tifffile

    rng = np.random.default_rng(0)
    block = 2048
    yy, xx = np.mgrid[:block, :block]
    label = np.zeros((block, block), np.uint8)
    for _ in range(1500):
        cy, cx, r = rng.integers(0, block, 2).tolist() + [int(rng.integers(6, 30))]
        box = (slice(max(cy - r - 8, 0), cy + r + 8), slice(max(cx - r - 8, 0), cx + r + 8))
        distance = np.hypot(yy[box] - cy, xx[box] - cx)
        label[box][distance < r + 6] = 1
        label[box][distance < r] = 2
    image = (np.choose(label, [120, 40, 200]) + rng.integers(0, 24, label.shape)).astype(np.uint8)
    reps = (side // block, side // block)
    big_image, big_label = np.tile(image, reps), np.tile(label, reps)
    files = {}
    for layout, options in (("memmap", {}), ("zarr", {"tile": (512, 512), "compression": "zlib"})):
        files[layout] = (work / f"{layout}_image.tif", work / f"{layout}_label.tif")
        tifffile.imwrite(files[layout][0], big_image, **options)
        tifffile.imwrite(files[layout][1], big_label, **options)
    del big_image, big_label
    side = reps[0] * block
    (work / "regions.json").write_text(json.dumps({"regions": {
        "genu": {"y": [0, side // 2], "x": [0, side]},
        "body": {"y": [side // 2, 3 * side // 4], "x": [0, side]},
        "splenium": {"y": [3 * side // 4, side], "x": [0, side]}}}))
    return files


_TILING_CHILD = r"""
import json, sys, time, tracemalloc
import nnunetv2.dataset_conversion.generate_dataset_json, skimage.measure, zarr, PIL.PngImagePlugin
from nnunet_ext.dataset_conversion.axoncallosum import convert_axoncallosum

def high_water_kib():  # peak resident memory since exec (ru_maxrss would include the parent's at fork)
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    return int(status["VmHWM"].split()[0])

image, label, regions, raw, dataset_id, threads = sys.argv[1:7]
baseline = high_water_kib()
tracemalloc.start()
start, cpu_start = time.perf_counter(), time.process_time()
convert_axoncallosum(raw, int(dataset_id), "Callosum" + dataset_id, image_file=image, label_file=label,
                     regions_json=regions, tile_size=1024, write_threads=int(threads), progress=False)
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
print(json.dumps({"seconds": seconds, "cpu": cpu, "traced_peak": tracemalloc.get_traced_memory()[1],
                  "peak_kib": high_water_kib(), "baseline_kib": baseline}))
"""


def bench_axoncallosum(work: Path, side: int) -> None:
    files, seconds, _ = _timed(_make_large_callosum, work, side)
    side = side // 2048 * 2048
    image_mib = side * side / 2**20
    print(f"AxonCallosumEM: synthetic {side} x {side} uint8 image + label ({image_mib:.0f} MiB each), written in "
          f"{seconds:.1f} s")
    runs = [("memmap", 1), ("memmap", 2), ("zarr", 2)]
    for dataset_id, (layout, threads) in enumerate(runs, start=11):
        image, label = files[layout]
        completed = subprocess.run([sys.executable, "-c", _TILING_CHILD, str(image), str(label),
                                    str(work / "regions.json"), str(work / "raw"), str(dataset_id), str(threads)],
                                   capture_output=True, text=True, check=True)
        stats = json.loads(completed.stdout.strip().splitlines()[-1])
        n_tiles = (side // 1024) ** 2
        copy_seconds = _copy_seconds([image, label], work / f"copy_{layout}_{threads}")
        _row(f"AxonCallosumEM tiling ({layout}, {threads} thr)", stats["seconds"], stats["cpu"], n_tiles, side * side / 1e6,
             copy_seconds)
        mapped = ", the rest partly pages of the memory-mapped files" if layout == "memmap" else ""
        print(f"  peak memory: Python/numpy allocations {stats['traced_peak'] / 2**20:.0f} MiB (tracemalloc); "
              f"peak resident {stats['peak_kib'] / 1024:.0f} MiB, {stats['baseline_kib'] / 1024:.0f} MiB of it "
              f"before converting (imports){mapped}; image + label are {2 * image_mib:.0f} MiB")


def bench_bigneuron(work: Path) -> None:
    from nnunet_ext.dataset_conversion.bigneuron import convert_bigneuron

    sample = DATA / "bigneuron_sample"
    if not sample.is_dir():
        print("bigneuron_sample not available; skipped")
        return
    import tifffile

    _, seconds, cpu = _timed(convert_bigneuron, [sample], work / "raw", 31, "BigNeuron", progress=False)
    files = [sample / f for f in ("test-small.tif", "test-small.swc", "test.small.tif", "test.small.swc")]
    megavoxels = sum(tifffile.imread(f).size for f in files[::2]) / 1e6
    _row("BigNeuron sample (2 stacks + SWC)", seconds, cpu, 2, megavoxels, _copy_seconds(files, work / "copy_bn"))


def bench_mtneuro(work: Path) -> None:
    from nnunet_ext.dataset_conversion.mtneuro import convert_mtneuro

    cutouts = work / "mtneuro"
    cutouts.mkdir()
    rng = np.random.default_rng(0)
    for region in ("cortex", "striatum", "vp", "zi"):
        np.save(cutouts / f"{region}_image.npy", rng.integers(0, 255, (361, 256, 256), dtype=np.uint8))
        np.save(cutouts / f"{region}_labels.npy", rng.integers(0, 4, (361, 256, 256), dtype=np.uint8))
    files = sorted(cutouts.glob("*.npy"))
    for dims, dataset_id in ((2, 21), (3, 22)):
        folder, seconds, cpu = _timed(convert_mtneuro, work / "raw", dataset_id, f"MTNeuro{dims}D", dimensions=dims,
                                 cutout_dir=cutouts, download=False, progress=False)
        n_cases = len(list((folder / "imagesTr").iterdir())) + len(list((folder / "imagesTs").iterdir()))
        megapixels = 3 * 351 * 256 * 256 / 1e6 if dims == 2 else n_cases * 8 * 256 * 256 / 1e6
        _row(f"MTNeuro 4-class {dims}D (noise cutouts)", seconds, cpu, n_cases, megapixels,
             _copy_seconds(files[:6], work / f"copy_mt{dims}"))


def bench_aggregate(bids_folder: Path | None, work: Path) -> None:
    from nnunet_ext.dataset_conversion.aggregate_datasets import aggregate_datasets
    from nnunet_ext.dataset_conversion.bids_microscopy import convert_bids_microscopy

    if bids_folder is None:
        return
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        second = convert_bids_microscopy(DATA / "ads_sem", work / "raw", 2, "ADSSEM2", progress=False)
        folder, seconds, cpu = _timed(aggregate_datasets, [bids_folder, second], work / "raw", 3, "AGG", n_folds=5,
                                 subjects_shared_across_sources=False,
                                 progress=False)
    files = [p for d in (bids_folder, second) for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs")
             for p in sorted((d / sub).glob("*.png"))]
    from PIL import Image

    megapixels = sum(np.prod(Image.open(f).size) for f in files if "images" in f.parent.name) / 1e6
    _row("aggregate 2 x ads_sem (20 cases)", seconds, cpu, 20, megapixels, _copy_seconds(files, work / "copy_agg"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large-side", type=int, default=16384, help="side of the synthetic AxonCallosumEM TIFF")
    parser.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder)")
    parser.add_argument("--only", nargs="+", choices=("bids", "bigneuron", "mtneuro", "axoncallosum"),
                        help="run only these benchmarks (bids includes PNG levels and aggregation)")
    args = parser.parse_args()
    wanted = set(args.only or ("bids", "bigneuron", "mtneuro", "axoncallosum"))
    import nnunetv2.dataset_conversion.generate_dataset_json  # noqa: F401  (imports out of the timings)
    import PIL.PngImagePlugin  # noqa: F401
    import tifffile  # noqa: F401

    print(f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f} at start")
    context = tempfile.TemporaryDirectory(prefix="bench_conversion_") if not args.keep else None
    work = Path(args.keep or context.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        if "bids" in wanted:
            bids_folder = bench_bids(work)
            if bids_folder is not None:
                bench_png_levels(bids_folder, work)
            bench_aggregate(bids_folder, work)
        if "bigneuron" in wanted:
            bench_bigneuron(work)
        if "mtneuro" in wanted:
            bench_mtneuro(work)
        if "axoncallosum" in wanted:
            bench_axoncallosum(work, args.large_side)
    finally:
        if context is not None:
            context.cleanup()
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
