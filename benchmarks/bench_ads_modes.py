"""Benchmark: every morphometrics mode of issue 17 on the ten ads_sem images, as users run it (whole processes).

Stages a copy of ads_sem with an unmyelinated-axon mask per image in its label derivatives (discs of 0.3-0.8 um
radius on a 3-um grid, kept where they lie wholly in background) and a nerve mask per image (two fascicles: the left
and right halves less a margin), then times one ``nnunet-ext morphometrics`` process on the ten images per mode:
default, ``--no-index-maps``, ``-c``, ``--format xlsx``, with the uaxon masks (measured whenever present), and with
``--nerve``. With ``--ads-python`` (a Python with AxonDeepSeg 5.5, its own environment) it also compares one image's
unmyelinated-axon table with AxonDeepSeg's.

    python benchmarks/bench_ads_modes.py [--repeats 2] [--ads-python /work/ads-venv/bin/python]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from nnunet_ext.morphometrics.measure_files import discover_inputs, load_masks

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def stage(work: Path) -> tuple[Path, Path, dict]:
    """A copy of ads_sem with an unmyelinated-axon mask per image in its label derivatives
    (``<stem>_seg-uaxon-manual.png``: discs of 0.3-0.8 um radius on a 3-um grid, kept where wholly in background)
    and a folder of nerve masks (``<stem>_seg-nerve.png``: two fascicles, the left and right halves less a margin).
    Returns the BIDS root, the nerve folder and the pixel size of each image."""
    root, nerves = work / "bids", work / "nerve"
    shutil.copytree(DATA / "ads_sem", root)
    nerves.mkdir()
    sizes = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for item in discover_inputs(root):
            axon, myelin = load_masks(item)
            sizes[item.name] = item.pixel_size_um
            yy, xx = np.mgrid[: axon.shape[0], : axon.shape[1]]
            spacing = max(int(3.0 / item.pixel_size_um), 8)
            uaxon = np.zeros(axon.shape, bool)
            occupied = axon | myelin
            rng = np.random.default_rng(0)
            for cy in range(spacing // 2, axon.shape[0], spacing):
                for cx in range(spacing // 2, axon.shape[1], spacing):
                    r = rng.uniform(0.3, 0.8) / item.pixel_size_um
                    y0, y1, x0, x1 = (max(int(cy - r - 1), 0), int(cy + r + 2), max(int(cx - r - 1), 0),
                                      int(cx + r + 2))
                    disc = np.hypot(yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx) <= r
                    if not (disc & occupied[y0:y1, x0:x1]).any():
                        uaxon[y0:y1, x0:x1] |= disc
            nerve = np.zeros(axon.shape, bool)
            half = axon.shape[1] // 2
            nerve[10:-10, 10:half - 5] = True
            nerve[10:-10, half + 5:-10] = True
            Image.fromarray(uaxon.astype(np.uint8) * 255).save(
                item.axon_path.with_name(f"{item.name}_seg-uaxon-manual.png"))
            Image.fromarray(nerve.astype(np.uint8) * 255).save(nerves / f"{item.name}_seg-nerve.png")
    return root, nerves, sizes


def run_mode(source: Path, options, out: Path) -> tuple[float, float]:
    """Wall and CPU time of one ``nnunet-ext morphometrics`` process on ``source``."""
    import resource

    command = [sys.executable, "-m", "nnunet_ext.cli", "morphometrics", str(source), "-o", str(out), "--overwrite",
               *options]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def compare_with_ads(ads_python: str, root: Path, name: str, pixel_size: float, ours: Path) -> None:
    """Our unmyelinated-axon table of one image against AxonDeepSeg's ``get_axon_morphometrics(uaxon)``."""
    import pandas as pd

    mask = next(root.glob(f"derivatives/labels/**/{name}_seg-uaxon-manual.png"))
    script = f"""
import numpy as np
from PIL import Image
from AxonDeepSeg.morphometrics.compute_morphometrics import get_axon_morphometrics, rearrange_column_names_for_saving
u = np.array(Image.open({str(mask)!r})) > 0
df = rearrange_column_names_for_saving(get_axon_morphometrics(u, pixel_size={pixel_size}))
df.to_csv({str(ours / 'ads_uaxon.csv')!r}, index=False)
"""
    subprocess.run([ads_python, "-c", script], check=True, capture_output=True)
    theirs = pd.read_csv(ours / "ads_uaxon.csv")
    mine = pd.read_csv(ours / f"{name}_uaxon_morphometrics.csv")
    same_order = list(theirs.columns) == [c for c in mine.columns if c in theirs.columns]
    worst = max(float(np.nanmax(np.abs(theirs[c].to_numpy(float) - mine[c].to_numpy(float))))
                for c in theirs.columns) if len(mine) == len(theirs) else float("nan")
    print(f"unmyelinated axons of {name}: {len(mine)} here, {len(theirs)} in AxonDeepSeg; columns "
          f"{'in the same order' if same_order else 'DIFFER'}; largest difference {worst:.2e}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ads-python", default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root, nerves, sizes = stage(work)
        plain = DATA / "ads_sem"
        modes = {"default (index images on)": (plain, []), "--no-index-maps": (plain, ["--no-index-maps"]),
                 "-c (instance maps too)": (plain, ["-c"]), "--format xlsx": (plain, ["--format", "xlsx"]),
                 "with uaxon masks": (root, []), "with uaxon masks, --nerve": (root, ["--nerve", str(nerves)])}
        print(f"{'mode':30s} one process on the ten images, best of {args.repeats}: wall s, CPU s")
        for mode, (source, options) in modes.items():
            times = [run_mode(source, options, work / "out") for _ in range(args.repeats)]
            print(f"{mode:30s} {min(t[0] for t in times):.2f}  {min(t[1] for t in times):.2f}")
        if args.ads_python:
            run_mode(root, ["--no-index-maps", "--no-qc"], work / "compare")
            for name in sorted(sizes):
                compare_with_ads(args.ads_python, root, name, sizes[name], work / "compare")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
