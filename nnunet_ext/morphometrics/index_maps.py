"""AxonDeepSeg 5.5's index images and instance maps, drawn from the labels already computed (no second watershed).

ADS writes, for ``<stem>``:

- ``<stem>_index.png``: 8-bit, 0 with the axons' numbers (0-based rows of its table: our ``axon_id - 1``) drawn in
  255 at ``(x0 - s/2, y0 - s/2)`` with DejaVu Sans of size ``s = max(int(mean axon diameter in px / 3), 10)``
  (``postprocessing.generate_axon_numbers_image``);
- ``<stem>_axonmyelin_index.png``: RGB, background black, myelin red, axon blue (``ImageOps.colorize`` of the
  0/127/255 axonmyelin mask) with the index image pasted on it through itself as mask; ``_uaxon_index.png`` and
  ``_nerve_index.png`` the same of the uaxon / nerve mask (foreground blue);
- with ``-c``: ``<stem>_colorized.png``, RGB, fibre k coloured with the (k-1) mod 4-th of its four colours, and
  ``<stem>_instance-map.png``, the fibre instance map as 16-bit PNG (fibre k = axon k, 0 background).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

INDEX_SUFFIX = "_index.png"
AXONMYELIN_INDEX_SUFFIX = "_axonmyelin_index.png"
UAXON_INDEX_SUFFIX = "_uaxon_index.png"
NERVE_INDEX_SUFFIX = "_nerve_index.png"
COLORIZED_SUFFIX = "_colorized.png"
INSTANCE_MAP_SUFFIX = "_instance-map.png"
#: ADS's colour cycle of ``colorize_instance_segmentation``.
INSTANCE_COLOURS = np.array([(217, 237, 146), (118, 200, 147), (22, 138, 173), (24, 78, 119)], np.uint8)
_FONTS: dict = {}


def _font(size: int):
    """DejaVu Sans (ADS's font, shipped with matplotlib; found without importing it), else Pillow's default."""
    from PIL import ImageFont

    if size not in _FONTS:
        import importlib.util

        spec = importlib.util.find_spec("matplotlib")
        path = None
        if spec is not None and spec.submodule_search_locations:
            candidate = Path(spec.submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
            path = candidate if candidate.is_file() else None
        _FONTS[size] = ImageFont.truetype(str(path), size) if path else ImageFont.load_default(size)
    return _FONTS[size]


def _digit_glyphs(size: int) -> tuple[list[np.ndarray], int]:
    """Each digit as PIL draws it at (0, 0) (uint8 bitmap, ascender-anchored), and the digits' advance."""
    from PIL import Image, ImageDraw

    key = ("glyphs", size)
    if key not in _FONTS:
        font = _font(size)
        advance = int(round(font.getlength("0")))
        height = sum(font.getmetrics())
        glyphs = []
        for digit in "0123456789":
            canvas = Image.new("L", (advance + size, height), 0)
            ImageDraw.Draw(canvas).text((0, 0), digit, font=font, fill=255)
            glyphs.append(np.asarray(canvas))
        _FONTS[key] = (glyphs, advance)
    return _FONTS[key]


def index_image(per_axon: pd.DataFrame, shape: tuple[int, int], pixel_size_um: float,
                diameter_column: str = "axon_diam (um)") -> np.ndarray:
    """ADS's index image: each row's 0-based number at its centroid, 255 on 0 (uint8, ``shape``).

    Digits are drawn from glyphs rendered once (DejaVu Sans, ADS's size rule) at whole-pixel positions
    ``round(x0 - s/2), round(y0 - s/2)``: ADS's ``ImageDraw.text`` per axon at sub-pixel positions took ~60 us an
    axon; the same digits differ from it only in sub-pixel anti-aliasing."""
    canvas = np.zeros(shape, np.uint8)
    if not len(per_axon):
        return canvas
    mean_px = float(np.mean(per_axon[diameter_column].to_numpy(float))) / pixel_size_um
    size = max(int(mean_px / 3), 10) if np.isfinite(mean_px) else 10
    glyphs, advance = _digit_glyphs(size)
    height, width = shape
    xs = np.round(per_axon["x0 (px)"].to_numpy(float) - size / 2).astype(np.int64)
    ys = np.round(per_axon["y0 (px)"].to_numpy(float) - size / 2).astype(np.int64)
    for number, (x, y) in enumerate(zip(xs.tolist(), ys.tolist())):
        for k, digit in enumerate(str(number)):
            glyph = glyphs[ord(digit) - 48]
            left, top = x + k * advance, y
            gh, gw = glyph.shape
            r0, c0 = max(top, 0), max(left, 0)
            r1, c1 = min(top + gh, height), min(left + gw, width)
            if r0 < r1 and c0 < c1:
                target = canvas[r0:r1, c0:c1]
                np.maximum(target, glyph[r0 - top:r1 - top, c0 - left:c1 - left], out=target)
    return canvas


#: Palette of the coloured index images: background black, myelin red, axon blue, numbers white.
INDEX_PALETTE = np.array([(0, 0, 0), (255, 0, 0), (0, 0, 255), (255, 255, 255)], np.uint8)


def coloured_index(classes: np.ndarray, index: np.ndarray):
    """ADS's ``_axonmyelin_index`` as a palette image: ``classes`` 0 background (black), 1 myelin (red), 2 axon
    (blue), the index numbers white where the index image is at least 128 (ADS pastes them anti-aliased)."""
    from PIL import Image

    values = classes.astype(np.uint8, copy=True)
    values[index >= 128] = 3
    image = Image.fromarray(values).convert("P")  # L -> P keeps the values as indices
    image.putpalette(INDEX_PALETTE.ravel().tolist())
    return image


def colorized_instances(fibres: np.ndarray):
    """ADS's ``_colorized.png`` as a palette image: fibre k in the ((k-1) mod 4)-th colour, background black."""
    from PIL import Image

    count = int(fibres.max(initial=0))
    lut = np.zeros(count + 1, np.uint8)
    lut[1:] = np.arange(count) % 4 + 1
    image = Image.fromarray(lut[fibres]).convert("P")
    palette = np.zeros((5, 3), np.uint8)
    palette[1:] = INSTANCE_COLOURS
    image.putpalette(palette.ravel().tolist())
    return image


def save_index_maps(folder: str | os.PathLike, name: str, per_axon: pd.DataFrame, axon: np.ndarray,
                    myelin: np.ndarray, pixel_size_um: float, fibres: np.ndarray | None = None,
                    uaxon_table: pd.DataFrame | None = None, uaxon: np.ndarray | None = None,
                    nerve: np.ndarray | None = None, index: bool = True) -> list[Path]:
    """Write ADS's index images (and, given ``fibres``, the colorized and raw instance maps, ADS's ``-c``); returns
    the paths."""
    from PIL import Image

    folder = Path(folder)
    written = []

    def save(suffix, array):
        path = folder / f"{name}{suffix}"
        (array if isinstance(array, Image.Image) else Image.fromarray(array)).save(path, compress_level=1)
        written.append(path)

    if fibres is not None:
        if fibres.max(initial=0) > np.iinfo(np.uint16).max:
            raise ValueError(f"{name}: {fibres.max()} fibres do not fit a 16-bit instance map (ADS's format)")
        save(COLORIZED_SUFFIX, colorized_instances(fibres))
        save(INSTANCE_MAP_SUFFIX, fibres.astype(np.uint16))
    if not index:
        return written
    numbers = index_image(per_axon, axon.shape, pixel_size_um)
    save(INDEX_SUFFIX, numbers)
    save(AXONMYELIN_INDEX_SUFFIX, coloured_index(myelin.view(np.uint8) + 2 * axon.view(np.uint8), numbers))
    if uaxon is not None and uaxon_table is not None:
        save(UAXON_INDEX_SUFFIX, coloured_index(2 * uaxon.view(np.uint8),
                                                index_image(uaxon_table, uaxon.shape, pixel_size_um)))
    if nerve is not None:
        from nnunet_ext.morphometrics.nerve import fascicle_labels

        labels, count = fascicle_labels(nerve)
        rows = pd.DataFrame({"y0 (px)": [0.0] * count, "x0 (px)": [0.0] * count, "d": [0.0] * count})
        if count:  # fascicle centroids and equivalent diameters, as ADS's nerve table
            from nnunet_ext.morphometrics import kernels

            areas, _, sums = kernels.label_stats(np.ascontiguousarray(labels, dtype=np.int32), count, 0, 0)[:3]
            areas = areas[1:].astype(np.float64)
            rows = pd.DataFrame({"y0 (px)": sums[1:, 0] / areas, "x0 (px)": sums[1:, 1] / areas,
                                 "d": np.sqrt(4 * areas / np.pi) * pixel_size_um})
        save(NERVE_INDEX_SUFFIX, coloured_index(2 * nerve.view(np.uint8), index_image(rows, nerve.shape,
                                                                                      pixel_size_um, "d")))
    return written
