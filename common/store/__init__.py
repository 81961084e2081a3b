"""Blob stores: the protocol and its implementations.

``open_store(url)`` picks one from a store URL (a folder path, ``file:///path`` or
``gdrive://FOLDER_ID``); the Drive backend lives in ``common.store.gdrive`` and is imported only
when a Drive URL is opened.
"""

from common.store.base import Store, check_key, get_verified, sha256_hex
from common.store.inmemory import InMemoryStore
from common.store.local import LocalStore
from common.store.url import STORE_ENV, StoreSpec, open_store, parse_store_url

__all__ = [
    "STORE_ENV",
    "InMemoryStore",
    "LocalStore",
    "Store",
    "StoreSpec",
    "check_key",
    "get_verified",
    "open_store",
    "parse_store_url",
    "sha256_hex",
]
