"""The morphometrics kernels as the rest of the package calls them: compiled ahead of time when built, else numba's
just-in-time compilation of :mod:`nnunet_ext.morphometrics._kernels`.

Why: a process that uses the JIT kernels imports numba (0.25 s of CPU) and initialises it on the first call
(0.35 s, most of it numba's BLAS check importing ``scipy.linalg``), even when every kernel comes from numba's
cache, and the first run on a fresh install compiles them all (about 8 s of CPU). ``python -m
nnunet_ext.morphometrics.compile_kernels`` (run by ``scripts/demo.sh`` and ``scripts/test.sh`` after installing)
builds them once, ahead of time, into an extension module beside this file (``_kernels_aot``, with numba's
``pycc``; the kernels still release the GIL); a process then loads that in about 1 ms, without importing numba.

The extension is used only when it was built from the current ``_kernels.py`` (its SHA-256 is recorded beside it)
and for the argument types it was built for (C-contiguous arrays of the dtypes below, checked before each call:
pycc's wrappers would read any other array as if it were one of those); anything else goes to the JIT kernels,
which compile for it. ``NNUNET_EXT_JIT_KERNELS=1`` forces the JIT kernels.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
AOT_NAME = "_kernels_aot"
AOT_RECORD = HERE / f"{AOT_NAME}.json"

# the same weights as _kernels._PERIMETER_WEIGHTS (skimage.measure.perimeter's, by border code)
PERIMETER_WEIGHTS = np.zeros(50, dtype=np.float64)
PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2.0)
PERIMETER_WEIGHTS[[13, 23]] = (1.0 + math.sqrt(2.0)) / 2.0
_PERIMETER_WEIGHTS = PERIMETER_WEIGHTS

_C2I32, _C2B, _C2I64 = "int32[:, ::1]", "boolean[:, ::1]", "int64[:, ::1]"
#: Kernel -> the one signature compiled ahead of time (the types the package passes).
AOT_SIGNATURES = {
    "label_stats": f"Tuple((int64[::1], {_C2I64}, {_C2I64}, float64[:, ::1], {_C2I64}, boolean[::1], int64[::1]))"
                   f"({_C2I32}, int64, int64, int64)",
    "label_perimeter": f"float64[::1]({_C2I32}, int64, float64[::1])",
    "label_convex_area": f"int64[::1]({_C2I32}, int64, {_C2I64}, int64, int64)",
    "fill_components": f"Tuple(({_C2I32}, int64))({_C2B}, {_C2B}, boolean)",
    "fibres_from_components": f"{_C2I32}({_C2I32}, int64, {_C2B}, int64[::1], int32[::1], {_C2I32})",
    "squared_edt": f"{_C2I32}({_C2B})",
    "deepest_pixels": f"{_C2I64}({_C2I32}, {_C2I32}, int64[::1], {_C2I64})",
    "deepest_axon_pixels": f"{_C2I64}({_C2I32}, {_C2B}, int64[::1], {_C2I64})",
}


# The arrays each signature takes, in order (dtype, ndim; C-contiguous), None for a scalar. pycc's wrappers do not
# check layouts: a strided or other-dtype array would be read as if it were this one, so the facade checks first.
_ARRAY_ARGS = {
    "label_stats": [("int32", 2), None, None, None],
    "label_perimeter": [("int32", 2), None, ("float64", 1)],
    "label_convex_area": [("int32", 2), None, ("int64", 2), None, None],
    "fill_components": [("bool", 2), ("bool", 2), None],
    "fibres_from_components": [("int32", 2), None, ("bool", 2), ("int64", 1), ("int32", 1), ("int32", 2)],
    "squared_edt": [("bool", 2)],
    "deepest_pixels": [("int32", 2), ("int32", 2), ("int64", 1), ("int64", 2)],
    "deepest_axon_pixels": [("int32", 2), ("bool", 2), ("int64", 1), ("int64", 2)],
}


def _matches(args, specs) -> bool:
    if len(args) != len(specs):
        return False
    for arg, spec in zip(args, specs):
        if spec is None:
            if not isinstance(arg, (int, np.integer, bool, np.bool_)):
                return False
        elif not (isinstance(arg, np.ndarray) and arg.dtype == spec[0] and arg.ndim == spec[1]
                  and arg.flags.c_contiguous):
            return False
    return True


def source_digest() -> str:
    """SHA-256 of ``_kernels.py``: an extension built from another version is not used."""
    return hashlib.sha256((HERE / "_kernels.py").read_bytes()).hexdigest()


def _load_aot():
    if os.environ.get("NNUNET_EXT_JIT_KERNELS", "") not in ("", "0"):
        return None
    try:
        record = json.loads(AOT_RECORD.read_text())
        if record.get("source_sha256") != source_digest():
            return None
        return importlib.import_module(f"nnunet_ext.morphometrics.{AOT_NAME}")
    except Exception:  # noqa: BLE001 - not built, stale, or built for another Python: the JIT kernels serve
        return None


_AOT = _load_aot()


def using_aot() -> bool:
    """Whether the ahead-of-time kernels are in use."""
    return _AOT is not None


def _jit():
    from nnunet_ext.morphometrics import _kernels

    return _kernels


def _kernel(name: str):
    compiled = getattr(_AOT, name, None)
    specs = _ARRAY_ARGS[name]

    def call(*args):
        if compiled is not None and _matches(args, specs):
            return compiled(*args)
        return getattr(_jit(), name)(*args)  # other types or layouts: the JIT kernel compiles for them

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"``_kernels.{name}`` (ahead-of-time compiled when built); see that function."
    return call


label_stats = _kernel("label_stats")
label_perimeter = _kernel("label_perimeter")
label_convex_area = _kernel("label_convex_area")
fill_components = _kernel("fill_components")
fibres_from_components = _kernel("fibres_from_components")
squared_edt = _kernel("squared_edt")
deepest_pixels = _kernel("deepest_pixels")
deepest_axon_pixels = _kernel("deepest_axon_pixels")


def mask_components(axon, myelin):
    """4-connected components of ``axon | myelin`` (see ``_kernels.mask_components``)."""
    return fill_components(axon, myelin, False)


def label_components_4(mask) -> tuple[np.ndarray, int]:
    """4-connected components of a mask, int32 1..n in raster order of their first pixels, and n: the labels of
    ``scipy.ndimage.label``'s default and of AxonDeepSeg's ``measure.label(connectivity=1)`` (fascicles,
    unmyelinated axons)."""
    mask = np.ascontiguousarray(mask, dtype=bool)
    labels, count = mask_components(mask, mask)
    return labels, int(count)


def label_axons(axon):
    """8-connected labels of ``axon``, as ``scipy.ndimage.label`` (see ``_kernels.label_axons``)."""
    return fill_components(axon, axon, True)
