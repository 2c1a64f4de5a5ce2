"""Compile the morphometrics kernels ahead of time: ``python -m nnunet_ext.morphometrics.compile_kernels``.

Builds the extension module ``_kernels_aot`` beside ``_kernels.py`` with numba's ``pycc`` (one signature per kernel,
:data:`nnunet_ext.morphometrics.kernels.AOT_SIGNATURES`; the wrappers release the GIL, as the JIT kernels'
``nogil=True``) and records the source's SHA-256 in ``_kernels_aot.json``. Needs numba and a C compiler; takes
about 7 s of CPU. Measured on the 2-core machine: a process that loads these instead of numba's cached JIT kernels
starts 0.6 s of CPU sooner, and a fresh install no longer compiles for 8 s on its first run (see
docs/morphometrics.md). Without it, or when it is stale, everything works with the JIT kernels.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path


def compile_kernels(output_dir: str | os.PathLike | None = None, verbose: bool = False) -> Path:
    """Build ``_kernels_aot`` into ``output_dir`` (default: the package folder); returns the extension's path.

    The extension is built in a temporary folder and moved in before its record, so a process starting meanwhile
    sees either the previous state or the whole new one.
    """
    import numba
    import numba.pycc.compiler as pycc_compiler
    from numba.core.compiler import Flags
    from numba.pycc import CC

    from nnunet_ext.morphometrics import _kernels
    from nnunet_ext.morphometrics.kernels import AOT_NAME, AOT_SIGNATURES, HERE, source_digest

    class _ReleaseGilFlags(Flags):  # pycc's wrappers keep the GIL otherwise; the kernels run in two threads
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.release_gil = True

    target = Path(output_dir) if output_dir is not None else HERE
    if not os.access(target, os.W_OK):
        raise PermissionError(f"{target}: not writable; the ahead-of-time kernels go beside _kernels.py")
    digest = source_digest()
    with tempfile.TemporaryDirectory(prefix="nnunet_ext_kernels_") as build:
        compiler = CC(AOT_NAME)
        compiler.output_dir = build
        compiler.verbose = verbose
        for name, signature in AOT_SIGNATURES.items():
            compiler.export(name, signature)(getattr(_kernels, name).py_func)
        original = pycc_compiler.Flags
        pycc_compiler.Flags = _ReleaseGilFlags
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # numba.pycc's pending-deprecation notice
                compiler.compile()
        finally:
            pycc_compiler.Flags = original
        built = next(Path(build).glob(f"{AOT_NAME}*"))
        destination = target / built.name
        record = target / f"{AOT_NAME}.json"
        record.unlink(missing_ok=True)  # stale until the new extension is in place
        staged = target / f".{built.name}.tmp"
        shutil.copyfile(built, staged)
        os.replace(staged, destination)
    record.write_text(json.dumps({"source_sha256": digest, "numba": numba.__version__,
                                  "python": sys.version.split()[0], "extension": destination.name}) + "\n")
    return destination


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=None, help="where to write it (default: the package folder)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path = compile_kernels(args.output_dir, args.verbose)
    print(f"ahead-of-time morphometrics kernels: {path} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
