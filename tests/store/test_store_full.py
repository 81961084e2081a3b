"""A full disk under the local store (issue 18): a clear error, nothing corrupt, and the run goes
on once space returns.

Each test mounts a real 256 KiB tmpfs and fills it to the last page with a filler file. Mounting
needs root, as in CI; a test that cannot mount fails with the reason, it never skips.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from common.errors import StoreError, StoreFullError
from common.protocol import layout
from common.store import InMemoryStore, LocalStore, SpaceWaitingStore, Store, sha256_hex
from common.store.retry import RetryPolicy
from coordinator import state as sm
from coordinator.service import Coordinator
from tests.protocol.test_round_protocol import FOUR, Cluster, codec, make_plan

SIZE = "256k"
KEY = layout.update_key("r1", 3, "hospital-1")
BLOB = bytes(range(256)) * 64  # 16 KiB: pages a full tmpfs does not have
#: Short real waits, about 15 s in all: far longer than the second until space is freed.
SHORT = RetryPolicy(attempts=100, base_delay=0.05, max_delay=0.2)
FREED_AFTER = 1.0  # seconds until a timer frees the space
THREE = FOUR[:3]


class Disk:
    """A mounted tmpfs that a filler file can fill up and a timer can free again."""

    def __init__(self, mount_point: Path) -> None:
        self.mount_point = mount_point
        self.filler = mount_point / "filler"
        self._timers: list[threading.Timer] = []

    def fill(self) -> None:
        """Write the filler until the tmpfs refuses a byte more."""
        chunk = b"\0" * 65536
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    return
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def free_later(self, seconds: float = FREED_AFTER) -> None:
        timer = threading.Timer(seconds, self.free)
        self._timers.append(timer)
        timer.start()

    def read_only(self) -> None:
        _run("mount", "-o", "remount,ro", str(self.mount_point))

    def stop_timers(self) -> None:
        for timer in self._timers:
            timer.cancel()
            timer.join()


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        pytest.fail(
            f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}", pytrace=False
        )


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.fail(
            "the disk-full tests mount a tmpfs and need root (CI runs them as root): run them "
            "with sudo, or in the test container",
            pytrace=False,
        )
    _run("mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mount_point))
    found = Disk(mount_point)
    try:
        yield found
    finally:
        found.stop_timers()
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def temp_files(root: Path) -> list[str]:
    return [name for _, _, names in os.walk(root) for name in names if name.endswith(".tmp")]


class Sleeps:
    """``time.sleep`` that remembers each wait (really waiting, so a timer can free space)."""

    def __init__(self, *, real: bool) -> None:
        self.seconds: list[float] = []
        self._real = real

    def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)
        if self._real:
            time.sleep(seconds)


def waiting(store: Store, sleeps: Sleeps, policy: RetryPolicy = SHORT) -> SpaceWaitingStore:
    return SpaceWaitingStore(store, policy=policy, sleep=sleeps, rand=lambda: 0.5)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# -- the local store -----------------------------------------------------------------------------


def test_a_put_into_a_full_disk_names_key_root_and_size_and_leaves_the_old_blob(
    disk: Disk,
) -> None:
    store = LocalStore(disk.mount_point / "store")
    store.put(KEY, b"old bytes")
    disk.fill()
    with pytest.raises(StoreFullError) as info:
        store.put(KEY, BLOB)
    message = str(info.value)
    assert message.startswith("store full: no space left on device writing ")
    assert KEY in message and str(store.root) in message and f"({len(BLOB):,} bytes)" in message
    assert "free space there" in message
    assert temp_files(disk.mount_point) == []
    assert store.get(KEY) == b"old bytes"


def test_a_waiting_put_succeeds_once_space_is_freed_and_warns_naming_the_key(
    disk: Disk, caplog: pytest.LogCaptureFixture
) -> None:
    store = LocalStore(disk.mount_point / "store")
    disk.fill()
    sleeps = Sleeps(real=True)
    disk.free_later()
    with caplog.at_level(logging.INFO, logger="hefl.store"):
        waiting(store, sleeps).put(KEY, BLOB)
    assert store.get(KEY) == BLOB
    assert sleeps.seconds, "the put succeeded without waiting: the disk was not full"
    found = warnings(caplog)
    assert found and all(line.startswith(f"store_full key={KEY} ") for line in found)
    assert all(f"bytes={len(BLOB)}" in line and "retry_in=" in line for line in found)
    assert any(line.startswith(f"store_write_resumed key={KEY} ") for line in caplog.messages)


def test_a_waiting_put_gives_up_with_the_store_full_error_when_space_never_returns(
    disk: Disk,
) -> None:
    store = LocalStore(disk.mount_point / "store")
    disk.fill()
    sleeps = Sleeps(real=False)
    policy = RetryPolicy(attempts=4, base_delay=1.0, max_delay=30.0)
    with pytest.raises(StoreFullError) as info:
        waiting(store, sleeps, policy).put(KEY, BLOB)
    assert sleeps.seconds == [0.75, 1.5, 3.0]
    assert str(info.value).endswith("still full after waiting 5 s (4 tries)")
    assert KEY in str(info.value) and temp_files(disk.mount_point) == []
    assert not store.exists(KEY)


def _folder_is_a_file(store: LocalStore, disk: Disk) -> None:
    store.put("runs", b"a file where the key needs a folder")


def _read_only(store: LocalStore, disk: Disk) -> None:
    disk.read_only()


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [(_folder_is_a_file, "is a regular file, not a folder"), (_read_only, "Read-only file system")],
    ids=["folder-is-a-file", "read-only-disk"],
)
def test_other_write_errors_are_raised_at_once_without_waiting(
    disk: Disk, breakage: Callable[[LocalStore, Disk], None], expected: str
) -> None:
    store = LocalStore(disk.mount_point / "store")
    breakage(store, disk)
    sleeps = Sleeps(real=False)
    with pytest.raises(StoreError, match=expected) as info:
        waiting(store, sleeps).put(KEY, BLOB)
    assert not isinstance(info.value, StoreFullError)
    assert sleeps.seconds == []


def test_the_default_wait_is_bounded_by_about_ten_minutes() -> None:
    policy = SpaceWaitingStore(InMemoryStore()).policy
    assert 300 <= policy.longest_wait() <= 600


# -- the coordinator -----------------------------------------------------------------------------


def three_updates_accepted(cluster: Cluster) -> Coordinator:
    """Round 1 with the updates of h1 to h3 accepted; without h4's, it closes at its deadline."""
    for name in THREE:
        cluster.add_hospital(name)
    coordinator = cluster.start_coordinator()
    cluster.transport.deliver_all()
    assert coordinator.state.accepted_hospitals == THREE
    assert coordinator.state.round == 1 and not coordinator.state.history
    cluster.now[0] = coordinator.state.deadline + 1.0
    return coordinator


def four_hospital_cluster(store: Store, state_store: Store) -> Cluster:
    plan = make_plan(hospitals=FOUR, min_hospitals=3, rounds=2)
    return Cluster(store=store, plan=plan, state_store=state_store)  # type: ignore[arg-type]


def saved_state(cluster: Cluster) -> sm.RunState:
    body = cluster.state_store.get(layout.state_key(cluster.plan.run))
    return sm.from_json(codec("coordinator").open_state(body))


def assert_round_1_closed(cluster: Cluster, coordinator: Coordinator, shared: Store) -> None:
    key = layout.aggregate_key(cluster.plan.run, 1)
    assert coordinator.state.round == 2
    saved = saved_state(cluster)
    assert saved.round == 2 and [r.aggregate_ref for r in saved.history] == [key]
    assert saved.history[0].accepted == THREE
    assert saved.history[0].aggregate_sha256 == sha256_hex(shared.get(key))


def test_a_round_whose_aggregate_meets_a_full_disk_closes_once_space_returns(
    disk: Disk, caplog: pytest.LogCaptureFixture
) -> None:
    shared = waiting(LocalStore(disk.mount_point / "shared"), Sleeps(real=True))
    cluster = four_hospital_cluster(shared, InMemoryStore())
    coordinator = three_updates_accepted(cluster)
    disk.fill()
    disk.free_later()
    with caplog.at_level(logging.WARNING, logger="hefl.store"):
        coordinator.tick()
    assert_round_1_closed(cluster, coordinator, shared)
    aggregate = layout.aggregate_key(cluster.plan.run, 1)
    assert any(line.startswith(f"store_full key={aggregate} ") for line in warnings(caplog))


def test_a_round_whose_state_cannot_be_saved_stays_open_and_closes_on_a_later_tick(
    disk: Disk,
) -> None:
    shared = InMemoryStore()
    cluster = four_hospital_cluster(shared, LocalStore(disk.mount_point / "state"))
    coordinator = three_updates_accepted(cluster)
    disk.fill()
    with pytest.raises(StoreFullError):
        coordinator.tick()
    # Nothing ran ahead of what was saved: the round is open, its updates still counted.
    assert coordinator.state.round == 1 and not coordinator.state.history
    assert coordinator.state.accepted_hospitals == THREE
    assert saved_state(cluster).round == 1 and not saved_state(cluster).history
    disk.free()
    coordinator.tick()
    assert_round_1_closed(cluster, coordinator, shared)
