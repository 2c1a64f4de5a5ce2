"""Morphometrics of many images: find the inputs (a file, a folder of nnU-Net predictions, ADS-style mask pairs,
or a BIDS dataset), measure them, and write per-image, combined and aggregate CSVs, QC overlays and maps."""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from nnunet_ext.io.atomic import publish_files, scratch_folder, write_json_atomically
from nnunet_ext.io.bids import UAXON_LABEL, find_bids_images, find_sidecar, is_bids_dataset, read_label_image
from nnunet_ext.io.images import IMAGE_EXTENSIONS, LABEL_EXTENSIONS, is_zarr, read_image_2d, strip_extension
from nnunet_ext.io.pixel_size import (PIXEL_SIZE_FILE, PixelSizeNotFoundError, check_pixel_size, find_pixel_size,
                                      pixel_size_from_sidecar)
from nnunet_ext.morphometrics.aggregate_metrics import AGGREGATE_KEYS, aggregate_from_counts, aggregate_morphometrics
from nnunet_ext.morphometrics.axon import (axon_morphometrics, masks_from_label_image, measure_axons, prepare_masks,
                                           read_mask_file)
from nnunet_ext.morphometrics.maps import save_map_pngs, tile_morphometrics, tile_size_in_pixels, tiles_from_counts
from nnunet_ext.morphometrics.qc import save_qc_overlay
from nnunet_ext.morphometrics.nerve import (FASCICLE_CSV_SUFFIX, NERVE_COLUMNS, NERVE_JSON_SUFFIX,
                                            fascicle_report, nerve_morphometrics, restrict_to_nerve)
from nnunet_ext.morphometrics.slide_chunks import slide_morphometrics

# AxonDeepSeg's single-file mask (mask.png of its training data): value -> class
ADS_MASK_PNG_VALUES = {0: "background", 128: "myelin", 255: "axon"}
# ADS-style mask names: <stem>_seg-axon[-suffix].ext and <stem>_seg-myelin[-suffix].ext
_AXON_MASK = re.compile(r"^(?P<stem>.+)_seg-axon(?P<suffix>(-[^_.]+)?)$")
COMBINED_CSV = "axon_morphometrics.csv"
UAXON_CSV = "uaxon_morphometrics.csv"
AGGREGATE_CSV = "aggregate_morphometrics.csv"


@dataclass
class MorphometricsInput:
    """One image to measure: either a label image or an axon/myelin mask pair, and what belongs to it."""

    name: str
    label_path: Path | None = None
    axon_path: Path | None = None
    myelin_path: Path | None = None
    image_path: Path | None = None  # microscopy image for the QC overlay
    pixel_size_um: float | None = None
    pixel_size_source: str = ""
    uaxon_path: Path | None = None  # AxonDeepSeg 5.5's unmyelinated-axon mask <stem>_seg-uaxon.png, if any

    @property
    def source(self) -> Path:
        return self.label_path if self.label_path is not None else self.axon_path


def _is_image_file(path: Path, extensions=LABEL_EXTENSIONS) -> bool:
    return path.is_file() and path.name.lower().endswith(extensions) and not path.name.startswith(".")


def _mask_pair(axon_path: Path) -> MorphometricsInput | None:
    match = _AXON_MASK.match(strip_extension(axon_path.name))
    if match is None:
        return None
    stem, suffix = match["stem"], match["suffix"]
    ext = axon_path.name[len(strip_extension(axon_path.name)):]
    myelin_path = axon_path.with_name(f"{stem}_seg-myelin{suffix}{ext}")
    if not myelin_path.is_file():
        raise FileNotFoundError(f"{axon_path}: no myelin mask {myelin_path.name} beside it")
    image_path = next((p for p in (axon_path.with_name(stem + e) for e in IMAGE_EXTENSIONS) if p.is_file()), None)
    uaxon_path = axon_path.with_name(f"{stem}_seg-uaxon{suffix}{ext}")
    return MorphometricsInput(stem, axon_path=axon_path, myelin_path=myelin_path, image_path=image_path,
                              uaxon_path=uaxon_path if uaxon_path.is_file() else None)


def discover_inputs(path: str | os.PathLike, pixel_size_um: float | None = None, label_suffix: str = "manual",
                    image_dir: str | os.PathLike | None = None) -> list[MorphometricsInput]:
    """The images to measure under ``path``, each with its pixel size.

    ``path`` may be a label image (nnU-Net prediction, 0/1/2, or ADS 0/127/255), an ADS axon mask
    ``<stem>_seg-axon*.png`` (its ``_seg-myelin`` partner is taken along), a folder of either, or a BIDS
    microscopy dataset (labels ``derivatives/labels/.../<stem>_seg-{axon,myelin}-<label_suffix>.png``, pixel sizes
    from the JSON sidecars). ``pixel_size_um`` overrides every other source. ``image_dir`` is searched for the
    microscopy image of a prediction (``<name>_0000.*`` as in nnU-Net's imagesTs, or ``<name>.*``) for the QC
    overlay.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir() and is_bids_dataset(path):
        return _discover_bids(path, pixel_size_um, label_suffix)
    if path.is_file():
        if re.search(r"_seg-myelin", path.name):
            raise ValueError(f"{path}: a myelin mask; give the axon mask (its myelin partner is found) or a label "
                             f"image")
        items = [_mask_pair(path) or MorphometricsInput(strip_extension(path.name), label_path=path)]
    else:
        files = sorted(p for p in path.iterdir() if _is_image_file(p))
        nested = sorted(path.glob("sub-*/micr")) + sorted(path.glob("sub-*/ses-*/micr"))
        if not files and nested:  # a BIDS-like tree of masks, e.g. what 'segment' writes for a BIDS dataset
            return [item for folder in nested for item in discover_inputs(folder, pixel_size_um, label_suffix,
                                                                          image_dir)]
        pairs = [item for item in (_mask_pair(p) for p in files) if item is not None]
        if pairs:  # ADS-style folder: the mask pairs, not the microscopy images or axonmyelin masks beside them
            items = pairs
        else:
            items = [MorphometricsInput(strip_extension(p.name), label_path=p) for p in files
                     if not re.search(r"_seg-(nerve|uaxon)$", strip_extension(p.name))]  # ADS 5.5's other masks
        if not items:
            raise FileNotFoundError(f"{path}: no label images ({', '.join(LABEL_EXTENSIONS)}) or "
                                    f"*_seg-axon masks found")
    for item in items:
        if image_dir is not None and item.image_path is None:
            candidates = [Path(image_dir) / f"{item.name}{suffix}{ext}" for suffix in ("_0000", "")
                          for ext in IMAGE_EXTENSIONS]
            item.image_path = next((p for p in candidates if p.is_file()), None)
        item.pixel_size_um, item.pixel_size_source = _pixel_size_of(item, pixel_size_um)
    return items


def _pixel_size_of(item: MorphometricsInput, pixel_size_um: float | None) -> tuple[float, str]:
    """Pixel size of an input and its source (the file's path). A mask pair's sidecar is its image's,
    ``<stem>.json`` (whether or not the image is there); the mask's own ``<stem>_seg-axon.json`` is still read. A
    mask inside a BIDS dataset's ``derivatives/labels`` tree takes its image's sidecar from the dataset (BIDS
    inheritance), as when the dataset root is given."""
    if pixel_size_um is not None:
        return find_pixel_size(item.source, pixel_size_um)
    candidates = [item.source] if item.axon_path is None else [
        item.image_path or item.axon_path.with_name(item.name + ".png"), item.axon_path]
    for candidate in candidates:
        try:
            return find_pixel_size(candidate)
        except PixelSizeNotFoundError:
            continue
    found = _derivative_sidecar(item.source, item.name)
    if found is not None:
        return pixel_size_from_sidecar(found), f"BIDS sidecar {found}"
    raise PixelSizeNotFoundError(
        f"{item.source}: pixel size unknown: give --pixel-size, or put the image's sidecar {item.name}.json (BIDS "
        f"'PixelSize') or {PIXEL_SIZE_FILE} beside it, or give the BIDS dataset's root") from None


def _derivative_sidecar(mask: Path, name: str) -> Path | None:
    """The raw image's sidecar of a mask in ``<root>/derivatives/labels/sub-*/[ses-*/]micr/`` (None elsewhere)."""
    parts = mask.resolve().parts
    if "derivatives" not in parts:
        return None
    at = len(parts) - 1 - parts[::-1].index("derivatives")
    root = Path(*parts[:at])
    if not is_bids_dataset(root) or len(parts) < at + 4:
        return None
    stem = re.sub(r"_seg-(axonmyelin|axon|myelin|uaxon)(-[^_.]+)?$", "", name)
    try:
        return find_sidecar(root.joinpath(*parts[at + 2:-1]) / f"{stem}.png", root)
    except ValueError:  # not a BIDS name: no sidecar applies
        return None


def _discover_bids(root: Path, pixel_size_um: float | None, label_suffix: str) -> list[MorphometricsInput]:
    items = []
    for image in find_bids_images(root, label_suffix=label_suffix):
        if not image.has_label:
            continue
        item = MorphometricsInput(image.stem, image_path=image.path, uaxon_path=image.label_files.get("uaxon"))
        if {"axon", "myelin"} <= set(image.label_files):  # what ADS measures
            item.axon_path, item.myelin_path = image.label_files["axon"], image.label_files["myelin"]
        else:
            item.label_path = image.label_files["axonmyelin"]
        if pixel_size_um is not None:
            item.pixel_size_um, item.pixel_size_source = check_pixel_size(pixel_size_um), "option"
        elif image.pixel_size_um is not None:
            item.pixel_size_um = image.pixel_size_um
            item.pixel_size_source = f"BIDS sidecar {find_sidecar(image.path, root)}"
        else:
            raise ValueError(f"{image.path}: no BIDS sidecar gives its PixelSize; give --pixel-size, or add the "
                             f"image's sidecar {image.stem}.json (or one it inherits, e.g. "
                             f"sub-<label>_{image.modality}.json) with 'PixelSize'")
        items.append(item)
    if not items:
        raise FileNotFoundError(f"{root}: no image with '{label_suffix}' labels under derivatives/labels")
    return items


def load_masks(item: MorphometricsInput, myelin_label: int = 1, axon_label: int = 2, extra: dict | None = None,
               nerve_label: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Axon and myelin masks of one input, with errors naming its files.

    ``extra``: a dict that receives ``"uaxon"``, the unmyelinated axons (label 3 of a label image, as ``convert bids
    --uaxon label`` writes, or the input's ``_seg-uaxon`` mask) where the input has them, and with ``nerve_label``
    ``"nerve"``: that label's pixels with the axon and myelin pixels 4-connected to them (fibres wholly outside the
    nerve tissue stay outside)."""
    if extra is not None and item.uaxon_path is not None:
        extra["uaxon"] = read_mask_file(item.uaxon_path)
    if item.label_path is not None:
        label = read_label_image(item.label_path)
        present = set(np.unique(label).tolist())
        values = present - {0, myelin_label, axon_label}
        if extra is not None and nerve_label is not None and nerve_label not in (0, myelin_label, axon_label):
            from scipy import ndimage as ndi

            tissue = label == nerve_label
            fibre = (label == myelin_label) | (label == axon_label)
            if UAXON_LABEL in present and UAXON_LABEL not in (nerve_label, myelin_label, axon_label):
                fibre |= label == UAXON_LABEL  # unmyelinated axons inside a fascicle belong to the nerve too
            parts, _ = ndi.label(tissue | fibre)
            extra["nerve"] = np.isin(parts, np.unique(parts[tissue]))
            values.discard(nerve_label)
        if extra is not None and UAXON_LABEL in values and "uaxon" not in extra and UAXON_LABEL != nerve_label \
                and not (present <= set(ADS_MASK_PNG_VALUES)):
            extra["uaxon"] = label == UAXON_LABEL
            values.discard(UAXON_LABEL)
        if values and present <= set(ADS_MASK_PNG_VALUES) and (myelin_label, axon_label) == (1, 2):
            # AxonDeepSeg's single-file mask (its training data's mask.png): 0 background, 128 myelin, 255 axon
            return label == 255, label == 128
        if values:
            raise ValueError(f"{item.label_path}: unexpected label values {sorted(values)[:8]} (expected 0, "
                             f"{myelin_label} myelin, {axon_label} axon, {UAXON_LABEL} unmyelinated axon). Read as "
                             f"such: nnU-Net labels 0/1/2(/3), AxonDeepSeg's 0/127/255 _seg-axonmyelin and 0/128/255 "
                             f"mask.png; other values: --myelin-label V --axon-label V, or --nerve-label V for a "
                             f"nerve-tissue class")
        return masks_from_label_image(label, myelin_label, axon_label)
    axon, myelin = read_mask_file(item.axon_path, "axon"), read_mask_file(item.myelin_path, "myelin")
    if axon.shape != myelin.shape:
        raise ValueError(f"{item.axon_path} {axon.shape} and {item.myelin_path} {myelin.shape}: shapes differ")
    return axon, myelin


def apply_filters(per_axon: pd.DataFrame, min_axon_area_um2: float | None = None, drop_border: bool = False,
                  drop_invalid: bool = False) -> pd.DataFrame:
    """Rows kept by the requested filters (none by default)."""
    keep = np.ones(len(per_axon), bool)
    if min_axon_area_um2 is not None:
        keep &= per_axon["axon_area (um^2)"].to_numpy(float) >= min_axon_area_um2
    if drop_border:
        keep &= ~per_axon["image_border_touching"].to_numpy(bool)
    if drop_invalid:
        keep &= per_axon["gratio_valid"].to_numpy(bool)
    return per_axon[keep]


def run_morphometrics(inputs: list[MorphometricsInput], out_dir: str | os.PathLike, axon_shape: str = "circle",
                      myelin_label: int = 1, axon_label: int = 2, roi: str | os.PathLike | None = None,
                      min_axon_area_um2: float | None = None, drop_border: bool = False,
                      drop_invalid: bool = False, maps: bool = False, tile_size_px: int | None = None,
                      tile_size_um: float | None = None, qc: bool = True, overwrite: bool = False,
                      postprocess: dict | None = None, nerve: str | os.PathLike | bool | None = None,
                      nerve_label: int | None = None, index_maps: bool = True, colorize: bool = False,
                      table_format: str = "csv") -> dict:
    """Measure every input and write the results into ``out_dir``; returns a summary dict.

    Nerve mode (AxonDeepSeg's ``-n``; :mod:`nnunet_ext.morphometrics.nerve`): ``nerve`` True reads each input's
    ``<name>_seg-nerve.png`` beside it, a path gives the nerve mask (one input) or a folder of
    ``<name>_seg-nerve.png`` / ``<name>.png``; ``nerve_label`` takes the nerve from a label image instead (that
    value with the axon and myelin pixels). Axons and myelin outside the nerve are removed, the aggregate is the
    nerve's, and ``<name>_nerve_morphometrics.json`` and ``<name>_fascicles.csv`` are written.

    ``index_maps`` (default): AxonDeepSeg's ``<name>_index.png`` and ``_axonmyelin_index.png`` (and
    ``_uaxon_index.png`` / ``_nerve_index.png`` in those modes); ``colorize`` (ADS's ``-c``) adds
    ``_colorized.png`` and ``_instance-map.png`` from the fibres of the measurement, no second watershed
    (:mod:`nnunet_ext.morphometrics.index_maps`).

    ``table_format="xlsx"`` writes the per-image tables as AxonDeepSeg does, ``<name>_axon_morphometrics.xlsx`` (and
    ``_uaxon_morphometrics.xlsx``): an unnamed 0-based index column, ADS's columns in its order, then ours (needs
    openpyxl: ``pip install nnunet-ext[xlsx]``); the combined and aggregate tables stay CSV.

    ``postprocess``: options of :func:`nnunet_ext.morphometrics.postprocess.postprocess_masks` applied to each
    image's masks before measuring (None: measured as given); the aggregate CSV's ``postprocess`` column says what
    it changed.

    Files: ``<name>_axon_morphometrics.csv`` per image, ``axon_morphometrics.csv`` (all images),
    ``aggregate_morphometrics.csv`` (one row per image), ``<name>_qc.png``, and with ``maps``
    ``<name>_tiles.csv`` and ``<name>_map-<metric>.png``. Inputs with unmyelinated axons (label 3, or a
    ``_seg-uaxon`` mask) add ``<name>_uaxon_morphometrics.csv``, ``uaxon_morphometrics.csv`` and both populations'
    columns in the aggregate CSV (:func:`nnunet_ext.morphometrics.unmyelinated.population_summary`). Everything is
    written to a temporary folder first and moved into ``out_dir`` only when all images succeeded; existing files
    are replaced only with ``overwrite``.
    """
    out_dir = Path(out_dir)
    names = [item.name for item in inputs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"several inputs are named {duplicates}: outputs would collide")
    check_table_format(table_format)
    planned = [COMBINED_CSV, AGGREGATE_CSV] + [f"{n}_axon_morphometrics.{table_format}" for n in names]
    existing = [name for name in planned if (out_dir / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir}: {', '.join(existing[:3])}{' ...' if len(existing) > 3 else ''} already "
                              f"exist; use --overwrite to replace them")
    roi_paths = _roi_paths(roi, inputs)
    filters = {"min_axon_area_um2": min_axon_area_um2, "drop_border": drop_border, "drop_invalid": drop_invalid}
    filter_text = ", ".join(f"{k}={v}" for k, v in filters.items() if v not in (None, False)) or "none"
    # Writing runs in a second thread (PNG decoding and encoding and file writes release the GIL), overlapping the
    # next image's measurement: the per-image CSV (whose text is reused for the combined CSV) and the QC overlay.
    from concurrent.futures import ThreadPoolExecutor

    with scratch_folder(out_dir) as tmp, ThreadPoolExecutor(max_workers=1) as writer:
        tables, aggregates, jobs, uaxon_tables = [], [], [], []
        for item in tqdm(inputs, desc="morphometrics", unit="image", disable=len(inputs) < 2):
            uaxon_found: dict = {}
            axon, myelin = load_masks(item, myelin_label, axon_label, extra=uaxon_found, nerve_label=nerve_label)
            nerve_mask = None
            if nerve is not None or nerve_label is not None:
                nerve_mask = uaxon_found.get("nerve")
                if nerve_mask is None:
                    nerve_mask = read_mask_file(_nerve_path(nerve, item, len(inputs)))
                axon, myelin = restrict_to_nerve(axon, myelin & ~axon, nerve_mask)
            postprocess_text = ""
            if postprocess is not None:
                from nnunet_ext.morphometrics.postprocess import postprocess_masks

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    axon, myelin, changes = postprocess_masks(axon, myelin, item.pixel_size_um, **postprocess)
                postprocess_text = "; ".join(f"{k}={v}" for k, v in {**postprocess, **changes}.items())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # overlaps are reported once below
                fibres = None
                if colorize:  # the fibre instance map of the same pass, for ADS's instance maps
                    per_axon, _, fibres = measure_axons(axon, myelin, item.pixel_size_um, axon_shape,
                                                        image_name=item.name, return_fibres=True)
                else:
                    per_axon = axon_morphometrics(axon, myelin, item.pixel_size_um, axon_shape,
                                                  image_name=item.name)
            with warnings.catch_warnings(record=True) as overlaps:
                warnings.simplefilter("always", UserWarning)
                axon, myelin = prepare_masks(axon, myelin)
            for overlap in overlaps:  # said once, naming the input
                warnings.warn(f"{item.source}: {overlap.message}")
            kept = apply_filters(per_axon, **filters)
            roi_mask = None
            if roi_paths.get(item.name) is not None:
                roi_mask = read_mask_file(roi_paths[item.name])
                if roi_mask.shape != axon.shape:
                    raise ValueError(f"{roi_paths[item.name]}: ROI {roi_mask.shape} and {item.source} "
                                     f"{axon.shape} have different shapes")
            if nerve_mask is not None:  # the image's aggregate is the nerve's
                roi_mask = nerve_mask if roi_mask is None else roi_mask & nerve_mask
            aggregate = aggregate_morphometrics(axon, myelin, item.pixel_size_um, per_axon=kept, roi_mask=roi_mask)
            aggregate.update(image=item.name, pixel_size_um=item.pixel_size_um,
                             pixel_size_source=item.pixel_size_source, axon_shape=axon_shape,
                             roi=str(roi_paths.get(item.name) or ""), filters=filter_text,
                             axons_filtered_out=len(per_axon) - len(kept), source=str(item.source),
                             postprocess=postprocess_text)
            if "uaxon" in uaxon_found:
                from nnunet_ext.morphometrics.unmyelinated import population_summary, uaxon_morphometrics

                if uaxon_found["uaxon"].shape != axon.shape:
                    raise ValueError(f"{item.uaxon_path}: shape {uaxon_found['uaxon'].shape} differs from "
                                     f"{axon.shape}")
                uaxon = uaxon_found["uaxon"] & ~axon & ~myelin  # axon and myelin win, as in 'convert bids'
                if roi_mask is not None:  # with a nerve: the nerve (within the ROI, if any)
                    uaxon &= roi_mask
                uaxon_table = uaxon_morphometrics(uaxon, item.pixel_size_um, axon_shape, image_name=item.name)
                # the myelinated axons of the same region (the ROI and nerve) as the unmyelinated ones
                aggregate.update(population_summary(aggregate["axon_count"], uaxon_table,
                                                    aggregate["area (mm^2)"] * 1e6))
                uaxon_tables.append(uaxon_table)
                _write_csv(uaxon_table, tmp / f"{item.name}_uaxon_morphometrics.{table_format}")
            if nerve_mask is not None:
                kept = _write_nerve_report(tmp, item.name, aggregate, *nerve_morphometrics(
                    nerve_mask, axon, myelin, kept, item.pixel_size_um))
            aggregates.append(aggregate)
            jobs.append(writer.submit(_write_csv, kept, tmp / f"{item.name}_axon_morphometrics.{table_format}"))
            if index_maps or colorize:
                jobs.append(writer.submit(_write_index_maps,
                                          tmp, item.name, kept, axon, myelin, item.pixel_size_um, fibres,
                                          uaxon_table=uaxon_table if "uaxon" in uaxon_found else None,
                                          uaxon=uaxon if "uaxon" in uaxon_found else None, nerve=nerve_mask,
                                          index=index_maps))
            tables.append(kept)
            if maps:
                tiles = tile_morphometrics(axon, myelin, item.pixel_size_um, tile_size_px, tile_size_um,
                                           per_axon=kept, roi_mask=roi_mask)
                tiles.to_csv(tmp / f"{item.name}_tiles.csv", index=False, na_rep="NaN")
                save_map_pngs(tiles, tmp / item.name, item.pixel_size_um, title=item.name)
            if qc:
                jobs.append(writer.submit(_write_qc, tmp / f"{item.name}_qc.png", axon, myelin, per_axon,
                                          item.pixel_size_um, item.image_path))
        texts = [job.result() for job in jobs]  # raises what a write raised; QC jobs give None
        texts = [text for text in texts if text is not None]
        if texts:  # the per-image CSVs, one header: what pd.concat(tables).to_csv() writes, without a second pass
            header = texts[0].split("\n", 1)[0]
            (tmp / COMBINED_CSV).write_text(header + "\n" + "".join(t.split("\n", 1)[1] for t in texts))
        else:
            pd.DataFrame().to_csv(tmp / COMBINED_CSV, index=False, na_rep="NaN")
        columns = ["image", "source", "pixel_size_um", "pixel_size_source", "axon_shape", "roi", "filters",
                   "axons_filtered_out"] + [k for k in AGGREGATE_KEYS if k != "image"] + ["postprocess"]
        if uaxon_tables:
            from nnunet_ext.morphometrics.unmyelinated import POPULATION_KEYS

            columns += POPULATION_KEYS
            pd.concat(uaxon_tables, ignore_index=True).to_csv(tmp / UAXON_CSV, index=False, na_rep="NaN")
        if nerve is not None or nerve_label is not None:
            columns += NERVE_COLUMNS
        pd.DataFrame(aggregates, columns=columns).to_csv(tmp / AGGREGATE_CSV, index=False, na_rep="NaN")
        written = publish_files(tmp, out_dir)
    return {"images": len(inputs), "axons": int(sum(len(t) for t in tables)), "files": written,
            "aggregates": aggregates, "uaxons": int(sum(len(t) for t in uaxon_tables))}


def _nerve_path(nerve, item: MorphometricsInput, n_inputs: int) -> Path:
    """The nerve mask of an input: ``<name>_seg-nerve.png`` beside it (``nerve`` True), the file ``nerve`` (one
    input), or ``<name>_seg-nerve.*`` / ``<name>.*`` in the folder ``nerve``."""
    if nerve is True:
        folder, candidates = item.source.parent, [f"{item.name}_seg-nerve"]
    else:
        nerve = Path(nerve)
        if nerve.is_file():
            if n_inputs != 1:
                raise ValueError(f"{nerve}: one nerve mask for {n_inputs} images; give a folder of "
                                 f"<name>_seg-nerve.png masks")
            return nerve
        if not nerve.is_dir():
            raise FileNotFoundError(f"{nerve}: nerve mask file or folder not found")
        folder, candidates = nerve, [f"{item.name}_seg-nerve", item.name]
    found = [p for p in sorted(folder.iterdir()) if _is_image_file(p) and strip_extension(p.name) in candidates]
    if not found:
        raise FileNotFoundError(f"{folder}: no nerve mask {candidates[0]}.png for {item.name}")
    return found[0]


def check_table_format(table_format: str) -> None:
    """``csv`` or ``xlsx`` (with openpyxl installed), else an error saying what to do."""
    if table_format not in ("csv", "xlsx"):
        raise ValueError(f"table format must be 'csv' or 'xlsx', got {table_format!r}")
    if table_format == "xlsx":
        import importlib.util

        if importlib.util.find_spec("openpyxl") is None:
            raise ImportError("--format xlsx needs openpyxl: pip install 'nnunet-ext[xlsx]' (or openpyxl)")


def _write_nerve_report(folder: Path, name: str, aggregate: dict, nerve_data: dict, per_axon: pd.DataFrame,
                        fascicles: pd.DataFrame) -> pd.DataFrame:
    """Write ADS's nerve JSON and our fascicle table, add the nerve's columns (:data:`NERVE_COLUMNS`) to
    ``aggregate``; returns the per-axon table with ``fascicle_id`` (images and slides alike)."""
    write_json_atomically(nerve_data, folder / f"{name}{NERVE_JSON_SUFFIX}", indent=4)
    fascicles.to_csv(folder / f"{name}{FASCICLE_CSV_SUFFIX}", index=False, na_rep="NaN")
    aggregate.update(dict(zip(NERVE_COLUMNS, (len(fascicles), nerve_data["total_area"]["value"],
                                              nerve_data["total_axon_density"]["value"]))))
    return per_axon


def _write_index_maps(*args, **kwargs) -> None:
    from nnunet_ext.morphometrics.index_maps import save_index_maps

    save_index_maps(*args, **kwargs)


def _write_csv(table: pd.DataFrame, path: Path) -> str:
    """Write a per-axon table (CSV, or ADS's spreadsheet layout for ``.xlsx``); return its CSV text."""
    text = table.to_csv(index=False, na_rep="NaN", lineterminator="\n")
    if path.suffix == ".xlsx":
        ads_layout(table).to_excel(path, na_rep="NaN")
    else:
        path.write_text(text)
    return text


def ads_layout(table: pd.DataFrame) -> pd.DataFrame:
    """A per-axon (or unmyelinated-axon) table as AxonDeepSeg's spreadsheets have it: its columns first in its
    order, then ours, with a 0-based index (the numbers of the index image)."""
    from nnunet_ext.morphometrics.axon import ADS_COLUMNS
    from nnunet_ext.morphometrics.unmyelinated import ADS_UAXON_COLUMNS

    ads = ADS_UAXON_COLUMNS if "uaxon_id" in table.columns else ADS_COLUMNS
    first = [c for c in ads if c in table.columns]
    return table[first + [c for c in table.columns if c not in first]].reset_index(drop=True)


def _write_qc(path: Path, axon, myelin, per_axon, pixel_size_um, image_path) -> None:
    image = read_image_2d(image_path) if image_path is not None else None
    save_qc_overlay(path, axon, myelin, per_axon, pixel_size_um, image)


def _roi_paths(roi, inputs) -> dict:
    """ROI mask per input name: one file for a single input, or a folder with ``<name>.*`` per input."""
    if roi is None:
        return {}
    roi = Path(roi)
    if roi.is_file():
        if len(inputs) != 1:
            raise ValueError(f"{roi}: one ROI file for {len(inputs)} images; give a folder of <name>.png ROIs")
        return {inputs[0].name: roi}
    if not roi.is_dir():
        raise FileNotFoundError(f"{roi}: ROI file or folder not found")
    paths = {}
    for item in inputs:
        found = [p for p in roi.iterdir() if _is_image_file(p) and strip_extension(p.name) in
                 (item.name, f"{item.name}_roi")]
        if not found:
            raise FileNotFoundError(f"{roi}: no ROI mask named {item.name}.* or {item.name}_roi.*")
        paths[item.name] = found[0]
    return paths


def slide_image_name(source: str | os.PathLike) -> str:
    """The image name of a slide's rows: for an output of ``nnunet-ext segment`` (``<name>_seg.zarr`` with its
    ``nnunet_ext`` metadata), the microscopy image it came from (the recorded source file's name, else ``<name>``);
    otherwise the file name without its extension."""
    source = Path(source)
    stem = strip_extension(source.name)
    if source.is_dir():
        try:
            import zarr

            metadata = dict(zarr.open(str(source), mode="r").attrs).get("nnunet_ext")
        except Exception:  # noqa: BLE001 - not a readable Zarr group: the file name serves
            metadata = None
        if isinstance(metadata, dict):
            recorded = metadata.get("source")
            if isinstance(recorded, str) and recorded and recorded != "array":
                return strip_extension(Path(recorded).name)
            if stem.endswith("_seg") and len(stem) > 4:
                return stem[:-4]
    return stem


def run_slide(source: str | os.PathLike, out_dir: str | os.PathLike, pixel_size_um: float | None,
              chunk_size: int = 2048, halo: int = 256, axon_shape: str = "circle", myelin_label: int = 1,
              axon_label: int = 2, maps: bool = False, tile_size_px: int | None = None,
              tile_size_um: float | None = None, scheduler: str | None = None, workers: int | None = None,
              min_axon_area_um2: float | None = None, drop_border: bool = False, drop_invalid: bool = False,
              qc: bool = True, overwrite: bool = False, roi: str | os.PathLike | None = None,
              image_name: str | None = None, nerve: str | os.PathLike | bool | None = None,
              nerve_label: int | None = None, uaxon_label: int | None = UAXON_LABEL,
              table_format: str = "csv") -> dict:
    """Whole-slide version of :func:`run_morphometrics` for one Zarr / OME-Zarr / TIFF label image.

    ``roi``: an ROI mask (Zarr, TIFF or PNG; at the slide's resolution or downsampled by a whole factor), see
    :func:`~nnunet_ext.morphometrics.slide_chunks.slide_morphometrics`. ``image_name`` names the rows and output files
    (default: :func:`slide_image_name`). The pixel size is ``pixel_size_um``, else the OME-Zarr metadata, a
    sidecar or ``pixel_size_in_micrometer.txt`` (:func:`~nnunet_ext.io.pixel_size.find_pixel_size`).

    The modes of :func:`run_morphometrics`, with the same files: ``nerve`` (a nerve mask as ``roi`` is given, or
    True for ``<name>_seg-nerve.{zarr,tif,tiff,png}`` beside the slide) or ``nerve_label`` (the nerve from the label
    slide), whose fascicles are joined across chunks, so measured exactly whatever their size; unmyelinated axons,
    label ``uaxon_label`` (None: that value is refused as unknown), written when the slide has any pixel of it. No index
    images for slides (a number per axon on a whole slide is not readable; the QC overview shows the axons).
    """
    source = Path(source)
    if source.is_dir() and not is_zarr(source):
        raise ValueError(f"{source}: a folder; the chunked path (--chunk-size) measures one label slide (Zarr, "
                         f"OME-Zarr, TIFF or PNG): give each slide on its own, or drop --chunk-size for a folder of "
                         f"images")
    name = image_name or slide_image_name(source)
    pixel_size, pixel_source = find_pixel_size(source, pixel_size_um)
    measured = source
    if source.is_file() and not source.name.lower().endswith((".tif", ".tiff")):
        measured = read_label_image(source)  # a PNG cannot be read by windows: read whole, measured by chunk
    out_dir = Path(out_dir)
    check_table_format(table_format)  # before a slide's measurement, not after it
    planned = [COMBINED_CSV, AGGREGATE_CSV, f"{name}_axon_morphometrics.{table_format}"]
    existing = [p for p in planned if (out_dir / p).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir}: {', '.join(existing)} already exist; use --overwrite to replace them")
    if uaxon_label in (myelin_label, axon_label, nerve_label):
        uaxon_label = None  # that value means something else here
    nerve_mask = _slide_nerve_path(source, name) if nerve is True else nerve
    if isinstance(nerve_mask, (str, os.PathLike)) and Path(nerve_mask).is_dir() and not is_zarr(Path(nerve_mask)):
        raise ValueError(f"{nerve_mask}: a folder; a whole slide takes one nerve mask (Zarr, TIFF or PNG), or "
                         f"--nerve alone for <name>_seg-nerve.* beside it")
    tile = tile_size_in_pixels(pixel_size, tile_size_px, tile_size_um) if maps else None
    result = slide_morphometrics(measured, pixel_size, chunk_size, halo, axon_shape, myelin_label, axon_label,
                                 tile_size_px=tile, scheduler=scheduler, num_workers=workers, image_name=name,
                                 roi=roi, nerve=nerve_mask, nerve_label=nerve_label, uaxon_label=uaxon_label,
                                 work_dir=out_dir.resolve().parent if scheduler else None)
    filters = {"min_axon_area_um2": min_axon_area_um2, "drop_border": drop_border, "drop_invalid": drop_invalid}
    kept = apply_filters(result.per_axon, **filters)
    inside = kept if result.in_roi is None else kept[result.in_roi[kept.index.to_numpy()]]
    aggregate = dict(result.aggregate)
    if len(kept) != len(result.per_axon):  # pixel fractions stay; per-axon figures follow the filters
        # the same counts and function as the unfiltered aggregate, so every key (ADS estimates, note) follows
        aggregate = aggregate_from_counts(inside, *result.pixel_counts, pixel_size)
        aggregate["image"] = result.aggregate["image"]
        aggregate = {key: aggregate[key] for key in AGGREGATE_KEYS}
    filter_text = ", ".join(f"{k}={v}" for k, v in filters.items() if v not in (None, False)) or "none"
    aggregate.update(image=name, source=str(source), pixel_size_um=pixel_size, pixel_size_source=pixel_source,
                     axon_shape=axon_shape, roi=_roi_text(roi), filters=filter_text,
                     axons_filtered_out=len(result.per_axon) - len(kept), halo_exceeded=result.halo_exceeded)
    columns = ["image", "source", "pixel_size_um", "pixel_size_source", "axon_shape", "roi", "filters",
               "axons_filtered_out", "halo_exceeded"] + [k for k in AGGREGATE_KEYS if k != "image"]
    # written whenever the slide has unmyelinated axons, as for images (even if none is inside the ROI or nerve)
    uaxon = result.uaxon if result.uaxon is not None and (len(result.uaxon) or result.uaxon_present) else None
    with scratch_folder(out_dir) as tmp:
        if uaxon is not None:  # the aggregate's columns in the order of the image path: populations, then nerve
            from nnunet_ext.morphometrics.unmyelinated import POPULATION_KEYS, population_summary

            aggregate.update(population_summary(aggregate["axon_count"], uaxon, aggregate["area (mm^2)"] * 1e6),
                             uaxon_halo_exceeded=result.uaxon_halo_exceeded)
            columns += POPULATION_KEYS + ["uaxon_halo_exceeded"]
            # one serialisation of a table that may hold millions of rows: the combined CSV is its text
            (tmp / UAXON_CSV).write_text(_write_csv(uaxon, tmp / f"{name}_uaxon_morphometrics.{table_format}"))
        if result.fascicle_counts is not None:
            kept = _write_nerve_report(tmp, name, aggregate, *fascicle_report(kept, result.fascicle_counts,
                                                                              pixel_size))
            columns += NERVE_COLUMNS
        (tmp / COMBINED_CSV).write_text(_write_csv(kept, tmp / f"{name}_axon_morphometrics.{table_format}"))
        pd.DataFrame([aggregate], columns=columns).to_csv(tmp / AGGREGATE_CSV, index=False, na_rep="NaN")
        if maps:
            tiles = result.tiles
            if len(kept) != len(result.per_axon):
                shape = (int(tiles["y_max (px)"].max()), int(tiles["x_max (px)"].max()))
                tiles = tiles_from_counts(inside, *result.tile_counts, tile, shape, pixel_size)
            tiles.to_csv(tmp / f"{name}_tiles.csv", index=False, na_rep="NaN")
            save_map_pngs(tiles, tmp / name, pixel_size, title=name)
        if qc:
            step = result.overview_step
            overview_axons = kept.assign(**{"x0 (px)": kept["x0 (px)"] / step, "y0 (px)": kept["y0 (px)"] / step})
            save_qc_overlay(tmp / f"{name}_qc.png", result.overview == axon_label, result.overview == myelin_label,
                            overview_axons, pixel_size * step)
        written = publish_files(tmp, out_dir)
    if result.halo_exceeded or result.uaxon_halo_exceeded:
        cut = [f"{n} {what}" for n, what in ((result.halo_exceeded, "fibre(s)"),
                                             (result.uaxon_halo_exceeded, "unmyelinated axon(s)")) if n]
        warnings.warn(f"{source}: {' and '.join(cut)} reach a chunk halo (noted in the CSV); rerun with a larger "
                      f"--halo for exact values")
    return {"images": 1, "axons": len(kept), "files": written, "aggregates": [aggregate],
            "uaxons": 0 if uaxon is None else len(uaxon)}


def _slide_nerve_path(source: Path, name: str) -> Path:
    """The nerve mask beside a slide: ``<stem>_seg-nerve`` or ``<name>_seg-nerve`` as Zarr, TIFF or PNG (for a
    ``segment`` output ``<name>_seg.zarr``, ``<name>_seg-nerve.*`` beside it)."""
    stem = strip_extension(source.name)
    stems = list(dict.fromkeys([f"{stem}-nerve" if stem.endswith("_seg") else f"{stem}_seg-nerve",
                                f"{name}_seg-nerve"]))
    candidates = [source.parent / f"{stem}{ext}" for stem in stems for ext in (".zarr", ".tif", ".tiff", ".png")]
    found = next((p for p in candidates if p.exists()), None)
    if found is None:
        raise FileNotFoundError(f"{source.parent}: no nerve mask {' or '.join(stems)} (.zarr, .tif, .png) beside "
                                f"{source.name}; give it with --nerve MASK")
    return found


def _roi_text(roi) -> str:
    """The ``roi`` column: the mask's path, "array" for an in-memory mask, empty without one."""
    if roi is None:
        return ""
    return str(roi) if isinstance(roi, (str, os.PathLike)) else "array"
