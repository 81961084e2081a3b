"""Google Drive store: blobs as files in a shared Drive folder, one subfolder per run.

Mapping: a key's folders are Drive folders under the root folder and its last part is the file
name, so ``runs/r1/round-0001/update-h1.blob`` is the file ``update-h1.blob`` in folder
``runs/r1/round-0001`` (one subfolder per run: ``runs/<run>``). Key parts are limited by
``check_key`` to letters, digits, ``.``, ``_`` and ``-``, so names need no escaping; query strings
are escaped all the same. Folder IDs are cached; a folder is never deleted by the store.

Drive allows several items with one name in one folder, so the rules are:

- **Which file is the blob:** among the untrashed, non-Google-Docs files with the key's name,
  the newest by ``createdTime``, ties broken by the larger file ID. Drive creates a file only
  when its upload is complete, and every file the store writes records its size and SHA-256 in
  ``appProperties``; a file whose size differs from its record is skipped, and downloaded bytes
  must match the recorded digest.
- **put** uploads a new file (never rewrites one in place, so a reader holding the old ID reads
  the old bytes whole), then deletes every same-named file ordered before it. If the newest
  file already holds exactly these bytes, nothing is uploaded: repeated puts are cheap.
  Cleanup is best effort (a file the account may not delete stays, and loses by the rule).
- **Folders with one name** (two sites creating ``runs/r1`` at once): the oldest is the folder;
  a site that finds it created a younger twin deletes its twin and uses the oldest.
- **delete** deletes for good, or moves to the trash when the account may trash but not delete
  (a Content manager on a shared drive).
- **Size before content:** ``get(key, max_bytes=N)`` refuses a file whose ``size`` (or recorded
  size) is over N, or that has no size, before any media request; the download stops past N too.
- **Per-site folders:** a hospital sees only the folders shared with it (its updates folder, the
  aggregates folder: ``common.store.gdrive_share``), not the root, so its store is opened with
  ``folders``, a map of key prefixes to those folders' IDs; keys under a mapped prefix are found
  from its folder, and the root is checked only when a key outside them is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Final

from common.errors import BlobNotFoundError, BlobTooLargeError, StoreError
from common.logs import log_event
from common.store.base import check_digest, check_key, sha256_hex, too_large
from common.store.gdrive_api import DriveApi
from common.store.gdrive_auth import DriveCredentials, load_credentials
from common.store.gdrive_errors import DriveCallError, Op, Where, explain
from common.store.gdrive_types import DriveFile, DriveOptions

logger = logging.getLogger("hefl.store.gdrive")

SHA256_PROPERTY: Final = "hefl_sha256"
SIZE_PROPERTY: Final = "hefl_size"
READ_ATTEMPTS: Final = 3  # a blob replaced while being read is looked up again


def _order(item: DriveFile) -> tuple[datetime, str]:
    return datetime.fromisoformat(item.created_time), item.id


def _is_complete(item: DriveFile) -> bool:
    recorded = item.app_properties.get(SIZE_PROPERTY)
    return recorded is None or item.size is None or str(item.size) == recorded


def _blobs(items: Sequence[DriveFile]) -> list[DriveFile]:
    return [item for item in items if not item.is_google_document and _is_complete(item)]


def newest(items: Sequence[DriveFile]) -> DriveFile | None:
    """The file that holds a key's blob, by the rule in the module docstring."""
    blobs = _blobs(items)
    return max(blobs, key=_order) if blobs else None


def _canonical_folder(items: Sequence[DriveFile]) -> DriveFile | None:
    folders = [item for item in items if item.is_folder]
    return min(folders, key=_order) if folders else None


class DriveStore:
    """The Store contract on a Drive folder; one lock serializes calls from several threads."""

    def __init__(
        self,
        root_id: str,
        api: DriveApi,
        *,
        account: str = "the account",
        folders: Mapping[str, str] | None = None,
    ) -> None:
        self.root_id = root_id
        self.account = account
        self._api = api
        self._lock = threading.RLock()
        self._mounts = {
            tuple(check_key(path).split("/")): id_ for path, id_ in (folders or {}).items()
        }
        self._checked: set[str] = set()  # mounted folders found to be folders
        self._folders: dict[tuple[str, ...], str] = dict(self._mounts)
        self._root_checked = False

    def __repr__(self) -> str:
        mounts = f", folders={len(self._mounts)}" if self._mounts else ""
        return f"DriveStore(root_id={self.root_id!r}, account={self.account!r}{mounts})"

    # -- the Store protocol --------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        parts = check_key(key).split("/")
        data = bytes(data)
        with self._session("put", key) as where:
            for attempt in range(2):
                folder = self._folder(parts[:-1], where, create=True)
                if folder is None:  # pragma: no cover - create=True always yields a folder
                    raise StoreError(f"cannot create the folders of {key}")
                try:
                    self._put_in(folder, parts[-1], data, where)
                    return
                except DriveCallError as exc:
                    if exc.status != 404 or attempt or not parts[:-1]:
                        raise
                    # A cached folder was deleted: look again.
                    self._folders = {(): self.root_id, **self._mounts}

    def get(self, key: str, *, max_bytes: int | None = None, sha256: str | None = None) -> bytes:
        parts = check_key(key).split("/")
        with self._session("get", key) as where:
            for _ in range(READ_ATTEMPTS):
                item = self._find(parts, where)
                if item is None:
                    raise BlobNotFoundError(f"no blob {key} in Drive folder {self.root_id}")
                if max_bytes is not None:
                    _check_size(key, item, max_bytes)
                digest = hashlib.sha256()
                try:
                    data = self._api.download(item.id, max_bytes=max_bytes, digest=digest)
                except DriveCallError as exc:
                    if exc.status == 404:  # replaced by a newer put meanwhile: look again
                        continue
                    raise
                except BlobTooLargeError as exc:
                    raise BlobTooLargeError(f"blob {key}: {exc}") from exc
                recorded = item.app_properties.get(SHA256_PROPERTY)
                if recorded is not None and digest.hexdigest() != recorded:
                    raise StoreError(
                        f"blob {key} (Drive file {item.id}) does not match the SHA-256 recorded "
                        "when it was uploaded: corrupted or replaced in Drive"
                    )
                check_digest(key, digest, sha256)
                return data
            raise StoreError(f"blob {key} kept being replaced while it was read; try again")

    def exists(self, key: str) -> bool:
        parts = check_key(key).split("/")
        with self._session("exists", key) as where:
            return self._find(parts, where) is not None

    def list(self, prefix: str = "") -> list[str]:
        *folders, _partial = prefix.split("/")
        with self._session("list", prefix or None) as where:
            if folders and not _valid_key("/".join(folders)):
                return []  # no key can start with this prefix
            start = self._folder(folders, where, create=False)
            if start is None:
                return []
            keys: set[str] = set()
            self._walk(start, tuple(folders), prefix, keys, where)
            return sorted(keys)

    def delete(self, key: str) -> None:
        parts = check_key(key).split("/")
        with self._session("delete", key) as where:
            folder = self._folder(parts[:-1], where, create=False)
            if folder is None:
                return
            for item in _blobs(self._api.children(folder, name=parts[-1])):
                self._remove(item, strict=True)

    # -- per-site folders ----------------------------------------------------------------------

    def share_folder(self, prefix: str, email: str, role: str) -> str:
        """Make the folder of the keys under ``prefix`` (``a/b``) if absent, give ``email`` the
        Drive ``role`` (``reader``, ``writer``) on it and all it holds, and return its ID."""
        parts = check_key(prefix).split("/")
        with self._session("share", prefix) as where:
            folder = self._folder(parts, where, create=True)
            if folder is None:  # pragma: no cover - create=True always yields a folder
                raise StoreError(f"cannot create the folder {prefix}")
            self._api.share(folder, email, role)
            log_event(logger, "drive_folder_shared", folder=prefix, account=email, role=role)
            return folder

    # -- folders -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _session(self, op: Op, key: str | None) -> Iterator[Where]:
        """Serialize, check the root once, and turn Drive errors into messages with context."""
        where = Where(
            root_id=self.root_id,
            folder_id=self.root_id,
            site_folders=tuple(sorted("/".join(path) for path in self._mounts)),
        )
        with self._lock:
            try:
                if not self._root_checked and not self._mounts:
                    self._check_root()
                yield where
            except DriveCallError as exc:
                raise StoreError(
                    explain(exc, op=op, key=key, where=where, account=self.account)
                ) from exc

    def _check_root(self) -> None:
        info = self._api.folder_info(self.root_id)
        if not info.is_folder:
            raise StoreError(
                f"Google Drive item {self.root_id} ({info.name!r}) is a {info.mime_type}, not a "
                "folder: the store URL must name a folder"
            )
        if info.trashed:
            raise StoreError(f"Google Drive folder {self.root_id} ({info.name!r}) is in the trash")
        self._folders[()] = self.root_id
        self._root_checked = True

    def _folder(self, parts: Sequence[str], where: Where, *, create: bool) -> str | None:
        """The ID of the folder at ``parts`` under the root; made on the way if ``create``."""
        start = max(d for d in range(len(parts) + 1) if tuple(parts[:d]) in self._folders or not d)
        parent = self._folders.get(tuple(parts[:start]), self.root_id)
        self._check_start(tuple(parts[:start]), parent, where)
        for depth in range(start + 1, len(parts) + 1):
            path = tuple(parts[:depth])
            cached = self._folders.get(path)
            if cached is None:
                where.folder_id, where.folder_path = parent, "/".join(path[:-1])
                items = self._api.children(parent, name=path[-1])
                folder = _canonical_folder(items)
                if folder is None:
                    if not create:
                        return None
                    if items:
                        raise StoreError(
                            f"cannot create folder {'/'.join(path)!r} in Drive folder "
                            f"{self.root_id}: a blob of that name is in the way"
                        )
                    folder = self._create_folder(parent, path[-1])
                cached = self._folders[path] = folder.id
            parent = cached
        where.folder_id, where.folder_path = parent, "/".join(parts)
        return parent

    def _check_start(self, path: tuple[str, ...], folder: str, where: Where) -> None:
        """Check, once, the root or the mounted folder a walk starts from."""
        if not path:
            if not self._root_checked:
                self._check_root()
            return
        if path not in self._mounts or folder in self._checked:
            return
        where.folder_id, where.folder_path = folder, "/".join(path)
        info = self._api.folder_info(folder)
        if not info.is_folder or info.trashed:
            raise StoreError(
                f"Google Drive item {folder} ({info.name!r}), given as the folder of "
                f"{'/'.join(path)!r}, is {'in the trash' if info.trashed else info.mime_type}"
            )
        self._checked.add(folder)

    def _create_folder(self, parent: str, name: str) -> DriveFile:
        mine = self._api.create_folder(parent, name)
        oldest = _canonical_folder([mine, *self._api.children(parent, name=name)])
        if oldest is not None and oldest.id != mine.id:  # another site was first: use theirs
            log_event(logger, "drive_folder_twin_removed", name=name, kept=oldest.id)
            self._remove(mine, strict=False)
            return oldest
        return mine

    def _find(self, parts: Sequence[str], where: Where) -> DriveFile | None:
        folder = self._folder(parts[:-1], where, create=False)
        if folder is None:
            return None
        return newest(self._api.children(folder, name=parts[-1]))

    def _walk(
        self, folder: str, path: tuple[str, ...], prefix: str, keys: set[str], where: Where
    ) -> None:
        where.folder_id, where.folder_path = folder, "/".join(path)
        items = self._api.children(folder)
        for item in _blobs(items):
            key = "/".join((*path, item.name))
            if key.startswith(prefix) and _valid_key(key):
                keys.add(key)
        names = sorted({item.name for item in items if item.is_folder})
        for name in names:
            sub = (*path, name)
            below = "/".join(sub) + "/"
            if not (below.startswith(prefix) or prefix.startswith(below)):
                continue
            if not _valid_key("/".join(sub)):
                continue
            chosen = _canonical_folder([item for item in items if item.name == name])
            if chosen is not None:
                self._folders.setdefault(sub, chosen.id)
                self._walk(self._folders[sub], sub, prefix, keys, where)

    # -- files ---------------------------------------------------------------------------------

    def _put_in(self, folder: str, name: str, data: bytes, where: Where) -> None:
        items = self._api.children(folder, name=name)
        if any(item.is_folder for item in items):
            raise StoreError(
                f"cannot write {where.folder_path + '/' if where.folder_path else ''}{name} in "
                f"Drive folder {self.root_id}: a folder of that name holds other keys"
            )
        digest = sha256_hex(data)
        current = newest(items)
        if (
            current is not None
            and current.app_properties.get(SHA256_PROPERTY) == digest
            and current.size == len(data)
        ):
            kept = current  # the same bytes are already there
        else:
            record = {SHA256_PROPERTY: digest, SIZE_PROPERTY: str(len(data))}
            kept = self._api.upload(folder, name, data, record)
            items = self._api.children(folder, name=name)  # includes puts that finished meanwhile
        for item in items:  # older copies of this blob; never a folder or a person's Doc
            if item.id != kept.id and not item.is_google_document and _order(item) < _order(kept):
                self._remove(item, strict=False)

    def _remove(self, item: DriveFile, *, strict: bool) -> None:
        """Delete for good, else trash (allowed to more roles); ``strict=False``: best effort."""
        try:
            try:
                self._api.delete(item.id)
            except DriveCallError as exc:
                if exc.status != 403:
                    raise
                self._api.trash(item.id)
        except DriveCallError as exc:
            if strict:
                raise
            log_event(
                logger,
                "drive_stale_file_kept",
                level=logging.WARNING,
                file=item.id,
                name=item.name,
                error=str(exc)[:200],
            )


def _check_size(key: str, item: DriveFile, max_bytes: int) -> None:
    """Refuse, before any download, a file larger than ``max_bytes`` or of unknown size."""
    if item.size is None:
        raise StoreError(
            f"blob {key} (Drive file {item.id}) has no size in Drive: refused unread (limit "
            f"{max_bytes} bytes)"
        )
    recorded = item.app_properties.get(SIZE_PROPERTY, "")
    declared = max(item.size, int(recorded) if recorded.isdigit() else 0)
    if declared > max_bytes:
        raise too_large(f"{key} (Drive file {item.id})", declared, max_bytes)


def _valid_key(key: str) -> bool:
    try:
        check_key(key)
    except StoreError:
        return False
    return True


def open_drive_store(
    root_id: str,
    credentials: str | Path | DriveCredentials,
    *,
    options: DriveOptions | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rand: Callable[[], float] = random.random,
    folders: Mapping[str, str] | None = None,
) -> DriveStore:
    """A Drive store on folder ``root_id``; nothing is fetched until the first operation.

    ``folders`` maps key prefixes to the IDs of folders shared with the account when the root
    is not (a hospital's own updates folder and the aggregates folder).
    """
    loaded = (
        credentials if isinstance(credentials, DriveCredentials) else load_credentials(credentials)
    )
    api = DriveApi(loaded.credentials, options=options, sleep=sleep, rand=rand)
    return DriveStore(root_id, api, account=loaded.account, folders=folders)
