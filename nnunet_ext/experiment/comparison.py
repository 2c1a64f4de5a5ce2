"""Generalist versus dedicated models, in pure functions on tables: Dice matrix, paired t-test, OOD table.

From the per-case rows of :func:`nnunet_ext.experiment.scoring.evaluate_predictions` (every model, target, test image
and class), :func:`dice_matrix` assembles a Dice matrix per class (rows: target test sets, columns: models);
:func:`generalist_vs_dedicated_pairs` and :func:`paired_ttest` test generalist versus dedicated on in-domain pairs;
:func:`ood_table` compares them on sources held out of every training.

Definitions
-----------
- Dice of a model on a target, per class: the mean over the target's test images of the per-image Dice, images where
  the class is in neither reference nor prediction left out (nnU-Net's convention; ``Dice`` of
  :func:`~nnunet_ext.evaluation.per_class_means`). The matrix CSV also gives the pooled Dice (all test pixels as one
  image).
- In-domain pairs: for each training source, the dedicated model trained on it and the generalist, both scored on
  that source's test set. Dedicated models scored on other sources are left out of the test, as in the paper.
- ``pairing="source"`` (default, the paper's: "pairs of Dice score", N = 8 for 4 sources x 2 classes): one pair per
  training source and class, of the two models' mean Dice on that source's test set.
  ``pairing="image"``: one pair per test image of a training source and class (both Dice defined). This gives more
  pairs, but the images of one source are not independent samples of the population of datasets the claim is about,
  so its p-value is an optimistic one; prefer ``source`` when there are enough sources.
  Both are tested with :func:`scipy.stats.ttest_rel` (generalist minus dedicated: positive t favours the generalist),
  over all classes together (the paper) and for each class alone.
- Out-of-distribution: a held-out source is in no training set; every model is scored on its test set. The table
  compares the generalist with the dedicated model matched to it (given as ``HELD_OUT=SOURCE``, or the one training
  source of the same modality in the manifests; the paper compares SEM2 with the SEM model), the best and the mean of
  the dedicated models.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from nnunet_ext.evaluation import per_class_means
from nnunet_ext.experiment.design import ALTERNATIVES, PAIRINGS


def dice_matrix(per_case, in_domain: Mapping[str, Sequence[str]] | None = None,
                held_out: Sequence[str] = ()):
    """Dice of every model on every target, per class, from per-case rows.

    Parameters
    ----------
    per_case : pandas.DataFrame
        Rows of :func:`~nnunet_ext.experiment.scoring.evaluate_predictions` (columns ``model``, ``target``,
        ``case``, ``label``, ``class_name``, the metrics and TP/FP/FN).
    in_domain : mapping, optional
        ``{model: [targets it was trained on]}``, marks the in-domain cells.
    held_out : sequence of str
        Targets held out of every training.

    Returns
    -------
    pandas.DataFrame
        One row per target, model and class (models and targets in first-seen order, classes in label order):
        ``Dice`` (mean over test images, NaN images left out: the ``Dice`` of
        :func:`~nnunet_ext.evaluation.per_class_means`), ``Dice_pooled``, ``IoU``,
        ``n_cases``, ``n_cases_defined``, ``in_domain``, ``held_out_target``.
    """
    import pandas as pd

    in_domain = {k: set(v) for k, v in (in_domain or {}).items()}
    rows = []
    for (model, target), group in per_case.groupby(["model", "target"], sort=False):
        means = per_class_means(group)
        for row in means[means["label"] != "mean"].itertuples():
            rows.append({"target": target, "model": model, "label": row.label, "class_name": row.class_name,
                         "Dice": row.Dice, "Dice_pooled": row.Dice_pooled, "IoU": row.IoU,
                         "n_cases": row.n_cases, "n_cases_defined": row.n_cases_defined,
                         "in_domain": target in in_domain.get(model, ()), "held_out_target": target in held_out})
    matrix = pd.DataFrame(rows)
    if matrix.empty:
        raise ValueError("no evaluation row to build a Dice matrix from")
    targets = list(dict.fromkeys(per_case["target"]))
    models = list(dict.fromkeys(per_case["model"]))
    labels = list(dict.fromkeys(per_case["label"]))
    order = matrix.assign(_t=matrix["target"].map(targets.index), _m=matrix["model"].map(models.index),
                          _l=matrix["label"].map(labels.index))
    return order.sort_values(["_l", "_t", "_m"], kind="stable").drop(columns=["_t", "_m", "_l"]).reset_index(drop=True)


def class_names(matrix) -> list[str]:
    """Classes of a matrix in label order."""
    return list(dict.fromkeys(matrix["class_name"]))


def matrix_of_class(matrix, class_name: str, value: str = "Dice"):
    """The Dice matrix of one class as a table: rows targets, columns models (first-seen order)."""
    subset = matrix[matrix["class_name"] == class_name]
    if subset.empty:
        raise ValueError(f"no class {class_name!r} in the matrix (classes: {class_names(matrix)})")
    wide = subset.pivot(index="target", columns="model", values=value)
    wide = wide.loc[list(dict.fromkeys(subset["target"])), list(dict.fromkeys(subset["model"]))]
    wide.index.name, wide.columns.name = "target", None
    return wide


def generalist_vs_dedicated_pairs(per_case, generalist: str, dedicated_of: Mapping[str, str],
                                  pairing: str = "source"):
    """The in-domain pairs of Dice scores (generalist, dedicated) the paired t-test compares.

    Parameters
    ----------
    per_case : pandas.DataFrame
        Per-case rows (see :func:`dice_matrix`).
    generalist : str
        The generalist model's name.
    dedicated_of : mapping
        ``{training source (target name): the dedicated model trained on it alone}``.
    pairing : {"source", "image"}
        ``source``: one pair per source and class, of the two models' mean Dice on the source's test set (the
        matrix cells). ``image``: one pair per test image and class, where both Dice are defined.

    Returns
    -------
    pandas.DataFrame
        ``target, class_name, [case], dedicated_model, Dice_dedicated, Dice_generalist, difference`` (generalist
        minus dedicated); pairs with an undefined Dice (class in no image) are dropped.
    """
    import pandas as pd

    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
    known_models, known_targets = set(per_case["model"]), set(per_case["target"])
    for target, model in dedicated_of.items():
        if model not in known_models or target not in known_targets:
            raise ValueError(f"no evaluation of model {model!r} on target {target!r}")
    if generalist not in known_models:
        raise ValueError(f"no evaluation of the generalist {generalist!r}")
    frames = []
    if pairing == "source":
        matrix = dice_matrix(per_case)
        for target, model in dedicated_of.items():
            cells = matrix[matrix["target"] == target].pivot(index=["label", "class_name"], columns="model",
                                                             values="Dice")
            frames.append(pd.DataFrame({"target": target, "class_name": cells.index.get_level_values("class_name"),
                                        "dedicated_model": model, "Dice_dedicated": cells[model].to_numpy(),
                                        "Dice_generalist": cells[generalist].to_numpy()}))
    else:
        for target, model in dedicated_of.items():
            on_target = per_case[per_case["target"] == target]
            keys = ["case", "label", "class_name"]
            dedicated = on_target[on_target["model"] == model][[*keys, "Dice"]]
            general = on_target[on_target["model"] == generalist][[*keys, "Dice"]]
            merged = dedicated.merge(general, on=keys, suffixes=("_dedicated", "_generalist"), validate="one_to_one")
            if len(merged) != len(dedicated) or len(merged) != len(general):
                raise ValueError(f"{target}: the dedicated and generalist models were scored on different images")
            frames.append(merged.assign(target=target, dedicated_model=model).drop(columns="label"))
    pairs = pd.concat(frames, ignore_index=True)
    pairs = pairs.dropna(subset=["Dice_dedicated", "Dice_generalist"]).reset_index(drop=True)
    pairs["difference"] = pairs["Dice_generalist"] - pairs["Dice_dedicated"]
    columns = ["target", "class_name", *(["case"] if pairing == "image" else []), "dedicated_model",
               "Dice_dedicated", "Dice_generalist", "difference"]
    return pairs[columns]


def paired_ttest(pairs, alternative: str = "two-sided", pairing: str = "source"):
    """``scipy.stats.ttest_rel`` of generalist versus dedicated Dice, over all classes and per class.

    Parameters
    ----------
    pairs : pandas.DataFrame
        :func:`generalist_vs_dedicated_pairs`' output.
    alternative : {"two-sided", "greater", "less"}
        ``greater``: the generalist's Dice is greater.

    Returns
    -------
    pandas.DataFrame
        One row for all classes together (``scope = "all classes"``, the paper's test), then one per class:
        ``n_pairs``, the two means, ``mean_difference`` (generalist minus dedicated), ``t_statistic``, ``p_value``,
        ``alternative``, ``pairing``. With fewer than two pairs t and p are NaN; with identical differences scipy's
        own result (NaN, or infinite t) is kept and ``note`` says why.
    """
    import pandas as pd
    from scipy.stats import ttest_rel

    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    rows = []
    scopes = [("all classes", pairs)] + [(name, group) for name, group in pairs.groupby("class_name", sort=False)]
    for scope, group in scopes:
        generalist = group["Dice_generalist"].to_numpy(dtype=float)
        dedicated = group["Dice_dedicated"].to_numpy(dtype=float)
        row = {"scope": scope, "pairing": pairing, "n_pairs": len(group),
               "mean_Dice_generalist": float(np.mean(generalist)) if len(group) else math.nan,
               "mean_Dice_dedicated": float(np.mean(dedicated)) if len(group) else math.nan,
               "mean_difference": float(np.mean(generalist - dedicated)) if len(group) else math.nan,
               "t_statistic": math.nan, "p_value": math.nan, "alternative": alternative, "note": ""}
        if len(group) < 2:
            row["note"] = "fewer than 2 pairs"
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # zero variance of the differences
                result = ttest_rel(generalist, dedicated, alternative=alternative)
            row["t_statistic"], row["p_value"] = float(result.statistic), float(result.pvalue)
            differences = generalist - dedicated
            if np.allclose(differences, differences[0], rtol=0, atol=1e-12):
                row["note"] = "all differences equal: the test is undefined"
        rows.append(row)
    return pd.DataFrame(rows)


def ood_table(matrix, generalist: str, dedicated_models: Sequence[str], held_out: Mapping[str, str | None]):
    """Generalist versus dedicated models on targets held out of every training, per class.

    Parameters
    ----------
    matrix : pandas.DataFrame
        :func:`dice_matrix`' output.
    generalist : str
    dedicated_models : sequence of str
    held_out : mapping
        ``{held-out target: matched dedicated model or None}``.

    Returns
    -------
    pandas.DataFrame
        One row per held-out target and class: ``Dice_generalist``, ``matched_dedicated`` and its
        ``Dice_matched_dedicated``, ``generalist_minus_matched``, ``best_dedicated`` and ``Dice_best_dedicated``,
        ``Dice_mean_dedicated``, ``n_cases``.
    """
    import pandas as pd

    rows = []
    for target, matched in held_out.items():
        on_target = matrix[matrix["target"] == target]
        if on_target.empty:
            raise ValueError(f"held-out target {target!r} is not in the matrix")
        if matched is not None and matched not in dedicated_models:
            raise ValueError(f"{target}: matched model {matched!r} is not a dedicated model ({list(dedicated_models)})")
        for class_name in class_names(on_target):
            cells = on_target[on_target["class_name"] == class_name].set_index("model")
            dedicated = cells.loc[list(dedicated_models), "Dice"].astype(float)
            general = float(cells.loc[generalist, "Dice"])
            matched_dice = float(dedicated[matched]) if matched is not None else math.nan
            best = dedicated.idxmax() if dedicated.notna().any() else None
            rows.append({"target": target, "class_name": class_name, "Dice_generalist": general,
                         "matched_dedicated": matched or "", "Dice_matched_dedicated": matched_dice,
                         "generalist_minus_matched": general - matched_dice,
                         "best_dedicated": best or "", "Dice_best_dedicated": float(dedicated.max()),
                         "Dice_mean_dedicated": float(dedicated.mean()),
                         "n_cases": int(cells.loc[generalist, "n_cases"])})
    return pd.DataFrame(rows)
