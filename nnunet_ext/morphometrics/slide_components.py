"""Connected components of a mask too large for memory, from its chunks: exact global labels and sums.

Each chunk core is labelled on its own (4-connected, as ``scipy.ndimage.label``'s default and AxonDeepSeg's
``measure.label(connectivity=1)``); a component that crosses core borders is made of parts in several cores. The
parts are joined where two 4-neighbouring pixels on either side of a border are both set, with SciPy's sparse graph
``connected_components``, and the components numbered 1..n in raster order of their first pixel, as in memory.
Only each core's four border lines and a few numbers per part travel to the driver, so a whole nerve's fascicles
are labelled exactly with memory for one chunk per worker.

Why not ``dask_image.ndmeasure.label``: it would add a dependency, its labels are not in raster order, and the
chunk measurement needs the per-part sums in the same pass over the slide anyway.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnunet_ext.io.slides import Block


@dataclass
class CoreParts:
    """The components of one chunk core: what joining them needs and what is summed over them.

    ``labels`` is not kept (a core's labels are recomputed where they are needed: labelling is cheaper than
    storing them), only per-part values indexed by the local label (index 0: outside the mask).
    """

    count: int
    first: np.ndarray  # (count + 1,) int64: global raster index (y * width + x) of each part's first pixel
    top: np.ndarray  # local labels along the core's first row
    bottom: np.ndarray  # ... last row
    left: np.ndarray  # ... first column
    right: np.ndarray  # ... last column
    sums: dict  # name -> (count + 1,) array of per-part sums (pixels, axon pixels, ...)


def core_parts(labels: np.ndarray, count: int, core: Block, slide_width: int, **sums) -> CoreParts:
    """The :class:`CoreParts` of a labelled core (:func:`~nnunet_ext.morphometrics.kernels.label_components_4`);
    ``sums`` maps names to per-part arrays (``count + 1``). ``pixels`` (each part's pixel count) is always among
    them."""
    from nnunet_ext.morphometrics import kernels

    stats = kernels.label_stats(labels, count, 0, 0)
    pixels, local_first = stats[0], stats[-1]
    rows, cols = np.divmod(local_first, labels.shape[1])
    first = np.where(local_first >= 0, (rows + core.y0) * slide_width + cols + core.x0, -1)
    return CoreParts(count, first, labels[0].copy(), labels[-1].copy(), labels[:, 0].copy(), labels[:, -1].copy(),
                     {"pixels": pixels, **sums})


@dataclass
class GlobalComponents:
    """What :func:`merge_core_parts` returns."""

    count: int
    lookup: list  # per core: (count + 1,) int64 array, local label -> global label (0: outside the mask)
    sums: dict  # name -> (count + 1,) array of per-component sums (index 0 unused)

    def global_labels(self, core_index: int, local: np.ndarray) -> np.ndarray:
        """Global labels of local labels of core ``core_index``."""
        return self.lookup[core_index][local]


def merge_core_parts(parts: list[CoreParts], grid: list[Block]) -> GlobalComponents:
    """Join the parts of every core (:func:`core_parts`, in the order of ``grid``) into global components
    numbered 1..n in raster order of their first pixel, and sum each part's values into its component."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    counts = np.array([p.count for p in parts], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    nodes = int(offsets[-1])
    where = {(core.y0, core.x0): i for i, core in enumerate(grid)}
    sources, targets = [], []
    for i, core in enumerate(grid):
        for j, own, theirs in ((where.get((core.y0, core.x1)), "right", "left"),
                               (where.get((core.y1, core.x0)), "bottom", "top")):
            if j is None:
                continue
            a, b = getattr(parts[i], own), getattr(parts[j], theirs)
            joined = (a > 0) & (b > 0)
            sources.append(offsets[i] + a[joined] - 1)
            targets.append(offsets[j] + b[joined] - 1)
    if nodes == 0:
        names = parts[0].sums if parts else {"pixels": None}
        return GlobalComponents(0, [np.zeros(p.count + 1, np.int64) for p in parts],
                                {name: np.zeros(1, np.int64) for name in names})
    sources = np.concatenate(sources) if sources else np.zeros(0, np.int64)
    targets = np.concatenate(targets) if targets else np.zeros(0, np.int64)
    pairs = np.unique(np.stack([sources, targets], axis=1), axis=0) if len(sources) else np.zeros((0, 2), np.int64)
    graph = coo_matrix((np.ones(len(pairs), bool), (pairs[:, 0], pairs[:, 1])), shape=(nodes, nodes)).tocsr()
    n, component = connected_components(graph, directed=False)
    first = np.full(n, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, component, np.concatenate([p.first[1:] for p in parts]))
    rank = np.empty(n, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(1, n + 1)
    node_label = rank[component]
    lookup = [np.concatenate([[0], node_label[offsets[i]:offsets[i + 1]]]) for i in range(len(parts))]
    sums = {}
    for name in parts[0].sums:
        values = np.concatenate([np.asarray(p.sums[name])[1:] for p in parts])
        total = np.zeros(n + 1, values.dtype)
        np.add.at(total, node_label, values)
        sums[name] = total
    return GlobalComponents(n, lookup, sums)
