"""The one writer every converter uses: an nnU-Net v2 raw dataset plus a manifest of where each case came from.

Layout written (nnU-Net's conventions)::

    <nnUNet_raw>/DatasetXXX_Name/
        dataset.json                      # through nnunetv2's own generate_dataset_json
        imagesTr/<PREFIX>_<NNN>_0000.<ext>
        labelsTr/<PREFIX>_<NNN>.<ext>
        imagesTs/ , labelsTs/             # held-out cases (labelsTs when a label exists)
        manifest.csv                      # case_id, split, source_files, subject, sample, modality, pixel_size_um
        splits_final.json                 # only when the converter fixes the folds (see below)

The dataset is assembled in a hidden temporary folder beside its destination and moved into place only when
complete, so an error never leaves a half-written dataset, and an existing dataset is replaced only with
``overwrite=True``.

Fixed folds. Cases added with ``split="validation"`` go to imagesTr/labelsTr like training cases, and the writer
records one fold (training cases against validation cases) in ``splits_final.json``; :meth:`NnUNetRawWriter.set_splits`
sets any folds instead. The file is written into the raw dataset, from where ``nnUNetv2_plan_and_preprocess`` copies
it to ``nnUNet_preprocessed/DatasetXXX_Name/`` (nnU-Net >= 2.5), and, when a preprocessed root is given, straight into
that folder too, which is where ``nnUNetv2_train`` reads it.
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from nnunet_ext.io.atomic import STAGING_MARK, remove_stale_staging, replace_folder, write_text_atomically
from nnunet_ext import __version__

if TYPE_CHECKING:
    import pandas as pd

SUPPORTED_FILE_ENDINGS = (".png", ".tif", ".nii.gz")
SPLITS = ("train", "validation", "test")
MANIFEST_COLUMNS = ["case_id", "split", "source_files", "subject", "sample", "modality", "pixel_size_um"]
# AxonDeepSeg's classes in nnU-Net's convention (background 0, consecutive labels).
AXON_MYELIN_LABELS = {"background": 0, "myelin": 1, "axon": 2}
SPLITS_FILE = "splits_final.json"


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


def read_manifest(dataset_folder: str | os.PathLike) -> "pd.DataFrame":
    """The manifest.csv of a dataset written by this package (strings kept as strings, empty cells as ``""``)."""
    import pandas as pd

    path = Path(dataset_folder) / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest (was the dataset written by nnunet-ext?)")
    manifest = pd.read_csv(path, dtype={c: str for c in ("case_id", "split", "subject", "sample", "modality")},
                           keep_default_na=False, na_values={"pixel_size_um": [""]})
    missing = [c for c in ("case_id", "split") if c not in manifest.columns]
    if missing:
        raise ValueError(f"{path}: manifest lacks column(s) {missing}")
    return manifest


def check_splits(splits: Sequence[Mapping[str, Sequence[str]]], training_cases: Sequence[str],
                 where: str = "splits") -> list[dict]:
    """Validate nnU-Net folds (``[{"train": [...], "val": [...]}, ...]``) against the training cases.

    Every case must be a training case, and no case may be in both train and val of one fold.
    """
    known = set(training_cases)
    checked = []
    if not splits:
        raise ValueError(f"{where}: no fold given")
    for index, fold in enumerate(splits):
        if set(fold) != {"train", "val"}:
            raise ValueError(f"{where}: fold {index} must have exactly the keys 'train' and 'val', got {sorted(fold)}")
        train, val = [str(c) for c in fold["train"]], [str(c) for c in fold["val"]]
        unknown = sorted((set(train) | set(val)) - known)
        if unknown:
            raise ValueError(f"{where}: fold {index} names cases that are not training cases: {unknown[:5]}")
        both = sorted(set(train) & set(val))
        if both:
            raise ValueError(f"{where}: fold {index} has cases in both train and val: {both[:5]}")
        if not train or not val:
            raise ValueError(f"{where}: fold {index} has an empty train or val list")
        checked.append({"train": sorted(train), "val": sorted(val)})
    return checked


def preprocessed_splits_path(preprocessed_root: str | os.PathLike, folder_name: str) -> Path:
    return Path(preprocessed_root) / folder_name / SPLITS_FILE


class NnUNetRawWriter:
    """Write one nnU-Net raw dataset, case by case; use as a context manager.

    Parameters
    ----------
    raw_root : path
        nnU-Net's raw folder (``$nnUNet_raw``).
    dataset_id, dataset_name : int, str
        Give the folder ``DatasetXXX_Name``. Another dataset with the same ID but a different name (in
        ``raw_root``, or in ``preprocessed_root`` when given) is an error, since nnU-Net resolves datasets by ID.
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
        Replace an existing dataset of the same folder name (and its ``splits_final.json`` in the preprocessed
        folder).
    dataset_json_extra : dict, optional
        More fields for dataset.json (description, reference, licence, ...).
    preprocessed_root : path, optional
        nnU-Net's preprocessed folder (``$nnUNet_preprocessed``): fixed folds are also written to
        ``<preprocessed_root>/DatasetXXX_Name/splits_final.json``.
    png_compression : int
        zlib level of PNG files (0-9). 1 takes about 40 % less CPU than PIL's default 6 for files about 7 %
        larger (measured on ads_sem).
    write_threads : int, optional
        Threads that encode and write files while the converter reads the next case (Pillow and zlib release the
        GIL); default ``min(4, CPUs)``. A write error is raised by the next call (naming the file) and fails the
        dataset.
    """

    def __init__(self, raw_root: str | os.PathLike, dataset_id: int, dataset_name: str,
                 labels: Mapping[str, int] = AXON_MYELIN_LABELS, channel_names: Mapping[str, str] | None = None,
                 file_ending: str = ".png", case_prefix: str | None = None, overwrite: bool = False,
                 dataset_json_extra: Mapping | None = None, preprocessed_root: str | os.PathLike | None = None,
                 png_compression: int = 1, write_threads: int | None = None):
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
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9\-]*(_[A-Za-z0-9\-]+)*", self.case_prefix):
            raise ValueError(f"case prefix {self.case_prefix!r} must be letters, digits, '-' or single '_'")
        self.overwrite = overwrite
        self.dataset_json_extra = dict(dataset_json_extra or {})
        self.preprocessed_root = Path(preprocessed_root) if preprocessed_root else None
        self.png_compression = int(png_compression)
        self.write_threads = max(1, int(write_threads if write_threads is not None else min(4, os.cpu_count() or 1)))
        self._pool = None
        self._pending: collections.deque = collections.deque()
        self._failed: BaseException | None = None
        self.records: list[CaseRecord] = []
        self._splits: list[dict] | None = None
        self._image_ndim: int | None = None
        self._check_destination()
        self.raw_root.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(self.destination)  # hidden folders of killed conversions
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.folder_name}{STAGING_MARK}{os.getpid()}-",
                                          dir=self.raw_root))
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (self._tmp / sub).mkdir()

    def _check_destination(self) -> None:
        for root in (self.raw_root, self.preprocessed_root):
            if root is None or not root.is_dir():
                continue
            for other in root.glob(f"Dataset{self.dataset_id:03d}_*"):
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
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()
        shutil.rmtree(self._tmp, ignore_errors=True)

    # -- background writes -------------------------------------------------------------------------------------
    def _submit_write(self, array: np.ndarray, path: Path, spacing) -> None:
        """Write now, or hand the write to a thread; at most ``2 * write_threads`` writes wait at any time."""
        self._raise_if_failed()
        if self.write_threads == 1:
            self._write_array(array, path, spacing)
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.write_threads, thread_name_prefix="nnunet-raw-writer")
        self._pending.append(self._pool.submit(self._write_array_or_name_it, array, path, spacing))
        while len(self._pending) > 2 * self.write_threads:
            self._wait_oldest()

    def _write_array_or_name_it(self, array: np.ndarray, path: Path, spacing) -> None:
        try:
            self._write_array(array, path, spacing)
        except Exception as error:  # raised later, in another call: say which file
            raise OSError(f"{path.name}: writing failed ({error})") from error

    def _wait_oldest(self) -> None:
        try:
            self._pending.popleft().result()
        except BaseException as error:
            self._failed = error
            raise

    def _drain_writes(self) -> None:
        while self._pending:
            self._wait_oldest()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _raise_if_failed(self) -> None:
        if self._failed is not None:
            raise RuntimeError(f"{self.folder_name}: an earlier write failed ({self._failed}); the dataset cannot "
                               f"be finished") from self._failed

    # -- cases ---------------------------------------------------------------------------------------------------
    def _next_case_id(self) -> str:
        return f"{self.case_prefix}_{len(self.records):03d}"

    def _check_split(self, split: str, where: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"{where}: split must be one of {SPLITS}, got {split!r}")

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
        split : {"train", "validation", "test"}
            ``train`` and ``validation`` go to imagesTr/labelsTr (validation cases form the validation set of the
            fixed fold in ``splits_final.json``), ``test`` to imagesTs (and labelsTs when labelled).
        spacing : sequence of float, optional
            Voxel size in the array's axis order, for ``.tif``/``.nii.gz`` (ignored by ``.png``).
        source_files, subject, sample, modality, pixel_size_um, **extra
            Provenance for the manifest.
        """
        channels = [np.asarray(image)] if isinstance(image, np.ndarray) else [np.asarray(c) for c in image]
        where = f"case from {', '.join(map(str, source_files)) or 'memory'}"
        if len(channels) != len(self.channel_names):
            raise ValueError(f"{where}: {len(channels)} channel(s), but the dataset declares "
                             f"{len(self.channel_names)} ({self.channel_names})")
        shape = channels[0].shape
        if any(c.shape != shape for c in channels):
            raise ValueError(f"{where}: channels differ in shape {[c.shape for c in channels]}")
        self._check_ndim(channels[0].ndim, shape, where)
        if self.file_ending == ".png" and any(c.dtype not in (np.uint8, np.uint16, np.bool_) for c in channels):
            raise ValueError(f"{where}: PNG holds 8- or 16-bit unsigned images, got {channels[0].dtype}")
        self._check_split(split, where)
        if spacing is not None and len(spacing) != len(shape):
            raise ValueError(f"{where}: spacing {tuple(spacing)} does not match the {len(shape)}D image")
        if label is not None:
            label = np.asarray(label)
            if label.shape != shape:
                raise ValueError(f"{where}: label shape {label.shape} differs from image shape {shape}")
            if not np.issubdtype(label.dtype, np.integer) and not np.issubdtype(label.dtype, np.bool_):
                raise ValueError(f"{where}: label must be an integer array, got {label.dtype}")
            unexpected = sorted(set(_distinct_values(label).tolist()) - set(self.labels.values()))
            if unexpected:
                raise ValueError(f"{where}: label values {unexpected} not in dataset labels {self.labels}")
        elif split != "test":
            raise ValueError(f"{where}: {split} cases need a label")

        case_id = self._next_case_id()
        images_dir = self._tmp / ("imagesTs" if split == "test" else "imagesTr")
        with self._case_files(case_id):
            for index, channel in enumerate(channels):
                self._submit_write(channel, images_dir / f"{case_id}_{index:04d}{self.file_ending}", spacing)
            if label is not None:
                labels_dir = self._tmp / ("labelsTs" if split == "test" else "labelsTr")
                labels_dir.mkdir(exist_ok=True)
                self._submit_write(label.astype(self._label_dtype()), labels_dir / f"{case_id}{self.file_ending}",
                                   spacing)
        self.records.append(CaseRecord(case_id, split, [str(s) for s in source_files], subject, sample, modality,
                                       pixel_size_um, extra))
        return case_id

    def add_case_files(self, image_files: Sequence[str | os.PathLike], label_file: str | os.PathLike | None, *,
                       split: str = "train", label_lookup: np.ndarray | None = None,
                       source_files: Sequence[str | os.PathLike] = (), subject: str = "", sample: str = "",
                       modality: str = "", pixel_size_um: float | None = None, **extra) -> str:
        """Add a case from files already in this dataset's format (as another nnU-Net raw dataset holds them).

        Images are copied byte for byte (with Tiff3DIO's spacing JSON); so is the label, unless ``label_lookup``
        is given: then label value ``v`` becomes ``label_lookup[v]`` (values outside the table, or mapped to a
        negative number, are an error naming the file). Used to aggregate datasets without re-encoding images.
        """
        image_files = [Path(f) for f in image_files]
        where = f"case from {', '.join(map(str, image_files))}"
        self._check_split(split, where)
        if len(image_files) != len(self.channel_names):
            raise ValueError(f"{where}: {len(image_files)} channel file(s), but the dataset declares "
                             f"{len(self.channel_names)} ({self.channel_names})")
        for path in [*image_files, *([Path(label_file)] if label_file is not None else [])]:
            if not path.name.endswith(self.file_ending):
                raise ValueError(f"{path}: not a {self.file_ending} file, as this dataset's files are")
            if not path.is_file():
                raise FileNotFoundError(f"{path}: file not found")
        if label_file is None and split != "test":
            raise ValueError(f"{where}: {split} cases need a label")
        case_id = self._next_case_id()
        images_dir = self._tmp / ("imagesTs" if split == "test" else "imagesTr")
        with self._case_files(case_id):
            for index, path in enumerate(image_files):
                shutil.copyfile(path, images_dir / f"{case_id}_{index:04d}{self.file_ending}")
            if self.file_ending == ".tif":
                spacing_file = f"{_strip(image_files[0].name, self.file_ending)[:-5]}.json"
                self._copy_tiff_spacing(image_files[0].parent / spacing_file, images_dir / f"{case_id}.json")
            if label_file is not None:
                label_file = Path(label_file)
                labels_dir = self._tmp / ("labelsTs" if split == "test" else "labelsTr")
                labels_dir.mkdir(exist_ok=True)
                target = labels_dir / f"{case_id}{self.file_ending}"
                if label_lookup is None:
                    shutil.copyfile(label_file, target)
                else:
                    self._remap_label_file(label_file, target, np.asarray(label_lookup))
                if self.file_ending == ".tif":
                    self._copy_tiff_spacing(label_file.parent / f"{_strip(label_file.name, '.tif')}.json",
                                            labels_dir / f"{case_id}.json")
        self.records.append(CaseRecord(case_id, split, [str(s) for s in source_files], subject, sample, modality,
                                       pixel_size_um, extra))
        return case_id

    @contextlib.contextmanager
    def _case_files(self, case_id: str):
        """Remove every file of ``case_id`` if writing it fails, so a caught error leaves no stray file behind."""
        try:
            yield
        except BaseException:
            for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
                for path in (self._tmp / sub).glob(f"{case_id}[_.]*"):
                    path.unlink(missing_ok=True)
            raise

    @staticmethod
    def _copy_tiff_spacing(source: Path, target: Path) -> None:
        if source.is_file():
            shutil.copyfile(source, target)

    def _label_dtype(self):
        return np.uint8 if max(self.labels.values()) < 256 else np.uint16

    def _remap_label_file(self, source: Path, target: Path, lookup: np.ndarray) -> None:
        if self.file_ending == ".nii.gz":
            import SimpleITK as sitk

            itk = sitk.ReadImage(str(source))
            label = sitk.GetArrayFromImage(itk)
        elif self.file_ending == ".png":
            from PIL import Image

            with Image.open(source) as im:
                label = np.array(im)
        else:
            import tifffile

            label = tifffile.imread(source)
        values = np.unique(label)
        bad = [int(v) for v in values if v < 0 or v >= len(lookup) or lookup[int(v)] < 0]
        if bad:
            raise ValueError(f"{source}: label value(s) {bad} have no mapping to this dataset's labels {self.labels}")
        remapped = lookup[label].astype(self._label_dtype())
        if self.file_ending == ".nii.gz":
            out = sitk.GetImageFromArray(remapped)
            out.CopyInformation(itk)  # keep spacing, origin and direction of the source
            sitk.WriteImage(out, str(target), useCompression=True)
        else:
            self._write_array(remapped, target, None)

    def _check_ndim(self, ndim: int, shape, where: str) -> None:
        if ndim not in (2, 3):
            raise ValueError(f"{where}: image must be 2D or 3D (one channel per array), got shape {shape}")
        if self.file_ending == ".png" and ndim != 2:
            raise ValueError(f"{where}: .png datasets hold 2D images, got shape {shape}")
        if self.file_ending == ".tif" and ndim != 3:
            raise ValueError(f"{where}: .tif datasets (nnU-Net's Tiff3DIO) hold 3D stacks, got shape {shape}")
        if self._image_ndim is None:
            self._image_ndim = ndim
        elif ndim != self._image_ndim:
            raise ValueError(f"{where}: {ndim}D image in a {self._image_ndim}D dataset")

    def _write_array(self, array: np.ndarray, path: Path, spacing: Sequence[float] | None) -> None:
        if self.file_ending == ".png":
            from PIL import Image

            if array.dtype == np.bool_:
                array = array.astype(np.uint8)
            if array.dtype not in (np.uint8, np.uint16):
                raise ValueError(f"{path.name}: PNG holds 8- or 16-bit integers, got {array.dtype}")
            Image.fromarray(np.ascontiguousarray(array)).save(path, compress_level=self.png_compression)
        elif self.file_ending == ".tif":
            import tifffile

            tifffile.imwrite(path, array, compression="zlib")
            base = re.sub(r"_\d{4}$", "", _strip(path.name, ".tif"))  # Tiff3DIO: <case>.json, no channel suffix
            (path.parent / f"{base}.json").write_text(json.dumps({"spacing": list(map(float, spacing or (1,) * 3))}))
        else:
            import SimpleITK as sitk

            itk = sitk.GetImageFromArray(array)
            if spacing is not None:
                itk.SetSpacing([float(s) for s in reversed(spacing)])  # ITK orders spacing x, y(, z)
            sitk.WriteImage(itk, str(path), useCompression=True)

    # -- folds ---------------------------------------------------------------------------------------------------
    def set_splits(self, splits: Sequence[Mapping[str, Sequence[str]]]) -> None:
        """Fix nnU-Net's folds: ``[{"train": [case ids], "val": [case ids]}, ...]`` (checked at :meth:`finish`)."""
        self._splits = [{"train": list(f["train"]), "val": list(f["val"])} for f in splits]

    def _final_splits(self) -> list[dict] | None:
        training = [r.case_id for r in self.records if r.split != "test"]
        if self._splits is not None:
            return check_splits(self._splits, training, f"{self.folder_name} splits")
        validation = [r.case_id for r in self.records if r.split == "validation"]
        if not validation:
            return None
        train = [r.case_id for r in self.records if r.split == "train"]
        return check_splits([{"train": train, "val": validation}], training, f"{self.folder_name} validation fold")

    # -- finishing -------------------------------------------------------------------------------------------------
    def finish(self, verify: bool = False, num_processes: int = 2) -> Path:
        """Write dataset.json, manifest.csv (and splits_final.json), then move the dataset into place.

        Parameters
        ----------
        verify : bool
            Run nnU-Net's ``verify_dataset_integrity`` on the complete dataset before moving it into place (what
            ``nnUNetv2_plan_and_preprocess --verify_dataset_integrity`` checks); a failure leaves nothing behind.
        num_processes : int
            Worker processes of that check.

        Returns
        -------
        Path
            The dataset folder.
        """
        from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

        try:
            self._raise_if_failed()
            self._drain_writes()
            n_training = sum(r.split != "test" for r in self.records)
            if n_training == 0:
                raise ValueError(f"{self.folder_name}: no labelled training case; nothing written")
            splits = self._final_splits()
            splits_target = None
            if splits is not None and self.preprocessed_root is not None:
                splits_target = preprocessed_splits_path(self.preprocessed_root, self.folder_name)
                if splits_target.is_file() and not self.overwrite and json.loads(splits_target.read_text()) != splits:
                    raise FileExistsError(f"{splits_target} exists with other folds; pass --overwrite to replace it")
            extra = {"description": "written by nnunet-ext", "license": "see the source dataset",
                     "converted_by": f"nnunet-ext {__version__}", **self.dataset_json_extra}
            if self.file_ending == ".tif":  # nnU-Net would otherwise try its 2D reader on .tif first
                extra.setdefault("overwrite_image_reader_writer", "Tiff3DIO")
            generate_dataset_json(str(self._tmp), self.channel_names, self.labels, n_training, self.file_ending,
                                  dataset_name=self.folder_name, **extra)
            self.manifest.to_csv(self._tmp / "manifest.csv", index=False)
            if splits is not None:
                (self._tmp / SPLITS_FILE).write_text(json.dumps(splits, indent=2))
            if verify:
                self._verify_with_nnunet(num_processes)
            if self.destination.exists() and not self.overwrite:  # appeared while we were writing
                raise FileExistsError(f"{self.destination} exists; pass --overwrite to replace it")
        except BaseException:
            self.abort()
            raise
        replace_folder(self._tmp, self.destination)
        if splits_target is not None:
            splits_target.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomically(splits_target, json.dumps(splits, indent=2))
        return self.destination

    def _verify_with_nnunet(self, num_processes: int) -> None:
        from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

        try:
            verify_dataset_integrity(str(self._tmp), num_processes)
        except (AssertionError, RuntimeError) as error:
            raise ValueError(f"{self.folder_name}: nnU-Net's dataset check failed ({error}); nothing written") \
                from None

    @property
    def manifest(self) -> "pd.DataFrame":
        import pandas as pd

        rows = [r.as_row() for r in self.records]
        columns = MANIFEST_COLUMNS + [c for c in dict.fromkeys(k for row in rows for k in row)
                                      if c not in MANIFEST_COLUMNS]
        return pd.DataFrame(rows, columns=columns)


def _distinct_values(label: np.ndarray) -> np.ndarray:
    """Values present in an integer label map (a histogram for 8/16-bit maps: much faster than np.unique)."""
    if label.dtype in (np.bool_, np.uint8, np.uint16):
        return np.flatnonzero(np.bincount(label.ravel(), minlength=1))
    return np.unique(label)


def _strip(name: str, ending: str) -> str:
    return name[: -len(ending)] if name.endswith(ending) else name


def add_destination_arguments(parser) -> None:
    """The ``--raw/-d/-n/--overwrite/--preprocessed/--verify`` options every ``nnunet-ext convert`` source shares."""
    parser.add_argument("--raw", default=os.environ.get("nnUNet_raw"),
                        help="nnU-Net raw folder (default: $nnUNet_raw)")
    parser.add_argument("-d", "--dataset-id", type=int, required=True, help="nnU-Net dataset ID (1-999)")
    parser.add_argument("-n", "--name", required=True, help="dataset name (DatasetXXX_<name>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    parser.add_argument("--preprocessed", default=os.environ.get("nnUNet_preprocessed"),
                        help="nnU-Net preprocessed folder (default: $nnUNet_preprocessed): fixed folds are also "
                             "written to <preprocessed>/DatasetXXX_<name>/splits_final.json, and dataset IDs are "
                             "checked there too")
    parser.add_argument("--verify", action="store_true",
                        help="run nnU-Net's verify_dataset_integrity before moving the dataset into place")


def raw_root_from_args(args) -> str:
    if not args.raw:
        raise ValueError("no nnU-Net raw folder: pass --raw or set nnUNet_raw")
    return args.raw
