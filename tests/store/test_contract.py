"""The Store contract, run against every backend, and what only the local store promises."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from common.errors import BlobNotFoundError, BlobTooLargeError, HeflError, StoreError
from common.store import InMemoryStore, LocalStore, Store, check_key, get_verified, sha256_hex
from testkit.drive.helpers import drive_store

# A new backend joins the contract by adding a factory. "gdrive" is the Google Drive store
# driven through googleapiclient against the local fake of the Drive v3 API
# (testkit/drive/server.py), with chunks, pages and the multipart limit small enough that every
# path is exercised.
STORE_FACTORIES: dict[str, Callable[[Path], Store]] = {
    "local": lambda tmp_path: LocalStore(tmp_path / "store"),
    "in-memory": lambda tmp_path: InMemoryStore(),
    "gdrive": lambda tmp_path: drive_store(tmp_path),
}

INVALID_KEYS = [
    "",
    "/",
    "../x",
    "a/../b",
    "a/./b",
    "..",
    "/abs",
    "/abs/b",
    "a/",
    "a//b",
    ".hidden",
    "a/.hidden",
    "-flag",
    "with space",
    "a/with space",
    "back\\slash",
    "a\\..\\b",
    "tab\tkey",
    "newline\n",
    "a/b\n",
    "nul\x00",
    "caf\u00e9",
    "x" * 129,
]
VALID_KEYS = [
    "a",
    "A0",
    "runs/r1/round-0001/update-h1.blob",
    "runs/r1/coordinator-state.json",
    "a.b_c-d/e",
    "x" * 128,
]


@pytest.fixture(params=sorted(STORE_FACTORIES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return STORE_FACTORIES[request.param](tmp_path)


class TestStoreContract:
    """Every backend behaves the same; a reader never depends on which one it has."""

    def test_put_then_get_returns_the_same_bytes(self, store: Store) -> None:
        data = bytes(range(256)) * 3
        store.put("runs/r1/round-0001/update-h1.blob", data)
        assert store.get("runs/r1/round-0001/update-h1.blob") == data

    def test_empty_blob_round_trips(self, store: Store) -> None:
        store.put("empty", b"")
        assert store.get("empty") == b""
        assert store.exists("empty")

    def test_put_copies_a_mutable_buffer(self, store: Store) -> None:
        buffer = bytearray(b"before")
        store.put("k", buffer)  # type: ignore[arg-type]  # callers may hand over a buffer
        buffer[:] = b"after!"
        assert store.get("k") == b"before"

    def test_put_overwrites_and_is_idempotent(self, store: Store) -> None:
        store.put("a/k", b"first")
        store.put("a/k", b"second, longer than the first")
        assert store.get("a/k") == b"second, longer than the first"
        store.put("a/k", b"short")
        store.put("a/k", b"short")
        assert store.get("a/k") == b"short"
        assert store.list() == ["a/k"]

    def test_get_of_missing_key_raises_blob_not_found(self, store: Store) -> None:
        with pytest.raises(BlobNotFoundError, match="nope"):
            store.get("runs/nope.blob")
        assert issubclass(BlobNotFoundError, StoreError)
        assert issubclass(StoreError, HeflError)

    def test_get_of_a_prefix_of_other_keys_raises_blob_not_found(self, store: Store) -> None:
        store.put("runs/r1/state.json", b"{}")
        with pytest.raises(BlobNotFoundError):
            store.get("runs/r1")
        with pytest.raises(BlobNotFoundError):
            store.get("runs/r1/state.json/inner")

    def test_exists(self, store: Store) -> None:
        assert not store.exists("runs/r1/a.blob")
        store.put("runs/r1/a.blob", b"x")
        assert store.exists("runs/r1/a.blob")
        assert not store.exists("runs/r1")  # a prefix is not a key
        assert not store.exists("runs/r1/a")

    def test_list_is_sorted_and_filters_by_prefix(self, store: Store) -> None:
        for key in ["runs/r2/b", "runs/r1/z", "other/x", "runs/r1/a", "runs/r10/a"]:
            store.put(key, key.encode())
        assert store.list() == ["other/x", "runs/r1/a", "runs/r1/z", "runs/r10/a", "runs/r2/b"]
        assert store.list("runs/r1/") == ["runs/r1/a", "runs/r1/z"]
        assert store.list("runs/r1") == ["runs/r1/a", "runs/r1/z", "runs/r10/a"]  # string prefix
        assert store.list("missing/") == []

    def test_list_of_an_empty_store_is_empty(self, store: Store) -> None:
        assert store.list() == []

    def test_delete_removes_the_key(self, store: Store) -> None:
        store.put("runs/r1/a", b"1")
        store.put("runs/r1/b", b"2")
        store.delete("runs/r1/a")
        assert not store.exists("runs/r1/a")
        assert store.list() == ["runs/r1/b"]
        with pytest.raises(BlobNotFoundError):
            store.get("runs/r1/a")

    def test_delete_of_missing_key_is_fine(self, store: Store) -> None:
        store.delete("never/written")
        store.put("runs/r1/a", b"1")
        store.delete("runs/r1/a")
        store.delete("runs/r1/a")  # again: at-least-once cleanups are idempotent
        store.put("runs/r2/a", b"2")
        store.delete("runs/r2")  # a prefix, not a key
        store.delete("runs/r2/a/b")
        assert store.list() == ["runs/r2/a"]

    @pytest.mark.parametrize("key", INVALID_KEYS, ids=repr)
    def test_invalid_keys_are_rejected_by_every_operation(self, store: Store, key: str) -> None:
        operations: list[Callable[[], object]] = [
            lambda: store.put(key, b"x"),
            lambda: store.get(key),
            lambda: store.exists(key),
            lambda: store.delete(key),
        ]
        for operation in operations:
            with pytest.raises(StoreError, match="invalid store key"):
                operation()
        assert store.list() == []

    @pytest.mark.parametrize("key", VALID_KEYS)
    def test_valid_keys_round_trip(self, store: Store, key: str) -> None:
        store.put(key, b"v")
        assert store.get(key) == b"v"
        assert store.list() == [key]

    def test_get_verified_returns_the_data_when_the_digest_matches(self, store: Store) -> None:
        store.put("b", b"ciphertext")
        assert get_verified(store, "b", sha256_hex(b"ciphertext")) == b"ciphertext"

    def test_get_verified_raises_on_a_digest_mismatch(self, store: Store) -> None:
        store.put("b", b"replaced by an attacker")
        with pytest.raises(StoreError, match="does not match") as info:
            get_verified(store, "b", sha256_hex(b"ciphertext"))
        assert not isinstance(info.value, BlobNotFoundError)

    def test_get_verified_of_a_missing_blob_raises_blob_not_found(self, store: Store) -> None:
        with pytest.raises(BlobNotFoundError):
            get_verified(store, "b", sha256_hex(b""))

    # -- size limits: the reader says how much it expects, the store refuses more unread ------

    def test_get_over_max_bytes_raises_blob_too_large_naming_key_size_and_limit(
        self, store: Store
    ) -> None:
        store.put("runs/r1/big.blob", b"x" * 1000)
        with pytest.raises(BlobTooLargeError) as info:
            store.get("runs/r1/big.blob", max_bytes=999)
        message = str(info.value)
        assert "runs/r1/big.blob" in message
        assert "1000 bytes" in message
        assert "999 bytes" in message
        assert isinstance(info.value, StoreError)

    def test_get_with_max_bytes_equal_to_the_size_returns_the_blob(self, store: Store) -> None:
        store.put("k", b"x" * 1000)
        assert store.get("k", max_bytes=1000) == b"x" * 1000
        assert store.get("k", max_bytes=10**9) == b"x" * 1000
        store.put("empty", b"")
        assert store.get("empty", max_bytes=0) == b""

    def test_get_with_max_bytes_of_a_missing_key_raises_blob_not_found(self, store: Store) -> None:
        with pytest.raises(BlobNotFoundError):
            store.get("runs/nope.blob", max_bytes=10)

    def test_get_verified_passes_max_bytes_through(self, store: Store) -> None:
        store.put("b", b"ciphertext")
        with pytest.raises(BlobTooLargeError):
            get_verified(store, "b", sha256_hex(b"ciphertext"), max_bytes=9)
        assert get_verified(store, "b", sha256_hex(b"ciphertext"), max_bytes=10) == b"ciphertext"

    def test_get_with_sha256_hashes_the_stream_and_refuses_a_mismatch(self, store: Store) -> None:
        data = bytes(range(256)) * 4096  # several read chunks
        store.put("runs/r1/streamed.blob", data)
        assert store.get("runs/r1/streamed.blob", sha256=sha256_hex(data)) == data
        with pytest.raises(StoreError, match="does not match the announced"):
            store.get("runs/r1/streamed.blob", sha256=sha256_hex(data[:-1]))
        with pytest.raises(StoreError, match="does not match the announced"):
            store.get("runs/r1/streamed.blob", max_bytes=len(data), sha256="0" * 64)

    def test_get_verified_within_max_bytes_still_checks_the_digest(self, store: Store) -> None:
        store.put("b", b"replaced")
        with pytest.raises(StoreError, match="does not match"):
            get_verified(store, "b", sha256_hex(b"ciphertext"), max_bytes=100)


# -- helpers -----------------------------------------------------------------------------------


def test_sha256_hex_is_the_lowercase_hex_digest() -> None:
    assert sha256_hex(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


@pytest.mark.parametrize("key", VALID_KEYS)
def test_check_key_returns_valid_keys_unchanged(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize("key", INVALID_KEYS, ids=repr)
def test_check_key_rejects_and_quotes_the_key(key: str) -> None:
    with pytest.raises(StoreError) as info:
        check_key(key)
    assert repr(key) in str(info.value)


# -- local store only ----------------------------------------------------------------------------


def test_local_store_writes_under_its_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "nested" / "root")
    store.put("runs/r1/a.blob", b"data")
    assert (tmp_path / "nested" / "root" / "runs" / "r1" / "a.blob").read_bytes() == b"data"
    assert "nested" in repr(store)


def test_local_store_failed_write_leaves_neither_partial_blob_nor_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path)
    store.put("runs/r1/a.blob", b"old")

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(StoreError, match=r"runs/r1/a\.blob"):
        store.put("runs/r1/a.blob", b"new")
    with pytest.raises(StoreError):
        store.put("runs/r1/b.blob", b"new")
    monkeypatch.undo()

    assert store.get("runs/r1/a.blob") == b"old"  # the previous blob survives whole
    assert not store.exists("runs/r1/b.blob")
    assert store.list() == ["runs/r1/a.blob"]
    assert sorted(p.name for p in (tmp_path / "runs" / "r1").iterdir()) == ["a.blob"]


def test_local_store_interrupted_write_cleans_up_its_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path)

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.put("a.blob", b"data")
    monkeypatch.undo()
    assert not store.exists("a.blob")
    assert list(tmp_path.iterdir()) == []


def test_local_store_does_not_list_temp_or_stray_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("runs/r1/a.blob", b"1")
    (tmp_path / "runs" / "r1" / ".tmp-abc123").write_bytes(b"partial")  # left by a crash
    (tmp_path / ".DS_Store").write_bytes(b"")
    (tmp_path / "runs" / ".hidden").mkdir()
    (tmp_path / "runs" / ".hidden" / "x").write_bytes(b"")
    (tmp_path / "runs" / "with space.txt").write_bytes(b"")
    assert store.list() == ["runs/r1/a.blob"]
    assert store.list("runs/r1/") == ["runs/r1/a.blob"]


def test_local_store_reads_what_another_instance_wrote(tmp_path: Path) -> None:
    LocalStore(tmp_path).put("shared/blob", b"from a hospital")
    assert LocalStore(tmp_path).get("shared/blob") == b"from a hospital"


def test_local_store_cannot_create_its_root_raises_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StoreError, match="cannot create store folder"):
        LocalStore(tmp_path / "file" / "root")


def test_local_store_write_over_a_folder_raises_store_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("runs/r1/a", b"1")
    with pytest.raises(StoreError, match="cannot write"):
        store.put("runs/r1", b"2")
    assert store.list() == ["runs/r1/a"]
