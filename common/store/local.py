"""Local-directory store: the default, and the shared volume in containers."""

from __future__ import annotations

import os
from pathlib import Path

from common.atomic import write_atomic
from common.errors import BlobNotFoundError, StoreError
from common.store.base import check_key


class LocalStore:
    """Blobs as files under ``root``; writes go through a temp file, fsync and rename."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create store folder {self.root}: {exc}") from exc

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)
        except OSError as exc:
            raise StoreError(f"cannot write {key} under {self.root}: {exc}") from exc

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            # A folder is only a prefix of other keys; a file on the way means no such key.
            raise BlobNotFoundError(f"no blob {key} under {self.root}") from exc
        except OSError as exc:
            raise StoreError(f"cannot read {key} under {self.root}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        keys = []
        for path in self.root.rglob("*"):
            if path.is_file():
                key = path.relative_to(self.root).as_posix()
                # Temp files (".<name>.*.tmp") and strays such as ".DS_Store" are not keys.
                if key.startswith(prefix) and _is_key(key):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            if path.is_dir():  # a prefix of other keys, not a blob: nothing to delete
                return
            raise StoreError(f"cannot delete {key} under {self.root}: {exc}") from exc


def _is_key(key: str) -> bool:
    try:
        check_key(key)
    except StoreError:
        return False
    return True
