"""Vaa3D .v3dpbd reading against files compressed by an encoder written here from the format's description
(Vaa3D's decompressPBD8 / decompressPBD16, see nnunet_ext/io/v3dpbd.py), not from the reader's code: runs are
chosen greedily (repeat, else difference, else literal) and difference bits go through a generic bit writer."""
from __future__ import annotations

import numpy as np
import pytest

from nnunet_ext.io.v3dpbd import decompress_pbd, read_v3dpbd

# per bit depth: code ranges and value ranges of the three run kinds, from the description
FORMATS = {
    1: dict(literal=(0, 33), difference=(33, 95), repeat=(128, 128), diff_bits=2, diffs={0: 0, 1: 1, 2: 2, -1: 3}),
    2: dict(literal=(0, 32), difference=(32, 48), repeat=(223, 33), diff_bits=3,
            diffs={0: 0, 1: 1, 2: 2, 3: 3, 4: 4, -1: 5, -2: 6, -3: 7}),
}  # (first code, longest run)


def _pack_bits(codes, bits, lsb_first):
    """Pack fixed-width codes into bytes: 2-bit codes least significant first within each byte (8-bit PBD), 3-bit
    codes as one big-endian bit string (16-bit PBD); the last byte is zero-padded."""
    out = bytearray()
    if lsb_first:
        for start in range(0, len(codes), 8 // bits):
            byte = 0
            for k, code in enumerate(codes[start:start + 8 // bits]):
                byte |= code << (bits * k)
            out.append(byte)
        return bytes(out)
    bitstring = "".join(format(code, f"0{bits}b") for code in codes)
    bitstring += "0" * (-len(bitstring) % 8)
    return bytes(int(bitstring[i:i + 8], 2) for i in range(0, len(bitstring), 8))


def encode_pbd(values: np.ndarray, bytes_per_value: int, byte_order: str) -> bytes:
    spec = FORMATS[bytes_per_value]
    values = [int(v) for v in np.asarray(values).ravel()]
    item = np.dtype(np.uint8 if bytes_per_value == 1 else np.uint16).newbyteorder(byte_order)
    out, literal, prior, i = bytearray(), [], 0, 0

    def flush_literal():
        nonlocal literal
        first, longest = spec["literal"]
        for start in range(0, len(literal), longest):
            chunk = literal[start:start + longest]
            out.append(first + len(chunk) - 1)
            out.extend(np.array(chunk, item).tobytes())
        literal = []

    while i < len(values):
        run = 1
        while i + run < len(values) and values[i + run] == values[i] and run < spec["repeat"][1]:
            run += 1
        if run >= 3:
            flush_literal()
            out.append(spec["repeat"][0] + run - 1)
            out.extend(np.array([values[i]], item).tobytes())
            prior, i = values[i], i + run
            continue
        diffs, previous = [], prior if not literal else literal[-1]
        while (i + len(diffs) < len(values) and len(diffs) < spec["difference"][1]
               and values[i + len(diffs)] - previous in spec["diffs"]):
            diffs.append(values[i + len(diffs)] - previous)
            previous = values[i + len(diffs) - 1]
        if len(diffs) >= 4:
            flush_literal()
            out.append(spec["difference"][0] + len(diffs) - 1)
            out.extend(_pack_bits([spec["diffs"][d] for d in diffs], spec["diff_bits"], bytes_per_value == 1))
            prior, i = previous, i + len(diffs)
            continue
        literal.append(values[i])
        prior, i = values[i], i + 1
    flush_literal()
    return bytes(out)


def write_v3dpbd(path, array: np.ndarray, byte_order: str) -> None:
    """Header as Vaa3D writes it (key, endian byte, int16 data type, int32 X Y Z C), then the stream."""
    c, z, y, x = array.shape
    datatype = array.dtype.itemsize
    with open(path, "wb") as stream:
        stream.write(b"v3d_volume_pkbitdf_encod" + (b"B" if byte_order == ">" else b"L"))
        stream.write(np.array([datatype], f"{byte_order}i2").tobytes())
        stream.write(np.array([x, y, z, c], f"{byte_order}i4").tobytes())
        stream.write(encode_pbd(array, datatype, byte_order))


def _stack(dtype, shape=(2, 5, 17, 23), seed=0):
    """Smooth ramps (difference runs, some crossing 255/256), flat patches (repeat runs), noise (literals)."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    c, z, y, x = np.indices(shape)
    array = (200 + x + 2 * y + 7 * z + 50 * c) % (top + 1)
    array[:, 1:3, 4:9, 2:15] = 7  # flat
    array[:, 3, :, 10:] = rng.integers(0, top + 1, array[:, 3, :, 10:].shape)  # noise
    low, high = (-1, 3) if dtype == np.uint8 else (-3, 5)  # every difference a difference run can hold
    array[1, 4] = np.cumsum(rng.integers(low, high, (shape[2], shape[3])), axis=1) + 100  # random walk
    array[:, 0, 0, :4] = top  # extreme values as literals
    return np.clip(array, 0, top).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("byte_order", ["<", ">"])
def test_reads_files_of_an_independent_encoder(tmp_path, dtype, byte_order):
    array = _stack(dtype)
    path = tmp_path / "stack.v3dpbd"
    write_v3dpbd(path, array, byte_order)
    stream = path.read_bytes()[43:]
    codes = _run_codes(stream, array.dtype.itemsize)
    assert {"literal", "difference", "repeat"} <= codes  # every run kind is exercised
    assert len(stream) < array.nbytes  # it does compress
    result = read_v3dpbd(path)
    assert result.dtype == dtype and result.shape == array.shape
    np.testing.assert_array_equal(result, array)


def _run_codes(stream: bytes, bytes_per_value: int) -> set:
    """Kinds of the runs in an encoded stream (walking it with the description's run lengths)."""
    kinds, position = set(), 0
    while position < len(stream):
        code = stream[position]
        if bytes_per_value == 1:
            if code < 33:
                kinds.add("literal")
                position += code + 2
            elif code < 128:
                kinds.add("difference")
                position += 1 + (code - 32 + 3) // 4
            else:
                kinds.add("repeat")
                position += 2
        else:
            if code < 32:
                kinds.add("literal")
                position += 1 + 2 * (code + 1)
            elif code < 80:
                kinds.add("difference")
                position += 1 + (3 * (code - 31) + 7) // 8
            else:
                kinds.add("repeat")
                position += 3
    return kinds


def test_hand_made_streams_decode_as_the_description_says():
    # 8-bit: literal [5, 9]; difference run of 5 from prior 9: +1, -1, +2, 0 | +1 -> 10, 9, 11, 11, 12;
    # repeat 200 x 3
    first = (1 << 0) | (3 << 2) | (2 << 4) | (0 << 6)
    stream = bytes([1, 5, 9, 32 + 5, first, 1, 127 + 3, 200])
    np.testing.assert_array_equal(decompress_pbd(stream, 10, 1), [5, 9, 10, 9, 11, 11, 12, 200, 200, 200])
    # 16-bit, big endian: literal [1000]; differences +4, -3, -1 (codes 4, 7, 5 = 100 111 101 -> 10011110 1...)
    stream = bytes([0, 0x03, 0xE8, 31 + 3, 0b10011110, 0b10000000, 222 + 2, 0x01, 0x02])
    np.testing.assert_array_equal(decompress_pbd(stream, 6, 2, ">"), [1000, 1004, 1001, 1000, 258, 258])
    # 8-bit differences wrap modulo 256 (Vaa3D's unsigned char arithmetic)
    np.testing.assert_array_equal(decompress_pbd(bytes([0, 255, 32 + 2, 0b0101]), 3, 1), [255, 0, 1])


@pytest.mark.parametrize("breakage, match", [
    ("truncated", "compressed stream ends inside the run"),
    ("short", "the stream decodes to .* values, the header announces"),
    ("key", "not a Vaa3D PBD file"),
    ("code", "undefined 16-bit PBD code 100"),
])
def test_broken_files_are_named(tmp_path, breakage, match):
    array = _stack(np.uint16)
    path = tmp_path / "broken.v3dpbd"
    write_v3dpbd(path, array, "<")
    data = path.read_bytes()
    if breakage == "truncated":
        data = data[:-1]
    elif breakage == "short":
        data = data[:43] + encode_pbd(array.ravel()[:-5], 2, "<")
    elif breakage == "key":
        data = b"raw_image_stack_by_hpeng" + data[24:]
    else:
        data = data[:43] + bytes([100]) + data[43:]
    path.write_bytes(data)
    with pytest.raises(ValueError, match=f"broken.v3dpbd: {match}"):
        read_v3dpbd(path)


def test_a_larger_stack_decodes_fast(tmp_path):
    import time

    rng = np.random.default_rng(1)
    array = (np.cumsum(rng.integers(-1, 3, (1, 16, 128, 128)), axis=-1) % 256).astype(np.uint8)
    array[:, :, :, 64:] = 0
    stream = encode_pbd(array, 1, "<")
    start = time.perf_counter()
    result = decompress_pbd(stream, array.size, 1)
    np.testing.assert_array_equal(result.reshape(array.shape), array)
    assert time.perf_counter() - start < 20  # numba: well under a second after compilation
