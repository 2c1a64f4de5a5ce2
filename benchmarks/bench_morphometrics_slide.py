"""Benchmark: a synthetic whole slide (default 32768 x 32768 = 1.07 gigapixels) measured chunk by chunk.

The slide is a tiled, zlib-compressed TIFF label image (0 background, 1 myelin, 2 axon) built as a mirrored
mosaic of ads_sem/sub-rat5's manual masks, so fibres cross every chunk border. Prints wall time, CPU time, peak
memory (maximum resident set size of this process), axons, and throughput.

``--nerve`` also measures the slide in nerve mode, against the plain run of the same process: with a nerve mask
(a Zarr of large discs, each a fascicle spanning many chunks, and a thin band joining two of them through a row of
chunks) and with the nerve from the label slide (``--nerve-label``: tissue 4 written into a second TIFF), and
checks that the fascicles' pixels add up to the mask's.

    python benchmarks/bench_morphometrics_slide.py [--side 32768] [--chunk 2048] [--halo 192] [--workers 2] [--nerve]
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def mosaic_tiles(base: np.ndarray, side: int, tile: int):
    """Tiles (row-major) of a side x side mirrored mosaic of ``base``."""
    height, width = base.shape

    def index(coords, size):
        block, offset = np.divmod(coords, size)
        return np.where(block % 2 == 1, size - 1 - offset, offset)

    for ty in range(0, side, tile):
        rows = index(np.arange(ty, ty + tile), height)
        for tx in range(0, side, tile):
            yield base[rows[:, None], index(np.arange(tx, tx + tile), width)[None, :]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=32768)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--halo", type=int, default=192)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slide", default=None, help="reuse or write the slide TIFF here (default: a temp file)")
    parser.add_argument("--nerve", action="store_true", help="also time the two nerve modes")
    args = parser.parse_args(argv)
    import tifffile

    from nnunet_ext.morphometrics.measure_files import discover_inputs, load_masks
    from nnunet_ext.morphometrics.slide_chunks import slide_morphometrics

    rat5 = next(i for i in discover_inputs(DATA / "ads_sem") if i.name.startswith("sub-rat5"))
    axon, myelin = load_masks(rat5)
    base = np.zeros(axon.shape, np.uint8)
    base[myelin] = 1
    base[axon] = 2
    path = Path(args.slide) if args.slide else Path(tempfile.gettempdir()) / f"bench_slide_{args.side}.tif"
    if not path.exists():
        start = time.perf_counter()
        tifffile.imwrite(path, mosaic_tiles(base, args.side, 512), shape=(args.side, args.side), dtype=np.uint8,
                         tile=(512, 512), compression="zlib", bigtiff=True)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - start:.0f} s")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    wall, cpu = time.perf_counter(), time.process_time()
    result = slide_morphometrics(path, rat5.pixel_size_um, chunk_size=args.chunk, halo=args.halo,
                                 num_workers=args.workers, tile_size_px=512, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # ru_maxrss is in KiB on Linux
    pixels = args.side ** 2
    print(f"slide {args.side}x{args.side} ({pixels / 1e9:.2f} gigapixels), chunk {args.chunk} + halo {args.halo}, "
          f"{result.chunks} chunks, {args.workers} threads, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"axons {len(result.per_axon):,}; fibres reaching a halo {result.halo_exceeded}")
    print(f"wall {wall:.1f} s, CPU {cpu:.1f} s, {pixels / wall / 1e6:.1f} Mpx/s, {1e6 * wall / len(result.per_axon):.1f}"
          f" us per axon; peak memory {peak:.2f} GB (before the run {rss_before:.2f} GB)")
    print(f"AVF {result.aggregate['avf']:.4f}, MVF {result.aggregate['mvf']:.4f}, aggregate g-ratio "
          f"{result.aggregate['gratio_aggregate']:.4f}, {result.aggregate['axon_density (per mm^2)']:.1f} axons/mm^2")
    if args.nerve:
        bench_nerve_modes(path, args, rat5.pixel_size_um, wall)
    return 0


def nerve_tiles(side: int, tile: int):
    """Row-major tiles of the nerve: discs of radius side/5 at (side/4, side/4), (side/4, 3 side/4) and (3 side/4,
    side/2), the first two joined by a band 64 px high."""
    centres = [(side / 4, side / 4), (side / 4, 3 * side / 4), (3 * side / 4, side / 2)]
    for ty in range(0, side, tile):
        yy = np.arange(ty, ty + tile)[:, None]
        for tx in range(0, side, tile):
            xx = np.arange(tx, tx + tile)[None, :]
            mask = np.zeros((tile, tile), bool)
            for cy, cx in centres:
                mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < (side / 5) ** 2
            mask |= (np.abs(yy - side / 4) < 32) & (xx > side / 4) & (xx < 3 * side / 4)
            yield mask


def bench_nerve_modes(path: Path, args, pixel_size: float, plain_wall: float) -> None:
    import tifffile
    import zarr

    from nnunet_ext.morphometrics.slide_chunks import slide_morphometrics

    side, tile = args.side, 512
    nerve_path = path.with_name(path.stem + "_nerve.zarr")
    label_path = path.with_name(path.stem + "_tissue.tif")
    if not nerve_path.exists():
        nerve = zarr.create_array(str(nerve_path), shape=(side, side), chunks=(tile, tile), dtype=bool)
        tiles = nerve_tiles(side, tile)
        for ty in range(0, side, tile):
            for tx in range(0, side, tile):
                nerve[ty:ty + tile, tx:tx + tile] = next(tiles)
    if not label_path.exists():
        source = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
        nerve = zarr.open_array(str(nerve_path), mode="r")

        def with_tissue():
            for ty in range(0, side, tile):
                for tx in range(0, side, tile):
                    block = np.asarray(source[ty:ty + tile, tx:tx + tile])
                    yield np.where(np.asarray(nerve[ty:ty + tile, tx:tx + tile]) & (block == 0), 4, block)

        tifffile.imwrite(label_path, with_tissue(), shape=(side, side), dtype=np.uint8, tile=(tile, tile),
                         compression="zlib", bigtiff=True)
    expected = int(sum(int(np.count_nonzero(t)) for t in nerve_tiles(side, tile)))
    for mode, source, options in (("nerve mask", path, {"nerve": nerve_path}),
                                  ("nerve label", label_path, {"nerve_label": 4})):
        wall, cpu = time.perf_counter(), time.process_time()
        result = slide_morphometrics(source, pixel_size, chunk_size=args.chunk, halo=args.halo,
                                     num_workers=args.workers, progress=False, **options)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        pixels = result.fascicle_counts[0]
        inside = (result.per_axon["fascicle_id"] >= 0).sum()
        # the label mode's nerve also holds the fibres that touch the tissue, beyond the discs
        check = (f"{'=' if pixels[1:].sum() == expected else '!='} the mask's {expected:,}" if "nerve" in options
                 else "the tissue with the fibres touching it")
        print(f"{mode}: wall {wall:.1f} s ({wall / plain_wall:.2f} x the plain run), CPU {cpu:.1f} s; "
              f"{len(pixels) - 1} fascicles over {result.chunks} chunks, {pixels[1:].sum():,} nerve px ({check}), "
              f"{inside:,} axons in them, AVF in the nerve {result.aggregate['avf']:.4f}")


if __name__ == "__main__":
    sys.exit(main())
