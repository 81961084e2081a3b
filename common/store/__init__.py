"""Blob stores: the protocol and its implementations."""

from common.store.base import Store, check_key, get_verified, sha256_hex
from common.store.inmemory import InMemoryStore
from common.store.local import LocalStore

__all__ = ["InMemoryStore", "LocalStore", "Store", "check_key", "get_verified", "sha256_hex"]
