"""Post-processing of predicted axon and myelin masks before morphometrics.

Pixel-wise networks leave objects that manual annotators never draw and that bias morphometrics far more than they
cost in Dice: fragments of a few pixels (each one an extra "axon"), unmyelinated axons and other round bright
structures predicted as axon with no myelin ring (g-ratio 1, counted in axon density and AVF), and holes in axons.
:func:`postprocess_masks` removes them with three rules and one optional fourth, each measured per axon (8-connected
component of the axon mask, as the morphometrics count axons):

``fill_holes``
    Background or myelin pixels enclosed by one axon component become axon.
``min_axon_area_um2``
    Axons smaller than this area are removed (their pixels become background).
``min_myelin_coverage``
    Axons whose outer boundary (the pixels 8-adjacent to the axon, outside it) is less than this fraction myelin are
    removed: an axon that the manual masks would draw is surrounded by its myelin sheath, an unmyelinated axon or
    a fragment in the interstitial space is not.
``drop_orphan_myelin`` (off by default)
    Connected components of axon + myelin left without any axon lose their myelin (it belongs to no fibre, yet
    counts in MVF and the aggregate g-ratio).

Removed axon pixels become background (not myelin), so a removed fragment inside a sheath does not thicken it.
Defaults (:data:`DEFAULT_POSTPROCESS`) are set on the manual masks of ads_sem's nine training images (7,543 axons;
sub-rat6, ASTIH's test subject, left out) so that they keep what annotators draw: the myelin coverage of the manual
axons is never below 0.5, the ``min_myelin_coverage`` (3 of them are below 0.75, 0.04 %; 0.5th percentile 0.917;
in ads_demo's masks 1 of 298 is below 0.5, 11 below 0.75), and 0.6 % of them are smaller than 0.1 um^2, the
``min_axon_area_um2`` (2.1 % are below 0.2 um^2, in the images at 0.093-0.1 um/px).
``benchmarks/bench_real_sem.py`` measures their effect on sub-rat6 (each rule alone and together).
``nnunet-ext morphometrics --postprocess`` and ``nnunet-ext segment --morphometrics --postprocess`` apply them (each
option can be changed).
"""
from __future__ import annotations

import numpy as np

#: Default options of :func:`postprocess_masks` (``--postprocess``).
DEFAULT_POSTPROCESS = {"fill_holes": True, "min_axon_area_um2": 0.1, "min_myelin_coverage": 0.5,
                       "drop_orphan_myelin": False}
#: No post-processing: the options under which :func:`postprocess_masks` returns its input unchanged.
NO_POSTPROCESS = {"fill_holes": False, "min_axon_area_um2": 0.0, "min_myelin_coverage": 0.0,
                  "drop_orphan_myelin": False}

_EIGHT = np.ones((3, 3), dtype=bool)


def myelin_coverage(axon_labels: np.ndarray, n: int, myelin: np.ndarray) -> np.ndarray:
    """Fraction of each axon's outer boundary (pixels 8-adjacent to it, outside the axon mask) that is myelin.

    Parameters
    ----------
    axon_labels : (H, W) int
        Axon components 1..n (8-connected).
    n : int
        Number of axons.
    myelin : (H, W) bool

    Returns
    -------
    (n,) float
        Coverage of axons 1..n; a boundary pixel next to two axons counts for the one with the larger label.
        An axon with no boundary pixel (it fills the image) gets 1.
    """
    from scipy import ndimage as ndi

    grown = ndi.grey_dilation(axon_labels, footprint=_EIGHT, mode="constant", cval=0)
    ring = (axon_labels == 0) & (grown > 0)
    owners = grown[ring]
    total = np.bincount(owners, minlength=n + 1)[1:].astype(np.float64)
    covered = np.bincount(owners, weights=myelin[ring].astype(np.float64), minlength=n + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, covered / np.maximum(total, 1), 1.0)


def postprocess_masks(axon_mask, myelin_mask, pixel_size_um: float | None = None, *, fill_holes: bool = True,
                      min_axon_area_um2: float = DEFAULT_POSTPROCESS["min_axon_area_um2"],
                      min_myelin_coverage: float = DEFAULT_POSTPROCESS["min_myelin_coverage"],
                      drop_orphan_myelin: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    """Clean predicted axon and myelin masks for morphometrics (see the module's docstring for each rule).

    Parameters
    ----------
    axon_mask, myelin_mask : (H, W) array
        Binary masks (bool, 0/1, 0/255). Pixels set in both count as axon.
    pixel_size_um : float, optional
        Needed when ``min_axon_area_um2`` > 0.
    fill_holes, min_axon_area_um2, min_myelin_coverage, drop_orphan_myelin
        The rules; 0 / False turns one off.

    Returns
    -------
    axon, myelin : (H, W) bool
    report : dict
        ``axons_in``, ``holes_filled_px``, ``removed_small``, ``removed_no_myelin_ring``, ``axons_out``,
        ``orphan_myelin_removed_px``.
    """
    from scipy import ndimage as ndi

    from nnunet_ext.morphometrics.axon import prepare_masks

    axon, myelin = prepare_masks(axon_mask, myelin_mask)
    axon, myelin = axon.copy(), myelin.copy()
    if not 0 <= min_myelin_coverage <= 1:
        raise ValueError(f"min_myelin_coverage must be between 0 and 1, got {min_myelin_coverage}")
    if min_axon_area_um2 < 0 or not np.isfinite(min_axon_area_um2):
        raise ValueError(f"min_axon_area_um2 must be a non-negative number, got {min_axon_area_um2}")
    min_area_px = 0.0
    if min_axon_area_um2 > 0:
        if pixel_size_um is None:
            raise ValueError("min_axon_area_um2 needs the pixel size (pixel_size_um)")
        from nnunet_ext.io.pixel_size import check_pixel_size

        min_area_px = min_axon_area_um2 / check_pixel_size(pixel_size_um) ** 2
    report = {"axons_in": 0, "holes_filled_px": 0, "removed_small": 0, "removed_no_myelin_ring": 0, "axons_out": 0,
              "orphan_myelin_removed_px": 0}
    labels, n = ndi.label(axon, structure=_EIGHT, output=np.int32)
    report["axons_in"] = int(n)
    if fill_holes and n:
        # holes of each component: what binary_fill_holes adds (4-connected background not reaching the border)
        filled = ndi.binary_fill_holes(axon)
        holes = filled & ~axon
        report["holes_filled_px"] = int(np.count_nonzero(holes))
        if report["holes_filled_px"]:
            axon = filled
            myelin &= ~axon
            labels, n = ndi.label(axon, structure=_EIGHT, output=np.int32)
    if n:
        drop = np.zeros(n + 1, dtype=bool)
        if min_area_px > 0:
            area = np.bincount(labels.ravel(), minlength=n + 1)
            small = area < min_area_px
            small[0] = False
            report["removed_small"] = int(np.count_nonzero(small))
            drop |= small
        if min_myelin_coverage > 0:
            coverage = np.concatenate([[1.0], myelin_coverage(labels, n, myelin)])
            bare = (coverage < min_myelin_coverage) & ~drop
            bare[0] = False
            report["removed_no_myelin_ring"] = int(np.count_nonzero(bare))
            drop |= bare
        if drop.any():
            axon &= ~drop[labels]
        report["axons_out"] = int(n - np.count_nonzero(drop))
    if drop_orphan_myelin and np.any(myelin):
        fibres, m = ndi.label(axon | myelin, structure=_EIGHT, output=np.int32)
        has_axon = np.zeros(m + 1, dtype=bool)
        has_axon[np.unique(fibres[axon])] = True
        orphan = myelin & ~has_axon[fibres]
        report["orphan_myelin_removed_px"] = int(np.count_nonzero(orphan))
        myelin &= ~orphan
    return axon, myelin, report
