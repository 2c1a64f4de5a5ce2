"""Benchmark: per-axon morphometrics on the ten ads_sem images, against one scipy.ndimage.label pass and ADS.

Prints, per image: axons, our time (wall and CPU, best of --repeats), time per axon, the ratio to one
``scipy.ndimage.label`` pass on the same mask (the floor for this work), and with --replica the time of ADS's
algorithm written with scikit-image (``nnunet_ext.morphometrics.reference``) plus whether every value agrees; with
--stages the CPU time of each stage run one after the other (best of --repeats), to see where the time goes.
AxonDeepSeg 5.5 itself took 8.6 s on sub-rat5 and about 22 s for all ten images on an idle 2-core machine of this
class (``../shared/data/README.md``); with --ads-python a Python that has ``axondeepseg`` installed (its own
virtual environment; never a project dependency) is timed on the same masks in a subprocess.

    python benchmarks/bench_morphometrics.py [--replica] [--stages] [--repeats 5] [--ads-python /path/to/ads/python]

End to end (``--end-to-end``, implied by ``--ads-python``), as users run it, whole processes, default options (QC
overlays on): ``nnunet-ext morphometrics`` on the ten ads_sem images and on 20 phantom images of 600 x 600
(``nnunet-ext phantoms``), against ``axondeepseg_morphometrics`` (the CLI beside ``--ads-python``) on the same
masks in the same run, with the ratios; the cold start (an empty ``NUMBA_CACHE_DIR``) against the warm run; and a
4-megapixel phantom of large touching fibres against one of small separate fibres (in process and as processes).

Takes about 15 s with the defaults on an idle 2-core machine (plus about a minute with --replica, and about two
minutes for the end-to-end part with AxonDeepSeg).
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


# ---------------------------------------------------------------------------------------------------------------
# End to end, as processes


def run_process(command, cwd=None, env=None) -> tuple[float, float]:
    """Wall and CPU seconds (user + system of the process and its children) of one command; raises on failure."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def best_process(command, repeats, prepare=None, **kwargs) -> tuple[float, float]:
    """Best wall (and the CPU of that run) of ``repeats`` runs; ``prepare()`` before each (not timed)."""
    runs = []
    for _ in range(max(1, repeats)):
        if prepare is not None:
            prepare()
        runs.append(run_process(command, **kwargs))
    return min(runs)


def nnunet_ext_command() -> list[str]:
    return [sys.executable, "-m", "nnunet_ext.cli"]


def stage_for_ads(items, folder: Path, one_folder: bool) -> list[Path]:
    """Copy each input's image and masks into AxonDeepSeg's layout (``<stem>.png`` + ``_seg-axon/-myelin/
    -axonmyelin.png``, ``pixel_size_in_micrometer.txt``): one folder for all (one pixel size) or one per image."""
    import shutil

    from PIL import Image

    folders = []
    for item in items:
        target = folder if one_folder else folder / item.name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(item.image_path, target / f"{item.name}.png")
        shutil.copy(item.axon_path, target / f"{item.name}_seg-axon.png")
        shutil.copy(item.myelin_path, target / f"{item.name}_seg-myelin.png")
        axonmyelin = Path(str(item.axon_path).replace("_seg-axon", "_seg-axonmyelin"))
        if axonmyelin.is_file():  # ADS's index overlay opens it with Pillow and wants mode L (some are grey+alpha)
            Image.open(axonmyelin).convert("L").save(target / f"{item.name}_seg-axonmyelin.png")
        else:  # ADS's CLI wants it for its index overlay
            axon = np.asarray(Image.open(item.axon_path).convert("L")) > 0
            myelin = np.asarray(Image.open(item.myelin_path).convert("L")) > 0
            Image.fromarray(np.where(axon, 255, np.where(myelin, 127, 0)).astype(np.uint8)).save(
                target / f"{item.name}_seg-axonmyelin.png")
        (target / "pixel_size_in_micrometer.txt").write_text(f"{item.pixel_size_um}")
        if target not in folders:
            folders.append(target)
    return folders


def ads_cli(ads_python: str) -> list[str]:
    cli = Path(ads_python).parent / "axondeepseg_morphometrics"
    if cli.is_file():
        return [str(cli)]
    return [ads_python, "-m", "AxonDeepSeg.morphometrics.launch_morphometrics_computation"]


def make_phantoms(folder: Path, *options) -> Path:
    run_process(nnunet_ext_command() + ["phantoms", str(folder), *map(str, options)])
    return folder


def end_to_end(args, work: Path) -> dict:
    """The end-to-end figures; prints them and returns them."""
    import shutil

    from nnunet_ext.morphometrics.kernels import using_aot

    results = {}
    kernels = "compiled ahead of time" if using_aot() else "numba JIT (cached)"
    print(f"\nEnd to end, as processes (default options, QC on); our kernels: {kernels}; load average "
          f"{os.getloadavg()[0]:.1f}; best of {args.e2e_repeats} (ours) and {args.ads_repeats} (AxonDeepSeg)")
    jit_env = {**os.environ, "NNUNET_EXT_JIT_KERNELS": "1"}
    phantoms = make_phantoms(work / "phantoms20", "--contrasts", "TEM", "--subjects", 10, "--samples-per-subject", 2,
                             "--size", 600, 600, "--seed", 14)
    flat = work / "phantoms20_flat"
    stage_for_ads(discover_inputs(phantoms), flat, one_folder=True)  # the same files for both tools
    sets = {"ads_sem (10 images)": (DATA / "ads_sem", discover_inputs(DATA / "ads_sem"), False),
            "phantoms (20 x 600^2)": (flat, discover_inputs(flat), True)}
    for label, (source, items, one_folder) in sets.items():
        out = work / "out"

        def clean():
            shutil.rmtree(out, ignore_errors=True)

        ours = nnunet_ext_command() + ["morphometrics", str(source), "-o", str(out)]
        clean()
        run_process(ours)  # compiles / loads the kernels once
        warm = best_process(ours, args.e2e_repeats, prepare=clean)
        no_qc = best_process(ours + ["--no-qc"], args.e2e_repeats, prepare=clean)
        jit = best_process(ours, args.e2e_repeats, prepare=clean, env=jit_env) if using_aot() else warm
        line = (f"  {label:22s} ours {warm[0]:5.2f} s wall {warm[1]:5.2f} s CPU (--no-qc {no_qc[0]:.2f} s; JIT "
                f"kernels {jit[0]:.2f} s)")
        results[label] = {"ours": warm, "ours_no_qc": no_qc, "ours_jit": jit}
        if args.ads_python:
            staged = work / "ads_staged"

            def stage():
                shutil.rmtree(staged, ignore_errors=True)
                stage_for_ads(items, staged, one_folder)

            stage()
            folders = [staged] if one_folder else sorted(p for p in staged.iterdir() if p.is_dir())
            ads = best_process(ads_cli(args.ads_python) + ["-i", *map(str, folders)], args.ads_repeats,
                               prepare=stage, cwd=work)
            results[label]["ads"] = ads
            line += (f"; AxonDeepSeg {ads[0]:5.2f} s wall {ads[1]:5.2f} s CPU: {ads[0] / warm[0]:4.1f}x wall, "
                     f"{ads[1] / warm[1]:4.1f}x CPU (JIT kernels {ads[0] / jit[0]:.1f}x wall; target >= 10x)")
        print(line)
    # cold start: an empty numba cache, as on a fresh install
    cache = work / "numba_cache"
    colds, warms = [], []
    for _ in range(args.cold_repeats):
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir()
        env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
        ours = nnunet_ext_command() + ["morphometrics", str(flat), "-o", str(work / "out")]
        shutil.rmtree(work / "out", ignore_errors=True)
        colds.append(run_process(ours, env=env))
        shutil.rmtree(work / "out", ignore_errors=True)
        warms.append(run_process(ours, env=env))
    cold, warm = min(colds), min(warms)
    results["cold"] = {"cold": cold, "warm": warm}
    print(f"  cold start (empty NUMBA_CACHE_DIR), phantoms: {cold[0]:.2f} s wall ({cold[1]:.2f} s CPU) against "
          f"{warm[0]:.2f} s warm: {cold[0] - warm[0]:+.2f} s (target < 3 s; kernels: {kernels})")
    if using_aot():  # what a fresh install without the ahead-of-time build pays, and what that build costs
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir()
        env = {**jit_env, "NUMBA_CACHE_DIR": str(cache)}
        shutil.rmtree(work / "out", ignore_errors=True)
        jit_cold = run_process(ours, env=env)
        shutil.rmtree(work / "out", ignore_errors=True)
        jit_warm = run_process(ours, env=env)
        build = run_process([sys.executable, "-m", "nnunet_ext.morphometrics.compile_kernels", "--output-dir",
                             str(work)])
        results["cold_jit"] = {"cold": jit_cold, "warm": jit_warm, "aot_build": build}
        print(f"  without the ahead-of-time kernels (NNUNET_EXT_JIT_KERNELS=1): cold {jit_cold[0]:.2f} s wall "
              f"({jit_cold[1]:.2f} s CPU), warm {jit_warm[0]:.2f} s: {jit_cold[0] - jit_warm[0]:+.2f} s; building "
              f"them (python -m nnunet_ext.morphometrics.compile_kernels, once at install): {build[0]:.1f} s wall "
              f"({build[1]:.1f} s CPU)")
    # cost follows pixels: large touching fibres against small separate ones, 4 megapixels each
    touching = make_phantoms(work / "touching", "--contrasts", "TEM", "--subjects", 1, "--samples-per-subject", 1,
                             "--size", 2000, 2000, "--touching", 1.0, "--density", 0.8, "--axon-diameter", 8, 20,
                             "--seed", 2)
    separate = make_phantoms(work / "separate", "--contrasts", "TEM", "--subjects", 1, "--samples-per-subject", 1,
                             "--size", 2000, 2000, "--touching", 0, "--axon-diameter", 0.5, 1.5, "--seed", 3)
    timings = {}
    for label, root in (("touching", touching), ("separate", separate)):
        item = discover_inputs(root)[0]
        axon, myelin = load_masks(item)
        wall, cpu, table = best_time(lambda: axon_morphometrics(axon, myelin, item.pixel_size_um,
                                                                threads=args.threads), max(args.repeats, 7))
        out = work / "out"
        process = best_process(nnunet_ext_command() + ["morphometrics", str(root), "-o", str(out)],
                               args.e2e_repeats, prepare=lambda: shutil.rmtree(out, ignore_errors=True))
        timings[label] = (wall, cpu, process[0], len(table))
    (tw, tc, tp, tn), (sw, sc, sp, sn) = timings["touching"], timings["separate"]
    results["layout"] = timings
    print(f"  4 MP, large touching fibres ({tn} axons) against small separate ones ({sn}): in process {tw:.3f} s / "
          f"{sw:.3f} s = {tw / sw:.2f}x wall ({tc / sc:.2f}x CPU); as processes {tp:.2f} s / {sp:.2f} s = "
          f"{tp / sp:.2f}x (target <= 1.5x)")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--replica", action="store_true", help="also time and compare the scikit-image replica")
    parser.add_argument("--ads-python", default=None, help="python of a virtual environment with axondeepseg")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stages", action="store_true", help="also print the CPU time of every stage")
    parser.add_argument("--end-to-end", action="store_true",
                        help="also time the CLI as processes (implied by --ads-python)")
    parser.add_argument("--e2e-repeats", type=int, default=3, help="runs of our CLI per figure (best is kept)")
    parser.add_argument("--ads-repeats", type=int, default=1, help="runs of AxonDeepSeg's CLI per figure")
    parser.add_argument("--cold-repeats", type=int, default=2, help="cold/warm pairs for the cold start")
    parser.add_argument("--work", default=None, help="folder for the generated data (default: a temporary one)")
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
    if args.end_to_end or args.ads_python:
        import tempfile

        if args.work:
            Path(args.work).mkdir(parents=True, exist_ok=True)
            end_to_end(args, Path(args.work))
        else:
            with tempfile.TemporaryDirectory(prefix="bench_morphometrics_") as work:
                end_to_end(args, Path(work))
        print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
