"""Reading images and label maps, and the rules for their file names.

Microscopy images are PNG, TIFF or JPEG, read as one grey channel of 8 or 16 bits (:func:`read_grey_image`).
Label maps and masks may also be anything SimpleITK reads (NIfTI, NRRD, MHA, as nnU-Net writes them) or NumPy
``.npy`` (:func:`read_label_volume`). A file's *stem* is its name without its (possibly double) extension
(:func:`strip_extension`: ``a.ome.tif``, ``a.nii.gz`` -> ``a``). Zarr stores are folders (:func:`is_zarr`).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from nnunet_ext.io.atomic import atomic_output_path

#: Microscopy image files (what is segmented and converted).
IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
#: Label maps and masks (what is measured and evaluated).
LABEL_EXTENSIONS = (".png", ".tif", ".tiff", ".nii.gz", ".nii", ".nrrd", ".mha")
#: Every ending :func:`strip_extension` removes, longest first.
KNOWN_ENDINGS = (".ome.zarr", ".ome.tiff", ".ome.tif", ".nii.gz", ".zarr", ".tiff", ".jpeg", ".nrrd", ".json", ".png",
                 ".tif", ".jpg", ".nii", ".mha", ".npy")


def strip_extension(name: str) -> str:
    """File name without its (possibly double) extension: ``a.nii.gz`` -> ``a``, ``b.ome.zarr`` -> ``b``."""
    lower = name.lower()
    for ending in KNOWN_ENDINGS:
        if lower.endswith(ending):
            return name[: -len(ending)]
    return name


def is_zarr(path: str | os.PathLike) -> bool:
    """True for a Zarr store: a folder named ``*.zarr`` or holding Zarr v2/v3 metadata."""
    path = Path(path)
    return path.is_dir() and (path.name.lower().endswith(".zarr") or any(
        (path / marker).is_file() for marker in ("zarr.json", ".zarray", ".zgroup")))


@contextlib.contextmanager
def reading(path: str | os.PathLike, what: str = "image"):
    """Turn whatever a reader library raises on ``path`` (Pillow's ``UnidentifiedImageError`` or "image file is
    truncated", tifffile's and SimpleITK's errors, a broken ``.npy``) into one ``ValueError`` naming the file, so that
    every command says which file is broken instead of printing a traceback. ``FileNotFoundError``, ``MemoryError``
    and ``ValueError`` s that already name the file pass through."""
    try:
        yield
    except (FileNotFoundError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as error:  # noqa: BLE001 - reader libraries raise many types for broken files
        if isinstance(error, ValueError) and str(error).startswith(str(path)):
            raise
        detail = str(error).strip() or "no detail"
        hint = ("it is above Pillow's decompression-bomb size limit" if type(error).__name__ ==
                "DecompressionBombError" else "the file may be truncated, empty or not an image")
        raise ValueError(f"{path}: cannot be read as {what} ({type(error).__name__}: {detail}); {hint}") from None


def read_grey_image(path: str | os.PathLike) -> np.ndarray:
    """Read a microscopy image as one grey channel, keeping 8 or 16 bits.

    Grey+alpha drops alpha; RGB(A) becomes luminance (scikit-image's ``rgb2gray``, Rec. 709 weights) in the input's
    bit depth. A file that cannot be decoded (truncated, empty, not an image) raises ``ValueError`` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    with reading(path, "an image"):
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):  # palette or colour model: to RGB(A) first
                    im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
                elif im.mode == "1":
                    im = im.convert("L")
                array = np.array(im)
    return to_single_channel(array, path)


def to_single_channel(array: np.ndarray, source: str | os.PathLike = "image") -> np.ndarray:
    """Grey, grey+alpha, RGB or RGBA array to one grey channel of the same integer type."""
    if array.ndim == 2:
        grey = array
    elif array.ndim == 3 and array.shape[-1] == 2:
        grey = array[..., 0]
    elif array.ndim == 3 and array.shape[-1] in (3, 4):
        from skimage.color import rgb2gray
        from skimage.util import img_as_ubyte, img_as_uint

        grey = rgb2gray(array[..., :3])
        grey = img_as_uint(grey) if array.dtype == np.uint16 else img_as_ubyte(grey)
    else:
        raise ValueError(f"{source}: expected a 2D grey, grey+alpha, RGB or RGBA image, got shape {array.shape}")
    if grey.dtype == np.bool_:
        grey = grey.astype(np.uint8) * 255
    if grey.dtype not in (np.uint8, np.uint16):
        if np.issubdtype(grey.dtype, np.integer) and grey.min() >= 0 and grey.max() < 65536:
            grey = grey.astype(np.uint16)
        else:
            raise ValueError(f"{source}: pixel type {grey.dtype} not supported (8- or 16-bit unsigned expected)")
    return grey


def image_shape(path: Path) -> tuple[int, int]:
    """Rows and columns of an image file, read from its header only."""
    if path.name.lower().endswith((".tif", ".tiff")):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, axes = series.shape, series.axes
        except Exception as error:  # tifffile raises many types for broken files
            raise ValueError(f"{path}: cannot read TIFF header ({error})") from None
        return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
    from PIL import Image

    try:
        with no_pixel_limit(), Image.open(path) as image:
            width, height = image.size
    except Exception as error:
        raise ValueError(f"{path}: cannot read image header ({error})") from None
    return height, width


@contextlib.contextmanager
def no_pixel_limit():
    """Lift Pillow's decompression-bomb limit for a block: the user names the file, and large images are what whole
    slides and their label maps are."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def read_large_grey_image(path: Path) -> np.ndarray:
    """A grey image in memory (no Pillow size limit: the user names the file, and large ones are what we are for)."""
    with no_pixel_limit():
        return read_grey_image(path)


def read_image_2d(path: str | os.PathLike) -> np.ndarray:
    """Read a 2D image (PNG, TIFF or anything SimpleITK reads) as a 2D array; grey+alpha drops alpha.

    Raises ``ValueError`` naming the file when it is not 2D (a single-slice 3D volume is squeezed).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    lower = path.name.lower()
    with reading(path, "a 2D image"):
        if lower.endswith(".png"):
            from PIL import Image

            with no_pixel_limit(), Image.open(path) as image:  # label maps of slides are large: no Pillow limit
                array = np.array(image)
        elif lower.endswith((".tif", ".tiff")):
            import tifffile

            array = tifffile.imread(path)
        elif lower.endswith(".npy"):
            array = np.load(path, allow_pickle=False)
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

        with reading(path, "a label map"), tifffile.TiffFile(path) as tif:
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
        with reading(path, "a NumPy label map"):
            array = np.load(path, allow_pickle=False)
    else:
        import SimpleITK as sitk

        with reading(path, "a label map"):
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


def write_png(path: str | os.PathLike, array: np.ndarray, overwrite: bool = True) -> Path:
    """Write a 2D uint8/uint16 (or bool, as 0/255) array as PNG through a temporary file, then rename."""
    from PIL import Image

    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    path = Path(path)
    with atomic_output_path(path, overwrite) as temporary:
        Image.fromarray(array).save(temporary, format="PNG")
    return path
