"""Synthetic myelinated-axon phantoms with exactly known truth, written as a BIDS microscopy dataset.

A phantom is a 2D image of myelinated fibres cut in cross-section, with its axon and myelin masks and a table of
every axon's analytic geometry (axon diameter, fibre diameter, g-ratio, ...). Three contrasts imitate the
modalities of AxonDeepSeg's generalist model:

* ``"TEM"``: bright axoplasm with dark organelles, very dark (osmium-stained) myelin, mottled grey tissue around.
* ``"SEM"``: backscatter SEM as in AxonDeepSeg's SEM data: dark axons, bright myelin, dark tissue, noisier.
* ``"BF"``: bright-field light microscopy (toluidine blue semi-thin sections): light background and axons, dark
  myelin rings, blurrier and with lower contrast.

Geometry. An axon is an ellipse with semi-axes ``a >= b`` (pixels), orientation ``theta`` (skimage's convention:
angle between the row axis and the major axis); its fibre is the concentric ellipse ``(a + t, b + t)``, the myelin
thickness ``t`` chosen so that the equivalent-diameter g-ratio ``sqrt(a b) / sqrt((a + t)(b + t))`` equals the
sampled g-ratio. Fibres are placed by rejection sampling, largest first, so that they never overlap; a share of them
is pushed into contact with a neighbour (their masks then share a boundary, as touching fibres do in real tissue),
the others keep a gap of at least ``min_gap_px`` pixels. Fibres may be cut by the image border.

The dataset writer reproduces the layout of AxonDeepSeg's BIDS datasets (``data_axondeepseg_sem``):
``sub-*/micr/sub-*_sample-*_<MOD>.png`` with JSON sidecars holding ``PixelSize`` ([y, x]) and ``PixelSizeUnits``,
and ``derivatives/labels/sub-*/micr/<stem>_seg-{axon,myelin,axonmyelin}-manual.png``, plus the truth table
``derivatives/truth/phantom_truth.csv``.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from typing import TYPE_CHECKING

import numpy as np

from nnunet_ext import __version__

if TYPE_CHECKING:  # pandas and scipy are imported where used, so that `nnunet-ext --help` stays quick
    import pandas as pd

CONTRASTS = ("TEM", "SEM", "BF")

TRUTH_COLUMNS = (
    "axon_id",
    "x0 (px)",
    "y0 (px)",
    "axon_diam (um)",
    "fiber_diam (um)",
    "gratio",
    "myelin_thickness (um)",
    "axon_area (um^2)",
    "myelin_area (um^2)",
    "eccentricity",
    "fiber_eccentricity",
    "orientation",
    "touching",
    "image_border_touching",
    "axon_pixels",
    "myelin_pixels",
)


@dataclass(frozen=True)
class _ContrastStyle:
    """Mean intensities (0..1) and texture strengths of one imaging contrast."""

    background: float
    axon: float
    myelin: float
    organelle: float  # mitochondria / neurofilament clumps inside axons
    unmyelinated: float  # small unmyelinated axons and cell processes in the background
    membrane: float  # thin rim around unmyelinated profiles
    per_fibre_jitter: float  # std of each fibre's myelin / axon intensity offset
    tissue_texture: float  # amplitude of the background's mottled texture
    axon_texture: float  # amplitude of the fine axoplasm texture
    illumination: float  # amplitude of the smooth multiplicative shading
    blur_px: float  # default Gaussian blur sigma (pixels)
    noise: float  # default additive noise std (fraction of the 0..255 range)


_STYLES = {
    "TEM": _ContrastStyle(
        background=0.52, axon=0.78, myelin=0.12, organelle=0.45, unmyelinated=0.68, membrane=0.30,
        per_fibre_jitter=0.03, tissue_texture=0.07, axon_texture=0.03, illumination=0.06, blur_px=0.6, noise=0.05,
    ),
    "SEM": _ContrastStyle(
        background=0.22, axon=0.18, myelin=0.62, organelle=0.32, unmyelinated=0.16, membrane=0.40,
        per_fibre_jitter=0.06, tissue_texture=0.07, axon_texture=0.04, illumination=0.08, blur_px=0.8, noise=0.07,
    ),
    "BF": _ContrastStyle(
        background=0.74, axon=0.84, myelin=0.36, organelle=0.74, unmyelinated=0.80, membrane=0.66,
        per_fibre_jitter=0.04, tissue_texture=0.04, axon_texture=0.015, illumination=0.05, blur_px=1.6, noise=0.03,
    ),
}


@dataclass
class Phantom:
    """One synthetic image with its exact truth.

    Attributes
    ----------
    image : ndarray of uint8, shape (H, W)
        The grey-level image.
    axon_mask, myelin_mask : ndarray of bool, shape (H, W)
        Disjoint axon and myelin masks.
    fiber_labels : ndarray of int32, shape (H, W)
        Instance labels: every fibre pixel (axon or myelin) holds its fibre's ``axon_id``, background is 0.
    truth : pandas.DataFrame
        One row per axon, columns :data:`TRUTH_COLUMNS` (AxonDeepSeg's names and units where they exist). Diameters,
        areas, g-ratio, eccentricities and orientation are analytic (the whole ellipse, also for fibres cut by the
        border; ``x0 (px)``/``y0 (px)`` is the ellipse centre, x the column). Diameters are equivalent diameters
        (``2 sqrt(a b)``), ``orientation`` follows skimage's ``regionprops`` convention (angle between the row axis
        and the major axis, in [-pi/2, pi/2)). Measured on the masks: ``touching`` (the fibre's pixels are
        8-adjacent to another fibre's), ``image_border_touching`` (a fibre pixel lies in the first or last row or
        column), and ``axon_pixels`` / ``myelin_pixels``, the rasterised pixels visible in the image.
    pixel_size_um : float
        Pixel size in micrometres (square pixels).
    contrast : str
        ``"TEM"``, ``"SEM"`` or ``"BF"``.
    parameters : dict
        The generation settings (with the per-contrast defaults filled in), for the record.
    """

    image: np.ndarray
    axon_mask: np.ndarray
    myelin_mask: np.ndarray
    fiber_labels: np.ndarray
    truth: pd.DataFrame
    pixel_size_um: float
    contrast: str
    parameters: dict = field(default_factory=dict)

    @property
    def axonmyelin_label(self) -> np.ndarray:
        """AxonDeepSeg's combined mask: 0 background, 127 myelin, 255 axon (uint8)."""
        label = np.zeros(self.image.shape, dtype=np.uint8)
        label[self.myelin_mask] = 127
        label[self.axon_mask] = 255
        return label


# ----------------------------------------------------------------------------------------------------- geometry
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


def _rasterise_ellipse(
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


def _place_fibres(
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
                    owner, _rasterise_ellipse(cy, cx, fa + min_gap_px, fb + min_gap_px, th, shape)
                ):
                    position = (cy, cx)
                    break
        if position is None:
            continue
        cy, cx = position
        box, inside = _rasterise_ellipse(cy, cx, fa, fb, th, shape)
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
    from scipy import ndimage

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
        if _overlaps(owner, _rasterise_ellipse(cy, cx, fa, fb, theta, shape)):
            continue
        # Bisect the distance to the anchor's centre: `far` is free, 0 overlaps. The result is free and a quarter
        # pixel closer would overlap, so its pixels are adjacent to another fibre's.
        free, blocked = far, 0.0
        while free - blocked > 0.25:
            middle = 0.5 * (free + blocked)
            raster = _rasterise_ellipse(ay + middle * dy, ax + middle * dx, fa, fb, theta, shape)
            if _overlaps(owner, raster):
                blocked = middle
            else:
                free = middle
        return ay + free * dy, ax + free * dx
    return None


# ------------------------------------------------------------------------------------------------------ texture
def _smooth_noise(rng: np.random.Generator, shape, sigma_px: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation and correlation length ``sigma_px``.

    Wide kernels are applied on a coarser grid and interpolated back: the same field at a fraction of the cost.
    """
    from scipy import ndimage

    sigma_px = max(sigma_px, 0.5)
    factor = max(1, int(sigma_px // 3))
    coarse_shape = tuple(-(-n // factor) + 3 for n in shape)
    white = rng.standard_normal(coarse_shape, dtype=np.float32)
    field_ = ndimage.gaussian_filter(white, sigma_px / factor, mode="wrap")
    if factor > 1:
        field_ = ndimage.zoom(field_, factor, order=1)
    field_ = field_[: shape[0], : shape[1]]
    return (field_ - field_.mean()) / max(float(field_.std()), 1e-12)


def _soft_discs(
    rng: np.random.Generator, shape, density_per_px: float, radius_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Round profiles of about ``radius_px`` (radii spread over 0.5x..1.5x) at Poisson-distributed places.

    One Gaussian filter of weighted impulses: a profile of peak ``w`` crosses the 0.5 level at
    ``sigma sqrt(2 ln 2w)``, so random weights give random sizes. Returns the interiors and their rims
    (membranes), both soft masks in 0..1.
    """
    from scipy import ndimage

    sigma = max(radius_px / 1.18, 0.5)  # a unit peak crosses 0.5 at 1.18 sigma
    count = rng.poisson(density_per_px * shape[0] * shape[1])
    relative_radius = rng.uniform(0.5, 1.5, count)
    impulses = np.zeros(shape, dtype=np.float32)
    np.maximum.at(
        impulses,
        (rng.integers(0, shape[0], count), rng.integers(0, shape[1], count)),
        0.5 * np.exp((relative_radius * 1.18) ** 2 / 2),
    )
    field_ = ndimage.gaussian_filter(impulses, sigma) * (2 * math.pi * sigma * sigma)
    interiors = np.clip((field_ - 0.45) / 0.15, 0.0, 1.0)
    rims = np.clip(1.0 - np.abs(field_ - 0.4) / 0.12, 0.0, 1.0)
    return interiors, rims


def _render(
    rng: np.random.Generator,
    style: _ContrastStyle,
    axon_mask: np.ndarray,
    myelin_mask: np.ndarray,
    fiber_labels: np.ndarray,
    n_fibres: int,
    pixel_size_um: float,
    blur_px: float,
    noise: float,
) -> np.ndarray:
    from scipy import ndimage

    shape = axon_mask.shape
    background = ~(axon_mask | myelin_mask)
    um = 1.0 / pixel_size_um  # pixels per micrometre

    # Each fibre gets its own staining offset, as sections never stain evenly.
    myelin_offset = np.concatenate([[0.0], rng.normal(0.0, style.per_fibre_jitter, n_fibres)])
    axon_offset = np.concatenate([[0.0], rng.normal(0.0, style.per_fibre_jitter * 0.6, n_fibres)])
    image = np.full(shape, style.background, dtype=np.float32)
    image[axon_mask] = style.axon + axon_offset[fiber_labels[axon_mask]]
    image[myelin_mask] = style.myelin + myelin_offset[fiber_labels[myelin_mask]]

    # Background tissue: mottled texture at two scales, small unmyelinated axons / glial processes with membranes.
    tissue = 0.6 * _smooth_noise(rng, shape, 0.15 * um) + 0.4 * _smooth_noise(rng, shape, 0.5 * um)
    image[background] += style.tissue_texture * tissue[background]
    profiles, membranes = _soft_discs(rng, shape, 0.5 / (um * um), 0.25 * um)
    image[background] += (style.unmyelinated - style.background) * profiles[background]
    image[background] += (style.membrane - style.background) * 0.7 * membranes[background]

    # Axoplasm: fine neurofilament texture and organelles (mitochondria) away from the myelin.
    inner_axon = ndimage.binary_erosion(axon_mask, iterations=max(int(round(0.1 * um)), 1))
    image[axon_mask] += style.axon_texture * _smooth_noise(rng, shape, 0.03 * um)[axon_mask]
    organelles, organelle_rims = _soft_discs(rng, shape, 1.0 / (um * um), 0.12 * um)
    organelles = np.maximum(organelles, 0.6 * organelle_rims) * inner_axon
    image += (style.organelle - style.axon) * organelles

    # Myelin: faint lamellar grain.
    image[myelin_mask] += 0.5 * style.axon_texture * _smooth_noise(rng, shape, 0.02 * um)[myelin_mask]

    # Uneven illumination / section thickness.
    image *= 1.0 + style.illumination * _smooth_noise(rng, shape, 3.0 * um)
    if blur_px > 0:
        image = ndimage.gaussian_filter(image, blur_px)
    if noise > 0:
        image += noise * rng.standard_normal(shape, dtype=np.float32)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------- generation
def _check_range(name: str, value, low: float, high: float, *, inclusive_low: bool = True) -> tuple[float, float]:
    try:
        lo, hi = (float(value), float(value)) if np.isscalar(value) else (float(value[0]), float(value[1]))
    except (TypeError, IndexError, ValueError):
        raise ValueError(f"{name} must be a number or a (min, max) pair, got {value!r}") from None
    ok_low = lo >= low if inclusive_low else lo > low
    if not (ok_low and hi <= high and lo <= hi):
        bound = "[" if inclusive_low else "("
        raise ValueError(
            f"{name} must be a (min, max) pair with min <= max inside {bound}{low}, {high}], got {value!r}"
        )
    return lo, hi


def generate_phantom(
    shape: tuple[int, int] = (256, 256),
    pixel_size_um: float = 0.1,
    contrast: str = "TEM",
    axon_diameter_um: tuple[float, float] = (1.0, 3.0),
    gratio: tuple[float, float] = (0.55, 0.8),
    density: float = 0.45,
    n_axons: int | None = None,
    touching_fraction: float = 0.2,
    eccentricity: tuple[float, float] = (0.0, 0.7),
    noise: float | None = None,
    blur: float | None = None,
    min_gap_px: float = 2.0,
    seed: int | np.random.SeedSequence | None = 0,
) -> Phantom:
    """Generate one synthetic image of myelinated axons with exactly known truth.

    Parameters
    ----------
    shape : (int, int)
        Image size (rows, columns) in pixels.
    pixel_size_um : float
        Pixel size in micrometres.
    contrast : {"TEM", "SEM", "BF"}
        Imaging contrast (see the module docstring).
    axon_diameter_um : (float, float)
        Range of the axons' equivalent diameters ``2 sqrt(a b)``, sampled uniformly.
    gratio : (float, float)
        Range of g-ratios (axon / fibre equivalent diameter), sampled uniformly, inside (0, 1).
    density : float
        Target fraction of the image area covered by fibres (axon + myelin), in (0, 0.8]. Fibres are drawn until
        their total area reaches it; those that find no room are dropped, so dense targets come out lower.
    n_axons : int, optional
        Draw exactly this many fibres instead (again, those that find no room are dropped).
    touching_fraction : float
        Target share of fibres that touch another fibre (their masks share a boundary, so they merge in a binary
        mask, as touching fibres do in real tissue); the others keep ``min_gap_px`` from every fibre. 0 gives no
        touching fibres at all. Dense packings can fall short; the outcome is the truth's ``touching`` column.
    eccentricity : (float, float)
        Range of axon eccentricities ``sqrt(1 - (b / a)**2)``; 0 gives circles. Orientations are uniform.
    noise : float, optional
        Standard deviation of additive Gaussian noise as a fraction of the 0..255 range; default per contrast
        (TEM 0.05, SEM 0.07, BF 0.03).
    blur : float, optional
        Gaussian blur sigma in pixels, applied before the noise; default per contrast (TEM 0.6, SEM 0.8, BF 1.6).
    min_gap_px : float
        Smallest gap between fibres that are not meant to touch.
    seed : int or numpy.random.SeedSequence, optional
        Seed of the random generator: the same seed gives an identical phantom.

    Returns
    -------
    Phantom
        Image, masks, instance labels and the truth table.
    """
    import pandas as pd

    contrast = str(contrast).upper()
    if contrast not in _STYLES:
        raise ValueError(f"contrast must be one of {', '.join(CONTRASTS)}, got {contrast!r}")
    if len(shape) != 2 or min(shape) < 8:
        raise ValueError(f"shape must be two sizes of at least 8 pixels, got {shape!r}")
    shape = (int(shape[0]), int(shape[1]))
    if not pixel_size_um > 0:
        raise ValueError(f"pixel_size_um must be positive, got {pixel_size_um!r}")
    diam_lo, diam_hi = _check_range("axon_diameter_um", axon_diameter_um, 0.0, math.inf, inclusive_low=False)
    g_lo, g_hi = _check_range("gratio", gratio, 0.0, 1.0, inclusive_low=False)
    ecc_lo, ecc_hi = _check_range("eccentricity", eccentricity, 0.0, 0.99)
    if not 0 < density <= 0.8:
        raise ValueError(f"density (fraction of the area covered by fibres) must be in (0, 0.8], got {density!r}")
    if not 0 <= touching_fraction <= 1:
        raise ValueError(f"touching_fraction must be in [0, 1], got {touching_fraction!r}")
    if n_axons is not None and n_axons < 0:
        raise ValueError(f"n_axons must be >= 0, got {n_axons!r}")
    style = _STYLES[contrast]
    noise = style.noise if noise is None else float(noise)
    blur = style.blur_px if blur is None else float(blur)
    if noise < 0 or blur < 0:
        raise ValueError("noise and blur must be >= 0")
    rng = np.random.default_rng(seed)

    # Sample the fibres' sizes and shapes (pixels) until the target count or covered area is reached.
    axon_diam_px = []
    image_area = shape[0] * shape[1]
    covered = 0.0
    target_count = n_axons if n_axons is not None else 10**9
    while len(axon_diam_px) < target_count and (n_axons is not None or covered < density * image_area):
        d = rng.uniform(diam_lo, diam_hi) / pixel_size_um
        g = rng.uniform(g_lo, g_hi)
        axon_diam_px.append((d, g))
        covered += math.pi * (d / g / 2.0) ** 2
    count = len(axon_diam_px)
    diam = np.array([d for d, _ in axon_diam_px], dtype=float).reshape(count)
    g_ratio = np.array([g for _, g in axon_diam_px], dtype=float).reshape(count)
    ecc = rng.uniform(ecc_lo, ecc_hi, count)
    theta = rng.uniform(-math.pi / 2, math.pi / 2, count)
    axis_ratio = np.sqrt(1.0 - ecc**2)  # b / a
    a = diam / 2.0 / np.sqrt(axis_ratio)
    b = diam / 2.0 * np.sqrt(axis_ratio)
    t = myelin_thickness_for_gratio(a, b, g_ratio)

    placed = _place_fibres(rng, shape, a, b, t, theta, touching_fraction, min_gap_px, max_attempts=200)

    # Rasterise: fibre ellipse first, then its axon; fibres never overlap so the order does not matter.
    fiber_labels = np.zeros(shape, dtype=np.int32)
    axon_mask = np.zeros(shape, dtype=bool)
    rows = []
    for axon_id, (index, cy, cx) in enumerate(sorted(placed, key=lambda p: (p[1], p[2])), start=1):
        fa, fb = a[index] + t[index], b[index] + t[index]
        fibre_box, fibre_inside = _rasterise_ellipse(cy, cx, fa, fb, theta[index], shape)
        fiber_labels[fibre_box][fibre_inside] = axon_id
        axon_raster = _rasterise_ellipse(cy, cx, a[index], b[index], theta[index], shape)
        axon_pixels = 0
        if axon_raster is not None:
            axon_box, axon_inside = axon_raster
            axon_mask[axon_box] |= axon_inside
            axon_pixels = int(axon_inside.sum())
        axon_d, fibre_d = 2 * math.sqrt(a[index] * b[index]), 2 * math.sqrt(fa * fb)
        rows.append(
            {
                "axon_id": axon_id,
                "x0 (px)": cx,
                "y0 (px)": cy,
                "axon_diam (um)": axon_d * pixel_size_um,
                "fiber_diam (um)": fibre_d * pixel_size_um,
                "gratio": axon_d / fibre_d,
                "myelin_thickness (um)": (fibre_d - axon_d) / 2 * pixel_size_um,
                "axon_area (um^2)": math.pi * a[index] * b[index] * pixel_size_um**2,
                "myelin_area (um^2)": math.pi * (fa * fb - a[index] * b[index]) * pixel_size_um**2,
                "eccentricity": ecc[index],
                "fiber_eccentricity": math.sqrt(1.0 - (fb / fa) ** 2),
                "orientation": theta[index],
                "image_border_touching": _on_border(fibre_box, fibre_inside, shape),
                "axon_pixels": axon_pixels,
                "myelin_pixels": int(fibre_inside.sum()) - axon_pixels,
            }
        )
    myelin_mask = (fiber_labels > 0) & ~axon_mask
    truth = pd.DataFrame(rows, columns=[c for c in TRUTH_COLUMNS if c != "touching"])
    truth.insert(TRUTH_COLUMNS.index("touching"), "touching", _touching_ids(fiber_labels, len(rows)))
    truth = truth.astype({"touching": bool, "image_border_touching": bool})

    image = _render(rng, style, axon_mask, myelin_mask, fiber_labels, len(rows), pixel_size_um, blur, noise)
    parameters = dict(
        shape=list(shape), pixel_size_um=float(pixel_size_um), contrast=contrast,
        axon_diameter_um=[diam_lo, diam_hi], gratio=[g_lo, g_hi], density=float(density), n_axons=n_axons,
        touching_fraction=float(touching_fraction), eccentricity=[ecc_lo, ecc_hi], noise=noise, blur=blur,
        min_gap_px=float(min_gap_px),
    )
    return Phantom(image, axon_mask, myelin_mask, fiber_labels, truth, float(pixel_size_um), contrast, parameters)


def _on_border(box: tuple[slice, slice], inside: np.ndarray, shape: tuple[int, int]) -> bool:
    """Whether the rasterised fibre has a pixel in the image's first or last row or column (as AxonDeepSeg)."""
    rows, cols = box
    return bool(
        (rows.start == 0 and inside[0].any())
        or (rows.stop == shape[0] and inside[-1].any())
        or (cols.start == 0 and inside[:, 0].any())
        or (cols.stop == shape[1] and inside[:, -1].any())
    )


def _touching_ids(fiber_labels: np.ndarray, n_fibres: int) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------- BIDS dataset
def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=4) + "\n")


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


def write_bids_phantom_dataset(
    out_dir: str | os.PathLike,
    contrasts: Sequence[str] = ("TEM", "SEM"),
    n_subjects: int = 3,
    samples_per_subject: int = 2,
    shape: tuple[int, int] = (256, 256),
    pixel_size_um: float = 0.1,
    pixel_size_jitter: float = 0.0,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    **phantom_options,
) -> Path:
    """Write phantoms as a BIDS microscopy dataset laid out like AxonDeepSeg's ``data_axondeepseg_sem``.

    Every subject gets ``samples_per_subject`` samples of *each* contrast; sample ids are numbered across the
    dataset (``sub-02_sample-07_SEM.png``), as in AxonDeepSeg's datasets. Files written::

        dataset_description.json, participants.tsv/.json, samples.tsv/.json, README
        sub-XX/micr/sub-XX_sample-YY_<MOD>.png (+ .json sidecar: PixelSize [y, x], PixelSizeUnits "um")
        derivatives/labels/dataset_description.json
        derivatives/labels/sub-XX/micr/<stem>_seg-axon-manual.png, _seg-myelin-manual.png (0/255),
                                       <stem>_seg-axonmyelin-manual.png (0 background, 127 myelin, 255 axon)
        derivatives/truth/dataset_description.json, phantom_truth.csv (one row per axon), phantom_parameters.json

    Parameters
    ----------
    out_dir : path
        Dataset folder to create. It must not exist or be empty unless ``overwrite`` is set.
    contrasts : sequence of {"TEM", "SEM", "BF"}
        Contrasts (BIDS modality suffixes) of every subject's samples.
    n_subjects, samples_per_subject : int
        Number of subjects, and of samples per subject and contrast.
    shape, pixel_size_um :
        Image size and nominal pixel size, passed to :func:`generate_phantom`.
    pixel_size_jitter : float
        Relative spread of the pixel size between samples (uniform in ``pixel_size_um * (1 +/- jitter)``); the
        fibres keep their physical sizes, so they change size in pixels. 0 (default) keeps it fixed.
    seed : int
        Seed of the whole dataset; every image gets an independent child seed, so the dataset is reproducible.
    overwrite : bool
        Replace an existing non-empty ``out_dir``.
    progress : bool
        Show a tqdm progress bar.
    **phantom_options
        Further keyword arguments of :func:`generate_phantom` (``density``, ``touching_fraction``, ...).

    Returns
    -------
    Path
        The dataset folder. It appears complete or not at all: files are written to a temporary sibling folder
        that is renamed at the end.
    """
    import pandas as pd
    from tqdm import tqdm

    out_dir = Path(out_dir).expanduser().absolute()
    contrasts = [str(c).upper() for c in contrasts]
    unknown = [c for c in contrasts if c not in CONTRASTS]
    if not contrasts or unknown or len(set(contrasts)) != len(contrasts):
        raise ValueError(f"contrasts must be distinct values among {', '.join(CONTRASTS)}, got {contrasts!r}")
    if n_subjects < 1 or samples_per_subject < 1:
        raise ValueError("n_subjects and samples_per_subject must be at least 1")
    if not 0 <= pixel_size_jitter < 1:
        raise ValueError(f"pixel_size_jitter must be in [0, 1), got {pixel_size_jitter!r}")
    for reserved in ("seed", "contrast", "shape", "pixel_size_um"):
        if reserved in phantom_options:
            raise ValueError(f"{reserved!r} is set per image by write_bids_phantom_dataset; do not pass it")
    known = set(inspect.signature(generate_phantom).parameters)
    unknown_options = sorted(set(phantom_options) - known)
    if unknown_options:
        raise ValueError(f"unknown phantom option(s) {unknown_options}; generate_phantom accepts {sorted(known)}")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise FileExistsError(f"{out_dir} exists and is not a folder")
        if any(out_dir.iterdir()) and not overwrite:
            raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)

    plan = _dataset_plan(contrasts, n_subjects, samples_per_subject, pixel_size_um, pixel_size_jitter, seed)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        participants, samples, truth_tables = [], [], []
        for item in tqdm(plan, desc="phantoms", unit="image", disable=not progress):
            subject, sample, contrast, size, image_seed = item
            stem = f"{subject}_{sample}_{contrast}"
            micr = staging / subject / "micr"
            label_micr = staging / "derivatives" / "labels" / subject / "micr"
            if not micr.exists():
                micr.mkdir(parents=True)
                label_micr.mkdir(parents=True)
                participants.append({"participant_id": subject, "species": "n/a"})
            phantom = generate_phantom(
                shape=shape, pixel_size_um=size, contrast=contrast, seed=image_seed, **phantom_options
            )
            _save_png(micr / f"{stem}.png", phantom.image)
            _write_json(micr / f"{stem}.json", {"PixelSize": [size, size], "PixelSizeUnits": "um"})
            _save_png(label_micr / f"{stem}_seg-axon-manual.png", phantom.axon_mask.astype(np.uint8) * 255)
            _save_png(label_micr / f"{stem}_seg-myelin-manual.png", phantom.myelin_mask.astype(np.uint8) * 255)
            _save_png(label_micr / f"{stem}_seg-axonmyelin-manual.png", phantom.axonmyelin_label)
            samples.append({"sample_id": sample, "participant_id": subject, "sample_type": "tissue"})
            table = phantom.truth.copy()
            identity = {"subject": subject, "sample": sample, "image": stem, "modality": contrast,
                        "pixel_size (um)": size}
            for position, (name, value) in enumerate(identity.items()):
                table.insert(position, name, value)
            truth_tables.append(table)

        _write_metadata(staging, participants, samples, contrasts)
        truth_dir = staging / "derivatives" / "truth"
        truth_dir.mkdir(parents=True)
        _write_json(
            truth_dir / "dataset_description.json",
            {
                "Name": "nnunet-ext phantoms: analytic per-axon truth",
                "BIDSVersion": "1.7.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "nnunet-ext phantoms", "Version": __version__}],
            },
        )
        pd.concat(truth_tables, ignore_index=True).to_csv(truth_dir / "phantom_truth.csv", index=False)
        _write_json(
            truth_dir / "phantom_parameters.json",
            {
                "contrasts": contrasts, "n_subjects": n_subjects, "samples_per_subject": samples_per_subject,
                "shape": list(shape), "pixel_size_um": pixel_size_um, "pixel_size_jitter": pixel_size_jitter,
                "seed": seed, "phantom_options": {k: _jsonable(v) for k, v in phantom_options.items()},
                "generator": f"nnunet-ext {__version__}",
            },
        )
        _replace_folder(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _dataset_plan(
    contrasts: Sequence[str], n_subjects: int, samples_per_subject: int, pixel_size_um: float,
    pixel_size_jitter: float, seed: int,
) -> list[tuple[str, str, str, float, np.random.SeedSequence]]:
    """(subject, sample, contrast, pixel size, seed) of every image, in writing order."""
    n_images = n_subjects * samples_per_subject * len(contrasts)
    subject_width, sample_width = max(2, len(str(n_subjects))), max(2, len(str(n_images)))
    child_seeds = np.random.SeedSequence(seed).spawn(n_images + 1)
    jitter_rng = np.random.default_rng(child_seeds[-1])
    plan = []
    for subject_number in range(1, n_subjects + 1):
        for _ in range(samples_per_subject):
            for contrast in contrasts:
                size = float(pixel_size_um)
                if pixel_size_jitter:
                    size = float(pixel_size_um * (1 + jitter_rng.uniform(-pixel_size_jitter, pixel_size_jitter)))
                index = len(plan)
                sample = f"sample-{index + 1:0{sample_width}d}"
                plan.append((f"sub-{subject_number:0{subject_width}d}", sample, contrast, size, child_seeds[index]))
    return plan


def _jsonable(value):
    if isinstance(value, (tuple, list, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _write_metadata(root: Path, participants: list[dict], samples: list[dict], contrasts: Iterable[str]) -> None:
    import pandas as pd

    generated_by = [{"Name": "nnunet-ext phantoms", "Version": __version__}]
    _write_json(
        root / "dataset_description.json",
        {
            "Name": "nnunet-ext synthetic myelinated-axon phantoms",
            "BIDSVersion": "1.7.0",
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": ["nnunet-ext phantom generator"],
            "GeneratedBy": generated_by,
        },
    )
    pd.DataFrame(participants).to_csv(root / "participants.tsv", sep="\t", index=False)
    _write_json(
        root / "participants.json",
        {
            "participant_id": {"Description": "Unique participant ID"},
            "species": {"Description": "Binomial species name; n/a for synthetic phantoms"},
        },
    )
    pd.DataFrame(samples).to_csv(root / "samples.tsv", sep="\t", index=False)
    _write_json(
        root / "samples.json",
        {
            "sample_id": {"Description": "Sample ID"},
            "participant_id": {"Description": "Participant ID from whom tissue samples have been acquired"},
            "sample_type": {"Description": "Type of sample from ENCODE Biosample Type (synthetic tissue phantom)"},
        },
    )
    (root / "README").write_text(
        "Synthetic myelinated-axon phantoms generated by nnunet-ext (contrasts: "
        + ", ".join(contrasts)
        + ").\nAxon and myelin masks in derivatives/labels; the analytic per-axon truth (axon diameter, fibre "
        "diameter, g-ratio, ...) in derivatives/truth/phantom_truth.csv.\n"
    )
    labels = root / "derivatives" / "labels"
    labels.mkdir(parents=True, exist_ok=True)
    _write_json(
        labels / "dataset_description.json",
        {
            "Name": "nnunet-ext synthetic myelinated-axon phantoms labels",
            "BIDSVersion": "1.7.0",
            "DatasetType": "derivative",
            "PipelineDescription": {"Name": "Axon and myelin manual segmentation labels"},
            "GeneratedBy": generated_by,
        },
    )


def _replace_folder(staging: Path, out_dir: Path) -> None:
    """Move the finished staging folder to ``out_dir``, keeping any previous content until the move succeeded."""
    previous = None
    if out_dir.exists():
        previous = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.replaced")
        os.replace(out_dir, previous)
    try:
        os.replace(staging, out_dir)
    except BaseException:
        if previous is not None:
            os.replace(previous, out_dir)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- preview
def save_phantom_montage(phantoms: Sequence[Phantom], path: str | os.PathLike) -> Path:
    """Draw each phantom's image above its axon (red) / myelin (blue) overlay and save a PNG montage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    figure, axes = plt.subplots(2, len(phantoms), figsize=(4 * len(phantoms), 8), squeeze=False)
    for column, phantom in enumerate(phantoms):
        axes[0, column].imshow(phantom.image, cmap="gray", vmin=0, vmax=255)
        axes[0, column].set_title(
            f"{phantom.contrast}: {len(phantom.truth)} axons, {phantom.pixel_size_um:g} um/px"
        )
        overlay = np.stack([phantom.image / 255.0] * 3, axis=-1) * 0.6
        overlay[phantom.axon_mask] = (0.9, 0.2, 0.2)
        overlay[phantom.myelin_mask] = (0.2, 0.4, 0.95)
        axes[1, column].imshow(overlay)
        axes[1, column].set_title("truth: axon red, myelin blue")
        for axis in axes[:, column]:
            axis.set_axis_off()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# -------------------------------------------------------------------------------------------------------- CLI
def register_cli(subparsers) -> None:
    """Add the ``phantoms`` subcommand."""
    parser = subparsers.add_parser(
        "phantoms",
        help="write synthetic myelinated-axon phantoms (TEM/SEM/BF) as a BIDS microscopy dataset",
        description="Write synthetic images of myelinated axons with exactly known truth (axon and myelin masks, "
        "per-axon axon diameter, fibre diameter, g-ratio) as a BIDS microscopy dataset laid out like AxonDeepSeg's "
        "(sub-*/micr/*_<MOD>.png + PixelSize sidecars, derivatives/labels/*_seg-{axon,myelin,axonmyelin}-manual.png),"
        " plus derivatives/truth/phantom_truth.csv.",
    )
    parser.add_argument("out_dir", type=Path, help="dataset folder to create (must not exist or be empty)")
    parser.add_argument("--contrasts", nargs="+", default=["TEM", "SEM"], type=str.upper, choices=CONTRASTS,
                        metavar="MOD", help="contrasts of every subject's samples: TEM, SEM, BF (default: TEM SEM)")
    parser.add_argument("--subjects", type=int, default=3, help="number of subjects (default: 3)")
    parser.add_argument("--samples-per-subject", type=int, default=2,
                        help="samples per subject and contrast (default: 2)")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"),
                        help="image size in pixels (default: 256 256)")
    parser.add_argument("--pixel-size", type=float, default=0.1, metavar="UM",
                        help="pixel size in micrometres (default: 0.1)")
    parser.add_argument("--pixel-size-jitter", type=float, default=0.0, metavar="FRACTION",
                        help="vary the pixel size between samples by up to +/- this fraction (default: 0)")
    parser.add_argument("--axon-diameter", type=float, nargs=2, default=(1.0, 3.0), metavar=("MIN", "MAX"),
                        help="range of axon equivalent diameters in um (default: 1 3)")
    parser.add_argument("--gratio", type=float, nargs=2, default=(0.55, 0.8), metavar=("MIN", "MAX"),
                        help="range of g-ratios (default: 0.55 0.8)")
    parser.add_argument("--density", type=float, default=0.45,
                        help="target fraction of the area covered by fibres, at most 0.8 (default: 0.45)")
    parser.add_argument("--touching", type=float, default=0.2, metavar="FRACTION",
                        help="target share of fibres touching a neighbour (masks sharing a boundary); 0 keeps every "
                        "fibre apart (default: 0.2)")
    parser.add_argument("--eccentricity", type=float, nargs=2, default=(0.0, 0.7), metavar=("MIN", "MAX"),
                        help="range of axon eccentricities; 0 0 gives circular axons (default: 0 0.7)")
    parser.add_argument("--noise", type=float, default=None,
                        help="noise std as a fraction of the grey range (default per contrast: TEM 0.05, SEM 0.07, "
                        "BF 0.03)")
    parser.add_argument("--blur", type=float, default=None,
                        help="Gaussian blur sigma in pixels (default per contrast: TEM 0.6, SEM 0.8, BF 1.6)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same dataset")
    parser.add_argument("--preview", type=Path, default=None, metavar="PNG",
                        help="also save a montage of the first sample of each contrast with its truth")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty OUT_DIR")
    parser.set_defaults(func=_run_cli)


def _run_cli(args) -> int:
    import pandas as pd

    options = dict(
        axon_diameter_um=tuple(args.axon_diameter), gratio=tuple(args.gratio), density=args.density,
        touching_fraction=args.touching, eccentricity=tuple(args.eccentricity), noise=args.noise, blur=args.blur,
    )
    out_dir = write_bids_phantom_dataset(
        args.out_dir, contrasts=args.contrasts, n_subjects=args.subjects,
        samples_per_subject=args.samples_per_subject, shape=tuple(args.size), pixel_size_um=args.pixel_size,
        pixel_size_jitter=args.pixel_size_jitter, seed=args.seed, overwrite=args.overwrite, **options,
    )
    truth = pd.read_csv(out_dir / "derivatives" / "truth" / "phantom_truth.csv")
    print(
        f"Wrote {truth['image'].nunique()} images ({', '.join(args.contrasts)}) with {len(truth)} axons to {out_dir}"
    )
    if args.preview is not None:
        # Regenerate the first subject's first sample of each contrast: the same seeds as in the dataset.
        plan = _dataset_plan(args.contrasts, args.subjects, args.samples_per_subject, args.pixel_size,
                             args.pixel_size_jitter, args.seed)[: len(args.contrasts)]
        phantoms = [
            generate_phantom(shape=tuple(args.size), pixel_size_um=size, contrast=contrast, seed=image_seed, **options)
            for _, _, contrast, size, image_seed in plan
        ]
        print(f"Preview: {save_phantom_montage(phantoms, args.preview)}")
    return 0
