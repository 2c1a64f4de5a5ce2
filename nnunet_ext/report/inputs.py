"""Find and read per-axon morphometrics tables; name images, subjects and groups.

Accepted inputs (any number, mixed):

- a morphometrics output folder of ``nnunet-ext morphometrics`` (``<image>_axon_morphometrics.csv`` per image,
  ``axon_morphometrics.csv`` for all of them, ``aggregate_morphometrics.csv`` with pixel sizes, areas, AVF and MVF);
- AxonDeepSeg's layout (``<subject>/<image>_axon_morphometrics.xlsx`` or ``.csv``), as ``axondeepseg_aggregate``
  reads it;
- a BIDS derivatives tree holding such tables (``sub-<label>/micr/sub-<label>_..._axon_morphometrics.csv``);
- single CSV/XLSX files.

Subjects come, in this order, from a covariate table keyed by ``image`` that has a ``participant_id`` (or
``subject``) column, the BIDS ``sub-<label>`` entity of the image name, a ``sub-<label>`` folder on the table's path,
the folder that holds the table below the input root (AxonDeepSeg's one folder per subject), or else the image
itself (stated in the report). Groups and covariates come from ``participants.tsv`` / ``samples.tsv`` found above the
inputs (BIDS) or from the tables named with ``--participants``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "AXON_TABLE_SUFFIX", "AGGREGATE_TABLE", "CORE_METRICS", "METRIC_LABELS", "TableFile", "Study",
    "find_axon_tables", "read_axon_table", "canonical_columns", "subject_from_path", "load_study",
    "find_bids_covariate_tables", "read_covariate_table", "attach_covariates", "assign_groups", "string_keys",
]

#: Per-axon tables end with this (before ``.csv`` / ``.xlsx``): ours ``<image>_axon_morphometrics.csv``, ADS's
#: ``<image>_axon_morphometrics.xlsx``; a file named exactly ``axon_morphometrics.csv`` holds several images.
AXON_TABLE_SUFFIX = "axon_morphometrics"
#: Image-level table written by ``nnunet-ext morphometrics`` beside the per-axon tables.
AGGREGATE_TABLE = "aggregate_morphometrics.csv"
#: Metrics every input table must have (AxonDeepSeg's three binned metrics).
CORE_METRICS = ("axon_diam (um)", "myelin_thickness (um)", "gratio")
METRIC_LABELS = {
    "axon_diam (um)": "axon diameter (um)",
    "myelin_thickness (um)": "myelin thickness (um)",
    "gratio": "g-ratio",
    "fiber_diam (um)": "fibre diameter (um)",
    "axon_area (um^2)": "axon area (um^2)",
    "myelin_area (um^2)": "myelin area (um^2)",
}
# Columns read besides the metrics (when present).
_EXTRA_COLUMNS = ("image", "image_border_touching", "axon_area (um^2)", "myelin_area (um^2)")
_TABLE_EXTENSIONS = (".csv", ".xlsx", ".xls", ".tsv")

_LENGTH_UNITS = {"um": 1.0, "µm": 1.0, "μm": 1.0, "micrometer": 1.0, "micrometre": 1.0, "micron": 1.0,
                 "microns": 1.0, "micrometers": 1.0, "nm": 1e-3, "nanometer": 1e-3, "nanometers": 1e-3,
                 "mm": 1e3, "millimeter": 1e3, "millimeters": 1e3}
_UNIT_COLUMN = re.compile(r"^\s*(?P<name>[^()]*?)\s*\((?P<unit>[^()]*)\)\s*$")
_SUB_ENTITY = re.compile(r"(?:^|_)(sub-[A-Za-z0-9]+)(?=_|$)")
_SAMPLE_ENTITY = re.compile(r"(?:^|_)(sample-[A-Za-z0-9]+)(?=_|$)")

# Key columns of covariate tables, by level.
_SUBJECT_KEYS = ("participant_id", "subject")
_SAMPLE_KEYS = ("sample_id", "sample")
_IMAGE_KEYS = ("image",)


@dataclass
class TableFile:
    """One per-axon table found under an input.

    Attributes
    ----------
    path : Path
        The CSV/XLSX file.
    root : Path
        The input (folder or file) it was found under; subjects may be named after folders below it.
    aggregate : Path or None
        ``aggregate_morphometrics.csv`` in the same folder, if any (pixel size, area, AVF, MVF per image).
    combined : bool
        True for a table of several images (``axon_morphometrics.csv``), split by its ``image`` column.
    """

    path: Path
    root: Path
    aggregate: Path | None = None
    combined: bool = False


@dataclass
class Study:
    """The study as read: axons, images, subjects and what was stated about them.

    Attributes
    ----------
    axons : DataFrame
        One row per axon: ``image``, ``subject`` (categoricals) and the metric columns in um (canonical names).
    images : DataFrame
        One row per image: ``image``, ``subject``, ``sample``, ``table`` (file), ``pixel_size_um``, ``axon_shape``,
        ``area (mm^2)``, ``avf``, ``mvf``, ``morphometrics_filters``, ``n_axons_read``.
    subjects : DataFrame
        One row per subject: ``subject``, ``subject_source`` (how it was named), and covariate columns once attached.
    warnings : list of str
        Things the reader must know (mixed pixel sizes or units, images with no subject, ...).
    notes : list of str
        Provenance (tables read, covariate tables used).
    covariate_columns : list of str
        Columns brought by covariate tables (what ``--group-by`` may name).
    covariate_tables : list of str
        The covariate tables used.
    """

    axons: pd.DataFrame
    images: pd.DataFrame
    subjects: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    covariate_columns: list[str] = field(default_factory=list)
    covariate_tables: list[str] = field(default_factory=list)


def string_keys(series: pd.Series) -> pd.Series:
    """``series`` as string keys without materialising strings per row: a categorical with string categories is
    returned as it is (grouping and comparing it is cheap), anything else as ``astype(str)``."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        categories = series.cat.categories
        if all(isinstance(c, str) for c in categories):
            return series
        return series.cat.rename_categories([str(c) for c in categories])
    return series.astype(str)


# ----------------------------------------------------------------------------------------------------------------
# Finding tables


def _is_axon_table(path: Path) -> bool:
    name = path.name
    for extension in _TABLE_EXTENSIONS:
        if name.lower().endswith(extension):
            stem = name[: -len(extension)]
            return stem == AXON_TABLE_SUFFIX or stem.endswith("_" + AXON_TABLE_SUFFIX)
    return False


def _image_name_from_file(path: Path) -> str:
    stem = path.name.rsplit(".", 1)[0]
    if stem == AXON_TABLE_SUFFIX:
        return path.parent.name
    return stem[: -len("_" + AXON_TABLE_SUFFIX)] if stem.endswith("_" + AXON_TABLE_SUFFIX) else stem


def find_axon_tables(inputs) -> list[TableFile]:
    """Find the per-axon tables under files and folders.

    Parameters
    ----------
    inputs : sequence of path-like
        Tables (CSV/XLSX/TSV) or folders searched recursively for ``*_axon_morphometrics.{csv,xlsx}`` and
        ``axon_morphometrics.{csv,xlsx}``. Hidden folders (staging folders of interrupted runs) are skipped. In a
        folder holding per-image tables, the combined ``axon_morphometrics.csv`` is skipped (it repeats them); where
        an image has both a CSV and an XLSX table, the CSV is read.

    Returns
    -------
    list of TableFile
        Sorted by path. Raises ``FileNotFoundError`` for a missing input and ``ValueError`` when nothing is found.
    """
    found: list[TableFile] = []
    for item in inputs:
        root = Path(item)
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such file or folder")
        if root.is_file():
            if root.suffix.lower() not in _TABLE_EXTENSIONS:
                raise ValueError(f"{root}: not a table (.csv, .tsv, .xlsx expected)")
            aggregate = root.parent / AGGREGATE_TABLE
            found.append(TableFile(root, root.parent, aggregate if aggregate.is_file() else None,
                                   combined=not root.name.rsplit(".", 1)[0].endswith("_" + AXON_TABLE_SUFFIX)))
            continue
        candidates = [p for p in sorted(root.rglob("*")) if p.is_file() and _is_axon_table(p)
                      and not any(part.startswith(".") for part in p.relative_to(root).parts)]
        by_folder: dict[Path, list[Path]] = {}
        for path in candidates:
            by_folder.setdefault(path.parent, []).append(path)
        for folder, paths in by_folder.items():
            per_image = [p for p in paths if p.name.rsplit(".", 1)[0] != AXON_TABLE_SUFFIX]
            chosen = per_image if per_image else paths
            stems = {p.name.rsplit(".", 1)[0] for p in chosen if p.suffix.lower() == ".csv"}
            chosen = [p for p in chosen if p.suffix.lower() == ".csv" or p.name.rsplit(".", 1)[0] not in stems]
            aggregate = folder / AGGREGATE_TABLE
            for path in chosen:
                found.append(TableFile(path, root, aggregate if aggregate.is_file() else None,
                                       combined=path.name.rsplit(".", 1)[0] == AXON_TABLE_SUFFIX))
    if not found:
        raise ValueError(f"no per-axon morphometrics tables (*_axon_morphometrics.csv/.xlsx) under "
                         f"{', '.join(str(i) for i in inputs)}; run 'nnunet-ext morphometrics' first")
    return sorted(found, key=lambda t: str(t.path))


# ----------------------------------------------------------------------------------------------------------------
# Reading tables with their units


def _read_any(path: Path, usecols=None, nrows=None) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xls"):
        try:
            import openpyxl  # noqa: F401
        except ImportError as error:
            raise ValueError(f"{path}: reading .xlsx needs openpyxl (pip install 'nnunet-ext[xlsx]')") from error
        table = pd.read_excel(path, nrows=nrows)
        return table if usecols is None else table[[c for c in table.columns if c in usecols]]
    return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", usecols=usecols, nrows=nrows)


def canonical_columns(columns, pixel_size_um: float | None = None, source: str = "table"
                      ) -> tuple[dict[str, tuple[str, float]], set[str]]:
    """Map column names with units to this package's names in micrometres.

    Parameters
    ----------
    columns : iterable of str
        Column names as read, e.g. ``axon_diam (nm)``, ``axon_area (µm²)``, ``gratio``.
    pixel_size_um : float, optional
        Converts ``(px)`` and ``(px^2)`` columns; without it such a metric column is an error.
    source : str
        Named in error messages.

    Returns
    -------
    mapping : dict
        ``{raw name: (canonical name, factor)}``: multiply the raw values by ``factor`` to get the canonical unit
        (``um`` for lengths, ``um^2`` for areas). Columns without a unit map to themselves with factor 1.
    units : set of str
        The length units found (``um``, ``nm``, ``mm``, ``px``).
    """
    mapping: dict[str, tuple[str, float]] = {}
    units: set[str] = set()
    for raw in columns:
        raw_str = str(raw)
        match = _UNIT_COLUMN.match(raw_str)
        if not match:
            mapping[raw] = (raw_str.strip(), 1.0)
            continue
        name, unit = match.group("name").strip(), match.group("unit").strip().lower().replace(" ", "")
        power = 1
        for mark in ("^2", "²", "2"):
            if unit.endswith(mark) and unit[: -len(mark)] in (*_LENGTH_UNITS, "px", "pixel", "pixels"):
                unit, power = unit[: -len(mark)], 2
                break
        if unit in _LENGTH_UNITS:
            factor = _LENGTH_UNITS[unit] ** power
            units.add({1.0: "um", 1e-3: "nm", 1e3: "mm"}[_LENGTH_UNITS[unit]])
        elif unit in ("px", "pixel", "pixels"):
            if name in ("x0", "y0") or name.startswith("bbox"):
                mapping[raw] = (raw_str, 1.0)  # positions stay in pixels
                continue
            if pixel_size_um is None:
                raise ValueError(f"{source}: column '{raw_str}' is in pixels and no pixel size is known "
                                 f"(no {AGGREGATE_TABLE} beside it); convert it to um first")
            factor = pixel_size_um ** power
            units.add("px")
        else:
            mapping[raw] = (raw_str, 1.0)
            continue
        mapping[raw] = (f"{name} (um^2)" if power == 2 else f"{name} (um)", factor)
    return mapping, units


def read_axon_table(path, metrics=CORE_METRICS, pixel_size_um: float | None = None, with_image: bool = True
                    ) -> tuple[pd.DataFrame, set[str]]:
    """Read one per-axon table: the metric columns (canonical names, um) and, when present, ``image``,
    ``image_border_touching`` and the axon and myelin areas.

    Parameters
    ----------
    path : path-like
        CSV, TSV or XLSX in this package's or AxonDeepSeg's column layout (an unnamed index column is ignored;
        ``um²``, ``µm`` and other spellings of the unit are accepted; ``nm``/``mm`` are converted; pixels need
        ``pixel_size_um``).
    metrics : sequence of str
        Canonical metric names that must be there.
    pixel_size_um : float, optional
        For tables measured in pixels.
    with_image : bool
        Read the ``image`` column (tables of several images); a per-image table is named after its file.

    Returns
    -------
    table : DataFrame
    units : set of str
        The length units the file used.
    """
    path = Path(path)
    header = _read_any(path, nrows=0) if path.suffix.lower() not in (".xlsx", ".xls") else None
    columns = list(header.columns) if header is not None else None
    full = None
    if columns is None:
        full = _read_any(path)
        columns = list(full.columns)
    mapping, units = canonical_columns(columns, pixel_size_um, str(path))
    wanted = set(metrics) | (set(_EXTRA_COLUMNS) - (set() if with_image else {"image"}))
    use = [raw for raw, (name, _) in mapping.items() if name in wanted]
    present = {mapping[raw][0] for raw in use}
    missing = [m for m in metrics if m not in present]
    if missing:
        raise ValueError(f"{path}: no column {', '.join(repr(m) for m in missing)} (columns: "
                         f"{', '.join(str(c) for c in columns)})")
    table = full[use] if full is not None else _read_any(path, usecols=use)
    table = table.rename(columns={raw: mapping[raw][0] for raw in use})
    for raw in use:
        name, factor = mapping[raw]
        if name not in ("image", "image_border_touching"):
            table[name] = pd.to_numeric(table[name], errors="coerce").astype(np.float64) * factor
    if "image_border_touching" in table and table["image_border_touching"].dtype != bool:
        table["image_border_touching"] = table["image_border_touching"].astype(str).str.strip().str.lower().isin(
            ("true", "1", "1.0", "yes"))
    return table, units


def _read_aggregate(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path)
    if "image" not in table:
        raise ValueError(f"{path}: no 'image' column")
    keep = [c for c in ("image", "pixel_size_um", "pixel_size_source", "axon_shape", "area (mm^2)", "avf", "mvf",
                        "axon_count", "filters") if c in table]
    table = table[keep].copy()
    table["image"] = table["image"].astype(str)
    return table


# ----------------------------------------------------------------------------------------------------------------
# Subjects


def subject_from_path(image: str, table_path: Path, root: Path, entity: str = "sub") -> tuple[str, str]:
    """Name the subject of an image.

    Parameters
    ----------
    image : str
        Image name (e.g. ``sub-rat3_sample-data9_SEM``).
    table_path, root : Path
        The table and the input it was found under.
    entity : str
        BIDS entity naming the unit of analysis: ``sub`` (default) or e.g. ``sample``.

    Returns
    -------
    subject : str
    source : str
        How it was found: ``BIDS entity in image name``, ``BIDS entity in path``, ``folder``, or ``image``.
    """
    pattern = re.compile(rf"(?:^|_)({re.escape(entity)}-[A-Za-z0-9]+)(?=_|$)")
    match = pattern.search(image)
    if match:
        return match.group(1), "BIDS entity in image name"
    try:
        relative = table_path.relative_to(root)
    except ValueError:
        relative = Path(table_path.name)
    for part in reversed([root.name, *relative.parts[:-1]]):
        if re.fullmatch(rf"{re.escape(entity)}-[A-Za-z0-9]+", part):
            return part, "BIDS entity in path"
    if len(relative.parts) >= 2:
        return relative.parts[-2], "folder"
    return image, "image"


# ----------------------------------------------------------------------------------------------------------------
# Loading a study


def load_study(inputs, metrics=CORE_METRICS, subject_entity: str = "sub", image_subjects: dict | None = None,
               progress: bool = True) -> Study:
    """Read every per-axon table under ``inputs`` into one study.

    Parameters
    ----------
    inputs : sequence of path-like
        See :func:`find_axon_tables`.
    metrics : sequence of str
        Canonical metric columns to read (each table must have them).
    subject_entity : str
        BIDS entity naming subjects (``sub``; ``sample`` makes every sample its own unit).
    image_subjects : dict, optional
        ``{image: subject}`` overriding the naming rules (from a covariate table keyed by image).
    progress : bool
        Show a progress bar while reading.

    Returns
    -------
    Study
        Subjects are not yet joined with covariates (:func:`attach_covariates`).
    """
    from tqdm import tqdm

    tables = find_axon_tables(inputs)
    image_subjects = image_subjects or {}
    pieces: list[pd.DataFrame] = []
    image_rows: list[dict] = []
    unit_by_table: dict[str, set[str]] = {}
    aggregates: dict[Path, pd.DataFrame] = {}
    seen_images: dict[str, Path] = {}
    for table_file in tqdm(tables, desc="report: reading tables", unit="table",
                           disable=not progress or len(tables) < 10):
        aggregate = None
        if table_file.aggregate is not None:
            if table_file.aggregate not in aggregates:
                aggregates[table_file.aggregate] = _read_aggregate(table_file.aggregate)
            aggregate = aggregates[table_file.aggregate]
        pixel_size = None
        default_image = _image_name_from_file(table_file.path)
        if aggregate is not None and "pixel_size_um" in aggregate:
            row = aggregate.loc[aggregate["image"] == default_image, "pixel_size_um"]
            pixel_size = float(row.iloc[0]) if len(row) else None
        table, units = read_axon_table(table_file.path, metrics, pixel_size, with_image=table_file.combined)
        unit_by_table[str(table_file.path)] = units
        if table_file.combined and "image" in table and (table["image"].notna().any() or aggregate is not None):
            if table["image"].isna().any():
                raise ValueError(f"{table_file.path}: {int(table['image'].isna().sum())} row(s) without an image "
                                 f"name in a table of several images")
            names = list(dict.fromkeys(table["image"].astype(str)))
            if aggregate is not None:
                # images of the aggregate table without axons appear with a count of 0
                names += [n for n in aggregate["image"] if n not in names]
            names = names or [default_image]
            local = pd.Categorical(table["image"].astype(str), categories=names).codes
            table = table.drop(columns=["image"])
        else:
            # a per-image table (or one without an image column) holds one image, named after the file
            names = [default_image]
            local = np.zeros(len(table), dtype=np.int8)
            table = table.drop(columns=["image"], errors="ignore")
        counts = np.bincount(local, minlength=len(names))
        codes = np.empty(len(names), dtype=np.int32)
        for position, name in enumerate(names):
            if name in seen_images:
                raise ValueError(f"image '{name}' appears in two tables: {seen_images[name]} and "
                                 f"{table_file.path}; pass only one of them")
            seen_images[name] = table_file.path
            codes[position] = len(image_rows)
            subject, source = (image_subjects[name], "covariate table (image)") if name in image_subjects else \
                subject_from_path(name, table_file.path, table_file.root, subject_entity)
            sample_match = _SAMPLE_ENTITY.search(name)
            row = {"image": name, "subject": subject, "subject_source": source,
                   "sample": sample_match.group(1) if sample_match else "", "table": str(table_file.path),
                   "n_axons_read": int(counts[position])}
            if aggregate is not None:
                match = aggregate.loc[aggregate["image"] == name]
                if len(match):
                    for column in aggregate.columns:
                        if column != "image":
                            row[{"filters": "morphometrics_filters"}.get(column, column)] = match.iloc[0][column]
            image_rows.append(row)
        table["_image_code"] = codes[local]
        pieces.append(table)
    images = pd.DataFrame(image_rows)
    for column in ("pixel_size_um", "area (mm^2)", "avf", "mvf", "axon_count"):
        if column not in images:
            images[column] = np.nan
    for column in ("axon_shape", "morphometrics_filters", "pixel_size_source"):
        if column not in images:
            images[column] = ""
    axons = pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame(
        {"_image_code": np.zeros(0, np.int32), **{m: np.zeros(0) for m in metrics}})
    image_codes = axons.pop("_image_code").to_numpy(np.int32)
    subject_order = list(dict.fromkeys(images["subject"]))
    subject_code_of_image = np.array([subject_order.index(s) for s in images["subject"]], dtype=np.int32)
    axons.insert(0, "image", pd.Categorical.from_codes(image_codes, categories=list(images["image"])))
    axons.insert(1, "subject", pd.Categorical.from_codes(subject_code_of_image[image_codes],
                                                         categories=subject_order))
    subjects = images.groupby("subject", sort=False).agg(
        subject_source=("subject_source", "first"), n_images=("image", "size")).reset_index()
    study = Study(axons=axons, images=images, subjects=subjects)
    study.notes.append(f"{len(tables)} per-axon table(s) read: {len(images)} image(s), {len(subjects)} subject(s), "
                       f"{len(axons):,} axon(s)")
    _state_units_and_pixel_sizes(study, unit_by_table)
    by_image = images.loc[images["subject_source"] == "image", "image"].tolist()
    if by_image:
        study.warnings.append(
            f"no subject found for {len(by_image)} image(s) (no '{subject_entity}-' entity, no subject folder): "
            f"each is its own subject: {', '.join(by_image[:10])}{' ...' if len(by_image) > 10 else ''}")
    return study


def _state_units_and_pixel_sizes(study: Study, unit_by_table: dict[str, set[str]]) -> None:
    images = study.images
    not_um = {path: units for path, units in unit_by_table.items() if units - {"um"}}
    all_units = sorted(set().union(*unit_by_table.values())) if unit_by_table else []
    if not_um:
        listed = "; ".join(f"{Path(p).name}: {', '.join(sorted(u))}" for p, u in list(not_um.items())[:10])
        study.warnings.append(f"units differ between tables ({', '.join(all_units)}): lengths converted to um "
                              f"({len(not_um)} table(s) not in um: {listed})")
    sizes = images["pixel_size_um"].dropna()
    if sizes.nunique() > 1:
        counts = sizes.round(6).value_counts().sort_index()
        listed = ", ".join(f"{size:g} um ({count} image(s))" for size, count in counts.items())
        study.warnings.append(f"pixel sizes differ between images: {listed}. Lengths are in um, but segmentation "
                              f"detail (smallest measurable axon, myelin thickness resolution) differs; see the "
                              f"per-image table")
    missing = images.loc[images["pixel_size_um"].isna(), "image"].tolist()
    if missing and len(sizes):
        study.warnings.append(f"pixel size unknown for {len(missing)} image(s) (no {AGGREGATE_TABLE}): "
                              f"{', '.join(missing[:10])}")
    shapes = images["axon_shape"].replace("", np.nan).dropna()
    if shapes.nunique() > 1:
        study.warnings.append(f"axon shapes differ between images ({', '.join(sorted(shapes.unique()))}): "
                              f"diameters are not measured alike")
    filtered = images["morphometrics_filters"].astype(str).replace({"none": "", "nan": ""})
    if (filtered != "").any():
        listed = ", ".join(sorted(set(filtered[filtered != ""])))
        study.warnings.append(f"some per-axon tables were already filtered by 'nnunet-ext morphometrics' "
                              f"({listed})")


# ----------------------------------------------------------------------------------------------------------------
# Covariates and groups


def find_bids_covariate_tables(inputs) -> list[Path]:
    """``participants.tsv`` and ``samples.tsv`` of the BIDS dataset(s) holding the inputs.

    Walks up from each input to the first folder that has a ``participants.tsv`` or a ``dataset_description.json``
    beside one; a derivatives tree (``<bids>/derivatives/morphometrics``) thus finds its dataset's tables.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item).resolve()
        for folder in [path, *path.parents] if path.is_dir() else list(path.parents):
            tables = [folder / name for name in ("participants.tsv", "samples.tsv") if (folder / name).is_file()]
            if tables:
                found += [t for t in tables if t not in found]
                break
    return found


def read_covariate_table(path) -> tuple[pd.DataFrame, str, str]:
    """Read a participants/samples/image table (TSV, CSV or XLSX).

    Returns
    -------
    table : DataFrame
        All columns as read, the key column as ``str``.
    key : str
        The key column: ``participant_id``/``subject`` (per subject), ``sample_id``/``sample`` (per sample) or
        ``image`` (per image).
    level : str
        ``subject``, ``sample`` or ``image``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such table")
    table = _read_any(path)
    table.columns = [str(c).strip() for c in table.columns]
    for keys, level in ((_IMAGE_KEYS, "image"), (_SAMPLE_KEYS, "sample"), (_SUBJECT_KEYS, "subject")):
        for key in keys:
            if key in table.columns:
                table[key] = table[key].astype(str).str.strip()
                return table, key, level
    raise ValueError(f"{path}: no key column (one of {', '.join(_IMAGE_KEYS + _SAMPLE_KEYS + _SUBJECT_KEYS)}); "
                     f"columns: {', '.join(table.columns)}")


def _bare(identifier: str, prefix: str) -> str:
    identifier = str(identifier).strip()
    return identifier[len(prefix) + 1:] if identifier.startswith(prefix + "-") else identifier


def image_subjects_from_tables(paths) -> dict[str, str]:
    """``{image: subject}`` from covariate tables keyed by ``image`` that also have ``participant_id``/``subject``."""
    mapping: dict[str, str] = {}
    for path in paths:
        table, key, level = read_covariate_table(path)
        if level == "image":
            for subject_key in _SUBJECT_KEYS:
                if subject_key in table:
                    mapping.update({img: str(s) for img, s in zip(table[key], table[subject_key]) if pd.notna(s)})
                    break
    return mapping


def attach_covariates(study: Study, paths) -> Study:
    """Join covariate tables onto the study's images and subjects.

    Parameters
    ----------
    study : Study
    paths : sequence of path-like
        Tables keyed by subject (``participant_id``, BIDS ``participants.tsv``), sample (``sample_id``, BIDS
        ``samples.tsv``) or image. Identifiers match with or without their ``sub-``/``sample-`` prefix. A column
        found in several tables is taken from the first table that has a value.

    Returns
    -------
    Study
        ``images`` gains every covariate column (subject-level values copied to each image); ``subjects`` gains the
        columns that are constant within each subject; ``covariate_columns`` lists them all.
    """
    images = study.images.copy()
    columns: list[str] = []
    for path in paths:
        table, key, level = read_covariate_table(path)
        value_columns = [c for c in table.columns if c != key and c not in ("image", "subject")
                         and not (level != "subject" and c in _SUBJECT_KEYS)]
        if level == "subject":
            lookup = {_bare(k, "sub"): i for i, k in enumerate(table[key])}
            rows = images["subject"].map(lambda s: lookup.get(_bare(s, "sub"), -1))
        elif level == "sample":
            lookup = {_bare(k, "sample"): i for i, k in enumerate(table[key])}
            rows = images["sample"].map(lambda s: lookup.get(_bare(s, "sample"), -1) if s else -1)
        else:
            lookup = {k: i for i, k in enumerate(table[key])}
            rows = images["image"].map(lambda s: lookup.get(s, -1))
        rows = rows.to_numpy()
        matched = rows >= 0
        if not matched.any():
            study.warnings.append(f"covariate table {path} matched no image of the study (key '{key}')")
        elif level == "subject":
            unused = sorted(set(range(len(table))) - set(rows[matched].tolist()))
            if unused:
                listed = ", ".join(str(table[key].iloc[i]) for i in unused[:10])
                study.warnings.append(f"{Path(path).name} lists {len(unused)} subject(s) without per-axon tables "
                                      f"(not in the report): {listed}{' ...' if len(unused) > 10 else ''}")
        for column in value_columns:
            values = pd.Series(np.nan, index=images.index, dtype=object)
            values[matched] = table[column].to_numpy()[rows[matched]]
            if column in images:
                images[column] = images[column].where(images[column].notna(), values)
            else:
                images[column] = values
            if column not in columns:
                columns.append(column)
        study.covariate_tables.append(f"{path} (per {level}, key '{key}')")
    subjects = study.subjects.copy()
    for column in columns:
        per_subject = images.groupby("subject", sort=False)[column].agg(
            lambda v: v.iloc[0] if v.astype(str).nunique(dropna=False) == 1 else "<varies>")
        subjects[column] = subjects["subject"].map(per_subject)
    study.images, study.subjects = images, subjects
    study.covariate_columns = columns
    return study


def assign_groups(study: Study, group_by: str | None, groups_order=None) -> Study:
    """Set ``group`` on images, subjects and axons from the covariate column ``group_by``.

    Without ``group_by`` every subject is in group ``all``. Raises ``ValueError`` naming the columns that exist when
    ``group_by`` is not one of them, and when a subject's images are in different groups (subject-level tests need
    one group per subject; ``--subject-entity sample`` makes samples the units).
    Subjects with no value are left out of group comparisons (stated in ``warnings``).
    """
    subjects, images = study.subjects.copy(), study.images.copy()
    if group_by is None:
        subjects["group"] = "all"
        images["group"] = "all"
    else:
        if group_by not in study.covariate_columns:
            where = "; ".join(study.covariate_tables) or "no covariate table found (use --participants TABLE)"
            available = ", ".join(study.covariate_columns) or "none"
            raise ValueError(f"--group-by '{group_by}': no such column. Columns that exist: {available} "
                             f"(from {where})")
        values = images[group_by].map(lambda v: np.nan if pd.isna(v) or str(v).strip() == "" else
                                      (f"{v:g}" if isinstance(v, float) else str(v).strip()))
        varies = values.groupby(images["subject"]).nunique()
        if (varies > 1).any():
            bad = varies[varies > 1].index.tolist()
            raise ValueError(f"--group-by '{group_by}' differs between images of one subject ({', '.join(bad[:5])}): "
                             f"group comparisons are made between subjects; use --subject-entity sample to make "
                             f"samples the units, or a subject-level column")
        images["group"] = values
        subjects["group"] = subjects["subject"].map(values.groupby(images["subject"]).first())
        missing = subjects.loc[subjects["group"].isna(), "subject"].tolist()
        if missing:
            study.warnings.append(f"{len(missing)} subject(s) have no value in '{group_by}' and are left out of "
                                  f"group summaries and comparisons: {', '.join(missing[:10])}")
    present = [g for g in pd.unique(subjects["group"].dropna())]
    if groups_order:
        unknown = [g for g in groups_order if g not in present]
        if unknown:
            raise ValueError(f"--groups {', '.join(unknown)}: no such group in '{group_by}' "
                             f"(groups: {', '.join(map(str, present))})")
        order = list(groups_order) + sorted(g for g in present if g not in groups_order)
    else:
        order = sorted(present, key=_natural_key)
    subjects["group"] = pd.Categorical(subjects["group"], categories=order)
    images["group"] = pd.Categorical(images["group"], categories=order)
    group_of = dict(zip(subjects["subject"], subjects["group"]))
    axons = study.axons
    axons["group"] = pd.Categorical(axons["subject"].map(group_of).astype(object), categories=order)
    study.subjects, study.images, study.axons = subjects, images, axons
    return study


def _natural_key(text) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(text))]
