"""Reading Vaa3D's compressed ``.v3dpbd`` image stacks (BigNeuron's Gold166 images are stored this way).

What is implemented, and from where: Vaa3D's ``ImageLoader::loadRaw2StackPBD`` with ``decompressPBD8`` and
``decompressPBD16`` (Vaa3D ``v3d_main/neuron_annotator/utility/ImageLoader.cpp``, Sean Murphy's "packbits plus
difference" encoding), cross-checked against the independent Java port in Fiji's ``Vaa3d_Reader``
(``V3dRawImageStream``, ``Pbd16InputStream``, C. Bruns, HHMI).

Header (43 bytes), the same layout as ``.v3draw`` with its own key:

* 24 bytes ``v3d_volume_pkbitdf_encod``;
* 1 byte ``B`` or ``L``: the byte order of every multi-byte number that follows, 16-bit pixel values included;
* int16 data type: 1 uint8, 2 uint16 (Vaa3D's PBD loader refuses 4, float32);
* four int32 sizes X, Y, Z, C.

Then, to the end of the file, one compressed stream of the X * Y * Z * C values in C, Z, Y, X order (X fastest),
read as a sequence of runs, each starting with a code byte. A "prior" value, 0 at the start, is the last value
decoded; difference runs add to it.

8-bit (``decompressPBD8``):

* code 0-32: literal run of ``code + 1`` bytes, copied;
* code 33-127: difference run of ``code - 32`` values; each following byte packs four 2-bit differences, least
  significant bits first (bits 0-1 are the first); 0, 1, 2 mean +0, +1, +2 and 3 means -1; arithmetic wraps
  modulo 256; the last byte may be part-used;
* code 128-255: repeat run: the next byte, ``code - 127`` times.

16-bit (``decompressPBD16``):

* code 0-31: literal run of ``code + 1`` uint16 values (2 bytes each, in the header's byte order);
* code 32-79: difference run of ``code - 31`` values; the following ``ceil(3 n / 8)`` bytes hold n 3-bit
  differences as one bit stream, most significant bit first (Vaa3D's 3-3-2 / 1-3-3-1 / 2-3-3 byte partition);
  d = 0-4 means +d, d = 5, 6, 7 mean -1, -2, -3 (``d < 5 ? d : 4 - d``); arithmetic wraps modulo 65536;
* code 80-222: not defined (Vaa3D logs "unimplemented code"); an error here;
* code 223-255: repeat run: the next uint16 value, ``code - 222`` times.

Deviations: Vaa3D refuses 16-bit files whose byte order differs from the machine's; here the header's byte order
is honoured for the pixel values as well (as the Java port does). Vaa3D's newer "PBD3" variant and Gene Myers'
``v3d_stack_pkbit_by_gene1`` are other formats (other keys) and are not read. The decoding runs in a numba kernel
(compiled on first use, about a second); a pure-Python loop takes minutes on a Gold166 stack.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

PBD_MAGIC = b"v3d_volume_pkbitdf_encod"
PBD_HEADER_SIZE = len(PBD_MAGIC) + 1 + 2 + 4 * 4  # 43
PBD_DATATYPES = {1: np.uint8, 2: np.uint16}

# error codes of the kernels
_OK, _TRUNCATED, _OVERFLOW, _BAD_CODE = 0, 1, 2, 3


def _decode_pbd8(source, target):
    """Decode an 8-bit PBD stream ``source`` (uint8) into ``target`` (uint8). Returns (values, bytes, error)."""
    n_source, n_target = source.shape[0], target.shape[0]
    cp = 0
    dp = 0
    prior = 0
    while cp < n_source:
        code = np.int64(source[cp])
        if code < 33:  # literal
            count = code + 1
            if cp + 1 + count > n_source:
                return dp, cp, _TRUNCATED
            if dp + count > n_target:
                return dp, cp, _OVERFLOW
            for j in range(count):
                target[dp + j] = source[cp + 1 + j]
            dp += count
            cp += count + 1
            prior = np.int64(target[dp - 1])
        elif code < 128:  # difference, 2 bits each, least significant first
            count = code - 32
            n_bytes = (count + 3) // 4
            if cp + 1 + n_bytes > n_source:
                return dp, cp, _TRUNCATED
            if dp + count > n_target:
                return dp, cp, _OVERFLOW
            for j in range(count):
                bits = (np.int64(source[cp + 1 + j // 4]) >> (2 * (j % 4))) & 3
                prior = (prior + (-1 if bits == 3 else bits)) & 0xFF
                target[dp] = prior
                dp += 1
            cp += 1 + n_bytes
        else:  # repeat
            count = code - 127
            if cp + 1 >= n_source:
                return dp, cp, _TRUNCATED
            if dp + count > n_target:
                return dp, cp, _OVERFLOW
            value = source[cp + 1]
            for j in range(count):
                target[dp + j] = value
            dp += count
            prior = np.int64(value)
            cp += 2
    return dp, cp, _OK


def _decode_pbd16(source, target, big_endian):
    """Decode a 16-bit PBD stream ``source`` (uint8) into ``target`` (uint16). Returns (values, bytes, error)."""
    n_source, n_target = source.shape[0], target.shape[0]
    cp = 0
    dp = 0
    prior = 0
    while cp < n_source:
        code = np.int64(source[cp])
        if code < 32:  # literal
            count = code + 1
            if cp + 1 + 2 * count > n_source:
                return dp, cp, _TRUNCATED
            if dp + count > n_target:
                return dp, cp, _OVERFLOW
            for j in range(count):
                first, second = np.int64(source[cp + 1 + 2 * j]), np.int64(source[cp + 2 + 2 * j])
                target[dp + j] = (first << 8) | second if big_endian else (second << 8) | first
            dp += count
            cp += 1 + 2 * count
            prior = np.int64(target[dp - 1])
        elif code < 80:  # difference, 3 bits each, one most-significant-bit-first stream
            count = code - 31
            n_bytes = (3 * count + 7) // 8
            if cp + 1 + n_bytes > n_source:
                return dp, cp, _TRUNCATED
            if dp + count > n_target:
                return dp, cp, _OVERFLOW
            for j in range(count):
                bit = 3 * j
                pair = np.int64(source[cp + 1 + bit // 8]) << 8
                if bit // 8 + 1 < n_bytes:
                    pair |= np.int64(source[cp + 2 + bit // 8])
                d = (pair >> (13 - bit % 8)) & 7
                prior = (prior + (d if d < 5 else 4 - d)) & 0xFFFF
                target[dp] = prior
                dp += 1
            cp += 1 + n_bytes
        elif code < 223:
            return dp, cp, _BAD_CODE
        else:  # repeat
            count = code - 222
            if cp + 3 > n_source:
                return dp, cp, _TRUNCATED
            if dp + count > n_target:
                return dp, cp, _OVERFLOW
            first, second = np.int64(source[cp + 1]), np.int64(source[cp + 2])
            value = (first << 8) | second if big_endian else (second << 8) | first
            for j in range(count):
                target[dp + j] = value
            dp += count
            prior = value
            cp += 3
    return dp, cp, _OK


@functools.lru_cache(maxsize=None)
def _kernel(name: str):
    function = {"pbd8": _decode_pbd8, "pbd16": _decode_pbd16}[name]
    try:
        import numba
    except ImportError:  # numba is a dependency; without it the same code runs (slowly) in Python
        return function
    return numba.njit(nogil=True)(function)


def decompress_pbd(stream, n_values: int, bytes_per_value: int, byte_order: str = "<") -> np.ndarray:
    """Decode a PBD stream (the bytes after the 43-byte header) into ``n_values`` uint8 or uint16 values.

    ``byte_order`` (``"<"`` or ``">"``) is that of 16-bit literal and repeat values. Raises ValueError for a
    truncated or corrupt stream, naming the byte offset in the stream.
    """
    source = np.frombuffer(stream, np.uint8) if not isinstance(stream, np.ndarray) else stream.view(np.uint8)
    if bytes_per_value == 1:
        target = np.empty(n_values, np.uint8)
        values, position, error = _kernel("pbd8")(source, target)
    elif bytes_per_value == 2:
        target = np.empty(n_values, np.uint16)
        values, position, error = _kernel("pbd16")(source, target, byte_order == ">")
    else:
        raise ValueError(f"PBD holds 1- or 2-byte values, got {bytes_per_value}")
    if error == _TRUNCATED:
        raise ValueError(f"compressed stream ends inside the run starting at byte {position} (truncated file?)")
    if error == _OVERFLOW:
        raise ValueError(f"the run at byte {position} decodes past the {n_values} values the header announces")
    if error == _BAD_CODE:
        raise ValueError(f"undefined 16-bit PBD code {source[position]} at byte {position}")
    if values != n_values:
        raise ValueError(f"the stream decodes to {values} values, the header announces {n_values} "
                         f"(truncated file?)")
    return target


def read_v3dpbd_header(header: bytes) -> tuple[str, int, tuple[int, int, int, int]]:
    """``(byte_order, bytes_per_value, (x, y, z, c))`` from the first 43 bytes of a ``.v3dpbd`` file."""
    if not header.startswith(PBD_MAGIC):
        raise ValueError(f"not a Vaa3D PBD file (no '{PBD_MAGIC.decode()}' header)")
    if len(header) < PBD_HEADER_SIZE:
        raise ValueError(f"truncated header ({len(header)} of {PBD_HEADER_SIZE} bytes)")
    endian_code = header[24:25]
    if endian_code not in (b"B", b"L"):
        raise ValueError(f"endian byte must be 'B' or 'L', got {endian_code!r}")
    byte_order = ">" if endian_code == b"B" else "<"
    datatype = int(np.frombuffer(header, f"{byte_order}i2", 1, 25)[0])
    if datatype not in PBD_DATATYPES:
        raise ValueError(f"data type {datatype} not supported by PBD (1 uint8, 2 uint16)")
    sizes = tuple(int(v) for v in np.frombuffer(header, f"{byte_order}i4", 4, 27))
    if min(sizes) <= 0:
        raise ValueError(f"image sizes X, Y, Z, C must be positive, got {sizes}")
    return byte_order, datatype, sizes


def read_v3dpbd(path: str | os.PathLike) -> np.ndarray:
    """Read a Vaa3D ``.v3dpbd`` file as a uint8 or uint16 array of axes (C, Z, Y, X)."""
    path = Path(path)
    data = np.fromfile(path, np.uint8)
    try:
        byte_order, datatype, (x, y, z, c) = read_v3dpbd_header(data[:PBD_HEADER_SIZE].tobytes())
        values = decompress_pbd(data[PBD_HEADER_SIZE:], x * y * z * c, datatype, byte_order)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return values.reshape(c, z, y, x)
