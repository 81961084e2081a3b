"""In-memory store for unit tests."""

from __future__ import annotations

from common.errors import BlobNotFoundError
from common.store.base import check_key


class InMemoryStore:
    """A dict of blobs; the same contract as every other store."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def put(self, key: str, data: bytes) -> None:
        self.blobs[check_key(key)] = bytes(data)

    def get(self, key: str) -> bytes:
        try:
            return self.blobs[check_key(key)]
        except KeyError as exc:
            raise BlobNotFoundError(f"no blob {key} in memory") from exc

    def exists(self, key: str) -> bool:
        return check_key(key) in self.blobs

    def list(self, prefix: str = "") -> list[str]:
        return sorted(key for key in self.blobs if key.startswith(prefix))

    def delete(self, key: str) -> None:
        self.blobs.pop(check_key(key), None)
