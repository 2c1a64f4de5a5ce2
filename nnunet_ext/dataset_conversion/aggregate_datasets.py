"""Merge converted nnU-Net raw datasets into one (e.g. FULL_AGG), with folds that validate on every source.

AxonDeepSeg's generalist model is trained on the union of datasets from many labs and contrasts. Aggregation copies
and renames every case (``<PREFIX>_<NNN>``), unions the test sets, checks that the label schemas agree (or applies a
given mapping), and writes ``splits_final.json`` with ``n_folds`` folds (5 by default) in which

* every fold's validation set holds cases of every source dataset, so each fold's validation score speaks for all
  sources and not only the biggest one; and
* no subject is in both training and validation of a fold (cases are grouped by subject, or by sample or case).

Folds are built per group, deterministically from ``seed``: groups are shuffled, ordered largest first, and each goes
to the fold that still lacks the most of its sources, then to the one with the fewest cases.

A subject name shared by two sources is taken to be the same animal (never split between training and
validation), unless ``subjects_shared_across_sources=False``.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from nnunet_ext.dataset_conversion.nnunet_raw import (NnUNetRawWriter, add_destination_arguments, dataset_folder_name,
                                                      raw_root_from_args, read_manifest)

if TYPE_CHECKING:
    import pandas as pd

GROUP_BY_CHOICES = ("subject", "sample", "case")


@dataclass
class SourceDataset:
    """One input dataset: its folder, dataset.json and manifest (one row per case, with file paths)."""

    folder: Path
    dataset_json: dict
    cases: pd.DataFrame  # case_id, split, subject, sample, ..., image_files (list), label_file (Path or None)

    @property
    def name(self) -> str:
        return self.folder.name


def resolve_dataset(reference: str | int | os.PathLike, raw_root: str | os.PathLike | None) -> Path:
    """A dataset folder from a path, a name ``Dataset001_X`` or an ID ``1`` (looked up in ``raw_root``)."""
    path = Path(str(reference))
    if path.is_dir() and not isinstance(reference, int):
        return path
    if raw_root is None:
        raise FileNotFoundError(f"{reference}: not a folder, and no nnU-Net raw folder to look it up in (--raw)")
    raw_root = Path(raw_root)
    text = str(reference)
    if text.isdigit():
        matches = sorted(p for p in raw_root.glob(f"Dataset{int(text):03d}_*") if p.is_dir())
        if len(matches) != 1:
            raise FileNotFoundError(f"dataset ID {text}: {'no' if not matches else 'several'} dataset(s) in "
                                    f"{raw_root} ({', '.join(p.name for p in matches)})")
        return matches[0]
    if (raw_root / text).is_dir():
        return raw_root / text
    raise FileNotFoundError(f"{reference}: no such dataset folder (also looked in {raw_root})")


def load_source(folder: str | os.PathLike) -> SourceDataset:
    """Read a raw dataset's dataset.json and manifest.csv and find every case's files."""
    folder = Path(folder)
    json_path = folder / "dataset.json"
    try:
        dataset_json = json.loads(json_path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{json_path}: not found; is {folder} an nnU-Net raw dataset?") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{json_path}: not valid JSON ({error})") from None
    for key in ("channel_names", "labels", "file_ending"):
        if key not in dataset_json:
            raise ValueError(f"{json_path}: no {key!r}")
    ending = dataset_json["file_ending"]
    n_channels = len(dataset_json["channel_names"])
    try:
        cases = read_manifest(folder)
    except FileNotFoundError:
        warnings.warn(f"{folder}: no manifest.csv; every case counts as its own subject")
        cases = _manifest_from_files(folder, ending)
    image_files, label_files = [], []
    for row in cases.itertuples():
        images_dir, labels_dir = ("imagesTs", "labelsTs") if row.split == "test" else ("imagesTr", "labelsTr")
        images = [folder / images_dir / f"{row.case_id}_{c:04d}{ending}" for c in range(n_channels)]
        missing = [p for p in images if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{missing[0]}: listed in {folder / 'manifest.csv'} but missing")
        label = folder / labels_dir / f"{row.case_id}{ending}"
        if not label.is_file():
            if row.split != "test":
                raise FileNotFoundError(f"{label}: label of training case {row.case_id} missing")
            label = None
        image_files.append(images)
        label_files.append(label)
    cases = cases.assign(image_files=image_files, label_file=label_files)
    duplicated = cases["case_id"][cases["case_id"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"{folder / 'manifest.csv'}: duplicate case names {duplicated[:5]}")
    return SourceDataset(folder, dataset_json, cases)


def _manifest_from_files(folder: Path, ending: str) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for images_dir, split in (("imagesTr", "train"), ("imagesTs", "test")):
        for path in sorted((folder / images_dir).glob(f"*_0000{ending}")):
            case_id = path.name[: -len(ending) - 5]
            rows.append({"case_id": case_id, "split": split, "source_files": str(path), "subject": case_id,
                         "sample": "", "modality": "", "pixel_size_um": np.nan})
    if not rows:
        raise FileNotFoundError(f"{folder}: no case (*_0000{ending}) in imagesTr or imagesTs")
    return pd.DataFrame(rows)


def label_lookup(source: SourceDataset, target_labels: Mapping[str, int],
                 mapping: Mapping[str, str] | None = None) -> np.ndarray | None:
    """Table from the source's label values to the target's, or None when they already agree.

    Label names are matched (``mapping`` renames source names first, e.g. ``{"vessel": "background"}``); a source
    label whose name the target lacks is an error.
    """
    source_labels = _plain_labels(source)
    if mapping is None and source_labels == dict(target_labels):
        return None
    mapping = dict(mapping or {})
    unknown = sorted(set(mapping) - set(source_labels))
    if unknown:
        raise ValueError(f"label mapping of {source.name} names labels it does not have: {unknown} "
                         f"(it has {sorted(source_labels)})")
    lookup = np.full(max(source_labels.values()) + 1, -1, dtype=np.int64)
    for name, value in source_labels.items():
        target_name = mapping.get(name, name)
        if target_name not in target_labels:
            raise ValueError(f"{source.folder / 'dataset.json'}: label {name!r} ({value}) has no counterpart in the "
                             f"aggregated labels {dict(target_labels)}; map it with --label-map")
        lookup[value] = target_labels[target_name]
    return None if np.array_equal(lookup, np.arange(len(lookup))) and len(lookup) == len(target_labels) else lookup


def _plain_labels(source: SourceDataset) -> dict:
    labels = source.dataset_json["labels"]
    if any(not isinstance(v, int) for v in labels.values()):
        raise ValueError(f"{source.folder / 'dataset.json'}: region-based labels cannot be aggregated")
    return {str(k): int(v) for k, v in labels.items()}


def grouped_folds(cases: pd.DataFrame, n_folds: int = 5, seed: int = 0,
                  group_choice: Mapping[str, str] | None = None) -> dict[str, int]:
    """Assign cases to folds so that every fold holds every source and no group spans two folds.

    Parameters
    ----------
    cases : DataFrame
        Columns ``case_id``, ``source`` and ``group`` (cases of one group always share a fold).
    n_folds : int
    seed : int
        Seed of the shuffle that orders groups of equal size.
    group_choice : dict, optional
        How each source was grouped (``{source: "subject" | "sample" | "case"}``, default subject); only shapes the
        advice of the error when a source has too few groups.

    Returns
    -------
    dict
        Fold index of every case id.

    Raises
    ------
    ValueError
        If a source has fewer groups than folds, or the groups cannot give every fold every source.
    """
    if n_folds < 2:
        raise ValueError(f"need at least 2 folds, got {n_folds}")
    sources = sorted(cases["source"].unique())
    for source in sources:
        n_groups = cases.loc[cases["source"] == source, "group"].nunique()
        if n_groups < n_folds:
            raise ValueError(f"{source}: only {n_groups} group(s) of training cases for {n_folds} folds, so some "
                             f"fold's validation would miss it; {_fewer_groups_advice(source, group_choice)}")
    rng = np.random.default_rng(seed)
    groups = cases.groupby("group", sort=True)
    names = list(groups.groups)
    order = rng.permutation(len(names))
    sizes = {name: len(index) for name, index in groups.groups.items()}
    ordered = sorted((names[i] for i in order), key=lambda g: -sizes[g])  # stable: ties keep the shuffled order
    group_sources = {name: set(frame["source"]) for name, frame in groups}
    fold_sources = [set() for _ in range(n_folds)]
    fold_load = np.zeros(n_folds, dtype=np.int64)
    fold_of_group = {}
    tie_break = rng.permutation(n_folds)
    for group in ordered:
        gain = [len(group_sources[group] - fold_sources[f]) for f in range(n_folds)]
        fold = min(range(n_folds), key=lambda f: (-gain[f], fold_load[f], tie_break[f]))
        fold_of_group[group] = fold
        fold_sources[fold] |= group_sources[group]
        fold_load[fold] += sizes[group]
    for fold, present in enumerate(fold_sources):
        missing = sorted(set(sources) - present)
        if missing:
            raise ValueError(f"fold {fold} would have no validation case of {missing}: subjects shared between "
                             f"sources leave too few groups; use fewer folds or --subjects-per-source")
    return {case: fold_of_group[group] for case, group in zip(cases["case_id"], cases["group"])}


def _fewer_groups_advice(source: str, group_choice: Mapping[str, str] | None) -> str:
    """What to do when ``source`` has too few groups: a finer grouping than the one in use, else fewer folds."""
    choices = dict(group_choice or {})
    current = choices.get(source, "subject")
    if current == "case":  # one case per group already: only fewer folds help
        return f"it is already grouped by case (--group-by {source}=case), so use fewer folds (--folds)"
    finer = "sample" if current == "subject" else "case"
    # Name every non-default choice: DATASET=CHOICE pairs reset the sources they leave out to subject.
    choices[source] = finer
    pairs = " ".join(f"{name}={choice}" for name, choice in sorted(choices.items()) if choice != "subject")
    alternative = "by sample or case" if finer == "sample" else "by case"
    return f"use fewer folds (--folds), or group it {alternative} (--group-by {pairs})"


def aggregate_datasets(sources: Sequence[str | os.PathLike], raw_root: str | os.PathLike, dataset_id: int,
                       dataset_name: str, *, n_folds: int = 5, seed: int = 0,
                       group_by: str | Mapping[str, str] = "subject",
                       subjects_shared_across_sources: bool = True,
                       label_mapping: Mapping[str, Mapping[str, str]] | None = None,
                       labels: Mapping[str, int] | None = None, case_prefix: str | None = None,
                       overwrite: bool = False, preprocessed_root: str | os.PathLike | None = None,
                       verify: bool = False, progress: bool = True) -> Path:
    """Merge nnU-Net raw datasets into ``<raw_root>/DatasetXXX_Name`` with folds that validate on every source.

    Parameters
    ----------
    sources : sequence of path, name or ID
        Datasets to merge (at least two), given as folders or as names/IDs in ``raw_root``.
    raw_root, dataset_id, dataset_name :
        Destination.
    n_folds, seed :
        Folds of ``splits_final.json`` and the seed that makes them reproducible.
    group_by : {"subject", "sample", "case"} or dict
        Cases kept on one side of every fold: those of a subject (default), of a sample, or each case alone;
        a dict ``{source dataset name: choice}`` sets it per source (others: subject).
    subjects_shared_across_sources : bool
        Treat equal subject names in different sources as one subject (default, the cautious choice).
    label_mapping : dict, optional
        ``{source dataset name: {source label name: target label name}}``.
    labels : dict, optional
        Labels of the result (default: the first source's).
    case_prefix : str, optional
        Prefix of the new case names (default: the dataset name).
    overwrite, preprocessed_root, verify :
        As for every converter.

    Returns
    -------
    Path
        The aggregated dataset; its manifest maps every case to ``source_dataset`` and ``source_case_id``.
    """
    import pandas as pd

    folders = [resolve_dataset(s, raw_root) for s in sources]
    if len(folders) < 2:
        raise ValueError("aggregation needs at least two datasets")
    resolved = [f.resolve() for f in folders]
    if len(set(resolved)) != len(resolved) or len({f.name for f in folders}) != len(folders):
        raise ValueError(f"each dataset may be listed once (and names must differ): {[str(f) for f in folders]}")
    destination = Path(raw_root) / dataset_folder_name(dataset_id, dataset_name)
    if destination.resolve() in resolved:
        raise ValueError(f"{destination} is one of the sources; choose another ID or name")
    loaded = [load_source(f) for f in folders]
    first = loaded[0]
    for other in loaded[1:]:
        for key in ("file_ending", "channel_names"):
            if other.dataset_json[key] != first.dataset_json[key]:
                raise ValueError(f"{other.folder / 'dataset.json'}: {key} {other.dataset_json[key]!r} differs from "
                                 f"{first.folder / 'dataset.json'}'s {first.dataset_json[key]!r}; aggregate datasets "
                                 f"of one file format and the same channels (and normalisation)")
    target_labels = dict(labels) if labels is not None else _plain_labels(first)
    label_mapping = dict(label_mapping or {})
    unknown = sorted(set(label_mapping) - {s.name for s in loaded})
    if unknown:
        raise ValueError(f"label mapping given for datasets that are not sources: {unknown}")
    lookups = {s.name: label_lookup(s, target_labels, label_mapping.get(s.name)) for s in loaded}
    group_choice = _group_choices(group_by, [s.name for s in loaded])

    table = _case_table(loaded, group_choice, subjects_shared_across_sources)
    ending = first.dataset_json["file_ending"]
    with NnUNetRawWriter(raw_root, dataset_id, dataset_name, target_labels,
                         channel_names=first.dataset_json["channel_names"], file_ending=ending,
                         case_prefix=case_prefix, overwrite=overwrite, preprocessed_root=preprocessed_root,
                         dataset_json_extra={"reference": "aggregated by nnunet-ext from "
                                                          + ", ".join(s.name for s in loaded)}) as writer:
        new_ids = []
        for row in tqdm(table.itertuples(), total=len(table), desc=f"Aggregating {dataset_name}", unit="case",
                        disable=not progress):
            source_files = [f for f in str(row.source_files).split(";") if f] or [str(p) for p in row.image_files]
            new_ids.append(writer.add_case_files(
                row.image_files, row.label_file, split=row.split, label_lookup=lookups[row.source],
                source_files=source_files, subject=row.subject, sample=row.sample, modality=row.modality,
                pixel_size_um=None if pd.isna(row.pixel_size_um) else float(row.pixel_size_um),
                source_dataset=row.source, source_case_id=row.case_id, group=row.group))
        table = table.assign(new_id=new_ids)
        training = table[table["split"] != "test"]
        fold_of = grouped_folds(training.assign(case_id=training["new_id"]), n_folds, seed, group_choice)
        writer.set_splits([{"train": [c for c, f in fold_of.items() if f != k],
                            "val": [c for c, f in fold_of.items() if f == k]} for k in range(n_folds)])
        destination = writer.finish(verify=verify)
    counts = table.groupby(["source", "split"]).size().unstack(fill_value=0)
    print(f"Aggregated {len(table)} cases from {len(loaded)} datasets into {destination}:\n{counts.to_string()}")
    return destination


def _group_choices(group_by, names: list[str]) -> dict[str, str]:
    if isinstance(group_by, str):
        choices = {name: group_by for name in names}
    else:
        unknown = sorted(set(group_by) - set(names))
        if unknown:
            raise ValueError(f"--group-by names datasets that are not sources: {unknown} (sources: {names})")
        choices = {name: group_by.get(name, "subject") for name in names}
    bad = sorted({c for c in choices.values() if c not in GROUP_BY_CHOICES})
    if bad:
        raise ValueError(f"group by must be one of {GROUP_BY_CHOICES}, got {bad}")
    return choices


def _case_table(loaded: list[SourceDataset], group_choice: dict[str, str], shared_subjects: bool) -> pd.DataFrame:
    import pandas as pd

    frames = []
    for source in loaded:
        cases = source.cases.copy()
        for column in ("subject", "sample", "modality", "source_files"):
            if column not in cases:
                cases[column] = ""
        if "pixel_size_um" not in cases:
            cases["pixel_size_um"] = np.nan
        choice = group_choice[source.name]
        if choice == "subject":
            missing = cases["subject"].astype(str).str.len() == 0
            if missing.any():
                warnings.warn(f"{source.name}: {int(missing.sum())} case(s) without a subject; each is its own group")
            keys = cases["subject"].astype(str).where(~missing, "case:" + cases["case_id"])
            group = keys if shared_subjects else source.name + "/" + keys
            group = group.where(~missing, source.name + "/" + keys)
        elif choice == "sample":
            group = source.name + "/" + cases["subject"].astype(str) + "/" + cases["sample"].astype(str)
        else:
            group = source.name + "/" + cases["case_id"]
        frames.append(cases.assign(source=source.name, group=group))
    table = pd.concat(frames, ignore_index=True)
    return table


def parse_group_by(values: Sequence[str]) -> str | dict[str, str]:
    if not values:
        return "subject"
    if len(values) == 1 and "=" not in values[0]:
        return values[0]
    choices = {}
    for value in values:
        name, sep, choice = value.partition("=")
        if not sep:
            raise ValueError(f"--group-by takes one choice, or DATASET=CHOICE pairs; got {value!r}")
        choices[name] = choice
    return choices


def _read_json_option(value: str | None, option: str, what: str):
    """``--labels``/``--label-map``: inline JSON (starting with ``{``) or the path of a JSON file."""
    if value is None:
        return None
    if value.lstrip().startswith("{"):
        try:
            content = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"{option} {value!r}: not valid JSON ({error})") from None
        source = option
    else:
        try:
            content = json.loads(Path(value).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{value}: cannot read {what} ({error})") from None
        source = f"{value} ({option})"
    if not isinstance(content, dict):
        raise ValueError(f"{source}: {what} must be a JSON object {{...}}, got {type(content).__name__}")
    return content


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "aggregate", help="merge converted nnU-Net raw datasets into one, with folds that validate on every source",
        description="Merge nnU-Net raw datasets (e.g. several labs' conversions into FULL_AGG): copy and rename "
                    "every case, union the test sets, check label schemas (or apply --label-map), and write "
                    "splits_final.json whose every fold validates on every source, never splitting a subject "
                    "between training and validation.")
    parser.add_argument("sources", nargs="+", help="datasets to merge: folders, DatasetXXX_Name or IDs in --raw")
    add_destination_arguments(parser)
    parser.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    parser.add_argument("--group-by", nargs="+", metavar="CHOICE",
                        help="keep cases of a subject (default), sample or case together: one choice for all, or "
                             "DATASET=CHOICE pairs")
    parser.add_argument("--subjects-per-source", action="store_true",
                        help="equal subject names in different sources are different subjects (default: the same)")
    parser.add_argument("--label-map", metavar="JSON",
                        help='label renaming per source, inline JSON or a JSON file: '
                             '{"Dataset002_X": {"vessel": "background"}}')
    parser.add_argument("--labels", metavar="JSON",
                        help='labels of the result, inline JSON or a JSON file, e.g. {"background": 0, "myelin": 1, '
                             '"axon": 2} (default: the first dataset\'s)')
    parser.add_argument("--case-prefix", help="prefix of the new case names (default: the dataset name)")
    parser.set_defaults(func=_run_cli)


def _run_cli(args) -> int:
    aggregate_datasets(args.sources, raw_root_from_args(args), args.dataset_id, args.name, n_folds=args.folds,
                       seed=args.seed, group_by=parse_group_by(args.group_by or []),
                       subjects_shared_across_sources=not args.subjects_per_source,
                       label_mapping=_read_json_option(args.label_map, "--label-map", "label map"),
                       labels=_read_json_option(args.labels, "--labels", "labels"), case_prefix=args.case_prefix,
                       overwrite=args.overwrite, preprocessed_root=args.preprocessed, verify=args.verify)
    return 0
