"""Write a file so that readers see the old bytes or the new ones, never a part.

The bytes go to a temporary file in the same folder (with ``mode`` from the first byte when
given), are flushed to disk, and the file is renamed over ``path``; on any failure the temporary
file is removed and the error propagates. Used for store blobs, key bundles and key shares.
"""

from __future__ import annotations

import os
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
