"""Pixel sizes: one lookup order, one unit table, one check.

:func:`find_pixel_size` looks, in this order, at: the size given explicitly; a Zarr store's OME-Zarr metadata; a JSON
sidecar ``<stem>.json`` beside the image (BIDS ``PixelSize`` + ``PixelSizeUnits``, or nnU-Net's ``spacing``, taken as
um); AxonDeepSeg's ``pixel_size_in_micrometer.txt`` in the image's folder. BIDS datasets add sidecar inheritance
(:func:`nnunet_ext.io.bids.find_sidecar`). Every size is in micrometres per pixel and passes :func:`check_pixel_size`.
"""
from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

from nnunet_ext.io.images import is_zarr, strip_extension

#: Pixel sizes accepted, in um per pixel: from 0.01 nm (beyond any electron microscope) to 1 cm (beyond any
#: microscopy). Outside it a size is a unit mistake, and would overflow or divide by zero in the morphometrics.
PLAUSIBLE_PIXEL_SIZE_UM = (1e-5, 1e4)


def check_pixel_size(pixel_size_um) -> float:
    """Return the pixel size as a positive finite float within :data:`PLAUSIBLE_PIXEL_SIZE_UM`, or raise
    ``ValueError`` saying what is wrong (and, for an implausible size, the range accepted)."""
    if pixel_size_um is None:
        raise ValueError("pixel size is missing: give it in micrometres (um per pixel)")
    try:
        value = float(pixel_size_um)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"pixel size must be a number in um, got {pixel_size_um!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"pixel size must be a positive number of um, got {pixel_size_um!r}")
    low, high = PLAUSIBLE_PIXEL_SIZE_UM
    if not low <= value <= high:
        raise ValueError(f"pixel size {value:g} um is implausible: accepted are {low:g} to {high:g} um per pixel "
                         f"(is the unit right?)")
    return value


PIXEL_SIZE_FILE = "pixel_size_in_micrometer.txt"  # AxonDeepSeg's convention


OME_UNITS_IN_UM = {
    "angstrom": 1e-4, "attometer": 1e-12, "centimeter": 1e4, "decimeter": 1e5, "decameter": 1e7,
    "exameter": 1e24, "femtometer": 1e-9, "foot": 304800.0, "gigameter": 1e15, "hectometer": 1e8, "inch": 25400.0,
    "kilometer": 1e9, "megameter": 1e12, "meter": 1e6, "micrometer": 1.0, "mile": 1609344000.0, "millimeter": 1e3,
    "nanometer": 1e-3, "parsec": 3.0856775814913673e22, "petameter": 1e21, "picometer": 1e-6, "terameter": 1e18,
    "yard": 914400.0, "yoctometer": 1e-18, "yottameter": 1e30, "zeptometer": 1e-15, "zettameter": 1e27,
    "micron": 1.0, "um": 1.0, "\u00b5m": 1.0, "\u03bcm": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "pm": 1e-6,
}
UNIT_TO_UM = OME_UNITS_IN_UM  # the one unit table: BIDS PixelSizeUnits and OME-NGFF axis units alike
#: The units BIDS microscopy allows for ``PixelSizeUnits`` (and the micro sign's spellings of um).
BIDS_PIXEL_SIZE_UNITS = ("um", "\u00b5m", "\u03bcm", "micrometer", "nm", "mm")


def length_unit_in_um(unit: str) -> float | None:
    """Micrometres per ``unit`` (``um``, ``nm``, ``mm``, ``micrometer``, ...; case as given, then lower case), or None
    for a name that is not a length unit known here."""
    text = str(unit).strip()
    return UNIT_TO_UM.get(text, UNIT_TO_UM.get(text.lower()))


class PixelSizeNotFoundError(ValueError):
    """No source gives an image's pixel size (as opposed to a source that is there but broken)."""


def pixel_size_from_sidecar(path: str | os.PathLike) -> float:
    """Isotropic pixel size in um from a JSON sidecar: BIDS microscopy ``PixelSize`` (with ``PixelSizeUnits``,
    default um), or nnU-Net's ``spacing`` (Tiff3DIO sidecars; nnU-Net has no unit, so it is taken as um).

    Raises ``ValueError`` naming the file when the JSON is broken, holds neither field, or its values are not a
    plausible pixel size (see :func:`check_pixel_size`).
    """
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    try:
        if "PixelSize" in meta:
            size = meta["PixelSize"]
            unit = str(meta.get("PixelSizeUnits", "um")).strip()
            if unit not in BIDS_PIXEL_SIZE_UNITS:
                raise ValueError(f"PixelSizeUnits {unit!r} not understood (use um, nm or mm)")
            factor = UNIT_TO_UM[unit]
            sizes = size if isinstance(size, (list, tuple)) else [size]
            if not sizes or any(isinstance(s, (bool, str)) or s is None for s in sizes):
                raise ValueError(f"PixelSize must be a number or a list of numbers, got {size!r}")
            sizes_um = [float(s) * factor for s in sizes[:2]]
            if any(not math.isfinite(s) or s <= 0 for s in sizes_um):
                raise ValueError(f"PixelSize must be positive, got {size}")
            if len(sizes_um) == 2 and not math.isclose(sizes_um[0], sizes_um[1], rel_tol=1e-3):
                raise ValueError(f"anisotropic pixels {sizes_um} um are not supported")
            return check_pixel_size(sizes_um[0])
        if "spacing" in meta:  # nnU-Net's Tiff3DIO sidecar: spacing in the image's own unit, taken as um here
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
        factor = length_unit_in_um(unit)
        if factor is None:
            raise ValueError(f"{path}: OME-Zarr axis '{axis}' has unit {unit!r}, not a length unit known here "
                             f"(e.g. micrometer, nanometer, millimeter)")
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{path}: OME-Zarr axis '{axis}' has a non-positive scale {value:g}")
        sizes[axis] = value * factor
    if not math.isclose(sizes["y"], sizes["x"], rel_tol=1e-9):
        raise ValueError(f"{path}: anisotropic OME-Zarr pixels ({sizes['y']:g} um in y, {sizes['x']:g} um in x) are "
                         f"not supported")
    try:
        return check_pixel_size(sizes["x"])
    except ValueError as error:
        raise ValueError(f"{path}: OME-Zarr metadata: {error}") from None


def find_pixel_size(image_path: str | os.PathLike, pixel_size_um: float | None = None) -> tuple[float, str]:
    """Pixel size for an image, and where it came from.

    In order: ``pixel_size_um`` if given; for a Zarr store, its OME-Zarr metadata (:func:`pixel_size_from_ome_zarr`);
    a JSON sidecar beside the image (``<stem>.json``); a ``pixel_size_in_micrometer.txt`` in the image's folder; for
    a case of an nnU-Net dataset written by this package, its ``manifest.csv`` (:func:`manifest_pixel_size`).
    Raises :class:`PixelSizeNotFoundError` (a ``ValueError``) naming the image when none (and saying what was
    wrong with unusable OME metadata), and ``ValueError`` naming the file when a sidecar or
    ``pixel_size_in_micrometer.txt`` is there but unreadable.
    """
    image_path = Path(image_path)
    if pixel_size_um is not None:
        return check_pixel_size(pixel_size_um), "option"
    ome_note = ""
    if is_zarr(image_path):
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
    found = manifest_pixel_size(image_path)
    if found is not None:
        return found
    raise PixelSizeNotFoundError(f"{image_path}: pixel size unknown: {ome_note}give --pixel-size, or put "
                                 f"{sidecar.name} (BIDS 'PixelSize') or {PIXEL_SIZE_FILE} beside it")


MANIFEST_FILE = "manifest.csv"  # written beside dataset.json by the converters: case_id, ..., pixel_size_um


def manifest_pixel_size(image_path: str | os.PathLike) -> tuple[float, str] | None:
    """The pixel size of an nnU-Net case (``imagesTr/<case>_0000.png``, ``labelsTr/<case>.png``, a prediction named
    after its case beside them) from the dataset's ``manifest.csv`` one folder up (or beside it), and its source;
    None when there is no such manifest or row."""
    import re

    image_path = Path(image_path)
    stem = strip_extension(image_path.name)
    cases = {stem, re.sub(r"_\d{4}$", "", stem)}  # imagesTr's channel suffix
    for manifest in (image_path.parent.parent / MANIFEST_FILE, image_path.parent / MANIFEST_FILE):
        if manifest.is_file():
            sizes = _manifest_sizes(str(manifest), manifest.stat().st_mtime_ns)
            for case in cases:
                if sizes.get(case):
                    return check_pixel_size(float(sizes[case])), f"{manifest} (case {case})"
    return None


@functools.lru_cache(maxsize=8)
def _manifest_sizes(path: str, mtime_ns: int) -> dict:
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        return {row["case_id"]: row.get("pixel_size_um") or "" for row in csv.DictReader(handle)
                if row.get("case_id")}
