"""Google credentials for the Drive store: a service-account key or an OAuth user token.

The file type is read from its ``type`` field, as ``gcloud`` writes them: ``service_account``
(a key created in the Cloud console) or ``authorized_user`` (a refresh token from an OAuth
consent, e.g. ``gcloud auth application-default login --scopes=...``). A missing or malformed file
is a ``ConfigError`` naming the file; nothing touches the network here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.auth.credentials import Credentials
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from common.errors import ConfigError
from common.store.gdrive_errors import DRIVE_SCOPE


@dataclass(frozen=True, eq=False)
class DriveCredentials:
    """Credentials plus a readable name of the account, for error messages."""

    credentials: Credentials
    account: str
    source: str

    def __repr__(self) -> str:
        return f"DriveCredentials(account={self.account!r}, source={self.source!r})"


def load_credentials(path: str | Path) -> DriveCredentials:
    """Load a service-account key or an authorized-user token file, scoped for Drive."""
    source = str(path)
    try:
        info: Any = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"Google credentials file {source} does not exist") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read Google credentials file {source}: {exc}") from exc
    if not isinstance(info, dict):
        raise ConfigError(f"Google credentials file {source}: expected a JSON object")
    kind = info.get("type")
    try:
        if kind == "service_account":
            sa = service_account.Credentials.from_service_account_info(info, scopes=[DRIVE_SCOPE])
            return DriveCredentials(sa, f"service account {sa.service_account_email}", source)
        if kind == "authorized_user":
            user = user_credentials.Credentials.from_authorized_user_info(
                info, scopes=[DRIVE_SCOPE]
            )
            return DriveCredentials(user, f"OAuth user token (client {user.client_id})", source)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"Google credentials file {source} is incomplete: {exc}") from exc
    raise ConfigError(
        f"Google credentials file {source}: type {kind!r} is not supported; use a service-account "
        "key ('service_account') or an OAuth user token ('authorized_user')"
    )
