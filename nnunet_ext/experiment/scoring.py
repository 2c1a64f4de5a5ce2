"""Scoring the experiment's predictions: every model on every test set, against the test set's ``labelsTs``.

Each prediction folder ``predictions/<model>/<target>`` is evaluated with :func:`nnunet_ext.evaluation.evaluate_folder`
(``nnunet-ext evaluate``'s per-case metrics), HD95 in um from the pixel sizes of the target's manifest.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nnunet_ext.dataset_conversion.nnunet_raw import read_manifest
from nnunet_ext.evaluation import evaluate_folder
from nnunet_ext.experiment.design import COMMANDS_FILE, DEDICATED, GENERALIST, ExperimentDesign


def _test_pixel_sizes(folder: Path) -> dict | None:
    """``{case: pixel size in um}`` of the test cases, when the manifest gives every one (for HD95 in um)."""
    try:
        manifest = read_manifest(folder)
    except FileNotFoundError:
        return None
    if "pixel_size_um" not in manifest:
        return None
    test = manifest[manifest["split"] == "test"]
    sizes = test["pixel_size_um"].astype(float)
    if test.empty or not np.all(np.isfinite(sizes)) or not np.all(sizes > 0):
        return None
    return dict(zip(test["case_id"], sizes))


def evaluate_predictions(design: ExperimentDesign, predictions_root: str | os.PathLike, progress: bool = True):
    """Score ``predictions_root/<model>/<target>`` against every target's ``labelsTs``.

    Returns
    -------
    pandas.DataFrame
        :func:`~nnunet_ext.evaluation.evaluate_folder`'s per-case rows (every metric) of every
        model and target, with columns ``model``, ``model_kind`` (dedicated or generalist), ``target`` and
        ``target_role`` (source or held_out) first. HD95_um uses the pixel sizes of the target's manifest.
    """
    import pandas as pd

    predictions_root = Path(predictions_root)
    pairs = [(m, t) for m in design.models for t in design.targets]
    missing = [str(predictions_root / m.name / t.name) for m, t in pairs
               if not (predictions_root / m.name / t.name).is_dir()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} prediction folder(s) missing, e.g. {missing[0]}; run the "
                                f"prediction commands of {COMMANDS_FILE} first")
    tables = []
    for model, target in tqdm(pairs, desc="Evaluating", unit="model x target", disable=not progress):
        folder = Path(design.raw_root) / target.folder
        table = evaluate_folder(predictions_root / model.name / target.name, folder / "labelsTs",
                                spacing=_test_pixel_sizes(folder), dataset_json=folder / "dataset.json",
                                progress=False)
        table.insert(0, "target_role", target.role)
        table.insert(0, "target", target.name)
        table.insert(0, "model_kind", GENERALIST if model.role == "aggregate" else DEDICATED)
        table.insert(0, "model", model.name)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)
