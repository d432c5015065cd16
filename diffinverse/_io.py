"""Atomic file output: every file this package writes appears complete or not at all."""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_output"]


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Write a file atomically: yield a temporary path next to ``path``, then rename it.

    The temporary file lives in the destination's directory (so ``os.replace`` is an atomic
    rename on the same file system) and keeps the destination's suffixes (so writers that pick
    a format from the extension, such as nibabel and matplotlib, still work). Its contents are
    flushed to disk (``fsync``) before the rename, so a crash or power loss leaves either the old
    file or the complete new one. If the body raises, the temporary file is removed and ``path``
    is left as it was.

    Args:
        path: the destination.
        overwrite: replace an existing ``path``; otherwise an existing file is an error.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false (checked before and after writing).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite=True / --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part" + "".join(path.suffixes))
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path}: appeared while writing; not overwritten")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
