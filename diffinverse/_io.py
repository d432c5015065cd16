"""Atomic file output: every file this package writes appears complete or not at all."""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_output", "new_file_mode"]

_UMASK_LOCK = threading.Lock()


def new_file_mode(path: str | os.PathLike) -> int:
    """The permission bits a plain ``open(path, "w")`` would leave ``path`` with.

    An existing file keeps its mode; a new one gets ``0o666`` less the process's umask (read by
    setting and restoring it, under a lock).
    """
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        with _UMASK_LOCK:
            umask = os.umask(0o022)
            os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Write a file atomically: yield a temporary path next to ``path``, then rename it.

    The temporary file lives in the destination's directory (so ``os.replace`` is an atomic
    rename on the same file system) and keeps the destination's suffixes (so writers that pick
    a format from the extension, such as nibabel and matplotlib, still work). Its contents are
    flushed to disk (``fsync``) before the rename, so a crash or power loss leaves either the old
    file or the complete new one. The file gets the permissions a plain write would give it
    (:func:`new_file_mode`: the umask's for a new file, the old file's when replacing one), not
    the ``0600`` of the temporary file. If the body raises, the temporary file is removed and
    ``path`` is left as it was.

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
        os.chmod(tmp, new_file_mode(path))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
