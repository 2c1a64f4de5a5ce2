"""MTNeuro (X-ray microtomography of mouse brain, 1.17 um isotropic; Quesada et al. 2022) to nnU-Net raw format.

The benchmark's pixel-level segmentation task (task 2) uses four 256 x 256 regions of the BossDB volume
``bossdb://prasad/prasad2020/image`` with labels ``bossdb://prasad/prasad_analysis/pixel_labels`` (0 background,
1 blood vessel, 2 cell, 3 axon), split along z into the half-open ranges train [110, 379), validation [380, 409)
and test [420, 470): 269, 29 and 50 slices per region. Half-open as BossDB's cutouts ("[inclusive, exclusive)"
in MTNeuro's access notebook) and MTNeuro's dataloader, which slices ``z_vals[0]:z_vals[1]``; slice 379 is in no
split and slices 409-419 are the buffer before the test set. Its settings, all available here:

* 4 classes: cortex, striatum and VP (the zona incerta is left out: its axons are hard to annotate even for experts);
* 3 classes: all four regions, axons merged into background (labels 0 background, 1 blood vessel, 2 cell);
* 2D (one slice per case, ``.png``) or 3D (non-overlapping sub-volumes of 8 slices, ``.nii.gz`` with 1.17 um
  spacing; a remainder shorter than 8 slices at the end of a split is left out).

Validation cases form the fixed fold 0 of ``splits_final.json``; test cases go to imagesTs/labelsTs.

Where the data comes from. The converter reads local cutouts, one image and one label file per region, named
``<region>_image.{npy,tif,tiff}`` and ``<region>_labels.{npy,tif,tiff}`` (axes ZYX, exactly the region's 256 x 256
y/x box, slices from ``z_start`` (default 110, the first labelled slice) up to at least 469, the last slice of
the test range). When a file is missing and the ``intern`` package is installed, it downloads the cutout from
BossDB (``intern.array(uri)[z0:z1, y0:y1, x0:x1]``, half-open) and saves it in that folder under the same name,
which then serves as the cache for later runs.

MTNeuro's own files are read too (:func:`find_benchmark_files`): what its dataloader (``BossDBDataset`` with
``download=True``) and notebooks save, ``<task>{train,val,test}images.npy`` and ``<task>{train,val,test}labels.npy``
with ``<task>`` the task configuration's ``name`` (e.g. ``task2_2D_4class``), each holding one split of all four
regions stacked along z in the order cortex, striatum, VP, ZI (ZI is saved even by the 4-class tasks, whose loader
skips it). MTNeuro's task configuration JSON (``taskconfig/task2_*.json``: ``xrange_cor``/``yrange_cor``, ...,
``z_train``/``z_val``/``z_test``, ``volume_z``, ``combine_ax_and_bg``, ``noZI``, ``image_chan``,
``annotation_chan``, ``name``) is read by :func:`read_config`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
from tqdm import tqdm

from nnunet_ext.io.atomic import atomic_output_path
from nnunet_ext.dataset_conversion.nnunet_raw import NnUNetRawWriter, add_destination_arguments, raw_root_from_args

MTNEURO_IMAGE_URI = "bossdb://prasad/prasad2020/image"
MTNEURO_LABEL_URI = "bossdb://prasad/prasad_analysis/pixel_labels"
MTNEURO_PIXEL_SIZE_UM = 1.17
# y and x ranges (half-open) of the task-2 regions in the full volume, from the benchmark's task configuration.
MTNEURO_REGIONS = {
    "cortex": ((900, 1156), (4600, 4856)),
    "striatum": ((500, 756), (3700, 3956)),
    "vp": ((850, 1106), (3063, 3319)),
    "zi": ((650, 906), (1543, 1799)),
}
# z ranges [start, stop), half-open as BossDB cutouts and MTNeuro's dataloader (z_vals[0]:z_vals[1]): 269/29/50 slices
MTNEURO_Z_SPLITS = {"train": (110, 379), "validation": (380, 409), "test": (420, 470)}
# MTNeuro's dataloader stacks the regions along z in this order in its saved files; its config names them so
MTNEURO_STACK_ORDER = ("cortex", "striatum", "vp", "zi")
MTNEURO_CONFIG_REGION_KEYS = {"cortex": "cor", "striatum": "stri", "vp": "vp", "zi": "zi"}
MTNEURO_CONFIG_SPLIT_KEYS = {"train": "train", "validation": "val", "test": "test"}
MTNEURO_SOURCE_CLASSES = {"background": 0, "blood_vessel": 1, "cell": 2, "axon": 3}
SUBVOLUME_DEPTH = 8
CUTOUT_EXTENSIONS = (".npy", ".tif", ".tiff")


@dataclass(frozen=True)
class MTNeuroSetting:
    """Regions, nnU-Net labels and the lookup from MTNeuro classes (0-3) to them."""

    regions: tuple[str, ...]
    labels: dict = field(hash=False)
    lookup: tuple[int, ...]


SETTINGS = {
    4: MTNeuroSetting(("cortex", "striatum", "vp"), dict(MTNEURO_SOURCE_CLASSES), (0, 1, 2, 3)),
    3: MTNeuroSetting(("cortex", "striatum", "vp", "zi"), {"background": 0, "blood_vessel": 1, "cell": 2},
                      (0, 1, 2, 0)),
}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nnunet-ext" / "mtneuro"


def find_cutout(folder: Path, region: str, kind: str) -> Path | None:
    for extension in CUTOUT_EXTENSIONS:
        path = folder / f"{region}_{kind}{extension}"
        if path.is_file():
            return path
    return None


def read_cutout(path: Path) -> np.ndarray:
    """A ZYX cutout from ``.npy`` (memory-mapped) or TIFF."""
    try:
        if path.suffix == ".npy":
            return np.load(path, mmap_mode="r")
        import tifffile

        return tifffile.imread(path)
    except Exception as error:  # numpy and tifffile raise many kinds on bad files
        raise ValueError(f"{path}: cannot read cutout ({error})") from None


def download_cutout(uri: str, z_range: tuple[int, int], y_range: tuple[int, int], x_range: tuple[int, int],
                    destination: Path, dtype=None) -> Path:
    """Download ``uri[z0:z1, y0:y1, x0:x1]`` (half-open) from BossDB with ``intern`` and save it as ``.npy``."""
    from intern import array as boss_array  # ImportError is handled by the caller

    volume = boss_array(uri)
    data = np.asarray(volume[z_range[0]:z_range[1], y_range[0]:y_range[1], x_range[0]:x_range[1]])
    if dtype is not None:
        info = np.iinfo(dtype)
        if data.size and (data.min() < info.min or data.max() > info.max):
            raise ValueError(f"{uri}: values {data.min()}..{data.max()} do not fit {np.dtype(dtype).name}")
        data = data.astype(dtype)
    with atomic_output_path(destination) as temporary:
        np.save(temporary, data)
    return destination


def load_region(region: str, y_range, x_range, z_first: int, z_stop: int, cutout_dir: Path, z_start: int,
                download: bool, image_uri: str = MTNEURO_IMAGE_URI,
                label_uri: str = MTNEURO_LABEL_URI) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """Image and label of one region for slices ``[z_first, z_stop)`` (half-open), from cutouts or BossDB."""
    arrays, files = [], []
    for kind, uri in (("image", image_uri), ("labels", label_uri)):
        path = find_cutout(cutout_dir, region, kind)
        if path is None:
            path = cutout_dir / f"{region}_{kind}.npy"
            if not download:
                raise FileNotFoundError(f"{path}: cutout not found (also looked for .tif/.tiff); download is off")
            try:
                download_cutout(uri, (z_start, z_stop), y_range, x_range, path,
                                dtype=np.uint8 if kind == "labels" else None)
            except ImportError:
                raise FileNotFoundError(
                    f"{path}: cutout not found, and the 'intern' package that downloads it from BossDB is not "
                    f"installed. Either 'pip install intern' (needs network) or save the ZYX cutout "
                    f"{uri}[{z_start}:{z_stop}, {y_range[0]}:{y_range[1]}, {x_range[0]}:{x_range[1]}] there "
                    f"as .npy or .tif") from None
            except FileNotFoundError:
                raise
            except Exception as error:  # network or BossDB errors
                raise FileNotFoundError(f"{path}: cutout not found and the download of {uri} failed ({error}); "
                                        f"save the cutout there yourself") from None
        data = read_cutout(path)
        expected_yx = (y_range[1] - y_range[0], x_range[1] - x_range[0])
        if data.ndim != 3 or tuple(data.shape[1:]) != expected_yx:
            raise ValueError(f"{path}: expected a ZYX cutout of y/x size {expected_yx}, got shape {data.shape}")
        if data.shape[0] < z_stop - z_start:
            raise ValueError(f"{path}: has {data.shape[0]} slices from z={z_start}, needs up to z={z_stop - 1} "
                             f"({z_stop - z_start} slices)")
        arrays.append(data[z_first - z_start: z_stop - z_start])
        files.append(path)
    image, labels = _checked(*arrays, *files)
    return image, labels, files


def _checked(image: np.ndarray, labels: np.ndarray, image_file: Path, label_file: Path) -> tuple[np.ndarray,
                                                                                                  np.ndarray]:
    """In-memory uint8/uint16 image and uint8 labels 0-3, or a ValueError naming the file."""
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{label_file}: labels must be integers, got {labels.dtype}")
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{image_file}: image must be 8- or 16-bit unsigned, got {image.dtype}")
    values = np.unique(labels)
    unknown = [int(v) for v in values if not 0 <= v <= 3]
    if unknown:
        raise ValueError(f"{label_file}: label values {unknown[:10]}; MTNeuro has 0 background, 1 blood vessel, "
                         f"2 cell, 3 axon")
    return np.asarray(image), np.asarray(labels).astype(np.uint8)


def find_benchmark_files(folder: str | os.PathLike, task_name: str | None = None) -> dict[str, tuple[Path, Path]]:
    """MTNeuro's own saved splits in ``folder``: ``{split: (images.npy, labels.npy)}``, or ``{}`` if none.

    MTNeuro's dataloader saves ``<task>{train,val,test}images.npy`` and ``...labels.npy`` (``<task>`` the task
    configuration's ``name``). ``task_name`` picks one task when the folder holds several (an error otherwise).
    Splits are keyed ``train``, ``validation``, ``test``; a split whose files are absent is left out.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    suffixes = {split: f"{key}images.npy" for split, key in MTNEURO_CONFIG_SPLIT_KEYS.items()}
    names = set()
    for path in folder.iterdir():
        for suffix in suffixes.values():
            if path.is_file() and path.name.endswith(suffix):
                names.add(path.name[: -len(suffix)])
    if task_name is not None:
        if task_name not in names:
            if names:
                raise FileNotFoundError(f"{folder}: no MTNeuro files of task {task_name!r} "
                                        f"({task_name}trainimages.npy, ...); tasks there: {sorted(names)}")
            return {}
        names = {task_name}
    if len(names) > 1:
        raise ValueError(f"{folder}: MTNeuro files of several tasks {sorted(names)}; choose one (--task-name)")
    if not names:
        return {}
    name = names.pop()
    found = {}
    for split, key in MTNEURO_CONFIG_SPLIT_KEYS.items():
        images, labels = folder / f"{name}{key}images.npy", folder / f"{name}{key}labels.npy"
        if images.is_file():
            if not labels.is_file():
                raise FileNotFoundError(f"{labels}: not found beside {images.name} (MTNeuro saves both)")
            found[split] = (images, labels)
    return found


def load_benchmark_split(images_path: Path, labels_path: Path, z_range: tuple[int, int],
                         y_x_shape: tuple[int, int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One split of MTNeuro's saved files cut into its regions: ``{region: (image, labels)}`` (ZYX each).

    The files hold the regions stacked along z (cortex, striatum, VP, ZI; ``z_range`` slices each), as MTNeuro's
    dataloader concatenates its cutouts ``[z_range[0]:z_range[1], y, x]``.
    """
    depth = z_range[1] - z_range[0]
    arrays = [read_cutout(images_path), read_cutout(labels_path)]
    expected = (len(MTNEURO_STACK_ORDER) * depth, *y_x_shape)
    for path, data in zip((images_path, labels_path), arrays):
        if data.ndim != 3 or tuple(data.shape) != expected:
            raise ValueError(f"{path}: expected the {len(MTNEURO_STACK_ORDER)} regions "
                             f"({', '.join(MTNEURO_STACK_ORDER)}) of z range [{z_range[0]}, {z_range[1]}) "
                             f"stacked along z, shape {expected}, got shape {data.shape}; do the z ranges "
                             f"(--config) match the files?")
    regions = {}
    for index, region in enumerate(MTNEURO_STACK_ORDER):
        block = slice(index * depth, (index + 1) * depth)
        regions[region] = _checked(arrays[0][block], arrays[1][block], images_path, labels_path)
    return regions


def convert_mtneuro(raw_root: str | os.PathLike, dataset_id: int, dataset_name: str, *, n_classes: int = 4,
                    dimensions: int = 2, cutout_dir: str | os.PathLike | None = None, z_start: int | None = None,
                    download: bool = True, regions: Mapping[str, tuple] | None = None,
                    z_splits: Mapping[str, tuple[int, int]] | None = None, task_name: str | None = None,
                    image_uri: str = MTNEURO_IMAGE_URI, label_uri: str = MTNEURO_LABEL_URI,
                    overwrite: bool = False, preprocessed_root: str | os.PathLike | None = None,
                    verify: bool = False, progress: bool = True) -> Path:
    """Convert MTNeuro's segmentation task to an nnU-Net raw dataset.

    Parameters
    ----------
    raw_root, dataset_id, dataset_name :
        Destination ``<raw_root>/DatasetXXX_Name``.
    n_classes : {4, 3}
        The benchmark's 4-class (ZI left out) or 3-class (axons merged into background) setting.
    dimensions : {2, 3}
        One slice per case, or 8-slice sub-volumes.
    cutout_dir : path, optional
        Folder of local cutouts, and of downloads (default ``~/.cache/nnunet-ext/mtneuro``). When it lacks the
        per-region cutouts but holds MTNeuro's own saved files (``<task>{train,val,test}{images,labels}.npy``,
        :func:`find_benchmark_files`), those are read instead, and nothing is downloaded.
    z_start : int, optional
        z index of the first slice of the cutout files (default: the first slice of the splits, 110).
    download : bool
        Download missing cutouts with ``intern`` (when installed).
    regions, z_splits : dict, optional
        Override the benchmark's regions ``{name: ((y0, y1), (x0, x1))}`` or z splits
        ``{"train" | "validation" | "test": (start, stop)}``, all half-open, e.g. for other cutouts.
    task_name : str, optional
        Which task's saved files to read when ``cutout_dir`` holds MTNeuro files of several tasks.
    image_uri, label_uri : str
        BossDB channels to download from (default the benchmark's).
    overwrite, preprocessed_root, verify :
        As for every converter.

    Returns
    -------
    Path
        The dataset folder.
    """
    if n_classes not in SETTINGS:
        raise ValueError(f"n_classes must be 4 or 3 (the benchmark's settings), got {n_classes}")
    if dimensions not in (2, 3):
        raise ValueError(f"dimensions must be 2 or 3, got {dimensions}")
    setting = SETTINGS[n_classes]
    region_boxes = dict(MTNEURO_REGIONS if regions is None else regions)
    names = [r for r in setting.regions if r in region_boxes] if regions is None else list(region_boxes)
    if n_classes == 4 and regions is not None and "zi" in names:
        names.remove("zi")  # the 4-class setting leaves the zona incerta out, whatever the boxes
    splits = {s: tuple(int(v) for v in r) for s, r in (MTNEURO_Z_SPLITS if z_splits is None else z_splits).items()}
    unknown = sorted(set(splits) - {"train", "validation", "test"})
    if unknown or "train" not in splits:
        raise ValueError(f"z splits must include 'train' and may include 'validation' and 'test', got {sorted(splits)}")
    for split, (start, stop) in splits.items():
        if start >= stop or start < 0:
            raise ValueError(f"z split {split}: [{start}, {stop}) is empty (z ranges are half-open [start, stop))")
    z_first, z_stop = min(r[0] for r in splits.values()), max(r[1] for r in splits.values())
    z_start = z_first if z_start is None else int(z_start)
    if z_start > z_first:
        raise ValueError(f"cutouts start at z={z_start}, after the first needed slice z={z_first}")
    cutout_dir = default_cache_dir() if cutout_dir is None else Path(cutout_dir)
    per_region = all(find_cutout(cutout_dir, r, k) for r in names for k in ("image", "labels"))
    benchmark_files = {} if per_region and task_name is None else find_benchmark_files(cutout_dir, task_name)
    if benchmark_files:
        missing = sorted(set(splits) - set(benchmark_files))
        if missing:
            raise FileNotFoundError(f"{cutout_dir}: MTNeuro's files lack the split(s) {missing} (found "
                                    f"{sorted(p.name for pair in benchmark_files.values() for p in pair)})")
        outside = sorted(set(names) - set(MTNEURO_STACK_ORDER))
        shapes = {(y1 - y0, x1 - x0) for (y0, y1), (x0, x1) in (region_boxes[r] for r in names)}
        if outside or len(shapes) != 1:
            raise ValueError(f"MTNeuro's files stack the regions {MTNEURO_STACK_ORDER} with one y/x size; regions "
                             f"{sorted(region_boxes)} do not fit them")
    lookup = np.array(setting.lookup, np.uint8)
    file_ending = ".png" if dimensions == 2 else ".nii.gz"

    with NnUNetRawWriter(raw_root, dataset_id, dataset_name, setting.labels, file_ending=file_ending,
                         overwrite=overwrite, preprocessed_root=preprocessed_root,
                         channel_names={"0": "zscore"},
                         dataset_json_extra={"reference": "MTNeuro (Quesada et al. 2022), "
                                                          f"{image_uri}, {label_uri}",
                                             "mtneuro_setting": f"{n_classes}-class {dimensions}D",
                                             "mtneuro_z_splits": {k: list(v) for k, v in splits.items()},
                                             "mtneuro_z_ranges": "half-open [start, stop)"}) as writer:
        if benchmark_files:  # every split's file holds every region: cut each file once
            yx_shape = shapes.pop()
            by_split = {split: load_benchmark_split(*benchmark_files[split], splits[split], yx_shape)
                        for split in splits}
        for region in tqdm(names, desc=f"Converting {dataset_name}", unit="region", disable=not progress):
            y_range, x_range = region_boxes[region]
            if benchmark_files:
                volumes = {split: (by_split[split][region], list(benchmark_files[split])) for split in splits}
            else:
                image, labels, files = load_region(region, y_range, x_range, z_first, z_stop, cutout_dir, z_start,
                                                   download, image_uri, label_uri)
                volumes = {split: ((image[start - z_first: stop - z_first], labels[start - z_first: stop - z_first]),
                                   files) for split, (start, stop) in splits.items()}
            for split, (start, stop) in splits.items():
                (image, labels), files = volumes[split]
                labels = lookup[labels]
                depth = 1 if dimensions == 2 else SUBVOLUME_DEPTH
                for z0 in range(start, stop - depth + 1, depth):  # [z0, z0 + depth) within [start, stop)
                    block = slice(z0 - start, z0 - start + depth)
                    case_image, case_label = image[block], labels[block]
                    if dimensions == 2:
                        case_image, case_label = case_image[0], case_label[0]
                    writer.add_case(case_image, case_label, split=split, source_files=files,
                                    subject="prasad2020", sample=region, modality="XRM",
                                    pixel_size_um=MTNEURO_PIXEL_SIZE_UM,
                                    spacing=(MTNEURO_PIXEL_SIZE_UM,) * dimensions, region=region, z_first=z0,
                                    z_last=z0 + depth - 1, y0=y_range[0], x0=x_range[0])
        destination = writer.finish(verify=verify)
    return destination


def read_config(path: str | os.PathLike) -> tuple[dict | None, dict | None]:
    """Regions and z splits (half-open) from a configuration file; see :func:`read_task_config`."""
    config = read_task_config(path)
    return config["regions"], config["z_splits"]


def read_task_config(path: str | os.PathLike) -> dict:
    """A configuration JSON in either of two forms, as ``{"regions", "z_splits", "n_classes", "dimensions",
    "task_name", "image_uri", "label_uri"}`` (``None`` where the file does not say).

    * this package's ``{"regions": {name: {"y": [y0, y1], "x": [x0, x1]}}, "z_splits": {"train": [start, stop],
      ...}}`` (both optional);
    * MTNeuro's task configuration (``taskconfig/task2_2D_4class.json`` and its siblings): ``yrange_cor``/
      ``xrange_cor``, ``..._stri``, ``..._vp``, ``..._zi``; ``z_train``, ``z_val``, ``z_test``; ``volume_z`` (1: 2D,
      8: 3D); ``combine_ax_and_bg`` (1: 3 classes) and ``noZI`` (1: 4 classes); ``image_chan``,
      ``annotation_chan``; ``name``.

    Every range is half-open ``[start, stop)``, as MTNeuro's dataloader slices them.
    """
    import json

    path = Path(path)
    config = dict.fromkeys(("regions", "z_splits", "n_classes", "dimensions", "task_name", "image_uri",
                            "label_uri"))
    try:
        content = json.loads(path.read_text())
        if any(f"z_{key}" in content for key in MTNEURO_CONFIG_SPLIT_KEYS.values()) or "xrange_cor" in content:
            regions = {region: (tuple(int(v) for v in content[f"yrange_{key}"]),
                                tuple(int(v) for v in content[f"xrange_{key}"]))
                       for region, key in MTNEURO_CONFIG_REGION_KEYS.items() if f"xrange_{key}" in content}
            config["regions"] = regions or None
            z_splits = {split: tuple(int(v) for v in content[f"z_{key}"])
                        for split, key in MTNEURO_CONFIG_SPLIT_KEYS.items() if f"z_{key}" in content}
            config["z_splits"] = z_splits or None
            if "combine_ax_and_bg" in content or "noZI" in content:
                config["n_classes"] = 3 if bool(content.get("combine_ax_and_bg")) else 4
            if "volume_z" in content:
                volume_z = int(content["volume_z"])
                if volume_z not in (1, SUBVOLUME_DEPTH):
                    raise ValueError(f"volume_z {volume_z}: this converter writes 1-slice (2D) or "
                                     f"{SUBVOLUME_DEPTH}-slice (3D) cases")
                config["dimensions"] = 2 if volume_z == 1 else 3
            config["task_name"] = content.get("name")
            config["image_uri"] = content.get("image_chan")
            config["label_uri"] = content.get("annotation_chan")
        else:
            if "regions" in content:
                config["regions"] = {name: (tuple(int(v) for v in box["y"]), tuple(int(v) for v in box["x"]))
                                     for name, box in content["regions"].items()}
            if content.get("z_splits") is not None:
                config["z_splits"] = {split: tuple(int(v) for v in r) for split, r in content["z_splits"].items()}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"{path}: not a valid MTNeuro configuration ({error!r})") from None
    return config


def register_convert_cli(convert_subparsers) -> None:
    parser = convert_subparsers.add_parser(
        "mtneuro", help="MTNeuro X-ray microtomography (4- or 3-class, 2D or 3D) to nnU-Net raw",
        description="Convert MTNeuro's pixel-level segmentation task to nnU-Net raw format from local ZYX cutouts "
                    "(<region>_image.npy|tif and <region>_labels.npy|tif), or from the files MTNeuro's own "
                    "dataloader saves (<task>{train,val,test}images.npy and ...labels.npy, found in the same "
                    "folder), downloading missing cutouts from BossDB with 'intern' when it is installed. z ranges "
                    "are half-open [start, stop), as in BossDB and MTNeuro. Validation slices form fold 0 of "
                    "splits_final.json.")
    add_destination_arguments(parser)
    parser.add_argument("--classes", type=int, choices=(4, 3),
                        help="4: background/vessel/cell/axon, ZI left out (default, or what an MTNeuro --config "
                             "says); 3: axons merged into background, all four regions")
    parser.add_argument("--dim", type=int, choices=(2, 3),
                        help="2: one slice per case (default, or what an MTNeuro --config says); 3: 8-slice "
                             "sub-volumes")
    parser.add_argument("--cutouts", metavar="DIR",
                        help=f"folder of local cutouts and downloads, or of MTNeuro's saved .npy files "
                             f"(default: {default_cache_dir()})")
    parser.add_argument("--task-name", metavar="NAME",
                        help="which task's MTNeuro files to read when the folder holds several (e.g. "
                             "task2_2D_4class)")
    parser.add_argument("--cutout-z-start", type=int,
                        help="z index of the first slice in the cutout files (default: 110, the first labelled "
                             "slice)")
    parser.add_argument("--no-download", action="store_true", help="never download; missing cutouts are an error")
    parser.add_argument("--config", metavar="JSON",
                        help="MTNeuro's task configuration (taskconfig/task2_2D_4class.json, ...: regions, z "
                             "ranges, classes, 2D/3D, BossDB channels), or other regions/z splits as "
                             '{"regions": {"cortex": {"y": [900, 1156], "x": [4600, 4856]}}, '
                             '"z_splits": {"train": [110, 379], "validation": [380, 409], "test": [420, 470]}} '
                             "(half-open ranges)")
    parser.set_defaults(func=_run_cli)


def _run_cli(args) -> int:
    config = read_task_config(args.config) if args.config else dict.fromkeys(
        ("regions", "z_splits", "n_classes", "dimensions", "task_name", "image_uri", "label_uri"))
    cutouts = default_cache_dir() if args.cutouts is None else Path(args.cutouts)
    task_name = args.task_name
    if task_name is None and config["task_name"]:
        try:  # the configuration's task when its files are there; otherwise whichever task the folder holds
            task_name = config["task_name"] if find_benchmark_files(cutouts, config["task_name"]) else None
        except FileNotFoundError:
            task_name = None
    destination = convert_mtneuro(raw_root_from_args(args), args.dataset_id, args.name,
                                  n_classes=args.classes or config["n_classes"] or 4,
                                  dimensions=args.dim or config["dimensions"] or 2, cutout_dir=cutouts,
                                  z_start=args.cutout_z_start, download=not args.no_download,
                                  regions=config["regions"], z_splits=config["z_splits"], task_name=task_name,
                                  image_uri=config["image_uri"] or MTNEURO_IMAGE_URI,
                                  label_uri=config["label_uri"] or MTNEURO_LABEL_URI,
                                  overwrite=args.overwrite, preprocessed_root=args.preprocessed, verify=args.verify)
    print(f"Wrote {destination}")
    return 0
