"""AxonDeepSeg-style BIDS microscopy datasets (TEM, SEM, BF, CARS, ...) to nnU-Net raw format.

Reads ``sub-*/micr/*.{png,tif,tiff}`` with their manual labels
``derivatives/labels/sub-*/micr/<stem>_seg-axonmyelin-manual.png`` (0 background, 127 myelin, 255 axon) or the
separate ``_seg-axon-manual`` / ``_seg-myelin-manual`` masks (axon wins where they overlap). Other derivatives are
ignored. nnU-Net labels: 0 background, 1 myelin, 2 axon. Pixel sizes come from the JSON sidecars, following BIDS
inheritance (the most specific applicable sidecar wins: image level, then subject level, then dataset level).
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm import tqdm

from nnunet_ext.io.bids import ADS_AXONMYELIN_VALUES, BidsMicroscopyImage, find_bids_images
from nnunet_ext.io.images import read_grey_image
from nnunet_ext.dataset_conversion.nnunet_raw import (AXON_MYELIN_LABELS, NnUNetRawWriter, add_destination_arguments,
                                                      raw_root_from_args)

# Real masks drift from the nominal values (ads_sem's sub-rat2 has myelin at 128 and a few anti-aliased pixels):
# each pixel goes to the nearest nominal value, and the number of off-nominal pixels is reported.


def _read_binary_mask(path: Path) -> np.ndarray:
    mask = read_grey_image(path)
    threshold = np.iinfo(mask.dtype).max // 2 if mask.max() > 1 else 0
    off_nominal = int(np.count_nonzero((mask != 0) & (mask != mask.max())))
    if off_nominal:
        warnings.warn(f"{path}: {off_nominal} pixel(s) neither 0 nor {mask.max()}; thresholded at {threshold}")
    return mask > threshold


def read_axon_myelin_label(image: BidsMicroscopyImage) -> np.ndarray:
    """nnU-Net label map (0 background, 1 myelin, 2 axon) from an image's manual masks."""
    if "axonmyelin" in image.label_files:
        path = image.label_files["axonmyelin"]
        mask = read_grey_image(path)
        if mask.dtype != np.uint8:
            raise ValueError(f"{path}: axonmyelin mask must be 8-bit (0, 127, 255), got {mask.dtype}")
        nominal = np.array(sorted(ADS_AXONMYELIN_VALUES))
        if mask.any() and mask.max() < 64:  # e.g. a 0/1/2 label map: it would all round to background
            raise ValueError(f"{path}: values {np.unique(mask).tolist()[:8]} but an axonmyelin mask holds 0 "
                             f"background, 127 myelin, 255 axon")
        # every grey value goes to the label of the nearest nominal value: below 64 background, 64..191 myelin
        nearest = np.abs(np.arange(256)[:, None] - nominal[None]).argmin(axis=1)
        lookup = np.array([ADS_AXONMYELIN_VALUES[v] for v in nominal], np.uint8)[nearest]
        label = lookup[mask]
        counts = np.bincount(mask.ravel(), minlength=256)
        counts[nominal] = 0
        off_nominal = np.flatnonzero(counts)
        if off_nominal.size:
            listed = ", ".join(f"{v} ({counts[v]} px)" for v in off_nominal[:6])
            warnings.warn(f"{path}: values other than 0/127/255 mapped to the nearest of those: {listed}"
                          + (" ..." if off_nominal.size > 6 else ""))
    else:
        axon = _read_binary_mask(image.label_files["axon"])
        myelin = _read_binary_mask(image.label_files["myelin"])
        if axon.shape != myelin.shape:
            raise ValueError(f"{image.label_files['axon']} and {image.label_files['myelin']}: shapes differ "
                             f"({axon.shape} vs {myelin.shape})")
        label = np.zeros(axon.shape, np.uint8)
        label[myelin] = 1
        label[axon] = 2  # axon wins where the masks overlap
    return label


def resample_to_pixel_size(image: np.ndarray, label: np.ndarray | None, pixel_size_um: float,
                           target_pixel_size_um: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Resample an image (linear, anti-aliased) and its label map (nearest) to ``target_pixel_size_um``."""
    from skimage.transform import resize

    scale = pixel_size_um / target_pixel_size_um
    shape = tuple(max(1, int(round(s * scale))) for s in image.shape)
    resized = resize(image, shape, order=1, preserve_range=True, anti_aliasing=scale < 1).round()
    resized = resized.astype(image.dtype)
    if label is not None:
        label = resize(label, shape, order=0, preserve_range=True, anti_aliasing=False).astype(label.dtype)
    return resized, label


def read_test_subjects_file(split_file: str | os.PathLike) -> set[str]:
    """Subjects (``sub-`` prefix optional) or image stems listed under ``"test"`` in a JSON split file."""
    path = Path(split_file)
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read split file ({error})") from None
    if not isinstance(content, dict) or not isinstance(content.get("test"), list):
        raise ValueError(f'{path}: expected a JSON object with a "test" list of subjects or image stems')
    return {str(s) for s in content["test"]}


def convert_bids_microscopy(bids_root: str | os.PathLike, raw_root: str | os.PathLike, dataset_id: int,
                            dataset_name: str, test_subjects: Iterable[str] = (),
                            split_file: str | os.PathLike | None = None,
                            target_pixel_size_um: float | None = None, unlabelled: str = "test",
                            label_suffix: str = "manual", subjects: Iterable[str] | None = None,
                            modalities: Iterable[str] | None = None, overwrite: bool = False,
                            preprocessed_root: str | os.PathLike | None = None, verify: bool = False,
                            progress: bool = True) -> Path:
    """Convert one or more BIDS microscopy datasets into one nnU-Net raw dataset.

    Parameters
    ----------
    bids_root : path or sequence of paths
        BIDS dataset(s). Several roots go into one dataset (subjects must then be distinct).
    raw_root : path
        nnU-Net raw folder.
    dataset_id, dataset_name : int, str
        Destination ``DatasetXXX_Name``.
    test_subjects : iterable of str
        Subjects (``rat3`` or ``sub-rat3``) or image stems whose images go to imagesTs/labelsTs.
    split_file : path, optional
        JSON file ``{"test": [...]}``, merged with ``test_subjects``.
    target_pixel_size_um : float, optional
        Resample every image to this pixel size. Default: keep pixels as they are (the resolution-ignorant
        generalist model), recording each pixel size in the manifest.
    unlabelled : {"test", "skip", "error"}
        What to do with images without manual labels.
    label_suffix : str
        Label derivative to read (``manual``).
    subjects : iterable of str, optional
        Convert only these subjects (``rat3`` or ``sub-rat3``); default all.
    modalities : iterable of str, optional
        Convert only images of these BIDS suffixes (``SEM``, ``TEM``, ``BF``, ...); default all.
    overwrite : bool
        Replace an existing dataset.
    preprocessed_root : path, optional
        nnU-Net preprocessed folder, where dataset IDs are checked too.
    verify : bool
        Run nnU-Net's dataset integrity check before moving the dataset into place.

    Returns
    -------
    Path
        The dataset folder.
    """
    roots = [Path(bids_root)] if isinstance(bids_root, (str, os.PathLike)) else [Path(r) for r in bids_root]
    if unlabelled not in ("test", "skip", "error"):
        raise ValueError(f"unlabelled must be 'test', 'skip' or 'error', got {unlabelled!r}")
    wanted_test = {s.removeprefix("sub-") for s in test_subjects}
    if split_file is not None:
        wanted_test |= {s.removeprefix("sub-") for s in read_test_subjects_file(split_file)}
    images = [image for root in roots for image in find_bids_images(root, label_suffix)]
    images = _select(images, subjects, modalities, roots)
    if len(roots) > 1:
        _check_distinct_subjects(images)
    known = {i.subject for i in images} | {i.stem for i in images}
    unknown = sorted(wanted_test - known)
    if unknown:
        raise ValueError(f"test subjects/images not found in {', '.join(map(str, roots))}: {unknown}")
    if target_pixel_size_um is not None:
        if target_pixel_size_um <= 0:
            raise ValueError(f"target pixel size must be positive, got {target_pixel_size_um}")
        missing = [str(i.path) for i in images if i.pixel_size_um is None]
        if missing:
            raise ValueError(f"resampling needs every pixel size; no PixelSize sidecar applies to {missing}")
    skipped = []
    with NnUNetRawWriter(raw_root, dataset_id, dataset_name, AXON_MYELIN_LABELS, file_ending=".png",
                         overwrite=overwrite, preprocessed_root=preprocessed_root,
                         dataset_json_extra={"reference": ", ".join(str(r.resolve()) for r in roots)}) as writer:
        for image in tqdm(images, desc=f"Converting {dataset_name}", unit="image", disable=not progress):
            if not image.has_label and unlabelled != "test":
                if unlabelled == "error":
                    raise ValueError(f"{image.path}: no manual label in derivatives/labels")
                skipped.append(image.path)
                continue
            grey = read_grey_image(image.path)
            label = read_axon_myelin_label(image) if image.has_label else None
            if label is not None and label.shape != grey.shape:
                raise ValueError(f"{image.path}: image is {grey.shape} but its label is {label.shape}")
            pixel_size = image.pixel_size_um
            if target_pixel_size_um is not None:
                grey, label = resample_to_pixel_size(grey, label, pixel_size, target_pixel_size_um)
                pixel_size = target_pixel_size_um
            is_test = image.subject in wanted_test or image.stem in wanted_test or label is None
            writer.add_case(grey, label, split="test" if is_test else "train",
                            source_files=[image.path, *image.used_label_files], subject=f"sub-{image.subject}",
                            sample=image.sample, modality=image.modality, pixel_size_um=pixel_size,
                            source_pixel_size_um=image.pixel_size_um)
        destination = writer.finish(verify=verify)
    if skipped:
        print(f"Skipped {len(skipped)} image(s) without labels: {', '.join(map(str, skipped))}")
    return destination


def _select(images: list[BidsMicroscopyImage], subjects, modalities, roots) -> list[BidsMicroscopyImage]:
    """Keep the images of the wanted subjects and modalities; naming one that is absent is an error."""
    where = ", ".join(map(str, roots))
    if subjects is not None:
        wanted = {str(s).removeprefix("sub-") for s in subjects}
        absent = sorted(wanted - {i.subject for i in images})
        if absent:
            raise ValueError(f"subjects not found in {where}: {absent}")
        images = [i for i in images if i.subject in wanted]
    if modalities is not None:
        wanted = {str(m) for m in modalities}
        absent = sorted(wanted - {i.modality for i in images})
        if absent:
            raise ValueError(f"modalities not found in {where}: {absent} (present: "
                             f"{sorted({i.modality for i in images})})")
        images = [i for i in images if i.modality in wanted]
    return images


def _check_distinct_subjects(images: list[BidsMicroscopyImage]) -> None:
    """Several BIDS roots go into one dataset only if their subjects differ (the manifest identifies them by name)."""
    roots_of_subject: dict[str, set] = {}
    for image in images:
        roots_of_subject.setdefault(image.subject, set()).add(_bids_root_of(image.path))
    shared = {s: r for s, r in roots_of_subject.items() if len(r) > 1}
    if shared:
        subject, roots = next(iter(shared.items()))
        raise ValueError(f"subject sub-{subject} appears in several datasets ({', '.join(map(str, sorted(roots)))}); "
                         f"convert them separately and merge with 'nnunet-ext aggregate'")


def _bids_root_of(image_path: Path) -> Path:
    for parent in image_path.parents:
        if parent.name.startswith("sub-"):
            return parent.parent
    return image_path.parent


def register_convert_cli(convert_subparsers) -> None:
    parser = convert_subparsers.add_parser(
        "bids", help="AxonDeepSeg-style BIDS microscopy dataset(s) (TEM, SEM, BF, CARS) to nnU-Net raw",
        description="Convert BIDS microscopy datasets with manual axon/myelin labels "
                    "(derivatives/labels/sub-*/micr/<stem>_seg-axonmyelin-manual.png, or _seg-axon/_seg-myelin) to "
                    "an nnU-Net raw dataset (labels 0 background, 1 myelin, 2 axon) with a manifest.csv.")
    parser.add_argument("bids_root", nargs="+", help="BIDS dataset folder(s)")
    add_destination_arguments(parser)
    parser.add_argument("--subjects", nargs="+", metavar="SUB", help="convert only these subjects (default: all)")
    parser.add_argument("--modalities", nargs="+", metavar="SUFFIX",
                        help="convert only images of these BIDS suffixes, e.g. SEM TEM BF (default: all)")
    parser.add_argument("--test-subjects", nargs="*", default=[], metavar="SUB",
                        help="subjects (or image stems) held out to imagesTs/labelsTs")
    parser.add_argument("--split-file", help='JSON file {"test": [subjects or image stems]}')
    parser.add_argument("--target-pixel-size", type=float, metavar="UM",
                        help="resample every image to this pixel size in um (default: keep native pixels, as the "
                             "resolution-ignorant generalist model does)")
    parser.add_argument("--unlabelled", choices=("test", "skip", "error"), default="test",
                        help="images without manual labels: put in imagesTs (default), skip, or fail")
    parser.set_defaults(func=_run_bids_cli)


def _run_bids_cli(args) -> int:
    destination = convert_bids_microscopy(args.bids_root, raw_root_from_args(args), args.dataset_id, args.name,
                                          test_subjects=args.test_subjects, split_file=args.split_file,
                                          target_pixel_size_um=args.target_pixel_size, unlabelled=args.unlabelled,
                                          subjects=args.subjects, modalities=args.modalities,
                                          overwrite=args.overwrite, preprocessed_root=args.preprocessed,
                                          verify=args.verify)
    print(f"Wrote {destination} (manifest: {destination / 'manifest.csv'})")
    return 0
