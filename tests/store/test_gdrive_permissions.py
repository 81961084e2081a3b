"""Per-site folders on Drive: a hospital writes its own updates and reads the aggregates only.

The coordinator's account owns the store and shares, per run, each hospital's updates folder
with that hospital (writer) and the aggregates folder with every hospital (reader). The fake
Drive gives each access token one account and enforces Drive's inherited permissions, so these
tests run the real googleapiclient against the same refusals Google would answer.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from common.errors import BlobNotFoundError, ConfigError, StoreError
from common.protocol.layout import aggregate_key, aggregates_prefix, update_key, updates_prefix
from common.store.gdrive import DriveStore
from common.store.gdrive_share import RunFolders, share_run_folders
from common.store.url import open_store, parse_store_url
from testkit.drive.helpers import drive_store, service_account_file, shared_fake, user_credentials
from testkit.drive.server import DRIVE_SCOPE, FakeDrive, Token

RUN = "r"
COORDINATOR = "coordinator@hefl-test.iam.gserviceaccount.com"
SITES = {
    "hospital-1": "site-1@hefl-test.iam.gserviceaccount.com",
    "hospital-2": "site-2@hefl-test.iam.gserviceaccount.com",
}
UPDATE_1 = update_key(RUN, 1, "hospital-1")
UPDATE_2 = update_key(RUN, 1, "hospital-2")
AGGREGATE = aggregate_key(RUN, 1)


@dataclass
class Deployment:
    drive: FakeDrive
    root: str
    coordinator: DriveStore
    folders: RunFolders
    hospital_1: DriveStore
    hospital_2: DriveStore


def site_store(
    drive: FakeDrive, tmp_path: Path, root: str, email: str, folders: dict[str, str]
) -> DriveStore:
    credentials = service_account_file(drive, tmp_path, email, name=f"{email}.json")
    return drive_store(tmp_path, drive, root=root, credentials=credentials, folders=folders)


@pytest.fixture(name="d")
def deployment(tmp_path: Path) -> Deployment:
    """A shared drive managed by the coordinator's service account; one run shared per site."""
    drive = shared_fake()
    root = drive.create_folder("hefl-store", shared_drive=True)
    drive.share(root, COORDINATOR, "organizer")
    coordinator = site_store(drive, tmp_path, root, COORDINATOR, {})
    folders = share_run_folders(coordinator, RUN, SITES)
    return Deployment(
        drive,
        root,
        coordinator,
        folders,
        site_store(drive, tmp_path, root, SITES["hospital-1"], folders.for_hospital("hospital-1")),
        site_store(drive, tmp_path, root, SITES["hospital-2"], folders.for_hospital("hospital-2")),
    )


# -- what each site may do -----------------------------------------------------------------------


def test_a_hospital_writes_its_own_updates_and_reads_the_aggregates(d: Deployment) -> None:
    d.hospital_1.put(UPDATE_1, b"update from 1")
    d.coordinator.put(AGGREGATE, b"the sum")
    assert d.hospital_1.get(UPDATE_1) == b"update from 1"
    assert d.hospital_1.get(AGGREGATE, max_bytes=100) == b"the sum"
    assert d.hospital_1.exists(AGGREGATE)
    assert d.hospital_1.list(aggregates_prefix(RUN) + "/") == [AGGREGATE]
    assert d.hospital_1.list(updates_prefix(RUN, "hospital-1") + "/") == [UPDATE_1]


def test_the_coordinator_reads_every_sites_updates(d: Deployment) -> None:
    d.hospital_1.put(UPDATE_1, b"update from 1")
    d.hospital_2.put(UPDATE_2, b"update from 2")
    d.coordinator.put(AGGREGATE, b"the sum")
    assert d.coordinator.get(UPDATE_1) == b"update from 1"
    assert d.coordinator.get(UPDATE_2, max_bytes=100) == b"update from 2"
    assert d.coordinator.list(f"runs/{RUN}/") == [AGGREGATE, UPDATE_1, UPDATE_2]


def test_a_hospital_cannot_read_list_or_overwrite_another_sites_updates(d: Deployment) -> None:
    d.hospital_2.put(UPDATE_2, b"update from 2")
    for action in (
        lambda: d.hospital_1.get(UPDATE_2),
        lambda: d.hospital_1.exists(UPDATE_2),
        lambda: d.hospital_1.put(UPDATE_2, b"forged by 1"),
        lambda: d.hospital_1.delete(UPDATE_2),
    ):
        with pytest.raises(StoreError) as info:
            action()
        message = str(info.value)
        assert UPDATE_2 in message
        assert SITES["hospital-1"] in message
        assert "other sites' folders are never shared" in message
    with pytest.raises(StoreError, match="never shared"):
        d.hospital_1.list(updates_prefix(RUN, "hospital-2") + "/")
    assert d.coordinator.get(UPDATE_2) == b"update from 2"
    assert d.coordinator.list(updates_prefix(RUN, "hospital-2") + "/") == [UPDATE_2]


def test_another_sites_folder_id_does_not_help(d: Deployment, tmp_path: Path) -> None:
    """A hospital that learned hospital-2's folder ID and mounts it: Drive still says no."""
    d.hospital_2.put(UPDATE_2, b"update from 2")
    stolen = {updates_prefix(RUN, "hospital-2"): d.folders.updates["hospital-2"]}
    spy = site_store(d.drive, tmp_path, d.root, SITES["hospital-1"], stolen)
    mark = len(d.drive.requests)
    for action in (
        lambda: spy.get(UPDATE_2),
        lambda: spy.list(updates_prefix(RUN, "hospital-2") + "/"),
        lambda: spy.put(UPDATE_2, b"forged by 1"),
    ):
        with pytest.raises(StoreError) as info:
            action()
        assert d.folders.updates["hospital-2"] in str(info.value)
        assert "never shared" in str(info.value)
    assert not [r for r in d.drive.requests[mark:] if r.call == "files.get_media"]
    assert d.coordinator.get(UPDATE_2) == b"update from 2"


def test_a_hospital_cannot_write_the_aggregates(d: Deployment) -> None:
    d.coordinator.put(AGGREGATE, b"the sum")
    with pytest.raises(StoreError) as info:
        d.hospital_1.put(AGGREGATE, b"forged aggregate")
    assert AGGREGATE in str(info.value) and "no write access" in str(info.value)
    assert d.coordinator.get(AGGREGATE) == b"the sum"


def test_a_hospital_cannot_read_the_run_above_its_folders(d: Deployment) -> None:
    d.coordinator.put(AGGREGATE, b"the sum")
    with pytest.raises(StoreError, match=d.root):
        d.hospital_1.list(f"runs/{RUN}/")
    with pytest.raises(StoreError):
        d.hospital_1.get(f"runs/{RUN}/coordinator-state.json")


def test_a_hospital_store_without_its_folders_reaches_nothing(
    d: Deployment, tmp_path: Path
) -> None:
    d.coordinator.put(AGGREGATE, b"the sum")
    plain = site_store(d.drive, tmp_path, d.root, SITES["hospital-1"], {})
    with pytest.raises(StoreError) as info:
        plain.get(AGGREGATE)
    assert f"root folder {d.root} was not found, or is not shared with" in str(info.value)


# -- what is shared with whom --------------------------------------------------------------------


def test_only_the_sites_own_folders_are_shared_with_it(d: Deployment) -> None:
    items = d.drive.files.items
    updates_1, updates_2 = d.folders.updates["hospital-1"], d.folders.updates["hospital-2"]
    assert items[updates_1].shares == {SITES["hospital-1"]: "writer"}
    assert items[updates_2].shares == {SITES["hospital-2"]: "writer"}
    assert items[d.folders.aggregates].shares == {email: "reader" for email in SITES.values()}
    for path in ("runs", f"runs/{RUN}", f"runs/{RUN}/updates"):
        folder = d.drive.path_of(d.root, path)
        assert folder is not None and folder.shares == {}
    assert items[d.root].shares == {COORDINATOR: "organizer"}


def test_sharing_again_changes_nothing(d: Deployment) -> None:
    again = share_run_folders(d.coordinator, RUN, SITES)
    assert again == d.folders
    assert d.drive.files.items[d.folders.aggregates].shares == {
        email: "reader" for email in SITES.values()
    }


def test_one_account_for_two_sites_is_refused(d: Deployment) -> None:
    with pytest.raises(ConfigError, match="its own Google account"):
        share_run_folders(d.coordinator, "r2", {"hospital-1": "x@y.org", "hospital-2": "x@y.org"})
    with pytest.raises(ConfigError, match="no hospital accounts"):
        share_run_folders(d.coordinator, "r2", {})
    with pytest.raises(ConfigError, match="no updates folder"):
        d.folders.for_hospital("hospital-9")


def test_my_drive_with_oauth_users_works_the_same(tmp_path: Path) -> None:
    """Without a shared drive: the coordinator's user owns the folder, sites are OAuth users."""
    drive = shared_fake()
    owner = "coordinator@example.org"
    root = drive.create_folder("hefl-store", owner=owner, shared_drive=False)
    coordinator = drive_store(
        tmp_path, drive, root=root, credentials=user_credentials(drive, owner)
    )
    sites = {"hospital-1": "one@example.org", "hospital-2": "two@example.org"}
    folders = share_run_folders(coordinator, RUN, sites)
    stores = {
        name: drive_store(
            tmp_path,
            drive,
            root=root,
            credentials=user_credentials(drive, email),
            folders=folders.for_hospital(name),
        )
        for name, email in sites.items()
    }
    stores["hospital-1"].put(UPDATE_1, b"one")
    stores["hospital-2"].put(UPDATE_2, b"two")
    coordinator.put(AGGREGATE, b"sum")
    assert coordinator.get(UPDATE_1) == b"one" and coordinator.get(UPDATE_2) == b"two"
    assert stores["hospital-2"].get(AGGREGATE) == b"sum"
    with pytest.raises(StoreError, match="never shared"):
        stores["hospital-2"].get(UPDATE_1)
    with pytest.raises(BlobNotFoundError):
        stores["hospital-2"].get(update_key(RUN, 2, "hospital-2"))


# -- the fake answers as Drive does --------------------------------------------------------------


def raw(
    drive: FakeDrive, method: str, path: str, token: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(drive.url + path.lstrip("/"), data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw_body, status = response.read(), response.status
    except urllib.error.HTTPError as exc:
        raw_body, status = exc.read(), exc.code
    return status, (json.loads(raw_body) if raw_body.startswith(b"{") else {})


def token_for(drive: FakeDrive, email: str) -> str:
    token = f"ya29.test-{email}"
    drive.tokens[token] = Token(email, frozenset({DRIVE_SCOPE}))
    return token


def test_the_fake_answers_file_not_found_to_a_token_without_access(d: Deployment) -> None:
    d.hospital_2.put(UPDATE_2, b"update from 2")
    blob = d.drive.path_of(d.root, UPDATE_2)
    assert blob is not None
    token = token_for(d.drive, SITES["hospital-1"])
    for method, path in (
        ("GET", f"drive/v3/files/{blob.id}"),
        ("GET", f"drive/v3/files/{blob.id}?alt=media"),
        ("PATCH", f"drive/v3/files/{blob.id}"),
        ("DELETE", f"drive/v3/files/{blob.id}"),
    ):
        status, body = raw(d.drive, method, path, token, {} if method == "PATCH" else None)
        assert status == 404, (method, path)
        assert body["error"]["message"] == f"File not found: {blob.id}."
        assert body["error"]["errors"][0]["reason"] == "notFound"
        assert body["error"]["errors"][0]["location"] == "fileId"
    folder = d.folders.updates["hospital-2"]
    status, body = raw(d.drive, "GET", f"drive/v3/files?q=%27{folder}%27+in+parents", token)
    assert status == 200 and body["files"] == []


def test_the_fake_answers_insufficient_permissions_to_a_reader_that_writes(
    d: Deployment,
) -> None:
    d.coordinator.put(AGGREGATE, b"the sum")
    blob = d.drive.path_of(d.root, AGGREGATE)
    assert blob is not None
    token = token_for(d.drive, SITES["hospital-1"])
    status, _ = raw(d.drive, "GET", f"drive/v3/files/{blob.id}?alt=media", token)
    assert status == 200
    for method, body in (("PATCH", {"name": "renamed"}), ("DELETE", None)):
        status, answer = raw(d.drive, method, f"drive/v3/files/{blob.id}", token, body)
        assert status == 403, method
        assert answer["error"]["errors"][0]["reason"] == "insufficientFilePermissions"
        assert answer["error"]["message"] == (
            f"The user does not have sufficient permissions for file {blob.id}."
        )


def test_the_fake_shares_through_permissions_create_and_checks_the_caller(
    d: Deployment,
) -> None:
    folder = d.folders.updates["hospital-1"]
    path = f"drive/v3/files/{folder}/permissions?supportsAllDrives=true"
    grant = {"type": "user", "role": "reader", "emailAddress": "auditor@example.org"}
    # A site may not share its own folder onwards (writer, not Content manager), nor another's.
    status, body = raw(d.drive, "POST", path, token_for(d.drive, SITES["hospital-1"]), grant)
    assert status == 403
    assert body["error"]["errors"][0]["reason"] == "insufficientFilePermissions"
    status, body = raw(d.drive, "POST", path, token_for(d.drive, SITES["hospital-2"]), grant)
    assert status == 404 and body["error"]["message"] == f"File not found: {folder}."
    # The coordinator may; the answer is a permission resource.
    status, body = raw(d.drive, "POST", path, token_for(d.drive, COORDINATOR), grant)
    assert status == 200
    assert body["kind"] == "drive#permission" and body["role"] == "reader"
    assert body["type"] == "user" and body["id"]
    assert d.drive.files.items[folder].shares["auditor@example.org"] == "reader"
    status, body = raw(
        d.drive, "POST", path, token_for(d.drive, COORDINATOR), {**grant, "type": "anyone"}
    )
    assert status == 400


# -- the command an operator runs ------------------------------------------------------------------


def test_drive_share_prints_each_sites_store_url_and_the_url_confines_the_site(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hefl.cli import main

    drive = shared_fake()
    root = drive.create_folder("hefl-store", shared_drive=True)
    drive.share(root, COORDINATOR, "organizer")
    operator = service_account_file(drive, tmp_path, COORDINATOR, name="coordinator.json")
    accounts = ",".join(f"{site}={email}" for site, email in SITES.items())
    url = f"gdrive://{root}?credentials={operator}&endpoint={drive.url}"
    assert main(["drive-share", "--store", url, "--run", RUN, "--accounts", accounts]) == 0
    printed = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert set(printed) == set(SITES)
    site_1 = service_account_file(drive, tmp_path, SITES["hospital-1"], name="site-1.json")
    hospital_1 = open_store(f"{printed['hospital-1']}&credentials={site_1}&endpoint={drive.url}")
    hospital_1.put(UPDATE_1, b"update from 1")
    open_store(url).put(UPDATE_2, b"update from 2")  # the coordinator's account may write it
    assert hospital_1.get(UPDATE_1) == b"update from 1"
    with pytest.raises((BlobNotFoundError, StoreError)):
        hospital_1.get(UPDATE_2)
    with pytest.raises(StoreError):
        hospital_1.put(UPDATE_2, b"overwritten by 1")
    assert open_store(url).get(UPDATE_2) == b"update from 2"


@pytest.mark.parametrize(
    ("folders", "fragment"),
    [("runs/r:", "PREFIX:FOLDER_ID"), ("../x:abc", "invalid store key"), ("a:b,a:c", "once")],
)
def test_a_malformed_folders_option_is_refused(folders: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_store_url(f"gdrive://root?folders={folders}", credentials="/dev/null")
