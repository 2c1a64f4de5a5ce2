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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from nnunet_ext.io.bids import labels_from_axonmyelin
from nnunet_ext.io.images import read_image_2d
from nnunet_ext.io.pixel_size import check_pixel_size
from nnunet_ext.io.slides import Block, block_grid, dask_client, open_label_slide, run_block_tasks

from nnunet_ext.morphometrics.aggregate_metrics import AGGREGATE_KEYS, aggregate_from_counts
from nnunet_ext.morphometrics.axon import (COLUMNS, as_binary_mask, masks_from_label_image, measure_axons,
                                           read_mask_file)
from nnunet_ext.morphometrics.kernels import label_components_4
from nnunet_ext.morphometrics.maps import tile_pixel_counts, tiles_from_counts
from nnunet_ext.morphometrics.slide_components import core_parts, merge_core_parts

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


@dataclass(frozen=True)
class MaskSource:
    """A mask over a slide (ROI or nerve): a file or array at the slide's resolution or downsampled by ``factor``.

    Picklable, so that tasks on a ``dask.distributed`` cluster open a file source themselves."""

    source: object
    factor: int = 1
    name: str = "ROI mask"

    def read(self, block: Block) -> np.ndarray:
        """The mask over ``block`` as bool, at the slide's resolution."""
        return read_roi_block(open_roi_source(self.source), self.factor, block, name=self.name)


def open_mask_source(mask, slide_shape, what: str = "ROI mask") -> MaskSource:
    """A :class:`MaskSource` for an ROI or nerve mask given as a path or an array, checked against the slide's
    shape. An image that is not a slide format (PNG) is read whole, as the image path reads mask files (nonzero is
    inside, a warning for anti-aliased edges), and travels with the tasks; Zarr and TIFF masks, read by chunk, must
    be strictly binary in each chunk."""
    is_file = isinstance(mask, (str, os.PathLike))
    name = f"{mask}: {what}" if is_file else what  # errors name the file
    if is_file and Path(mask).is_file() and not str(mask).lower().endswith((".tif", ".tiff")):
        array = read_mask_file(mask, name=name)
    else:
        array = open_roi_source(mask)
    factor = roi_factor(array.shape, slide_shape, name)
    source = mask if is_file and not isinstance(array, np.ndarray) else array
    return MaskSource(source, factor, name)


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
    in_roi: np.ndarray | None = None  # per row of ``per_axon``: centroid pixel inside the ROI (and nerve)
    tile_counts: tuple | None = None  # per-tile (area, axon, myelin) pixel counts behind ``tiles``
    # (area, axon, myelin) pixel counts behind ``aggregate`` (inside the ROI with one), so that a filtered
    # aggregate is recomputed from the same counts with aggregate_from_counts
    pixel_counts: tuple | None = None
    #: unmyelinated axons (``uaxon_label``), as :func:`~nnunet_ext.morphometrics.unmyelinated.uaxon_morphometrics`
    uaxon: pd.DataFrame | None = None
    uaxon_halo_exceeded: int = 0
    uaxon_present: bool = False  # the slide holds ``uaxon_label`` pixels (``uaxon`` may still be empty: ROI, nerve)
    #: nerve mode: per-fascicle (pixels, axon pixels, myelin pixels), index = fascicle label 1..n (0 unused)
    fascicle_counts: tuple | None = None


def checked_label_values(label: np.ndarray, myelin_label: int, axon_label: int, source, core=None,
                         other_labels: dict | None = None) -> np.ndarray:
    """A chunk's label values, checked as a whole label image's are (``load_masks``): values other than 0, the
    two labels and ``other_labels`` (value -> name: unmyelinated axons, nerve tissue) are refused, naming the slide
    and the values, instead of being counted as background; an AxonDeepSeg 0/127/255 chunk read with the default labels
    (1 myelin, 2 axon) becomes 0/1/2, as ``read_label_image`` does."""
    if label.dtype in (np.uint8, np.uint16):
        values = np.flatnonzero(np.bincount(label.ravel(), minlength=1)).tolist()
    else:
        values = np.unique(label).tolist()
    other_labels = other_labels or {}
    known = {0, myelin_label, axon_label, *other_labels}
    unknown = set(values) - known
    if not unknown:
        return label
    if (myelin_label, axon_label) == (1, 2) and set(values) <= {0, 127, 255}:
        return labels_from_axonmyelin(label)
    name = str(source) if isinstance(source, (str, os.PathLike)) else "label slide"
    where = "" if core is None else f" in chunk y {core[0]}:{core[1]}, x {core[2]}:{core[3]}"
    others = "".join(f", {value} {what}" for value, what in other_labels.items())
    raise ValueError(f"{name}: unexpected label values {sorted(unknown)[:8]}{where} (expected 0, {myelin_label} "
                     f"myelin, {axon_label} axon{others}; see --myelin-label and --axon-label)")


@dataclass(frozen=True)
class ChunkJob:
    """What every chunk task needs besides its core (picklable, for a ``dask.distributed`` cluster)."""

    source: object
    halo: int
    pixel_size: float
    axon_shape: str
    myelin_label: int
    axon_label: int
    tile: int | None
    step: int
    roi: MaskSource | None = None
    nerve: MaskSource | None = None
    uaxon_label: int | None = None
    nerve_label: int | None = None  # nerve tissue of --nerve-label (background once the nerve is built)

    def read_label(self, window: Block, core: Block, array=None) -> np.ndarray:
        array = open_label_slide(self.source) if array is None else array
        others = {value: what for value, what in ((self.uaxon_label, "unmyelinated axon"),
                                                  (self.nerve_label, "nerve tissue")) if value is not None}
        y0, y1, x0, x1 = window
        return checked_label_values(np.asarray(array[y0:y1, x0:x1]), self.myelin_label, self.axon_label,
                                    self.source, core, others)


def _edge_flags(table: pd.DataFrame, window: Block, shape, guard) -> np.ndarray:
    """Rows whose box (window-local), grown by ``guard`` pixels, leaves the window across an edge that is not the
    slide's: their values may differ from a whole-image run."""
    ry0, ry1, rx0, rx1 = window
    height, width = shape
    y0, x0, y1, x1 = (table[c].to_numpy() for c in ("bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x"))
    return (((y0 - guard < 0) & (ry0 > 0)) | ((x0 - guard < 0) & (rx0 > 0))
            | ((y1 + guard > ry1 - ry0) & (ry1 < height)) | ((x1 + guard > rx1 - rx0) & (rx1 < width)))


def _to_slide_coordinates(table: pd.DataFrame, first: np.ndarray, window: Block, shape, exceeded: np.ndarray
                          ) -> pd.DataFrame:
    """Window-local rows in slide coordinates: centroid, box, border flag, global first pixel, halo note."""
    ry0, ry1, rx0, rx1 = window
    height, width = shape
    local_rows, local_cols = np.divmod(first, rx1 - rx0)
    table["_first"] = (local_rows + ry0) * width + (local_cols + rx0)
    table["x0 (px)"] += rx0
    table["y0 (px)"] += ry0
    for column, offset in (("bbox_min_y", ry0), ("bbox_max_y", ry0), ("bbox_min_x", rx0), ("bbox_max_x", rx0)):
        table[column] += offset
    table["image_border_touching"] = ((table["bbox_min_y"] == 0) | (table["bbox_min_x"] == 0)
                                      | (table["bbox_max_y"] == height) | (table["bbox_max_x"] == width))
    notes = np.array(table["note"], dtype=object)  # a copy: pandas may hand out a read-only view
    notes[exceeded] = [f"{n}; {NOTE_HALO}" if n else NOTE_HALO for n in notes[exceeded]]
    table["note"] = notes
    return table


def _owned(table: pd.DataFrame, window: Block, core: Block) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows whose centroid pixel lies in the core (the ownership rule), and those pixels' slide rows and columns."""
    rows = np.floor(table["y0 (px)"].to_numpy()).astype(np.int64) + window.y0
    cols = np.floor(table["x0 (px)"].to_numpy()).astype(np.int64) + window.x0
    owned = (rows >= core.y0) & (rows < core.y1) & (cols >= core.x0) & (cols < core.x1)
    return owned, rows[owned], cols[owned]


def measure_uaxon_window(mask: np.ndarray, window: Block, core: Block, shape, pixel_size, axon_shape
                         ) -> tuple[pd.DataFrame, int]:
    """The unmyelinated axons owned by ``core`` (centroid pixel inside it) of a window's mask, in slide
    coordinates with ``_first``; an axon reaching an inner edge of the window is noted (its size may be cut)."""
    from nnunet_ext.morphometrics.unmyelinated import uaxon_morphometrics

    table, first = uaxon_morphometrics(mask, pixel_size, axon_shape, return_first=True)
    owned, _, _ = _owned(table, window, core)
    table, first = table[owned].copy(), first[owned]
    exceeded = _edge_flags(table, window, shape, 1)  # one pixel beyond it must be seen to know it ends there
    return _to_slide_coordinates(table, first, window, shape, exceeded), int(exceeded.sum())


def measure_chunk(job: ChunkJob, core: Block) -> dict:
    """Measure one chunk core with its halo: the owned rows, the core's pixel counts, its tiles and overview, and
    in the modes the unmyelinated axons and the core's fascicle parts.

    With an ROI or a nerve, the rows get an ``_in_roi`` column (centroid pixel inside both) and the counts are taken
    inside them; with a nerve, axon and myelin outside it are removed first (ADS's ``remove_outside_nerve``) and the
    rows get ``_fascicle``, the core-local fascicle label under their centroid pixel.
    """
    array = open_label_slide(job.source)
    shape = height, width = array.shape
    core = Block(*core)
    window = core.grown(job.halo, shape)
    label = job.read_label(window, core, array)
    axon, myelin = masks_from_label_image(label, job.myelin_label, job.axon_label)
    nerve = job.nerve.read(window) if job.nerve is not None else None
    if nerve is not None:
        axon &= nerve
        myelin &= nerve
    table, first = measure_axons(axon, myelin, job.pixel_size, job.axon_shape, threads=1)
    owned, rows, cols = _owned(table, window, core)
    table, first = table[owned].copy(), first[owned]
    # guard band: the fibre box grown by its own size must stay inside the window, except at the slide's edges
    guard = np.maximum(table["bbox_max_y"] - table["bbox_min_y"], table["bbox_max_x"] - table["bbox_min_x"]).to_numpy()
    exceeded = _edge_flags(table, window, shape, guard)
    table = _to_slide_coordinates(table, first, window, shape, exceeded)
    inner = (slice(core.y0 - window.y0, core.y1 - window.y0), slice(core.x0 - window.x0, core.x1 - window.x0))
    core_axon, core_myelin = axon[inner], myelin[inner]
    in_core = (rows - core.y0, cols - core.x0)
    fascicles = None
    if nerve is not None:
        labels, count = label_components_4(nerve[inner])
        fascicles = core_parts(labels, count, core, width,
                               axon=np.bincount(labels[core_axon], minlength=count + 1),
                               myelin=np.bincount(labels[core_myelin], minlength=count + 1))
        table["_fascicle"] = labels[in_core]
    roi = job.roi.read(window) if job.roi is not None else None
    region = roi if nerve is None else nerve if roi is None else roi & nerve  # the aggregate's area
    if region is not None:
        table["_in_roi"] = region[inner][in_core]
        core_axon, core_myelin, area = core_axon & region[inner], core_myelin & region[inner], region[inner]
    else:
        area = np.ones(core_axon.shape, bool)
    uaxon, uaxon_exceeded, uaxon_present = None, 0, False
    if job.uaxon_label is not None:
        mask = label == job.uaxon_label
        uaxon_present = bool(mask[inner].any())  # the slide has them, even where none is inside the ROI or nerve
        if region is not None:
            mask &= region
        uaxon, uaxon_exceeded = measure_uaxon_window(mask, window, core, shape, job.pixel_size, job.axon_shape)
    tiles = None
    if job.tile:
        tiles = (tile_pixel_counts(core_axon, job.tile), tile_pixel_counts(core_myelin, job.tile),
                 tile_pixel_counts(area, job.tile))
    # overview: every step-th pixel of the slide, aligned on the global grid
    step = job.step
    oy, ox = (-core.y0) % step, (-core.x0) % step
    overview = label[inner][oy::step, ox::step].astype(np.uint8)
    return {"table": table, "axon": int(core_axon.sum()), "myelin": int(core_myelin.sum()), "area": int(area.sum()),
            "halo_exceeded": int(exceeded.sum()), "tiles": tiles, "overview": overview, "uaxon": uaxon,
            "uaxon_halo_exceeded": uaxon_exceeded, "uaxon_present": uaxon_present, "fascicles": fascicles}


def _nerve_core_labels(job: ChunkJob, core: Block) -> tuple[np.ndarray, np.ndarray, int]:
    """A core's label values and its 4-connected parts of nerve tissue with the axon, myelin and unmyelinated-axon
    pixels (the same labels in both passes of ``--nerve-label``)."""
    label = job.read_label(core, core)
    values = [job.nerve_label, job.myelin_label, job.axon_label, job.uaxon_label]
    labels, count = label_components_4(np.isin(label, [v for v in values if v is not None]))
    return label, labels, count


def nerve_parts_from_labels(job: ChunkJob, core: Block):
    """First pass of ``--nerve-label`` on a slide: the core's parts (:func:`_nerve_core_labels`) and which of them
    hold tissue."""
    core = Block(*core)
    label, labels, count = _nerve_core_labels(job, core)
    width = open_label_slide(job.source).shape[1]
    return core_parts(labels, count, core, width,
                      tissue=np.bincount(labels[label == job.nerve_label], minlength=count + 1))


def write_nerve_core(job: ChunkJob, in_nerve: np.ndarray, target: str, core: Block) -> None:
    """Second pass of ``--nerve-label``: the core's nerve mask (``in_nerve``: per core-local part, whether its global
    component holds tissue) into the Zarr array ``target``, whose chunks are the cores."""
    import zarr

    core = Block(*core)
    _, labels, _ = _nerve_core_labels(job, core)
    zarr.open_array(target, mode="r+")[core.y0:core.y1, core.x0:core.x1] = in_nerve[labels]


def nerve_from_label_slide(job: ChunkJob, grid: list[Block], folder: Path, client, workers, progress) -> str:
    """The nerve of a label slide as a bool Zarr array in ``folder``: tissue ``job.nerve_label`` with the axon, myelin
    and unmyelinated-axon pixels 4-connected to it, across chunks (as ``load_masks`` does for an image)."""
    import zarr

    shape = open_label_slide(job.source).shape
    parts = run_block_tasks(nerve_parts_from_labels, [(job, core) for core in grid], client, workers, progress,
                            description="nerve")
    merged = merge_core_parts(parts, grid)
    has_tissue = merged.sums["tissue"] > 0
    has_tissue[0] = False
    target = str(folder / "nerve.zarr")
    chunk = max(grid[0].shape) if grid else 1  # one Zarr chunk per core: tasks never write the same chunk
    zarr.create_array(target, shape=shape, chunks=(chunk, chunk), dtype=bool, fill_value=False)
    run_block_tasks(write_nerve_core, [(job, has_tissue[lookup], target, core)  # small per task
                                       for lookup, core in zip(merged.lookup, grid)], client, workers, progress,
                    description="nerve mask")
    return target


def slide_morphometrics(source, pixel_size_um, chunk_size: int = 2048, halo: int = 256,
                        axon_shape: str = "circle", myelin_label: int = 1, axon_label: int = 2,
                        tile_size_px: int | None = None, scheduler: str | None = None,
                        num_workers: int | None = None, image_name: str | None = None,
                        overview_side: int = 2000, progress: bool = True, roi=None, nerve=None,
                        nerve_label: int | None = None, uaxon_label: int | None = None,
                        work_dir: str | os.PathLike | None = None) -> SlideResult:
    """Per-axon and aggregate morphometrics of a label image too large for memory.

    Parameters
    ----------
    source : array, or path to a Zarr / OME-Zarr / TIFF label image
        0 background, ``myelin_label``, ``axon_label`` (and ``uaxon_label``, ``nerve_label`` when given).
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
    nerve : array, or path to a Zarr / OME-Zarr / TIFF / PNG mask, optional
        Nerve mode (AxonDeepSeg's ``-n``), a nerve mask as ``roi`` is given: axon and myelin outside it are removed,
        the aggregate is the nerve's (within the ROI, if any), ``per_axon`` gains ``fascicle_id`` (ADS's 0-based
        fascicle under the centroid pixel, -1 outside) and ``fascicle_counts`` holds each fascicle's pixels,
        exactly as in memory: fascicles (4-connected) are joined across chunks
        (:mod:`nnunet_ext.morphometrics.slide_components`), whatever their size.
    nerve_label : int, optional
        Nerve mode with the nerve from the label slide: tissue of this value with the axon, myelin and unmyelinated
        axon pixels 4-connected to it, found across chunks in two extra passes (a bool Zarr in ``work_dir``).
    uaxon_label : int, optional
        Value of unmyelinated axons (3 as ``convert bids --uaxon label`` writes): measured as
        :func:`~nnunet_ext.morphometrics.unmyelinated.uaxon_morphometrics` into ``uaxon`` (within the ROI and nerve).
    work_dir : path, optional
        Where ``nerve_label``'s nerve mask is built (a temporary folder, removed at the end); must be seen by every
        worker of a distributed scheduler (default: the system's temporary folder).

    Returns
    -------
    SlideResult
        ``per_axon`` (same columns as :func:`axon_morphometrics`, ``axon_id`` in raster order of the axons' first
        pixels, as in memory), ``aggregate`` (as :func:`aggregate_morphometrics`), ``tiles``, a subsampled
        ``overview``, the number of rows whose fibre reached a chunk halo, and with an ROI ``in_roi``.
    """
    import contextlib
    import tempfile

    pixel_size = check_pixel_size(pixel_size_um)
    if int(chunk_size) != chunk_size or chunk_size < 16:
        raise ValueError(f"chunk size must be a whole number of pixels >= 16, got {chunk_size!r}")
    if int(halo) != halo or halo < 0:
        raise ValueError(f"halo must be a whole number of pixels >= 0, got {halo!r}")
    if nerve is not None and nerve_label is not None:
        raise ValueError("give either a nerve mask or a nerve label, not both")
    used = [v for v in (myelin_label, axon_label, uaxon_label, nerve_label) if v is not None]
    if len(set(used)) != len(used) or 0 in used:
        raise ValueError(f"label values must differ and be nonzero: myelin {myelin_label}, axon {axon_label}, "
                         f"unmyelinated axon {uaxon_label}, nerve {nerve_label}")
    if tile_size_px:
        chunk_size = int(math.ceil(chunk_size / tile_size_px) * tile_size_px)
    array = open_label_slide(source)
    if len(array.shape) != 2:
        raise ValueError(f"label image must be 2D, got shape {array.shape}")
    height, width = array.shape
    step = max(1, int(math.ceil(max(height, width) / overview_side)))
    grid = block_grid((height, width), int(chunk_size))
    job = ChunkJob(source if not isinstance(source, np.ndarray) else array, int(halo), pixel_size, axon_shape,
                   myelin_label, axon_label, tile_size_px, step,
                   roi=None if roi is None else open_mask_source(roi, (height, width), "ROI mask"),
                   nerve=None if nerve is None else open_mask_source(nerve, (height, width), "nerve mask"),
                   uaxon_label=uaxon_label, nerve_label=nerve_label)
    show = progress and len(grid) > 1
    if nerve_label is not None and work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    scratch = contextlib.nullcontext() if nerve_label is None else tempfile.TemporaryDirectory(
        prefix=".nnunet-ext-nerve-", dir=None if work_dir is None else Path(work_dir).resolve())
    with dask_client(scheduler) as client, scratch as folder:
        if nerve_label is not None:
            target = nerve_from_label_slide(job, grid, Path(folder), client, num_workers, show)
            job = replace(job, nerve=MaskSource(target, 1, "nerve mask"))
        results = run_block_tasks(measure_chunk, [(job, core) for core in grid], client, num_workers, show,
                                  description="chunks")
    return _assemble(results, grid, job, (height, width), image_name, roi is not None)


def _assemble(results: list[dict], grid: list[Block], job: ChunkJob, shape, image_name, with_roi) -> SlideResult:
    """The chunks' results as one :class:`SlideResult`."""
    height, width = shape
    pixel_size = job.pixel_size
    fascicle_counts = None
    if job.nerve is not None:

        merged = merge_core_parts([r["fascicles"] for r in results], grid)
        for lookup, result in zip(merged.lookup, results):  # ADS's fascicle ids: 0-based, -1 outside the nerve
            result["table"]["fascicle_id"] = lookup[result["table"].pop("_fascicle").to_numpy()] - 1
        fascicle_counts = tuple(merged.sums[name] for name in ("pixels", "axon", "myelin"))
    columns = COLUMNS + (["fascicle_id"] if job.nerve is not None else [])
    per_axon = _in_raster_order([r["table"] for r in results], COLUMNS, "axon_id", image_name)
    per_axon["gratio_valid"] = per_axon["gratio_valid"].astype(bool)
    in_roi = None
    if with_roi or job.nerve is not None:
        in_roi = per_axon.pop("_in_roi").to_numpy(dtype=bool) if len(per_axon) else np.zeros(0, bool)
    axon_pixels = sum(r["axon"] for r in results)
    myelin_pixels = sum(r["myelin"] for r in results)
    area_pixels = sum(r["area"] for r in results)
    inside = per_axon if in_roi is None else per_axon[in_roi]
    aggregate = aggregate_from_counts(inside, area_pixels, axon_pixels, myelin_pixels, pixel_size)
    aggregate["image"] = image_name
    aggregate = {key: aggregate[key] for key in AGGREGATE_KEYS}
    overview = np.zeros((-(-height // job.step), -(-width // job.step)), np.uint8)
    for core, result in zip(grid, results):
        block = result["overview"]
        oy, ox = -(-core.y0 // job.step), -(-core.x0 // job.step)
        overview[oy:oy + block.shape[0], ox:ox + block.shape[1]] = block
    tiles = tile_counts = None
    if job.tile:
        tile = job.tile
        counts = [np.zeros((-(-height // tile), -(-width // tile)), np.int64) for _ in range(3)]
        for core, result in zip(grid, results):
            for total, part in zip(counts, result["tiles"]):
                ty, tx = core.y0 // tile, core.x0 // tile
                total[ty:ty + part.shape[0], tx:tx + part.shape[1]] = part
        tiles = tiles_from_counts(inside, counts[2], counts[0], counts[1], tile, (height, width), pixel_size)
        tile_counts = (counts[2], counts[0], counts[1])
    uaxon = None
    if job.uaxon_label is not None:
        from nnunet_ext.morphometrics.unmyelinated import UAXON_COLUMNS

        uaxon = _in_raster_order([r["uaxon"] for r in results], UAXON_COLUMNS, "uaxon_id", image_name)
    return SlideResult(per_axon[columns], aggregate, tiles, overview, job.step,
                       sum(r["halo_exceeded"] for r in results), len(grid), in_roi, tile_counts,
                       (area_pixels, axon_pixels, myelin_pixels), uaxon,
                       sum(r["uaxon_halo_exceeded"] for r in results), any(r["uaxon_present"] for r in results),
                       fascicle_counts)


def _in_raster_order(tables: list[pd.DataFrame], columns, id_column: str, image_name) -> pd.DataFrame:
    """The chunks' rows in raster order of their first pixels (as in memory), numbered 1..n."""
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=[*columns, "_first"])
    table = table.sort_values("_first", kind="stable").drop(columns="_first").reset_index(drop=True)
    table[id_column] = np.arange(1, len(table) + 1, dtype=np.int64)
    table["image"] = image_name
    table["image_border_touching"] = table["image_border_touching"].astype(bool)
    return table
