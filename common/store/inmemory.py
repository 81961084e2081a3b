"""In-memory store for unit tests."""

from __future__ import annotations

import hashlib

from common.errors import BlobNotFoundError
from common.store.base import check_digest, check_key, too_large


class InMemoryStore:
    """A dict of blobs; the same contract as every other store."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def put(self, key: str, data: bytes) -> None:
        self.blobs[check_key(key)] = bytes(data)

    def get(self, key: str, *, max_bytes: int | None = None, sha256: str | None = None) -> bytes:
        try:
            data = self.blobs[check_key(key)]
        except KeyError as exc:
            raise BlobNotFoundError(f"no blob {key} in memory") from exc
        if max_bytes is not None and len(data) > max_bytes:
            raise too_large(key, len(data), max_bytes)
        check_digest(key, hashlib.sha256(data), sha256)
        return data

    def exists(self, key: str) -> bool:
        return check_key(key) in self.blobs

    def list(self, prefix: str = "") -> list[str]:
        return sorted(key for key in self.blobs if key.startswith(prefix))

    def delete(self, key: str) -> None:
        self.blobs.pop(check_key(key), None)
