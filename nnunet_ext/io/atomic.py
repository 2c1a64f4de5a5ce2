"""Atomic writes: every file and folder this package produces appears whole or not at all.

Files are written to a hidden temporary sibling (``.<name>.<random>.tmp``) and renamed over the target with
:func:`os.replace`; folders are built in a hidden staging sibling (``.<name>.incomplete-<pid>-<random>``) and swapped in
whole. A run that is killed leaves only such hidden siblings behind; the next run in the same place removes those whose
process is gone (:func:`remove_stale_staging`), so they do not pile up.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "atomic_output_path",
    "write_text_atomically",
    "write_json_atomically",
    "write_csv_atomically",
    "save_figure",
    "staging_folder",
    "replace_folder",
    "remove_stale_staging",
    "scratch_folder",
    "publish_files",
    "STAGING_MARK",
]

#: Infix of staging folders: ``.<name>.incomplete-<pid>-<random>``.
STAGING_MARK = ".incomplete-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_mode(path: Path, folder: bool) -> None:
    """Give a file or folder made by ``mkstemp``/``mkdtemp`` (0600/0700) the permissions a plain ``open``/``mkdir``
    would have given it, so outputs are as readable as any other file the user writes."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; use --overwrite to replace it")


@contextlib.contextmanager
def atomic_output_path(path: str | os.PathLike, overwrite: bool = True, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds, delete it otherwise.

    ``suffix`` (default: the target's own suffix) matters to writers that pick the format from the name.
    """
    path = Path(path)
    _refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                         suffix=path.suffix if suffix is None else suffix)
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        _default_mode(temporary, folder=False)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    """Write ``text`` to ``path`` through a temporary sibling, then rename."""
    path = Path(path)
    with atomic_output_path(path, overwrite) as temporary:
        temporary.write_text(text)
    return path


def write_json_atomically(data, path: str | os.PathLike, overwrite: bool = True, indent: int = 2) -> Path:
    """Write ``data`` as JSON (``sort_keys=False``, trailing newline) through a temporary sibling, then rename."""
    return write_text_atomically(path, json.dumps(data, indent=indent) + "\n", overwrite)


def write_csv_atomically(table, path: str | os.PathLike, overwrite: bool = False, **to_csv_kwargs) -> Path:
    """Write a DataFrame as CSV (``to_csv`` options beside ``index=False``) through a temporary file in the same
    folder, then rename."""
    path = Path(path)
    with atomic_output_path(path, overwrite, suffix=".tmp") as temporary:
        table.to_csv(temporary, **{"index": False, **to_csv_kwargs})
    return path


def save_figure(figure, path: str | os.PathLike, overwrite: bool = True, **savefig_kwargs) -> Path:
    """Write a matplotlib figure (PNG unless the name says otherwise) through a temporary file, then close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_output_path(path, overwrite) as temporary:
            figure.savefig(temporary, **{"dpi": 120, **savefig_kwargs})
    finally:
        plt.close(figure)
    return path


def replace_folder(staging: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Move the finished ``staging`` folder to ``out_dir``; a previous ``out_dir`` is kept until the move succeeded."""
    staging, out_dir = Path(staging), Path(out_dir)
    _default_mode(staging, folder=True)  # mkdtemp made it 0700
    previous = None
    if out_dir.exists():
        previous = out_dir.with_name(f".{out_dir.name}.replaced-{os.getpid()}")
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(out_dir, previous)
    try:
        os.replace(staging, out_dir)
    except BaseException:
        if previous is not None:
            os.replace(previous, out_dir)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    return out_dir


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_staging(out_dir: str | os.PathLike) -> list[Path]:
    """Delete the hidden staging and replaced siblings of ``out_dir`` left by runs that were killed.

    Only folders named by this module (``.<name>.incomplete-<pid>-*``, ``.<name>.replaced-<pid>``) whose process no
    longer exists are removed; a run still writing beside it keeps its folder. Returns what was removed.
    """
    out_dir = Path(out_dir)
    if not out_dir.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(out_dir.name)}\.(?:incomplete|replaced)-(\d+)(?:-.*)?$")
    removed = []
    for candidate in out_dir.parent.iterdir():
        match = pattern.match(candidate.name)
        if match and candidate.is_dir() and not _process_alive(int(match.group(1))):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


@contextlib.contextmanager
def staging_folder(out_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder in a hidden sibling and swap it into ``out_dir`` when the block succeeds.

    Refuses an existing ``out_dir`` unless ``overwrite``; removes stale staging siblings of killed runs first. On any
    error (or Ctrl-C) the staging folder is deleted and ``out_dir`` is left exactly as it was.
    """
    out_dir = Path(out_dir)
    _refuse_existing(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}{STAGING_MARK}{os.getpid()}-", dir=out_dir.parent))
    try:
        yield staging
        replace_folder(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def scratch_folder(out_dir: str | os.PathLike) -> Iterator[Path]:
    """A hidden staging folder beside ``out_dir`` for outputs that are moved into it one by one
    (:func:`publish_files`); the folder is deleted when the block ends, whether it succeeded or not."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}{STAGING_MARK}{os.getpid()}-", dir=out_dir.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_files(staging: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Move every file of a finished ``staging`` folder into ``out_dir`` (created if needed), replacing files of the
    same name and leaving the folder's other files alone; returns the new paths in name order."""
    staging, out_dir = Path(staging), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for produced in sorted(staging.iterdir()):
        if produced.is_file():
            _default_mode(produced, folder=False)  # a writer may have used mkstemp too
        os.replace(produced, out_dir / produced.name)
        written.append(out_dir / produced.name)
    return written
