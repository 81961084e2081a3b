"""One setting chooses the store in every run mode: a store URL.

- ``/abs/path``, ``rel/path`` or ``file:///abs/path``: a local directory (or a shared volume);
- ``gdrive://FOLDER_ID``: a Google Drive folder, with the credentials file from the
  ``credentials`` argument, the URL's ``?credentials=/path``, ``$HEFL_GDRIVE_CREDENTIALS`` or
  ``$GOOGLE_APPLICATION_CREDENTIALS`` (first one set wins). ``?endpoint=URL`` replaces Google's
  API root (a private endpoint, or a test server). ``?folders=PREFIX:ID,PREFIX:ID`` names the
  folders shared with a hospital's account when the root is not (its own updates folder and the
  aggregates folder; ``hefl drive-share`` prints such a URL for each site).

The URL is read once at the edge (``hefl simulate --store`` or ``$HEFL_STORE``) and validated here;
anything else is a ``ConfigError``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from common.errors import ConfigError, StoreError
from common.store.base import Store, check_key

STORE_ENV: Final = "HEFL_STORE"
CREDENTIALS_ENVS: Final = ("HEFL_GDRIVE_CREDENTIALS", "GOOGLE_APPLICATION_CREDENTIALS")
_FOLDER_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,200}")
_GDRIVE_OPTIONS: Final = frozenset({"credentials", "endpoint", "folders"})


@dataclass(frozen=True, kw_only=True)
class StoreSpec:
    """A parsed store URL: where the store is and how to reach it."""

    kind: Literal["local", "gdrive"]
    path: Path | None = None
    folder_id: str | None = None
    credentials: str | None = None
    endpoint: str | None = None
    folders: Mapping[str, str] | None = None  # key prefix -> a folder shared with this account


def parse_store_url(
    url: str, *, credentials: str | None = None, environ: Mapping[str, str] | None = None
) -> StoreSpec:
    """Validate a store URL; for Drive, also find the credentials file (not read yet)."""
    environ = os.environ if environ is None else environ
    if not url.strip():
        raise ConfigError("store URL is empty: use a folder path, file:///path or gdrive://ID")
    if "://" not in url:
        return StoreSpec(kind="local", path=Path(url))
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise ConfigError(
                f"store URL {url!r}: a file URL is file:///absolute/path (no host, no query)"
            )
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ConfigError(f"store URL {url!r}: the path must be absolute")
        return StoreSpec(kind="local", path=Path(path))
    if scheme == "gdrive":
        return _parse_gdrive(url, credentials, environ)
    raise ConfigError(
        f"store URL {url!r}: unsupported scheme {parts.scheme!r}; use a folder path, "
        "file:///path or gdrive://FOLDER_ID"
    )


def _parse_gdrive(url: str, credentials: str | None, environ: Mapping[str, str]) -> StoreSpec:
    parts = urlsplit(url)
    folder = parts.netloc
    if not _FOLDER_ID.fullmatch(folder) or parts.path not in ("", "/") or parts.fragment:
        raise ConfigError(
            f"store URL {url!r}: expected gdrive://FOLDER_ID, the ID being the last part of the "
            "folder's address in Drive (https://drive.google.com/drive/folders/FOLDER_ID)"
        )
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise ConfigError(f"store URL {url!r}: malformed query: {exc}") from exc
    unknown = set(query) - _GDRIVE_OPTIONS
    if unknown or any(len(values) != 1 or not values[0] for values in query.values()):
        raise ConfigError(
            f"store URL {url!r}: options are credentials=PATH, endpoint=URL and "
            "folders=PREFIX:ID,..., each once"
            + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else "")
        )
    endpoint = query.get("endpoint", [None])[0]
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"store URL {url!r}: endpoint must be an http(s) URL")
    chosen = credentials or query.get("credentials", [None])[0]
    for name in CREDENTIALS_ENVS:
        chosen = chosen or environ.get(name) or None
    if chosen is None:
        raise ConfigError(
            f"store URL {url!r} needs Google credentials: set {CREDENTIALS_ENVS[0]} to a "
            "service-account key or OAuth user token file (or add ?credentials=PATH)"
        )
    folders = _folders(url, query["folders"][0]) if "folders" in query else None
    return StoreSpec(
        kind="gdrive", folder_id=folder, credentials=chosen, endpoint=endpoint, folders=folders
    )


def _folders(url: str, text: str) -> dict[str, str]:
    folders = {}
    for item in text.split(","):
        prefix, _, folder_id = item.partition(":")
        try:
            check_key(prefix)
        except StoreError as exc:
            raise ConfigError(f"store URL {url!r}: folders: {exc}") from exc
        if not _FOLDER_ID.fullmatch(folder_id) or prefix in folders:
            raise ConfigError(
                f"store URL {url!r}: folders is PREFIX:FOLDER_ID,... with each prefix once, "
                f"got {item!r}"
            )
        folders[prefix] = folder_id
    return folders


def open_store(
    url: str, *, credentials: str | None = None, environ: Mapping[str, str] | None = None
) -> Store:
    """The store a URL names. Local folders are created; Drive is first contacted on use."""
    spec = parse_store_url(url, credentials=credentials, environ=environ)
    if spec.kind == "local" and spec.path is not None:
        from common.store.local import LocalStore

        return LocalStore(spec.path)
    if spec.folder_id is None or spec.credentials is None:  # pragma: no cover - parser guarantees
        raise ConfigError(f"store URL {url!r} is incomplete")
    from common.store.gdrive import open_drive_store
    from common.store.gdrive_types import DriveOptions

    return open_drive_store(
        spec.folder_id,
        spec.credentials,
        options=DriveOptions(endpoint=spec.endpoint),
        folders=spec.folders,
    )
