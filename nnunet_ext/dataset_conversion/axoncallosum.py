"""AxonCallosumEM (whole mouse corpus callosum, SEM at 4 nm, Cheng et al. 2023) to an nnU-Net raw dataset of tiles.

The public EM-SAM code reads one large 2D ``image.tif`` with its ``imagelabel.tif`` holding class ids 0 (background),
1 and 2 (myelinated axon and myelin sheath). Which of 1 and 2 is the axon is not documented, so it is an option:
``axon_class_id`` (``--axon-class-id``), **2 by default** (so the ids already match nnU-Net's labels here: 1 myelin,
2 axon); the converter counts which classes touch each other and warns when the mapping looks inverted (axons lie
inside myelin, so the axon class should border myelin far more often than background).

The image is cut into tiles (default 1024 x 1024 pixels of the output resolution, as the paper renders its patches)
without ever loading it whole: uncompressed TIFFs are memory-mapped (``tifffile.memmap``), tiled or compressed ones
are read window by window through tifffile's zarr store. Tiles belong to regions -- the genu, body and splenium of the
corpus callosum -- given either as rectangles of the large image in a small JSON file, or as separate image/label
files, one pair per region. The paper trains on the genu, validates on the body and tests on the splenium; that is
the default split of those region names. Validation tiles form the fixed fold 0 of ``splits_final.json``; test
tiles go to imagesTs/labelsTs.

Regions JSON (coordinates in pixels of the input image, half-open ``[start, stop)``)::

    {"regions": {
        "genu":     {"y": [0, 30000],     "x": [0, 40000]},
        "body":     {"y": [30000, 60000], "x": [0, 40000]},
        "splenium": {"y": [60000, 90000], "x": [0, 40000], "split": "test"}}}

Tiling of a region: whole tiles from its top-left corner; a remainder of at least half a tile becomes a smaller
tile, a shorter one is merged into the last tile (so tiles never overlap, cover the region, and no sliver narrower
than half a tile is written).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from tqdm import tqdm

from nnunet_ext.dataset_conversion.nnunet_raw import (AXON_MYELIN_LABELS, NnUNetRawWriter, add_destination_arguments,
                                                      raw_root_from_args)
from nnunet_ext.io.images import to_single_channel

DEFAULT_REGION_SPLITS = {"genu": "train", "body": "validation", "splenium": "test"}  # Cheng et al. 2023, sec. 4
DEFAULT_AXON_CLASS_ID = 2
DEFAULT_TILE_SIZE = 1024
NATIVE_PIXEL_SIZE_NM = 4.0
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "validation", "validation": "validation",
                  "test": "test", "testing": "test"}


@dataclass(frozen=True)
class Region:
    """A rectangle ``[y0, y1) x [x0, x1)`` of an image/label pair, assigned to one split."""

    name: str
    split: str
    image_file: Path
    label_file: Path
    y0: int
    y1: int
    x0: int
    x1: int


def tile_bounds(start: int, stop: int, tile: int) -> list[tuple[int, int]]:
    """Tiles ``[(a, b), ...]`` covering ``[start, stop)``: whole tiles, the remainder kept if at least half a tile,
    merged into the last tile otherwise."""
    length = stop - start
    if length <= 0:
        return []
    n_whole, remainder = divmod(length, tile)
    edges = [start + i * tile for i in range(n_whole + 1)]
    if n_whole == 0:
        edges = [start, stop]
    elif remainder >= tile / 2:
        edges.append(stop)
    else:
        edges[-1] = stop
    return list(zip(edges[:-1], edges[1:]))


def _split_name(value: str, where: str) -> str:
    split = _SPLIT_ALIASES.get(str(value).lower())
    if split is None:
        raise ValueError(f"{where}: split must be train, validation or test, got {value!r}")
    return split


def read_regions_json(path: str | os.PathLike, image_file: str | os.PathLike, label_file: str | os.PathLike,
                      split_overrides: Mapping[str, str] | None = None) -> list[Region]:
    """Regions of one large image pair from a JSON file (format in the module docstring)."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read regions JSON ({error})") from None
    if not isinstance(content, dict) or not isinstance(content.get("regions"), dict) or not content["regions"]:
        raise ValueError(f'{path}: expected {{"regions": {{"genu": {{"y": [y0, y1], "x": [x0, x1]}}, ...}}}}')
    regions = []
    for name, spec in content["regions"].items():
        where = f"{path}: region {name!r}"
        try:
            (y0, y1), (x0, x1) = [int(v) for v in spec["y"]], [int(v) for v in spec["x"]]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f'{where}: needs "y": [y0, y1] and "x": [x0, x1] in pixels') from None
        if not (0 <= y0 < y1 and 0 <= x0 < x1):
            raise ValueError(f"{where}: empty or negative rectangle y {y0}..{y1}, x {x0}..{x1}")
        split = _region_split(name, spec.get("split"), split_overrides, where)
        regions.append(Region(name, split, Path(image_file), Path(label_file), y0, y1, x0, x1))
    return regions


def _region_split(name: str, declared: str | None, overrides: Mapping[str, str] | None, where: str) -> str:
    if overrides and name in overrides:
        return _split_name(overrides[name], f"{where} (override)")
    if declared is not None:
        return _split_name(declared, where)
    if name.lower() in DEFAULT_REGION_SPLITS:
        return DEFAULT_REGION_SPLITS[name.lower()]
    raise ValueError(f"{where}: no split; give \"split\" in the JSON or --split {name}=train|validation|test "
                     f"(only {', '.join(DEFAULT_REGION_SPLITS)} have a default)")


class LazyTiff:
    """A 2D TIFF (grey ``YX`` or colour ``YXS``) whose windows are read on demand, never the whole image.

    Uncompressed, contiguous TIFFs are memory-mapped; the pages read are released from the process every
    :attr:`RELEASE_BYTES` (they stay in the page cache), so its resident memory does not grow to the file's size.
    Tiled or compressed TIFFs go through tifffile's zarr store, which decodes only the tiles or strips a window
    touches.
    """

    RELEASE_BYTES = 64 * 2**20

    def __init__(self, path: str | os.PathLike):
        import tifffile

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: file not found")
        self._store = self._map = self._file = None
        try:
            with tifffile.TiffFile(self.path) as tif:
                series = tif.series[0]
                axes, shape, dtype = series.axes, tuple(series.shape), np.dtype(series.dtype)
                page = tif.pages[0]
                chunk_bytes = int(np.prod(page.chunks)) * dtype.itemsize
                compressed = page.compression != 1
                offset, byteorder = series.dataoffset, tif.byteorder
        except (tifffile.TiffFileError, OSError, IndexError) as error:
            raise ValueError(f"{self.path}: not a readable TIFF ({error})") from None
        if axes not in ("YX", "YXS"):
            raise ValueError(f"{self.path}: expected one 2D image (axes YX or YXS), got axes {axes} shape {shape}")
        self.shape, self.dtype, self.axes = shape, dtype, axes
        self._since_release = 0
        if offset is not None and not compressed:  # one contiguous block of pixels: map it
            import mmap

            self._file = open(self.path, "rb")
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self._array = np.ndarray(shape, dtype.newbyteorder(byteorder), buffer=self._map, offset=offset)
            self.access = "memmap"
        else:  # compressed or scattered data: read through the zarr store
            import zarr

            if compressed and chunk_bytes > 512 * 2**20:
                warnings.warn(f"{self.path}: compressed in chunks of {chunk_bytes / 2**20:.0f} MiB; each window "
                              f"decodes whole chunks, so memory use follows the chunk size. Rewrite it tiled "
                              f"(e.g. tifffile.imwrite(..., tile=(1024, 1024))) to convert with little memory.")
            self._store = tifffile.imread(self.path, aszarr=True)
            self._array = zarr.open(self._store, mode="r")
            self.access = "zarr"

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        window = np.array(self._array[y0:y1, x0:x1], dtype=self.dtype)  # a copy in native byte order
        if self._map is not None:
            self._since_release += (y1 - y0) * self.shape[1] * self.dtype.itemsize
            if self._since_release > self.RELEASE_BYTES and hasattr(self._map, "madvise"):
                import mmap

                self._map.madvise(mmap.MADV_DONTNEED)  # drop the mapped pages from this process, not the cache
                self._since_release = 0
        return window

    def close(self) -> None:
        self._array = None
        if self._store is not None:
            self._store.close()
        if self._map is not None:
            self._map.close()
            self._file.close()


def _downsample_image(window: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return window
    from skimage.measure import block_reduce

    return np.round(block_reduce(window, (factor, factor), np.mean)).astype(window.dtype)


# Ties between classes of a block go to the higher label: axon over myelin over background.
LABEL_TIE_PRIORITY = (AXON_MYELIN_LABELS["axon"], AXON_MYELIN_LABELS["myelin"], AXON_MYELIN_LABELS["background"])


def _downsample_label(window: np.ndarray, factor: int, n_classes: int) -> np.ndarray:
    """Majority class of each ``factor x factor`` block; ties go to the higher label (:data:`LABEL_TIE_PRIORITY`):
    myelin wins over background and the axon over myelin. Both edges of a sheath thus move outward alike and its
    thickness is kept (on the tests' synthetic fibres, 2x: myelin 9.64 % of the pixels for 9.44 % at full
    resolution, where myelin-first ties gave 11.26 %); a sheath thinner than a block can still vanish."""
    if factor == 1:
        return window
    from skimage.measure import block_reduce

    order = [c for c in LABEL_TIE_PRIORITY if c < n_classes]
    order += [c for c in range(n_classes) if c not in order]
    counts = np.stack([block_reduce(window == c, (factor, factor), np.sum) for c in order])
    return np.asarray(order, np.uint8)[np.argmax(counts, axis=0)]  # argmax takes the first of equal counts


def class_lookup(axon_class_id: int) -> np.ndarray:
    """Lookup table from AxonCallosumEM class ids (0, 1, 2) to nnU-Net labels (0 background, 1 myelin, 2 axon)."""
    if axon_class_id not in (1, 2):
        raise ValueError(f"axon class id must be 1 or 2 (the other one is myelin), got {axon_class_id}")
    myelin_class_id = 3 - axon_class_id
    lookup = np.zeros(3, np.uint8)
    lookup[axon_class_id] = AXON_MYELIN_LABELS["axon"]
    lookup[myelin_class_id] = AXON_MYELIN_LABELS["myelin"]
    return lookup


def _contact_counts(label: np.ndarray) -> np.ndarray:
    """``counts[a, b]``: horizontally or vertically adjacent pixel pairs of labels ``a`` and ``b`` (a != b)."""
    counts = np.zeros(9, np.int64)
    for first, second in ((label[:, :-1], label[:, 1:]), (label[:-1, :], label[1:, :])):
        counts += np.bincount((3 * first + second).ravel(), minlength=9)  # pairs coded as 3 a + b
    counts = counts.reshape(3, 3)
    np.fill_diagonal(counts, 0)
    return counts + counts.T


def convert_axoncallosum(raw_root: str | os.PathLike, dataset_id: int, dataset_name: str, *,
                         image_file: str | os.PathLike | None = None, label_file: str | os.PathLike | None = None,
                         regions_json: str | os.PathLike | None = None,
                         region_files: Mapping[str, tuple[str | os.PathLike, str | os.PathLike]] | None = None,
                         split_overrides: Mapping[str, str] | None = None, tile_size: int = DEFAULT_TILE_SIZE,
                         axon_class_id: int = DEFAULT_AXON_CLASS_ID, skip_empty_tiles: bool = False,
                         source_pixel_size_nm: float = NATIVE_PIXEL_SIZE_NM, pixel_size_nm: float | None = None,
                         overwrite: bool = False, preprocessed_root: str | os.PathLike | None = None,
                         verify: bool = False, write_threads: int | None = None, progress: bool = True) -> Path:
    """Tile AxonCallosumEM into an nnU-Net raw dataset (labels 0 background, 1 myelin, 2 axon).

    Parameters
    ----------
    raw_root, dataset_id, dataset_name :
        Destination ``<raw_root>/DatasetXXX_Name``.
    image_file, label_file, regions_json :
        One large image (``image.tif``) with its label (``imagelabel.tif``, class ids 0/1/2) and the JSON file of
        its regions.
    region_files : dict, optional
        Instead: ``{region name: (image file, label file)}``, each region a whole file.
    split_overrides : dict, optional
        ``{region name: "train" | "validation" | "test"}``, over the JSON's and the default (genu train, body
        validation, splenium test).
    tile_size : int
        Tile edge in output pixels (default 1024).
    axon_class_id : {1, 2}
        Which class id of the label file is the myelinated axon (default 2); the other is the myelin sheath.
    skip_empty_tiles : bool
        Leave out tiles without any axon or myelin pixel (in every split), reported in the summary.
    source_pixel_size_nm, pixel_size_nm : float
        Pixel size of the input (4 nm for the released data) and of the output; the output pixel size must be an
        integer multiple (e.g. 8 nm, the resolution of the manual annotation): images are block-averaged, labels
        take each block's majority class (ties to the higher label: axon, then myelin, then background).
    overwrite, preprocessed_root, verify, write_threads :
        As for every converter (see :class:`~nnunet_ext.dataset_conversion.nnunet_raw.NnUNetRawWriter`); PNG
        encoding dominates the time, so more writer threads help on machines with free cores.

    Returns
    -------
    Path
        The dataset folder; ``splits_final.json`` holds the validation region as fold 0.
    """
    regions = _collect_regions(image_file, label_file, regions_json, region_files, split_overrides)
    if tile_size < 16:
        raise ValueError(f"tile size must be at least 16 pixels, got {tile_size}")
    pixel_size_nm = source_pixel_size_nm if pixel_size_nm is None else pixel_size_nm
    ratio = pixel_size_nm / source_pixel_size_nm
    factor = int(round(ratio))
    if factor < 1 or not math.isclose(ratio, factor, rel_tol=1e-6):
        raise ValueError(f"output pixel size {pixel_size_nm} nm must be an integer multiple of the input's "
                         f"{source_pixel_size_nm} nm")
    lookup = class_lookup(axon_class_id)
    source_tile = tile_size * factor

    with contextlib.ExitStack() as stack:
        opened: dict[Path, LazyTiff] = {}

        def lazy(path: Path) -> LazyTiff:
            if path not in opened:
                opened[path] = LazyTiff(path)
                stack.callback(opened[path].close)
            return opened[path]

        plan = []
        for region in regions:
            image, label = lazy(region.image_file), lazy(region.label_file)
            if label.axes != "YX" or not np.issubdtype(label.dtype, np.integer):
                raise ValueError(f"{region.label_file}: label must be a 2D integer image, got axes {label.axes} "
                                 f"type {label.dtype}")
            if image.shape[:2] != label.shape:
                raise ValueError(f"{region.image_file} is {image.shape[:2]} but {region.label_file} is {label.shape}")
            y1, x1 = (region.y1, region.x1) if region.y1 >= 0 else image.shape[:2]
            if y1 > image.shape[0] or x1 > image.shape[1]:
                raise ValueError(f"region {region.name!r} (y {region.y0}..{y1}, x {region.x0}..{x1}) exceeds "
                                 f"{region.image_file} of shape {image.shape[:2]}")
            # whole blocks of the downsampling factor only, so every output pixel averages factor^2 input pixels
            y1, x1 = y1 - (y1 - region.y0) % factor, x1 - (x1 - region.x0) % factor
            for ty in tile_bounds(region.y0, y1, source_tile):
                for tx in tile_bounds(region.x0, x1, source_tile):
                    plan.append((region, ty, tx))
        if not plan:
            raise ValueError("no tile to write: the regions are empty")
        if not any(r.split == "train" for r in regions):
            raise ValueError(f"no training region among {[f'{r.name} ({r.split})' for r in regions]}")

        contacts = np.zeros((3, 3), np.int64)
        skipped = 0
        with NnUNetRawWriter(raw_root, dataset_id, dataset_name, AXON_MYELIN_LABELS, file_ending=".png",
                             case_prefix=dataset_name, overwrite=overwrite, preprocessed_root=preprocessed_root,
                             write_threads=write_threads,
                             dataset_json_extra={"reference": "AxonCallosumEM (Cheng et al. 2023)",
                                                 "pixel_size_nm": pixel_size_nm,
                                                 "axon_class_id": axon_class_id}) as writer:
            for region, (y0, y1), (x0, x1) in tqdm(plan, desc=f"Tiling {dataset_name}", unit="tile",
                                                   disable=not progress):
                raw_label = lazy(region.label_file).read(y0, y1, x0, x1)
                if raw_label.max() > 2 or raw_label.min() < 0:
                    unknown = np.unique(raw_label[(raw_label > 2) | (raw_label < 0)])
                    raise ValueError(f"{region.label_file}: class ids {unknown.tolist()[:10]} in y {y0}..{y1}, "
                                     f"x {x0}..{x1}; expected 0 background, 1 and 2 (axon, myelin)")
                label = _downsample_label(lookup[raw_label], factor, 3)
                if skip_empty_tiles and not label.any():
                    skipped += 1
                    continue
                contacts += _contact_counts(label)
                image = lazy(region.image_file).read(y0, y1, x0, x1)
                if image.ndim == 3:
                    image = to_single_channel(image, region.image_file)
                writer.add_case(_downsample_image(image, factor), label, split=region.split,
                                source_files=[region.image_file, region.label_file], subject="AxonCallosumEM",
                                sample=region.name, modality="SEM", pixel_size_um=pixel_size_nm / 1000,
                                region=region.name, y0=y0, y1=y1, x0=x0, x1=x1)
            if not any(r.split != "test" for r in writer.records):
                raise ValueError("every tile of the training regions was empty; nothing to train on")
            destination = writer.finish(verify=verify)
    _warn_if_mapping_looks_inverted(contacts, axon_class_id)
    counts = {s: sum(r.split == s for r in writer.records) for s in ("train", "validation", "test")}
    print(f"AxonCallosumEM: {counts['train']} train, {counts['validation']} validation, {counts['test']} test tiles"
          + (f"; {skipped} empty tile(s) skipped" if skip_empty_tiles else ""))
    return destination


def _collect_regions(image_file, label_file, regions_json, region_files, split_overrides) -> list[Region]:
    if region_files and (image_file or label_file or regions_json):
        raise ValueError("give either one image/label pair with a regions JSON, or separate region files, not both")
    if region_files:
        regions = []
        for name, (image, label) in region_files.items():
            split = _region_split(name, None, split_overrides, f"region {name!r}")
            regions.append(Region(name, split, Path(image), Path(label), 0, -1, 0, -1))
    else:
        if not (image_file and label_file and regions_json):
            raise ValueError("need the image, its label and a regions JSON (or separate region files)")
        regions = read_regions_json(regions_json, image_file, label_file, split_overrides)
    unknown = sorted(set(split_overrides or {}) - {r.name for r in regions})
    if unknown:
        raise ValueError(f"split given for unknown region(s) {unknown}; regions are {[r.name for r in regions]}")
    names = [r.name for r in regions]
    if len(set(names)) != len(names):
        raise ValueError(f"region names must be distinct, got {names}")
    for a_index, a in enumerate(regions):
        for b in regions[a_index + 1:]:
            if a.image_file == b.image_file and a.y1 >= 0 and a.y0 < b.y1 and b.y0 < a.y1 and a.x0 < b.x1 \
                    and b.x0 < a.x1:
                raise ValueError(f"regions {a.name!r} and {b.name!r} overlap; tiles would leak between splits")
    return regions


def _warn_if_mapping_looks_inverted(contacts: np.ndarray, axon_class_id: int) -> None:
    axon, myelin, background = AXON_MYELIN_LABELS["axon"], AXON_MYELIN_LABELS["myelin"], 0
    axon_myelin, axon_background = contacts[axon, myelin], contacts[axon, background]
    if axon_myelin + axon_background >= 1000 and axon_background > axon_myelin:
        warnings.warn(f"pixels labelled axon (class id {axon_class_id}) border background more often than myelin "
                      f"({axon_background} vs {axon_myelin} contacts); axons lie inside myelin, so the class mapping "
                      f"may be inverted: try --axon-class-id {3 - axon_class_id}")


def _parse_assignments(values: Iterable[str], what: str) -> dict[str, str]:
    result = {}
    for value in values or ():
        name, sep, split = value.partition("=")
        if not sep or not name or not split:
            raise ValueError(f"{what} must look like NAME=SPLIT, got {value!r}")
        result[name] = split
    return result


def register_convert_cli(convert_subparsers) -> None:
    parser = convert_subparsers.add_parser(
        "axoncallosum", help="AxonCallosumEM (large 2D SEM with axon/myelin labels) to tiles in nnU-Net raw",
        description="Tile AxonCallosumEM's large image.tif/imagelabel.tif (class ids 0, 1, 2) into an nnU-Net raw "
                    "dataset without loading the image whole. Regions (genu, body, splenium) come from a JSON of "
                    "rectangles or from separate files; by default genu trains, body validates (the fixed fold 0 "
                    "of splits_final.json) and splenium is the test set.")
    parser.add_argument("--image", help="the large image (image.tif)")
    parser.add_argument("--label", help="its label image (imagelabel.tif)")
    parser.add_argument("--regions", metavar="JSON", help='regions of --image: {"regions": {"genu": {"y": [y0, y1], '
                                                          '"x": [x0, x1], "split": "train"}, ...}}')
    parser.add_argument("--region", nargs=3, action="append", metavar=("NAME", "IMAGE", "LABEL"),
                        help="a region given as its own image/label files (repeat for each region)")
    parser.add_argument("--split", action="append", metavar="REGION=SPLIT",
                        help="assign a region to train, validation or test (overrides the JSON and the default "
                             "genu=train body=validation splenium=test)")
    add_destination_arguments(parser)
    parser.add_argument("--tile-size", type=int, default=DEFAULT_TILE_SIZE, help="tile edge in pixels (default 1024)")
    parser.add_argument("--axon-class-id", type=int, choices=(1, 2), default=DEFAULT_AXON_CLASS_ID,
                        help="class id of myelinated axons in the label file; the other is myelin (default 2)")
    parser.add_argument("--skip-empty-tiles", action="store_true",
                        help="leave out tiles with no axon or myelin pixel")
    parser.add_argument("--source-pixel-size-nm", type=float, default=NATIVE_PIXEL_SIZE_NM,
                        help="pixel size of the input in nm (default 4, the released resolution)")
    parser.add_argument("--pixel-size-nm", type=float,
                        help="output pixel size in nm, an integer multiple of the input's (e.g. 8; default: keep)")
    parser.add_argument("--threads", type=int, help="threads encoding tiles (default: min(4, CPUs))")
    parser.set_defaults(func=_run_cli)


def _run_cli(args) -> int:
    region_files = {name: (image, label) for name, image, label in (args.region or [])}
    convert_axoncallosum(raw_root_from_args(args), args.dataset_id, args.name, image_file=args.image,
                         label_file=args.label, regions_json=args.regions, region_files=region_files or None,
                         split_overrides=_parse_assignments(args.split, "--split"), tile_size=args.tile_size,
                         axon_class_id=args.axon_class_id, skip_empty_tiles=args.skip_empty_tiles,
                         source_pixel_size_nm=args.source_pixel_size_nm, pixel_size_nm=args.pixel_size_nm,
                         overwrite=args.overwrite, preprocessed_root=args.preprocessed, verify=args.verify,
                         write_threads=args.threads)
    return 0
