"""Whole slides larger than memory: one opener, one block type, one task runner.

A slide is a 2D image (grey, colour or a label map) in a Zarr array, a Zarr/OME-Zarr group (its full-resolution
level) or a TIFF (read by windows through tifffile's Zarr store). :func:`open_slide_array` finds the
full-resolution array and its axis names; :class:`SlideSource` is a grey view of an image slide and
:class:`LabelSlide` a 2D view of a label slide. Work is split into :class:`Block` s, ``(y0, y1, x0, x1)`` half-open
pixel ranges, and run by :func:`run_block_tasks` on Dask's threads or a ``dask.distributed`` cluster
(:func:`dask_client`), with a progress bar.
"""
from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from nnunet_ext.io.images import is_zarr, to_single_channel
from nnunet_ext.io.pixel_size import ome_multiscales

SLIDE_SUFFIXES = (".zarr", ".tif", ".tiff")


class Block(NamedTuple):
    """A half-open pixel window ``[y0, y1) x [x0, x1)`` of a slide."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    def grown(self, margin: int, shape: Sequence[int]) -> "Block":
        """This block with ``margin`` pixels around it, clipped to a slide of ``shape``."""
        return Block(max(0, self.y0 - margin), min(int(shape[0]), self.y1 + margin),
                     max(0, self.x0 - margin), min(int(shape[1]), self.x1 + margin))


def block_grid(shape: Sequence[int], block_size: int) -> list[Block]:
    """Blocks of ``block_size`` (the last ones smaller) tiling ``shape``, row by row."""
    height, width = (int(v) for v in shape[:2])
    return [Block(y, min(y + block_size, height), x, min(x + block_size, width))
            for y in range(0, height, block_size) for x in range(0, width, block_size)]


def is_slide_path(path: str | os.PathLike) -> bool:
    """True for a Zarr store (any folder Zarr recognises) or a TIFF file."""
    path = Path(path)
    return is_zarr(path) or (path.is_file() and path.name.lower().endswith((".tif", ".tiff")))


def open_slide_array(path: str | os.PathLike):
    """The full-resolution array of a Zarr/OME-Zarr store or a TIFF, and its axis letters when the file says them.

    OME-Zarr: the first dataset of the first multiscale (and its axes); another Zarr group: its array ``0``, else its
    first array; a TIFF: level 0 of its first series (and tifffile's axes). Raises ``ValueError`` naming the path for
    anything Zarr cannot open.
    """
    import zarr

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found")
    axes = None
    if path.name.lower().endswith((".tif", ".tiff")):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                axes = tif.series[0].axes.lower()
            node = zarr.open(tifffile.imread(path, aszarr=True, level=0), mode="r")
        except Exception as error:  # tifffile raises many types for broken files
            raise ValueError(f"{path}: cannot read TIFF ({error})") from None
    else:
        try:
            node = zarr.open(str(path), mode="r")
        except Exception as error:  # zarr raises several types for "not a store"
            raise ValueError(f"{path}: not a Zarr array or group ({error})") from None
    if isinstance(node, zarr.Group):
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


def infer_axes(shape, axes: str | None, name: str) -> str:
    """Axis letters (t, c, z, y, x, s) of an image array: from the file when known, else from its shape."""
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


class SlideSource:
    """A 2D grey view of an image slide that reads windows on demand.

    Parameters
    ----------
    source : ndarray, or path to a Zarr array / Zarr or OME-Zarr group (full-resolution level) / TIFF
        Grey (Y, X), colour (Y, X, S) or channel-first (C, Y, X) images; leading axes of size 1 (OME-Zarr's t, c,
        z) are dropped. Colour becomes grey with :func:`~nnunet_ext.io.images.to_single_channel` (pixel-wise, so
        reading by windows changes nothing).
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
            array, axes = open_slide_array(path)
        self.array = array
        self.axes = infer_axes(array.shape, axes, self.name)
        self.shape = tuple(int(array.shape[self.axes.index(a)]) for a in "yx")
        self.dtype = np.dtype(array.dtype)
        if self.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"{self.name}: pixel type {self.dtype} not supported (8- or 16-bit grey or colour)")

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Grey window ``[y0:y1, x0:x1]`` as uint8 or uint16."""
        index = tuple(slice(y0, y1) if a == "y" else slice(x0, x1) if a == "x" else
                      slice(None) if a in "cs" and size > 1 else 0 for a, size in zip(self.axes, self.array.shape))
        window = np.asarray(self.array[index])
        kept = [a for a, size in zip(self.axes, self.array.shape) if a in "yx" or (a in "cs" and size > 1)]
        if len(kept) == 3:  # colour: channels last for rgb2gray
            window = np.moveaxis(window, kept.index("c" if "c" in kept else "s"), -1)
        return to_single_channel(window, self.name)


@functools.lru_cache(maxsize=8)
def _cached_source(key: str, version: tuple = ()) -> SlideSource:
    return SlideSource(key)


def _file_version(path: Path) -> tuple:
    """Size and modification time of a file (a Zarr store: of its folder), so that a slide rewritten in place is
    opened afresh rather than read through a handle on the old file."""
    try:
        stat = path.stat()
    except OSError:
        return ()
    return int(stat.st_size) if path.is_file() else 0, int(stat.st_mtime_ns)


def open_slide(source) -> SlideSource:
    """A :class:`SlideSource`, opened once per process for paths (Dask tasks call this for every block), and again
    when the file's size or modification time changed."""
    if isinstance(source, SlideSource):
        return source
    if isinstance(source, np.ndarray):
        return SlideSource(source)
    path = Path(source).resolve()
    return _cached_source(str(path), _file_version(path))


class LabelSlide:
    """A 2D view (``shape``, ``dtype``, ``[y0:y1, x0:x1]`` slicing to NumPy) of a label slide whose leading axes
    (OME-Zarr t, c, z) have size 1."""

    def __init__(self, array, name):
        self.array = array
        lead = array.shape[:-2]
        if any(size != 1 for size in lead):
            raise ValueError(f"{name}: expected a 2D label image, got shape {array.shape}")
        self.lead = (0,) * len(lead)
        self.shape = tuple(array.shape[-2:])
        self.dtype = array.dtype

    def __getitem__(self, key):
        return np.asarray(self.array[self.lead + tuple(key)])


def open_label_slide(source, what: str = "label image"):
    """A 2D array-like over a label slide: a NumPy, Zarr or Dask array as it is, or a Zarr/OME-Zarr/TIFF path."""
    if isinstance(source, np.ndarray):
        return source
    if not isinstance(source, (str, os.PathLike)):
        if hasattr(source, "shape") and hasattr(source, "__getitem__"):
            return source  # a zarr or dask array
        raise ValueError(f"unsupported {what} source {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: {what} not found")
    array, _ = open_slide_array(path)
    return LabelSlide(array, path)


def read_labels(path: str | os.PathLike):
    """The label array (``zarr.Array``) of a slide segmentation ``<stem>_seg.zarr`` (OME-Zarr, level 0)."""
    array, _ = open_slide_array(path)
    return array


# ---------------------------------------------------------------------------------------------------- running
@contextlib.contextmanager
def dask_client(scheduler=None):
    """None for Dask's local threads; the given ``distributed.Client`` as it is; or a client of the scheduler at an
    address such as ``tcp://host:8786`` (closed afterwards)."""
    if scheduler is None or scheduler == "":
        yield None
        return
    from distributed import Client

    if isinstance(scheduler, Client):
        yield scheduler
    else:
        with Client(scheduler) as client:
            yield client


def run_block_tasks(function: Callable, argument_lists: Sequence[Sequence], client=None, workers: int | None = 2,
                    progress: bool = True, description: str = "blocks", initial: int = 0,
                    total: int | None = None) -> list:
    """Run ``function(*args)`` for each argument list as Dask tasks, with a tqdm progress bar; results in order.

    Without ``client``: Dask's threaded scheduler with ``workers`` threads (None: one per core). With a
    ``distributed.Client``: futures on its cluster; on the first failure the rest are cancelled and the error is
    raised.
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
