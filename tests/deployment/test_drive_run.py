"""A distributed run on Google Drive (the fake) that rides out a Drive outage in round 2.

Real ``hefl coordinator`` and ``hefl hospital`` processes on the real RabbitMQ, each on the
store URL its operator would hand it: the coordinator's service account manages the root, and
``hefl drive-share``'s logic gives each hospital's own account its updates folder and the
aggregates folder only (``testkit.drive.deployment``). The fake Drive runs in this process; the
processes reach it over HTTP. In round 2 Drive answers a burst of 503s and closes connections
without an answer, whichever process asks; the run still ends with every hospital in every round.
A quick test first checks the per-participant URLs themselves (no broker, no processes).

The burst is sized to the default retry budget (6 attempts per call): even if all of it and both
dropped connections hit one call, that call fails at most 5 times (httplib2 resends once a
request whose answer is missing, so two drops cost at most one attempt).
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from common.errors import StoreError
from common.protocol.layout import aggregate_key, update_key
from common.protocol.runconfig import hospital_names
from common.store import open_store
from common.store.retry import DEFAULT_ATTEMPTS
from testkit.cluster import ProcessCluster, process_cluster, sample_csv
from testkit.drive.deployment import DriveSites, drive_deployment, drive_sites
from testkit.drive.helpers import shared_fake
from testkit.drive.server import FakeDrive

HOSPITALS = 3
ROUNDS = 3
RUN = "drive-run"
BURST = 4
DROPS = 2


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sample_csv(tmp_path_factory.mktemp("data") / "sample.csv", patients=1500)


@pytest.fixture
def drive() -> Iterator[FakeDrive]:
    drive = shared_fake()
    yield drive
    with drive.lock:  # faults a failed run left unserved must not reach the next test
        drive.faults.clear()


@pytest.fixture
def sites(tmp_path: Path, drive: FakeDrive) -> DriveSites:
    """A Google account and a store URL for the coordinator and each hospital."""
    return drive_sites(
        drive, tmp_path / "google-credentials", run=RUN, hospitals=hospital_names(HOSPITALS)
    )


@pytest.fixture
def cluster(
    tmp_path: Path, broker: ModuleType, source: Path, sites: DriveSites
) -> Iterator[ProcessCluster]:
    """3 hospitals' keys, shards and broker users, every process on its Drive store URL."""
    with process_cluster(
        tmp_path, hospitals=HOSPITALS, rounds=ROUNDS, run=RUN, store_urls=dict(sites.urls)
    ) as running:
        running.prepare(source)
        yield running


def test_a_run_on_drive_completes_through_503s_and_dropped_connections_in_round_2(
    cluster: ProcessCluster, drive: FakeDrive, sites: DriveSites
) -> None:
    assert BURST + DROPS // 2 < DEFAULT_ATTEMPTS
    for name in cluster.names:
        cluster.start_hospital(name)
    cluster.start_coordinator()
    cluster.wait_for(
        lambda s: s["round"] >= 2 and s["phase"] == "round", timeout=120, what="round 2"
    )
    drive.fail_next(BURST, status=503)
    drive.drop_next(DROPS)

    assert cluster.wait_exit("coordinator", timeout=240) == 0, cluster.tail_logs()
    for name in cluster.names:
        assert cluster.wait_exit(name, timeout=60) == 0, cluster.tail_logs()
    state = cluster.state()
    assert state is not None and state["phase"] == "done"
    assert [r["round"] for r in state["history"]] == list(range(1, ROUNDS + 1))
    assert [set(r["accepted"]) for r in state["history"]] == [set(cluster.names)] * ROUNDS
    assert drive.faults == []  # the whole outage met the run
    retries = sum(cluster.log(label).count("drive_retry") for label in cluster.processes)
    assert retries >= BURST, cluster.tail_logs()  # each 503 was retried by the process it hit
    folder = drive.path_of(sites.root, f"runs/{RUN}/aggregates")
    assert folder is not None  # the blobs went to Drive, one file per key
    assert sorted(f.name for f in drive.children(folder.id)) == [
        *(f"round-{r:04d}.blob" for r in range(1, ROUNDS + 1)),
        "summary.json",
    ]
    assert not cluster.store.exists()  # and none to the local store folder


def test_each_participant_gets_its_own_account_and_a_url_confined_to_its_folders(
    tmp_path: Path,
) -> None:
    names = hospital_names(2)
    with drive_deployment(tmp_path, run=RUN, hospitals=names) as (drive, urls):
        assert set(urls) == {"coordinator", *names}
        assert all(
            "credentials=" in url and f"endpoint={drive.url}" in url for url in urls.values()
        )
        coordinator, hospital_1 = open_store(urls["coordinator"]), open_store(urls["hospital-1"])
        coordinator.put(aggregate_key(RUN, 1), b"aggregate")
        hospital_1.put(update_key(RUN, 1, "hospital-1"), b"update")
        assert hospital_1.get(aggregate_key(RUN, 1)) == b"aggregate"
        assert coordinator.get(update_key(RUN, 1, "hospital-1")) == b"update"
        with pytest.raises(StoreError):
            hospital_1.put(update_key(RUN, 1, "hospital-2"), b"not its folder")
    with pytest.raises(OSError):  # the fake is stopped with the deployment
        urllib.request.urlopen(drive.url, timeout=5)
