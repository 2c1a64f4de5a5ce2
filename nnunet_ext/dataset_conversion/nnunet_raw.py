"""The one writer every converter uses: an nnU-Net v2 raw dataset plus a manifest of where each case came from.

Layout written (nnU-Net's conventions)::

    <nnUNet_raw>/DatasetXXX_Name/
        dataset.json                      # through nnunetv2's own generate_dataset_json
        imagesTr/<PREFIX>_<NNN>_0000.<ext>
        labelsTr/<PREFIX>_<NNN>.<ext>
        imagesTs/ , labelsTs/             # held-out cases (labelsTs when a label exists)
        manifest.csv                      # case_id, split, source_files, subject, sample, modality, pixel_size_um

The dataset is assembled in a hidden temporary folder beside its destination and moved into place only when
complete, so an error never leaves a half-written dataset, and an existing dataset is replaced only with
``overwrite=True``.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

SUPPORTED_FILE_ENDINGS = (".png", ".tif", ".nii.gz")
MANIFEST_COLUMNS = ["case_id", "split", "source_files", "subject", "sample", "modality", "pixel_size_um"]
# AxonDeepSeg's classes in nnU-Net's convention (background 0, consecutive labels).
AXON_MYELIN_LABELS = {"background": 0, "myelin": 1, "axon": 2}


@dataclass
class CaseRecord:
    """One row of the manifest."""

    case_id: str
    split: str
    source_files: Sequence[str]
    subject: str = ""
    sample: str = ""
    modality: str = ""
    pixel_size_um: float | None = None
    extra: dict = field(default_factory=dict)

    def as_row(self) -> dict:
        return {"case_id": self.case_id, "split": self.split,
                "source_files": ";".join(str(Path(s).resolve()) for s in self.source_files), "subject": self.subject,
                "sample": self.sample, "modality": self.modality,
                "pixel_size_um": np.nan if self.pixel_size_um is None else float(self.pixel_size_um), **self.extra}


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """nnU-Net's folder name ``DatasetXXX_Name`` (validated)."""
    if not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"dataset id must be 1..999 (nnU-Net uses three digits), got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", name):
        raise ValueError(f"dataset name {name!r} must be letters, digits, '_' or '-' (no spaces or dots)")
    return f"Dataset{int(dataset_id):03d}_{name}"


class NnUNetRawWriter:
    """Write one nnU-Net raw dataset, case by case; use as a context manager.

    Parameters
    ----------
    raw_root : path
        nnU-Net's raw folder (``$nnUNet_raw``).
    dataset_id, dataset_name : int, str
        Give the folder ``DatasetXXX_Name``. Another dataset with the same ID but a different name is an error,
        since nnU-Net resolves datasets by ID.
    labels : dict
        nnU-Net label mapping, e.g. :data:`AXON_MYELIN_LABELS`.
    channel_names : dict, optional
        nnU-Net channel names; ``{"0": "rescale_to_0_1"}`` (the generalist axon/myelin model's normalisation) by
        default.
    file_ending : {".png", ".tif", ".nii.gz"}
        ``.png`` for 2D (nnU-Net's NaturalImage2DIO: spacing ignored), ``.tif`` for 3D stacks with a spacing JSON
        (Tiff3DIO), ``.nii.gz`` for 2D or 3D with spacing (SimpleITKIO).
    case_prefix : str, optional
        Prefix of case names ``<PREFIX>_<NNN>`` (default: the dataset name).
    overwrite : bool
        Replace an existing dataset of the same folder name.
    dataset_json_extra : dict, optional
        More fields for dataset.json (description, reference, licence, ...).
    """

    def __init__(self, raw_root: str | os.PathLike, dataset_id: int, dataset_name: str,
                 labels: Mapping[str, int] = AXON_MYELIN_LABELS, channel_names: Mapping[str, str] | None = None,
                 file_ending: str = ".png", case_prefix: str | None = None, overwrite: bool = False,
                 dataset_json_extra: Mapping | None = None):
        if file_ending not in SUPPORTED_FILE_ENDINGS:
            raise ValueError(f"file ending {file_ending!r} not supported; use one of {SUPPORTED_FILE_ENDINGS}")
        self.raw_root = Path(raw_root)
        self.folder_name = dataset_folder_name(dataset_id, dataset_name)
        self.destination = self.raw_root / self.folder_name
        self.dataset_id = int(dataset_id)
        self.labels = {str(k): int(v) for k, v in labels.items()}
        if sorted(self.labels.values()) != list(range(len(self.labels))):
            raise ValueError(f"labels must be consecutive integers from 0 (nnU-Net's rule), got {self.labels}")
        self.channel_names = {str(k): v for k, v in (channel_names or {"0": "rescale_to_0_1"}).items()}
        self.file_ending = file_ending
        self.case_prefix = case_prefix or dataset_name
        self.overwrite = overwrite
        self.dataset_json_extra = dict(dataset_json_extra or {})
        self.records: list[CaseRecord] = []
        self._image_ndim: int | None = None
        self._check_destination()
        self.raw_root.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.folder_name}.incomplete-", dir=self.raw_root))
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (self._tmp / sub).mkdir()

    def _check_destination(self) -> None:
        if self.raw_root.is_dir():
            for other in self.raw_root.glob(f"Dataset{self.dataset_id:03d}_*"):
                if other.name != self.folder_name and other.is_dir():
                    raise FileExistsError(f"{other} already uses dataset ID {self.dataset_id}; nnU-Net finds datasets "
                                          f"by ID, so choose another ID or remove that dataset")
        if self.destination.exists() and not self.overwrite:
            raise FileExistsError(f"{self.destination} exists; pass --overwrite to replace it")

    # -- context manager: discard the temporary folder on error -------------------------------------------------
    def __enter__(self) -> "NnUNetRawWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def abort(self) -> None:
        """Discard everything written so far."""
        shutil.rmtree(self._tmp, ignore_errors=True)

    # -- cases ---------------------------------------------------------------------------------------------------
    def add_case(self, image: np.ndarray | Sequence[np.ndarray], label: np.ndarray | None, *, split: str = "train",
                 source_files: Sequence[str | os.PathLike] = (), subject: str = "", sample: str = "",
                 modality: str = "", pixel_size_um: float | None = None,
                 spacing: Sequence[float] | None = None, **extra) -> str:
        """Add one case and return its case id.

        Parameters
        ----------
        image : ndarray or sequence of ndarray
            One array per channel (a single array is one channel), 2D (Y, X) or 3D (Z, Y, X), all the same shape.
        label : ndarray or None
            Integer label map of the same shape with values among ``labels``; None for an unlabelled case, which
            is only allowed in the test split.
        split : {"train", "test"}
            ``train`` goes to imagesTr/labelsTr, ``test`` to imagesTs (and labelsTs when labelled).
        spacing : sequence of float, optional
            Voxel size in the array's axis order, for ``.tif``/``.nii.gz`` (ignored by ``.png``).
        source_files, subject, sample, modality, pixel_size_um, **extra
            Provenance for the manifest.
        """
        channels = [np.asarray(image)] if isinstance(image, np.ndarray) else [np.asarray(c) for c in image]
        if len(channels) != len(self.channel_names):
            raise ValueError(f"case from {list(map(str, source_files))}: {len(channels)} channel(s), but the "
                             f"dataset declares {len(self.channel_names)} ({self.channel_names})")
        shape = channels[0].shape
        where = f"case from {', '.join(map(str, source_files)) or 'memory'}"
        if any(c.shape != shape for c in channels):
            raise ValueError(f"{where}: channels differ in shape {[c.shape for c in channels]}")
        if channels[0].ndim not in (2, 3):
            raise ValueError(f"{where}: image must be 2D or 3D (one channel per array), got shape {shape}")
        if self.file_ending == ".png" and channels[0].ndim != 2:
            raise ValueError(f"{where}: .png datasets hold 2D images, got shape {shape}")
        if self.file_ending == ".tif" and channels[0].ndim != 3:
            raise ValueError(f"{where}: .tif datasets (nnU-Net's Tiff3DIO) hold 3D stacks, got shape {shape}")
        if self._image_ndim is None:
            self._image_ndim = channels[0].ndim
        elif channels[0].ndim != self._image_ndim:
            raise ValueError(f"{where}: {channels[0].ndim}D image in a {self._image_ndim}D dataset")
        if split not in ("train", "test"):
            raise ValueError(f"{where}: split must be 'train' or 'test', got {split!r}")
        if label is not None:
            label = np.asarray(label)
            if label.shape != shape:
                raise ValueError(f"{where}: label shape {label.shape} differs from image shape {shape}")
            if not np.issubdtype(label.dtype, np.integer) and not np.issubdtype(label.dtype, np.bool_):
                raise ValueError(f"{where}: label must be an integer array, got {label.dtype}")
            unexpected = sorted(set(np.unique(label).tolist()) - set(self.labels.values()))
            if unexpected:
                raise ValueError(f"{where}: label values {unexpected} not in dataset labels {self.labels}")
        elif split == "train":
            raise ValueError(f"{where}: training cases need a label")

        case_id = f"{self.case_prefix}_{len(self.records):03d}"
        images_dir = self._tmp / ("imagesTr" if split == "train" else "imagesTs")
        for index, channel in enumerate(channels):
            self._write_array(channel, images_dir / f"{case_id}_{index:04d}{self.file_ending}", spacing)
        if label is not None:
            labels_dir = self._tmp / ("labelsTr" if split == "train" else "labelsTs")
            labels_dir.mkdir(exist_ok=True)
            self._write_array(label.astype(np.uint8 if max(self.labels.values()) < 256 else np.uint16),
                              labels_dir / f"{case_id}{self.file_ending}", spacing)
        self.records.append(CaseRecord(case_id, split, [str(s) for s in source_files], subject, sample, modality,
                                       pixel_size_um, extra))
        return case_id

    def _write_array(self, array: np.ndarray, path: Path, spacing: Sequence[float] | None) -> None:
        if self.file_ending == ".png":
            from PIL import Image

            if array.dtype == np.bool_:
                array = array.astype(np.uint8)
            if array.dtype not in (np.uint8, np.uint16):
                raise ValueError(f"{path.name}: PNG holds 8- or 16-bit integers, got {array.dtype}")
            Image.fromarray(array).save(path)
        elif self.file_ending == ".tif":
            import json

            import tifffile

            tifffile.imwrite(path, array)
            base = path.name[: -len(self.file_ending)]
            base = re.sub(r"_\d{4}$", "", base)  # Tiff3DIO looks for <case>.json, without the channel suffix
            (path.parent / f"{base}.json").write_text(json.dumps({"spacing": list(map(float, spacing or (1,) * 3))}))
        else:
            import SimpleITK as sitk

            itk = sitk.GetImageFromArray(array)
            if spacing is not None:
                itk.SetSpacing([float(s) for s in reversed(spacing)])  # ITK orders spacing x, y(, z)
            sitk.WriteImage(itk, str(path), useCompression=True)

    # -- finishing -------------------------------------------------------------------------------------------------
    def finish(self) -> Path:
        """Write dataset.json and manifest.csv, then move the dataset into place. Returns its folder."""
        from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

        n_train = sum(r.split == "train" for r in self.records)
        if n_train == 0:
            self.abort()
            raise ValueError(f"{self.folder_name}: no labelled training case; nothing written")
        from nnunet_ext import __version__

        extra = {"description": "written by nnunet-ext", "license": "see the source dataset",
                 "converted_by": f"nnunet-ext {__version__}", **self.dataset_json_extra}
        generate_dataset_json(str(self._tmp), self.channel_names, self.labels, n_train, self.file_ending,
                              dataset_name=self.folder_name, **extra)
        pd.DataFrame([r.as_row() for r in self.records]).to_csv(self._tmp / "manifest.csv", index=False)
        if self.destination.exists():
            if not self.overwrite:  # appeared while we were writing
                self.abort()
                raise FileExistsError(f"{self.destination} exists; pass --overwrite to replace it")
            old = self.raw_root / f".{self.folder_name}.replaced-{os.getpid()}"
            os.replace(self.destination, old)
            os.replace(self._tmp, self.destination)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self._tmp, self.destination)
        return self.destination

    @property
    def manifest(self) -> pd.DataFrame:
        return pd.DataFrame([r.as_row() for r in self.records], columns=None)
