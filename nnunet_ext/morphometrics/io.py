"""Reading axon/myelin masks and label images, and finding their pixel size."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from nnunet_ext.morphometrics.axon import check_pixel_size

PIXEL_SIZE_FILE = "pixel_size_in_micrometer.txt"  # AxonDeepSeg's convention
# OME-NGFF space units (UDUNITS-2 names, as the specification lists them) and common abbreviations, in um.
OME_UNITS_IN_UM = {
    "angstrom": 1e-4, "attometer": 1e-12, "centimeter": 1e4, "decimeter": 1e5, "decameter": 1e7,
    "exameter": 1e24, "femtometer": 1e-9, "foot": 304800.0, "gigameter": 1e15, "hectometer": 1e8, "inch": 25400.0,
    "kilometer": 1e9, "megameter": 1e12, "meter": 1e6, "micrometer": 1.0, "mile": 1609344000.0, "millimeter": 1e3,
    "nanometer": 1e-3, "parsec": 3.0856775814913673e22, "petameter": 1e21, "picometer": 1e-6, "terameter": 1e18,
    "yard": 914400.0, "yoctometer": 1e-18, "yottameter": 1e30, "zeptometer": 1e-15, "zettameter": 1e27,
    "micron": 1.0, "um": 1.0, "\u00b5m": 1.0, "\u03bcm": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "pm": 1e-6,
}
LABEL_EXTENSIONS = (".png", ".tif", ".tiff", ".nii.gz", ".nii", ".nrrd", ".mha")


class PixelSizeNotFoundError(ValueError):
    """No source gives an image's pixel size (as opposed to a source that is there but broken)."""


def strip_extension(name: str) -> str:
    """File name without its (possibly double) extension: ``a.nii.gz`` -> ``a``."""
    lower = name.lower()
    for ext in (".ome.tiff", ".ome.tif", ".ome.zarr", ".zarr", *LABEL_EXTENSIONS, ".json"):
        if lower.endswith(ext):
            return name[: -len(ext)]
    return name


def read_image_2d(path: str | os.PathLike) -> np.ndarray:
    """Read a 2D image (PNG, TIFF or anything SimpleITK reads) as a 2D array; grey+alpha drops alpha.

    Raises ``ValueError`` naming the file when it is not 2D (a single-slice 3D volume is squeezed).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    lower = path.name.lower()
    if lower.endswith(".png"):
        from PIL import Image

        with Image.open(path) as image:
            array = np.array(image)
    elif lower.endswith((".tif", ".tiff")):
        import tifffile

        array = tifffile.imread(path)
    else:
        import SimpleITK as sitk

        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    array = np.squeeze(array) if array.ndim > 2 and 1 in array.shape[:-1] else array
    if array.ndim == 3 and array.shape[-1] in (2, 4) and lower.endswith(".png"):
        array = array[..., 0] if array.shape[-1] == 2 else array[..., :3]
    if array.ndim == 3 and array.shape[-1] == 3 and lower.endswith(".png"):
        if not (np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2])):
            raise ValueError(f"{path}: colour image; masks and label images must be single-channel")
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2D mask or label image, got shape {array.shape}")
    return array


def read_label_volume(path: str | os.PathLike) -> np.ndarray:
    """A 2D label map or a 3D stack (Z, H, W) of them, as an integer array: PNG, TIFF (stacks too), NumPy
    ``.npy``, or anything SimpleITK reads (NIfTI, NRRD, MHA, as nnU-Net writes 3D predictions).

    Raises ``ValueError`` naming the file for colour PNG/TIFF images (RGB(A) or several samples per pixel; a
    palette TIFF's indices are read as labels), non-integer values or more than three dimensions. A ``.npy``
    array has no colour metadata: its axes are taken as (H, W) or (Z, H, W).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    lower = path.name.lower()
    if lower.endswith(".png"):
        array = read_image_2d(path)
    elif lower.endswith((".tif", ".tiff")):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            # colour is in the tags: an RGB(A) image would otherwise read as H slices of W x 3(4)
            if page.photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR) \
                    or page.samplesperpixel > 1:
                photometric = getattr(page.photometric, "name", page.photometric)
                raise ValueError(f"{path}: colour TIFF (photometric {photometric}, "
                                 f"{page.samplesperpixel} samples per pixel); label maps must be single-channel "
                                 f"(write stacks with photometric='minisblack')")
            array = tif.asarray()
    elif lower.endswith(".npy"):
        array = np.load(path, allow_pickle=False)
    else:
        import SimpleITK as sitk

        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    array = np.asarray(array)
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim not in (2, 3):
        raise ValueError(f"{path}: expected a 2D label map or a (Z, H, W) stack, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        if not np.issubdtype(array.dtype, np.floating) or np.any(array != np.round(array)):
            raise ValueError(f"{path}: label map holds non-integer values ({array.dtype})")
        array = array.astype(np.int64)
    return array


def read_label_image(path: str | os.PathLike) -> np.ndarray:
    """Read a label image (nnU-Net prediction: 0 background, 1 myelin, 2 axon) as an integer array.

    An AxonDeepSeg ``*_seg-axonmyelin*.png`` (0 background, 127 myelin, 255 axon) is converted to 0/1/2.
    """
    array = read_image_2d(path)
    if not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        if np.any(array != np.round(array)):
            raise ValueError(f"{path}: label image holds non-integer values")
        array = array.astype(np.int64)
    values = np.unique(array)
    if set(values.tolist()) <= {0, 127, 255} and values.max(initial=0) > 2:
        return np.select([array == 255, array == 127], [2, 1], 0).astype(np.uint8)
    return array


def pixel_size_from_sidecar(path: str | os.PathLike) -> float:
    """Isotropic pixel size in um from a JSON sidecar with ``PixelSize`` (BIDS microscopy) or ``spacing``."""
    from nnunet_ext.dataset_conversion.bids_microscopy import pixel_size_from_sidecar as bids_pixel_size

    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    try:
        if "PixelSize" in meta:
            return bids_pixel_size(path)
        if "spacing" in meta:  # nnU-Net's Tiff3DIO sidecar: spacing in the image's own unit, assumed um here
            spacing = [float(s) for s in meta["spacing"]][-2:]
            if len(set(spacing)) != 1:
                raise ValueError(f"anisotropic spacing {spacing} is not supported")
            return check_pixel_size(spacing[0])
    except (TypeError, ValueError) as error:  # e.g. a non-numeric PixelSize: name the file once
        message = str(error)
        raise ValueError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    raise ValueError(f"{path}: no 'PixelSize' (BIDS) or 'spacing' field")


def read_pixel_size_file(path: str | os.PathLike) -> float:
    """Pixel size from an AxonDeepSeg ``pixel_size_in_micrometer.txt`` (one number, um)."""
    path = Path(path)
    text = path.read_text().strip()
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path}: expected one number (um per pixel), got {text[:40]!r}") from None
    try:
        return check_pixel_size(value)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _ome_multiscales(path: Path) -> list | None:
    """The ``multiscales`` list of a Zarr store's root attributes (OME-NGFF 0.4 or 0.5), None when it has none."""
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as error:  # noqa: BLE001 - any unreadable store is reported with its name
        raise ValueError(f"{path}: cannot open as Zarr ({error})") from None
    return ome_multiscales(node.attrs)


def ome_multiscales(attrs) -> list | None:
    """The ``multiscales`` list of a Zarr group's attributes: OME-NGFF 0.4 keeps it at the top, 0.5 under ``ome``."""
    attrs = dict(attrs)
    return attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales") or None


def pixel_size_from_ome_zarr(path: str | os.PathLike) -> float | None:
    """Isotropic pixel size in um of an OME-Zarr store's full-resolution level, from its metadata.

    The scale of the ``y`` and ``x`` axes is the product of the first dataset's ``scale`` transformations and the
    multiscale's own (OME-NGFF 0.4/0.5 ``coordinateTransformations``), converted to um with the axes' ``unit``
    (``micrometer``, ``nanometer``, ``millimeter``, ... or ``um``, ``nm``, ``mm``). Returns None when the store has
    no multiscales metadata or no scale; raises ``ValueError`` naming the store when the metadata is there but
    unusable: no unit on the y/x axes (a scale without a unit is not a length), an unknown unit, a non-positive
    scale, or different y and x pixel sizes.
    """
    path = Path(path)
    multiscales = _ome_multiscales(path)
    if not multiscales:
        return None
    multiscale = multiscales[0]
    axes = multiscale.get("axes")
    datasets = multiscale.get("datasets") or []
    transforms = list((datasets[0].get("coordinateTransformations") or []) if datasets else [])
    transforms += list(multiscale.get("coordinateTransformations") or [])
    scales = [t.get("scale") for t in transforms if t.get("type") == "scale" and t.get("scale") is not None]
    if not scales:
        return None
    if not axes or not all(isinstance(a, dict) for a in axes):
        raise ValueError(f"{path}: OME-Zarr metadata has a scale but no axes with units (OME-NGFF >= 0.4); give "
                         f"the pixel size")
    names = [str(a.get("name", "")).lower() for a in axes]
    if "y" not in names or "x" not in names:
        raise ValueError(f"{path}: OME-Zarr axes {names} have no 'y' and 'x' axis")
    sizes = {}
    for axis in ("y", "x"):
        index = names.index(axis)
        value = 1.0
        for scale in scales:
            if len(scale) != len(axes):
                raise ValueError(f"{path}: OME-Zarr scale {scale} does not match the {len(axes)} axes {names}")
            value *= float(scale[index])
        unit = axes[index].get("unit")
        if unit is None:
            raise ValueError(f"{path}: OME-Zarr axis '{axis}' has a scale ({value:g}) but no unit, so no pixel size; "
                             f"give it in um")
        factor = OME_UNITS_IN_UM.get(str(unit).strip().lower(), OME_UNITS_IN_UM.get(str(unit).strip()))
        if factor is None:
            raise ValueError(f"{path}: OME-Zarr axis '{axis}' has unit {unit!r}, not a length unit known here "
                             f"(e.g. micrometer, nanometer, millimeter)")
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{path}: OME-Zarr axis '{axis}' has a non-positive scale {value:g}")
        sizes[axis] = value * factor
    if not math.isclose(sizes["y"], sizes["x"], rel_tol=1e-9):
        raise ValueError(f"{path}: anisotropic OME-Zarr pixels ({sizes['y']:g} um in y, {sizes['x']:g} um in x) are "
                         f"not supported")
    return check_pixel_size(sizes["x"])


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and (path.name.lower().endswith(".zarr") or (path / "zarr.json").is_file()
                              or (path / ".zgroup").is_file() or (path / ".zarray").is_file())


def find_pixel_size(image_path: str | os.PathLike, pixel_size_um: float | None = None) -> tuple[float, str]:
    """Pixel size for an image, and where it came from.

    In order: ``pixel_size_um`` if given; for a Zarr store, its OME-Zarr metadata (:func:`pixel_size_from_ome_zarr`);
    a JSON sidecar beside the image (``<stem>.json``); a ``pixel_size_in_micrometer.txt`` in the image's folder.
    Raises :class:`PixelSizeNotFoundError` (a ``ValueError``) naming the image when none (and saying what was
    wrong with unusable OME metadata), and ``ValueError`` naming the file when a sidecar or
    ``pixel_size_in_micrometer.txt`` is there but unreadable.
    """
    image_path = Path(image_path)
    if pixel_size_um is not None:
        return check_pixel_size(pixel_size_um), "option"
    ome_note = ""
    if _is_zarr(image_path):
        try:
            size = pixel_size_from_ome_zarr(image_path)
        except ValueError as error:  # unusable metadata: a sidecar may still give the size; said below if not
            size, ome_note = None, f"{str(error).removeprefix(f'{image_path}: ')}; "
        else:
            ome_note = "its OME-Zarr metadata gives no scale; "
        if size is not None:
            return size, f"{image_path} (OME-Zarr metadata)"
    sidecar = image_path.with_name(strip_extension(image_path.name) + ".json")
    if sidecar.is_file():
        return pixel_size_from_sidecar(sidecar), str(sidecar)
    text_file = image_path.parent / PIXEL_SIZE_FILE
    if text_file.is_file():
        return read_pixel_size_file(text_file), str(text_file)
    raise PixelSizeNotFoundError(f"{image_path}: pixel size unknown: {ome_note}give --pixel-size, or put "
                                 f"{sidecar.name} (BIDS 'PixelSize') or {PIXEL_SIZE_FILE} beside it")
