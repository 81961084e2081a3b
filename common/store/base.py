"""The Store seam: where ciphertext blobs and run state live ("the Drive").

Keys are relative, slash-separated paths such as ``runs/r1/round-0001/update-h1.blob``.
``put`` is atomic and idempotent (a reader never sees a partial blob); ``get`` raises
``BlobNotFoundError`` for an absent key, and ``BlobTooLargeError`` before reading anything when
the stored object is larger than ``max_bytes``. The store is untrusted: readers pass the largest
size they expect, and check every blob against the SHA-256 carried in the signed message that
names it.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Final, Protocol

from common.errors import BlobTooLargeError, StoreError

_KEY_PART: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class Store(Protocol):
    """A flat namespace of immutable-ish blobs addressed by key."""

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str, *, max_bytes: int | None = None, sha256: str | None = None) -> bytes:
        """The blob's bytes; over ``max_bytes`` it is refused unread, and with ``sha256`` the
        bytes are hashed as they stream in and refused when they do not match."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]: ...

    def delete(self, key: str) -> None: ...


def check_key(key: str) -> str:
    """Reject keys that could escape the store's root or confuse a backend."""
    parts = key.split("/")
    if not key or any(not _KEY_PART.fullmatch(part) for part in parts):  # '$' allows a final \n
        raise StoreError(
            f"invalid store key {key!r}: use slash-separated parts of letters, digits, '.', '_', "
            "'-' (not starting with '.' or '-')"
        )
    return key


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def too_large(key: str, size: int, max_bytes: int) -> BlobTooLargeError:
    """The error every store raises for a blob over the reader's limit."""
    return BlobTooLargeError(
        f"blob {key} is {size} bytes, more than the limit of {max_bytes} bytes: refused unread"
    )


def get_verified(
    store: Store, key: str, expected_sha256: str, *, max_bytes: int | None = None
) -> bytes:
    """Fetch a blob (refused unread when over ``max_bytes``) and check it, as it streams in,
    against the digest from the message that named it."""
    return store.get(key, max_bytes=max_bytes, sha256=expected_sha256)


def check_digest(key: str, digest: Any, expected_sha256: str | None) -> None:
    """Refuse a blob whose streamed ``digest`` (a hashlib SHA-256) is not ``expected_sha256``."""
    if expected_sha256 is None:
        return
    actual = digest.hexdigest()
    if actual != expected_sha256:
        raise StoreError(
            f"blob {key}: sha256 {actual[:16]}... does not match the announced "
            f"{expected_sha256[:16]}... (corrupted or replaced in the store)"
        )
