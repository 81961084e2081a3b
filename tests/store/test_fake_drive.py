"""The fake Drive refuses what Drive refuses, so tests that pass against it mean something.

Raw HTTP (urllib) checks the server's answers; the parsers are also checked directly.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from common.errors import StoreError
from testkit.drive.helpers import (
    SERVICE_ACCOUNT,
    drive_store,
    new_root,
    service_account_file,
    shared_fake,
)
from testkit.drive.query import FieldsError, QueryError, parse_fields, parse_query
from testkit.drive.server import DRIVE_SCOPE, GRANULE, FakeDrive, Token

TOKEN = "ya29.test-token"


@pytest.fixture
def drive() -> FakeDrive:
    fake = shared_fake()
    fake.tokens[TOKEN] = Token(SERVICE_ACCOUNT, frozenset({DRIVE_SCOPE}))
    return fake


def call(
    drive: FakeDrive,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    token: str | None = TOKEN,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    request = urllib.request.Request(drive.url + path.lstrip("/"), data=body, method=method)
    for name, value in {**(headers or {})}.items():
        request.add_header(name, value)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw, status, got = response.read(), response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        raw, status, got = exc.read(), exc.code, dict(exc.headers)
    return status, (json.loads(raw) if raw.startswith(b"{") else {}), got


def reason(payload: dict[str, Any]) -> str:
    return str(payload["error"]["errors"][0]["reason"])


def listing(drive: FakeDrive, **params: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    return call(drive, "GET", "drive/v3/files?" + urllib.parse.urlencode(params))


@pytest.mark.parametrize(
    "query",
    [
        "name = 'it's'",  # unescaped quote
        "name = 'a\\n'",  # only \' and \\ are escapes
        "name = 'a' and",  # dangling and
        "color = 'red'",  # unknown field
        "name > 'a'",  # operator not valid for name
        "name = a",  # unquoted value
        "'x' in owners",  # not implemented by the fake: refused, never guessed
        "trashed = maybe",
        "(name = 'a'",
        "",
    ],
)
def test_bad_queries_are_refused(query: str) -> None:
    with pytest.raises(QueryError):
        parse_query(query)


def test_a_query_matches_like_drive() -> None:
    match = parse_query("name = 'it\\'s \\\\ x' and 'P' in parents and trashed = false")
    assert match({"name": "it's \\ x", "parents": ["P"], "trashed": False})
    assert not match({"name": "it's \\ x", "parents": ["P"], "trashed": True})
    assert not match({"name": "its", "parents": ["P"], "trashed": False})
    assert parse_query("not (name = 'a' or name = 'b')")({"name": "c"})


@pytest.mark.parametrize("fields", ["files(id,nmae)", "nextPageToken,files(id", "files()", "a,,b"])
def test_bad_field_selections_are_refused_by_the_server(drive: FakeDrive, fields: str) -> None:
    with contextlib.suppress(FieldsError):  # a syntax error, or else an unknown name:
        parse_fields(fields)  # either way the server must refuse it
    status, payload, _ = listing(drive, fields=fields)
    assert status == 400 and reason(payload) == "invalid"
    assert "Invalid field selection" in payload["error"]["message"]


def test_a_bad_q_is_a_400_on_the_wire(drive: FakeDrive) -> None:
    status, payload, _ = listing(drive, q="name = 'it's'")
    assert status == 400
    assert payload["error"]["errors"][0]["location"] == "q"


def test_partial_responses_hold_only_the_selected_fields(drive: FakeDrive) -> None:
    root = new_root(drive)
    drive.add_file(root, "a", b"1")
    status, payload, _ = listing(drive, q=f"'{root}' in parents", fields="files(name)")
    assert status == 200 and payload == {"files": [{"name": "a"}]}


def test_paging_sizes_and_tokens_are_checked(drive: FakeDrive) -> None:
    root = new_root(drive)
    for name in "abcde":
        drive.add_file(root, name, b"")
    q = f"'{root}' in parents"
    for size in ("0", "1001", "x"):
        assert listing(drive, q=q, pageSize=size)[0] == 400
    status, first, _ = listing(drive, q=q, pageSize="2", fields="nextPageToken,files(name)")
    assert status == 200 and len(first["files"]) == 2
    token = first["nextPageToken"]
    assert listing(drive, q=q, pageSize="2", pageToken="forged")[0] == 400
    assert listing(drive, q="trashed = false", pageToken=token)[0] == 400  # another query
    names = [f["name"] for f in first["files"]]
    while token:
        _, page, _ = listing(
            drive, q=q, pageSize="2", pageToken=token, fields="nextPageToken,files(name)"
        )
        names += [f["name"] for f in page["files"]]
        token = page.get("nextPageToken")
    assert sorted(names) == list("abcde")


def test_requests_without_a_valid_token_are_401(drive: FakeDrive) -> None:
    status, payload, _ = call(drive, "GET", "drive/v3/files", token=None)
    assert status == 401 and reason(payload) == "authError"
    assert call(drive, "GET", "drive/v3/files", token="ya29.unknown")[0] == 401


def test_parameters_the_fake_does_not_implement_are_refused(drive: FakeDrive) -> None:
    status, payload, _ = listing(drive, orderBy="name")
    assert status == 400 and "orderBy" in payload["error"]["message"]
    assert call(drive, "GET", "drive/v2/files")[0] == 404


def test_unknown_and_read_only_body_fields_are_refused(drive: FakeDrive) -> None:
    root = new_root(drive)
    json_header = {"Content-Type": "application/json"}

    def create(metadata: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        body = json.dumps({"name": "x", "parents": [root], **metadata}).encode()
        return call(drive, "POST", "drive/v3/files", body=body, headers=json_header)

    status, payload, _ = create({"colour": "red"})
    assert status == 400 and "Unknown name" in payload["error"]["message"]
    status, payload, _ = create({"size": "3"})
    assert status == 403 and reason(payload) == "fieldNotWritable"
    status, payload, _ = create({"appProperties": {"k": "v" * 200}})
    assert status == 400
    file_id = drive.add_file(root, "f", b"")
    patch = json.dumps({"parents": [root]}).encode()
    status, payload, _ = call(
        drive, "PATCH", f"drive/v3/files/{file_id}", body=patch, headers=json_header
    )
    assert status == 403 and "addParents" in payload["error"]["message"]


def test_resumable_chunks_must_be_whole_granules_and_contiguous(drive: FakeDrive) -> None:
    root = new_root(drive)
    start = json.dumps({"name": "big", "parents": [root]}).encode()
    status, _, headers = call(
        drive,
        "POST",
        "upload/drive/v3/files?uploadType=resumable",
        body=start,
        headers={"Content-Type": "application/json", "X-Upload-Content-Length": "600000"},
    )
    assert status == 200
    session = headers["Location"].removeprefix(drive.url)

    def put(first: int, data: bytes) -> int:
        end = first + len(data) - 1
        content_range = f"bytes {first}-{end}/600000"
        return call(drive, "PUT", session, body=data, headers={"Content-Range": content_range})[0]

    assert put(0, b"x" * 1000) == 400  # not a multiple of 256 KiB and not the last chunk
    assert put(GRANULE, b"x" * GRANULE) == 400  # a gap: nothing received yet
    assert put(0, b"x" * GRANULE) == 308
    status, _, headers = call(
        drive, "PUT", session, body=b"", headers={"Content-Range": "bytes */600000"}
    )
    assert status == 308 and headers["Range"] == f"bytes=0-{GRANULE - 1}"
    assert drive.path_of(root, "big") is None  # nothing visible before the last byte
    assert put(GRANULE, b"y" * (600000 - GRANULE)) == 200
    item = drive.path_of(root, "big")
    assert item is not None and item.content is not None and len(item.content) == 600000


def test_a_jwt_signed_with_another_key_gets_no_token(drive: FakeDrive, tmp_path: Path) -> None:
    email = "forger@hefl-test.iam.gserviceaccount.com"
    root = new_root(drive, {email: "organizer"})
    credentials = service_account_file(drive, tmp_path, email)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    drive.public_keys[email] = other.public_key()
    store = drive_store(tmp_path, drive, root=root, credentials=credentials)
    with pytest.raises(StoreError, match="rejected the credentials"):
        store.list()
