"""Distances between two neuron reconstructions, exactly as Vaa3D's ``neuron_distance`` plugin defines them.

The BigNeuron papers compare a reconstruction with a reference by Vaa3D's ``neuron_distance``
(``neuron_score_rounding_nearest_neighbor`` in ``neuron_sim_scores.cpp``, Peng et al.):

1. Every parent-child edge of tree 1 (child ``c``, parent ``p``, length ``L``) is sampled at
   ``N = int(1 + L + 0.5)`` points ``c + j (p - c) / (N - 1)``, ``j = 0 .. N-1``: both ends included, so a node
   shared by several edges is sampled once per edge; an edge shorter than 0.5 gives one point, the child. Roots
   have no edge; an isolated root (no children) contributes no point.
2. Each point's distance to tree 2 is its distance to the nearest *edge segment* of tree 2 (not to its nodes);
   isolated nodes of tree 2 are no targets.
3. ``ESA_12`` (entire-structure average) is the mean of these distances; ``ESA_21`` the same from tree 2 to tree 1;
   ``ESA = (ESA_12 + ESA_21) / 2``.
4. ``DSA`` (different-structure average) is the same over the points at distance ``>= threshold`` (2 voxels in
   Vaa3D): the mean of the two directional means, the one directional mean alone if only one direction has such
   points, and 0 if neither has.
5. ``PDS`` (percentage of different structure) is the mean of the two fractions of points at ``>= threshold``
   (a fraction in [0, 1], as Vaa3D prints it).

Differences from Vaa3D, all deliberate: coordinates and the projection are computed in double precision (Vaa3D
reads coordinates as ``float`` and computes the projection parameter in ``float``; differences are below 1e-4
voxel); a parent id that no node has is an error (Vaa3D silently attaches such a node to the first node of the
file); a tree without any edge is an error (Vaa3D prints a message and returns zeros).

With ``spacing``, coordinates are scaled first (x, y, z) and everything (sampling, distances, threshold) is in the
scaled unit; without it, in the SWC's own unit (voxels for BigNeuron).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from nnunet_ext.io.swc import SWCTree, read_swc

#: Vaa3D's default "visible spatial distance" threshold (``d_thres = 2.0`` in neuron_sim_scores.cpp).
VAA3D_DISTANCE_THRESHOLD = 2.0


@dataclass(frozen=True)
class TracingMetrics:
    """Vaa3D ``neuron_distance`` scores between tree 1 and tree 2 (see the module docstring)."""

    ESA_12: float
    ESA_21: float
    ESA: float
    DSA: float
    PDS: float
    PDS_12: float
    PDS_21: float
    n_points_1: int
    n_points_2: int

    def as_dict(self) -> dict:
        return asdict(self)


def sample_edge_points(child_xyz: np.ndarray, parent_xyz: np.ndarray) -> np.ndarray:
    """Vaa3D's sample points of edges: ``N = int(1 + L + 0.5)`` evenly spaced points from child to parent.

    Parameters
    ----------
    child_xyz, parent_xyz : (n_edges, 3) arrays
        Edge ends, as returned by :meth:`SWCTree.edges`.

    Returns
    -------
    (n_points, 3) float64 array
        Points edge by edge, each edge's points from the child (``j = 0``) to the parent (``j = N - 1``).
    """
    child_xyz = np.asarray(child_xyz, dtype=np.float64).reshape(-1, 3)
    parent_xyz = np.asarray(parent_xyz, dtype=np.float64).reshape(-1, 3)
    lengths = np.linalg.norm(parent_xyz - child_xyz, axis=1)
    counts = (1.0 + lengths + 0.5).astype(np.int64)  # int() truncates, as in C++
    edge_of_point = np.repeat(np.arange(len(lengths)), counts)
    first_point_of_edge = np.cumsum(counts) - counts
    j = np.arange(counts.sum()) - first_point_of_edge[edge_of_point]
    # Vaa3D's order of operations (step = (parent - child) / (N - 1), point = child + step * j), so that points
    # meant to fall on a round distance do (e.g. exactly at the threshold).
    step_fraction = np.where(counts > 1, 1.0 / np.maximum(counts - 1, 1), 0.0)
    step = (parent_xyz - child_xyz) * step_fraction[:, None]
    return child_xyz[edge_of_point] + step[edge_of_point] * j[:, None]


def point_to_segment_distances(points: np.ndarray, seg_start: np.ndarray, seg_end: np.ndarray) -> np.ndarray:
    """Euclidean distance from ``points[i]`` to the segment ``[seg_start[i], seg_end[i]]`` (row by row).

    The projection onto the segment's line is clamped to the segment, which is what Vaa3D's
    ``dist_pt_to_line_seg`` computes (it takes the nearer end when the projection falls outside); a degenerate
    segment (both ends equal) gives the distance to that point.
    """
    direction = seg_end - seg_start
    squared_length = np.einsum("ij,ij->i", direction, direction)
    offset = points - seg_start
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.einsum("ij,ij->i", offset, direction) / squared_length
    t = np.where(squared_length > 0, np.clip(t, 0.0, 1.0), 0.0)
    return np.linalg.norm(offset - direction * t[:, None], axis=1)


def distances_to_segments(points: np.ndarray, seg_start: np.ndarray, seg_end: np.ndarray) -> np.ndarray:
    """Distance from each point to the nearest of a set of segments, exactly (not approximated).

    A KD-tree prunes the candidates: each segment is represented by index points along it no farther apart than
    ``step``, so any point of a segment lies within ``step / 2`` of one of its index points. If ``r`` is a point's
    distance to the nearest index point (an upper bound of the true distance ``d``), the nearest segment has an
    index point within ``d + step / 2 <= r + step / 2``; only the segments owning index points in that ball are
    measured exactly (the 8 nearest index points when they already cover that ball, else a ball query). The
    result equals the brute-force minimum over all segments.

    Parameters
    ----------
    points : (n, 3) array
    seg_start, seg_end : (m, 3) arrays, m >= 1

    Returns
    -------
    (n,) float64 array
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    seg_start = np.asarray(seg_start, dtype=np.float64).reshape(-1, 3)
    seg_end = np.asarray(seg_end, dtype=np.float64).reshape(-1, 3)
    if len(seg_start) == 0:
        raise ValueError("no segment to measure the distance to")
    if len(points) == 0:
        return np.zeros(0)
    lengths = np.linalg.norm(seg_end - seg_start, axis=1)
    positive = lengths[lengths > 0]
    # Index spacing: about one index point per typical edge, but never more than ~2 million index points.
    step = max(float(np.median(positive)) if positive.size else 1.0, float(lengths.sum()) / 2e6, 1e-9)
    pieces = np.maximum(np.ceil(lengths / step).astype(np.int64), 1)
    segment_of_index_point = np.repeat(np.arange(len(lengths)), pieces + 1)
    first = np.cumsum(pieces + 1) - (pieces + 1)
    fraction = (np.arange(len(segment_of_index_point)) - first[segment_of_index_point]) / pieces[
        segment_of_index_point
    ]
    index_points = seg_start[segment_of_index_point] + (
        seg_end[segment_of_index_point] - seg_start[segment_of_index_point]
    ) * fraction[:, None]
    index_tree = cKDTree(index_points)
    # Most points: their k nearest index points already include every index point within the radius, so the
    # candidates are those k (extra candidates are harmless: each is a real segment distance >= the minimum).
    k = min(8, len(index_points))
    near_distances, near_index_points = index_tree.query(points, k=k, workers=-1)
    near_distances = near_distances.reshape(len(points), k)
    near_index_points = near_index_points.reshape(len(points), k)
    upper_bound = near_distances[:, 0]
    # A relative margin keeps the nearest index point inside the ball despite rounding.
    radius = upper_bound + step / 2 + 1e-9 * (1.0 + upper_bound)
    complete = (near_distances[:, -1] > radius) | (k == len(index_points))
    result = np.empty(len(points))
    rows = np.flatnonzero(complete)
    for begin in range(0, len(rows), 50000):  # chunks bound the (rows x k) temporaries
        block = rows[begin:begin + 50000]
        segments = segment_of_index_point[near_index_points[block]].reshape(-1)
        distances = point_to_segment_distances(np.repeat(points[block], k, axis=0), seg_start[segments],
                                               seg_end[segments])
        result[block] = distances.reshape(len(block), k).min(axis=1)
    # The rest (crowded neighbourhoods, far points): every index point in the ball.
    rows = np.flatnonzero(~complete)
    if rows.size:
        neighbours = index_tree.query_ball_point(points[rows], radius[rows], return_sorted=False, workers=-1)
        counts = np.fromiter((len(n) for n in neighbours), dtype=np.int64, count=len(neighbours))
        flat_index_points = np.fromiter((i for n in neighbours for i in n), dtype=np.int64, count=int(counts.sum()))
        query_rows = np.repeat(np.arange(len(rows)), counts)
        # One segment usually owns several index points in the ball: measure each (point, segment) pair once;
        # sorted keys keep each point's candidates contiguous, in order, for reduceat.
        keys = np.unique(query_rows * len(lengths) + segment_of_index_point[flat_index_points])
        pair_rows, pair_segments = np.divmod(keys, len(lengths))
        distances = point_to_segment_distances(points[rows[pair_rows]], seg_start[pair_segments],
                                               seg_end[pair_segments])
        group_starts = np.flatnonzero(np.r_[True, pair_rows[1:] != pair_rows[:-1]])
        result[rows] = np.minimum.reduceat(distances, group_starts)
    return result


def _as_tree(tree: SWCTree | str | os.PathLike) -> SWCTree:
    return tree if isinstance(tree, SWCTree) else read_swc(tree)


def directional_distances(tree_from: SWCTree, tree_to: SWCTree) -> np.ndarray:
    """Distances of Vaa3D's sample points of ``tree_from``'s edges to the nearest edge of ``tree_to``."""
    starts_from, ends_from = tree_from.edges()
    starts_to, ends_to = tree_to.edges()
    for tree, starts in ((tree_from, starts_from), (tree_to, starts_to)):
        if len(starts) == 0:
            raise ValueError(
                f"{tree.source or 'SWC tree'}: no parent-child edge ({len(tree)} node(s), all roots); "
                "tracing distances need at least one edge in each tree"
            )
    return distances_to_segments(sample_edge_points(starts_from, ends_from), starts_to, ends_to)


def neuron_distance(
    tree_1: SWCTree | str | os.PathLike,
    tree_2: SWCTree | str | os.PathLike,
    spacing=None,
    threshold: float = VAA3D_DISTANCE_THRESHOLD,
) -> TracingMetrics:
    """ESA, DSA and PDS between two reconstructions, as Vaa3D's ``neuron_distance`` (see the module docstring).

    Parameters
    ----------
    tree_1, tree_2 : SWCTree or path to an SWC file
        Usually the reference and the reconstruction; ``_12`` scores go from tree 1's points to tree 2.
    spacing : float or (3,) sequence, optional
        Scale of x, y, z (e.g. um per voxel) applied to both trees before anything else.
    threshold : float
        Distance at or above which a point counts as "different structure" (Vaa3D: 2), in the unit after scaling.

    Returns
    -------
    TracingMetrics
        The scores are symmetric: swapping the trees swaps ``_12`` and ``_21`` and leaves ESA, DSA, PDS unchanged.
    """
    tree_1, tree_2 = _as_tree(tree_1), _as_tree(tree_2)
    if spacing is not None:
        tree_1, tree_2 = tree_1.scaled(spacing), tree_2.scaled(spacing)
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold!r}")
    distances_12 = directional_distances(tree_1, tree_2)
    distances_21 = directional_distances(tree_2, tree_1)
    far_12 = distances_12[distances_12 >= threshold]
    far_21 = distances_21[distances_21 >= threshold]
    far_means = [far.mean() for far in (far_12, far_21) if far.size]
    return TracingMetrics(
        ESA_12=float(distances_12.mean()),
        ESA_21=float(distances_21.mean()),
        ESA=float((distances_12.mean() + distances_21.mean()) / 2),
        DSA=float(np.mean(far_means)) if far_means else 0.0,
        PDS=float((far_12.size / distances_12.size + far_21.size / distances_21.size) / 2),
        PDS_12=float(far_12.size / distances_12.size),
        PDS_21=float(far_21.size / distances_21.size),
        n_points_1=int(distances_12.size),
        n_points_2=int(distances_21.size),
    )


def neuron_distance_on_folders(
    folder_1: str | os.PathLike,
    folder_2: str | os.PathLike,
    spacing=None,
    threshold: float = VAA3D_DISTANCE_THRESHOLD,
    allow_missing: bool = False,
    progress: bool = True,
):
    """:func:`neuron_distance` for every SWC file name present in both folders.

    Files pair by identical name (``*.swc`` and ``*.eswc``). A name present in only one folder is an error unless
    ``allow_missing`` (then it is skipped with a warning).

    Returns
    -------
    pandas.DataFrame
        One row per pair: ``name``, ``file_1``, ``file_2`` and the :class:`TracingMetrics` fields.
    """
    import warnings

    import pandas as pd
    from tqdm import tqdm

    folder_1, folder_2 = Path(folder_1), Path(folder_2)
    for folder in (folder_1, folder_2):
        if not folder.is_dir():
            raise FileNotFoundError(f"folder not found: {folder}")

    def swc_names(folder: Path) -> set[str]:
        return {p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".swc", ".eswc")}

    names_1, names_2 = swc_names(folder_1), swc_names(folder_2)
    common = sorted(names_1 & names_2)
    unpaired = sorted((names_1 ^ names_2))
    if unpaired:
        message = (
            f"{len(unpaired)} SWC file(s) have no counterpart of the same name in the other folder "
            f"({folder_1} vs {folder_2}): {', '.join(unpaired[:5])}{' ...' if len(unpaired) > 5 else ''}"
        )
        if not allow_missing:
            raise ValueError(message + " (use allow_missing / --allow-missing to skip them)")
        warnings.warn(message + "; skipped", stacklevel=2)
    if not common:
        raise ValueError(f"no SWC file name is present in both {folder_1} and {folder_2}")
    rows = []
    for name in tqdm(common, desc="tracing metrics", unit="pair", disable=not progress):
        metrics = neuron_distance(folder_1 / name, folder_2 / name, spacing=spacing, threshold=threshold)
        rows.append({"name": name, "file_1": str(folder_1 / name), "file_2": str(folder_2 / name),
                     **metrics.as_dict()})
    return pd.DataFrame(rows)
