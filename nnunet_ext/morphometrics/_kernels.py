"""Compiled (numba) loops behind the per-axon morphometrics.

Each kernel replaces a per-object Python loop or a heap-based pass of AxonDeepSeg/scikit-image by one linear pass
over the label image, and reproduces scikit-image's definitions exactly (same pixel sets, same formulas):

- ``label_stats``: pixel count, integer coordinate sums, bounding box, then exact central second moments.
- ``label_perimeter``: ``skimage.measure.perimeter(region, 4)`` of every label at once.
- ``label_convex_area``: pixel count of ``skimage.morphology.convex_hull_image(region)`` of every label, in exact
  integer arithmetic.
- ``squared_edt``: exact squared Euclidean distance to the nearest zero pixel (Meijster et al. 2000), i.e.
  ``scipy.ndimage.distance_transform_edt(mask) ** 2`` as integers.
- ``seeded_watershed``: ``skimage.segmentation.watershed(-edt, markers, mask=mask)`` (4-connectivity), with the
  heap replaced by a bucket queue: pixels leave in the same (value, insertion age) order.
- ``mask_components`` + ``fibres_from_components``: ``seeded_watershed`` of the whole image, from the mask's
  components (a scanline fill): a component holding one seed is that seed's; ``seeded_watershed`` runs only on
  the components that hold several (touching fibres).

All kernels are compiled on first use and cached on disk (``cache=True``); ``nogil=True`` lets two of them run in
parallel threads.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

# skimage.measure.perimeter's weights for the codes of its [[10, 2, 10], [2, 1, 2], [10, 2, 10]] convolution of the
# region's 4-connected border (codes are always odd for border pixels).
_PERIMETER_WEIGHTS = np.zeros(50, dtype=np.float64)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2.0)
_PERIMETER_WEIGHTS[[13, 23]] = (1.0 + math.sqrt(2.0)) / 2.0


@njit(cache=True, nogil=True)
def label_stats(labels, n_labels, row_offset, col_offset):
    """Per-label pixel count, centroid, bounding box and central second moments.

    Parameters
    ----------
    labels : (H, W) int array
        0 is background; labels 1..n_labels are measured.
    n_labels : int
    row_offset, col_offset : int
        Added to coordinates (position of this array in a larger image).

    Returns
    -------
    count : (n+1,) int64
    bbox : (n+1, 4) int64
        min_row, min_col, max_row + 1, max_col + 1 (global coordinates), like ``regionprops.bbox``.
    sums : (n+1, 2) int64
        Sum of global row and column indices (exact).
    mu : (n+1, 3) float64
        Central moments mu20 (rows), mu11, mu02 (columns), each rounded once from exact integers when they fit.
    mu_exact : (n+1, 3) int64
        ``count * mu`` exactly (for symmetry tests); 0 with ``mu_exact_ok`` False where int64 could overflow.
    mu_exact_ok : (n+1,) bool
    first : (n+1,) int64
        Raveled index (in ``labels``) of each label's first pixel in raster order.
    """
    height, width = labels.shape
    count = np.zeros(n_labels + 1, np.int64)
    first = np.full(n_labels + 1, -1, np.int64)
    bbox = np.empty((n_labels + 1, 4), np.int64)
    bbox[:, 0] = height
    bbox[:, 1] = width
    bbox[:, 2] = -1
    bbox[:, 3] = -1
    # One pass; coordinates relative to each label's first pixel keep the integer power sums small (exact in
    # int64), and central moments do not depend on the origin.
    origin_r = np.zeros(n_labels + 1, np.int64)
    origin_c = np.zeros(n_labels + 1, np.int64)
    s_r = np.zeros(n_labels + 1, np.int64)
    s_c = np.zeros(n_labels + 1, np.int64)
    s_rr = np.zeros(n_labels + 1, np.int64)
    s_cc = np.zeros(n_labels + 1, np.int64)
    s_rc = np.zeros(n_labels + 1, np.int64)
    for r in range(height):
        for c in range(width):
            lab = labels[r, c]
            if lab <= 0:
                continue
            if count[lab] == 0:
                first[lab] = r * width + c
                origin_r[lab] = r
                origin_c[lab] = c
                bbox[lab, 0] = r
            count[lab] += 1
            if c < bbox[lab, 1]:
                bbox[lab, 1] = c
            bbox[lab, 2] = r  # rows come in order
            if c > bbox[lab, 3]:
                bbox[lab, 3] = c
            lr = r - origin_r[lab]
            lc = c - origin_c[lab]
            s_r[lab] += lr
            s_c[lab] += lc
            s_rr[lab] += lr * lr
            s_cc[lab] += lc * lc
            s_rc[lab] += lr * lc
    sums = np.zeros((n_labels + 1, 2), np.int64)
    mu = np.zeros((n_labels + 1, 3), np.float64)
    mu_exact = np.zeros((n_labels + 1, 3), np.int64)
    mu_exact_ok = np.zeros(n_labels + 1, np.bool_)
    limit = 2.0 ** 62
    for lab in range(1, n_labels + 1):
        n = count[lab]
        if n == 0:
            continue
        sums[lab, 0] = s_r[lab] + n * (origin_r[lab] + row_offset)
        sums[lab, 1] = s_c[lab] + n * (origin_c[lab] + col_offset)
        fn = float(n)
        # count * mu = n * S_xx - S_x ** 2, exact in int64 while it cannot overflow
        big = fn * max(float(s_rr[lab]), float(s_cc[lab]), float(abs(s_rc[lab])))
        big = max(big, float(s_r[lab]) ** 2, float(s_c[lab]) ** 2)
        if big < limit:
            e20 = n * s_rr[lab] - s_r[lab] * s_r[lab]
            e11 = n * s_rc[lab] - s_r[lab] * s_c[lab]
            e02 = n * s_cc[lab] - s_c[lab] * s_c[lab]
            mu_exact[lab, 0] = e20
            mu_exact[lab, 1] = e11
            mu_exact[lab, 2] = e02
            mu_exact_ok[lab] = True
            mu[lab, 0] = float(e20) / fn
            mu[lab, 1] = float(e11) / fn
            mu[lab, 2] = float(e02) / fn
        else:
            cr = s_r[lab] / fn
            cc = s_c[lab] / fn
            mu[lab, 0] = s_rr[lab] - cr * s_r[lab]
            mu[lab, 1] = s_rc[lab] - cr * s_c[lab]
            mu[lab, 2] = s_cc[lab] - cc * s_c[lab]
        bbox[lab, 0] += row_offset
        bbox[lab, 1] += col_offset
        bbox[lab, 2] += row_offset + 1
        bbox[lab, 3] += col_offset + 1
    return count, bbox, sums, mu, mu_exact, mu_exact_ok, first


@njit(cache=True, nogil=True)
def label_perimeter(labels, n_labels, weights):
    """``skimage.measure.perimeter(labels == lab, neighborhood=4)`` for every label in one pass.

    A pixel is on its region's border when a 4-neighbour (or the outside of the array) has another label; the
    perimeter sums, over border pixels, the weight of the code 1 + 2 * (border 4-neighbours of the same label) +
    10 * (border diagonal neighbours of the same label), as scikit-image does region by region.
    """
    height, width = labels.shape
    border = np.zeros((height, width), np.uint8)
    for r in range(height):
        up = max(r - 1, 0)
        down = min(r + 1, height - 1)
        edge_row = r == 0 or r == height - 1
        for c in (0, width - 1):  # the array's edge counts as outside
            if labels[r, c] > 0:
                border[r, c] = 1
        if edge_row:
            for c in range(width):
                if labels[r, c] > 0:
                    border[r, c] = 1
        # branch-free interior test, so that the compiler can vectorise it
        for c in range(1, width - 1):
            lab = labels[r, c]
            border[r, c] |= (lab > 0) & ((labels[up, c] != lab) | (labels[down, c] != lab)
                                         | (labels[r, c - 1] != lab) | (labels[r, c + 1] != lab))
    perimeter = np.zeros(n_labels + 1, np.float64)
    for r in range(height):
        for c in range(width):
            if border[r, c] == 0:
                continue
            lab = labels[r, c]
            code = 1
            for dr in range(-1, 2):
                rr = r + dr
                if rr < 0 or rr >= height:
                    continue
                for dc in range(-1, 2):
                    if dr == 0 and dc == 0:
                        continue
                    cc = c + dc
                    if cc < 0 or cc >= width:
                        continue
                    if border[rr, cc] and labels[rr, cc] == lab:
                        code += 2 if (dr == 0 or dc == 0) else 10
            perimeter[lab] += weights[code]
    return perimeter


@njit(cache=True, nogil=True)
def deepest_pixels(labels, depth, wanted, bbox):
    """For each label in ``wanted``: (row, col) of its pixel of largest ``depth``, first in raster order."""
    out = np.empty((wanted.shape[0], 2), np.int64)
    for i in range(wanted.shape[0]):
        lab = wanted[i]
        best = -1
        for r in range(bbox[lab, 0], bbox[lab, 2]):
            for c in range(bbox[lab, 1], bbox[lab, 3]):
                if labels[r, c] == lab and depth[r, c] > best:
                    best = depth[r, c]
                    out[i, 0] = r
                    out[i, 1] = c
    return out


@njit(cache=True, nogil=True)
def _ceil_div(a, b):
    # b > 0
    return -((-a) // b)


@njit(cache=True, nogil=True)
def label_convex_area(labels, n_labels, bbox, row_offset, col_offset):
    """Pixel count of each label's convex hull image, as ``skimage.morphology.convex_hull_image``.

    scikit-image takes the convex hull of the midpoints of every region pixel's four edges (pixel centre +-0.5
    along each axis) and counts the pixel centres inside or on it. Only each row's leftmost and rightmost pixel
    can contribute hull vertices. Coordinates are doubled so that every vertex is an integer and the count is
    exact.
    """
    n = n_labels
    heights = np.zeros(n + 1, np.int64)
    for lab in range(1, n + 1):
        if bbox[lab, 2] > bbox[lab, 0]:
            heights[lab] = bbox[lab, 2] - bbox[lab, 0]
    start = np.zeros(n + 2, np.int64)
    for lab in range(1, n + 1):
        start[lab + 1] = start[lab] + heights[lab]
    total = start[n + 1]
    row_min = np.full(total, np.iinfo(np.int64).max, np.int64)
    row_max = np.full(total, -1, np.int64)
    height, width = labels.shape
    for r in range(height):
        for c in range(width):
            lab = labels[r, c]
            if lab <= 0:
                continue
            i = start[lab] + (r + row_offset - bbox[lab, 0])
            gc = c + col_offset
            if gc < row_min[i]:
                row_min[i] = gc
            if gc > row_max[i]:
                row_max[i] = gc
    area = np.zeros(n + 1, np.int64)
    max_h = 0
    for lab in range(1, n + 1):
        max_h = max(max_h, heights[lab])
    # doubled coordinates: y = 2 * row (+-1), x = 2 * col (+-1)
    left_y = np.empty(2 * max_h + 2, np.int64)
    left_x = np.empty(2 * max_h + 2, np.int64)
    right_y = np.empty(2 * max_h + 2, np.int64)
    right_x = np.empty(2 * max_h + 2, np.int64)
    lvl_min = np.empty(2 * max_h + 2, np.int64)
    lvl_max = np.empty(2 * max_h + 2, np.int64)
    for lab in range(1, n + 1):
        h = heights[lab]
        if h == 0:
            continue
        r0 = bbox[lab, 0]
        # extreme x for each doubled y level 2*r0-1 .. 2*(r0+h-1)+1 (2h+1 levels)
        n_levels = 2 * h + 1
        for k in range(n_levels):
            lvl_min[k] = np.iinfo(np.int64).max
            lvl_max[k] = np.iinfo(np.int64).min
        for j in range(h):
            i = start[lab] + j
            if row_max[i] < 0:
                continue
            lo = 2 * row_min[i]
            hi = 2 * row_max[i]
            k_mid = 2 * j + 1
            for k in (k_mid - 1, k_mid + 1):  # top and bottom edge midpoints
                if lo < lvl_min[k]:
                    lvl_min[k] = lo
                if hi > lvl_max[k]:
                    lvl_max[k] = hi
            if lo - 1 < lvl_min[k_mid]:  # left and right edge midpoints
                lvl_min[k_mid] = lo - 1
            if hi + 1 > lvl_max[k_mid]:
                lvl_max[k_mid] = hi + 1
        # left chain: lower convex envelope of x(y) over levels; right chain: upper concave envelope
        nl = 0
        nr = 0
        for k in range(n_levels):
            if lvl_max[k] < lvl_min[k]:
                continue
            y = 2 * r0 - 1 + k
            x = lvl_min[k]
            while nl >= 2:
                # keep convex: cross((p1 - p0), (p - p0)) must turn the right way for a left chain
                cross = (left_y[nl - 1] - left_y[nl - 2]) * (x - left_x[nl - 2]) - \
                        (left_x[nl - 1] - left_x[nl - 2]) * (y - left_y[nl - 2])
                if cross <= 0:
                    nl -= 1
                else:
                    break
            left_y[nl] = y
            left_x[nl] = x
            nl += 1
            x = lvl_max[k]
            while nr >= 2:
                cross = (right_y[nr - 1] - right_y[nr - 2]) * (x - right_x[nr - 2]) - \
                        (right_x[nr - 1] - right_x[nr - 2]) * (y - right_y[nr - 2])
                if cross >= 0:
                    nr -= 1
                else:
                    break
            right_y[nr] = y
            right_x[nr] = x
            nr += 1
        # count integer columns c with left(2r) <= 2c <= right(2r) for every row r
        total_area = 0
        il = 0
        ir = 0
        for j in range(h):
            y = 2 * (r0 + j)
            while il + 1 < nl and left_y[il + 1] < y:
                il += 1
            while ir + 1 < nr and right_y[ir + 1] < y:
                ir += 1
            # left boundary at y: on segment il -> il + 1 (or exactly a vertex)
            if il + 1 < nl:
                y0 = left_y[il]
                x0 = left_x[il]
                dy = left_y[il + 1] - y0
                dx = left_x[il + 1] - x0
                # x = x0 + dx * (y - y0) / dy ; c_min = ceil(x / 2)
                c_min = _ceil_div(x0 * dy + dx * (y - y0), 2 * dy)
            else:
                c_min = _ceil_div(left_x[il], 2)
            if ir + 1 < nr:
                y0 = right_y[ir]
                x0 = right_x[ir]
                dy = right_y[ir + 1] - y0
                dx = right_x[ir + 1] - x0
                c_max = (x0 * dy + dx * (y - y0)) // (2 * dy)
            else:
                c_max = right_x[ir] // 2
            if c_max >= c_min:
                total_area += c_max - c_min + 1
        area[lab] = total_area
    return area


@njit(cache=True, nogil=True)
def squared_edt(mask):
    """Exact squared Euclidean distance of every nonzero pixel to the nearest zero pixel (0 on zero pixels).

    Same values as ``scipy.ndimage.distance_transform_edt(mask) ** 2`` (pixels outside the array do not count as
    zero), as int32; a mask without any zero pixel gets a large sentinel. Meijster et al. (2000): a column pass,
    here run row by row for memory locality, then a lower envelope of parabolas along each row.
    """
    height, width = mask.shape
    big = height + width
    g = np.empty((height, width), np.int32)
    for c in range(width):
        g[0, c] = big if mask[0, c] else 0
    for r in range(1, height):
        for c in range(width):
            g[r, c] = g[r - 1, c] + 1 if mask[r, c] else 0
    for r in range(height - 2, -1, -1):
        for c in range(width):
            if g[r + 1, c] + 1 < g[r, c]:
                g[r, c] = g[r + 1, c] + 1
    out = np.zeros((height, width), np.int32)
    s = np.empty(width, np.int64)
    t = np.empty(width, np.int64)
    for r in range(height):
        any_set = False
        for c in range(width):
            if mask[r, c]:
                any_set = True
                break
        if not any_set:
            continue
        q = 0
        s[0] = 0
        t[0] = 0
        for u in range(1, width):
            gu = np.int64(g[r, u])
            while q >= 0:
                gs = np.int64(g[r, s[q]])
                if (t[q] - s[q]) ** 2 + gs * gs > (t[q] - u) ** 2 + gu * gu:
                    q -= 1
                else:
                    break
            if q < 0:
                q = 0
                s[0] = u
            else:
                gs = np.int64(g[r, s[q]])
                # first column where parabola u lies strictly below parabola s[q]
                w = (u * u - s[q] * s[q] + gu * gu - gs * gs) // (2 * (u - s[q])) + 1
                if w < width:
                    q += 1
                    s[q] = u
                    t[q] = w
        for u in range(width - 1, -1, -1):
            if mask[r, u]:
                gs = np.int64(g[r, s[q]])
                d = (u - s[q]) ** 2 + gs * gs
                out[r, u] = d if d < 2 ** 31 - 1 else 2 ** 31 - 1
            if u == t[q]:
                q -= 1
    return out


@njit(cache=True, nogil=True)
def seeded_watershed(depth, mask, seed_index, seed_label):
    """Flood ``mask`` from seeds in the order of ``skimage.segmentation.watershed(-sqrt(depth), markers, mask=mask)``.

    Parameters
    ----------
    depth : (H, W) int32
        Priority: pixels with a larger depth are flooded first (``depth`` is the squared EDT of the axon mask,
        which orders pixels exactly as the EDT does).
    mask : (H, W) bool
    seed_index : (k,) int64
        Raveled seed positions, ascending; seeds outside the mask are ignored.
    seed_label : (k,) int32

    Returns
    -------
    (H, W) int32 labels, 0 where no seed reaches.

    Notes
    -----
    scikit-image (0.26) pops the queued pixel of smallest (cost, age): a neighbour is labelled when it is queued,
    with cost max(its value, cost of the pixel it was reached from) and the next age (4-connectivity, neighbours
    in the order up, left, right, down). Costs therefore never decrease, so one FIFO per cost level pops pixels in
    the same order. The one freedom is the order among seeds of equal depth (all of age 0): scikit-image leaves
    it to its binary heap's layout, which depends on the whole image; here it is raster order, which keeps the
    result local (the same for an image and for any crop holding the touching fibres).
    """
    height, width = mask.shape
    pw = width + 2
    state = np.full((height + 2) * pw, -1, np.int32)
    max_depth = 0
    for r in range(height):
        row = (r + 1) * pw + 1
        for c in range(width):
            if mask[r, c]:
                d = min(depth[r, c], _DEPTH_CAP)
                state[row + c] = -2 - d
                if d > max_depth:
                    max_depth = d
    seeds = np.empty(seed_index.shape[0], np.int64)
    for i in range(seed_index.shape[0]):
        r = seed_index[i] // width
        seeds[i] = (r + 1) * pw + seed_index[i] - r * width + 1
    _flood(state, pw, max_depth, seeds, seed_label)
    out = np.empty((height, width), np.int32)
    for r in range(height):
        row = (r + 1) * pw + 1
        for c in range(width):
            v = state[row + c]
            out[r, c] = v if v > 0 else 0
    return out


_DEPTH_CAP = 2 ** 31 - 3  # depths are stored as -2 - depth in int32


@njit(cache=True, nogil=True)
def _flood(state, pw, max_depth, seeds, seed_label):
    """The priority flood of :func:`seeded_watershed` on a padded, encoded state, in place.

    ``state`` (rows of ``pw`` values, a ring of -1 around the image): -1 outside the mask, ``-2 - depth`` for a
    mask pixel not reached yet, the label (> 0) once reached. One value per pixel, so a neighbour costs one load.
    ``seeds``: padded indices, ascending. Labels are written into ``state``.

    One FIFO per depth level, deepest first, each a segment of one array sized by a counting sort of the depths:
    pushes and pops walk their segments sequentially (a linked list through the pixels, as in earlier versions,
    cost a cache miss per push and per pop: 3x slower on large touching fibres). A pixel enters the segment of
    its own depth while that level is still to come; when its depth is at or above the level being popped (its
    cost max(value, current) is the current level's) it joins the end of the current level: the spill FIFO,
    popped after that level's segment in push order, as the heap would pop it.
    """
    counts = np.zeros(max_depth + 2, np.int64)
    for i in range(state.shape[0]):
        v = state[i]
        if v < -1:
            counts[-2 - v] += 1
    start = np.empty(max_depth + 2, np.int64)
    position = 0
    for d in range(max_depth, -1, -1):
        start[d] = position
        position += counts[d]
    fill = start.copy()
    queue = np.empty(max(position, 1), np.int32)
    spill = np.empty(max(position, 1), np.int32)
    k = seeds.shape[0]
    i = 0
    while i < k:
        idx = seeds[i]
        j = i
        while j + 1 < k and seeds[j + 1] == idx:
            j += 1  # the same pixel several times: the last seed's label wins, as in skimage's marker image
        v = state[idx]
        i = j + 1
        if v >= -1:
            continue  # outside the mask
        state[idx] = seed_label[j]
        d = -2 - v
        queue[fill[d]] = idx
        fill[d] += 1
    offsets = np.array([-pw, -1, 1, pw], np.int64)  # up, left, right, down: skimage's neighbour order
    for level in range(max_depth, -1, -1):
        read = start[level]
        end = fill[level]  # no push reaches this segment any more: they go to the spill FIFO
        spill_read = 0
        spill_end = 0
        while True:
            if read < end:
                idx = queue[read]
                read += 1
            elif spill_read < spill_end:
                idx = spill[spill_read]
                spill_read += 1
            else:
                break
            lab = state[idx]
            for n in range(4):
                q = idx + offsets[n]
                v = state[q]
                if v >= -1:
                    continue
                state[q] = lab
                dq = -2 - v
                if dq >= level:
                    spill[spill_end] = q
                    spill_end += 1
                else:
                    queue[fill[dq]] = q
                    fill[dq] += 1


@njit(cache=True, nogil=True)
def _edt_window(axon, r0, r1, c0, c1):
    """``squared_edt(axon)[r0:r1, c0:c1]`` computed from that window alone.

    Exact when the window holds, for every pixel that is read, its nearest zero pixel: true for the pixels of an
    axon when the window covers the axon's bounding box grown by one pixel (the nearest zero pixel is 4-adjacent
    to a pixel of the disc of axon pixels around the measured one), or the window touches the image's edge there.
    """
    return squared_edt(np.ascontiguousarray(axon[r0:r1, c0:c1]))


def mask_components(axon, myelin):
    """4-connected components of ``axon | myelin``, numbered 1..m in raster order of their first pixel.

    A scanline fill from every pixel not reached yet (the same numbering as ``scipy.ndimage.label``); it needs no
    seeds, so it runs while the axons are measured.

    Returns
    -------
    components : (H, W) int32
        0 outside the mask.
    m : int
        Number of components.
    """
    return fill_components(axon, myelin, False)


def label_axons(axon):
    """8-connected components of ``axon``, numbered 1..n in raster order of their first pixel: the same labels as
    ``scipy.ndimage.label(axon, np.ones((3, 3)))`` (the same kernel as :func:`mask_components`, so no second
    compilation, and no SciPy import: 0.2-0.3 s of every process's start)."""
    return fill_components(axon, axon, True)


@njit(cache=True, nogil=True)
def fill_components(first, second, diagonal):
    """Connected components of ``first | second`` (8-connected when ``diagonal``, else 4-connected), numbered in
    raster order of their first pixel, by a scanline fill from every pixel not reached yet.

    Returns
    -------
    components : (H, W) int32
        0 outside the mask.
    m : int
        Number of components.
    """
    height, width = first.shape
    components = np.zeros((height, width), np.int32)
    # free: in the mask and not reached yet (one byte to read instead of the label and two masks)
    free = np.empty((height, width), np.uint8)
    for r in range(height):
        for c in range(width):
            free[r, c] = first[r, c] | second[r, c]
    reach = 1 if diagonal else 0  # a run touches the runs of the next row up to one column beyond its ends
    # A pixel is pushed at most once from the run above it and once from the run below (4-connected; twice each
    # when diagonal, where the reaches of two runs of a row can overlap), so (2 + 2 reach) H W entries always
    # suffice; the pages beyond the deepest the stack gets are never touched. (A growing stack, reassigned in
    # the loop, made the fill twice as slow.)
    stack_r = np.empty((2 + 2 * reach) * height * width + 1, np.int32)
    stack_c = np.empty((2 + 2 * reach) * height * width + 1, np.int32)
    m = 0
    for r0 in range(height):
        for c0 in range(width):
            if free[r0, c0] == 0:
                continue
            m += 1
            stack_r[0] = r0
            stack_c[0] = c0
            top = 1
            while top > 0:
                top -= 1
                r = stack_r[top]
                c = stack_c[top]
                if free[r, c] == 0:
                    continue
                left = c
                while left > 0 and free[r, left - 1]:
                    left -= 1
                right = c
                while right + 1 < width and free[r, right + 1]:
                    right += 1
                for x in range(left, right + 1):
                    components[r, x] = m
                    free[r, x] = 0
                for nr in (r - 1, r + 1):
                    if nr < 0 or nr >= height:
                        continue
                    previous = 0
                    for x in range(max(left - reach, 0), min(right + reach, width - 1) + 1):
                        # push the first pixel of every free run
                        f = free[nr, x]
                        if f > previous:
                            stack_r[top] = nr
                            stack_c[top] = x
                            top += 1
                        previous = f
    return components, m


@njit(cache=True, nogil=True)
def fibres_from_components(components, m, axon, seed_index, seed_label, depth):
    """``seeded_watershed(squared_edt(axon), axon | myelin, seed_index, seed_label)``, from the mask's components.

    The priority flood's result on one 4-connected component of the mask depends only on that component (pops
    are ordered by (cost, age), a component's pixels are only ever queued by its own pixels, and seeds of equal
    depth keep raster order). A component holding one seed is therefore entirely that seed's, whatever the
    order; a component without a seed stays 0. Only components holding two or more seeds (touching fibres: a few
    percent of the pixels) are flooded with :func:`seeded_watershed`, on the component's bounding box grown by
    one pixel, with the distance map computed on that window alone (see :func:`_edt_window`).

    Parameters
    ----------
    components, m
        :func:`mask_components` of the masks.
    axon : (H, W) bool
    seed_index : (k,) int64
        Raveled seed positions, ascending; seeds outside the mask are ignored, as by ``seeded_watershed``.
    seed_label : (k,) int32
        Positive.
    depth : (H, W) int32 or (0, 0)
        ``squared_edt(axon)`` when already computed; an empty array to compute it per window.

    Returns
    -------
    (H, W) int32 labels, 0 where no seed reaches.
    """
    height, width = components.shape
    k = seed_index.shape[0]
    count = np.zeros(m + 1, np.int64)
    component_of = np.zeros(k, np.int64)
    for i in range(k):
        j = components[seed_index[i] // width, seed_index[i] % width]
        component_of[i] = j
        count[j] += 1
    lookup = np.zeros(m + 1, np.int32)
    for i in range(k):
        j = component_of[i]
        if j > 0 and count[j] == 1:
            lookup[j] = seed_label[i]
    # one pass: the fibre of every one-seed component, and the bounding boxes of the shared ones
    boxes = np.empty((m + 1, 4), np.int64)
    boxes[:, 0] = height
    boxes[:, 1] = -1
    boxes[:, 2] = width
    boxes[:, 3] = -1
    out = np.empty((height, width), np.int32)
    for r in range(height):
        for c in range(width):
            j = components[r, c]
            out[r, c] = lookup[j]
            if count[j] > 1 and j > 0:
                boxes[j, 0] = min(boxes[j, 0], r)
                boxes[j, 1] = max(boxes[j, 1], r + 1)
                boxes[j, 2] = min(boxes[j, 2], c)
                boxes[j, 3] = max(boxes[j, 3], c + 1)
    # seeds of the shared components grouped by component, each group in the seeds' (raster) order
    start = np.zeros(m + 2, np.int64)
    for j in range(1, m + 1):
        start[j + 1] = start[j] + (count[j] if count[j] > 1 else 0)
    grouped = np.empty(start[m + 1], np.int64)
    filled = start.copy()
    for i in range(k):
        j = component_of[i]
        if j > 0 and count[j] > 1:
            grouped[filled[j]] = i
            filled[j] += 1
    have_depth = depth.shape[0] == height and depth.shape[1] == width
    for j in range(1, m + 1):
        if count[j] < 2:
            continue
        r0 = max(boxes[j, 0] - 1, 0)
        r1 = min(boxes[j, 1] + 1, height)
        c0 = max(boxes[j, 2] - 1, 0)
        c1 = min(boxes[j, 3] + 1, width)
        if have_depth:
            local_depth = depth[r0:r1, c0:c1]
        else:
            local_depth = _edt_window(axon, r0, r1, c0, c1)
        # the flood's padded state, straight from the component and the window's distance map
        pw = c1 - c0 + 2
        state = np.full((r1 - r0 + 2) * pw, -1, np.int32)
        max_depth = 0
        for r in range(r0, r1):
            row = (r - r0 + 1) * pw + 1 - c0
            for c in range(c0, c1):
                if components[r, c] == j:
                    d = min(local_depth[r - r0, c - c0], _DEPTH_CAP)
                    state[row + c] = -2 - d
                    if d > max_depth:
                        max_depth = d
        n_seeds = start[j + 1] - start[j]
        local_index = np.empty(n_seeds, np.int64)
        local_label = np.empty(n_seeds, np.int32)
        for s in range(n_seeds):  # raster order is kept: seeds are ascending and the window is a sub-rectangle
            i = grouped[start[j] + s]
            r = seed_index[i] // width
            c = seed_index[i] - r * width
            local_index[s] = (r - r0 + 1) * pw + (c - c0 + 1)
            local_label[s] = seed_label[i]
        _flood(state, pw, max_depth, local_index, local_label)
        for r in range(r0, r1):
            row = (r - r0 + 1) * pw + 1 - c0
            for c in range(c0, c1):
                if components[r, c] == j:
                    v = state[row + c]
                    out[r, c] = v if v > 0 else 0
    return out


@njit(cache=True, nogil=True)
def deepest_axon_pixels(labels, axon, wanted, bbox):
    """:func:`deepest_pixels` with the distance map computed on each axon's bounding box grown by one pixel."""
    height, width = labels.shape
    out = np.empty((wanted.shape[0], 2), np.int64)
    for i in range(wanted.shape[0]):
        lab = wanted[i]
        r0 = max(bbox[lab, 0] - 1, 0)
        r1 = min(bbox[lab, 2] + 1, height)
        c0 = max(bbox[lab, 1] - 1, 0)
        c1 = min(bbox[lab, 3] + 1, width)
        depth = _edt_window(axon, r0, r1, c0, c1)
        best = -1
        for r in range(bbox[lab, 0], bbox[lab, 2]):
            for c in range(bbox[lab, 1], bbox[lab, 3]):
                if labels[r, c] == lab and depth[r - r0, c - c0] > best:
                    best = depth[r - r0, c - c0]
                    out[i, 0] = r
                    out[i, 1] = c
    return out
