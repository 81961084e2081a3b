"""The Drive store through outages: bursts of 503 answers and connections closed with no answer.

Each Drive call the store makes (``files.get`` of the root, ``files.list``, ``files.get`` of media,
``files.create`` of a folder, of a multipart upload and of a resumable session, the session's
chunks, ``files.update`` to trash, ``files.delete``, ``permissions.create``) is hit in turn, through
the real googleapiclient against the fake Drive. A run of failures shorter than the retry budget
is ridden out and leaves one file per key, even when the dropped request had been carried out (a
create the client cannot tell happened: ``put`` removes the older copies); a longer run is a
``StoreError`` naming the operation, the key and the Drive call, and the next try succeeds.

A folder create carried out but unanswered leaves an empty twin folder: the store keeps using
the oldest of twins (``_canonical_folder``), so it is clutter, not a second place for a key.

httplib2 sends a request again, once, when the answer to its first send is missing, so each
failed attempt the store sees costs two dropped connections.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.errors import StoreError
from common.store.gdrive import DriveStore
from common.store.retry import RetryPolicy
from testkit.drive.helpers import SERVICE_ACCOUNT, drive_store, new_root, shared_fake
from testkit.drive.model import FakeFile
from testkit.drive.server import GRANULE, FakeDrive

ATTEMPTS = 4
POLICY = RetryPolicy(attempts=ATTEMPTS, base_delay=0.01, max_delay=0.04)
FOLDER = "runs/r1/round-0001"
KEY = f"{FOLDER}/update-hospital-1.blob"
SIBLING = f"{FOLDER}/update-hospital-2.blob"
SMALL = b"a small update"  # under the multipart limit of the test options (512 bytes)
BIG = os.urandom(2 * GRANULE + 1000)  # resumable: three chunks of one granule
SITE = "site-9@hefl-test.iam.gserviceaccount.com"


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@dataclass(frozen=True)
class Case:
    """One store operation, and the Drive call of it that the faults hit."""

    call: str  # as the fake names it
    api: str  # as the store's error names it
    what: str  # the operation (and key) the error names
    act: Callable[[DriveStore, FakeDrive], None]  # runs the operation, checks its result
    prepare: Callable[[DriveStore], None] = lambda store: None
    role: str = "organizer"  # the account's role on the root


def _list_fresh(store: DriveStore, drive: FakeDrive) -> None:
    assert store.list() == []


def _exists(store: DriveStore, drive: FakeDrive) -> None:
    assert store.exists(KEY)


def _get(store: DriveStore, drive: FakeDrive) -> None:
    assert store.get(KEY) == BIG


def _put(data: bytes) -> Callable[[DriveStore, FakeDrive], None]:
    def act(store: DriveStore, drive: FakeDrive) -> None:
        store.put(KEY, data)
        assert store.get(KEY) == data

    return act


def _delete(store: DriveStore, drive: FakeDrive) -> None:
    store.delete(KEY)
    assert not store.exists(KEY)
    assert store.list() == [SIBLING]


def _share(store: DriveStore, drive: FakeDrive) -> None:
    folder = store.share_folder("runs/r1/updates/hospital-9", SITE, "writer")
    assert drive.files.items[folder].shares[SITE] == "writer"


def _both(store: DriveStore) -> None:
    store.put(SIBLING, b"the other site's")
    store.put(KEY, BIG)


def _sibling(store: DriveStore) -> None:
    store.put(SIBLING, b"x")  # the folders exist: the faults meet the upload itself


RESUMABLE = "files.create (resumable)"
CASES = {
    "root check": Case("files.get", "files.get", "list", _list_fresh),
    "lookup": Case("files.list", "files.list", f"exists {KEY}", _exists, _both),
    "download": Case("files.get_media", "files.get (media)", f"get {KEY}", _get, _both),
    "new folders": Case("files.create", "files.create", f"put {KEY}", _put(SMALL)),
    "multipart upload": Case("files.create", "files.create", f"put {KEY}", _put(SMALL), _sibling),
    "resumable start": Case("files.create", RESUMABLE, f"put {KEY}", _put(BIG), _sibling),
    "resumable chunk": Case("upload.chunk", RESUMABLE, f"put {KEY}", _put(BIG), _sibling),
    "delete": Case("files.delete", "files.delete", f"delete {KEY}", _delete, _both),
    "trash": Case(
        "files.update", "files.update", f"delete {KEY}", _delete, _both, role="fileOrganizer"
    ),
    "share": Case(
        "permissions.create", "permissions.create", "share runs/r1/updates/hospital-9", _share
    ),
}


def burst(drive: FakeDrive, call: str, attempts: int) -> None:
    drive.fail_next(attempts, status=503, call=call)


def dropped(drive: FakeDrive, call: str, attempts: int) -> None:
    drive.drop_next(2 * attempts, call=call)


def dropped_after_done(drive: FakeDrive, call: str, attempts: int) -> None:
    drive.drop_next(2 * attempts, call=call, applied=True)


FAULTS = {"503 burst": burst, "dropped": dropped, "dropped after done": dropped_after_done}
ERRORS = {
    "503 burst": "HTTP 503",
    "dropped": "connection error",
    "dropped after done": "connection error",
}


@pytest.fixture
def drive() -> Iterator[FakeDrive]:
    drive = shared_fake()
    yield drive
    with drive.lock:  # a failed test must not leave its faults to the next one
        drive.faults.clear()


def open_case(case: Case, drive: FakeDrive, tmp_path: Path, sleeps: Sleeps) -> DriveStore:
    root = new_root(drive, {SERVICE_ACCOUNT: case.role})
    store = drive_store(tmp_path, drive, root=root, retry=POLICY, sleep=sleeps, chunk_size=GRANULE)
    case.prepare(store)
    return store


def assert_one_file_per_name(drive: FakeDrive, folder: str, *, folders: bool = True) -> None:
    """Drive allows twins; the store never leaves two files of one name (nor, with
    ``folders``, two folders), here or below."""
    items: list[FakeFile] = drive.children(folder)
    names = [item.name for item in items if folders or not item.is_folder]
    assert len(names) == len(set(names)), f"twins in folder {folder}: {sorted(names)}"
    for item in items:
        if item.is_folder:
            assert_one_file_per_name(drive, item.id, folders=folders)


def lost_folder_creates(case: str, fault: str) -> bool:
    return case == "new folders" and fault == "dropped after done"


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("case", CASES)
def test_failures_shorter_than_the_budget_are_ridden_out_leaving_one_file_per_key(
    drive: FakeDrive, tmp_path: Path, case: str, fault: str
) -> None:
    sleeps = Sleeps()
    store = open_case(CASES[case], drive, tmp_path, sleeps)
    FAULTS[fault](drive, CASES[case].call, ATTEMPTS - 1)
    CASES[case].act(store, drive)
    assert drive.faults == []  # every fault met the operation
    assert len(sleeps.delays) == ATTEMPTS - 1  # each failed attempt was retried after a backoff
    assert_one_file_per_name(drive, store.root_id, folders=not lost_folder_creates(case, fault))


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("case", CASES)
def test_failures_past_the_budget_name_the_operation_and_the_next_try_succeeds(
    drive: FakeDrive, tmp_path: Path, case: str, fault: str
) -> None:
    sleeps = Sleeps()
    store = open_case(CASES[case], drive, tmp_path, sleeps)
    FAULTS[fault](drive, CASES[case].call, ATTEMPTS)
    with pytest.raises(StoreError) as info:
        CASES[case].act(store, drive)
    message = str(info.value)
    assert f"Google Drive {CASES[case].what} in " in message
    assert f"Drive {CASES[case].api} failed after {ATTEMPTS} attempts: {ERRORS[fault]}" in message
    assert drive.faults == []
    CASES[case].act(store, drive)  # the outage is over
    assert_one_file_per_name(drive, store.root_id, folders=not lost_folder_creates(case, fault))
