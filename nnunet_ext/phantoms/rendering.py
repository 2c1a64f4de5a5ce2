"""Rendering of the phantoms: grey levels and textures of each imaging contrast over the axon and myelin masks.

Three contrasts imitate the modalities of AxonDeepSeg's generalist model (:data:`STYLES`):

* ``"TEM"``: bright axoplasm with dark organelles, very dark (osmium-stained) myelin, mottled grey tissue around.
* ``"SEM"``: backscatter SEM as in AxonDeepSeg's SEM data: dark axons, bright myelin, dark tissue, noisier.
* ``"BF"``: bright-field light microscopy (toluidine blue semi-thin sections): light background and axons, dark
  myelin rings, blurrier and with lower contrast.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class ContrastStyle:
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


STYLES = {
    "TEM": ContrastStyle(
        background=0.52, axon=0.78, myelin=0.12, organelle=0.45, unmyelinated=0.68, membrane=0.30,
        per_fibre_jitter=0.03, tissue_texture=0.07, axon_texture=0.03, illumination=0.06, blur_px=0.6, noise=0.05,
    ),
    "SEM": ContrastStyle(
        background=0.22, axon=0.18, myelin=0.62, organelle=0.32, unmyelinated=0.16, membrane=0.40,
        per_fibre_jitter=0.06, tissue_texture=0.07, axon_texture=0.04, illumination=0.08, blur_px=0.8, noise=0.07,
    ),
    "BF": ContrastStyle(
        background=0.74, axon=0.84, myelin=0.36, organelle=0.74, unmyelinated=0.80, membrane=0.66,
        per_fibre_jitter=0.04, tissue_texture=0.04, axon_texture=0.015, illumination=0.05, blur_px=1.6, noise=0.03,
    ),
}


def _smooth_noise(rng: np.random.Generator, shape, sigma_px: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation and correlation length ``sigma_px``.

    Wide kernels are applied on a coarser grid and interpolated back: the same field at a fraction of the cost.
    """
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


def render_image(
    rng: np.random.Generator,
    style: ContrastStyle,
    axon_mask: np.ndarray,
    myelin_mask: np.ndarray,
    fiber_labels: np.ndarray,
    n_fibres: int,
    pixel_size_um: float,
    blur_px: float,
    noise: float,
) -> np.ndarray:
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
