"""Whole-slide morphometrics: label images larger than memory, measured chunk by chunk through Dask.

Each chunk is read with a halo of ``halo`` pixels on every side and measured in memory exactly as
:func:`~nnunet_ext.morphometrics.axon_morphometrics` would measure the whole image. Ownership rule: an axon
belongs to the chunk whose core holds its centroid pixel, so every axon is reported once. Its values equal the
in-memory ones when its fibre, grown by a guard band as wide as the fibre itself (the reach of the neighbours that
compete with it for myelin), stays inside the chunk's window; otherwise the row is kept, noted
(``NOTE_HALO``) and counted, never silently cut. Pixel counts (AVF, MVF, maps) are taken over chunk cores, which
tile the slide.

Sources: a NumPy array, a Zarr array or OME-Zarr group (level 0), or a (tiled, Big)TIFF read through
``tifffile``'s Zarr store; tasks open the source themselves, so they also run on a ``dask.distributed`` cluster.
An ROI mask (same sources, or a PNG) at the slide's resolution or downsampled by a whole factor restricts the
aggregate metrics and maps, exactly as ``roi_mask`` does in memory.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nnunet_ext.io.bids import labels_from_axonmyelin
from nnunet_ext.io.images import read_image_2d
from nnunet_ext.io.pixel_size import check_pixel_size
from nnunet_ext.io.slides import Block, block_grid, dask_client, open_label_slide, run_block_tasks

from nnunet_ext.morphometrics.aggregate_metrics import AGGREGATE_KEYS, aggregate_from_counts
from nnunet_ext.morphometrics.axon import COLUMNS, as_binary_mask, masks_from_label_image, measure_axons
from nnunet_ext.morphometrics.maps import tile_pixel_counts, tiles_from_counts

NOTE_HALO = "fibre reaches the chunk halo: values may differ from a whole-image run; use a larger halo"


def open_roi_source(roi):
    """An ROI mask source: what :func:`~nnunet_ext.io.slides.open_label_slide` opens, or any other image file (read
    into memory)."""
    if isinstance(roi, (str, os.PathLike)):
        path = Path(roi)
        lower = path.name.lower()
        if not path.exists():
            raise FileNotFoundError(f"{path}: ROI mask not found")
        if not (path.is_dir() or lower.endswith((".tif", ".tiff"))):
            return read_image_2d(path)
    return open_label_slide(roi, "ROI mask")


def roi_factor(roi_shape, slide_shape, name="ROI mask") -> int:
    """Whole downsampling factor f of an ROI mask: ROI pixel (i, j) covers slide pixels [i f, (i + 1) f) x [j f, ...).

    1 for an ROI at the slide's resolution; otherwise the ROI must be ``ceil(H / f) x ceil(W / f)`` for one f.
    """
    roi_shape, slide_shape = tuple(int(v) for v in roi_shape), tuple(int(v) for v in slide_shape)
    if len(roi_shape) != 2:
        raise ValueError(f"{name} must be 2D, got shape {roi_shape}")
    (h, w), (height, width) = roi_shape, slide_shape
    if h >= 1 and w >= 1:
        for f in sorted({max(1, height // h), -(-height // h), max(1, width // w), -(-width // w)}):
            if -(-height // f) == h and -(-width // f) == w:
                return f
    raise ValueError(f"{name} {roi_shape} is neither the slide's shape {slide_shape} nor a whole-number "
                     f"downsampling of it (ceil(H / f) x ceil(W / f))")


def read_roi_block(roi, factor, block: Block, name="ROI mask") -> np.ndarray:
    """The ROI over a slide :class:`~nnunet_ext.io.slides.Block` as bool (nonzero inside), upsampled by ``factor``."""
    y0, y1, x0, x1 = block
    block = np.asarray(roi[y0 // factor:(y1 - 1) // factor + 1, x0 // factor:(x1 - 1) // factor + 1])
    block = as_binary_mask(block, name)
    if factor > 1:
        block = np.repeat(np.repeat(block, factor, axis=0), factor, axis=1)
        oy, ox = y0 - (y0 // factor) * factor, x0 - (x0 // factor) * factor
        block = block[oy:oy + y1 - y0, ox:ox + x1 - x0]
    return block


@dataclass
class SlideResult:
    """What :func:`slide_morphometrics` returns."""

    per_axon: pd.DataFrame
    aggregate: dict
    tiles: pd.DataFrame | None
    overview: np.ndarray  # subsampled label image (every ``overview_step``-th pixel), for a QC overlay
    overview_step: int
    halo_exceeded: int
    chunks: int
    in_roi: np.ndarray | None = None  # per row of ``per_axon``: centroid pixel inside the ROI (with an ROI)
    tile_counts: tuple | None = None  # per-tile (area, axon, myelin) pixel counts behind ``tiles``
    # (area, axon, myelin) pixel counts behind ``aggregate`` (inside the ROI with one), so that a filtered
    # aggregate is recomputed from the same counts with aggregate_from_counts
    pixel_counts: tuple | None = None


def checked_label_values(label: np.ndarray, myelin_label: int, axon_label: int, source, core=None) -> np.ndarray:
    """A chunk's label values, checked as a whole label image's are (``load_masks``): values other than 0 and the
    two labels are refused, naming the slide and the values, instead of being counted as background; an AxonDeepSeg
    0/127/255 chunk read with the default labels (1 myelin, 2 axon) becomes 0/1/2, as ``read_label_image`` does."""
    if label.dtype in (np.uint8, np.uint16):
        values = np.flatnonzero(np.bincount(label.ravel(), minlength=1)).tolist()
    else:
        values = np.unique(label).tolist()
    unknown = set(values) - {0, myelin_label, axon_label}
    if not unknown:
        return label
    if (myelin_label, axon_label) == (1, 2) and set(values) <= {0, 127, 255}:
        return labels_from_axonmyelin(label)
    name = str(source) if isinstance(source, (str, os.PathLike)) else "label slide"
    where = "" if core is None else f" in chunk y {core[0]}:{core[1]}, x {core[2]}:{core[3]}"
    raise ValueError(f"{name}: unexpected label values {sorted(unknown)[:8]}{where} (expected 0, {myelin_label} "
                     f"myelin, {axon_label} axon; see --myelin-label and --axon-label)")


def measure_chunk(source, core, halo, pixel_size, axon_shape, myelin_label, axon_label, tile, step,
                  roi_source=None, roi_scale=1, roi_name="ROI mask"):
    """Measure one chunk core with its halo; returns the owned rows and the core's pixel counts.

    With an ROI, the rows get an ``_in_roi`` column (centroid pixel inside it) and the counts are taken inside it.
    """
    array = open_label_slide(source)
    height, width = array.shape
    y0, y1, x0, x1 = core
    ry0, ry1, rx0, rx1 = Block(*core).grown(halo, (height, width))
    label = checked_label_values(np.asarray(array[ry0:ry1, rx0:rx1]), myelin_label, axon_label, source, core)
    axon, myelin = masks_from_label_image(label, myelin_label, axon_label)
    table, first = measure_axons(axon, myelin, pixel_size, axon_shape, threads=1)
    rows = np.floor(table["y0 (px)"].to_numpy()).astype(np.int64) + ry0
    cols = np.floor(table["x0 (px)"].to_numpy()).astype(np.int64) + rx0
    owned = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    table = table[owned].copy()
    first = first[owned]
    # guard band: the fibre box grown by its own size must stay inside the window, except at the slide's edges
    fy0, fx0 = table["bbox_min_y"].to_numpy(), table["bbox_min_x"].to_numpy()
    fy1, fx1 = table["bbox_max_y"].to_numpy(), table["bbox_max_x"].to_numpy()
    guard = np.maximum(fy1 - fy0, fx1 - fx0)
    window_h, window_w = ry1 - ry0, rx1 - rx0
    exceeded = (((fy0 - guard < 0) & (ry0 > 0)) | ((fx0 - guard < 0) & (rx0 > 0))
                | ((fy1 + guard > window_h) & (ry1 < height)) | ((fx1 + guard > window_w) & (rx1 < width)))
    local_rows, local_cols = np.divmod(first, window_w)
    table["_first"] = (local_rows + ry0) * width + (local_cols + rx0)
    table["x0 (px)"] += rx0
    table["y0 (px)"] += ry0
    for column, offset in (("bbox_min_y", ry0), ("bbox_max_y", ry0), ("bbox_min_x", rx0), ("bbox_max_x", rx0)):
        table[column] += offset
    table["image_border_touching"] = ((table["bbox_min_y"] == 0) | (table["bbox_min_x"] == 0)
                                      | (table["bbox_max_y"] == height) | (table["bbox_max_x"] == width))
    notes = table["note"].to_numpy(dtype=object)
    notes[exceeded] = [f"{n}; {NOTE_HALO}" if n else NOTE_HALO for n in notes[exceeded]]
    table["note"] = notes
    core_axon = axon[y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0]
    core_myelin = myelin[y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0]
    if roi_source is not None:
        roi = read_roi_block(open_roi_source(roi_source), roi_scale, Block(y0, y1, x0, x1), name=roi_name)
        table["_in_roi"] = roi[rows[owned] - y0, cols[owned] - x0]
        core_axon, core_myelin, area = core_axon & roi, core_myelin & roi, roi
    else:
        area = np.ones(core_axon.shape, bool)
    counts = {"axon": int(core_axon.sum()), "myelin": int(core_myelin.sum()), "area": int(area.sum()),
              "halo_exceeded": int(exceeded.sum())}
    tiles = None
    if tile:
        tiles = (tile_pixel_counts(core_axon, tile), tile_pixel_counts(core_myelin, tile),
                 tile_pixel_counts(area, tile))
    # overview: every step-th pixel of the slide, aligned on the global grid
    oy, ox = (-y0) % step, (-x0) % step
    overview = label[y0 - ry0 + oy:y1 - ry0:step, x0 - rx0 + ox:x1 - rx0:step].astype(np.uint8)
    return table, counts, tiles, overview


def slide_morphometrics(source, pixel_size_um, chunk_size: int = 2048, halo: int = 256,
                        axon_shape: str = "circle", myelin_label: int = 1, axon_label: int = 2,
                        tile_size_px: int | None = None, scheduler: str | None = None,
                        num_workers: int | None = None, image_name: str | None = None,
                        overview_side: int = 2000, progress: bool = True, roi=None) -> SlideResult:
    """Per-axon and aggregate morphometrics of a label image too large for memory.

    Parameters
    ----------
    source : array, or path to a Zarr / OME-Zarr / TIFF label image
        0 background, ``myelin_label``, ``axon_label``.
    pixel_size_um : float
    chunk_size, halo : int
        Core size of a chunk and the margin read around it, in pixels. Memory per worker is about
        40 bytes x (chunk_size + 2 halo)^2.
    axon_shape : {"circle", "ellipse"}
    tile_size_px : int, optional
        Also compute a tile map; ``chunk_size`` is rounded up to a multiple of it.
    scheduler : str, optional
        Address of a ``dask.distributed`` scheduler (``tcp://host:8786``); Dask's threads otherwise.
    num_workers : int, optional
        Threads of the local scheduler (default: all cores).
    image_name : str, optional
    roi : array, or path to a Zarr / OME-Zarr / TIFF / PNG mask, optional
        Region of interest, nonzero inside: at the slide's resolution, or downsampled by a whole factor f (shape
        ``ceil(H / f) x ceil(W / f)``, each ROI pixel covering f x f slide pixels). The aggregate and the tiles are
        then taken inside it, exactly as :func:`aggregate_morphometrics` and :func:`tile_morphometrics` do with
        ``roi_mask`` (areas and fractions inside it, axons by centroid pixel); ``per_axon`` keeps every axon and
        ``in_roi`` says which are inside.

    Returns
    -------
    SlideResult
        ``per_axon`` (same columns as :func:`axon_morphometrics`, ``axon_id`` in raster order of the axons' first
        pixels, as in memory), ``aggregate`` (as :func:`aggregate_morphometrics`), ``tiles``, a subsampled
        ``overview``, the number of rows whose fibre reached a chunk halo, and with an ROI ``in_roi``.
    """
    pixel_size = check_pixel_size(pixel_size_um)
    if int(chunk_size) != chunk_size or chunk_size < 16:
        raise ValueError(f"chunk size must be a whole number of pixels >= 16, got {chunk_size!r}")
    if int(halo) != halo or halo < 0:
        raise ValueError(f"halo must be a whole number of pixels >= 0, got {halo!r}")
    if tile_size_px:
        chunk_size = int(math.ceil(chunk_size / tile_size_px) * tile_size_px)
    array = open_label_slide(source)
    if len(array.shape) != 2:
        raise ValueError(f"label image must be 2D, got shape {array.shape}")
    height, width = array.shape
    roi_source, roi_scale, roi_name = None, 1, "ROI mask"
    if roi is not None:
        roi_array = open_roi_source(roi)
        # errors about the mask name its file (or say it is an array)
        roi_name = f"{roi}: ROI mask" if isinstance(roi, (str, os.PathLike)) else "ROI mask"
        roi_scale = roi_factor(roi_array.shape, (height, width), roi_name)
        # tasks open a file source themselves; an image read into memory travels with them
        roi_source = roi if isinstance(roi, (str, os.PathLike)) and not isinstance(roi_array, np.ndarray) \
            else roi_array
    step = max(1, int(math.ceil(max(height, width) / overview_side)))
    grid = block_grid((height, width), int(chunk_size))
    task_source = source if not isinstance(source, np.ndarray) else array
    arguments = [(task_source, core, int(halo), pixel_size, axon_shape, myelin_label, axon_label, tile_size_px, step,
                  roi_source, roi_scale, roi_name) for core in grid]
    with dask_client(scheduler) as client:
        results = run_block_tasks(measure_chunk, arguments, client, num_workers, progress and len(grid) > 1,
                                  description="chunks")
    tables = [r[0] for r in results]
    per_axon = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=COLUMNS)
    per_axon = per_axon.sort_values("_first", kind="stable").drop(columns="_first").reset_index(drop=True)
    per_axon["axon_id"] = np.arange(1, len(per_axon) + 1, dtype=np.int64)
    per_axon["image"] = image_name
    per_axon["gratio_valid"] = per_axon["gratio_valid"].astype(bool)
    per_axon["image_border_touching"] = per_axon["image_border_touching"].astype(bool)
    in_roi = None
    if roi is not None:
        in_roi = per_axon.pop("_in_roi").to_numpy(dtype=bool) if len(per_axon) else np.zeros(0, bool)
    axon_pixels = sum(r[1]["axon"] for r in results)
    myelin_pixels = sum(r[1]["myelin"] for r in results)
    area_pixels = sum(r[1]["area"] for r in results)
    inside = per_axon if in_roi is None else per_axon[in_roi]
    aggregate = aggregate_from_counts(inside, area_pixels, axon_pixels, myelin_pixels, pixel_size)
    aggregate["image"] = image_name
    aggregate = {key: aggregate[key] for key in AGGREGATE_KEYS}
    halo_exceeded = sum(r[1]["halo_exceeded"] for r in results)
    overview = np.zeros((-(-height // step), -(-width // step)), np.uint8)
    for core, result in zip(grid, results):
        block, y0, x0 = result[3], core.y0, core.x0
        oy, ox = -(-y0 // step), -(-x0 // step)
        overview[oy:oy + block.shape[0], ox:ox + block.shape[1]] = block
    tiles = None
    if tile_size_px:
        n_rows, n_cols = -(-height // tile_size_px), -(-width // tile_size_px)
        counts = [np.zeros((n_rows, n_cols), np.int64) for _ in range(3)]
        for core, result in zip(grid, results):
            for total, part in zip(counts, result[2]):
                ty, tx = core.y0 // tile_size_px, core.x0 // tile_size_px
                total[ty:ty + part.shape[0], tx:tx + part.shape[1]] = part
        tiles = tiles_from_counts(inside, counts[2], counts[0], counts[1], tile_size_px, (height, width),
                                  pixel_size)
        tile_counts = (counts[2], counts[0], counts[1])
    else:
        tile_counts = None
    return SlideResult(per_axon[COLUMNS], aggregate, tiles, overview, step, halo_exceeded, len(grid), in_roi,
                       tile_counts, (area_pixels, axon_pixels, myelin_pixels))


