"""Phantoms written as a BIDS microscopy dataset laid out like AxonDeepSeg's: :func:`write_bids_phantom_dataset`.

The layout is that of AxonDeepSeg's BIDS datasets (``data_axondeepseg_sem``): ``sub-*/micr/sub-*_sample-*_<MOD>.png``
with JSON sidecars holding ``PixelSize`` ([y, x]) and ``PixelSizeUnits``, and
``derivatives/labels/sub-*/micr/<stem>_seg-{axon,myelin,axonmyelin}-manual.png``, plus the truth table
``derivatives/truth/phantom_truth.csv``.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from nnunet_ext import __version__
from nnunet_ext.io.atomic import staging_folder, write_json_atomically
from nnunet_ext.io.bids import ads_masks_from_labels
from nnunet_ext.io.images import write_png
from nnunet_ext.phantoms import CONTRASTS
from nnunet_ext.phantoms.generator import generate_phantom


def write_bids_phantom_dataset(
    out_dir: str | os.PathLike,
    contrasts: Sequence[str] = ("TEM", "SEM"),
    n_subjects: int = 3,
    samples_per_subject: int = 2,
    shape: tuple[int, int] = (256, 256),
    pixel_size_um: float = 0.1,
    pixel_size_jitter: float = 0.0,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    **phantom_options,
) -> Path:
    """Write phantoms as a BIDS microscopy dataset laid out like AxonDeepSeg's ``data_axondeepseg_sem``.

    Every subject gets ``samples_per_subject`` samples of *each* contrast; sample ids are numbered across the
    dataset (``sub-02_sample-07_SEM.png``), as in AxonDeepSeg's datasets. Files written::

        dataset_description.json, participants.tsv/.json, samples.tsv/.json, README
        sub-XX/micr/sub-XX_sample-YY_<MOD>.png (+ .json sidecar: PixelSize [y, x], PixelSizeUnits "um")
        derivatives/labels/dataset_description.json
        derivatives/labels/sub-XX/micr/<stem>_seg-axon-manual.png, _seg-myelin-manual.png (0/255),
                                       <stem>_seg-axonmyelin-manual.png (0 background, 127 myelin, 255 axon)
        derivatives/truth/dataset_description.json, phantom_truth.csv (one row per axon), phantom_parameters.json

    Parameters
    ----------
    out_dir : path
        Dataset folder to create. It must not exist or be empty unless ``overwrite`` is set.
    contrasts : sequence of {"TEM", "SEM", "BF"}
        Contrasts (BIDS modality suffixes) of every subject's samples.
    n_subjects, samples_per_subject : int
        Number of subjects, and of samples per subject and contrast.
    shape, pixel_size_um :
        Image size and nominal pixel size, passed to :func:`generate_phantom`.
    pixel_size_jitter : float
        Relative spread of the pixel size between samples (uniform in ``pixel_size_um * (1 +/- jitter)``); the
        fibres keep their physical sizes, so they change size in pixels. 0 (default) keeps it fixed.
    seed : int
        Seed of the whole dataset; every image gets an independent child seed, so the dataset is reproducible.
    overwrite : bool
        Replace an existing non-empty ``out_dir``.
    progress : bool
        Show a tqdm progress bar.
    **phantom_options
        Further keyword arguments of :func:`generate_phantom` (``density``, ``touching_fraction``, ...).

    Returns
    -------
    Path
        The dataset folder. It appears complete or not at all: files are written to a temporary sibling folder
        that is renamed at the end.
    """
    out_dir = Path(out_dir).expanduser().absolute()
    contrasts = [str(c).upper() for c in contrasts]
    unknown = [c for c in contrasts if c not in CONTRASTS]
    if not contrasts or unknown or len(set(contrasts)) != len(contrasts):
        raise ValueError(f"contrasts must be distinct values among {', '.join(CONTRASTS)}, got {contrasts!r}")
    if n_subjects < 1 or samples_per_subject < 1:
        raise ValueError("n_subjects and samples_per_subject must be at least 1")
    if not 0 <= pixel_size_jitter < 1:
        raise ValueError(f"pixel_size_jitter must be in [0, 1), got {pixel_size_jitter!r}")
    for reserved in ("seed", "contrast", "shape", "pixel_size_um"):
        if reserved in phantom_options:
            raise ValueError(f"{reserved!r} is set per image by write_bids_phantom_dataset; do not pass it")
    known = set(inspect.signature(generate_phantom).parameters)
    unknown_options = sorted(set(phantom_options) - known)
    if unknown_options:
        raise ValueError(f"unknown phantom option(s) {unknown_options}; generate_phantom accepts {sorted(known)}")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise FileExistsError(f"{out_dir} exists and is not a folder")
        if any(out_dir.iterdir()) and not overwrite:
            raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it")

    plan = dataset_plan(contrasts, n_subjects, samples_per_subject, pixel_size_um, pixel_size_jitter, seed)
    with staging_folder(out_dir, overwrite=True) as staging:  # an empty out_dir is replaced without overwrite
        participants, samples, truth_tables = [], [], []
        for item in tqdm(plan, desc="phantoms", unit="image", disable=not progress):
            subject, sample, contrast, size, image_seed = item
            stem = f"{subject}_{sample}_{contrast}"
            micr = staging / subject / "micr"
            label_micr = staging / "derivatives" / "labels" / subject / "micr"
            if not micr.exists():
                micr.mkdir(parents=True)
                label_micr.mkdir(parents=True)
                participants.append({"participant_id": subject, "species": "n/a"})
            phantom = generate_phantom(
                shape=shape, pixel_size_um=size, contrast=contrast, seed=image_seed, **phantom_options
            )
            write_png(micr / f"{stem}.png", phantom.image)
            sidecar = {"PixelSize": [size, size], "PixelSizeUnits": "um"}
            write_json_atomically(sidecar, micr / f"{stem}.json", indent=4)
            for suffix, mask in ads_masks_from_labels(phantom.axon_mask, phantom.myelin_mask).items():
                write_png(label_micr / f"{stem}{suffix}-manual.png", mask)
            samples.append({"sample_id": sample, "participant_id": subject, "sample_type": "tissue"})
            table = phantom.truth.copy()
            identity = {"subject": subject, "sample": sample, "image": stem, "modality": contrast,
                        "pixel_size (um)": size}
            for position, (name, value) in enumerate(identity.items()):
                table.insert(position, name, value)
            truth_tables.append(table)

        _write_metadata(staging, participants, samples, contrasts)
        truth_dir = staging / "derivatives" / "truth"
        truth_dir.mkdir(parents=True)
        write_json_atomically(
            {
                "Name": "nnunet-ext phantoms: analytic per-axon truth",
                "BIDSVersion": "1.7.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "nnunet-ext phantoms", "Version": __version__}],
            },
            truth_dir / "dataset_description.json",
            indent=4,
        )
        pd.concat(truth_tables, ignore_index=True).to_csv(truth_dir / "phantom_truth.csv", index=False)
        write_json_atomically(
            {
                "contrasts": contrasts, "n_subjects": n_subjects, "samples_per_subject": samples_per_subject,
                "shape": list(shape), "pixel_size_um": pixel_size_um, "pixel_size_jitter": pixel_size_jitter,
                "seed": seed, "phantom_options": {k: _jsonable(v) for k, v in phantom_options.items()},
                "generator": f"nnunet-ext {__version__}",
            },
            truth_dir / "phantom_parameters.json",
            indent=4,
        )
    return out_dir


def dataset_plan(
    contrasts: Sequence[str], n_subjects: int, samples_per_subject: int, pixel_size_um: float,
    pixel_size_jitter: float, seed: int,
) -> list[tuple[str, str, str, float, np.random.SeedSequence]]:
    """(subject, sample, contrast, pixel size, seed) of every image, in writing order."""
    n_images = n_subjects * samples_per_subject * len(contrasts)
    subject_width, sample_width = max(2, len(str(n_subjects))), max(2, len(str(n_images)))
    child_seeds = np.random.SeedSequence(seed).spawn(n_images + 1)
    jitter_rng = np.random.default_rng(child_seeds[-1])
    plan = []
    for subject_number in range(1, n_subjects + 1):
        for _ in range(samples_per_subject):
            for contrast in contrasts:
                size = float(pixel_size_um)
                if pixel_size_jitter:
                    size = float(pixel_size_um * (1 + jitter_rng.uniform(-pixel_size_jitter, pixel_size_jitter)))
                index = len(plan)
                sample = f"sample-{index + 1:0{sample_width}d}"
                plan.append((f"sub-{subject_number:0{subject_width}d}", sample, contrast, size, child_seeds[index]))
    return plan


def _jsonable(value):
    if isinstance(value, (tuple, list, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _write_metadata(root: Path, participants: list[dict], samples: list[dict], contrasts: Iterable[str]) -> None:
    generated_by = [{"Name": "nnunet-ext phantoms", "Version": __version__}]
    write_json_atomically(
        {
            "Name": "nnunet-ext synthetic myelinated-axon phantoms",
            "BIDSVersion": "1.7.0",
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": ["nnunet-ext phantom generator"],
            "GeneratedBy": generated_by,
        },
        root / "dataset_description.json",
        indent=4,
    )
    pd.DataFrame(participants).to_csv(root / "participants.tsv", sep="\t", index=False)
    write_json_atomically(
        {
            "participant_id": {"Description": "Unique participant ID"},
            "species": {"Description": "Binomial species name; n/a for synthetic phantoms"},
        },
        root / "participants.json",
        indent=4,
    )
    pd.DataFrame(samples).to_csv(root / "samples.tsv", sep="\t", index=False)
    write_json_atomically(
        {
            "sample_id": {"Description": "Sample ID"},
            "participant_id": {"Description": "Participant ID from whom tissue samples have been acquired"},
            "sample_type": {"Description": "Type of sample from ENCODE Biosample Type (synthetic tissue phantom)"},
        },
        root / "samples.json",
        indent=4,
    )
    (root / "README").write_text(
        "Synthetic myelinated-axon phantoms generated by nnunet-ext (contrasts: "
        + ", ".join(contrasts)
        + ").\nAxon and myelin masks in derivatives/labels; the analytic per-axon truth (axon diameter, fibre "
        "diameter, g-ratio, ...) in derivatives/truth/phantom_truth.csv.\n"
    )
    labels = root / "derivatives" / "labels"
    labels.mkdir(parents=True, exist_ok=True)
    write_json_atomically(
        {
            "Name": "nnunet-ext synthetic myelinated-axon phantoms labels",
            "BIDSVersion": "1.7.0",
            "DatasetType": "derivative",
            "PipelineDescription": {"Name": "Axon and myelin manual segmentation labels"},
            "GeneratedBy": generated_by,
        },
        labels / "dataset_description.json",
        indent=4,
    )
