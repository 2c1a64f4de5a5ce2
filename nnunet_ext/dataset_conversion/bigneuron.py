"""BigNeuron (3D light microscopy of single neurons with SWC tracings) to a 3D nnU-Net raw dataset.

Images are TIFF stacks (axes ZYX), Vaa3D ``.v3draw`` files or Vaa3D's compressed ``.v3dpbd`` files (BigNeuron
Gold166's format, read by :mod:`nnunet_ext.io.v3dpbd`); each is paired with an SWC tracing that becomes a
binary mask (0 background, 1 neuron). The default painting is Vaa3D's ``swc_to_maskimage`` (its
``ComputemaskImage``): every node's ball, and along every parent-child segment the voxels whose distance to the
segment is at most the radius interpolated at the foot of their perpendicular (at least 1 voxel), plus the voxels of
a line drawn along the segment; :func:`swc_to_mask` gives the details. ``painting="balls"`` paints instead the
union of balls whose radius goes linearly from one node's radius to the other's, which covers slightly more on
tapered segments (the ball at a point slides outward where the radius grows). SWC ``x, y, z`` (and radii) are voxel
coordinates, 0-based, and map to array index ``[z, y, x]`` (BigNeuron's convention). Shapes are round in voxel
space, as Vaa3D paints them, whatever the voxel size: with coarse z steps, balls round in physical space would miss
whole z planes along thin neurites. The voxel size (option) is written as the dataset's spacing.
:func:`swc_to_mask` can paint physically round shapes instead.

The dataset is written as NIfTI (``.nii.gz``, SimpleITK) carrying the voxel size; ``.tif`` (nnU-Net's Tiff3DIO, with
a spacing JSON per case) is the alternative.

Vaa3D raw format (``.v3draw``), as Vaa3D's ``loadRaw2Stack`` reads it: the 24 bytes ``raw_image_stack_by_hpeng``, one
byte ``B`` or ``L`` (big or little endian), an int16 data type (1 uint8, 2 uint16, 4 float32), four sizes X, Y, Z, C
(int32, or int16 in old files: the file size tells which), then the data in C, Z, Y, X order (X fastest).
``.v3dpbd`` has the same header with the key ``v3d_volume_pkbitdf_encod`` and a compressed stream (see
:mod:`nnunet_ext.io.v3dpbd`).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from nnunet_ext.dataset_conversion.nnunet_raw import NnUNetRawWriter, add_destination_arguments, raw_root_from_args
from nnunet_ext.io.swc import SWCTree, read_swc
from nnunet_ext.io.v3dpbd import read_v3dpbd

V3DRAW_MAGIC = b"raw_image_stack_by_hpeng"
V3DRAW_DATATYPES = {1: np.uint8, 2: np.uint16, 4: np.float32}
IMAGE_SUFFIXES = (".tif", ".tiff", ".v3draw", ".v3dpbd")
NEURON_LABELS = {"background": 0, "neuron": 1}


# ------------------------------------------------------------------------------------------------ Vaa3D raw files
def read_v3draw(path: str | os.PathLike) -> np.ndarray:
    """Read a Vaa3D ``.v3draw`` file as an array of axes (C, Z, Y, X)."""
    path = Path(path)
    data = path.read_bytes()
    if not data.startswith(V3DRAW_MAGIC):
        raise ValueError(f"{path}: not a Vaa3D raw file (no '{V3DRAW_MAGIC.decode()}' header)")
    offset = len(V3DRAW_MAGIC)
    if len(data) < offset + 3:
        raise ValueError(f"{path}: truncated header")
    endian_code = data[offset:offset + 1]
    if endian_code not in (b"B", b"L"):
        raise ValueError(f"{path}: endian byte must be 'B' or 'L', got {endian_code!r}")
    endian = ">" if endian_code == b"B" else "<"
    datatype = int(np.frombuffer(data, f"{endian}i2", 1, offset + 1)[0])
    if datatype not in V3DRAW_DATATYPES:
        raise ValueError(f"{path}: data type {datatype} not supported (1 uint8, 2 uint16, 4 float32)")
    item = np.dtype(V3DRAW_DATATYPES[datatype]).newbyteorder(endian)
    for size_type in ("i4", "i2"):  # current files store int32 sizes, old ones int16: the file size decides
        header = offset + 3 + 4 * np.dtype(size_type).itemsize
        if len(data) < header:
            continue
        x, y, z, c = (int(v) for v in np.frombuffer(data, f"{endian}{size_type}", 4, offset + 3))
        if min(x, y, z, c) > 0 and len(data) == header + x * y * z * c * item.itemsize:
            array = np.frombuffer(data, item, x * y * z * c, header).reshape(c, z, y, x)
            return array.astype(item.newbyteorder("="))
    raise ValueError(f"{path}: file size {len(data)} matches neither int32 nor int16 image sizes in the header "
                     f"(truncated or not a v3draw file)")


def write_v3draw(path: str | os.PathLike, array: np.ndarray, byte_order: str = "<") -> Path:
    """Write a (Z, Y, X) or (C, Z, Y, X) uint8/uint16/float32 array as Vaa3D ``.v3draw`` (int32 sizes)."""
    array = np.asarray(array)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise ValueError(f"v3draw holds (C, Z, Y, X) arrays, got shape {array.shape}")
    datatype = {np.dtype(v): k for k, v in V3DRAW_DATATYPES.items()}.get(array.dtype.newbyteorder("="))
    if datatype is None:
        raise ValueError(f"v3draw holds uint8, uint16 or float32, got {array.dtype}")
    c, z, y, x = array.shape
    with open(path, "wb") as stream:
        stream.write(V3DRAW_MAGIC + (b"B" if byte_order == ">" else b"L"))
        stream.write(np.array([datatype], f"{byte_order}i2").tobytes())
        stream.write(np.array([x, y, z, c], f"{byte_order}i4").tobytes())
        stream.write(array.astype(array.dtype.newbyteorder(byte_order)).tobytes())
    return Path(path)


def read_neuron_image(path: str | os.PathLike, channel: int = 0) -> np.ndarray:
    """One channel of a 3D image stack (ZYX) from TIFF, ``.v3draw`` or ``.v3dpbd``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image not found")
    suffix = path.suffix.lower()
    if suffix in (".v3draw", ".v3dpbd"):
        stack = read_v3draw(path) if suffix == ".v3draw" else read_v3dpbd(path)
        if not 0 <= channel < stack.shape[0]:
            raise ValueError(f"{path}: has {stack.shape[0]} channel(s), channel {channel} asked for")
        return stack[channel]
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array, axes = series.asarray(), series.axes
    except (tifffile.TiffFileError, OSError, IndexError) as error:
        raise ValueError(f"{path}: not a readable TIFF ({error})") from None
    for channel_axis in ("C", "S"):
        if channel_axis in axes and array.ndim == 4:
            index = axes.index(channel_axis)
            if not 0 <= channel < array.shape[index]:
                raise ValueError(f"{path}: has {array.shape[index]} channel(s), channel {channel} asked for")
            array = np.take(array, channel, axis=index)
            axes = axes.replace(channel_axis, "")
    if array.ndim != 3:
        raise ValueError(f"{path}: expected a 3D stack (ZYX), got axes {axes} shape {array.shape}")
    return array


# ------------------------------------------------------------------------------------------------ SWC to mask
PAINTINGS = ("vaa3d", "balls")


def swc_to_mask(tree: SWCTree, shape: Sequence[int], voxel_size_zyx: Sequence[float] = (1.0, 1.0, 1.0),
                min_radius: float = 1.0, painting: str = "vaa3d") -> np.ndarray:
    """Binary mask of a neuron tracing, painted as Vaa3D's ``swc_to_maskimage`` does or as a union of balls.

    ``painting="vaa3d"`` (default) follows ``ComputemaskImage`` of Vaa3D's ``swc_to_maskimage`` plugin
    (``vaa3d_tools``), node by node, for voxel centres ``p`` (integer ``x, y, z``):

    * the node's ball: ``|p - c| <= max(r, min_radius)``, for ``p`` in the box ``floor(c - r) .. floor(c + r)``
      per axis (clipped to the image);
    * for a node with a parent at another place, the segment from the node ``s`` to its parent ``e``: ``dist(p) <=
      max(rr, min_radius)`` for ``p`` in the box ``floor(min(s, e) - R) .. floor(max(s, e) + R)``, ``R = max(r_s,
      r_e)``, where ``dist`` is the distance to the segment (to the nearer end beyond the ends) and ``rr`` the radius
      at the foot ``c`` of the perpendicular on the segment's line: ``r_s - (r_s - r_e) |s - c| / |e - s|`` if
      ``r_s >= r_e``, else ``r_e - (r_e - r_s) |e - c| / |e - s|`` (linear between the nodes, shrinking beyond
      them);
    * the voxels ``round(s + k (e - s) / (2 n))``, ``k = 0 .. n + 1``, ``n = max(round(|e - s|), |dx|, |dy|,
      |dz|)`` (Vaa3D's line, which stops just past the segment's middle).

    Vaa3D's minimum radius is 1 (``dist <= 1``) and acts only inside those boxes, so a node of radius 0 paints
    fewer voxels than a radius-1 ball; ``min_radius`` takes its place, and the boxes grow to ``min_radius`` when it
    exceeds 1. ``painting="balls"``: the union, over every segment, of the balls centred on the segment whose radius
    varies linearly between the two nodes' radii (each raised to ``min_radius``), and of each childless root's
    ball; on a tapered segment it holds the Vaa3D painting and about 1-2 % more voxels.

    Parameters
    ----------
    tree : SWCTree
        Tracing in voxel coordinates (``x, y, z`` -> index ``[z, y, x]``), radii in x voxels.
    shape : (Z, Y, X)
        Shape of the image.
    voxel_size_zyx : sequence of 3 floats
        Voxel size, to paint balls that are round in physical space (radii in x voxels); the default paints them
        round in voxel space, as Vaa3D does.
    min_radius : float
        Smallest radius painted (x voxels); automatic tracings often give radius 0 or 1.
    painting : {"vaa3d", "balls"}

    Returns
    -------
    (Z, Y, X) bool array
    """
    shape = tuple(int(s) for s in shape)
    spacing = np.asarray(voxel_size_zyx, dtype=np.float64)
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise ValueError(f"voxel size must be three positive numbers (z, y, x), got {voxel_size_zyx}")
    if painting not in PAINTINGS:
        raise ValueError(f"painting must be one of {PAINTINGS}, got {painting!r}")
    if painting == "vaa3d":
        return _vaa3d_mask(tree, shape, spacing, min_radius)
    points = tree.coordinates[:, ::-1] * spacing  # physical z, y, x
    radii = np.maximum(tree.radii, min_radius) * spacing[2]
    mask = np.zeros(shape, dtype=bool)
    parents = tree.parent_index
    has_child = np.zeros(len(tree), dtype=bool)
    has_child[parents[parents >= 0]] = True
    segments = [(child, parent) for child, parent in enumerate(parents) if parent >= 0]
    segments += [(node, node) for node in np.flatnonzero((parents < 0) & ~has_child)]
    for a, b in segments:
        _paint_tapered_capsule(mask, points[a], points[b], radii[a], radii[b], spacing)
    return mask


def _vaa3d_mask(tree: SWCTree, shape: tuple, spacing: np.ndarray, min_radius: float) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    voxels = tree.coordinates[:, ::-1]  # z, y, x in voxels
    points = voxels * spacing
    radii = np.maximum(tree.radii, 0.0) * spacing[2]
    floor = min_radius * spacing[2]
    widen = floor if min_radius > 1 else 0.0  # Vaa3D's own floor of 1 does not widen its boxes
    limit = np.asarray(shape) - 1
    for node, parent in enumerate(tree.parent_index):
        centre, radius = points[node], radii[node]
        reach = max(radius, widen)
        box = _vaa3d_box(centre, centre, reach, spacing, limit)
        grid = _box_grid(box, spacing)
        distance = np.sqrt(np.einsum("...i,...i", centre - grid, centre - grid))
        mask[tuple(slice(lo, hi + 1) for lo, hi in zip(*box))] |= (distance <= radius) | (distance <= floor)
        if parent < 0 or np.array_equal(tree.coordinates[node], tree.coordinates[parent]):
            continue  # a root, or a node on top of its parent (Vaa3D skips the segment)
        start, end = points[node], points[parent]
        r_start, r_end = radius, radii[parent]
        # Vaa3D's line, in voxel coordinates: k = 0 .. n + 1 steps of (e - s) / (2 n)
        delta = voxels[parent] - voxels[node]
        steps = max(int(np.floor(np.linalg.norm(delta) + 0.5)), *(int(abs(d)) for d in delta), 1)
        line = voxels[node] + np.arange(steps + 2)[:, None] * (delta / (2 * steps))
        line = np.minimum(np.floor(line + 0.5).astype(np.int64), limit)
        line = line[np.all(line >= 0, axis=1)]
        mask[tuple(line.T)] = True
        # the cone: distance to the segment against the radius at the foot of the perpendicular (the arithmetic
        # in Vaa3D's order, so that voxels exactly on the boundary fall the same way)
        box = _vaa3d_box(np.minimum(start, end), np.maximum(start, end), max(r_start, r_end, widen), spacing, limit)
        grid = _box_grid(box, spacing)
        axis = end - start
        norms21 = float(axis @ axis)
        to_start = start - grid
        norms10 = np.einsum("...i,...i", to_start, to_start)
        dots = to_start @ axis
        t1 = -dots / norms21
        distance = np.sqrt(np.maximum(norms10 - (dots * dots) / norms21, 0.0))
        distance = np.where(t1 < 0, np.sqrt(norms10), distance)
        distance = np.where(t1 > 1, np.sqrt(np.einsum("...i,...i", end - grid, end - grid)), distance)
        if r_start == r_end:
            rr = np.full_like(t1, r_start)
        else:
            t = ((grid - start) @ axis) / norms21
            foot = start + t[..., None] * axis
            if r_start >= r_end:
                rr = r_start - ((r_start - r_end) / np.sqrt(norms21)) * np.sqrt(
                    np.einsum("...i,...i", start - foot, start - foot))
            else:
                rr = r_end - ((r_end - r_start) / np.sqrt(norms21)) * np.sqrt(
                    np.einsum("...i,...i", end - foot, end - foot))
        inside = (distance <= rr) | (distance <= floor)
        mask[tuple(slice(lo, hi + 1) for lo, hi in zip(*box))] |= inside
    return mask


def _vaa3d_box(low: np.ndarray, high: np.ndarray, reach: float, spacing: np.ndarray,
               limit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last voxel index per axis of Vaa3D's box (truncated bounds, clipped to the image)."""
    first = np.clip(np.floor((low - reach) / spacing).astype(np.int64), 0, limit)
    last = np.clip(np.floor((high + reach) / spacing).astype(np.int64), 0, limit)
    return first, last


def _box_grid(box: tuple[np.ndarray, np.ndarray], spacing: np.ndarray) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(lo, hi + 1) * s for lo, hi, s in zip(*box, spacing)], indexing="ij"),
                    axis=-1)


def _paint_tapered_capsule(mask: np.ndarray, a: np.ndarray, b: np.ndarray, radius_a: float, radius_b: float,
                           spacing: np.ndarray) -> None:
    reach = max(radius_a, radius_b)
    low = np.floor((np.minimum(a, b) - reach) / spacing).astype(int)
    high = np.ceil((np.maximum(a, b) + reach) / spacing).astype(int) + 1
    low, high = np.maximum(low, 0), np.minimum(high, mask.shape)
    if np.any(high <= low):
        return  # entirely outside the image
    grid = np.stack(np.meshgrid(*[np.arange(lo, hi) * s for lo, hi, s in zip(low, high, spacing)], indexing="ij"),
                    axis=-1)
    axis = b - a
    length2 = float(axis @ axis)
    w = grid - a
    if length2 == 0.0:
        inside = np.einsum("...i,...i", w, w) <= reach ** 2
    else:
        # The union of balls c(t) = a + t (b - a), r(t) = r_a + t (r_b - r_a), t in [0, 1], holds a point iff
        # min_t |p - c(t)| - r(t) <= 0. That function of t is convex; its minimum lies where the distance along
        # the axis from the foot of the perpendicular, s, satisfies s / sqrt(s^2 + h^2) = (r_b - r_a) / |b - a|.
        length = np.sqrt(length2)
        along = (w @ axis) / length2  # t of the foot of the perpendicular
        h = np.sqrt(np.maximum(np.einsum("...i,...i", w, w) - (along * length) ** 2, 0.0))
        slope = (radius_b - radius_a) / length
        if abs(slope) < 1.0:
            t = along + h * slope / np.sqrt(1.0 - slope * slope) / length
        else:  # one end ball contains the other and every ball between
            t = np.full_like(along, 1.0 if slope > 0 else 0.0)
        t = np.clip(t, 0.0, 1.0)
        offset = w - t[..., None] * axis
        inside = np.sqrt(np.einsum("...i,...i", offset, offset)) <= radius_a + t * (radius_b - radius_a)
    mask[tuple(slice(lo, hi) for lo, hi in zip(low, high))] |= inside


# ------------------------------------------------------------------------------------------------ pairing
def find_image_tracing_pairs(inputs: Iterable[str | os.PathLike]) -> tuple[list[tuple[Path, Path | None]], list[Path]]:
    """Images under ``inputs`` (files or folders, searched recursively) with their SWC tracings.

    An image ``<stem>.<ext>`` pairs with ``<stem>.swc`` or ``<stem>.<ext>.swc`` beside it; failing that, with the
    only SWC of its folder if the folder holds a single image (BigNeuron's one-folder-per-neuron layout).

    Returns
    -------
    pairs : list of (image, swc or None)
    orphans : list of Path
        SWC files that no image claimed.
    """
    images, tracings = [], []
    for entry in inputs:
        entry = Path(entry)
        if entry.is_dir():
            files = sorted(p for p in entry.rglob("*") if p.is_file())
        elif entry.is_file():
            files = [entry]
        else:
            raise FileNotFoundError(f"{entry}: no such file or folder")
        images += [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        tracings += [p for p in files if p.suffix.lower() in (".swc", ".eswc")]
    if not images:
        raise FileNotFoundError(f"no image ({', '.join(IMAGE_SUFFIXES)}) under {', '.join(map(str, inputs))}")
    images = list(dict.fromkeys(images))
    by_folder: dict[Path, list[Path]] = {}
    for swc in dict.fromkeys(tracings):
        by_folder.setdefault(swc.parent, []).append(swc)
    images_per_folder: dict[Path, int] = {}
    for image in images:
        images_per_folder[image.parent] = images_per_folder.get(image.parent, 0) + 1
    pairs, claimed = [], set()
    for image in images:
        candidates = [s for s in by_folder.get(image.parent, []) if s.stem in (image.stem, image.name)]
        if not candidates and images_per_folder[image.parent] == 1 and len(by_folder.get(image.parent, [])) == 1:
            candidates = by_folder[image.parent]
        if len(candidates) > 1:
            raise ValueError(f"{image}: several tracings match ({', '.join(map(str, candidates))}); pass the pair "
                             f"explicitly")
        pairs.append((image, candidates[0] if candidates else None))
        claimed.update(candidates)
    orphans = [s for s in dict.fromkeys(tracings) if s not in claimed]
    return pairs, orphans


# ------------------------------------------------------------------------------------------------ conversion
def convert_bigneuron(inputs: Iterable[str | os.PathLike], raw_root: str | os.PathLike, dataset_id: int,
                      dataset_name: str, *, pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]] = (),
                      voxel_size_xyz: Sequence[float] = (1.0, 1.0, 1.0), min_radius: float = 1.0,
                      painting: str = "vaa3d", channel: int = 0, test_cases: Iterable[str] = (),
                      unlabelled: str = "test",
                      file_ending: str = ".nii.gz", overwrite: bool = False,
                      preprocessed_root: str | os.PathLike | None = None, verify: bool = False,
                      progress: bool = True) -> Path:
    """Convert BigNeuron-style image stacks with SWC tracings into a 3D nnU-Net raw dataset (0 background,
    1 neuron).

    Parameters
    ----------
    inputs : iterable of paths
        Image files or folders (paired with tracings by :func:`find_image_tracing_pairs`).
    pairs : sequence of (image, swc)
        Explicit pairs, in addition to (or instead of) ``inputs``.
    voxel_size_xyz : 3 floats
        Voxel size (x, y, z), in um, written as the dataset's spacing.
    min_radius : float
        Smallest radius painted, in x voxels.
    painting : {"vaa3d", "balls"}
        Vaa3D's ``swc_to_maskimage`` rule (default) or the union of balls (:func:`swc_to_mask`).
    channel : int
        Channel of multi-channel stacks.
    test_cases : iterable of str
        Image stems (file name without extension) held out to imagesTs/labelsTs.
    unlabelled : {"test", "skip", "error"}
        Images without a tracing: to imagesTs (default), skipped, or an error.
    file_ending : {".nii.gz", ".tif"}
    overwrite, preprocessed_root, verify :
        As for every converter.
    """
    if unlabelled not in ("test", "skip", "error"):
        raise ValueError(f"unlabelled must be 'test', 'skip' or 'error', got {unlabelled!r}")
    if file_ending not in (".nii.gz", ".tif"):
        raise ValueError(f"3D datasets are written as .nii.gz or .tif, got {file_ending!r}")
    voxel_size_xyz = tuple(float(v) for v in voxel_size_xyz)
    if len(voxel_size_xyz) != 3 or min(voxel_size_xyz) <= 0:
        raise ValueError(f"voxel size must be three positive numbers (x, y, z), got {voxel_size_xyz}")
    if min_radius < 0:
        raise ValueError(f"min radius must not be negative, got {min_radius}")
    if painting not in PAINTINGS:
        raise ValueError(f"painting must be one of {PAINTINGS}, got {painting!r}")
    inputs = list(inputs)
    found, orphans = find_image_tracing_pairs(inputs) if inputs else ([], [])
    explicit = [(Path(i), Path(s)) for i, s in pairs]
    for image, swc in explicit:
        for path in (image, swc):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: file not found")
    explicit_images = {i.resolve() for i, _ in explicit}
    all_pairs = explicit + [(i, s) for i, s in found if i.resolve() not in explicit_images]
    orphans = [o for o in orphans if o.resolve() not in {s.resolve() for _, s in explicit}]
    if not all_pairs:
        raise FileNotFoundError("no image to convert")
    stems = [_stem(i) for i, _ in all_pairs]
    duplicated = sorted({s for s in stems if stems.count(s) > 1})
    if duplicated:
        raise ValueError(f"several images share the name(s) {duplicated}; test cases and the manifest identify images "
                         f"by name, so rename them")
    test_cases = set(test_cases)
    unknown = sorted(test_cases - set(stems))
    if unknown:
        raise ValueError(f"test cases not found among the images: {unknown} (images: {stems})")
    voxel_size_zyx = voxel_size_xyz[::-1]
    skipped = []
    with NnUNetRawWriter(raw_root, dataset_id, dataset_name, NEURON_LABELS, channel_names={"0": "zscore"},
                         file_ending=file_ending, overwrite=overwrite, preprocessed_root=preprocessed_root,
                         dataset_json_extra={"reference": "BigNeuron-style stacks with SWC tracings",
                                             "voxel_size_xyz_um": list(voxel_size_xyz),
                                             "mask_painting": painting}) as writer:
        for image_path, swc_path in tqdm(all_pairs, desc=f"Converting {dataset_name}", unit="stack",
                                         disable=not progress):
            if swc_path is None and unlabelled != "test":
                if unlabelled == "error":
                    raise ValueError(f"{image_path}: no SWC tracing found for it")
                skipped.append(image_path)
                continue
            image = read_neuron_image(image_path, channel)
            if image.dtype not in (np.uint8, np.uint16, np.float32):
                image = image.astype(np.float32)
            label, outside = None, 0
            if swc_path is not None:
                tree = read_swc(swc_path)
                outside = _nodes_outside(tree, image.shape)
                if outside == len(tree):
                    raise ValueError(f"{swc_path}: every node lies outside {image_path} (shape ZYX {image.shape}); "
                                     f"is it the tracing of another image?")
                if outside:
                    warnings.warn(f"{swc_path}: {outside} of {len(tree)} node(s) outside {image_path} "
                                  f"(shape ZYX {image.shape}); painted where they overlap the image")
                label = swc_to_mask(tree, image.shape, min_radius=min_radius, painting=painting).astype(np.uint8)
            split = "test" if (_stem(image_path) in test_cases or label is None) else "train"
            writer.add_case(image, label, split=split, spacing=voxel_size_zyx,
                            source_files=[image_path] + ([swc_path] if swc_path else []), subject=_stem(image_path),
                            modality="LM", pixel_size_um=voxel_size_xyz[0], voxel_size_xyz_um=
                            "x".join(f"{v:g}" for v in voxel_size_xyz), swc_nodes_outside=outside)
        destination = writer.finish(verify=verify)
    for note, files in (("image(s) without a tracing skipped", skipped), ("tracing(s) without an image", orphans)):
        if files:
            print(f"{len(files)} {note}: {', '.join(map(str, files))}")
    return destination


def _stem(path: Path) -> str:
    return path.name[: -len(path.suffix)] if path.suffix else path.name


def _nodes_outside(tree: SWCTree, shape: Sequence[int]) -> int:
    zyx = tree.coordinates[:, ::-1]
    return int(np.count_nonzero(np.any((zyx < -0.5) | (zyx > np.asarray(shape) - 0.5), axis=1)))


def register_convert_cli(convert_subparsers) -> None:
    parser = convert_subparsers.add_parser(
        "bigneuron", help="BigNeuron 3D stacks (TIFF, .v3draw, .v3dpbd) with SWC tracings to a 3D nnU-Net dataset",
        description="Convert 3D light-microscopy stacks (TIFF ZYX, Vaa3D .v3draw or .v3dpbd) and their SWC tracings "
                    "to a 3D "
                    "nnU-Net raw dataset (0 background, 1 neuron); each tracing becomes a mask of balls painted "
                    "along its segments. Images pair with <stem>.swc beside them, or with the only SWC of a "
                    "one-image folder.")
    parser.add_argument("inputs", nargs="*", help="image files or folders")
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("IMAGE", "SWC"),
                        help="an explicit image/tracing pair (repeatable)")
    add_destination_arguments(parser)
    parser.add_argument("--voxel-size", nargs=3, type=float, default=(1.0, 1.0, 1.0), metavar=("X", "Y", "Z"),
                        help="voxel size x y z in um (default 1 1 1), written as the spacing")
    parser.add_argument("--min-radius", type=float, default=1.0,
                        help="smallest radius painted, in x voxels (default 1)")
    parser.add_argument("--painting", choices=PAINTINGS, default="vaa3d",
                        help="vaa3d: Vaa3D's swc_to_maskimage, radius at the foot of the perpendicular on each "
                             "segment (default); balls: union of balls with linearly interpolated radius")
    parser.add_argument("--channel", type=int, default=0, help="channel of multi-channel stacks (default 0)")
    parser.add_argument("--test-cases", nargs="*", default=[], metavar="STEM",
                        help="image names (without extension) held out to imagesTs/labelsTs")
    parser.add_argument("--unlabelled", choices=("test", "skip", "error"), default="test",
                        help="images without a tracing: imagesTs (default), skip, or fail")
    parser.add_argument("--file-ending", choices=(".nii.gz", ".tif"), default=".nii.gz",
                        help="NIfTI (default) or TIFF + spacing JSON (nnU-Net's Tiff3DIO)")
    parser.set_defaults(func=_run_cli)


def _run_cli(args) -> int:
    if not args.inputs and not args.pair:
        raise ValueError("give image files/folders or --pair IMAGE SWC")
    destination = convert_bigneuron(args.inputs, raw_root_from_args(args), args.dataset_id, args.name,
                                    pairs=args.pair, voxel_size_xyz=args.voxel_size, min_radius=args.min_radius,
                                    painting=args.painting,
                                    channel=args.channel, test_cases=args.test_cases, unlabelled=args.unlabelled,
                                    file_ending=args.file_ending, overwrite=args.overwrite,
                                    preprocessed_root=args.preprocessed, verify=args.verify)
    print(f"Wrote {destination}")
    return 0
