"""One setting picks the store: URL parsing, credentials lookup, and opening each kind."""

from __future__ import annotations

from pathlib import Path

import pytest

import common.store
from common.errors import ConfigError
from common.store import STORE_ENV, LocalStore, open_store, parse_store_url
from common.store.gdrive import DriveStore
from testkit.drive.helpers import new_root, service_account_file, shared_fake

CREDS = {"HEFL_GDRIVE_CREDENTIALS": "/secrets/drive.json"}


def test_the_store_package_exports_its_public_names() -> None:
    assert STORE_ENV == "HEFL_STORE"
    for name in common.store.__all__:
        assert hasattr(common.store, name)
    assert {"open_store", "parse_store_url", "StoreSpec", "STORE_ENV"} <= set(common.store.__all__)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("out/store", Path("out/store")),
        ("/srv/hefl/store", Path("/srv/hefl/store")),
        ("file:///srv/hefl/store", Path("/srv/hefl/store")),
        ("file://localhost/srv/my%20store", Path("/srv/my store")),
    ],
)
def test_paths_and_file_urls_are_local_folders(url: str, path: Path) -> None:
    spec = parse_store_url(url, environ={})
    assert spec.kind == "local" and spec.path == path


def test_a_local_url_opens_a_local_store(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/s", environ={})
    assert isinstance(store, LocalStore) and store.root == tmp_path / "s"
    assert (tmp_path / "s").is_dir()


def test_a_drive_url_takes_its_folder_and_finds_credentials() -> None:
    spec = parse_store_url("gdrive://1AbC-d_9", environ=CREDS)
    assert (spec.kind, spec.folder_id, spec.credentials, spec.endpoint) == (
        "gdrive",
        "1AbC-d_9",
        "/secrets/drive.json",
        None,
    )
    assert parse_store_url("gdrive://F/", environ=CREDS).folder_id == "F"


def test_drive_credentials_precedence_argument_url_then_environment() -> None:
    env = {**CREDS, "GOOGLE_APPLICATION_CREDENTIALS": "/adc.json"}
    url = "gdrive://F?credentials=/from/url.json"
    assert parse_store_url(url, credentials="/arg.json", environ=env).credentials == "/arg.json"
    assert parse_store_url(url, environ=env).credentials == "/from/url.json"
    assert parse_store_url("gdrive://F", environ=env).credentials == "/secrets/drive.json"
    adc = {"GOOGLE_APPLICATION_CREDENTIALS": "/adc.json"}
    assert parse_store_url("gdrive://F", environ=adc).credentials == "/adc.json"


def test_a_drive_url_without_credentials_says_how_to_give_them() -> None:
    with pytest.raises(ConfigError, match="HEFL_GDRIVE_CREDENTIALS"):
        parse_store_url("gdrive://F", environ={})


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("s3://bucket/x", "unsupported scheme 's3'"),
        ("file://host/x", "no host"),
        ("file:///x?y=1", "no query"),
        ("gdrive://", "expected gdrive://FOLDER_ID"),
        ("gdrive://bad$id", "expected gdrive://FOLDER_ID"),
        ("gdrive://F/sub/folder", "expected gdrive://FOLDER_ID"),
        ("gdrive://F?colour=red", "unknown: colour"),
        ("gdrive://F?endpoint=", "each once"),
        ("gdrive://F?endpoint=a&endpoint=b", "each once"),
        ("gdrive://F?endpoint=ftp://x", "http"),
    ],
)
def test_bad_store_urls_are_config_errors(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_store_url(url, environ=CREDS)


def test_a_drive_url_with_a_missing_credentials_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        open_store("gdrive://F", credentials=str(tmp_path / "none.json"), environ={})


def test_a_drive_url_opens_a_working_drive_store(tmp_path: Path) -> None:
    drive = shared_fake()
    root = new_root(drive)
    credentials = service_account_file(drive, tmp_path)
    store = open_store(f"gdrive://{root}?endpoint={drive.url}&credentials={credentials}")
    assert isinstance(store, DriveStore)
    store.put("runs/r1/a", b"through the URL")
    assert (
        open_store(f"gdrive://{root}?endpoint={drive.url}", credentials=str(credentials)).get(
            "runs/r1/a"
        )
        == b"through the URL"
    )


def test_googleapiclient_is_imported_by_exactly_one_module() -> None:
    root = Path(__file__).resolve().parents[2]
    importers = sorted(
        str(path.relative_to(root))
        for folder in ("common", "coordinator", "hospital_node", "hefl")
        for path in (root / folder).rglob("*.py")
        if any(
            line.lstrip().startswith(("import googleapiclient", "from googleapiclient"))
            for line in path.read_text().splitlines()
        )
    )
    assert importers == ["common/store/gdrive_api.py"]
