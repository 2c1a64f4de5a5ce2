"""The experiment's design: which datasets train which models and are scored, and how nnU-Net runs them.

:func:`prepare_experiment` resolves the converted source datasets, checks that they can be compared (one label schema,
labelled test sets, all in nnU-Net's raw folder), creates the generalist's aggregated dataset
(:func:`nnunet_ext.dataset_conversion.aggregate_datasets.aggregate_datasets`) or reuses it, and returns an
:class:`ExperimentDesign`, which is stored as ``experiment.json`` in the experiment folder.
"""
from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nnunet_ext.dataset_conversion.aggregate_datasets import aggregate_datasets, resolve_dataset
from nnunet_ext.dataset_conversion.nnunet_raw import SPLITS_FILE, dataset_folder_name, read_manifest
from nnunet_ext.nnunet.plans_cpu import CPU_PLANS_NAME

PAIRINGS = ("source", "image")
ALTERNATIVES = ("two-sided", "greater", "less")
DEDICATED, GENERALIST = "dedicated", "generalist"
DESIGN_FILE = "experiment.json"
COMMANDS_FILE = "commands.sh"
PREDICTIONS_DIR = "predictions"


@dataclass
class ExperimentDataset:
    """One nnU-Net raw dataset of the experiment.

    ``name`` labels it in tables and plots (the dataset name without ``DatasetXXX_``); ``role`` is ``"source"``
    (a training source: dedicated model and target), ``"held_out"`` (target only) or ``"aggregate"`` (the
    generalist's training set).
    """

    name: str
    folder: str
    dataset_id: int
    role: str
    modality: str = ""
    matched_dedicated: str | None = None  # held-out only: the dedicated model it is compared with


@dataclass
class NnUNetSettings:
    """How every model is planned, trained and used for prediction (the same for all, so the comparison is fair)."""

    configuration: str = "2d"
    trainer: str = "nnUNetTrainer"
    plans: str = "nnUNetPlans"
    planner: str | None = None            # -pl of nnUNetv2_plan_and_preprocess (nnU-Net's default planner if None)
    folds: tuple = (0, 1, 2, 3, 4)        # trained, then ensembled for prediction (the paper ensembles 5 folds)
    device: str = "cuda"
    checkpoint: str = "checkpoint_final.pth"
    cpu_plans: dict | None = None         # {"patch_size", "features_per_stage", "batch_size"}: nnUNetPlans_cpu

    def __post_init__(self):
        self.folds = tuple(_fold_value(f) for f in self.folds)
        if not self.folds:
            raise ValueError("no fold to train")
        if self.cpu_plans is not None:
            self.plans = CPU_PLANS_NAME


@dataclass
class ExperimentDesign:
    """Everything needed to write the commands, run them, and evaluate: stored as ``experiment.json``."""

    sources: list[ExperimentDataset]
    held_out: list[ExperimentDataset]
    aggregate: ExperimentDataset
    raw_root: str
    preprocessed_root: str
    results_root: str
    nnunet: NnUNetSettings = field(default_factory=NnUNetSettings)
    pairing: str = "source"
    alternative: str = "two-sided"
    aggregate_command: str = ""

    def __post_init__(self):
        if self.pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {self.pairing!r}")
        if self.alternative not in ALTERNATIVES:
            raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {self.alternative!r}")
        names = [d.name for d in (*self.sources, *self.held_out, self.aggregate)]
        if len(set(names)) != len(names):
            raise ValueError(f"datasets need distinct names in tables and plots, got {names}")

    @property
    def generalist(self) -> str:
        return self.aggregate.name

    @property
    def models(self) -> list[ExperimentDataset]:
        """Dedicated models (one per training source), then the generalist."""
        return [*self.sources, self.aggregate]

    @property
    def targets(self) -> list[ExperimentDataset]:
        """Test sets scored: training sources, then held-out sources."""
        return [*self.sources, *self.held_out]

    @property
    def dedicated_of(self) -> dict[str, str]:
        """``{training source: its dedicated model}`` (the in-domain pairs of the t-test)."""
        return {s.name: s.name for s in self.sources}

    @property
    def ood_matches(self) -> dict[str, str | None]:
        return {h.name: h.matched_dedicated for h in self.held_out}

    def model_folder(self, model: ExperimentDataset) -> Path:
        s = self.nnunet
        return Path(self.results_root) / model.folder / f"{s.trainer}__{s.plans}__{s.configuration}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, where: str = DESIGN_FILE) -> "ExperimentDesign":
        try:
            content = json.loads(text)
            return cls(sources=[ExperimentDataset(**d) for d in content["sources"]],
                       held_out=[ExperimentDataset(**d) for d in content["held_out"]],
                       aggregate=ExperimentDataset(**content["aggregate"]),
                       nnunet=NnUNetSettings(**content["nnunet"]),
                       **{k: content[k] for k in ("raw_root", "preprocessed_root", "results_root", "pairing",
                                                  "alternative", "aggregate_command")})
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{where}: not an experiment design written by nnunet-ext ({error})") from None


def _fold_value(fold) -> int | str:
    if str(fold) == "all":
        return "all"
    try:
        return int(fold)
    except (TypeError, ValueError):
        raise ValueError(f"fold must be an integer or 'all', got {fold!r}") from None


def _dataset_id(folder: Path) -> int:
    match = re.fullmatch(r"Dataset(\d{3})_.+", folder.name)
    if not match:
        raise ValueError(f"{folder}: not an nnU-Net dataset folder name (DatasetXXX_Name)")
    return int(match.group(1))


def _short_name(folder_name: str) -> str:
    return re.sub(r"^Dataset\d{3}_", "", folder_name)


def _modality(folder: Path) -> str:
    try:
        manifest = read_manifest(folder)
    except FileNotFoundError:
        return ""
    if "modality" not in manifest:
        return ""
    return "+".join(sorted({m for m in manifest["modality"].astype(str) if m}))


def _read_dataset_json(folder: Path) -> dict:
    path = folder / "dataset.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found; is {folder} an nnU-Net raw dataset?") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def _check_test_set(folder: Path, file_ending: str) -> int:
    images = sorted((folder / "imagesTs").glob(f"*_0000{file_ending}")) if (folder / "imagesTs").is_dir() else []
    if not images:
        raise ValueError(f"{folder}: no test image in imagesTs; every source needs a test set to be scored on "
                         f"(convert it with test subjects)")
    labels = folder / "labelsTs"
    missing = [p.name for p in images if not (labels / (p.name[: -len(f"_0000{file_ending}")] + file_ending)).is_file()]
    if missing:
        raise ValueError(f"{folder}: {len(missing)} test image(s) have no label in labelsTs ({', '.join(missing[:3])}"
                         f"{' ...' if len(missing) > 3 else ''}); the experiment scores labelled test sets only")
    return len(images)


def prepare_experiment(sources: Sequence[str | int | os.PathLike], raw_root: str | os.PathLike,
                       preprocessed_root: str | os.PathLike, results_root: str | os.PathLike, aggregate_id: int,
                       aggregate_name: str = "FULL_AGG", held_out: Sequence[str] = (),
                       nnunet: NnUNetSettings | None = None, aggregate_folds: int = 5, seed: int = 0,
                       group_by: str | Mapping[str, str] = "subject", pairing: str = "source",
                       alternative: str = "two-sided", progress: bool = True) -> ExperimentDesign:
    """Resolve the datasets and create the generalist's aggregated dataset (or reuse it); return the design.

    Parameters
    ----------
    sources : sequence of path, ``DatasetXXX_Name`` or ID
        Converted raw datasets in ``raw_root``, each with a labelled test set. Those not named in ``held_out``
        are training sources: each gets a dedicated model, and all of them are aggregated for the generalist.
    raw_root, preprocessed_root, results_root : path
        nnU-Net's three folders.
    aggregate_id, aggregate_name : int, str
        The aggregated dataset ``DatasetXXX_Name``. If it exists and aggregates exactly the training sources, it is
        reused; otherwise an existing folder is an error.
    held_out : sequence of str
        ``SOURCE`` or ``SOURCE=DEDICATED``: sources left out of every training and scored out of distribution
        (they need not be repeated in ``sources``). ``DEDICATED`` names the training source whose dedicated model
        the out-of-distribution table compares with; by default the one training source of the same modality.
    nnunet : NnUNetSettings
        Configuration, trainer, plans, folds, device, checkpoint of every model.
    aggregate_folds, seed, group_by :
        Folds of the aggregated dataset (see
        :func:`~nnunet_ext.dataset_conversion.aggregate_datasets.aggregate_datasets`).
    pairing, alternative :
        The t-test's pairs (``"source"`` or ``"image"``, see :mod:`nnunet_ext.experiment.comparison`) and
        alternative hypothesis.
    """
    nnunet = nnunet or NnUNetSettings()
    raw_root, preprocessed_root, results_root = (Path(p).resolve() for p in (raw_root, preprocessed_root,
                                                                             results_root))
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")

    def resolve(reference) -> Path:
        folder = resolve_dataset(reference, raw_root).resolve()
        if folder.parent != raw_root:
            raise ValueError(f"{folder}: nnU-Net trains datasets of its raw folder only ({raw_root}); move or convert "
                             f"the dataset there")
        return folder

    held_out_folders: dict[Path, str | None] = {}
    for spec in held_out:
        text = str(spec)
        match = None
        if "=" in text and not Path(text).is_dir():
            text, _, match = text.rpartition("=")
        held_out_folders[resolve(text)] = match or None
    folders = list(dict.fromkeys([resolve(s) for s in sources] + list(held_out_folders)))
    training = [f for f in folders if f not in held_out_folders]
    if len(training) < 2:
        raise ValueError(f"the experiment needs at least two training sources (one dedicated model each, aggregated "
                         f"for the generalist); got {[f.name for f in training]}")

    dataset_jsons = {f: _read_dataset_json(f) for f in folders}
    first = folders[0]
    for folder in folders[1:]:
        for key in ("labels", "file_ending", "channel_names"):
            if dataset_jsons[folder].get(key) != dataset_jsons[first].get(key):
                raise ValueError(f"{folder / 'dataset.json'}: {key} {dataset_jsons[folder].get(key)!r} differ from "
                                 f"{first / 'dataset.json'}'s {dataset_jsons[first].get(key)!r}; every model is "
                                 f"scored on every test set class by class, so the sources need one label schema, "
                                 f"file format and channels (convert or aggregate them with one schema first)")
    for folder in folders:
        _check_test_set(folder, dataset_jsons[folder]["file_ending"])

    names = [_short_name(f.name) for f in folders]
    if len(set(names)) != len(names):  # two datasets with one name under different IDs: keep the IDs
        names = [f.name for f in folders]
    name_of = dict(zip(folders, names))
    modality_of = {f: _modality(f) for f in folders}

    def matched(folder: Path) -> str | None:
        explicit = held_out_folders[folder]
        if explicit is not None:
            by_name = [t for t in training if explicit in (name_of[t], t.name)]
            target = by_name[0] if by_name else resolve(explicit)
            if target not in training:
                raise ValueError(f"--held-out {folder.name}={explicit}: {target.name} is not a training source")
            return name_of[target]
        same = [t for t in training if modality_of[folder] and modality_of[t] == modality_of[folder]]
        return name_of[same[0]] if len(same) == 1 else None

    source_entries = [ExperimentDataset(name_of[f], f.name, _dataset_id(f), "source", modality_of[f])
                      for f in training]
    held_out_entries = [ExperimentDataset(name_of[f], f.name, _dataset_id(f), "held_out", modality_of[f], matched(f))
                        for f in folders if f in held_out_folders]

    for fold in nnunet.folds:
        if fold != "all" and fold >= aggregate_folds:
            raise ValueError(f"fold {fold} does not exist with {aggregate_folds} aggregate folds (--aggregate-folds)")
    for folder in training:
        _check_fixed_folds(folder, nnunet.folds)
    aggregate_folder = raw_root / dataset_folder_name(aggregate_id, aggregate_name)
    if aggregate_folder in folders:
        raise ValueError(f"{aggregate_folder.name} is one of the sources; choose another --aggregate-id or name")
    command = " ".join(["nnunet-ext", "aggregate", *[str(_dataset_id(f)) for f in training], "--raw",
                        shlex.quote(str(raw_root)), "--preprocessed", shlex.quote(str(preprocessed_root)), "-d",
                        str(aggregate_id), "-n", aggregate_name, "--folds", str(aggregate_folds), "--seed", str(seed)]
                       + _group_by_arguments(group_by))
    if aggregate_folder.is_dir():
        manifest = read_manifest(aggregate_folder)
        existing = set(manifest["source_dataset"]) if "source_dataset" in manifest else set()
        splits_file = aggregate_folder / "splits_final.json"
        n_splits = len(json.loads(splits_file.read_text())) if splits_file.is_file() else None
        if existing != {f.name for f in training} or n_splits != aggregate_folds:
            raise FileExistsError(f"{aggregate_folder} exists but aggregates {sorted(existing)} in {n_splits} folds, "
                                  f"not {sorted(f.name for f in training)} in {aggregate_folds}; choose another "
                                  f"--aggregate-id/--aggregate-name, or remove it")
        print(f"Reusing the aggregated dataset {aggregate_folder} ({', '.join(sorted(existing))})")
    else:
        aggregate_folder = aggregate_datasets(training, raw_root, aggregate_id, aggregate_name,
                                              n_folds=aggregate_folds, seed=seed, group_by=group_by,
                                              preprocessed_root=preprocessed_root, progress=progress)
    aggregate_entry = ExperimentDataset(_short_name(aggregate_folder.name), aggregate_folder.name, aggregate_id,
                                        "aggregate", "+".join(sorted({m for f in training
                                                                      for m in modality_of[f].split("+") if m})))
    return ExperimentDesign(source_entries, held_out_entries, aggregate_entry, str(raw_root), str(preprocessed_root),
                            str(results_root), nnunet, pairing, alternative, command)


def fixed_folds(folder: Path) -> int | None:
    """How many folds a converted dataset fixes in its ``splits_final.json`` (AxonCallosumEM's and MTNeuro's region
    splits: one), or None when nnU-Net makes its own five."""
    splits_file = folder / SPLITS_FILE
    if not splits_file.is_file():
        return None
    try:
        return len(json.loads(splits_file.read_text()))
    except (json.JSONDecodeError, TypeError) as error:
        raise ValueError(f"{splits_file}: not a valid splits file ({error})") from None


def _check_fixed_folds(folder: Path, folds: Sequence) -> None:
    """Refuse folds a source does not have: for fold >= the folds in its splits_final.json, nnU-Net silently falls
    back to a random 80:20 split, which would mix the regions the source keeps apart (genu and body tiles)."""
    n_fixed = fixed_folds(folder)
    if n_fixed is None:
        return
    missing = [f for f in folds if f == "all" or f >= n_fixed]
    if missing:
        have = " ".join(str(i) for i in range(n_fixed))
        raise ValueError(f"{folder.name} fixes {n_fixed} fold(s) in {folder / SPLITS_FILE} (fold {have}), so fold(s) "
                         f"{', '.join(map(str, missing))} would be nnU-Net's random 80:20 split instead of the "
                         f"source's own; train -f {have} (the generalist too: every model trains the same folds)")


def _group_by_arguments(group_by) -> list[str]:
    if isinstance(group_by, str):
        return [] if group_by == "subject" else ["--group-by", group_by]
    return ["--group-by", *[f"{k}={v}" for k, v in group_by.items()]]
