"""Timings of the evaluation module (prints figures; not a test).

1. Tracing metrics: the KD-tree-pruned exact distances against brute force (all points x all segments, chunked
   numpy), on the BigNeuron sample pair and on synthetic branching trees up to 100k nodes.
2. Segmentation metrics on the real AxonDeepSeg demo masks (1541 x 1096, 3 labels): per-case cost, our HD95
   against MONAI's compute_hausdorff_distance (same value; time, and MONAI's import time).

Run: python benchmarks/bench_evaluation.py [--skip-monai]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from nnunet_ext.io.swc import read_swc, tree_from_arrays
from nnunet_ext.evaluation.tracing_metrics import (
    neuron_distance,
    point_to_segment_distances,
    sample_edge_points,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def timed(function, *args, repeat: int = 3, **kwargs):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best, result


def brute_force_esa(tree_1, tree_2) -> float:
    """ESA by measuring every sample point against every segment (chunked to bound memory)."""
    means = []
    for source, target in ((tree_1, tree_2), (tree_2, tree_1)):
        points = sample_edge_points(*source.edges())
        starts, ends = target.edges()
        best = np.full(len(points), np.inf)
        chunk = max(1, 4_000_000 // max(len(points), 1))
        for begin in range(0, len(starts), chunk):
            a, b = starts[begin:begin + chunk], ends[begin:begin + chunk]
            n_points, n_segments = len(points), len(a)
            d = point_to_segment_distances(np.repeat(points, n_segments, axis=0), np.tile(a, (n_points, 1)),
                                           np.tile(b, (n_points, 1))).reshape(n_points, n_segments)
            best = np.minimum(best, d.min(axis=1))
        means.append(best.mean())
    return float(np.mean(means))


def random_tree(n_nodes: int, seed: int):
    """A branching random walk with ~1.5-voxel steps (typical SWC node spacing), branching every ~50 nodes."""
    rng = np.random.default_rng(seed)
    coordinates = np.zeros((n_nodes, 3))
    parents = np.full(n_nodes, -1)
    direction = rng.normal(size=3)
    tips = [0]
    for node in range(1, n_nodes):
        if rng.random() < 0.02 or not tips:
            parent = int(rng.integers(0, node))
        else:
            parent = tips.pop()
        direction = direction / np.linalg.norm(direction) + rng.normal(0, 0.3, 3)
        coordinates[node] = coordinates[parent] + 1.5 * direction / np.linalg.norm(direction)
        parents[node] = parent + 1
        tips.append(node)
    return tree_from_arrays(np.arange(1, n_nodes + 1), coordinates, parents)


def bench_tracing() -> None:
    print("== tracing metrics (ESA/DSA/PDS), exact KD-tree-pruned vs brute force")
    pairs = []
    if (DATA / "bigneuron_sample").is_dir():
        sample = DATA / "bigneuron_sample"
        pairs.append(("BigNeuron test.small vs test-small", read_swc(sample / "test.small.swc"),
                      read_swc(sample / "test-small.swc")))
        expected = read_swc(sample / "test-expected.swc")
        pairs.append(("BigNeuron test-expected vs +2 vox shift", expected, expected.translated([2.0, 0, 0])))
    rng = np.random.default_rng(0)
    for n in (2_000, 20_000, 100_000):
        tree = random_tree(n, seed=n)
        jittered = tree_from_arrays(tree.ids, tree.coordinates + rng.normal(0, 1.0, tree.coordinates.shape),
                                    tree.parent_ids)
        pairs.append((f"synthetic {n} nodes vs jittered copy", tree, jittered))
    for name, tree_1, tree_2 in pairs:
        fast_time, metrics = timed(neuron_distance, tree_1, tree_2)
        points = metrics.n_points_1 + metrics.n_points_2
        line = (f"{name:42s} nodes {len(tree_1):6d}/{len(tree_2):6d} points {points:7d}  ours {fast_time:7.3f} s "
                f"(ESA {metrics.ESA:.4f}, DSA {metrics.DSA:.4f}, PDS {metrics.PDS:.4f})")
        segments = len(tree_1) + len(tree_2)
        if points * segments <= 1.2e9:
            brute_time, brute_esa = timed(brute_force_esa, tree_1, tree_2, repeat=1)
            line += f"  brute force {brute_time:7.2f} s ({brute_time / fast_time:5.0f}x), " \
                    f"|ESA diff| {abs(brute_esa - metrics.ESA):.1e}"
        else:
            line += "  brute force skipped (too slow)"
        print(line, flush=True)


def bench_segmentation(skip_monai: bool) -> None:
    source = DATA / "ads_demo" / "image_seg-axonmyelin.png"
    if not source.is_file():
        print("ads_demo not available: segmentation benchmark skipped")
        return
    from skimage import io

    from nnunet_ext.evaluation.segmentation_metrics import hd95, metrics_per_class

    print("== segmentation metrics on ads_demo (1541 x 1096), prediction = reference shifted by 2 px")
    reference = io.imread(source)
    labels = np.zeros(reference.shape, np.int32)
    labels[reference == 127], labels[reference == 255] = 1, 2
    prediction = np.roll(labels, 2, axis=1)
    metrics_per_class(prediction, labels, [1], spacing=0.07)  # warm-up (imports)
    seconds, _ = timed(metrics_per_class, prediction, labels, [1, 2, (1, 2)], 0.07)
    print(f"metrics_per_class, 3 classes (Dice..HD95 px and um): {seconds:.3f} s per case "
          f"({seconds / (labels.size / 1e6):.3f} s per megapixel)")
    ours_time, ours = timed(hd95, prediction == 1, labels == 1)
    print(f"hd95 (myelin), ours: {ours_time:.3f} s, value {ours:.4f} px")
    if skip_monai:
        return
    command = "import time; t = time.perf_counter(); import monai.metrics; print(time.perf_counter() - t)"
    import_seconds = float(subprocess.run([sys.executable, "-c", command], capture_output=True, text=True,
                                          check=True).stdout.strip())
    import warnings

    import torch
    from monai.metrics import compute_hausdorff_distance

    def monai_hd95():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return float(compute_hausdorff_distance(torch.from_numpy((prediction == 1)[None, None]),
                                                    torch.from_numpy((labels == 1)[None, None]),
                                                    include_background=True, percentile=95).reshape(-1)[0])

    monai_time, monai_value = timed(monai_hd95)
    print(f"hd95 (myelin), MONAI compute_hausdorff_distance: {monai_time:.3f} s, value {monai_value:.4f} px "
          f"(ours/MONAI time {ours_time / monai_time:.2f}); importing monai.metrics in a fresh process: "
          f"{import_seconds:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-monai", action="store_true", help="do not import MONAI for the comparison")
    args = parser.parse_args()
    bench_tracing()
    bench_segmentation(args.skip_monai)


if __name__ == "__main__":
    main()
