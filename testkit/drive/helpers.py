"""Test set-up for the Drive store: a fake Drive, throwaway credentials, stores pointed at it.

Keys are generated at test time (nothing secret is committed); the credential files carry the
fake's token URI, so google-auth runs its real flow (signed JWT grant, refresh-token grant).
"""

from __future__ import annotations

import atexit
import json
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.oauth2 import credentials as user_credentials_module

from common.store.gdrive import DriveStore, open_drive_store
from common.store.gdrive_auth import DriveCredentials
from common.store.gdrive_errors import DRIVE_SCOPE
from common.store.gdrive_types import DriveOptions
from common.store.retry import RetryPolicy
from testkit.drive.server import GRANULE, FakeDrive

SERVICE_ACCOUNT = "hospital-1@hefl-test.iam.gserviceaccount.com"
OAUTH_USER = "alice@example.org"


@lru_cache(maxsize=1)
def _private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@lru_cache(maxsize=1)
def shared_fake() -> FakeDrive:
    """One fake for the session (each test makes its own root folder in it)."""
    drive = FakeDrive().start()
    atexit.register(drive.stop)
    return drive


def service_account_file(
    drive: FakeDrive, directory: Path, email: str = SERVICE_ACCOUNT, *, name: str = "sa.json"
) -> Path:
    key = _private_key()
    drive.add_service_account(email, key.public_key())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "hefl-test",
        "private_key_id": "test-key",
        "private_key": pem,
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": drive.token_uri,
    }
    path = directory / name
    path.write_text(json.dumps(info))
    return path


def user_token_file(drive: FakeDrive, directory: Path, email: str = OAUTH_USER) -> Path:
    """An ``authorized_user`` file as gcloud writes it (google-auth sends its refresh token to
    Google's token endpoint whatever the file says, so tests use :func:`user_credentials`)."""
    refresh = f"refresh-{email}-{len(drive.refresh_tokens)}"
    drive.add_refresh_token(refresh, email)
    info = {
        "type": "authorized_user",
        "client_id": "fake-client.apps.googleusercontent.com",
        "client_secret": "fake-secret",
        "refresh_token": refresh,
    }
    path = directory / f"user-{email}.json"
    path.write_text(json.dumps(info))
    return path


def user_credentials(
    drive: FakeDrive, email: str = OAUTH_USER, scopes: set[str] | None = None
) -> DriveCredentials:
    """An OAuth user's refresh token, granted ``scopes`` by the fake's token endpoint."""
    refresh = f"refresh-{email}-{len(drive.refresh_tokens)}"
    drive.add_refresh_token(refresh, email, scopes)
    credentials = user_credentials_module.Credentials(
        token=None,
        refresh_token=refresh,
        client_id="fake-client.apps.googleusercontent.com",
        client_secret="fake-secret",
        token_uri=drive.token_uri,
        scopes=[DRIVE_SCOPE],
    )
    return DriveCredentials(credentials, f"OAuth user token of {email}", "test")


def new_root(
    drive: FakeDrive,
    shares: dict[str, str] | None = None,
    *,
    shared_drive: bool = True,
    name: str = "hefl-store",
) -> str:
    root = drive.create_folder(name, shared_drive=shared_drive)
    for email, role in (shares if shares is not None else {SERVICE_ACCOUNT: "organizer"}).items():
        drive.share(root, email, role)
    return root


def options(drive: FakeDrive, **overrides: object) -> DriveOptions:
    """Small chunks and pages so that every test crosses chunk and page boundaries."""
    values: dict[str, object] = {
        "endpoint": drive.url,
        "chunk_size": GRANULE,
        "download_chunk": 100_000,
        "multipart_limit": 512,
        "page_size": 3,
        "timeout": 10.0,
        "retry": RetryPolicy(attempts=5, base_delay=0.5, max_delay=8.0),
    }
    values.update(overrides)
    return DriveOptions(**values)  # type: ignore[arg-type]


def no_sleep(seconds: float) -> None:
    pass


def drive_store(
    tmp_path: Path,
    drive: FakeDrive | None = None,
    *,
    root: str | None = None,
    credentials: Path | DriveCredentials | None = None,
    sleep: Callable[[float], None] = no_sleep,
    folders: Mapping[str, str] | None = None,
    **overrides: object,
) -> DriveStore:
    drive = drive or shared_fake()
    if credentials is None:
        credentials = service_account_file(drive, tmp_path)
    if root is None:
        root = new_root(drive)
    return open_drive_store(
        root,
        credentials,
        options=options(drive, **overrides),
        sleep=sleep,
        rand=lambda: 0.5,
        folders=folders,
    )
