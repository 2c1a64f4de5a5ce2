"""One synthetic image of myelinated axons with exactly known truth: :func:`generate_phantom`.

A phantom is a 2D image of myelinated fibres cut in cross-section, with its axon and myelin masks and a table of
every axon's analytic geometry (axon diameter, fibre diameter, g-ratio, ...): fibres sampled and placed as
:mod:`nnunet_ext.phantoms.geometry` describes, drawn in one of the contrasts of :mod:`nnunet_ext.phantoms.rendering`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from nnunet_ext.io.bids import ADS_AXON_VALUE, ADS_MYELIN_VALUE
from nnunet_ext.phantoms import CONTRASTS
from nnunet_ext.phantoms.geometry import (myelin_thickness_for_gratio, place_fibres, rasterise_ellipse,
                                          touches_image_border, touching_fibres)
from nnunet_ext.phantoms.rendering import STYLES, render_image

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
        label[self.myelin_mask] = ADS_MYELIN_VALUE
        label[self.axon_mask] = ADS_AXON_VALUE
        return label


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
        Imaging contrast (see :mod:`nnunet_ext.phantoms.rendering`).
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
    contrast = str(contrast).upper()
    if contrast not in STYLES:
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
    style = STYLES[contrast]
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

    placed = place_fibres(rng, shape, a, b, t, theta, touching_fraction, min_gap_px, max_attempts=200)

    # Rasterise: fibre ellipse first, then its axon; fibres never overlap so the order does not matter.
    fiber_labels = np.zeros(shape, dtype=np.int32)
    axon_mask = np.zeros(shape, dtype=bool)
    rows = []
    for axon_id, (index, cy, cx) in enumerate(sorted(placed, key=lambda p: (p[1], p[2])), start=1):
        fa, fb = a[index] + t[index], b[index] + t[index]
        fibre_box, fibre_inside = rasterise_ellipse(cy, cx, fa, fb, theta[index], shape)
        fiber_labels[fibre_box][fibre_inside] = axon_id
        axon_raster = rasterise_ellipse(cy, cx, a[index], b[index], theta[index], shape)
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
                "image_border_touching": touches_image_border(fibre_box, fibre_inside, shape),
                "axon_pixels": axon_pixels,
                "myelin_pixels": int(fibre_inside.sum()) - axon_pixels,
            }
        )
    myelin_mask = (fiber_labels > 0) & ~axon_mask
    truth = pd.DataFrame(rows, columns=[c for c in TRUTH_COLUMNS if c != "touching"])
    truth.insert(TRUTH_COLUMNS.index("touching"), "touching", touching_fibres(fiber_labels, len(rows)))
    truth = truth.astype({"touching": bool, "image_border_touching": bool})

    image = render_image(rng, style, axon_mask, myelin_mask, fiber_labels, len(rows), pixel_size_um, blur, noise)
    parameters = dict(
        shape=list(shape), pixel_size_um=float(pixel_size_um), contrast=contrast,
        axon_diameter_um=[diam_lo, diam_hi], gratio=[g_lo, g_hi], density=float(density), n_axons=n_axons,
        touching_fraction=float(touching_fraction), eccentricity=[ecc_lo, ecc_hi], noise=noise, blur=blur,
        min_gap_px=float(min_gap_px),
    )
    return Phantom(image, axon_mask, myelin_mask, fiber_labels, truth, float(pixel_size_um), contrast, parameters)
