"""Blob stores: the protocol and its implementations.

``open_store(url)`` picks one from a store URL (a folder path, ``file:///path`` or
``gdrive://FOLDER_ID``); the Drive backend lives in ``common.store.gdrive`` and is imported only
when a Drive URL is opened. ``SpaceWaitingStore`` wraps a store so that a write refused for a
full disk waits for space (a bounded time) instead of failing at once.
"""

from common.store.base import Store, check_key, get_verified, sha256_hex
from common.store.inmemory import InMemoryStore
from common.store.local import LocalStore
from common.store.space import SPACE_POLICY, SpaceWaitingStore
from common.store.url import STORE_ENV, StoreSpec, open_store, parse_store_url

__all__ = [
    "SPACE_POLICY",
    "STORE_ENV",
    "InMemoryStore",
    "LocalStore",
    "SpaceWaitingStore",
    "Store",
    "StoreSpec",
    "check_key",
    "get_verified",
    "open_store",
    "parse_store_url",
    "sha256_hex",
]
