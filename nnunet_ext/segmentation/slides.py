"""Whole-slide segmentation: images larger than memory, predicted block by block as Dask tasks.

How a slide is predicted, and why the result equals predicting it in one piece
------------------------------------------------------------------------------
nnU-Net predicts an image by (1) cropping it to the bounding box of its nonzero pixels, (2) normalising it with the
configuration's scheme (z-score uses the whole image's mean and standard deviation), (3) running a sliding window
of patches spread evenly over the cropped image, averaging overlapping patches with Gaussian weights in float16,
and (4) taking the arg-max. Here:

1. A first pass over the slide (one Dask task per block) gathers exact integer moments of the grey values and the
   nonzero bounding box, so that steps (1) and (2) use the statistics of the whole cropped slide.
2. The sliding-window grid is nnU-Net's own (``compute_steps_for_sliding_window``) for the whole cropped slide.
   Each block -- a core of ``block_size`` pixels, aligned with the output's Zarr chunks -- is read with the margin
   that the grid's tiles overlapping the core reach into (at least half a patch at nnU-Net's default step of 0.5),
   and nnU-Net's sliding window (``predict_logits_from_preprocessed_data``: Gaussian weighting, mirroring, fold
   ensembling) runs over exactly those tiles, in nnU-Net's order. Every core pixel thus receives the same patch
   predictions, summed in the same order, as in a one-piece run, and gets the same label.
3. Each task writes its core to the chunked Zarr output (labels, and class probabilities on request) and then
   drops a marker file. A killed run leaves ``<output>.partial``; the next run with the same settings skips the
   blocks with markers. Only a complete output is renamed to its final name, with metadata recording the model,
   folds, checkpoint, package versions and the normalisation statistics.

Memory is bounded by the blocks in flight, not by the slide: measured about 25 bytes per core pixel of each block
in flight (some 0.85 GB above the loaded model with the default 4096-pixel blocks and two threads), mostly nnU-Net's
own sliding-window arrays for the block's window; logits become labels in stripes.
Tasks open the slide themselves, so they run on Dask's local threads or on any ``dask.distributed`` cluster whose
workers see the same paths; each worker process loads the model once, and on the CPU one more copy per further
block it predicts at the same time (:func:`~nnunet_ext.segmentation.predictor.borrowed_predictor`), so that blocks
in flight predict in parallel, each on its share of the cores.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np

from nnunet_ext.segmentation.predictor import ModelSpec, borrowed_predictor, cached_predictor, model_info

PARTIAL_SUFFIX = ".partial"
PROGRESS_FOLDER = ".blocks_done"
METADATA_KEY = "nnunet_ext"
SLIDE_SUFFIXES = (".zarr", ".tif", ".tiff")
DEFAULT_BLOCK_SIZE = 4096
LOCAL_GPU_CLUSTER = "local-gpus"
STRIPE_PIXELS = 2**20  # logits turned into labels a stripe of about this many pixels at a time


# ------------------------------------------------------------------------------------------------------ reading
class SlideSource:
    """A 2D grey view of a slide that reads windows on demand.

    Parameters
    ----------
    source : ndarray, or path to a Zarr array / Zarr or OME-Zarr group (full-resolution level) / TIFF
        Grey (Y, X), colour (Y, X, S) or channel-first (C, Y, X) images; leading axes of size 1 (OME-Zarr's t, c,
        z) are dropped. Colour becomes grey with :func:`~nnunet_ext.dataset_conversion.bids_microscopy.
        to_single_channel` (pixel-wise, so reading by windows changes nothing).
    """

    def __init__(self, source):
        self.name = "array"
        if isinstance(source, np.ndarray):
            array, axes = source, None
        else:
            path = Path(source)
            self.name = str(path)
            if not path.exists():
                raise FileNotFoundError(f"{path}: slide not found")
            array, axes = _open_array(path)
        self.array = array
        self.axes = _infer_axes(array.shape, axes, self.name)
        self.shape = tuple(int(array.shape[self.axes.index(a)]) for a in "yx")
        self.dtype = np.dtype(array.dtype)
        if self.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"{self.name}: pixel type {self.dtype} not supported (8- or 16-bit grey or colour)")

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Grey window ``[y0:y1, x0:x1]`` as uint8 or uint16."""
        from nnunet_ext.dataset_conversion.bids_microscopy import to_single_channel

        index = tuple(slice(y0, y1) if a == "y" else slice(x0, x1) if a == "x" else
                      slice(None) if a in "cs" and size > 1 else 0 for a, size in zip(self.axes, self.array.shape))
        window = np.asarray(self.array[index])
        kept = [a for a, size in zip(self.axes, self.array.shape) if a in "yx" or (a in "cs" and size > 1)]
        if len(kept) == 3:  # colour: channels last for rgb2gray
            window = np.moveaxis(window, kept.index("c" if "c" in kept else "s"), -1)
        return to_single_channel(window, self.name)


def _open_array(path: Path):
    """The full-resolution array of a Zarr/OME-Zarr store or a TIFF, and its axis names when the file says them."""
    import zarr

    axes = None
    if path.name.lower().endswith((".tif", ".tiff")):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            axes = tif.series[0].axes.lower()
        node = zarr.open(tifffile.imread(path, aszarr=True, level=0), mode="r")
    else:
        try:
            node = zarr.open(str(path), mode="r")
        except Exception as error:  # zarr raises several types for "not a store"
            raise ValueError(f"{path}: not a Zarr array or group ({error})") from None
    if isinstance(node, zarr.Group):
        from nnunet_ext.morphometrics.io import ome_multiscales

        multiscales = ome_multiscales(node.attrs)
        if multiscales:
            key = multiscales[0]["datasets"][0]["path"]
            names = multiscales[0].get("axes")
            if names:
                axes = "".join((a["name"] if isinstance(a, dict) else a)[0].lower() for a in names)
        else:
            keys = sorted(node.array_keys())
            if not keys:
                raise ValueError(f"{path}: Zarr group without arrays")
            key = "0" if "0" in keys else keys[0]
        node = node[key]
    return node, axes


def _infer_axes(shape, axes: str | None, name: str) -> str:
    """Axis letters (t, c, z, y, x, s) of an array: from the file when known, else from its shape."""
    if axes is not None and len(axes) == len(shape) and "y" in axes and "x" in axes:
        axes = axes.replace("i", "z").replace("q", "z")
    elif len(shape) == 2:
        axes = "yx"
    elif len(shape) == 3 and shape[-1] in (2, 3, 4):
        axes = "yxs"
    elif len(shape) >= 3 and shape[-3] in (1, 2, 3, 4):
        axes = "z" * (len(shape) - 3) + "cyx"
    else:
        raise ValueError(f"{name}: cannot tell the image axes of shape {tuple(shape)}; expected (Y, X), (Y, X, RGB) "
                         f"or (C, Y, X)")
    for letter, size in zip(axes, shape):
        if letter not in "yxcs" and size != 1:
            raise ValueError(f"{name}: axis {letter!r} has {size} planes; 'segment' predicts 2D images")
        if letter in "cs" and size not in (1, 2, 3, 4):
            raise ValueError(f"{name}: {size} channels; expected grey, grey+alpha, RGB or RGBA")
    if "c" in axes and "s" in axes:
        raise ValueError(f"{name}: both channel and sample axes in {tuple(shape)}")
    return axes


@functools.lru_cache(maxsize=8)
def _cached_source(key: str) -> SlideSource:
    return SlideSource(key)


def open_slide(source) -> SlideSource:
    """A :class:`SlideSource`, opened once per process for paths (Dask tasks call this for every block)."""
    if isinstance(source, SlideSource):
        return source
    if isinstance(source, np.ndarray):
        return SlideSource(source)
    return _cached_source(str(Path(source).resolve()))


# ----------------------------------------------------------------------------------------------- planning blocks
def block_grid(shape: Sequence[int], block_size: int) -> list[tuple[int, int, int, int]]:
    """Block cores ``(y0, y1, x0, x1)`` tiling ``shape``, row by row."""
    height, width = shape
    return [(y, min(y + block_size, height), x, min(x + block_size, width))
            for y in range(0, height, block_size) for x in range(0, width, block_size)]


def axis_tiles(extent: int, patch: int, step_size: float) -> list[int]:
    """Tile starts along one axis of the cropped slide, as nnU-Net's sliding window places them (after padding an
    axis shorter than the patch to the patch)."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    return compute_steps_for_sliding_window((max(extent, patch),), (patch,), step_size)[0]


def axis_window(core: tuple[int, int], box: tuple[int, int], tiles: Sequence[int], patch: int):
    """Window to read for one block along one axis, and the tiles to run in it.

    Parameters
    ----------
    core : (int, int)
        The block's core in slide coordinates.
    box : (int, int)
        The nonzero bounding box of the slide along this axis (nnU-Net predicts inside it only).
    tiles : sequence of int
        Tile starts of the whole cropped slide (:func:`axis_tiles`).

    Returns
    -------
    None when the core misses the box, else ``(window, starts, inner)``: the window in slide coordinates, the
    tile starts relative to the window, and the part of the core inside the box relative to the window.
    """
    low, high = max(core[0], box[0]), min(core[1], box[1])
    if low >= high:
        return None
    extent = box[1] - box[0]
    if extent <= patch:  # nnU-Net pads this axis to one patch: read all of it, one tile
        return (box[0], box[1]), [0], (low - box[0], high - box[0])
    local_low, local_high = low - box[0], high - box[0]
    covering = [s for s in tiles if s < local_high and s + patch > local_low]
    start, stop = covering[0], covering[-1] + patch
    return (box[0] + start, box[0] + stop), [s - start for s in covering], (local_low - start, local_high - start)


# -------------------------------------------------------------------------------------------------- normalising
@dataclass
class SlideStatistics:
    """What nnU-Net's preprocessing needs from the whole slide: grey-value statistics and the nonzero box."""

    pixels: int
    mean: float
    std: float
    minimum: float
    maximum: float
    nonzero_box: list[list[int]] | None  # [[y0, y1], [x0, x1]], None for an all-zero slide

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def block_statistics(source, core) -> dict:
    """Exact integer moments of one block core (pixels, zeros, sum, sum of squares, smallest nonzero and largest
    value) and the bounding box of its nonzero pixels in slide coordinates: a few numbers per block, whatever the
    slide's size."""
    slide = open_slide(source)
    y0, y1, x0, x1 = core
    window = slide.read(y0, y1, x0, x1)
    # a histogram of the 8- or 16-bit grey values gives every moment exactly, without int64 copies of the block
    counts = np.bincount(window.ravel(), minlength=2)
    present = np.flatnonzero(counts)
    grey = np.arange(counts.size, dtype=object)  # Python integers: sums of squares cannot overflow
    rows, cols = np.flatnonzero(window.any(axis=1)), np.flatnonzero(window.any(axis=0))
    box = None if rows.size == 0 else [y0 + int(rows[0]), y0 + int(rows[-1]) + 1, x0 + int(cols[0]),
                                       x0 + int(cols[-1]) + 1]
    nonzero_values = present[present > 0]
    return {"pixels": int(window.size), "zeros": int(counts[0]),
            "sum": int((counts[present].astype(object) * grey[present]).sum()),
            "squares": int((counts[present].astype(object) * grey[present] ** 2).sum()),
            "min_nonzero": int(nonzero_values[0]) if nonzero_values.size else None,
            "max": int(present[-1]) if present.size else 0, "box": box}


def combine_statistics(parts, shape: Sequence[int]) -> SlideStatistics:
    """Statistics of the slide cropped to its nonzero box, as nnU-Net normalises after cropping, from
    :func:`block_statistics` results of blocks tiling a slide of ``shape``. Exact: integer sums, then one rounding.
    """
    parts = list(parts)
    boxes = [p["box"] for p in parts if p["box"] is not None]
    if not boxes:  # an all-zero slide: nothing to normalise, nothing to predict
        return SlideStatistics(pixels=0, mean=0.0, std=0.0, minimum=0.0, maximum=0.0, nonzero_box=None)
    box = [min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes), max(b[3] for b in boxes)]
    pixels = (box[1] - box[0]) * (box[3] - box[2])
    # every pixel outside the nonzero box is 0: zeros inside it are the zeros counted minus those outside
    zeros_inside = sum(p["zeros"] for p in parts) - (int(shape[0]) * int(shape[1]) - pixels)
    total, squares = sum(p["sum"] for p in parts), sum(p["squares"] for p in parts)
    mean = Fraction(total, pixels)
    variance = Fraction(squares, pixels) - mean * mean
    minimum = 0 if zeros_inside > 0 else min(p["min_nonzero"] for p in parts if p["min_nonzero"] is not None)
    return SlideStatistics(pixels=pixels, mean=float(mean), std=math.sqrt(float(variance)), minimum=float(minimum),
                           maximum=float(max(p["max"] for p in parts)),
                           nonzero_box=[[box[0], box[1]], [box[2], box[3]]])


def check_slide_preprocessing(predictor, name: str = "slide") -> tuple[str, bool]:
    """The model's normalisation scheme, after checking that block-wise prediction can reproduce nnU-Net's
    preprocessing for it (no resampling, no transposition, no normalisation inside a hole-filled mask)."""
    configuration = predictor.configuration_manager
    if [float(s) for s in configuration.spacing] != [1.0, 1.0]:
        raise ValueError(f"{name}: the model resamples images to spacing {configuration.spacing}; block-wise slide "
                         f"prediction supports models trained on 2D images at their own pixel size (spacing 1, 1, "
                         f"as nnU-Net's NaturalImage2DIO gives)")
    if list(predictor.plans_manager.transpose_forward) != [0, 1, 2]:
        raise ValueError(f"{name}: the model's plans transpose axes {predictor.plans_manager.transpose_forward}; "
                         f"not supported for slides")
    scheme = configuration.normalization_schemes[0]
    use_mask = bool(configuration.use_mask_for_norm[0])
    supported = ("ZScoreNormalization", "RescaleTo01Normalization", "CTNormalization", "NoNormalization",
                 "RGBTo01Normalization")
    if scheme not in supported:
        raise ValueError(f"{name}: normalisation {scheme} is not supported for slides ({', '.join(supported)})")
    if use_mask and scheme == "ZScoreNormalization":
        raise ValueError(f"{name}: the model normalises inside the hole-filled nonzero mask (use_mask_for_norm), "
                         f"which cannot be computed block by block")
    return scheme, use_mask


def normalize_block(window: np.ndarray, predictor, statistics: SlideStatistics) -> np.ndarray:
    """nnU-Net's normalisation of one window, with the whole slide's statistics where the scheme needs them.

    The arithmetic is nnU-Net's (float32, same operations in the same order), so windows normalise exactly as the
    slide would in one piece.
    """
    configuration = predictor.configuration_manager
    scheme = configuration.normalization_schemes[0]
    image = window.astype(np.float32)
    if scheme == "ZScoreNormalization":
        mean, std = np.float32(statistics.mean), np.float32(statistics.std)
        image -= mean
        image /= max(std, 1e-8)
    elif scheme == "RescaleTo01Normalization":
        image -= np.float32(statistics.minimum)
        image /= np.clip(np.float32(statistics.maximum) - np.float32(statistics.minimum), a_min=1e-8, a_max=None)
    else:  # pixel-wise schemes: nnU-Net's own classes
        from nnunetv2.preprocessing.normalization import default_normalization_schemes as schemes

        normalizer = getattr(schemes, scheme)(
            use_mask_for_norm=bool(configuration.use_mask_for_norm[0]),
            intensityproperties=predictor.plans_manager.foreground_intensity_properties_per_channel["0"])
        image = normalizer.run(image, None)
    return image


# --------------------------------------------------------------------------------------------------- predicting
@dataclass(frozen=True)
class SlidePlan:
    """Everything a block task needs besides the model (picklable, sent to Dask workers)."""

    output: str  # the .partial Zarr group
    statistics: SlideStatistics
    tiles_y: tuple[int, ...]
    tiles_x: tuple[int, ...]
    patch: tuple[int, int]
    save_probabilities: bool
    threads: int | None = None  # torch threads per block on the CPU


def _marker(output: str, core) -> Path:
    return Path(output) / PROGRESS_FOLDER / f"{core[0]}_{core[2]}"


def predict_block(spec: ModelSpec, source, core, plan: SlidePlan) -> dict:
    """Predict one block core and write it to the output; returns what it did (for the summary)."""
    import torch
    import zarr

    started = time.perf_counter()
    slide = open_slide(source)
    y0, y1, x0, x1 = core
    shared = cached_predictor(spec)
    label_manager = shared.label_manager
    labels = np.zeros((y1 - y0, x1 - x0), np.uint8 if len(label_manager.all_labels) < 256 else np.uint16)
    probabilities = None
    if plan.save_probabilities:  # outside the nonzero box nnU-Net's probabilities say background
        probabilities = np.zeros((label_manager.num_segmentation_heads, *labels.shape), np.float16)
        if not label_manager.has_regions:
            probabilities[0] = 1
    box = plan.statistics.nonzero_box
    along_y = None if box is None else axis_window((y0, y1), tuple(box[0]), plan.tiles_y, plan.patch[0])
    along_x = None if box is None else axis_window((x0, x1), tuple(box[1]), plan.tiles_x, plan.patch[1])
    predicted_pixels = 0
    if along_y is not None and along_x is not None:
        (wy0, wy1), starts_y, (iy0, iy1) = along_y
        (wx0, wx1), starts_x, (ix0, ix1) = along_x
        window = slide.read(wy0, wy1, wx0, wx1)
        data = torch.from_numpy(normalize_block(window, shared, plan.statistics)[None, None])
        del window
        if shared.device.type == "cpu":
            # the count applies to the calling thread (and to threads started later: segment_slide restores it)
            torch.set_num_threads(plan.threads or _cluster_worker_threads())
        with borrowed_predictor(spec) as predictor, predictor.tiles(starts_y, starts_x):
            logits = predictor.predict_logits_from_preprocessed_data(data)
        del data
        # as nnU-Net's export does: logits arrive as a float16 numpy array; converted to labels (and probabilities)
        # in stripes, pixel-wise as nnU-Net does, so that the float32 and int64 temporaries stay small
        logits = logits.numpy()
        offset_y, offset_x = wy0 - y0, wx0 - x0
        rows = max(1, STRIPE_PIXELS // max(ix1 - ix0, 1))
        for top in range(iy0, iy1, rows):
            stripe = logits[:, :, top:min(top + rows, iy1), ix0:ix1]
            target = (slice(offset_y + top, offset_y + top + stripe.shape[2]),
                      slice(offset_x + ix0, offset_x + ix1))
            if plan.save_probabilities:
                stripe_probabilities = label_manager.apply_inference_nonlin(stripe)
                labels[target] = np.asarray(label_manager.convert_probabilities_to_segmentation(
                    stripe_probabilities))[0]
                probabilities[(slice(None), *target)] = np.asarray(stripe_probabilities)[:, 0]
            else:
                labels[target] = np.asarray(label_manager.convert_logits_to_segmentation(stripe))[0]
        predicted_pixels = int((iy1 - iy0) * (ix1 - ix0))
        del logits
    group = zarr.open_group(plan.output, mode="r+")
    group["labels"][y0:y1, x0:x1] = labels  # also when all 0: replaces a chunk a killed run may have half-written
    if probabilities is not None:
        group["probabilities"][:, y0:y1, x0:x1] = probabilities
    marker = _marker(plan.output, core)
    marker.parent.mkdir(exist_ok=True)
    temporary = marker.with_name(marker.name + f".{os.getpid()}-{threading.get_ident()}.tmp")
    temporary.write_text(json.dumps({"seconds": time.perf_counter() - started, "predicted_pixels": predicted_pixels}))
    os.replace(temporary, marker)  # the marker appears only once the block's data is written
    return {"core": core, "seconds": time.perf_counter() - started, "predicted_pixels": predicted_pixels}


def _cluster_worker_threads() -> int:
    """Torch threads for one block on a ``dask.distributed`` worker: its cores shared by the worker's threads (each
    predicts a block with its own copy of the model)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        from distributed import get_worker

        return max(1, cores // max(1, int(getattr(get_worker(), "nthreads", 1))))
    except (ImportError, ValueError):  # not inside a distributed worker
        return cores


# ------------------------------------------------------------------------------------------------ orchestrating
@dataclass
class SlideResult:
    """What :func:`segment_slide` did."""

    output: Path
    shape: tuple[int, int]
    blocks: int
    blocks_skipped: int  # finished in an earlier, interrupted run
    seconds: float
    statistics: SlideStatistics
    metadata: dict = field(default_factory=dict)
    statistics_seconds: float = 0.0  # of ``seconds``, the first pass over the slide (0 when resumed)

    @property
    def megapixels_per_second(self) -> float:
        done = 1 - self.blocks_skipped / max(self.blocks, 1)
        return self.shape[0] * self.shape[1] * done / 1e6 / max(self.seconds, 1e-9)


def _run_tasks(function, argument_lists, client=None, workers: int = 2, progress: bool = True,
               description: str = "blocks", initial: int = 0, total: int | None = None) -> list:
    """Run ``function(*args)`` for each argument list as Dask tasks, with a progress bar; results in order.

    Without ``client``: Dask's threaded scheduler with ``workers`` threads. With a ``distributed.Client``: futures
    on its cluster; on the first failure the rest are cancelled and the error is raised.
    """
    from tqdm import tqdm

    with tqdm(total=total or len(argument_lists), initial=initial, desc=description, unit="block",
              disable=not progress) as bar:
        if client is None:
            import dask
            from dask.callbacks import Callback

            class _Progress(Callback):
                def _posttask(self, key, result, dsk, state, worker_id):
                    bar.update(1)

            tasks = [dask.delayed(function, pure=False)(*args) for args in argument_lists]
            with _Progress():
                return list(dask.compute(*tasks, scheduler="threads", num_workers=workers))
        from distributed import as_completed

        futures = [client.submit(function, *args, pure=False) for args in argument_lists]
        position = {future.key: i for i, future in enumerate(futures)}
        results = [None] * len(futures)
        try:
            for future in as_completed(futures):
                results[position[future.key]] = future.result()
                bar.update(1)
        except BaseException:
            client.cancel(futures)
            raise
        return results


def _fingerprint(info: dict, source_name: str, shape, block_size: int, save_probabilities: bool) -> dict:
    return {"model_folder": info["model_folder"], "folds": info["folds"], "checkpoint": info["checkpoint"],
            "checkpoint_files": info["checkpoint_files"], "tile_step_size": info["tile_step_size"],
            "use_mirroring": info["use_mirroring"], "source": source_name, "shape": list(shape),
            "block_size": block_size, "save_probabilities": save_probabilities}


def segment_slide(source, output: str | os.PathLike, spec: ModelSpec, block_size: int = DEFAULT_BLOCK_SIZE,
                  save_probabilities: bool = False, scheduler=None, workers: int | None = None,
                  pixel_size_um: float | None = None, overwrite: bool = False, progress: bool = True) -> SlideResult:
    """Segment a slide block by block into a chunked Zarr label image, resumably.

    Parameters
    ----------
    source : ndarray or path
        The slide (see :class:`SlideSource`): a Zarr/OME-Zarr store, a (tiled, Big)TIFF, or an array in memory.
    output : path
        The output Zarr group (``<name>_seg.zarr``): array ``labels`` (nnU-Net label values, chunks of
        ``block_size``), with ``save_probabilities`` an array ``probabilities`` (classes, Y, X; float16), and the
        run's metadata under the ``nnunet_ext`` attribute. It is built as ``<output>.partial`` and renamed when
        complete; an existing ``.partial`` from an interrupted run with the same settings is resumed.
    spec : ModelSpec
        The model (see :class:`~nnunet_ext.segmentation.predictor.ModelSpec`).
    block_size : int
        Block core (and Zarr chunk) edge in pixels. Memory per block in flight is about 25 bytes per core pixel
        (the window with its margin of about one patch: float32 data, nnU-Net's float16 logits and counts). Tiles
        reaching over a core's edge are predicted by both blocks that they touch: with 256-pixel patches that is
        about 20% more work at 4096, 40% at 2048.
    scheduler : str or distributed.Client, optional
        A ``dask.distributed`` scheduler address (``tcp://host:8786``) or client; workers must see ``source``
        and ``output`` at the same paths. Default: Dask's threads in this process, or with ``device="cuda"`` on a
        machine with several GPUs a ``LocalCluster`` of one worker process per GPU.
    workers : int, optional
        Threads of the local scheduler, i.e. blocks in flight (default 2). On the CPU each predicts with its own
        copy of the model on ``spec.threads`` torch threads, by default the cores divided among the workers; on a
        GPU they share one model and predict in turn (one reads and writes while another predicts).
    pixel_size_um : float, optional
        Recorded in the OME-Zarr metadata.
    overwrite : bool
        Replace an existing output and discard an interrupted one.

    Returns
    -------
    SlideResult
    """
    import zarr

    output = Path(output)
    partial = output.with_name(output.name + PARTIAL_SUFFIX)
    if int(block_size) != block_size or block_size < 64:
        raise ValueError(f"block size must be a whole number of pixels >= 64, got {block_size!r}")
    block_size = int(block_size)
    if isinstance(source, (str, os.PathLike)) and Path(source).resolve() in (output.resolve(), partial.resolve()):
        raise ValueError(f"{source}: the input is the output")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output}: already exists; use --overwrite to replace it")
    if overwrite and partial.exists():
        shutil.rmtree(partial)
    started = time.perf_counter()
    slide = open_slide(source)
    if scheduler is None and spec.device == "cuda" and _cuda_devices() > 1:
        scheduler = LOCAL_GPU_CLUSTER  # one worker process per GPU on this machine
    predictor = cached_predictor(spec if scheduler is None else replace(spec, device="cpu"))
    check_slide_preprocessing(predictor, slide.name)
    info = model_info(predictor, spec).as_dict()
    patch = tuple(int(p) for p in predictor.configuration_manager.patch_size)
    fingerprint = _fingerprint(info, slide.name, slide.shape, block_size, save_probabilities)
    grid = block_grid(slide.shape, block_size)
    output.parent.mkdir(parents=True, exist_ok=True)
    import torch

    threads_before = torch.get_num_threads()
    try:
        with _dask_client(scheduler) as client:
            task_source = source
            if client is not None and isinstance(source, np.ndarray):
                task_source = client.scatter(source, broadcast=True)  # a slide in memory goes to every worker once
            run = functools.partial(_run_tasks, client=client, workers=workers or 2, progress=progress)
            statistics_started = time.perf_counter()
            if partial.exists():
                statistics = _resume_statistics(partial, fingerprint)
            else:
                statistics = combine_statistics(run(block_statistics, [(task_source, core) for core in grid],
                                                    description="statistics"), slide.shape)
                _create_partial(partial, slide.shape, block_size, predictor, save_probabilities,
                                {"complete": False, "run": fingerprint, "model": info,
                                 "statistics": statistics.as_dict(), "source": slide.name, "patch_size": list(patch),
                                 "normalization": predictor.configuration_manager.normalization_schemes[0]})
            statistics_seconds = time.perf_counter() - statistics_started
            box = statistics.nonzero_box
            extent = (0, 0) if box is None else (box[0][1] - box[0][0], box[1][1] - box[1][0])
            threads = spec.threads
            if threads is None and client is None and predictor.device.type == "cpu":
                # the cores shared by the blocks in flight
                threads = max(1, torch.get_num_threads() // (workers or 2))
            plan = SlidePlan(str(partial), statistics, tuple(axis_tiles(extent[0], patch[0], spec.tile_step_size)),
                             tuple(axis_tiles(extent[1], patch[1], spec.tile_step_size)), patch, save_probabilities,
                             threads)
            todo = [core for core in grid if not _marker(str(partial), core).is_file()]
            run(predict_block, [(spec, task_source, core, plan) for core in todo], description="blocks",
                initial=len(grid) - len(todo), total=len(grid))
    finally:
        torch.set_num_threads(threads_before)  # tasks set their threads' counts, which also become torch's default
    missing = [core for core in grid if not _marker(str(partial), core).is_file()]
    if missing:
        raise RuntimeError(f"{partial}: {len(missing)} block(s) have no completion marker; run again to resume")
    seconds = time.perf_counter() - started
    group = zarr.open_group(str(partial), mode="r+")
    metadata = dict(group.attrs[METADATA_KEY])
    metadata.update(complete=True, blocks=len(grid), block_size=block_size, seconds_last_run=seconds,
                    finished=time.strftime("%Y-%m-%dT%H:%M:%S"), blocks_resumed=len(grid) - len(todo),
                    pixel_size_um=pixel_size_um)
    group.attrs[METADATA_KEY] = metadata
    group.attrs["ome"] = _ome_metadata(output.name, pixel_size_um)
    shutil.rmtree(partial / PROGRESS_FOLDER, ignore_errors=True)
    _replace(partial, output)
    return SlideResult(output, slide.shape, len(grid), len(grid) - len(todo), seconds, statistics, metadata,
                       statistics_seconds)


@contextlib.contextmanager
def _dask_client(scheduler):
    """None for Dask's local threads; the given ``distributed.Client``; or a client of the scheduler at an address
    (closed afterwards)."""
    if scheduler is None:
        yield None
        return
    from distributed import Client, LocalCluster

    if isinstance(scheduler, Client):
        yield scheduler
    elif scheduler == LOCAL_GPU_CLUSTER:  # workers are named 0..N-1: worker N loads the model on GPU N
        with LocalCluster(n_workers=_cuda_devices(), threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            yield client
    else:
        with Client(scheduler) as client:
            yield client


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count()


def _resume_statistics(partial: Path, fingerprint: dict) -> SlideStatistics:
    """The statistics of an interrupted run, after checking it was started with the same settings."""
    import zarr

    recorded = dict(zarr.open_group(str(partial), mode="r").attrs.get(METADATA_KEY, {}))
    if recorded.get("run") != fingerprint:
        differing = sorted(k for k in fingerprint if recorded.get("run", {}).get(k) != fingerprint[k])
        raise ValueError(f"{partial}: an interrupted run with other settings ({', '.join(differing)}); delete it or "
                         f"use --overwrite to start over")
    return SlideStatistics(**recorded["statistics"])


def _create_partial(partial: Path, shape, block_size: int, predictor, save_probabilities: bool,
                    metadata: dict) -> None:
    """The empty output with its metadata, created under a staging name so that a ``.partial`` is always whole."""
    import zarr

    staging = partial.with_name(partial.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    group = zarr.open_group(str(staging), mode="w")
    label_manager = predictor.label_manager
    group.create_array("labels", shape=shape, chunks=(block_size, block_size), fill_value=0,
                       dtype=np.uint8 if len(label_manager.all_labels) < 256 else np.uint16, dimension_names=("y", "x"))
    if save_probabilities:
        classes = label_manager.num_segmentation_heads
        group.create_array("probabilities", shape=(classes, *shape), chunks=(classes, block_size, block_size),
                           dtype=np.float16, fill_value=0, dimension_names=("c", "y", "x"))
    group.attrs[METADATA_KEY] = metadata
    os.replace(staging, partial)


def _ome_metadata(name: str, pixel_size_um: float | None) -> dict:
    """OME-NGFF 0.5 multiscales (one level, the label array) so that viewers and Zarr readers find ``labels``."""
    axes = [{"name": a, "type": "space", **({"unit": "micrometer"} if pixel_size_um else {})} for a in "yx"]
    scale = [float(pixel_size_um or 1.0)] * 2
    return {"version": "0.5", "multiscales": [{"name": name, "axes": axes, "datasets": [
        {"path": "labels", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}]}


def _replace(partial: Path, output: Path) -> None:
    """Rename the finished output into place; an old output is moved aside first and deleted after."""
    aside = None
    if output.exists():
        aside = output.with_name(output.name + ".old")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(output, aside)
    os.replace(partial, output)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def read_labels(path: str | os.PathLike) -> "zarr.Array":  # noqa: F821
    """The label array of a finished ``segment`` output (refuses unfinished ones)."""
    import zarr

    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: segmentation output not found")
    group = zarr.open_group(str(path), mode="r")
    if not group.attrs.get(METADATA_KEY, {}).get("complete"):
        raise ValueError(f"{path}: not a finished nnunet-ext segmentation")
    return group["labels"]


def save_overview_png(path: str | os.PathLike, labels, myelin_value: int, axon_value: int,
                      max_side: int = 2048) -> Path:
    """A subsampled AxonDeepSeg-style axonmyelin PNG (axon 255, myelin 127) of a large label array, read chunk by
    chunk."""
    from PIL import Image

    height, width = labels.shape
    step = max(1, math.ceil(max(height, width) / max_side))
    overview = np.zeros((-(-height // step), -(-width // step)), np.uint8)
    chunk = labels.chunks[0] if hasattr(labels, "chunks") else 4096
    rows_per_read = max(step, (chunk // step) * step)
    for y in range(0, height, rows_per_read):
        stripe = np.asarray(labels[y:y + rows_per_read, :])[::step, ::step]
        values = np.zeros(stripe.shape, np.uint8)
        values[stripe == myelin_value] = 127
        values[stripe == axon_value] = 255
        overview[y // step:y // step + values.shape[0]] = values
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp.png")
    Image.fromarray(overview).save(temporary)
    os.replace(temporary, path)
    return path
