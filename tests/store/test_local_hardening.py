"""The local store against a site that can write the shared folder (issue 13).

A hospital with write access to a shared volume can plant symlinks, FIFOs, devices and huge
sparse files where the coordinator will look for a blob. None of it may make the store read or
write outside its root, block, or read more than the reader's limit.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from common.errors import BlobNotFoundError, BlobTooLargeError, StoreError
from common.store import LocalStore, get_verified, sha256_hex

KEY = "runs/r1/updates/hospital-1/round-0001.blob"
TEN_GIB = 10 * 1024**3
FAST = 2.0  # seconds: anything that reads 10 GiB or waits on a FIFO takes far longer


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(root: Path) -> LocalStore:
    return LocalStore(root)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside the store, with a file a symlink could lead to."""
    folder = tmp_path / "outside"
    (folder / "r1").mkdir(parents=True)
    (folder / "r1" / "a.blob").write_bytes(b"not the store's")
    (folder / "secret").write_bytes(b"private key")
    return folder


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry below ``folder`` (without following links) and each file's bytes."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            out[str(path.relative_to(folder))] = path.read_bytes() if path.is_file() else None
    return out


def plant(root: Path, key: str, make: Callable[[Path], object]) -> Path:
    path = root.joinpath(*key.split("/"))
    path.parent.mkdir(parents=True, exist_ok=True)
    make(path)
    return path


def finishes(action: Callable[[], object], seconds: float = FAST) -> BaseException | None:
    """Run ``action`` in a daemon thread; fail if it is still running after ``seconds``."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            action()
            outcome.append(None)
        except BaseException as exc:  # handed back to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s (blocked)"
    return outcome[0]


# -- a symlink at the key ------------------------------------------------------------------------


@pytest.mark.parametrize("max_bytes", [1024, None], ids=["with-limit", "no-limit"])
def test_symlink_to_dev_zero_at_a_key_is_refused_fast(
    store: LocalStore, root: Path, max_bytes: int | None
) -> None:
    plant(root, KEY, lambda path: path.symlink_to("/dev/zero"))
    error = finishes(lambda: store.get(KEY, max_bytes=max_bytes))
    assert isinstance(error, StoreError) and not isinstance(error, BlobNotFoundError)
    assert "refusing symlink" in str(error)
    assert KEY in str(error)
    assert "is a symlink" in str(error)


def test_symlink_to_a_file_outside_is_refused_not_read(
    store: LocalStore, root: Path, outside: Path
) -> None:
    plant(root, KEY, lambda path: path.symlink_to(outside / "secret"))
    with pytest.raises(StoreError, match="refusing symlink") as info:
        store.get(KEY)
    assert "private key" not in str(info.value)
    with pytest.raises(StoreError, match="refusing symlink"):
        get_verified(store, KEY, sha256_hex(b"private key"))


def test_a_symlinked_key_does_not_exist_and_is_not_listed(
    store: LocalStore, root: Path, outside: Path
) -> None:
    store.put("runs/r1/real.blob", b"real")
    plant(root, KEY, lambda path: path.symlink_to(outside / "secret"))
    plant(root, "runs/r1/dangling.blob", lambda path: path.symlink_to(root / "nowhere"))
    assert not store.exists(KEY)
    assert not store.exists("runs/r1/dangling.blob")
    assert store.list() == ["runs/r1/real.blob"]


def test_put_over_a_symlinked_key_replaces_the_link_and_leaves_its_target_alone(
    store: LocalStore, root: Path, outside: Path
) -> None:
    before = snapshot(outside)
    link = plant(root, KEY, lambda path: path.symlink_to(outside / "secret"))
    store.put(KEY, b"the real update")
    assert snapshot(outside) == before
    assert not link.is_symlink()
    assert store.get(KEY) == b"the real update"


def test_delete_of_a_symlinked_key_removes_the_link_only(
    store: LocalStore, root: Path, outside: Path
) -> None:
    before = snapshot(outside)
    link = plant(root, KEY, lambda path: path.symlink_to(outside / "secret"))
    store.delete(KEY)
    assert not link.is_symlink()
    assert snapshot(outside) == before


# -- a symlinked folder on the way ---------------------------------------------------------------


@pytest.mark.parametrize("linked", ["runs", "runs/r1"])
def test_a_symlinked_folder_is_never_followed(
    store: LocalStore, root: Path, outside: Path, linked: str
) -> None:
    """``runs`` or ``runs/r1`` leads outside: nothing reads, writes or deletes there."""
    target = outside if linked == "runs" else outside / "r1"
    plant(root, linked, lambda path: path.symlink_to(target, target_is_directory=True))
    key = "runs/r1/a.blob"
    before = snapshot(outside)

    with pytest.raises(StoreError, match="refusing symlink") as info:
        store.get(key)
    assert not isinstance(info.value, BlobNotFoundError)
    assert f"{linked} (on the way to {key}" in str(info.value)
    with pytest.raises(StoreError, match="refusing symlink"):
        store.put(key, b"forged")
    with pytest.raises(StoreError, match="refusing symlink"):
        store.put("runs/r1/new/b.blob", b"forged")
    with pytest.raises(StoreError, match="refusing symlink"):
        store.delete(key)
    assert not store.exists(key)
    assert store.list() == []
    assert store.list("runs/r1/") == []

    assert snapshot(outside) == before


def test_list_skips_symlinked_folders_and_link_loops(
    store: LocalStore, root: Path, outside: Path
) -> None:
    store.put("runs/r1/a.blob", b"a")
    plant(root, "runs/elsewhere", lambda p: p.symlink_to(outside, target_is_directory=True))
    plant(root, "runs/r1/loop", lambda p: p.symlink_to(root, target_is_directory=True))
    assert store.list() == ["runs/r1/a.blob"]
    assert store.list("runs/") == ["runs/r1/a.blob"]


def test_a_symlinked_root_chosen_by_the_operator_still_works(tmp_path: Path) -> None:
    (tmp_path / "volume").mkdir()
    (tmp_path / "store").symlink_to(tmp_path / "volume", target_is_directory=True)
    store = LocalStore(tmp_path / "store")
    store.put(KEY, b"data")
    assert store.get(KEY) == b"data"
    assert store.list() == [KEY]
    assert (tmp_path / "volume" / KEY).read_bytes() == b"data"


# -- things that are not regular files -----------------------------------------------------------


def test_a_fifo_at_a_key_is_refused_without_blocking(store: LocalStore, root: Path) -> None:
    plant(root, KEY, lambda path: os.mkfifo(path))
    for error in (
        finishes(lambda: store.get(KEY, max_bytes=1024)),
        finishes(lambda: store.get(KEY)),
    ):
        assert isinstance(error, StoreError) and not isinstance(error, BlobNotFoundError)
        assert KEY in str(error)
        assert "is a FIFO, not a regular file" in str(error)
    assert finishes(lambda: store.exists(KEY)) is None
    assert not store.exists(KEY)
    assert store.list() == []


def test_a_socket_at_a_key_is_refused(store: LocalStore, root: Path) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        plant(root, "s.blob", lambda path: server.bind(str(path)))
        with pytest.raises(StoreError, match="is a socket, not a regular file"):
            store.get("s.blob")
        assert not store.exists("s.blob")
        assert store.list() == []
    finally:
        server.close()


def test_a_character_device_at_a_key_is_refused(store: LocalStore, root: Path) -> None:
    zero = os.stat("/dev/zero").st_rdev
    try:
        plant(root, KEY, lambda path: os.mknod(path, stat.S_IFCHR | 0o600, zero))
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot make a device node here: {exc}")
    error = finishes(lambda: store.get(KEY))
    assert isinstance(error, StoreError)
    assert "is a character device, not a regular file" in str(error)
    assert not store.exists(KEY)
    assert store.list() == []


def test_a_folder_at_a_key_is_still_not_found(store: LocalStore) -> None:
    store.put("runs/r1/a.blob", b"a")
    with pytest.raises(BlobNotFoundError):
        store.get("runs/r1", max_bytes=10)


# -- size before content -------------------------------------------------------------------------


@pytest.fixture
def no_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Fails the test if the store reads file contents; yields the fds it tried."""
    tried: list[int] = []

    def refuse(fd: int, size: int) -> bytes:
        tried.append(fd)
        raise AssertionError("the store read a file it should have refused unread")

    monkeypatch.setattr(os, "read", refuse)
    yield tried


def test_a_10_gib_sparse_file_is_refused_by_size_without_reading(
    store: LocalStore, root: Path, no_reads: list[int]
) -> None:
    path = plant(root, KEY, lambda path: path.write_bytes(b""))
    os.truncate(path, TEN_GIB)
    started = time.monotonic()
    with pytest.raises(BlobTooLargeError) as info:
        store.get(KEY, max_bytes=64 * 1024 * 1024)
    assert time.monotonic() - started < FAST
    assert no_reads == []
    message = str(info.value)
    assert KEY in message
    assert f"{TEN_GIB} bytes" in message
    assert f"{64 * 1024 * 1024} bytes" in message


def test_a_file_that_grows_during_the_read_is_refused(
    store: LocalStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fstat said 10 bytes (within the limit); the file holds more by the time it is read."""
    store.put(KEY, b"x" * 10_000)
    real_fstat = os.fstat

    def stale_fstat(fd: int) -> os.stat_result:
        info = real_fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return info
        fields = list(info)
        fields[stat.ST_SIZE] = 10
        return os.stat_result(fields)

    monkeypatch.setattr(os, "fstat", stale_fstat)
    with pytest.raises(BlobTooLargeError, match="grew past the limit of 100 bytes"):
        store.get(KEY, max_bytes=100)


def test_a_blob_exactly_at_the_limit_is_read_whole(store: LocalStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)  # more than one read chunk
    store.put(KEY, data)
    assert store.get(KEY, max_bytes=len(data)) == data
    with pytest.raises(BlobTooLargeError):
        store.get(KEY, max_bytes=len(data) - 1)


# -- put goes through the verified folders -------------------------------------------------------


def test_put_does_not_write_through_a_folder_swapped_for_a_symlink(
    store: LocalStore, root: Path, outside: Path
) -> None:
    store.put("runs/r1/a.blob", b"first")
    before = snapshot(outside)
    real = root / "runs" / "r1"
    real.rename(root / "runs" / "r1-old")
    real.symlink_to(outside / "r1", target_is_directory=True)
    with pytest.raises(StoreError, match="refusing symlink"):
        store.put("runs/r1/a.blob", b"second")
    assert snapshot(outside) == before


def test_put_leaves_no_temp_file_and_lists_only_the_key(store: LocalStore, root: Path) -> None:
    store.put(KEY, b"one")
    store.put(KEY, b"two")
    assert store.get(KEY) == b"two"
    assert sorted(p.name for p in (root / KEY).parent.iterdir()) == ["round-0001.blob"]
    assert store.list() == [KEY]
