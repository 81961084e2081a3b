"""Local-directory store: the default, and the shared volume in containers.

Every site that can write the shared folder is untrusted, so nothing below the root is resolved
by path: a key's folders are opened one by one relative to their parent's descriptor with
``O_NOFOLLOW``, and the blob is opened the same way (``O_NONBLOCK``, so a FIFO cannot block) and
checked with ``fstat`` before a byte is read. A symlink anywhere below the root is refused
("refusing symlink"), as is anything but a regular file (FIFO, device, socket); the size is
checked against the reader's ``max_bytes`` before reading, and the read itself stops one byte
past the limit, so a file that grows meanwhile is refused too. The root itself is the
operator's choice and may be a symlink.

A write refused for lack of room (``ENOSPC``, or ``EDQUOT`` for a quota) raises
``StoreFullError`` naming the key, the root and the blob's size; like any failed write it leaves
no temporary file, and a blob already at the key keeps its old bytes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Final, NoReturn

from common.atomic import write_atomic_at
from common.errors import (
    BlobNotFoundError,
    BlobTooLargeError,
    HeflError,
    StoreError,
    StoreFullError,
)
from common.store.base import check_digest, check_key, too_large

_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_ROOT_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
READ_CHUNK: Final = 1024 * 1024
#: A write failing with one of these found no room: the disk is full, or the writer's quota.
_FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


class LocalStore:
    """Blobs as files under ``root``; writes go through a temp file, fsync and rename."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if exc.errno in _FULL_ERRNOS:
                raise StoreFullError(
                    f"store full: {_reason(exc)} creating the store folder {self.root}; "
                    "free space there"
                ) from exc
            raise StoreError(f"cannot create store folder {self.root}: {exc}") from exc

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def put(self, key: str, data: bytes) -> None:
        parts = check_key(key).split("/")
        try:
            folder = self._open_folder(key, parts[:-1], create=True)
            try:
                # A symlink planted at the key is replaced by the rename, never written through.
                write_atomic_at(folder, parts[-1], data)
            finally:
                os.close(folder)
        except HeflError:
            raise
        except OSError as exc:
            raise self._write_failed(key, len(data), exc) from exc

    def get(self, key: str, *, max_bytes: int | None = None, sha256: str | None = None) -> bytes:
        parts = check_key(key).split("/")
        try:
            folder = self._open_folder(key, parts[:-1], create=False)
            try:
                fd, size = self._open_blob(key, folder, parts[-1])
            finally:
                os.close(folder)
            try:
                if max_bytes is not None and size > max_bytes:
                    raise too_large(key, size, max_bytes)
                digest = hashlib.sha256()
                data = _read(key, fd, max_bytes, digest)
                check_digest(key, digest, sha256)
                return data
            finally:
                os.close(fd)
        except HeflError:
            raise
        except OSError as exc:
            raise StoreError(f"cannot read {key} under {self.root}: {exc}") from exc

    def exists(self, key: str) -> bool:
        parts = check_key(key).split("/")
        try:
            folder = self._open_folder(key, parts[:-1], create=False)
        except (StoreError, OSError):
            return False
        try:
            info = os.stat(parts[-1], dir_fd=folder, follow_symlinks=False)
        except OSError:
            return False
        finally:
            os.close(folder)
        return stat.S_ISREG(info.st_mode)

    def list(self, prefix: str = "") -> list[str]:
        keys = []
        try:
            root = os.open(self.root, _ROOT_FLAGS)
        except OSError:
            return []
        try:
            # fwalk never descends into a symlinked folder (and checks each folder it opens).
            for dirpath, dirnames, filenames, dir_fd in os.fwalk(".", dir_fd=root):
                here = PurePosixPath(dirpath).parts
                dirnames[:] = [d for d in dirnames if _may_hold(prefix, (*here, d))]
                for name in filenames:
                    key = "/".join((*here, name))
                    # Temp files (".<name>.*.tmp") and strays such as ".DS_Store" are not keys.
                    if key.startswith(prefix) and _is_key(key) and _is_file(name, dir_fd):
                        keys.append(key)
        finally:
            os.close(root)
        return sorted(keys)

    def delete(self, key: str) -> None:
        parts = check_key(key).split("/")
        try:
            folder = self._open_folder(key, parts[:-1], create=False)
        except BlobNotFoundError:
            return
        try:
            # unlink removes a symlink itself, never its target.
            os.unlink(parts[-1], dir_fd=folder)
        except FileNotFoundError:
            return
        except OSError as exc:
            if _found(parts[-1], folder) == "a folder":  # a prefix of other keys: nothing to do
                return
            raise StoreError(f"cannot delete {key} under {self.root}: {exc}") from exc
        finally:
            os.close(folder)

    def _write_failed(self, key: str, size: int, exc: OSError) -> StoreError:
        """The error for a failed write: ``StoreFullError`` when there was no room for it."""
        if exc.errno in _FULL_ERRNOS:
            return StoreFullError(
                f"store full: {_reason(exc)} writing {key} ({size:,} bytes) under {self.root}; "
                "free space there and the write can be repeated"
            )
        return StoreError(f"cannot write {key} under {self.root}: {exc}")

    # -- descriptors ---------------------------------------------------------------------------

    def _open_folder(self, key: str, parts: Sequence[str], *, create: bool) -> int:
        """A descriptor of the key's folder, reached without following any symlink.

        Raises ``BlobNotFoundError`` when a folder on the way is absent or is a file (the key
        cannot exist; ``put`` makes absent folders and refuses files), and ``StoreError`` for a
        symlink on the way.
        """
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.root, _ROOT_FLAGS)
        except FileNotFoundError as exc:
            raise BlobNotFoundError(f"no blob {key} under {self.root}") from exc
        try:
            for depth, part in enumerate(parts, 1):
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, dir_fd=fd)
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    self._folder_failed(key, "/".join(parts[:depth]), _found(part, fd), create, exc)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _folder_failed(
        self, key: str, path: str, found: str | None, create: bool, exc: OSError
    ) -> NoReturn:
        if found == "a symlink":
            raise StoreError(
                f"refusing symlink: {path} (on the way to {key} under {self.root}) is a symlink"
            ) from exc
        if found == "a folder" or (create and found is None):
            raise exc  # a real folder that cannot be opened, or one removed meanwhile
        if create:
            raise StoreError(
                f"cannot write {key} under {self.root}: {path} is {found}, not a folder"
            ) from exc
        # A file on the way means no such key; a folder is only a prefix of other keys.
        raise BlobNotFoundError(f"no blob {key} under {self.root}") from exc

    def _open_blob(self, key: str, folder: int, name: str) -> tuple[int, int]:
        """The open regular file at the key and its size; anything else is refused."""
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=folder)
        except OSError as exc:
            found = _found(name, folder)
            if found is None:
                raise BlobNotFoundError(f"no blob {key} under {self.root}") from exc
            if found == "a symlink":
                raise StoreError(f"refusing symlink: {key} under {self.root} is a symlink") from exc
            if found != "a regular file":
                raise self._not_regular(key, found) from exc
            raise
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise BlobNotFoundError(f"no blob {key} under {self.root} (it is a folder)")
            if not stat.S_ISREG(info.st_mode):
                raise self._not_regular(key, _describe(info.st_mode))
        except BaseException:
            os.close(fd)
            raise
        return fd, info.st_size

    def _not_regular(self, key: str, found: str) -> StoreError:
        return StoreError(f"refusing {key} under {self.root}: it is {found}, not a regular file")


def _read(key: str, fd: int, max_bytes: int | None, digest: Any) -> bytes:
    """Read to the end, but never more than one byte past ``max_bytes``, hashing as it goes."""
    chunks: list[bytes] = []
    total = 0
    while True:
        want = READ_CHUNK if max_bytes is None else min(READ_CHUNK, max_bytes + 1 - total)
        chunk = os.read(fd, want)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if max_bytes is not None and total > max_bytes:
            raise BlobTooLargeError(
                f"blob {key} grew past the limit of {max_bytes} bytes while it was read: refused"
            )
        digest.update(chunk)
        chunks.append(chunk)


def _reason(exc: OSError) -> str:
    """The system's words for ``exc``'s errno, e.g. "no space left on device"."""
    return os.strerror(exc.errno).lower() if exc.errno is not None else str(exc)


def _describe(mode: int) -> str:
    for check, name in (
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if check(mode):
            return name
    return "a special file"


def _found(name: str, dir_fd: int) -> str | None:
    """What is at ``name`` in the folder ``dir_fd`` (the link itself for a symlink), or None."""
    try:
        return _describe(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return None


def _is_file(name: str, dir_fd: int) -> bool:
    return _found(name, dir_fd) == "a regular file"


def _may_hold(prefix: str, parts: tuple[str, ...]) -> bool:
    """Whether keys below the folder ``parts`` can start with ``prefix``."""
    below = "/".join(parts) + "/"
    return _is_key("/".join(parts)) and (below.startswith(prefix) or prefix.startswith(below))


def _is_key(key: str) -> bool:
    try:
        check_key(key)
    except StoreError:
        return False
    return True
