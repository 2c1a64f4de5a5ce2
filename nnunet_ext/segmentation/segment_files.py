"""``nnunet-ext segment`` on many inputs: an image, a folder, a BIDS dataset or whole slides.

Images that fit in memory are predicted in one piece by nnU-Net's own pipeline and written as nnU-Net's label image
``<stem>.png`` (0 background, then the dataset's labels: 1 myelin, 2 axon) with AxonDeepSeg's masks beside it:
``<stem>_seg-axon.png`` and ``<stem>_seg-myelin.png`` (0/255) and ``<stem>_seg-axonmyelin.png`` (axon 255, myelin
127). Larger images, Zarr/OME-Zarr stores and big TIFFs are whole slides: predicted block by block
(:mod:`nnunet_ext.segmentation.slide_prediction`) into ``<stem>_seg.zarr`` with a subsampled ``<stem>_seg-overview.png``.
``morphometrics=True`` then runs :mod:`nnunet_ext.morphometrics` on the results.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nnunet_ext.morphometrics.measure_files import MorphometricsInput, run_morphometrics, run_slide
from nnunet_ext.segmentation.predictor import (ModelSpec, axon_myelin_values, cached_predictor, predict_image,
                                               uaxon_value)
from nnunet_ext.io.atomic import atomic_output_path, write_json_atomically
from nnunet_ext.io.bids import (ADS_MASK_SUFFIXES, ADS_MASK_VALUE, ADS_UAXON_SUFFIX, ads_masks_from_labels,
                                find_bids_images, is_bids_dataset)
from nnunet_ext.io.images import (IMAGE_EXTENSIONS, image_shape, is_zarr, read_large_grey_image, strip_extension,
                                  write_png)
from nnunet_ext.io.pixel_size import PixelSizeNotFoundError, find_pixel_size
from nnunet_ext.io.slides import open_slide, read_labels
from nnunet_ext.segmentation.slide_prediction import DEFAULT_BLOCK_SIZE, save_overview_png, segment_slide

ADS_SUFFIXES = ADS_MASK_SUFFIXES
OUTPUT_SUFFIXES = (*ADS_SUFFIXES, "_seg-overview", "_seg")
# One-piece prediction takes 25-32 bytes per pixel above the loaded model (measured at 4-17 megapixels): 2^25
# pixels (for example 5800 x 5800) need about 1 GB. Larger images go block by block.
DEFAULT_MAX_IMAGE_PIXELS = 2**25
MORPHOMETRICS_FOLDER = "morphometrics"


@dataclass
class SegmentationInput:
    """One image or slide to segment, and where its outputs go."""

    path: Path
    name: str
    out_subdir: Path  # relative to the output folder (BIDS: sub-XX/micr)
    slide: bool
    pixel_size_um: float | None = None
    pixel_size_source: str = ""
    shape: tuple[int, int] | None = None

    def label_path(self, out_dir: Path) -> Path:
        return out_dir / self.out_subdir / (f"{self.name}_seg.zarr" if self.slide else f"{self.name}.png")

    def planned_outputs(self, out_dir: Path, save_probabilities: bool = False) -> list[Path]:
        folder = out_dir / self.out_subdir
        if self.slide:
            return [folder / f"{self.name}_seg.zarr", folder / f"{self.name}_seg-overview.png"]
        paths = [folder / f"{self.name}{suffix}.png" for suffix in ADS_SUFFIXES] + [self.label_path(out_dir)]
        paths += [folder / f"{self.name}.json"] if self.pixel_size_um is not None else []  # the size's sidecar
        return paths + ([folder / f"{self.name}.npz"] if save_probabilities else [])


def _pixel_size(path: Path, option: float | None) -> tuple[float | None, str]:
    try:
        return find_pixel_size(path, option)
    except PixelSizeNotFoundError:  # none given: fine for segmenting; a broken sidecar still raises, naming it
        return None, ""


def discover_segmentation_inputs(path: str | os.PathLike, pixel_size_um: float | None = None,
                                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> list[SegmentationInput]:
    """The images and slides under ``path``: an image file, a Zarr/OME-Zarr store, a folder of them, or a BIDS
    microscopy dataset (``sub-*/micr/*``, pixel sizes from the sidecars).

    Pixel sizes: ``pixel_size_um`` if given, else the BIDS sidecar, a ``<stem>.json`` sidecar or a
    ``pixel_size_in_micrometer.txt`` beside the image (None when there is none). Images above
    ``max_image_pixels`` are predicted as whole slides.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    items: list[SegmentationInput] = []

    def add(file: Path, subdir: Path, size: float | None = None, size_source: str = ""):
        if size is None:
            size, size_source = _pixel_size(file, pixel_size_um)
        if is_zarr(file):
            items.append(SegmentationInput(file, strip_extension(file.name), subdir, True, size, size_source,
                                           open_slide(file).shape))
            return
        shape = image_shape(file)
        is_tiff = file.name.lower().endswith((".tif", ".tiff"))
        slide = shape[0] * shape[1] > max_image_pixels
        if slide and not is_tiff:
            slide = "memory"  # a large PNG/JPEG cannot be read by windows: read it whole, predict by blocks
        items.append(SegmentationInput(file, strip_extension(file.name), subdir, bool(slide), size,
                                       size_source, shape))

    if path.is_file() or is_zarr(path):
        if path.is_file() and not path.name.lower().endswith(IMAGE_EXTENSIONS):
            raise ValueError(f"{path}: not an image ({', '.join(IMAGE_EXTENSIONS)}) or Zarr store")
        add(path, Path("."))
    elif is_bids_dataset(path):
        for image in find_bids_images(path):
            size, source = (pixel_size_um, "option") if pixel_size_um is not None else (
                (image.pixel_size_um, "BIDS sidecar") if image.pixel_size_um is not None else (None, ""))
            add(image.path, image.path.parent.relative_to(path), size, source)
    else:
        for file in sorted(path.iterdir()):
            if file.name.startswith(".") or file.name.endswith(".partial"):
                continue
            stem = strip_extension(file.name)
            if is_zarr(file):
                if stem.endswith("_seg"):
                    continue  # our own output
                add(file, Path("."))
            elif file.is_file() and file.name.lower().endswith(IMAGE_EXTENSIONS):
                if stem.endswith(OUTPUT_SUFFIXES) or stem.endswith("_qc"):
                    continue  # masks and overviews beside the images (ours or AxonDeepSeg's)
                add(file, Path("."))
        if not items:
            raise FileNotFoundError(f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)}) or Zarr stores found")
    names = [(item.out_subdir, item.name) for item in items]
    duplicates = sorted({f"{d / n}" for d, n in names if names.count((d, n)) > 1})
    if duplicates:
        raise ValueError(f"{path}: several inputs would write the same outputs: {', '.join(duplicates)}")
    return items


@dataclass
class SegmentationRecord:
    """One segmented input, for the summary."""

    name: str
    shape: tuple[int, int]
    seconds: float
    outputs: list[Path]
    slide: bool = False
    skipped: bool = False
    blocks: int = 0
    blocks_resumed: int = 0
    fractions: dict = field(default_factory=dict)  # label name -> fraction of pixels


def write_ads_masks(labels: np.ndarray, folder: Path, name: str, myelin_value: int, axon_value: int) -> list[Path]:
    """AxonDeepSeg's three mask PNGs of a label image; returns their paths."""
    masks = ads_masks_from_labels(labels == axon_value, labels == myelin_value)
    return [write_png(folder / f"{name}{suffix}.png", mask) for suffix, mask in masks.items()]


def segment_inputs(inputs: list[SegmentationInput], out_dir: str | os.PathLike, spec: ModelSpec,
                   save_probabilities: bool = False, overwrite: bool = False, continue_existing: bool = False,
                   block_size: int = DEFAULT_BLOCK_SIZE, scheduler=None, workers: int | None = None,
                   morphometrics: bool = False, axon_shape: str = "circle", progress: bool = True,
                   postprocess: dict | None = None) -> dict:
    """Segment every input into ``out_dir``; returns a summary dict (``records``, ``morphometrics``, totals).

    Existing outputs are an error unless ``overwrite`` (replace them) or ``continue_existing`` (skip inputs whose
    outputs all exist). Interrupted slides resume in any case.
    """
    out_dir = Path(out_dir)
    all_inputs = {item.path.resolve() for item in inputs}
    for item in inputs:
        for planned in item.planned_outputs(out_dir, save_probabilities):
            if planned.resolve() in all_inputs:
                raise ValueError(f"{planned}: writing {item.name}'s outputs there would overwrite an input; choose "
                                 f"another output folder")
    existing = [p for item in inputs for p in item.planned_outputs(out_dir, save_probabilities) if p.exists()]
    if existing and not (overwrite or continue_existing):
        listed = ", ".join(str(p) for p in existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise FileExistsError(f"{len(existing)} output(s) already exist ({listed}); use --overwrite to replace them "
                              f"or --continue to skip finished inputs")
    predictor = cached_predictor(spec)
    labels_map = dict(predictor.dataset_json["labels"])
    values = axon_myelin_values(labels_map)
    if morphometrics:
        if values is None:
            raise ValueError(f"{spec.model_folder}: the model has no 'axon' and 'myelin' labels ({labels_map}); "
                             f"morphometrics need them")
        missing = [str(item.path) for item in inputs if item.pixel_size_um is None]
        if missing:
            raise ValueError(f"no pixel size for {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}: give "
                             f"--pixel-size, a BIDS sidecar, <stem>.json or pixel_size_in_micrometer.txt")
    records = []
    started = time.perf_counter()
    created: list[Path] = []  # folders this run made, removed again if a failure leaves them empty
    try:
        for item in tqdm(inputs, desc="segment", unit="image", disable=not progress or len(inputs) < 2):
            planned = item.planned_outputs(out_dir, save_probabilities)
            if continue_existing and not overwrite and all(p.exists() for p in planned):
                records.append(SegmentationRecord(item.name, item.shape, 0.0, planned, item.slide, skipped=True))
                continue
            folder = out_dir / item.out_subdir
            created += [d for d in (folder, *folder.parents) if not d.exists() and d not in created]
            folder.mkdir(parents=True, exist_ok=True)
            if item.slide:
                records.append(_segment_slide_input(item, folder, spec, labels_map, values, save_probabilities,
                                                    overwrite, block_size, scheduler, workers, progress))
            else:
                records.append(_segment_image_input(item, folder, predictor, labels_map, values,
                                                    save_probabilities))
    except BaseException:
        for folder in sorted(created, key=lambda d: len(d.parts), reverse=True):  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: finished outputs (and a slide's .partial) stay
        raise
    summary = {"records": records, "seconds": time.perf_counter() - started, "morphometrics": None,
               "output": out_dir}
    if morphometrics:
        summary["morphometrics"] = _run_morphometrics(inputs, out_dir, values, axon_shape, overwrite or
                                                      continue_existing, scheduler, workers, postprocess,
                                                      uaxon_value(labels_map))
    return summary


def _fractions(labels: np.ndarray, labels_map: dict) -> dict:
    counts = np.bincount(labels.ravel(), minlength=1)
    return {name: float(counts[value] / labels.size) if isinstance(value, int) and value < len(counts) else 0.0
            for name, value in labels_map.items() if name != "background"}


def _segment_image_input(item, folder, predictor, labels_map, values, save_probabilities) -> SegmentationRecord:
    started = time.perf_counter()
    image = read_large_grey_image(item.path)
    result = predict_image(predictor, image, return_probabilities=save_probabilities)
    labels, probabilities = result if save_probabilities else (result, None)
    outputs = []
    if values is not None:
        outputs += write_ads_masks(labels, folder, item.name, *values)
    uaxon = uaxon_value(labels_map)
    if uaxon is not None:  # a model trained with 'convert bids --uaxon label': AxonDeepSeg 5.5's uaxon mask
        outputs.append(write_png(folder / f"{item.name}{ADS_UAXON_SUFFIX}.png",
                                 (labels == uaxon).astype(np.uint8) * ADS_MASK_VALUE))
    if probabilities is not None:
        target = folder / f"{item.name}.npz"
        with atomic_output_path(target) as temporary:
            np.savez_compressed(temporary, probabilities=probabilities.astype(np.float32))
        outputs.append(target)
    if item.pixel_size_um is not None:  # a BIDS-style sidecar: 'morphometrics' on this folder finds the size
        outputs.append(write_json_atomically({"PixelSize": [item.pixel_size_um] * 2, "PixelSizeUnits": "um"},
                                             folder / f"{item.name}.json"))
    outputs.append(write_png(folder / f"{item.name}.png", labels))  # the label last: written means "done"
    return SegmentationRecord(item.name, tuple(labels.shape), time.perf_counter() - started, outputs,
                              fractions=_fractions(labels, labels_map))


def _segment_slide_input(item, folder, spec, labels_map, values, save_probabilities, overwrite, block_size,
                         scheduler, workers, progress) -> SegmentationRecord:
    started = time.perf_counter()
    source = read_large_grey_image(item.path) if not (is_zarr(item.path) or item.path.name.lower().endswith(
        (".tif", ".tiff"))) else item.path
    output = folder / f"{item.name}_seg.zarr"
    result = segment_slide(source, output, spec, block_size=block_size, save_probabilities=save_probabilities,
                           scheduler=scheduler, workers=workers, pixel_size_um=item.pixel_size_um,
                           overwrite=overwrite, progress=progress,
                           source_file=None if isinstance(source, Path) else item.path)
    outputs = [output]
    labels = read_labels(output)
    uaxon = uaxon_value(labels_map)
    if values is not None:  # with an unmyelinated-axon class, its overview too (the label array keeps every class)
        outputs += save_overview_png(folder / f"{item.name}_seg-overview.png", labels, *values,
                                     uaxon_path=None if uaxon is None else
                                     folder / f"{item.name}{ADS_UAXON_SUFFIX}-overview.png", uaxon_value=uaxon)
    return SegmentationRecord(item.name, result.shape, time.perf_counter() - started, outputs, slide=True,
                              blocks=result.blocks, blocks_resumed=result.blocks_skipped)


def _run_morphometrics(inputs, out_dir: Path, values, axon_shape, overwrite, scheduler, workers,
                       postprocess: dict | None = None, uaxon_label: int | None = None) -> dict:
    """Chain the morphometrics batch API: images together, each slide on its own (block-wise; the unmyelinated
    axons of a model with that class, ``uaxon_label``, measured from the label slide)."""
    myelin_value, axon_value = values
    target = out_dir / MORPHOMETRICS_FOLDER
    results = {}
    images = [MorphometricsInput(item.name, label_path=item.label_path(out_dir), image_path=item.path,
                                 pixel_size_um=item.pixel_size_um, pixel_size_source=item.pixel_size_source)
              for item in inputs if not item.slide]
    if images:
        results["images"] = run_morphometrics(images, target, axon_shape=axon_shape, myelin_label=myelin_value,
                                              axon_label=axon_value, overwrite=overwrite, postprocess=postprocess)
    for item in inputs:
        if item.slide:
            results[item.name] = run_slide(item.label_path(out_dir), target / item.name, item.pixel_size_um,
                                           axon_shape=axon_shape, myelin_label=myelin_value, axon_label=axon_value,
                                           scheduler=scheduler if isinstance(scheduler, str) else None,
                                           workers=workers, overwrite=overwrite, uaxon_label=uaxon_label)
    return results
