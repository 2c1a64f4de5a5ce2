"""Per-axon morphometrics with AxonDeepSeg 5.5's definitions, column names and myelin assignment.

For every axon (8-connected component of the axon mask) AxonDeepSeg (ADS) reports the axon's region properties
and, for the myelinated fibre it belongs to, the fibre's. Fibres come from a watershed of the axon+myelin mask on
the negated distance map of the axon mask, seeded at each axon's centroid pixel, so myelin pixels go to the axon
they are nearest to (4-connected flood). :func:`axon_morphometrics` computes the same numbers in a few linear
passes (see :mod:`nnunet_ext.morphometrics._kernels`) instead of scikit-image's per-object properties and heap
watershed. Deliberate differences from ADS are listed in ``docs/morphometrics.md`` and in ``ADS_DIFFERENCES``.
"""
from __future__ import annotations

import warnings
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pandas as pd

from nnunet_ext.io.pixel_size import check_pixel_size
from nnunet_ext.morphometrics import kernels as _kernels  # ahead-of-time compiled when built, else numba's JIT

AXON_SHAPES = ("circle", "ellipse")

# ADS 5.5 per-axon columns, in ADS's order (its CSV adds an unnamed index column first).
ADS_COLUMNS = [
    "x0 (px)", "y0 (px)", "gratio", "axon_area (um^2)", "axon_perimeter (um)", "myelin_area (um^2)",
    "axon_diam (um)", "myelin_thickness (um)", "axonmyelin_area (um^2)", "axonmyelin_perimeter (um)",
    "eccentricity", "orientation", "fiber_eccentricity", "fiber_orientation", "solidity", "image_border_touching",
    "bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x",
]
# Our additions: a stable id (the axon's label, 1-based, in raster order of its first pixel), the fibre diameter
# (axon diameter + 2 x myelin thickness, same axon_shape), whether the g-ratio is usable, and why not.
EXTRA_COLUMNS = ["axon_id", "fiber_diam (um)", "gratio_valid", "note", "image"]
COLUMNS = ["axon_id", *ADS_COLUMNS, "fiber_diam (um)", "gratio_valid", "note", "image"]

NOTE_NO_MYELIN = "no myelin around the axon (g-ratio 1)"
NOTE_GRATIO_GE_1 = "fibre narrower than the axon for this axon_shape (g-ratio >= 1)"
NOTE_RESEEDED = "centroid lies outside the axon: fibre seeded at the axon's innermost pixel (ADS: NaN or another fibre)"
NOTE_RESEED_NEIGHBOUR = ("fibre shares its mask component with an axon re-seeded here (centroid outside itself): ADS's "
                         "seed at that axon's centroid pixel moves this fibre's boundary, values differ from ADS")
NOTE_ZERO_FIBRE = "fibre of zero diameter: g-ratio undefined"
NOTE_ZERO_AXON = "axon of zero diameter for this axon_shape, e.g. a one-pixel-wide line (g-ratio 0)"

ADS_DIFFERENCES = {
    "reseeded": "An axon whose centroid pixel lies outside the axon itself (crescent or C-shaped axons) is seeded at "
                "its innermost pixel; ADS seeds at the centroid pixel and then reports NaN myelin metrics (centroid "
                "in background) or measures a fibre that does not contain the axon (centroid in myelin or in "
                "another axon, which that extra seed then splits).",
    "border_info_always": "image_border_touching and the bounding box are given for every axon; ADS leaves them "
                          "empty where it found no fibre.",
    "many_axons": "Axon labels are 32-bit; ADS stores seeds as uint16 and mixes up fibres beyond 65,535 axons.",
}


def masks_from_label_image(label: np.ndarray, myelin_label: int = 1, axon_label: int = 2
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Axon and myelin masks from one label image (nnU-Net prediction: 0 background, 1 myelin, 2 axon).

    Parameters
    ----------
    label : (H, W) integer array
    myelin_label, axon_label : int
        Label values of myelin and axon. Any other value counts as background.

    Returns
    -------
    axon_mask, myelin_mask : (H, W) bool arrays
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label image must be 2D, got shape {label.shape}")
    if not (np.issubdtype(label.dtype, np.integer) or label.dtype == np.bool_):
        if not np.all(np.isfinite(label)) or np.any(label != np.round(label)):
            raise ValueError(f"label image must hold integer labels, got {label.dtype} with fractional values")
    if myelin_label == axon_label:
        raise ValueError(f"myelin_label and axon_label must differ, both are {axon_label}")
    return label == axon_label, label == myelin_label


def as_binary_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """Validate a binary mask (bool, 0/1, 0/255 or 0/any one positive value) and return it as bool.

    Raises ``ValueError`` naming ``name`` for anything else (probability maps, label images, NaN, 3D arrays).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2D array, got shape {mask.shape}")
    if mask.dtype == np.bool_:
        return mask
    if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        raise ValueError(f"{name} must be a numeric or boolean array, got {mask.dtype}")
    if mask.size == 0:
        return mask.astype(bool)
    if np.issubdtype(mask.dtype, np.floating) and not np.all(np.isfinite(mask)):
        raise ValueError(f"{name} contains NaN or infinite values")
    high = mask.max()
    low = mask.min()
    if low < 0:
        raise ValueError(f"{name} must be binary (0 and one positive value), found negative value {low}")
    binary = mask != 0
    if high > 0 and np.count_nonzero(binary & (mask != high)):
        values = np.unique(mask)
        shown = ", ".join(str(v) for v in values[:8]) + (", ..." if values.size > 8 else "")
        raise ValueError(f"{name} must be binary (0 and one positive value), found values {shown}; threshold "
                         f"probabilities or use masks_from_label_image() for label images")
    return binary


def read_mask_file(path, kind: str = "mask", name: str | None = None) -> np.ndarray:
    """A binary mask file as bool: nonzero is foreground (``name``, default the path, heads the messages).

    Anti-aliased masks (values between 0 and the maximum, as in some of ADS's own manual masks) are accepted with
    a warning saying how many pixels are neither 0 nor the maximum. For an axon mask (``kind="axon"``) it also
    says how many more axons AxonDeepSeg's CLI finds there: it passes the 8-bit mask to
    ``skimage.measure.label``, which labels each grey value's regions separately, so such pixels beside an axon
    become axons of their own (ads_sem's sub-rat2: 364 axons there, 363 here). It takes its myelin mask (and the
    distance map) as nonzero, as here.
    """
    from nnunet_ext.io.images import read_image_2d

    name = str(path) if name is None else name
    array = read_image_2d(path)
    if array.dtype != np.bool_ and not np.issubdtype(array.dtype, np.integer):
        return as_binary_mask(array, name)  # float masks: strictly binary or an error
    high = array.max(initial=0)
    foreground = array != 0
    off_nominal = int(np.count_nonzero(foreground & (array != high)))
    if off_nominal:
        message = f"{name}: {off_nominal} pixel(s) neither 0 nor {high}; counted as foreground (nonzero)"
        if kind == "axon":
            extra = ads_extra_axons(array)
            message += (f". AxonDeepSeg's CLI labels each grey value separately (skimage.measure.label of the "
                        f"8-bit mask), so it counts {extra} axon(s) more in this mask; save it as 0/{high} for "
                        f"the same axons" if extra else
                        ", as AxonDeepSeg's CLI does here (it labels each grey value separately, which gives the "
                        "same axons in this mask)")
        warnings.warn(message)
    return foreground


def ads_extra_axons(array: np.ndarray) -> int:
    """How many more 8-connected regions AxonDeepSeg's ``skimage.measure.label(mask, connectivity=2)`` finds in
    an integer mask (one label per connected region of equal value) than there are nonzero components."""
    from scipy import ndimage as ndi

    structure = np.ones((3, 3), bool)
    ours = ndi.label(array != 0, structure=structure)[1]
    theirs = sum(ndi.label(array == value, structure=structure)[1] for value in np.unique(array) if value != 0)
    return int(theirs - ours)


def prepare_masks(axon_mask, myelin_mask) -> tuple[np.ndarray, np.ndarray]:
    """Validated bool axon and myelin masks of one shape; where both are set the pixel counts as axon."""
    axon = as_binary_mask(axon_mask, "axon mask")
    myelin = as_binary_mask(myelin_mask, "myelin mask")
    if axon.shape != myelin.shape:
        raise ValueError(f"axon mask {axon.shape} and myelin mask {myelin.shape} have different shapes")
    overlap = np.count_nonzero(axon & myelin)
    if overlap:
        warnings.warn(f"{overlap} pixel(s) are set in both the axon and the myelin mask; they count as axon",
                      stacklevel=3)
        myelin = myelin & ~axon
    return axon, myelin


def _empty_table(image_name) -> pd.DataFrame:
    table = pd.DataFrame({column: pd.Series(dtype=float) for column in COLUMNS})
    table = table.astype({"axon_id": np.int64, "image_border_touching": bool, "bbox_min_y": np.int64,
                          "bbox_min_x": np.int64, "bbox_max_y": np.int64, "bbox_max_x": np.int64,
                          "gratio_valid": bool, "note": object, "image": object})
    return table


def _shape_properties(count, mu, mu_exact, mu_exact_ok):
    """Orientation, eccentricity and ellipse axis lengths from central moments, as skimage.measure.regionprops."""
    n = count.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        # skimage's inertia tensor [[mu02, -mu11], [-mu11, mu20]] / mu00, with its rounding of the diagonal
        trace = mu[:, 0] + mu[:, 2]
        a = (trace - mu[:, 0]) / n
        c = (trace - mu[:, 2]) / n
        b = -mu[:, 1] / n
        tensor = np.stack([np.stack([a, b], -1), np.stack([b, c], -1)], -2)
        tensor[~np.isfinite(tensor)] = 0.0
        eigvals = np.clip(np.linalg.eigvalsh(tensor), 0, None)
        l1 = eigvals[:, 1]
        l2 = eigvals[:, 0]
        # an exactly singular tensor (pixels on one line) has l2 == 0; eigvalsh may leave a rounding residue
        det = mu[:, 0] * mu[:, 2] - mu[:, 1] ** 2
        near = mu_exact_ok & (np.abs(det) <= 1e-9 * np.abs(mu[:, 0] * mu[:, 2]))
        for i in np.flatnonzero(near):
            e20, e11, e02 = (int(v) for v in mu_exact[i])
            if e20 * e02 == e11 * e11:
                l2[i] = 0.0
        eccentricity = np.where(l1 == 0, 0.0, np.sqrt(1 - l2 / np.where(l1 == 0, 1, l1)))
        # a == c is decided on the exact integers where available (symmetric regions)
        equal = np.where(mu_exact_ok, mu_exact[:, 0] == mu_exact[:, 2], (a - c) == 0)
        b_negative = np.where(mu_exact_ok, mu_exact[:, 1] > 0, b < 0)
        orientation = np.where(equal, np.where(b_negative, np.pi / 4, -np.pi / 4),
                               0.5 * np.arctan2(-2 * b, c - a))
    return orientation, eccentricity, 4 * np.sqrt(l1), 4 * np.sqrt(l2)


def _region_table(labels, n_labels, pool, with_convex_area):
    """Region properties of labels 1..n_labels; the perimeters (and convex areas) run in ``pool``'s thread, as
    futures that :func:`_finish` resolves."""
    perimeter = pool.submit(_kernels.label_perimeter, labels, n_labels, _kernels._PERIMETER_WEIGHTS)
    count, bbox, sums, mu, mu_exact, mu_exact_ok, first = _kernels.label_stats(labels, n_labels, 0, 0)
    convex = pool.submit(_kernels.label_convex_area, labels, n_labels, bbox, 0, 0) if with_convex_area else None
    orientation, eccentricity, major, minor = _shape_properties(count, mu, mu_exact, mu_exact_ok)
    return dict(count=count, bbox=bbox, sums=sums, perimeter=perimeter, orientation=orientation,
                eccentricity=eccentricity, major=major, minor=minor, convex=convex, first=first)


def _finish(table):
    """Wait for the parts of a ``_region_table`` still running in the pool."""
    for key in ("perimeter", "convex"):
        if isinstance(table[key], Future):
            table[key] = table[key].result()
    return table


def fibre_labels(axon: np.ndarray, myelin: np.ndarray, axon_labels: np.ndarray, centroids: np.ndarray,
                 squared_distance: np.ndarray | None = None, bbox: np.ndarray | None = None,
                 components: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Assign axon+myelin pixels to axons, as ADS's watershed (label i = fibre of axon i).

    Parameters
    ----------
    axon, myelin : (H, W) bool
    axon_labels : (H, W) int32
        8-connected axon labels 1..n.
    centroids : (n, 2) float
        Axon centroids (row, col).
    squared_distance : (H, W) int32, optional
        Squared EDT of ``axon``. When not given it is computed only where it matters: on the windows of the mask
        components that hold several axons, and of the axons to reseed.
    bbox : (n+1, 4) int64, optional
        Axon bounding boxes (``_kernels.label_stats``), computed when needed and not given.
    components : tuple, optional
        ``_kernels.mask_components(axon, myelin)`` (computed when not given).

    Returns
    -------
    fibres : (H, W) int32
    reseeded : (n,) bool
        Axons whose centroid pixel is not one of their own pixels, seeded at their innermost pixel instead.
    """
    n = centroids.shape[0]
    seed_rows = np.floor(centroids[:, 0]).astype(np.int64)  # int() of a non-negative float, as ADS
    seed_cols = np.floor(centroids[:, 1]).astype(np.int64)
    ids = np.arange(1, n + 1, dtype=np.int32)
    reseeded = axon_labels[seed_rows, seed_cols] != ids
    if np.any(reseeded):
        if bbox is None:
            bbox = _kernels.label_stats(axon_labels, n, 0, 0)[1]
        wanted = ids[reseeded].astype(np.int64)
        if squared_distance is None:
            positions = _kernels.deepest_axon_pixels(axon_labels, axon, wanted, bbox)
        else:
            positions = _kernels.deepest_pixels(axon_labels, squared_distance, wanted, bbox)
        seed_rows[reseeded] = positions[:, 0]
        seed_cols[reseeded] = positions[:, 1]
    flat = seed_rows * axon.shape[1] + seed_cols
    order = np.argsort(flat, kind="stable")
    if components is None:
        components = _kernels.mask_components(axon, myelin)
    # the distance map is only needed where fibres touch: the kernel computes it there when not given
    depth = squared_distance if squared_distance is not None else np.zeros((0, 0), np.int32)
    fibres = _kernels.fibres_from_components(*components, axon, flat[order], ids[order], depth)
    return fibres, reseeded


def axon_morphometrics(axon_mask, myelin_mask, pixel_size_um, axon_shape: str = "circle",
                       image_name: str | None = None, *, threads: int = 2) -> pd.DataFrame:
    """Per-axon morphometrics, AxonDeepSeg 5.5-compatible.

    Parameters
    ----------
    axon_mask, myelin_mask : (H, W) array
        Binary masks (bool, 0/1 or 0/255). Pixels set in both count as axon (with a warning).
    pixel_size_um : float
        Pixel size in micrometres.
    axon_shape : {"circle", "ellipse"}
        "circle": diameters are equivalent-circle diameters; "ellipse": minor axes of the moment ellipses (ADS's
        ``axon_shape``). Myelin thickness is half the difference of fibre and axon diameters.
    image_name : str, optional
        Written to the ``image`` column.
    threads : int
        1 runs everything in the calling thread; 2 (default) overlaps independent passes (the distance map with
        the axon measurements, the fibre perimeters with the other fibre measurements).

    Returns
    -------
    pandas.DataFrame
        One row per axon (8-connected component), in the order of ADS (raster order of each axon's first pixel),
        with ``COLUMNS``: ``axon_id``, ADS's 20 columns (same names and units), ``fiber_diam (um)``,
        ``gratio_valid`` (0 < g-ratio < 1), ``note`` (why a g-ratio is invalid or a value differs from ADS) and
        ``image``. An axon with no myelin has g-ratio 1 and myelin thickness 0, as in ADS. No axons: an empty
        table with these columns.

    Notes
    -----
    Fibres (axon + its myelin) are the regions of ADS's watershed: every axon+myelin pixel goes to the axon it is
    nearest to along 4-connected paths, ties resolved in scikit-image's order (seeds of equal depth in raster
    order; see docs/morphometrics.md for this and the other deliberate differences). Orientation is in radians,
    between the row axis and the major axis (scikit-image's convention).
    """
    return measure_axons(axon_mask, myelin_mask, pixel_size_um, axon_shape, image_name, threads)[0]


def measure_axons(axon_mask, myelin_mask, pixel_size_um, axon_shape: str = "circle", image_name: str | None = None,
                  threads: int = 2, return_fibres: bool = False) -> tuple:
    """:func:`axon_morphometrics` plus each axon's first pixel (raveled index, raster order) for the chunked path,
    and with ``return_fibres`` the fibre instance map (int32; fibre k is the axon of ``axon_id`` k, 0 elsewhere)."""
    if axon_shape not in AXON_SHAPES:
        raise ValueError(f"axon_shape must be one of {AXON_SHAPES}, got {axon_shape!r}")
    pixel_size = check_pixel_size(pixel_size_um)
    axon, myelin = prepare_masks(axon_mask, myelin_mask)
    with _shared_pool() if threads > 1 else _InlineExecutor() as pool:
        # The compiled kernels release the GIL. The pool's thread finds the mask's components (they need no
        # seeds), measures the axons' perimeters and convex hulls, then the fibres' perimeters, while this thread
        # labels the axons, takes their moments, assigns the components to them and takes the fibres' moments.
        components = pool.submit(_components_and_depth, axon, myelin, threads > 1)
        axon_labels, n = _kernels.label_axons(axon)  # scipy.ndimage.label's labels, without importing SciPy
        if n == 0:
            components.result()  # let the pool's work end before returning
            if return_fibres:
                return _empty_table(image_name), np.zeros(0, np.int64), np.zeros(axon.shape, np.int32)
            return _empty_table(image_name), np.zeros(0, np.int64)
        axons = _region_table(axon_labels, n, pool, with_convex_area=True)
        centroids = axons["sums"][1:] / axons["count"][1:, None]
        components, depth = components.result()
        fibres, reseeded = fibre_labels(axon, myelin, axon_labels, centroids, squared_distance=depth,
                                        bbox=axons["bbox"], components=components)
        differs = ads_fibre_differences(axon, fibres, centroids, components, depth) if reseeded.any() else None
        fibre = _region_table(fibres, n, pool, with_convex_area=False)
        axons, fibre = _finish(axons), _finish(fibre)
    table = _assemble_table(axons, fibre, centroids, reseeded, axon.shape, pixel_size, axon_shape, image_name,
                            differs)
    if return_fibres:
        return table, axons["first"][1:], fibres
    return table, axons["first"][1:]


def ads_fibre_differences(axon: np.ndarray, fibres: np.ndarray, centroids: np.ndarray,
                          components: tuple[np.ndarray, int], squared_distance: np.ndarray | None = None
                          ) -> np.ndarray:
    """Which axons' fibres differ from ADS's: (n,) bool.

    ADS seeds every axon at its centroid pixel, also where that pixel is not the axon's (where we re-seed). Its
    flood is redone here with those seeds (only the components holding several seeds are flooded, as in
    :func:`fibre_labels`); an axon's row differs when its fibre's pixels differ, or when ADS finds no fibre (or
    another axon's) at its centroid pixel. Axons re-seeded without effect (alone in their component) and the
    neighbours whose myelin a re-seed moves are both told apart this way.
    """
    n = centroids.shape[0]
    rows = np.floor(centroids[:, 0]).astype(np.int64)
    cols = np.floor(centroids[:, 1]).astype(np.int64)
    flat = rows * axon.shape[1] + cols
    order = np.argsort(flat, kind="stable")  # ADS writes seeds in axon order: the last one on a pixel wins
    ids = np.arange(1, n + 1, dtype=np.int32)
    depth = squared_distance if squared_distance is not None else np.zeros((0, 0), np.int32)
    ads = _kernels.fibres_from_components(*components, axon, flat[order], ids[order], depth)
    changed = fibres != ads
    differs = np.zeros(n + 1, bool)
    differs[fibres[changed]] = True
    differs[ads[changed]] = True
    differs = differs[1:]
    differs |= ads[rows, cols] != ids  # ADS measures the region under the centroid pixel: none, or another's
    return differs


# Mean size (pixels) of the axon + myelin mask's components above which the distance map is computed at once,
# beside the axon measurements, instead of on the windows of touching fibres afterwards.
LARGE_COMPONENTS_PX = 4096


def _components_and_depth(axon, myelin, speculate: bool):
    """The mask's components and, when they are large (large touching fibres, whose windows would cover most of
    the image), the squared distance map of the axons, so that the pool's thread computes it while the calling
    thread labels and measures the axons, instead of the calling thread computing it on those windows afterwards
    (see benchmarks/bench_morphometrics.py, large touching fibres)."""
    components = _kernels.mask_components(axon, myelin)
    depth = None
    if speculate and components[1] and np.count_nonzero(components[0]) > LARGE_COMPONENTS_PX * components[1]:
        depth = _kernels.squared_edt(axon)
    return components, depth


_POOL: ThreadPoolExecutor | None = None


class _shared_pool:
    """The second thread of :func:`measure_axons`, started once per process and kept (starting a thread per image
    cost 2-4 ms, a tenth of a 600 x 600 image's measurement). Callers in several threads share it: their kernels
    queue behind each other there, none waits on another's."""

    def __enter__(self):
        global _POOL
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="morphometrics")
        return _POOL

    def __exit__(self, *exc):
        return False


class _InlineExecutor:
    """Runs submitted work at once in the calling thread (``threads=1``)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, function, *args):
        future = Future()
        future.set_result(function(*args))
        return future


def _assemble_table(axons, fibre, centroids, reseeded, shape, pixel_size, axon_shape, image_name,
                    differs=None) -> pd.DataFrame:
    n = centroids.shape[0]
    axon_area_px = axons["count"][1:].astype(np.float64)
    fibre_area_px = fibre["count"][1:].astype(np.float64)
    if axon_shape == "circle":
        axon_diam_px = (4 * axon_area_px / np.pi) ** 0.5  # skimage's equivalent_diameter_area
        fibre_diam_px = (4 * fibre_area_px / np.pi) ** 0.5
    else:
        axon_diam_px = axons["minor"][1:]
        fibre_diam_px = fibre["minor"][1:]
    axon_diam = axon_diam_px * pixel_size
    thickness = pixel_size * ((fibre_diam_px - axon_diam_px) / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        gratio = (axon_diam / 2) / (axon_diam / 2 + thickness)
    zero_fibre = (axon_diam / 2 + thickness) == 0
    gratio[zero_fibre] = np.nan
    fbbox = fibre["bbox"][1:]
    touching = (fbbox[:, 0] == 0) | (fbbox[:, 1] == 0) | (fbbox[:, 2] == shape[0]) | (fbbox[:, 3] == shape[1])
    gratio_valid = np.isfinite(gratio) & (gratio > 0) & (gratio < 1)
    notes = np.full(n, "", dtype=object)

    def add(where, text):
        for i in np.flatnonzero(where):
            notes[i] = f"{notes[i]}; {text}" if notes[i] else text

    if differs is not None:  # the note flags exactly the rows whose values differ from ADS's
        add(reseeded & differs, NOTE_RESEEDED)
        add(~reseeded & differs, NOTE_RESEED_NEIGHBOUR)
    no_myelin = fibre_area_px == axon_area_px
    add(no_myelin, NOTE_NO_MYELIN)
    add(~no_myelin & np.isfinite(gratio) & (gratio >= 1), NOTE_GRATIO_GE_1)
    add(zero_fibre, NOTE_ZERO_FIBRE)
    add(~zero_fibre & (axon_diam == 0), NOTE_ZERO_AXON)
    # one construction in the final column order (each later insertion or reordering copies the frame)
    columns = {
        "axon_id": np.arange(1, n + 1, dtype=np.int64),
        "x0 (px)": centroids[:, 1],
        "y0 (px)": centroids[:, 0],
        "gratio": gratio,
        "axon_area (um^2)": axon_area_px * pixel_size ** 2,
        "axon_perimeter (um)": axons["perimeter"][1:] * pixel_size,
        "myelin_area (um^2)": pixel_size ** 2 * (fibre_area_px - axon_area_px),
        "axon_diam (um)": axon_diam,
        "myelin_thickness (um)": thickness,
        "axonmyelin_area (um^2)": pixel_size ** 2 * fibre_area_px,
        "axonmyelin_perimeter (um)": fibre["perimeter"][1:] * pixel_size,
        "eccentricity": axons["eccentricity"][1:],
        "orientation": axons["orientation"][1:],
        "fiber_eccentricity": fibre["eccentricity"][1:],
        "fiber_orientation": fibre["orientation"][1:],
        "solidity": axon_area_px / axons["convex"][1:],
        "image_border_touching": touching,
        "bbox_min_y": fbbox[:, 0],
        "bbox_min_x": fbbox[:, 1],
        "bbox_max_y": fbbox[:, 2],
        "bbox_max_x": fbbox[:, 3],
        "fiber_diam (um)": fibre_diam_px * pixel_size,
        "gratio_valid": gratio_valid,
        "note": notes,
        "image": image_name,
    }
    return pd.DataFrame(columns)  # keys in COLUMNS order

