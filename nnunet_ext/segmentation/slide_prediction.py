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
   drops a marker file. A killed run leaves ``<output>.partial``; the next run with the same settings and the same
   input (:func:`content_fingerprint`: sampled windows, size and modification time) skips the blocks with markers; a
   changed input is refused unless ``overwrite``. Only a complete output is renamed to its final name, with
   metadata recording the model, folds, checkpoint, package versions and the normalisation statistics.

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
import math
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from nnunet_ext.io.atomic import replace_folder, write_json_atomically
from nnunet_ext.io.bids import ADS_AXON_VALUE, ADS_MYELIN_VALUE
from nnunet_ext.io.images import write_png
from nnunet_ext.io.slides import SlideSource, block_grid, dask_client, open_slide, run_block_tasks
from nnunet_ext.segmentation.slide_normalisation import (SlideStatistics, block_statistics, check_slide_preprocessing,
                                                         combine_statistics, normalize_block)
from nnunet_ext.segmentation.slide_tiling import axis_tiles, axis_window
from nnunet_ext.segmentation.predictor import (ModelSpec, available_cores, borrowed_predictor, cached_predictor,
                                               model_info)

PARTIAL_SUFFIX = ".partial"
PROGRESS_FOLDER = ".blocks_done"
METADATA_KEY = "nnunet_ext"
DEFAULT_BLOCK_SIZE = 4096
LOCAL_GPU_CLUSTER = "local-gpus"
STRIPE_PIXELS = 2**20  # logits turned into labels a stripe of about this many pixels at a time


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
    # the marker appears (atomically) only once the block's data is written
    write_json_atomically({"seconds": time.perf_counter() - started, "predicted_pixels": predicted_pixels}, marker)
    return {"core": core, "seconds": time.perf_counter() - started, "predicted_pixels": predicted_pixels}


def _cluster_worker_threads() -> int:
    """Torch threads for one block on a ``dask.distributed`` worker: its cores shared by the worker's threads (each
    predicts a block with its own copy of the model)."""
    cores = available_cores()
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


def _fingerprint(info: dict, source_name: str, shape, block_size: int, save_probabilities: bool,
                 content: dict | None = None) -> dict:
    fingerprint = {"model_folder": info["model_folder"], "folds": info["folds"], "checkpoint": info["checkpoint"],
                   "checkpoint_files": info["checkpoint_files"], "tile_step_size": info["tile_step_size"],
                   "use_mirroring": info["use_mirroring"], "source": source_name, "shape": list(shape),
                   "block_size": block_size, "save_probabilities": save_probabilities}
    if content is not None:
        fingerprint["content"] = content
    return fingerprint


#: Windows (a grid of CONTENT_SAMPLES x CONTENT_SAMPLES, each CONTENT_WINDOW pixels square) hashed for the content
#: fingerprint of a slide: a few chunk reads whatever the slide's size.
CONTENT_SAMPLES = 4
CONTENT_WINDOW = 256
_ZARR_METADATA = ("zarr.json", ".zarray", ".zattrs", ".zgroup")


def content_fingerprint(slide: SlideSource, source=None) -> dict:
    """A fingerprint of a slide's content that is cheap for a gigapixel slide: the SHA-256 of a sparse grid of
    windows (:data:`CONTENT_SAMPLES` squared windows of :data:`CONTENT_WINDOW` pixels, corners included) and, for a
    file or store, its modification metadata (a file's size and modification time; a Zarr store's folder and
    metadata files' modification times). A resumed run must see the same fingerprint: a slide changed in place would
    otherwise get blocks of both versions and the old normalisation statistics."""
    import hashlib

    digest = hashlib.sha256()
    height, width = slide.shape
    window_y, window_x = min(CONTENT_WINDOW, height), min(CONTENT_WINDOW, width)
    starts_y = sorted({int(v) for v in np.linspace(0, height - window_y, CONTENT_SAMPLES)})
    starts_x = sorted({int(v) for v in np.linspace(0, width - window_x, CONTENT_SAMPLES)})
    for y0 in starts_y:
        for x0 in starts_x:
            digest.update(np.ascontiguousarray(slide.read(y0, y0 + window_y, x0, x0 + window_x)).tobytes())
    fingerprint = {"sampled_sha256": digest.hexdigest(), "windows": len(starts_y) * len(starts_x)}
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_file():
            stat = path.stat()
            fingerprint.update(size=int(stat.st_size), mtime_ns=int(stat.st_mtime_ns))
        elif path.is_dir():  # the group's and its arrays' (OME levels') metadata: no listing of the chunks
            times = {".": int(path.stat().st_mtime_ns)}
            for folder in (path, *(sub for sub in path.iterdir() if sub.is_dir())):
                for name in _ZARR_METADATA:
                    if (folder / name).is_file():
                        times[str((folder / name).relative_to(path))] = int((folder / name).stat().st_mtime_ns)
            fingerprint["mtime_ns"] = dict(sorted(times.items()))
    return fingerprint


def segment_slide(source, output: str | os.PathLike, spec: ModelSpec, block_size: int = DEFAULT_BLOCK_SIZE,
                  save_probabilities: bool = False, scheduler=None, workers: int | None = None,
                  pixel_size_um: float | None = None, overwrite: bool = False, progress: bool = True,
                  source_file: str | os.PathLike | None = None) -> SlideResult:
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
        Replace an existing output and discard an interrupted one. Without it, an interrupted run is resumed only
        if the source's :func:`content_fingerprint` is unchanged.
    source_file : path, optional
        The file an in-memory ``source`` was read from (e.g. a large PNG): named in messages, and its size and
        modification time go into the content fingerprint.

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
    is_path = isinstance(source, (str, os.PathLike))
    fingerprint = _fingerprint(info, slide.name, slide.shape, block_size, save_probabilities,
                               content_fingerprint(slide, source if is_path else source_file))
    source_label = str(source_file) if source_file is not None and not is_path else slide.name
    grid = block_grid(slide.shape, block_size)
    output.parent.mkdir(parents=True, exist_ok=True)
    import torch

    threads_before = torch.get_num_threads()
    try:
        with _dask_client(scheduler) as client:
            task_source = source
            if client is not None and isinstance(source, np.ndarray):
                task_source = client.scatter(source, broadcast=True)  # a slide in memory goes to every worker once
            run = functools.partial(run_block_tasks, client=client, workers=workers or 2, progress=progress)
            statistics_started = time.perf_counter()
            if partial.exists():
                statistics = _resume_statistics(partial, fingerprint, source_label)
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
    replace_folder(partial, output)
    return SlideResult(output, slide.shape, len(grid), len(grid) - len(todo), seconds, statistics, metadata,
                       statistics_seconds)


@contextlib.contextmanager
def _dask_client(scheduler):
    """:func:`~nnunet_ext.io.slides.dask_client`, plus ``"local-gpus"``: a local cluster of one worker process per
    CUDA device."""
    if scheduler == LOCAL_GPU_CLUSTER:  # workers are named 0..N-1: worker N loads the model on GPU N
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=_cuda_devices(), threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            yield client
    else:
        with dask_client(scheduler) as client:
            yield client


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count()


def _resume_statistics(partial: Path, fingerprint: dict, source_label: str | None = None) -> SlideStatistics:
    """The statistics of an interrupted run, after checking it was started with the same settings."""
    import zarr

    recorded = dict(zarr.open_group(str(partial), mode="r").attrs.get(METADATA_KEY, {}))
    if recorded.get("run") != fingerprint:
        differing = sorted(k for k in fingerprint if recorded.get("run", {}).get(k) != fingerprint[k])
        if differing == ["content"]:
            was = recorded.get("run", {}).get("content") or {}
            now = fingerprint["content"]
            what = [k for k in ("sampled_sha256", "size", "mtime_ns") if was.get(k) != now.get(k)]
            raise ValueError(f"{source_label or fingerprint['source']}: the input changed since the interrupted run "
                             f"{partial} began (its content fingerprint differs: {', '.join(what) or 'none recorded'}); "
                             f"resuming would mix blocks of both versions and reuse the old normalisation statistics: "
                             f"use --overwrite to start over")
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


def save_overview_png(path: str | os.PathLike, labels, myelin_value: int, axon_value: int,
                      max_side: int = 2048, uaxon_path: str | os.PathLike | None = None,
                      uaxon_value: int | None = None) -> list[Path]:
    """A subsampled AxonDeepSeg-style axonmyelin PNG (axon 255, myelin 127) of a large label array, read chunk by
    chunk; with ``uaxon_path`` in the same pass a subsampled unmyelinated-axon mask (``uaxon_value`` 255, as ADS's
    ``_seg-uaxon.png``). Returns the paths written."""
    height, width = labels.shape
    step = max(1, math.ceil(max(height, width) / max_side))
    shape = (-(-height // step), -(-width // step))
    overview = np.zeros(shape, np.uint8)
    uaxon = np.zeros(shape, np.uint8) if uaxon_path is not None else None
    chunk = labels.chunks[0] if hasattr(labels, "chunks") else 4096
    rows_per_read = max(step, (chunk // step) * step)
    for y in range(0, height, rows_per_read):
        stripe = np.asarray(labels[y:y + rows_per_read, :])[::step, ::step]
        values = np.zeros(stripe.shape, np.uint8)
        values[stripe == myelin_value] = ADS_MYELIN_VALUE
        values[stripe == axon_value] = ADS_AXON_VALUE
        overview[y // step:y // step + values.shape[0]] = values
        if uaxon is not None:
            uaxon[y // step:y // step + values.shape[0]] = (stripe == uaxon_value) * np.uint8(ADS_AXON_VALUE)
    written = [write_png(path, overview)]
    if uaxon is not None:
        written.append(write_png(uaxon_path, uaxon))
    return written
