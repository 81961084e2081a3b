"""The Google Drive store through the real googleapiclient against the local fake Drive.

The contract suite in test_store.py covers what every store promises; this file covers what only
the Drive store has to get right: the key-to-folder mapping, Drive's duplicate names, resumable
uploads and ranged downloads, retries on 429/5xx/dropped connections, and error messages that
say which folder and which permission is missing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from common.errors import BlobNotFoundError, BlobTooLargeError, ConfigError, StoreError
from common.store import sha256_hex
from common.store.gdrive import SHA256_PROPERTY, SIZE_PROPERTY, DriveStore
from common.store.gdrive_api import DriveApi
from common.store.gdrive_auth import load_credentials
from common.store.gdrive_types import children_query, quote
from testkit.drive.helpers import (
    OAUTH_USER,
    SERVICE_ACCOUNT,
    drive_store,
    new_root,
    options,
    service_account_file,
    shared_fake,
    user_credentials,
    user_token_file,
)
from testkit.drive.server import GRANULE, READONLY_SCOPE, FakeDrive

KEY = "runs/r1/round-0001/update-hospital-1.blob"


@pytest.fixture
def drive() -> FakeDrive:
    return shared_fake()


class Sleeps:
    """A recording ``sleep``: the suite never waits, and the backoff schedule is visible."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def recorded_since(drive: FakeDrive, mark: int, call: str) -> list:
    return [r for r in drive.requests[mark:] if r.call == call]


# -- mapping and the duplicate-name rule ---------------------------------------------------------


def test_keys_map_to_nested_folders_with_one_subfolder_per_run(
    drive: FakeDrive, tmp_path: Path
) -> None:
    store = drive_store(tmp_path, drive)
    store.put(KEY, b"update")
    store.put("runs/r2/coordinator-state.json", b"{}")
    store.put("top-level", b"t")
    assert [f.name for f in drive.children(store.root_id)] == ["runs", "top-level"]
    runs = drive.path_of(store.root_id, "runs")
    assert runs is not None and runs.is_folder
    assert sorted(f.name for f in drive.children(runs.id)) == ["r1", "r2"]
    blob = drive.path_of(store.root_id, KEY)
    assert blob is not None and blob.content == b"update"
    assert blob.app_properties == {SHA256_PROPERTY: sha256_hex(b"update"), SIZE_PROPERTY: "6"}


def test_folder_ids_are_cached_after_the_first_lookup(drive: FakeDrive, tmp_path: Path) -> None:
    store = drive_store(tmp_path, drive)
    store.put(KEY, b"1")
    mark = len(drive.requests)
    store.put("runs/r1/round-0001/update-hospital-2.blob", b"2")
    lists = recorded_since(drive, mark, "files.list")
    # one look for the name before the upload, one after it for duplicates; no folder walks
    assert [r.query["q"].split(" and ")[0] for r in lists] == [
        "name = 'update-hospital-2.blob'"
    ] * 2


def test_putting_identical_bytes_again_uploads_nothing(drive: FakeDrive, tmp_path: Path) -> None:
    store = drive_store(tmp_path, drive)
    store.put(KEY, b"same bytes")
    mark = len(drive.requests)
    store.put(KEY, b"same bytes")
    assert recorded_since(drive, mark, "files.create") == []
    assert store.get(KEY) == b"same bytes"


def test_get_picks_the_newest_of_files_sharing_a_name(drive: FakeDrive, tmp_path: Path) -> None:
    store = drive_store(tmp_path, drive)
    store.put(KEY, b"from the store")
    folder = drive.path_of(store.root_id, "runs/r1/round-0001")
    assert folder is not None
    drive.add_file(folder.id, "update-hospital-1.blob", b"newer, from another client")
    assert store.get(KEY) == b"newer, from another client"
    assert store.list() == [KEY]


def test_get_never_picks_an_incomplete_file(drive: FakeDrive, tmp_path: Path) -> None:
    store = drive_store(tmp_path, drive)
    store.put(KEY, b"complete")
    folder = drive.path_of(store.root_id, "runs/r1/round-0001")
    assert folder is not None
    # newer, but holding fewer bytes than its writer recorded: not a complete blob
    drive.add_file(
        folder.id,
        "update-hospital-1.blob",
        b"trunc",
        app_properties={SIZE_PROPERTY: "100", SHA256_PROPERTY: "0" * 64},
    )
    assert store.get(KEY) == b"complete"


def test_get_refuses_bytes_that_differ_from_the_recorded_digest(
    drive: FakeDrive, tmp_path: Path
) -> None:
    store = drive_store(tmp_path, drive)
    drive.add_file(
        store.root_id, "blob", b"tampered", app_properties={SHA256_PROPERTY: sha256_hex(b"orig")}
    )
    with pytest.raises(StoreError, match="does not match the SHA-256 recorded") as info:
        store.get("blob")
    assert not isinstance(info.value, BlobNotFoundError)


def test_put_deletes_older_files_of_the_same_name(drive: FakeDrive, tmp_path: Path) -> None:
    store = drive_store(tmp_path, drive)
    store.put("runs/r1/state.json", b"v1")
    folder = drive.path_of(store.root_id, "runs/r1")
    assert folder is not None
    drive.add_file(folder.id, "state.json", b"a twin left by a crashed writer")
    store.put("runs/r1/state.json", b"v2")
    assert [f.content for f in drive.children(folder.id)] == [b"v2"]


def test_a_duplicate_the_account_may_not_delete_stays_and_loses(
    drive: FakeDrive, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = new_root(drive, {SERVICE_ACCOUNT: "writer"})  # Contributor: may add, not remove
    store = drive_store(tmp_path, drive, root=root)
    drive.add_file(root, "state.json", b"old, owned by the shared drive")
    with caplog.at_level(logging.WARNING, logger="hefl.store.gdrive"):
        store.put("state.json", b"new")
    assert len(drive.children(root)) == 2
    assert store.get("state.json") == b"new"
    assert "drive_stale_file_kept" in caplog.text


def test_delete_moves_to_trash_when_the_account_may_trash_but_not_delete(
    drive: FakeDrive, tmp_path: Path
) -> None:
    root = new_root(drive, {SERVICE_ACCOUNT: "fileOrganizer"})  # Content manager
    store = drive_store(tmp_path, drive, root=root)
    store.put("a", b"1")
    mark = len(drive.requests)
    store.delete("a")
    assert [r.call for r in drive.requests[mark:]][-2:] == ["files.delete", "files.update"]
    assert not store.exists("a")
    assert [f.trashed for f in drive.files.items.values() if f.parents == [root]] == [True]


def test_concurrent_folder_creation_converges_on_the_oldest_folder(
    drive: FakeDrive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = drive_store(tmp_path, drive)
    api: DriveApi = store._api
    real_create = api.create_folder
    theirs: list[str] = []

    def another_site_was_first(parent: str, name: str):  # type: ignore[no-untyped-def]
        theirs.append(drive.create_folder(name, parent=parent))
        return real_create(parent, name)

    monkeypatch.setattr(api, "create_folder", another_site_was_first)
    store.put("runs/r1/a", b"x")
    runs = [f for f in drive.children(store.root_id) if f.name == "runs"]
    assert [f.id for f in runs] == [theirs[0]]  # our younger twin was removed
    assert drive.path_of(store.root_id, "runs/r1/a") is not None


def test_a_cached_folder_deleted_by_someone_else_is_looked_up_again(
    drive: FakeDrive, tmp_path: Path
) -> None:
    store = drive_store(tmp_path, drive)
    store.put("runs/r1/a", b"1")
    gone = drive.path_of(store.root_id, "runs/r1")
    assert gone is not None
    with drive.lock:
        drive.files.delete(gone)
    store.put("runs/r1/b", b"2")
    assert store.list() == ["runs/r1/b"]


def test_blobs_and_folders_never_share_a_path(drive: FakeDrive, tmp_path: Path) -> None:
    store = drive_store(tmp_path, drive)
    store.put("runs/r1", b"a blob")
    with pytest.raises(StoreError, match="a blob of that name is in the way"):
        store.put("runs/r1/a", b"x")
    store.put("runs/r2/a", b"x")
    with pytest.raises(StoreError, match="a folder of that name holds other keys"):
        store.put("runs/r2", b"y")
    assert store.list() == ["runs/r1", "runs/r2/a"]


def test_list_pages_through_results_and_skips_what_is_not_a_blob(
    drive: FakeDrive, tmp_path: Path
) -> None:
    store = drive_store(tmp_path, drive, page_size=2)
    keys = [f"runs/r1/k{i}" for i in range(7)]
    for key in keys:
        store.put(key, b".")
    drive.add_file(store.root_id, "notes", b"", mime_type="application/vnd.google-apps.document")
    drive.add_file(store.root_id, "my notes.txt", b"a person's file")
    mark = len(drive.requests)
    assert store.list() == sorted(keys)
    assert any("pageToken" in r.query for r in recorded_since(drive, mark, "files.list"))


def test_query_strings_are_escaped_for_drives_parser(drive: FakeDrive, tmp_path: Path) -> None:
    assert quote("it's a \\ test") == "'it\\'s a \\\\ test'"
    assert children_query("F1", "x'y") == "name = 'x\\'y' and 'F1' in parents and trashed = false"
    store = drive_store(tmp_path, drive)
    odd = "it's a \\ 'quoted' name"
    drive.add_file(store.root_id, odd, b"?")
    found = store._api.children(store.root_id, name=odd)
    assert [f.name for f in found] == [odd]


# -- transfers -----------------------------------------------------------------------------------


def test_small_blobs_go_multipart_and_large_ones_resumable_in_256k_chunks(
    drive: FakeDrive, tmp_path: Path
) -> None:
    store = drive_store(tmp_path, drive, multipart_limit=1024)
    mark = len(drive.requests)
    store.put("small", b"s" * 1024)
    big = os.urandom(4 * GRANULE + 5)
    store.put("big", big)
    creates = recorded_since(drive, mark, "files.create")
    assert [r.query["uploadType"] for r in creates] == ["multipart", "resumable"]
    assert creates[1].headers["x-upload-content-length"] == str(len(big))
    ranges = [r.headers["content-range"] for r in recorded_since(drive, mark, "upload.chunk")]
    assert ranges == [
        f"bytes {i * GRANULE}-{min((i + 1) * GRANULE, len(big)) - 1}/{len(big)}" for i in range(5)
    ]
    assert store.get("big") == big


def test_downloads_stream_in_ranges(drive: FakeDrive, tmp_path: Path) -> None:
    store = drive_store(tmp_path, drive, download_chunk=100_000)
    data = os.urandom(250_000)
    store.put("blob", data)
    mark = len(drive.requests)
    assert store.get("blob") == data
    ranges = [r.headers["range"] for r in recorded_since(drive, mark, "files.get_media")]
    assert ranges == ["bytes=0-99999", "bytes=100000-199999", "bytes=200000-299999"]


# -- size before content -------------------------------------------------------------------------


def test_a_file_whose_size_exceeds_max_bytes_is_refused_without_a_media_download(
    drive: FakeDrive, tmp_path: Path
) -> None:
    store = drive_store(tmp_path, drive)
    store.put(KEY, b"x" * 5000)
    mark = len(drive.requests)
    with pytest.raises(BlobTooLargeError) as info:
        store.get(KEY, max_bytes=4999)
    assert KEY in str(info.value) and "5000 bytes" in str(info.value)
    assert "4999 bytes" in str(info.value)
    assert recorded_since(drive, mark, "files.get_media") == []
    assert not any(r.query.get("alt") == "media" for r in drive.requests[mark:])
    assert store.get(KEY, max_bytes=5000) == b"x" * 5000


def test_a_planted_file_without_a_size_record_is_refused_by_its_drive_size(
    drive: FakeDrive, tmp_path: Path
) -> None:
    """Another client's file carries no hefl_size: Drive's own size field still counts."""
    store = drive_store(tmp_path, drive)
    drive.add_file(store.root_id, "planted.blob", b"z" * 100_000)
    mark = len(drive.requests)
    with pytest.raises(BlobTooLargeError, match="100000 bytes"):
        store.get("planted.blob", max_bytes=1000)
    assert recorded_since(drive, mark, "files.get_media") == []


def test_a_recorded_size_over_max_bytes_is_refused_too(drive: FakeDrive, tmp_path: Path) -> None:
    store = drive_store(tmp_path, drive)
    drive.add_file(store.root_id, "lies.blob", b"abc", app_properties={SIZE_PROPERTY: "3"})
    with pytest.raises(BlobTooLargeError):
        store.get("lies.blob", max_bytes=2)
    assert store.get("lies.blob", max_bytes=3) == b"abc"


def test_a_google_doc_at_a_key_is_never_downloaded(drive: FakeDrive, tmp_path: Path) -> None:
    store = drive_store(tmp_path, drive)
    drive.add_file(store.root_id, "doc", b"", mime_type="application/vnd.google-apps.document")
    mark = len(drive.requests)
    with pytest.raises(BlobNotFoundError):
        store.get("doc", max_bytes=10)
    assert recorded_since(drive, mark, "files.get_media") == []


def test_the_download_itself_stops_past_max_bytes(drive: FakeDrive, tmp_path: Path) -> None:
    """A file larger than its metadata said is cut off as soon as the bytes pass the limit."""
    root = new_root(drive)
    file_id = drive.add_file(root, "blob", os.urandom(250_000))
    api = DriveApi(
        load_credentials(service_account_file(drive, tmp_path)).credentials,
        options=options(drive, download_chunk=100_000),
    )
    mark = len(drive.requests)
    with pytest.raises(BlobTooLargeError, match=f"Drive file {file_id} sent more than"):
        api.download(file_id, max_bytes=150_000)
    assert len(recorded_since(drive, mark, "files.get_media")) == 2  # not the third range
    assert len(api.download(file_id, max_bytes=250_000)) == 250_000


# -- injected faults -----------------------------------------------------------------------------


def test_429_and_500_are_retried_with_exponential_backoff_and_jitter(
    drive: FakeDrive, tmp_path: Path
) -> None:
    sleeps = Sleeps()
    store = drive_store(tmp_path, drive, sleep=sleeps)
    store.put("warm-up", b"")  # the root check and token fetch are done
    drive.fail_next(2, status=429, call="files.create")
    drive.fail_next(1, status=500, call="files.create")
    store.put(KEY, b"data")
    drive.fail_next(1, status=503, call="files.get_media")
    drive.fail_next(1, status=403, call="files.list")  # Drive's userRateLimitExceeded
    assert store.get(KEY) == b"data"
    # base 0.5 s doubling; rand() = 0.5 puts each delay at 3/4 of its step
    assert sleeps.delays == [0.375, 0.75, 1.5, 0.375, 0.375]
    assert len([f for f in drive.children(store.root_id)]) == 2


def test_a_servers_retry_after_is_honoured(drive: FakeDrive, tmp_path: Path) -> None:
    sleeps = Sleeps()
    store = drive_store(tmp_path, drive, sleep=sleeps)
    drive.fail_next(1, status=429, retry_after=5, call="files.get")
    assert store.list() == []
    assert sleeps.delays == [5.0]


def test_retries_are_bounded_and_then_name_the_operation_and_key(
    drive: FakeDrive, tmp_path: Path
) -> None:
    sleeps = Sleeps()
    store = drive_store(tmp_path, drive, sleep=sleeps)
    store.put("warm-up", b"")
    drive.fail_next(5, status=503, call="files.create")
    with pytest.raises(StoreError) as info:
        store.put(KEY, b"data")
    message = str(info.value)
    assert f"put {KEY}" in message and "after 5 attempts" in message and "HTTP 503" in message
    assert len(sleeps.delays) == 4
    assert sleeps.delays == sorted(sleeps.delays)


def test_a_connection_dropped_mid_chunk_resumes_where_the_server_stopped(
    drive: FakeDrive, tmp_path: Path
) -> None:
    sleeps = Sleeps()
    store = drive_store(tmp_path, drive, sleep=sleeps, chunk_size=2 * GRANULE)
    store.put("warm-up", b"")
    data = os.urandom(3 * GRANULE + 1000)
    drive.drop_next_chunk(after_bytes=GRANULE + 5000, count=2)  # beats httplib2's own resend
    mark = len(drive.requests)
    store.put(KEY, data)
    chunks = recorded_since(drive, mark, "upload.chunk")
    ranges = [r.headers["content-range"] for r in chunks]
    assert ranges[0] == f"bytes 0-{2 * GRANULE - 1}/{len(data)}"
    assert f"bytes */{len(data)}" in ranges  # asked the server how far it got
    # the server kept one whole granule of the cut chunk; the client resumed right there
    assert ranges[-2:] == [
        f"bytes {GRANULE}-{3 * GRANULE - 1}/{len(data)}",
        f"bytes {3 * GRANULE}-{len(data) - 1}/{len(data)}",
    ]
    assert sleeps.delays  # backed off before resuming
    assert store.get(KEY) == data
    assert len(drive.children(drive.path_of(store.root_id, "runs/r1/round-0001").id)) == 1


def test_an_expired_upload_session_starts_over(drive: FakeDrive, tmp_path: Path) -> None:
    store = drive_store(tmp_path, drive)
    data = os.urandom(2 * GRANULE + 10)
    drive.fail_next(1, status=404, reason="notFound", call="upload.chunk", skip=1)
    mark = len(drive.requests)
    store.put("big", data)
    starts = [r for r in recorded_since(drive, mark, "files.create")]
    assert len(starts) == 2
    assert store.get("big") == data


def test_a_download_cut_off_midway_is_fetched_again(drive: FakeDrive, tmp_path: Path) -> None:
    sleeps = Sleeps()
    store = drive_store(tmp_path, drive, sleep=sleeps, download_chunk=100_000)
    data = os.urandom(150_000)
    store.put("blob", data)
    drive.drop_next_download(after_bytes=40_000)
    assert store.get("blob") == data
    assert len(sleeps.delays) == 1


# -- credentials and permissions -----------------------------------------------------------------


def test_an_expired_token_is_refreshed_through_the_token_endpoint(
    drive: FakeDrive, tmp_path: Path
) -> None:
    store = drive_store(tmp_path, drive)
    store.put("a", b"1")
    grants = len(drive.calls("token"))
    drive.expire_tokens()
    assert store.get("a") == b"1"
    assert len(drive.calls("token")) == grants + 1


def test_revoked_credentials_give_a_401_message_naming_account_and_folder(
    drive: FakeDrive, tmp_path: Path
) -> None:
    email = "revoked@hefl-test.iam.gserviceaccount.com"
    root = new_root(drive, {email: "organizer"})
    store = drive_store(
        tmp_path, drive, root=root, credentials=service_account_file(drive, tmp_path, email)
    )
    store.put("a", b"1")
    drive.refused.add(email)
    drive.expire_tokens()
    with pytest.raises(StoreError, match="rejected the credentials") as info:
        store.get("a")
    assert email in str(info.value) and root in str(info.value)


def test_a_disabled_account_gets_a_401_message_too(drive: FakeDrive, tmp_path: Path) -> None:
    email = "disabled@hefl-test.iam.gserviceaccount.com"
    root = new_root(drive, {email: "organizer"})
    store = drive_store(
        tmp_path, drive, root=root, credentials=service_account_file(drive, tmp_path, email)
    )
    drive.rejected.add(email)
    with pytest.raises(StoreError, match="rejected the credentials") as info:
        store.list()
    assert email in str(info.value) and root in str(info.value)


def test_a_folder_not_shared_with_the_account_is_a_404_naming_both(
    drive: FakeDrive, tmp_path: Path
) -> None:
    root = new_root(drive, {})
    store = drive_store(tmp_path, drive, root=root)
    with pytest.raises(StoreError) as info:
        store.put(KEY, b"x")
    message = str(info.value)
    assert f"root folder {root} was not found, or is not shared with" in message
    assert SERVICE_ACCOUNT in message and "Content manager" in message


def test_a_reader_may_read_but_a_write_says_which_permission_is_missing(
    drive: FakeDrive, tmp_path: Path
) -> None:
    root = new_root(drive, {SERVICE_ACCOUNT: "reader"})
    drive.add_file(root, "published", b"readable")
    store = drive_store(tmp_path, drive, root=root)
    assert store.get("published") == b"readable"
    with pytest.raises(StoreError) as info:
        store.put("runs/r1/a", b"x")
    message = str(info.value)
    assert f"lacks write permission on root folder {root}" in message
    assert f"share the root folder {root} with service account {SERVICE_ACCOUNT}" in message
    assert "Content manager" in message and "insufficientFilePermissions" not in message


def test_a_delete_the_role_does_not_allow_names_the_role_needed(
    drive: FakeDrive, tmp_path: Path
) -> None:
    root = new_root(drive, {SERVICE_ACCOUNT: "writer"})
    store = drive_store(tmp_path, drive, root=root)
    store.put("a", b"1")
    with pytest.raises(StoreError, match="lacks delete permission") as info:
        store.delete("a")
    assert "Content manager (fileOrganizer)" in str(info.value)
    assert store.get("a") == b"1"


def test_a_token_without_the_drive_scope_names_the_scope(drive: FakeDrive, tmp_path: Path) -> None:
    root = drive.create_folder("mine", owner=OAUTH_USER, shared_drive=False)
    token = user_credentials(drive, scopes={READONLY_SCOPE})
    store = drive_store(tmp_path, drive, root=root, credentials=token)
    assert store.list() == []
    with pytest.raises(StoreError) as info:
        store.put("a", b"x")
    message = str(info.value)
    assert "without the OAuth scope https://www.googleapis.com/auth/drive " in message
    assert root in message and "OAuth user token" in message


def test_an_oauth_user_token_works_in_the_users_my_drive_folder(
    drive: FakeDrive, tmp_path: Path
) -> None:
    root = drive.create_folder("mine", owner=OAUTH_USER, shared_drive=False)
    store = drive_store(tmp_path, drive, root=root, credentials=user_credentials(drive))
    store.put(KEY, b"x")
    assert store.get(KEY) == b"x"
    store.delete(KEY)
    assert store.list() == []


def test_a_service_account_in_a_my_drive_folder_is_told_to_use_a_shared_drive(
    drive: FakeDrive, tmp_path: Path
) -> None:
    root = new_root(drive, {SERVICE_ACCOUNT: "writer"}, shared_drive=False)
    store = drive_store(tmp_path, drive, root=root)
    with pytest.raises(StoreError, match="Service accounts cannot own files in a My Drive"):
        store.put("a", b"x")


def test_a_root_id_that_names_a_file_is_refused(drive: FakeDrive, tmp_path: Path) -> None:
    root = new_root(drive)
    file_id = drive.add_file(root, "a-file", b"")
    drive.share(file_id, SERVICE_ACCOUNT, "reader")
    store = drive_store(tmp_path, drive, root=file_id)
    with pytest.raises(StoreError, match="not a folder"):
        store.list()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "does not exist"),
        ("{not json", "cannot read"),
        ('["a list"]', "expected a JSON object"),
        ('{"type": "external_account"}', "type 'external_account' is not supported"),
        ('{"type": "service_account", "client_email": "x@y"}', "is incomplete"),
        ('{"type": "authorized_user", "client_id": "c"}', "is incomplete"),
    ],
)
def test_bad_credentials_files_are_config_errors_naming_the_file(
    tmp_path: Path, content: str | None, match: str
) -> None:
    path = tmp_path / "creds.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=match) as info:
        load_credentials(path)
    assert str(path) in str(info.value)


def test_an_authorized_user_file_loads_as_an_oauth_user_token(
    drive: FakeDrive, tmp_path: Path
) -> None:
    loaded = load_credentials(user_token_file(drive, tmp_path))
    assert loaded.account == "OAuth user token (client fake-client.apps.googleusercontent.com)"
    assert "https://www.googleapis.com/auth/drive" in (loaded.credentials.scopes or [])


def test_the_store_repr_names_root_and_account(drive: FakeDrive, tmp_path: Path) -> None:
    store = drive_store(tmp_path, drive)
    assert isinstance(store, DriveStore)
    assert store.root_id in repr(store) and SERVICE_ACCOUNT in repr(store)
