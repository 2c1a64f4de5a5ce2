"""BIDS microscopy datasets and AxonDeepSeg's file conventions.

AxonDeepSeg lays data out as BIDS microscopy: ``sub-*/micr/<stem>_<MOD>.png`` with JSON sidecars (``PixelSize``,
``PixelSizeUnits``; BIDS inheritance: the most specific applicable sidecar wins) and manual labels in
``derivatives/labels/sub-*/micr/<stem>_seg-{axon,myelin,axonmyelin}-manual.png``. Its masks are 8-bit: axon and
myelin masks 0/255, the combined axonmyelin mask 0 background, 127 myelin, 255 axon. nnU-Net labels are 0 background,
1 myelin, 2 axon.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunet_ext.io.images import read_grey_image, read_image_2d, strip_extension
from nnunet_ext.io.pixel_size import pixel_size_from_sidecar

#: Image files of a BIDS microscopy dataset.
BIDS_IMAGE_EXTENSIONS = (".png", ".tif", ".tiff")
#: AxonDeepSeg's axonmyelin mask value -> nnU-Net label.
ADS_AXONMYELIN_VALUES = {0: 0, 127: 1, 255: 2}
ADS_MYELIN_VALUE, ADS_AXON_VALUE = 127, 255
#: Foreground value of AxonDeepSeg's separate axon and myelin masks.
ADS_MASK_VALUE = 255
#: Suffixes of AxonDeepSeg's mask files (``<stem><suffix>.png``).
ADS_MASK_SUFFIXES = ("_seg-axon", "_seg-myelin", "_seg-axonmyelin")
#: AxonDeepSeg 5.5's unmyelinated-axon mask suffix (0/255), and the nnU-Net label ``convert bids --uaxon label`` gives.
ADS_UAXON_SUFFIX = "_seg-uaxon"
UAXON_LABEL = 3


# Real masks drift from the nominal values (ads_sem's sub-rat2 has myelin at 128 and a few anti-aliased pixels), but a
# mask coded otherwise (0/85/170, 0/50/200) must not be silently re-read as other classes. So a grey value within
# MASK_VALUE_TOLERANCE of 0, 127 or 255 counts as that value; values farther from all three ("stray", e.g. anti-aliased
# edges) are mapped to the nearest one only while they cover at most MAX_STRAY_FRACTION of the mask; otherwise the mask
# is refused, naming the file and the values found. The same holds for separate axon/myelin masks (0 and their maximum).
#: Grey levels by which an axonmyelin mask value may differ from 0, 127 or 255 and still count as it.
MASK_VALUE_TOLERANCE = 8
#: Largest fraction of a mask's pixels that may hold values outside the tolerance (mapped to the nearest value).
MAX_STRAY_FRACTION = 0.001
def listed_values(counts: np.ndarray, values: np.ndarray, limit: int = 6) -> str:
    return ", ".join(f"{v} ({counts[v]} px)" for v in values[:limit]) + (" ..." if values.size > limit else "")


def refuse_stray_values(path: Path, counts: np.ndarray, stray: np.ndarray, expected: str) -> None:
    """Raise ``ValueError`` when the ``stray`` grey values cover more than :data:`MAX_STRAY_FRACTION` of the mask."""
    total = int(counts.sum())
    n_stray = int(counts[stray].sum()) if stray.size else 0
    if n_stray > MAX_STRAY_FRACTION * total:
        raise ValueError(f"{path}: {n_stray} of {total} pixels ({n_stray / total:.1%}) hold values far from {expected} "
                         f"(more than {MASK_VALUE_TOLERANCE} grey levels off): {listed_values(counts, stray)}; the "
                         f"mask seems coded otherwise, so it is refused rather than guessed (at most "
                         f"{MAX_STRAY_FRACTION:.1%} of the pixels may be such anti-aliasing strays)")


def check_mask_values(mask_values) -> dict[int, int]:
    """``(background, myelin, axon)`` grey values of axonmyelin masks as ``{value: nnU-Net label}``, or
    ``ValueError``."""
    values = [int(v) for v in mask_values]
    if len(values) != 3 or len(set(values)) != 3 or not all(0 <= v <= 255 for v in values):
        raise ValueError(f"mask values must be three different 8-bit values (background myelin axon), got "
                         f"{list(mask_values)}")
    return dict(zip(values, (0, 1, 2)))


def read_axonmyelin_mask(path: str | os.PathLike, mask_values=None) -> np.ndarray:
    """nnU-Net labels (0 background, 1 myelin, 2 axon) of an AxonDeepSeg axonmyelin mask, with the tolerance of real
    masks: values within :data:`MASK_VALUE_TOLERANCE` grey levels of 0/127/255 count as them, a few strays (at most
    :data:`MAX_STRAY_FRACTION`) go to the nearest one, with a warning; a mask coded otherwise is refused naming the
    file. ``mask_values``: the (background, myelin, axon) grey values of a mask coded otherwise (``--mask-values``).
    """
    path = Path(path)
    mask = read_grey_image(path)
    coding = ADS_AXONMYELIN_VALUES if mask_values is None else check_mask_values(mask_values)
    names = ", ".join(f"{v} ({n})" for v, n in zip(coding, ("background", "myelin", "axon")))
    if mask.dtype != np.uint8:
        raise ValueError(f"{path}: axonmyelin mask must be 8-bit ({names}), got {mask.dtype}")
    nominal = np.array(sorted(coding))
    if mask_values is None and mask.any() and mask.max() < 64:  # e.g. a 0/1/2 label map: all background
        raise ValueError(f"{path}: values {np.unique(mask).tolist()[:8]} but an axonmyelin mask holds 0 "
                         f"background, 127 myelin, 255 axon (give --mask-values for another coding)")
    # values within the tolerance of a nominal value take its label; strays (few) the nearest one's
    tolerance = min(MASK_VALUE_TOLERANCE, (int(np.diff(nominal).min()) - 1) // 2)
    distance = np.abs(np.arange(256)[:, None] - nominal[None])
    nearest = distance.argmin(axis=1)
    counts = np.bincount(mask.ravel(), minlength=256)
    stray = np.flatnonzero((distance.min(axis=1) > tolerance) & (counts > 0))
    refuse_stray_values(path, counts, stray, names if mask_values is not None else
                         "AxonDeepSeg's 0 (background), 127 (myelin) and 255 (axon)")
    lookup = np.array([coding[v] for v in nominal], np.uint8)[nearest]
    label = lookup[mask]
    counts[nominal] = 0
    off_nominal = np.flatnonzero(counts)
    if off_nominal.size:
        warnings.warn(f"{path}: values other than {'/'.join(map(str, coding))} mapped to the nearest of those "
                      f"(within {tolerance} grey levels, or few strays): {listed_values(counts, off_nominal)}")
    return label


def is_bids_dataset(folder: str | os.PathLike) -> bool:
    """True for a BIDS dataset root: a folder with ``dataset_description.json`` and ``sub-*`` entries."""
    folder = Path(folder)
    return folder.is_dir() and (folder / "dataset_description.json").is_file() and any(folder.glob("sub-*"))


def labels_from_axonmyelin(mask: np.ndarray) -> np.ndarray:
    """nnU-Net labels (0/1/2) from an AxonDeepSeg axonmyelin mask holding exactly 0, 127 and 255."""
    return np.select([mask == ADS_AXON_VALUE, mask == ADS_MYELIN_VALUE], [2, 1], 0).astype(np.uint8)


def ads_masks_from_labels(axon: np.ndarray, myelin: np.ndarray) -> dict[str, np.ndarray]:
    """AxonDeepSeg's three 8-bit masks from boolean axon and myelin masks, keyed by their file suffix."""
    combined = np.zeros(axon.shape, np.uint8)
    combined[myelin] = ADS_MYELIN_VALUE
    combined[axon] = ADS_AXON_VALUE
    return {"_seg-axon": axon.astype(np.uint8) * ADS_MASK_VALUE, "_seg-myelin": myelin.astype(np.uint8) * ADS_MASK_VALUE,
            "_seg-axonmyelin": combined}


@dataclass
class BidsMicroscopyImage:
    """One image of a BIDS microscopy dataset, with what the converter needs to know about it."""

    path: Path
    subject: str
    entities: dict
    modality: str
    pixel_size_um: float | None
    label_files: dict = field(default_factory=dict)  # "axonmyelin" | "axon" | "myelin" -> Path

    @property
    def stem(self) -> str:
        return strip_extension(self.path.name)

    @property
    def sample(self) -> str:
        return self.entities.get("sample", "")

    @property
    def has_label(self) -> bool:
        return "axonmyelin" in self.label_files or {"axon", "myelin"} <= set(self.label_files)

    @property
    def used_label_files(self) -> list[Path]:
        """The mask file(s) the label is read from: the axonmyelin mask if present, else the axon and myelin masks."""
        if "axonmyelin" in self.label_files:
            return [self.label_files["axonmyelin"]]
        return [self.label_files[k] for k in ("axon", "myelin") if k in self.label_files]


def parse_bids_name(name: str) -> tuple[dict, str]:
    """Entities and suffix of a BIDS file name: ``sub-rat3_sample-data9_SEM.png`` -> ({sub, sample}, "SEM")."""
    parts = strip_extension(name).split("_")
    entities = {}
    for part in parts[:-1]:
        key, sep, value = part.partition("-")
        if not sep:
            raise ValueError(f"{name}: '{part}' is not a BIDS key-value entity")
        entities[key] = value
    return entities, parts[-1]


def find_sidecar(image: Path, bids_root: Path) -> Path | None:
    """The most specific JSON sidecar that applies to ``image`` under BIDS inheritance, or None."""
    entities, suffix = parse_bids_name(image.name)
    folders = [image.parent]
    while folders[-1] != bids_root and bids_root in folders[-1].parents:
        folders.append(folders[-1].parent)
    best, best_rank = None, None
    for depth, folder in enumerate(folders):
        for candidate in folder.glob(f"*{suffix}.json"):
            try:
                cand_entities, cand_suffix = parse_bids_name(candidate.name)
            except ValueError:
                continue
            if cand_suffix != suffix or any(entities.get(k) != v for k, v in cand_entities.items()):
                continue
            rank = (-depth, len(cand_entities))  # nearer folder first, then more entities
            if best_rank is None or rank > best_rank:
                best, best_rank = candidate, rank
    return best


def find_bids_images(bids_root: str | os.PathLike, label_suffix: str = "manual") -> list[BidsMicroscopyImage]:
    """All microscopy images of a BIDS dataset with their pixel sizes and label files.

    Parameters
    ----------
    bids_root : path
        Root of the BIDS dataset (holds ``sub-*`` folders).
    label_suffix : str
        Which label derivatives to use: ``<stem>_seg-<class>-<label_suffix>.png``.
    """
    root = Path(bids_root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: BIDS dataset folder not found")
    images = []
    for path in sorted(root.glob("sub-*/**/micr/*")):
        if path.suffix.lower() not in BIDS_IMAGE_EXTENSIONS or "derivatives" in path.relative_to(root).parts:
            continue
        entities, suffix = parse_bids_name(path.name)
        sidecar = find_sidecar(path, root)
        image = BidsMicroscopyImage(path, entities.get("sub", ""), entities, suffix,
                                    pixel_size_from_sidecar(sidecar) if sidecar else None)
        label_dir = root / "derivatives" / "labels" / path.parent.relative_to(root)
        for kind in ("axonmyelin", "axon", "myelin", "uaxon"):  # uaxon: unmyelinated axons (ADS 5.5)
            label = label_dir / f"{image.stem}_seg-{kind}-{label_suffix}.png"
            if label.is_file():
                image.label_files[kind] = label
        if set(image.label_files) - {"uaxon"} and not image.has_label:
            only = next(v for k, v in image.label_files.items() if k != "uaxon")
            other = "myelin" if "axon" in image.label_files else "axon"
            raise ValueError(f"{only}: found without its _seg-{other}-{label_suffix}.png (or an _seg-axonmyelin-"
                             f"{label_suffix}.png); a label needs both axon and myelin masks")
        images.append(image)
    if not images:
        raise FileNotFoundError(f"{root}: no microscopy images found under sub-*/micr/ "
                                f"(extensions {', '.join(BIDS_IMAGE_EXTENSIONS)})")
    return images


def read_label_image(path: str | os.PathLike) -> np.ndarray:
    """Read a label image (nnU-Net prediction: 0 background, 1 myelin, 2 axon) as an integer array.

    An AxonDeepSeg ``*_seg-axonmyelin*.png`` (0 background, 127 myelin, 255 axon) is converted to 0/1/2, with the
    tolerance of :func:`read_axonmyelin_mask` for a file of that name.
    """
    array = read_image_2d(path)
    if not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        if np.any(array != np.round(array)):
            raise ValueError(f"{path}: label image holds non-integer values")
        array = array.astype(np.int64)
    values = np.unique(array)
    if set(values.tolist()) <= set(ADS_AXONMYELIN_VALUES) and values.max(initial=0) > 2:
        return labels_from_axonmyelin(array)
    if "_seg-axonmyelin" in strip_extension(Path(path).name) and array.dtype == np.uint8 and values.max() > 2:
        # a real ADS mask with drifted or anti-aliased values: read as 'convert bids' reads it (or refused)
        return read_axonmyelin_mask(path)
    return array
