"""MTNeuro (X-ray microtomography of mouse brain, 1.17 um isotropic; Quesada et al. 2022) to nnU-Net raw format.

The benchmark's pixel-level segmentation task (task 2) uses four 256 x 256 regions of the BossDB volume
``bossdb://prasad/prasad2020/image`` with labels ``bossdb://prasad/prasad_analysis/pixel_labels`` (0 background,
1 blood vessel, 2 cell, 3 axon), split along z: train 110-379, validation 380-409, test 420-470 (inclusive; ten
slices of buffer before the test set). Its settings, all available here:

* 4 classes: cortex, striatum and VP (the zona incerta is left out: its axons are hard to annotate even for experts);
* 3 classes: all four regions, axons merged into background (labels 0 background, 1 blood vessel, 2 cell);
* 2D (one slice per case, ``.png``) or 3D (non-overlapping sub-volumes of 8 slices, ``.nii.gz`` with 1.17 um
  spacing; a remainder shorter than 8 slices at the end of a split is left out).

Validation cases form the fixed fold 0 of ``splits_final.json``; test cases go to imagesTs/labelsTs.

Where the data comes from. The converter reads local cutouts, one image and one label file per region, named
``<region>_image.{npy,tif,tiff}`` and ``<region>_labels.{npy,tif,tiff}`` (axes ZYX, exactly the region's 256 x 256
y/x box, slices from ``z_start`` (default 110, the first labelled slice) to at least 470). When a file is missing
and the ``intern`` package is installed, it downloads the cutout from BossDB (``intern.array(uri)[z0:z1, y0:y1,
x0:x1]``) and saves it in that folder under the same name, which then serves as the cache for later runs.
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
MTNEURO_Z_SPLITS = {"train": (110, 379), "validation": (380, 409), "test": (420, 470)}  # inclusive
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


def load_region(region: str, y_range, x_range, z_first: int, z_last: int, cutout_dir: Path, z_start: int,
                download: bool, image_uri: str = MTNEURO_IMAGE_URI,
                label_uri: str = MTNEURO_LABEL_URI) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """Image and label of one region for slices ``z_first..z_last`` (inclusive), from cutouts or BossDB."""
    arrays, files = [], []
    for kind, uri in (("image", image_uri), ("labels", label_uri)):
        path = find_cutout(cutout_dir, region, kind)
        if path is None:
            path = cutout_dir / f"{region}_{kind}.npy"
            if not download:
                raise FileNotFoundError(f"{path}: cutout not found (also looked for .tif/.tiff); download is off")
            try:
                download_cutout(uri, (z_start, z_last + 1), y_range, x_range, path,
                                dtype=np.uint8 if kind == "labels" else None)
            except ImportError:
                raise FileNotFoundError(
                    f"{path}: cutout not found, and the 'intern' package that downloads it from BossDB is not "
                    f"installed. Either 'pip install intern' (needs network) or save the ZYX cutout "
                    f"{uri}[{z_start}:{z_last + 1}, {y_range[0]}:{y_range[1]}, {x_range[0]}:{x_range[1]}] there "
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
        if data.shape[0] < z_last - z_start + 1:
            raise ValueError(f"{path}: has {data.shape[0]} slices from z={z_start}, needs up to z={z_last} "
                             f"({z_last - z_start + 1} slices)")
        arrays.append(data[z_first - z_start: z_last - z_start + 1])
        files.append(path)
    image, labels = arrays
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{files[1]}: labels must be integers, got {labels.dtype}")
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{files[0]}: image must be 8- or 16-bit unsigned, got {image.dtype}")
    values = np.unique(labels)
    unknown = [int(v) for v in values if not 0 <= v <= 3]
    if unknown:
        raise ValueError(f"{files[1]}: label values {unknown[:10]}; MTNeuro has 0 background, 1 blood vessel, "
                         f"2 cell, 3 axon")
    return np.asarray(image), np.asarray(labels).astype(np.uint8), files


def convert_mtneuro(raw_root: str | os.PathLike, dataset_id: int, dataset_name: str, *, n_classes: int = 4,
                    dimensions: int = 2, cutout_dir: str | os.PathLike | None = None, z_start: int | None = None,
                    download: bool = True, regions: Mapping[str, tuple] | None = None,
                    z_splits: Mapping[str, tuple[int, int]] | None = None, overwrite: bool = False,
                    preprocessed_root: str | os.PathLike | None = None, verify: bool = False,
                    progress: bool = True) -> Path:
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
        Folder of local cutouts, and of downloads (default ``~/.cache/nnunet-ext/mtneuro``).
    z_start : int, optional
        z index of the first slice of the cutout files (default: the first slice of the splits, 110).
    download : bool
        Download missing cutouts with ``intern`` (when installed).
    regions, z_splits : dict, optional
        Override the benchmark's regions ``{name: ((y0, y1), (x0, x1))}`` (half-open) or z splits
        ``{"train" | "validation" | "test": (first, last)}`` (inclusive), e.g. for other cutouts.
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
    for split, (first, last) in splits.items():
        if first > last or first < 0:
            raise ValueError(f"z split {split}: first slice {first} after last {last}")
    z_first, z_last = min(r[0] for r in splits.values()), max(r[1] for r in splits.values())
    z_start = z_first if z_start is None else int(z_start)
    if z_start > z_first:
        raise ValueError(f"cutouts start at z={z_start}, after the first needed slice z={z_first}")
    cutout_dir = default_cache_dir() if cutout_dir is None else Path(cutout_dir)
    lookup = np.array(setting.lookup, np.uint8)
    file_ending = ".png" if dimensions == 2 else ".nii.gz"

    with NnUNetRawWriter(raw_root, dataset_id, dataset_name, setting.labels, file_ending=file_ending,
                         overwrite=overwrite, preprocessed_root=preprocessed_root,
                         channel_names={"0": "zscore"},
                         dataset_json_extra={"reference": "MTNeuro (Quesada et al. 2022), "
                                                          f"{MTNEURO_IMAGE_URI}, {MTNEURO_LABEL_URI}",
                                             "mtneuro_setting": f"{n_classes}-class {dimensions}D"}) as writer:
        for region in tqdm(names, desc=f"Converting {dataset_name}", unit="region", disable=not progress):
            y_range, x_range = region_boxes[region]
            image, labels, files = load_region(region, y_range, x_range, z_first, z_last, cutout_dir, z_start,
                                               download)
            labels = lookup[labels]
            for split, (first, last) in splits.items():
                depth = 1 if dimensions == 2 else SUBVOLUME_DEPTH
                for z0 in range(first, last + 2 - depth, depth):
                    block = slice(z0 - z_first, z0 - z_first + depth)
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
    """Regions and z splits from a JSON file ``{"regions": {name: {"y": [y0, y1], "x": [x0, x1]}},
    "z_splits": {"train": [first, last], ...}}`` (both optional)."""
    import json

    path = Path(path)
    try:
        content = json.loads(path.read_text())
        regions = None
        if "regions" in content:
            regions = {name: (tuple(int(v) for v in box["y"]), tuple(int(v) for v in box["x"]))
                       for name, box in content["regions"].items()}
        z_splits = content.get("z_splits")
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"{path}: not a valid MTNeuro configuration ({error!r})") from None
    return regions, z_splits


def register_convert_cli(convert_subparsers) -> None:
    parser = convert_subparsers.add_parser(
        "mtneuro", help="MTNeuro X-ray microtomography (4- or 3-class, 2D or 3D) to nnU-Net raw",
        description="Convert MTNeuro's pixel-level segmentation task to nnU-Net raw format from local ZYX cutouts "
                    "(<region>_image.npy|tif and <region>_labels.npy|tif), downloading missing ones from BossDB with "
                    "'intern' when it is installed. Validation slices form fold 0 of splits_final.json.")
    add_destination_arguments(parser)
    parser.add_argument("--classes", type=int, choices=(4, 3), default=4,
                        help="4: background/vessel/cell/axon, ZI left out (default); 3: axons merged into "
                             "background, all four regions")
    parser.add_argument("--dim", type=int, choices=(2, 3), default=2,
                        help="2: one slice per case (default); 3: 8-slice sub-volumes")
    parser.add_argument("--cutouts", metavar="DIR",
                        help=f"folder of local cutouts and downloads (default: {default_cache_dir()})")
    parser.add_argument("--cutout-z-start", type=int,
                        help="z index of the first slice in the cutout files (default: 110, the first labelled "
                             "slice)")
    parser.add_argument("--no-download", action="store_true", help="never download; missing cutouts are an error")
    parser.add_argument("--config", metavar="JSON",
                        help='other regions/z splits: {"regions": {"cortex": {"y": [900, 1156], "x": [4600, 4856]}}, '
                             '"z_splits": {"train": [110, 379], "validation": [380, 409], "test": [420, 470]}}')
    parser.set_defaults(func=_run_cli)


def _run_cli(args) -> int:
    regions, z_splits = read_config(args.config) if args.config else (None, None)
    destination = convert_mtneuro(raw_root_from_args(args), args.dataset_id, args.name, n_classes=args.classes,
                                  dimensions=args.dim, cutout_dir=args.cutouts, z_start=args.cutout_z_start,
                                  download=not args.no_download, regions=regions, z_splits=z_splits,
                                  overwrite=args.overwrite, preprocessed_root=args.preprocessed, verify=args.verify)
    print(f"Wrote {destination}")
    return 0
