"""Geometry of the phantoms: fibre ellipses, their rasterisation and their placement without overlap.

An axon is an ellipse with semi-axes ``a >= b`` (pixels), orientation ``theta`` (skimage's convention: angle between
the row axis and the major axis); its fibre is the concentric ellipse ``(a + t, b + t)``, the myelin thickness ``t``
chosen so that the equivalent-diameter g-ratio ``sqrt(a b) / sqrt((a + t)(b + t))`` equals the sampled g-ratio
(:func:`myelin_thickness_for_gratio`). Fibres are placed by rejection sampling, largest first, so that they never
overlap; a share of them is pushed into contact with a neighbour (their masks then share a boundary, as touching
fibres do in real tissue), the others keep a gap of at least ``min_gap_px`` pixels (:func:`place_fibres`). Fibres
may be cut by the image border.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def myelin_thickness_for_gratio(a: np.ndarray, b: np.ndarray, gratio: np.ndarray) -> np.ndarray:
    """Thickness ``t`` such that ``sqrt(a b) / sqrt((a + t)(b + t)) == gratio``.

    Parameters
    ----------
    a, b : array_like
        Semi-axes of the axon ellipse (any length unit).
    gratio : array_like
        Target g-ratio(s) in (0, 1].

    Returns
    -------
    ndarray
        The positive root of ``t**2 + (a + b) t + a b (1 - 1 / g**2) = 0``, in the unit of ``a`` and ``b``.
    """
    a, b, gratio = np.asarray(a, float), np.asarray(b, float), np.asarray(gratio, float)
    s = a + b
    return (-s + np.sqrt(s * s - 4.0 * a * b * (1.0 - 1.0 / gratio**2))) / 2.0


def _ellipse_extent(a: float, b: float, theta: float) -> tuple[float, float]:
    """Half extents (rows, cols) of an ellipse with major axis (cos theta, sin theta) in (row, col)."""
    c, s = math.cos(theta), math.sin(theta)
    return math.hypot(a * c, b * s), math.hypot(a * s, b * c)


def rasterise_ellipse(
    cy: float, cx: float, a: float, b: float, theta: float, shape: tuple[int, int]
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Pixels whose centres lie inside the ellipse, on its bounding box clipped to the image.

    Returns ``(bbox slices, boolean mask of the box)``, or None when the ellipse misses the image.
    """
    half_r, half_c = _ellipse_extent(a, b, theta)
    r0, r1 = max(int(math.floor(cy - half_r)), 0), min(int(math.ceil(cy + half_r)) + 1, shape[0])
    c0, c1 = max(int(math.floor(cx - half_c)), 0), min(int(math.ceil(cx + half_c)) + 1, shape[1])
    if r0 >= r1 or c0 >= c1:
        return None
    dr = np.arange(r0, r1, dtype=np.float64)[:, None] - cy
    dc = np.arange(c0, c1, dtype=np.float64)[None, :] - cx
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    along = dr * cos_t + dc * sin_t
    across = dc * cos_t - dr * sin_t
    inside = (along / a) ** 2 + (across / b) ** 2 <= 1.0
    return (slice(r0, r1), slice(c0, c1)), inside


def _overlaps(occupied: np.ndarray, raster) -> bool:
    if raster is None:
        return False
    box, inside = raster
    return bool(occupied[box][inside].any())  # any nonzero owner


def place_fibres(
    rng: np.random.Generator,
    shape: tuple[int, int],
    a: np.ndarray,
    b: np.ndarray,
    t: np.ndarray,
    theta: np.ndarray,
    touching_fraction: float,
    min_gap_px: float,
    max_attempts: int,
) -> list[tuple[int, float, float]]:
    """Rejection-sample non-overlapping centres, largest fibre first. Returns (index, cy, cx) of placed fibres.

    A fibre is slid into contact with a placed one with a probability equal to the shortfall of touching fibres
    against ``touching_fraction``, which keeps the share of touching fibres near it throughout the size range.
    """
    owner = np.zeros(shape, dtype=np.int32)  # 1 + placement order of the fibre covering each pixel
    placed: list[tuple[int, float, float]] = []
    touching: list[bool] = []
    centres = np.empty((len(a), 2))
    outer = np.empty(len(a))  # circumscribed radius of each placed fibre
    inner = np.empty(len(a))  # inscribed radius
    height, width = shape
    for index in np.argsort(-(a + t) * (b + t), kind="stable"):
        fa, fb, th = a[index] + t[index], b[index] + t[index], theta[index]
        position = None
        shortfall = touching_fraction * (len(placed) + 1) - sum(touching)
        in_contact = bool(placed) and touching_fraction > 0 and rng.random() < shortfall
        if in_contact:
            position = _contact_position(rng, owner, placed, touching, a, t, fa, fb, th, max_attempts)
        if position is None:
            in_contact = False
            # Keep a gap around fibres that are not meant to touch: test the fibre grown by the gap. Centre distances
            # settle most candidates (certainly apart / certainly overlapping) before any rasterising.
            n = len(placed)
            for _ in range(max_attempts):
                cy, cx = rng.uniform(0, height - 1), rng.uniform(0, width - 1)
                distance = np.hypot(centres[:n, 0] - cy, centres[:n, 1] - cx)
                if (distance < inner[:n] + fb + min_gap_px).any():
                    continue
                if (distance > outer[:n] + fa + min_gap_px + 1.0).all() or not _overlaps(
                    owner, rasterise_ellipse(cy, cx, fa + min_gap_px, fb + min_gap_px, th, shape)
                ):
                    position = (cy, cx)
                    break
        if position is None:
            continue
        cy, cx = position
        box, inside = rasterise_ellipse(cy, cx, fa, fb, th, shape)
        touching.append(False)
        if in_contact:
            for neighbour in _adjacent_owners(owner, box, inside):
                touching[neighbour - 1] = True
                touching[-1] = True
        owner[box][inside] = len(placed) + 1
        centres[len(placed)] = position
        outer[len(placed)], inner[len(placed)] = fa, fb
        placed.append((int(index), cy, cx))
    return placed


def _adjacent_owners(owner: np.ndarray, box: tuple[slice, slice], inside: np.ndarray) -> np.ndarray:
    """Labels in ``owner`` that are 8-adjacent to the mask ``inside`` placed at ``box``."""
    rows, cols = box
    r0, c0 = max(rows.start - 1, 0), max(cols.start - 1, 0)
    r1, c1 = min(rows.stop + 1, owner.shape[0]), min(cols.stop + 1, owner.shape[1])
    grown = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    grown[rows.start - r0 : rows.stop - r0, cols.start - c0 : cols.stop - c0] = inside
    grown = ndimage.binary_dilation(grown, structure=np.ones((3, 3), dtype=bool))
    neighbours = owner[r0:r1, c0:c1][grown]
    return np.unique(neighbours[neighbours > 0])


def _contact_position(
    rng, owner, placed, touching, a, t, fa, fb, theta, attempts
) -> tuple[float, float] | None:
    """Slide a fibre towards a placed neighbour until it touches; None if no room was found.

    Neighbours that do not touch anything yet are preferred, so that each contact adds two touching fibres.
    """
    shape = owner.shape
    lonely = [i for i, is_touching in enumerate(touching) if not is_touching]
    candidates = lonely if lonely else list(range(len(placed)))
    for _ in range(max(attempts // 4, 4)):
        anchor_index, ay, ax = placed[candidates[rng.integers(len(candidates))]]
        direction = rng.uniform(0, 2 * math.pi)
        dy, dx = math.sin(direction), math.cos(direction)
        far = a[anchor_index] + t[anchor_index] + fa + 1.0
        cy, cx = ay + far * dy, ax + far * dx
        if not (0 <= cy <= shape[0] - 1 and 0 <= cx <= shape[1] - 1):
            continue
        if _overlaps(owner, rasterise_ellipse(cy, cx, fa, fb, theta, shape)):
            continue
        # Bisect the distance to the anchor's centre: `far` is free, 0 overlaps. The result is free and a quarter
        # pixel closer would overlap, so its pixels are adjacent to another fibre's.
        free, blocked = far, 0.0
        while free - blocked > 0.25:
            middle = 0.5 * (free + blocked)
            raster = rasterise_ellipse(ay + middle * dy, ax + middle * dx, fa, fb, theta, shape)
            if _overlaps(owner, raster):
                blocked = middle
            else:
                free = middle
        return ay + free * dy, ax + free * dx
    return None



def touches_image_border(box: tuple[slice, slice], inside: np.ndarray, shape: tuple[int, int]) -> bool:
    """Whether the rasterised fibre has a pixel in the image's first or last row or column (as AxonDeepSeg)."""
    rows, cols = box
    return bool(
        (rows.start == 0 and inside[0].any())
        or (rows.stop == shape[0] and inside[-1].any())
        or (cols.start == 0 and inside[:, 0].any())
        or (cols.stop == shape[1] and inside[:, -1].any())
    )


def touching_fibres(fiber_labels: np.ndarray, n_fibres: int) -> np.ndarray:
    """Fibres whose pixels are 8-adjacent to another fibre's pixels (what merges them in a binary mask)."""
    touching = np.zeros(n_fibres + 1, dtype=bool)
    padded = np.pad(fiber_labels, 1)
    centre = padded[1:-1, 1:-1]
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        neighbour = padded[1 + dy : padded.shape[0] - 1 + dy, 1 + dx : padded.shape[1] - 1 + dx]
        contact = (centre > 0) & (neighbour > 0) & (centre != neighbour)
        touching[centre[contact]] = True
        touching[neighbour[contact]] = True
    return touching[1:]
