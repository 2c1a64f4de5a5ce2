"""Axon filters of a study report, applied in a fixed order and counted per image."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["Filters", "valid_gratio", "apply_filters"]


@dataclass(frozen=True)
class Filters:
    """Which axons a report keeps.

    Attributes
    ----------
    gratio_valid : bool
        Drop axons whose g-ratio is NaN or outside (0, 1) (AxonDeepSeg's aggregate drops NaN and >= 1; a g-ratio
        <= 0 only occurs for zero-diameter axons). Default True.
    drop_border : bool
        Drop fibres touching the image border (``image_border_touching``).
    min_diameter, max_diameter : float or None
        Keep axons with ``min_diameter <= axon_diam (um) <= max_diameter``.
    """

    gratio_valid: bool = True
    drop_border: bool = False
    min_diameter: float | None = None
    max_diameter: float | None = None

    def describe(self) -> list[str]:
        """The filters in words, in the order they are applied (``["none"]`` when nothing is filtered)."""
        words = []
        if self.gratio_valid:
            words.append("g-ratio valid: axons with a g-ratio that is NaN or outside (0, 1) are dropped")
        if self.drop_border:
            words.append("fibres touching the image border are dropped")
        if self.min_diameter is not None:
            words.append(f"axon diameter >= {self.min_diameter:g} um")
        if self.max_diameter is not None:
            words.append(f"axon diameter <= {self.max_diameter:g} um")
        return words or ["none: every axon of the input tables is kept"]


def valid_gratio(gratio) -> np.ndarray:
    """Boolean array: g-ratio finite and strictly between 0 and 1."""
    values = np.asarray(gratio, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (values > 0) & (values < 1)


def apply_filters(axons: pd.DataFrame, filters: Filters) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply ``filters`` to a study's axons.

    Parameters
    ----------
    axons : DataFrame
        Per-axon rows with ``image``, ``axon_diam (um)``, ``gratio`` and (for ``drop_border``)
        ``image_border_touching``.
    filters : Filters

    Returns
    -------
    kept : DataFrame
        The axons kept (index reset).
    counts : DataFrame
        One row per image: ``image``, ``axons_in``, one column per filter with the axons it removed (each filter
        counts only axons still there after the previous ones), ``axons_kept``.
    """
    if filters.min_diameter is not None and filters.max_diameter is not None \
            and filters.min_diameter > filters.max_diameter:
        raise ValueError(f"--min-diameter {filters.min_diameter:g} is larger than --max-diameter "
                         f"{filters.max_diameter:g}")
    keep = np.ones(len(axons), dtype=bool)
    images = axons["image"]
    counts = pd.DataFrame({"image": images.cat.categories if hasattr(images, "cat") else pd.unique(images)})
    counts["axons_in"] = counts["image"].map(images.value_counts()).fillna(0).astype(int)

    def removed(mask: np.ndarray, column: str) -> None:
        nonlocal keep
        dropped = keep & ~mask
        counts[column] = counts["image"].map(images[dropped].value_counts()).fillna(0).astype(int)
        keep &= mask

    diameter = axons["axon_diam (um)"].to_numpy(np.float64)
    if filters.gratio_valid:
        removed(valid_gratio(axons["gratio"]), "invalid_gratio")
    if filters.drop_border:
        if "image_border_touching" not in axons:
            raise ValueError("--drop-border: the tables have no 'image_border_touching' column")
        border = axons["image_border_touching"].fillna(False).astype(bool).to_numpy()
        removed(~border, "border_touching")
    with np.errstate(invalid="ignore"):
        if filters.min_diameter is not None:
            removed(diameter >= filters.min_diameter, "below_min_diameter")
        if filters.max_diameter is not None:
            removed(diameter <= filters.max_diameter, "above_max_diameter")
    counts["axons_kept"] = counts["image"].map(images[keep].value_counts()).fillna(0).astype(int)
    kept = axons.loc[keep].reset_index(drop=True)
    return kept, counts
