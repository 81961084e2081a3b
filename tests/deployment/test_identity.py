"""A replica's hospital identity: named, from the pod ordinal, or claimed in a shared folder."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from common.errors import ConfigError
from common.protocol.signing import issue_identities
from hefl.cli import main
from hefl.identity import (
    HEARTBEAT,
    OWNER,
    ClaimBoard,
    Heartbeat,
    IdentityError,
    hospital_identity,
    ordinal_identity,
    this_host,
)

NAMES = ["hospital-1", "hospital-2", "hospital-3"]
TTL = 90.0


def clock(offset: float = 0.0) -> Callable[[], float]:
    """Wall time shifted by ``offset`` seconds (file times are wall time)."""
    return lambda: time.time() + offset


def board(folder: Path, owner: str, offset: float = 0.0) -> ClaimBoard:
    return ClaimBoard(folder, owner=owner, ttl=TTL, clock=clock(offset))


def test_the_pod_ordinal_gives_the_hospital() -> None:
    assert ordinal_identity("hefl-hospital-0") == "hospital-1"
    assert ordinal_identity("hefl-hospital-11") == "hospital-12"
    for host in ("3f2a9c0d1e7b", "hefl-hospital-", "hefl-hospital-x"):
        with pytest.raises(IdentityError, match="ordinal"):
            ordinal_identity(host)


def test_the_host_name_comes_from_the_environment_first() -> None:
    assert this_host({"HOSTNAME": "hefl-hospital-3"}) == "hefl-hospital-3"
    assert this_host({}) != ""


def test_replicas_claim_the_first_free_identity_recording_owner_and_heartbeat(
    tmp_path: Path,
) -> None:
    assert board(tmp_path, "container-a").claim(NAMES) == "hospital-1"
    assert board(tmp_path, "container-b").claim(NAMES) == "hospital-2"
    claim = tmp_path / "hospital-2"
    assert (claim / OWNER).read_text().strip() == "container-b"
    assert abs((claim / HEARTBEAT).stat().st_mtime - time.time()) < 5


def test_identities_are_claimed_in_numeric_order(tmp_path: Path) -> None:
    names = [f"hospital-{k}" for k in (1, 2, 10, 11)]
    got = [board(tmp_path, f"c{i}").claim(names) for i in range(4)]
    assert got == names


def test_a_restarted_container_keeps_its_claim(tmp_path: Path) -> None:
    board(tmp_path, "container-a").claim(NAMES)
    board(tmp_path, "container-b").claim(NAMES)
    os.utime(tmp_path / "hospital-2" / HEARTBEAT, (1, 1))  # it was down a while
    assert board(tmp_path, "container-b").claim(NAMES) == "hospital-2"
    assert (tmp_path / "hospital-2" / HEARTBEAT).stat().st_mtime > 1  # alive again


def test_a_claim_whose_heartbeat_is_older_than_the_ttl_is_taken_over(tmp_path: Path) -> None:
    board(tmp_path, "gone").claim(NAMES[:1])
    later = board(tmp_path, "newcomer", offset=TTL + 5)
    assert later.is_stale("hospital-1")
    assert later.claim(NAMES[:1]) == "hospital-1"
    assert later.owner_of("hospital-1") == "newcomer"
    assert [p.name for p in tmp_path.iterdir()] == ["hospital-1"]  # the old claim is deleted


def test_a_live_claim_is_not_taken_over(tmp_path: Path) -> None:
    board(tmp_path, "alive").claim(NAMES[:1])
    with pytest.raises(IdentityError):
        board(tmp_path, "newcomer", offset=TTL - 10).claim(NAMES[:1])


def test_a_fresh_claim_moved_aside_by_a_racing_takeover_is_put_back(tmp_path: Path) -> None:
    board(tmp_path, "winner").claim(NAMES[:1])  # it just replaced a stale claim
    racer = board(tmp_path, "racer")  # which saw the stale one a moment before
    assert racer._clear_stale("hospital-1") is False
    assert racer.owner_of("hospital-1") == "winner"


def test_all_identities_claimed_is_a_clear_error_with_exit_code_2(tmp_path: Path) -> None:
    for owner in ("a", "b", "c"):
        board(tmp_path, owner).claim(NAMES)
    with pytest.raises(IdentityError) as error:
        board(tmp_path, "d").claim(NAMES)
    assert "all 3 hospital identities are claimed" in str(error.value)
    assert "--hospitals" in str(error.value)
    assert error.value.exit_code == 2


def test_concurrent_replicas_never_claim_the_same_identity(tmp_path: Path) -> None:
    names = [f"hospital-{k}" for k in range(1, 13)]
    start = threading.Barrier(12)

    def claim(owner: str) -> str:
        start.wait()
        return board(tmp_path, owner).claim(names)

    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(claim, [f"replica-{i}" for i in range(12)]))
    assert sorted(got) == sorted(names)


def test_the_heartbeat_thread_refreshes_the_claim_until_the_block_ends(tmp_path: Path) -> None:
    claims = board(tmp_path, "a")
    name = claims.claim(NAMES)
    beat = tmp_path / name / HEARTBEAT
    os.utime(beat, (1, 1))
    with Heartbeat(claims, name, interval=0.02) as heartbeat:
        deadline = time.monotonic() + 5
        while beat.stat().st_mtime == 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert beat.stat().st_mtime > 1
    assert not heartbeat._thread.is_alive()


def test_hospital_identity_by_name_ordinal_or_claim(tmp_path: Path) -> None:
    def held(**kwargs: object) -> str:
        settings: dict[str, object] = {
            "hospital": None,
            "mode": None,
            "claims": tmp_path,
            "claim_ttl": TTL,
            "issued": lambda: NAMES,
            "hostname": "hefl-hospital-1",
        }
        with hospital_identity(**{**settings, **kwargs}) as name:  # type: ignore[arg-type]
            alive = [t for t in threading.enumerate() if t.name == f"heartbeat-{name}"]
            return f"{name}{' beating' if alive else ''}"

    assert held(hospital="hospital-7") == "hospital-7"
    assert held(mode="ordinal") == "hospital-2"
    assert held(mode="claim") == "hospital-1 beating"
    with pytest.raises(ConfigError, match="--hospital"):
        held()
    with pytest.raises(ConfigError, match="--claims"):
        held(mode="claim", claims=None)


# -- hefl hospital-replica, up to the point where it would join the run --------------------------


@pytest.fixture
def replica(tmp_path: Path) -> list[str]:
    issue_identities(tmp_path / "keys" / "identities", NAMES[:2])  # trust.json: 2 identities
    (tmp_path / "shards").mkdir()
    return [
        "hospital-replica",
        "--identity",
        "claim",
        "--claims",
        str(tmp_path / "claims"),
        "--keys",
        str(tmp_path / "keys"),
        "--shards",
        str(tmp_path / "shards"),
    ]


def test_a_replica_without_its_shard_stops_with_exit_code_3(
    replica: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(replica) == 3
    assert f"{tmp_path / 'shards' / 'hospital-1.csv'}" in capsys.readouterr().err
    assert (tmp_path / "claims" / "hospital-1" / OWNER).exists()


def test_a_replica_beyond_the_issued_identities_stops_with_exit_code_2(
    replica: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for owner in ("a", "b"):
        board(tmp_path / "claims", owner).claim(NAMES[:2])
    assert main(replica) == 2
    assert "all 2 hospital identities are claimed" in capsys.readouterr().err


def test_a_replica_needs_a_way_to_find_its_identity(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["hospital-replica", "--csv", "x.csv"]) == 2
    assert "--identity claim|ordinal" in capsys.readouterr().err
