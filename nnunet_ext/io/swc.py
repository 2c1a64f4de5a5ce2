"""Reading and writing SWC neuron reconstructions.

SWC is the plain-text format of neuron tracings (Cannon et al. 1998; the format Vaa3D, BigNeuron and NeuroMorpho
use): one node a line, ``id type x y z radius parent``, ``parent`` negative (usually -1) for a root; lines starting
with ``#`` are comments. Vaa3D's ESWC files add columns after the seventh; they are read and ignored here. Fields may
be separated by spaces, tabs or commas (Vaa3D accepts all three).

In the BigNeuron data x, y, z are voxel coordinates and map to array index ``[z, y, x]``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_ext.io.atomic import atomic_output_path

SWC_COLUMNS = ("id", "type", "x", "y", "z", "radius", "parent")
_FIELD_SEPARATOR = re.compile(r"[\s,]+")


@dataclass(frozen=True)
class SWCTree:
    """A neuron reconstruction: one entry per SWC node, in file order.

    Attributes
    ----------
    ids : (n,) int64 array
        Node ids as written in the file (unique, any order).
    types : (n,) int64 array
        SWC structure types (1 soma, 2 axon, 3 basal dendrite, ...).
    coordinates : (n, 3) float64 array
        ``x, y, z`` of each node.
    radii : (n,) float64 array
    parent_ids : (n,) int64 array
        Parent node id, negative for a root.
    source : str
        Where the tree was read from (used in messages), or ``""``.
    """

    ids: np.ndarray
    types: np.ndarray
    coordinates: np.ndarray
    radii: np.ndarray
    parent_ids: np.ndarray
    source: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def parent_index(self) -> np.ndarray:
        """Row index of each node's parent, ``-1`` for roots."""
        order = np.argsort(self.ids, kind="stable")
        position = np.clip(np.searchsorted(self.ids, self.parent_ids, sorter=order), 0, len(order) - 1)
        rows = order[position]
        # Validation guarantees every non-negative parent id exists.
        return np.where(self.parent_ids >= 0, rows, -1).astype(np.int64)

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Every parent-child edge as ``(child_xyz, parent_xyz)``, two ``(n_edges, 3)`` arrays in file order.

        Roots contribute no edge; a root without children (an isolated node) is therefore in no edge.
        """
        parent_rows = self.parent_index
        has_parent = parent_rows >= 0
        return self.coordinates[has_parent], self.coordinates[parent_rows[has_parent]]

    def scaled(self, spacing) -> "SWCTree":
        """A copy with ``x, y, z`` multiplied by ``spacing`` (one number, or three: x, y, z); radii unchanged."""
        factors = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
        if not np.all(np.isfinite(factors)) or np.any(factors <= 0):
            raise ValueError(f"spacing must be positive and finite, got {spacing!r}")
        return SWCTree(self.ids, self.types, self.coordinates * factors, self.radii, self.parent_ids, self.source)

    def translated(self, offset) -> "SWCTree":
        """A copy shifted by ``offset`` (x, y, z)."""
        offset = np.broadcast_to(np.asarray(offset, dtype=np.float64), (3,))
        return SWCTree(self.ids, self.types, self.coordinates + offset, self.radii, self.parent_ids, self.source)


def tree_from_arrays(ids, coordinates, parent_ids, types=None, radii=None, source: str = "") -> SWCTree:
    """Build and validate an :class:`SWCTree` from arrays (for trees made in code rather than read from a file)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    n = len(ids)
    coordinates = np.asarray(coordinates, dtype=np.float64).reshape(n, 3)
    parent_ids = np.asarray(parent_ids, dtype=np.int64).reshape(n)
    types = np.full(n, 3, dtype=np.int64) if types is None else np.asarray(types, dtype=np.int64).reshape(n)
    radii = np.ones(n, dtype=np.float64) if radii is None else np.asarray(radii, dtype=np.float64).reshape(n)
    tree = SWCTree(ids, types, coordinates, radii, parent_ids, source)
    _validate(tree, line_numbers=None)
    return tree


def read_swc(path: str | os.PathLike) -> SWCTree:
    """Read an SWC (or ESWC) file.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    SWCTree

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file is malformed; the message names the file and line: fewer than 7 fields, a field that is not a
        number, an id or type that is not an integer, a non-finite coordinate, a duplicate id, a node that is its own
        parent, a parent id that no node has, or no node at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SWC file not found: {path}")
    rows: list[tuple[float, ...]] = []
    line_numbers: list[int] = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line_number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            fields = _FIELD_SEPARATOR.split(text)
            if len(fields) < len(SWC_COLUMNS):
                raise ValueError(
                    f"{path}:{line_number}: expected 7 fields (id type x y z radius parent), got {len(fields)}: "
                    f"{text!r}"
                )
            try:
                values = tuple(float(field) for field in fields[: len(SWC_COLUMNS)])
            except ValueError:
                raise ValueError(f"{path}:{line_number}: non-numeric field in {text!r}") from None
            for column in ("id", "type", "parent"):
                value = values[SWC_COLUMNS.index(column)]
                if not float(value).is_integer():
                    raise ValueError(f"{path}:{line_number}: {column} must be an integer, got {value!r}")
            if not all(np.isfinite(values[2:5])):
                raise ValueError(f"{path}:{line_number}: coordinates must be finite, got {text!r}")
            rows.append(values)
            line_numbers.append(line_number)
    if not rows:
        raise ValueError(f"{path}: no SWC node found (only comments or blank lines)")
    table = np.asarray(rows, dtype=np.float64)
    tree = SWCTree(
        ids=table[:, 0].astype(np.int64),
        types=table[:, 1].astype(np.int64),
        coordinates=table[:, 2:5].copy(),
        radii=table[:, 5].copy(),
        parent_ids=table[:, 6].astype(np.int64),
        source=str(path),
    )
    _validate(tree, line_numbers=np.asarray(line_numbers))
    return tree


def _validate(tree: SWCTree, line_numbers: np.ndarray | None) -> None:
    """Check ids are unique and every parent exists; name the file and line of the first offence."""
    where = tree.source or "SWC tree"

    def location(row: int) -> str:
        return f"{where}:{line_numbers[row]}" if line_numbers is not None else f"{where} (node row {row})"

    if len(tree.ids) == 0:
        raise ValueError(f"{where}: no SWC node")
    order = np.argsort(tree.ids, kind="stable")
    sorted_ids = tree.ids[order]
    duplicated = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if duplicated.size:
        first, second = sorted(order[duplicated[0]: duplicated[0] + 2])
        raise ValueError(f"{location(second)}: duplicate node id {tree.ids[second]} (first used at {location(first)})")
    self_parent = np.flatnonzero(tree.parent_ids == tree.ids)
    if self_parent.size:
        row = self_parent[0]
        raise ValueError(f"{location(row)}: node {tree.ids[row]} is its own parent")
    has_parent = tree.parent_ids >= 0
    known = np.isin(tree.parent_ids, tree.ids)
    dangling = np.flatnonzero(has_parent & ~known)
    if dangling.size:
        row = dangling[0]
        # Vaa3D would silently attach such a node to the first node of the file; we refuse instead.
        raise ValueError(
            f"{location(row)}: parent id {tree.parent_ids[row]} of node {tree.ids[row]} is not in the file "
            f"({dangling.size} node(s) with a missing parent)"
        )


def write_swc(tree: SWCTree, path: str | os.PathLike, overwrite: bool = False, comment: str = "") -> Path:
    """Write ``tree`` as SWC (``id type x y z radius parent``), atomically (temporary file, then rename).

    Raises ``FileExistsError`` if ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {text}" for text in comment.splitlines()] + ["# " + " ".join(SWC_COLUMNS)]
    for node_id, node_type, (x, y, z), radius, parent in zip(
        tree.ids, tree.types, tree.coordinates, tree.radii, tree.parent_ids
    ):
        lines.append(f"{node_id} {node_type} {x:.6f} {y:.6f} {z:.6f} {radius:.6f} {parent}")
    with atomic_output_path(path) as temporary:
        temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
