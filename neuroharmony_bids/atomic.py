"""Atomic file writes: write to a temporary name in the same folder, fsync, then rename.

A reader (or a killed writer) never sees a half-written file, which is what SLURM arrays
writing into one output folder need. ``durable=False`` skips the fsync (4 ms per file on
this machine kind, far more on network file systems): the rename still makes the file appear
whole or not at all to readers and to a killed run; only an OS crash or power loss right after
the write may leave it empty or absent, which callers that write many small regenerable files
(the per-scan derivatives) treat as not written.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

TMP_PREFIX = ".nhtmp-"


@contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success
    (after an fsync unless ``durable=False``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if durable:
            with open(tmp_path, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


_COUNTER = itertools.count()


def write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (the guarantees of :func:`atomic_path`).

    Straight on a file descriptor, with a temporary name unique to this process and thread,
    and the folder created only when missing: at 20,000 small files per run the syscalls are
    the cost, so none is spent twice.
    """
    target = os.fspath(path)
    folder = os.path.dirname(target) or "."
    tmp = os.path.join(
        folder, f"{TMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{next(_COUNTER)}.tmp"
    )
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, 0o644)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(tmp, flags, 0o644)
    except FileExistsError:  # a killed process of the same id left it: take a random name
        with atomic_path(target, durable=durable) as other:
            other.write_bytes(data)
        return Path(target)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
            os.fchmod(fd, 0o644)  # whatever the umask, as atomic_path does
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(target)


def write_text(path: str | os.PathLike, text: str, *, durable: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    return write_bytes(path, text.encode("utf-8"), durable=durable)


def write_table(path: str | os.PathLike, table: pd.DataFrame, sep: str | None = None) -> Path:
    """Write a CSV/TSV deterministically (fixed float format, LF, ``n/a`` for missing in TSV)."""
    path = Path(path)
    if sep is None:
        sep = "," if path.suffix.lower() == ".csv" else "\t"
    na_rep = "n/a" if sep == "\t" else ""
    text = table.to_csv(
        sep=sep, index=False, na_rep=na_rep, float_format="%.10g", lineterminator="\n"
    )
    return write_text(path, text)
