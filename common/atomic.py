"""Write a file so that readers see the old bytes or the new ones, never a part.

The bytes go to a temporary file in the same folder (with ``mode`` from the first byte when
given), are flushed to disk, and the file is renamed over ``path``; on any failure the temporary
file is removed and the error propagates. Used for store blobs, key bundles and key shares.
``write_atomic_at`` does the same inside a folder held open as a descriptor, for callers that
must not resolve a path an untrusted party can change (the local store).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` in one rename (``mode``: permission bits, e.g. 0o600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_NAME_ATTEMPTS = 100


def write_atomic_at(dir_fd: int, name: str, data: bytes, *, mode: int | None = None) -> None:
    """Replace ``name`` in the folder open as ``dir_fd`` with ``data`` in one rename.

    No path is resolved: a folder swapped for a symlink meanwhile cannot redirect the write, and
    a symlink at ``name`` is replaced by the rename, never written through. The temporary file
    (``.<name>.<random>.tmp``, mode 0o600 unless ``mode`` is given) is removed on any failure.
    """
    for _ in range(_NAME_ATTEMPTS):
        tmp = f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, _CREATE_FLAGS, 0o600, dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temporary name for {name} after {_NAME_ATTEMPTS} tries")
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
