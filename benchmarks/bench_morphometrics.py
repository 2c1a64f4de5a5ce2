"""Benchmark: per-axon morphometrics on the ten ads_sem images, against one scipy.ndimage.label pass and ADS.

Prints, per image: axons, our time (wall and CPU, best of --repeats), time per axon, the ratio to one
``scipy.ndimage.label`` pass on the same mask (the floor for this work), and with --replica the time of ADS's
algorithm written with scikit-image (``nnunet_ext.morphometrics.reference``) plus whether every value agrees; with
--stages the CPU time of each stage run one after the other (best of --repeats), to see where the time goes.
AxonDeepSeg 5.5 itself took 8.6 s on sub-rat5 and about 22 s for all ten images on an idle 2-core machine of this
class (``../shared/data/README.md``); with --ads-python a Python that has ``axondeepseg`` installed (its own
virtual environment; never a project dependency) is timed on the same masks in a subprocess.

    python benchmarks/bench_morphometrics.py [--replica] [--stages] [--repeats 5] [--ads-python /path/to/ads/python]

Takes about 15 s with the defaults on an idle 2-core machine (plus about a minute with --replica).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from nnunet_ext.morphometrics import ADS_COLUMNS, axon_morphometrics
from nnunet_ext.morphometrics.measure_files import discover_inputs, load_masks

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ADS_SECONDS = {"sub-rat5_sample-data14_SEM": 8.6, "all ten": 22.0}  # README of ../shared/data

ADS_SNIPPET = r"""
import sys, time, json, numpy as np
from PIL import Image
from AxonDeepSeg.morphometrics.compute_morphometrics import get_axon_morphometrics
out = {}
for name, axon_path, myelin_path, pixel_size in json.loads(sys.argv[1]):
    axon = np.asarray(Image.open(axon_path).convert("L")) > 0
    myelin = np.asarray(Image.open(myelin_path).convert("L")) > 0
    start = time.perf_counter()
    get_axon_morphometrics(axon, im_myelin=myelin, pixel_size=pixel_size, axon_shape="circle")
    out[name] = time.perf_counter() - start
print(json.dumps(out))
"""


def best_time(function, repeats):
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), result


def agreement(ours, reference) -> str:
    """Rows whose ADS columns differ from the replica by more than 1e-6 (axis angles modulo pi)."""
    bad = np.zeros(len(ours), bool)
    for column in ADS_COLUMNS:
        a, b = ours[column].to_numpy(float), reference[column].to_numpy(float)
        if "orientation" in column:
            a, b = np.mod(a, np.pi), np.mod(b, np.pi)
            a[np.isclose(a, np.pi)] = 0
            b[np.isclose(b, np.pi)] = 0
        bad |= ~(np.isclose(a, b, rtol=1e-6, atol=1e-12) | (np.isnan(a) & np.isnan(b)))
    reseeded = ours["note"].str.contains("centroid lies outside").to_numpy()
    return f"{bad.sum()} rows differ ({(bad & reseeded).sum()} reseeded on purpose)"


def stage_times(axon, myelin, repeats) -> dict:
    """CPU seconds of each stage of ``axon_morphometrics``, run one after the other in this thread (best of N)."""
    from nnunet_ext.morphometrics import _kernels
    from nnunet_ext.morphometrics.axon import _shape_properties, fibre_labels, prepare_masks

    weights = _kernels._PERIMETER_WEIGHTS
    axon, myelin = prepare_masks(axon, myelin)
    times = {}

    def run(name, function, *args):
        best, result = float("inf"), None
        for _ in range(repeats):
            start = time.process_time()
            result = function(*args)
            best = min(best, time.process_time() - start)
        times[name] = best
        return result

    labels, n = run("label", lambda: ndi.label(axon, structure=np.ones((3, 3), bool), output=np.int32))
    count, bbox, sums, mu, exact, exact_ok, _ = run("axon moments", _kernels.label_stats, labels, n, 0, 0)
    run("axon shape", _shape_properties, count, mu, exact, exact_ok)
    run("axon hulls", _kernels.label_convex_area, labels, n, bbox, 0, 0)
    run("axon perimeter", _kernels.label_perimeter, labels, n, weights)
    components = run("mask components", _kernels.mask_components, axon, myelin)
    fibres, _ = run("fibre assignment", fibre_labels, axon, myelin, labels, sums[1:] / count[1:, None], None, bbox,
                    components)
    run("fibre moments", _kernels.label_stats, fibres, n, 0, 0)
    run("fibre perimeter", _kernels.label_perimeter, fibres, n, weights)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--replica", action="store_true", help="also time and compare the scikit-image replica")
    parser.add_argument("--ads-python", default=None, help="python of a virtual environment with axondeepseg")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stages", action="store_true", help="also print the CPU time of every stage")
    args = parser.parse_args(argv)
    root = DATA / "ads_sem"
    if not root.is_dir():
        print(f"{root} not found", file=sys.stderr)
        return 1
    items = discover_inputs(root)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (timings are best of {args.repeats})")
    axon_morphometrics(*load_masks(items[0]), items[0].pixel_size_um)  # compile / load the kernels once
    header = f"{'image':34s} {'size':>10s} {'axons':>6s} {'ours s':>7s} {'cpu s':>6s} {'us/axon':>8s} " \
             f"{'label ms':>8s} {'x label':>7s}"
    print(header + ("  replica s  x faster  agreement" if args.replica else ""))
    totals = {"ours": 0.0, "cpu": 0.0, "label": 0.0, "replica": 0.0, "axons": 0}
    for item in items:
        axon, myelin = load_masks(item)
        wall, cpu, table = best_time(lambda: axon_morphometrics(axon, myelin, item.pixel_size_um,
                                                                threads=args.threads), args.repeats)
        label_wall, _, _ = best_time(lambda: ndi.label(axon, structure=np.ones((3, 3))), args.repeats)
        totals["ours"] += wall
        totals["cpu"] += cpu
        totals["label"] += label_wall
        totals["axons"] += len(table)
        line = f"{item.name:34s} {axon.shape[0]:>4d}x{axon.shape[1]:<5d} {len(table):>6d} {wall:7.3f} {cpu:6.3f} " \
               f"{1e6 * wall / max(len(table), 1):8.1f} {1e3 * label_wall:8.1f} {wall / label_wall:7.1f}"
        if args.replica:
            from nnunet_ext.morphometrics.reference import ads_axon_morphometrics

            replica_wall, _, reference = best_time(lambda: ads_axon_morphometrics(axon, myelin, item.pixel_size_um), 1)
            totals["replica"] += replica_wall
            line += f"  {replica_wall:9.2f} {replica_wall / wall:8.1f}  {agreement(table, reference)}"
        print(line)
    print(f"{'all ten':34s} {'':>10s} {totals['axons']:>6d} {totals['ours']:7.3f} {totals['cpu']:6.3f} "
          f"{1e6 * totals['ours'] / totals['axons']:8.1f} {1e3 * totals['label']:8.1f} "
          f"{totals['ours'] / totals['label']:7.1f}" +
          (f"  {totals['replica']:9.2f} {totals['replica'] / totals['ours']:8.1f}" if args.replica else ""))
    if args.stages:
        rows = {item.name: stage_times(*load_masks(item), args.repeats) for item in items}
        names = list(next(iter(rows.values())))
        print("CPU ms per stage, one after the other (the rest of a run is building the table; with 2 threads the "
              "mask components, perimeters and hulls run beside the labelling, the moments and the fibre "
              "assignment):")
        print(f"{'image':34s} " + " ".join(f"{name:>16s}" for name in names) + f" {'sum':>7s}")
        for name, row in [*rows.items(), ("all ten", {k: sum(r[k] for r in rows.values()) for k in names})]:
            print(f"{name:34s} " + " ".join(f"{1e3 * row[k]:16.1f}" for k in names) +
                  f" {1e3 * sum(row.values()):7.1f}")
    rat5 = next(i for i in items if i.name.startswith("sub-rat5"))
    axon, myelin = load_masks(rat5)
    rat5_wall, _, _ = best_time(lambda: axon_morphometrics(axon, myelin, rat5.pixel_size_um, threads=args.threads),
                                args.repeats)
    print(f"vs AxonDeepSeg 5.5 as measured on an idle machine of this class: sub-rat5 {ADS_SECONDS[rat5.name]:.1f} s "
          f"/ {rat5_wall:.3f} s = {ADS_SECONDS[rat5.name] / rat5_wall:.1f}x; all ten {ADS_SECONDS['all ten']:.0f} s / "
          f"{totals['ours']:.2f} s = {ADS_SECONDS['all ten'] / totals['ours']:.1f}x (target >= 20x)")
    if args.ads_python:
        jobs = [(i.name, str(i.axon_path), str(i.myelin_path), i.pixel_size_um) for i in items]
        result = subprocess.run([args.ads_python, "-c", ADS_SNIPPET, json.dumps(jobs)], capture_output=True,
                                text=True, check=True)
        ads = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"AxonDeepSeg measured now: sub-rat5 {ads[rat5.name]:.2f} s ({ads[rat5.name] / rat5_wall:.1f}x), all "
              f"ten {sum(ads.values()):.2f} s ({sum(ads.values()) / totals['ours']:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
