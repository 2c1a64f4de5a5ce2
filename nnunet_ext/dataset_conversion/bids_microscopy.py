"""AxonDeepSeg-style BIDS microscopy datasets (TEM, SEM, BF, CARS, ...) to nnU-Net raw format.

Reads ``sub-*/micr/*.{png,tif,tiff}`` with their manual labels
``derivatives/labels/sub-*/micr/<stem>_seg-axonmyelin-manual.png`` (0 background, 127 myelin, 255 axon) or the
separate ``_seg-axon-manual`` / ``_seg-myelin-manual`` masks (axon wins where they overlap). Other derivatives are
ignored. nnU-Net labels: 0 background, 1 myelin, 2 axon. Pixel sizes come from the JSON sidecars, following BIDS
inheritance (the most specific applicable sidecar wins: image level, then subject level, then dataset level).
Mask values within 8 grey levels of 0/127/255 count as them (ads_sem stores some myelin as 128), a few anti-aliased
strays go to the nearest value, and a mask coded otherwise is refused (or read with ``--mask-values``).

Unmyelinated axons (AxonDeepSeg 5.5's ``<stem>_seg-uaxon-manual.png``, 0/255) follow ``uaxon``: ``"drop"`` (default)
leaves them background and warns with their counts, ``"label"`` adds the nnU-Net class ``unmyelinated axon`` = 3
(only on pixels that are background in the axon/myelin label: axon and myelin win where masks overlap), ``"error"``
refuses a dataset that has such masks.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm import tqdm

from nnunet_ext.io.bids import (MASK_VALUE_TOLERANCE, MAX_STRAY_FRACTION, UAXON_LABEL, BidsMicroscopyImage,
                                check_mask_values, find_bids_images, read_axonmyelin_mask)
from nnunet_ext.io.images import read_grey_image
from nnunet_ext.io.pixel_size import check_pixel_size
from nnunet_ext.dataset_conversion.nnunet_raw import (AXON_MYELIN_LABELS, NnUNetRawWriter, add_destination_arguments,
                                                      raw_root_from_args)

#: What ``convert bids`` does with unmyelinated-axon masks (``--uaxon``).
UAXON_MODES = ("drop", "label", "error")


def _read_binary_mask(path: Path) -> np.ndarray:
    mask = read_grey_image(path)
    threshold = np.iinfo(mask.dtype).max // 2 if mask.max() > 1 else 0
    off_nominal = int(np.count_nonzero((mask != 0) & (mask != mask.max())))
    if off_nominal > MAX_STRAY_FRACTION * mask.size:
        values, counts = np.unique(mask, return_counts=True)
        listed = ", ".join(f"{v} ({c} px)" for v, c in zip(values[:8].tolist(), counts[:8].tolist()))
        raise ValueError(f"{path}: {off_nominal} of {mask.size} pixels are neither 0 nor {mask.max()} (values "
                         f"{listed}{' ...' if values.size > 8 else ''}); an axon or myelin mask holds 0 and 255 (at "
                         f"most {MAX_STRAY_FRACTION:.1%} of anti-aliased pixels in between)")
    if off_nominal:
        warnings.warn(f"{path}: {off_nominal} pixel(s) neither 0 nor {mask.max()}; thresholded at {threshold}")
    return mask > threshold


def read_axon_myelin_label(image: BidsMicroscopyImage, mask_values=None) -> np.ndarray:
    """nnU-Net label map (0 background, 1 myelin, 2 axon) from an image's manual masks.

    ``mask_values``: the (background, myelin, axon) grey values of axonmyelin masks coded otherwise than
    AxonDeepSeg's 0/127/255 (``--mask-values``).
    """
    if "axonmyelin" in image.label_files:
        label = read_axonmyelin_mask(image.label_files["axonmyelin"], mask_values)
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


def add_uaxon_label(label: np.ndarray, image: BidsMicroscopyImage) -> tuple[np.ndarray, int, int]:
    """The label map with an image's unmyelinated axons as :data:`UAXON_LABEL` where it is background (axon and myelin
    win where masks overlap); also the mask's foreground pixel count and how many of them were overlapped."""
    uaxon = _read_binary_mask(image.label_files["uaxon"])
    if uaxon.shape != label.shape:
        raise ValueError(f"{image.label_files['uaxon']}: shape {uaxon.shape} differs from the label's {label.shape}")
    free = uaxon & (label == 0)
    label = label.copy()
    label[free] = UAXON_LABEL
    total = int(np.count_nonzero(uaxon))
    return label, total, total - int(np.count_nonzero(free))


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
                            progress: bool = True, mask_values=None, uaxon: str | None = None) -> Path:
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
    mask_values : (int, int, int), optional
        Background, myelin and axon grey values of the axonmyelin masks when not AxonDeepSeg's 0, 127, 255.
        Mask values within :data:`MASK_VALUE_TOLERANCE` of these count as them; a mask with more than
        :data:`MAX_STRAY_FRACTION` of its pixels farther away is refused, naming the file and the values.
    uaxon : {"drop", "label", "error"}, optional
        Unmyelinated-axon masks (``_seg-uaxon-<label_suffix>.png``): leave them background (``"drop"``; the default
        None does the same and warns with their counts), add them as label 3 ``unmyelinated axon`` where the
        axon/myelin label is background (``"label"``), or refuse the dataset (``"error"``).

    Returns
    -------
    Path
        The dataset folder.
    """
    roots = [Path(bids_root)] if isinstance(bids_root, (str, os.PathLike)) else [Path(r) for r in bids_root]
    if mask_values is not None:
        check_mask_values(mask_values)
    if unlabelled not in ("test", "skip", "error"):
        raise ValueError(f"unlabelled must be 'test', 'skip' or 'error', got {unlabelled!r}")
    if uaxon is not None and uaxon not in UAXON_MODES:
        raise ValueError(f"uaxon must be one of {UAXON_MODES}, got {uaxon!r}")
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
        try:
            target_pixel_size_um = check_pixel_size(target_pixel_size_um)
        except ValueError as error:
            raise ValueError(f"target pixel size: {error}") from None
        missing = [str(i.path) for i in images if i.pixel_size_um is None]
        if missing:
            raise ValueError(f"resampling needs every pixel size; no PixelSize sidecar applies to {missing}")
    with_uaxon = [i for i in images if "uaxon" in i.label_files and i.has_label]
    if with_uaxon and uaxon == "error":
        raise ValueError(f"{len(with_uaxon)} image(s) have unmyelinated-axon masks (e.g. "
                         f"{with_uaxon[0].label_files['uaxon']}); choose --uaxon label (class 3) or --uaxon drop")
    labels = dict(AXON_MYELIN_LABELS)
    if uaxon == "label":
        labels["unmyelinated axon"] = UAXON_LABEL
    uaxon_pixels = uaxon_overlap = 0
    skipped = []
    with NnUNetRawWriter(raw_root, dataset_id, dataset_name, labels, file_ending=".png",
                         overwrite=overwrite, preprocessed_root=preprocessed_root,
                         dataset_json_extra={"reference": ", ".join(str(r.resolve()) for r in roots)}) as writer:
        for image in tqdm(images, desc=f"Converting {dataset_name}", unit="image", disable=not progress):
            if not image.has_label and unlabelled != "test":
                if unlabelled == "error":
                    raise ValueError(f"{image.path}: no manual label in derivatives/labels")
                skipped.append(image.path)
                continue
            grey = read_grey_image(image.path)
            label = read_axon_myelin_label(image, mask_values) if image.has_label else None
            if label is not None and "uaxon" in image.label_files:
                labelled, total, overlap = add_uaxon_label(label, image)
                uaxon_pixels, uaxon_overlap = uaxon_pixels + total, uaxon_overlap + overlap
                if uaxon == "label":
                    label = labelled
            if label is not None and label.shape != grey.shape:
                raise ValueError(f"{image.path}: image is {grey.shape} but its label is {label.shape}")
            pixel_size = image.pixel_size_um
            if target_pixel_size_um is not None:
                grey, label = resample_to_pixel_size(grey, label, pixel_size, target_pixel_size_um)
                pixel_size = target_pixel_size_um
            is_test = image.subject in wanted_test or image.stem in wanted_test or label is None
            writer.add_case(grey, label, split="test" if is_test else "train",
                            source_files=[image.path, *image.used_label_files,
                                          *([image.label_files["uaxon"]] if uaxon == "label" and label is not None
                                            and "uaxon" in image.label_files else [])],
                            subject=f"sub-{image.subject}",
                            sample=image.sample, modality=image.modality, pixel_size_um=pixel_size,
                            source_pixel_size_um=image.pixel_size_um)
        destination = writer.finish(verify=verify)
    if with_uaxon:
        counts = (f"{len(with_uaxon)} image(s) with unmyelinated-axon masks, {uaxon_pixels} px "
                  f"({uaxon_overlap} px under axon/myelin labels, which win)")
        if uaxon == "label":
            print(f"Labelled {counts} as class {UAXON_LABEL} 'unmyelinated axon'")
        elif uaxon == "drop":
            print(f"Dropped {counts}: they are background")
        else:
            warnings.warn(f"{counts} dropped: they are background in the labels; --uaxon label keeps them as class "
                          f"{UAXON_LABEL}, --uaxon drop silences this warning")
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
    parser.add_argument("--mask-values", type=int, nargs=3, metavar=("BG", "MYELIN", "AXON"), default=None,
                        help=f"grey values of the axonmyelin masks (default AxonDeepSeg's 0 127 255); values within "
                             f"{MASK_VALUE_TOLERANCE} grey levels of them count as them, and a mask with more than "
                             f"{MAX_STRAY_FRACTION * 100:.1f}%% of its pixels farther away is refused")  # %% for argparse
    parser.add_argument("--uaxon", choices=UAXON_MODES, default=None,
                        help="unmyelinated-axon masks (_seg-uaxon-manual.png): 'label' adds class 3 'unmyelinated "
                             "axon' (axon/myelin win where masks overlap), 'error' refuses datasets with them, 'drop' "
                             "leaves them background (default: drop, with a warning giving their counts)")
    parser.set_defaults(func=_run_bids_cli)


def _run_bids_cli(args) -> int:
    destination = convert_bids_microscopy(args.bids_root, raw_root_from_args(args), args.dataset_id, args.name,
                                          test_subjects=args.test_subjects, split_file=args.split_file,
                                          target_pixel_size_um=args.target_pixel_size, unlabelled=args.unlabelled,
                                          subjects=args.subjects, modalities=args.modalities,
                                          overwrite=args.overwrite, preprocessed_root=args.preprocessed,
                                          verify=args.verify, mask_values=args.mask_values, uaxon=args.uaxon)
    print(f"Wrote {destination} (manifest: {destination / 'manifest.csv'})")
    return 0
