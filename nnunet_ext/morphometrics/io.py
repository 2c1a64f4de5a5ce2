"""Reading axon/myelin masks and label images, and finding their pixel size."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from nnunet_ext.morphometrics.axon import check_pixel_size

PIXEL_SIZE_FILE = "pixel_size_in_micrometer.txt"  # AxonDeepSeg's convention
LABEL_EXTENSIONS = (".png", ".tif", ".tiff", ".nii.gz", ".nii", ".nrrd", ".mha")


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
    if "PixelSize" in meta:
        return bids_pixel_size(path)
    if "spacing" in meta:  # nnU-Net's Tiff3DIO sidecar: spacing in the image's own unit, assumed um here
        spacing = [float(s) for s in meta["spacing"]][-2:]
        if len(set(spacing)) != 1:
            raise ValueError(f"{path}: anisotropic spacing {spacing} is not supported")
        return check_pixel_size(spacing[0])
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


def find_pixel_size(image_path: str | os.PathLike, pixel_size_um: float | None = None) -> tuple[float, str]:
    """Pixel size for an image, and where it came from.

    In order: ``pixel_size_um`` if given; a JSON sidecar beside the image (``<stem>.json``); a
    ``pixel_size_in_micrometer.txt`` in the image's folder. Raises ``ValueError`` naming the image when none.
    """
    image_path = Path(image_path)
    if pixel_size_um is not None:
        return check_pixel_size(pixel_size_um), "option"
    sidecar = image_path.with_name(strip_extension(image_path.name) + ".json")
    if sidecar.is_file():
        return pixel_size_from_sidecar(sidecar), str(sidecar)
    text_file = image_path.parent / PIXEL_SIZE_FILE
    if text_file.is_file():
        return read_pixel_size_file(text_file), str(text_file)
    raise ValueError(f"{image_path}: pixel size unknown: give --pixel-size, or put {sidecar.name} (BIDS "
                     f"'PixelSize') or {PIXEL_SIZE_FILE} beside it")
