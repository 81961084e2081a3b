"""Plain data of the Drive store: options, file metadata, query strings (no Google imports)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from common.errors import ConfigError
from common.store.retry import RetryPolicy

FOLDER_MIME: Final = "application/vnd.google-apps.folder"
GOOGLE_APPS_MIME: Final = "application/vnd.google-apps."
BLOB_MIME: Final = "application/octet-stream"
FILE_FIELDS: Final = "id, name, mimeType, createdTime, size, appProperties"
FOLDER_INFO_FIELDS: Final = "id, name, mimeType, trashed, capabilities(canAddChildren)"
UPLOAD_GRANULE: Final = 256 * 1024  # Drive: every resumable chunk but the last is a multiple
DEFAULT_CHUNK: Final = 32 * UPLOAD_GRANULE  # 8 MiB
DEFAULT_MULTIPART_LIMIT: Final = 5 * 1024 * 1024  # Drive's advice for single-request uploads
DEFAULT_PAGE_SIZE: Final = 1000  # Drive's maximum
DEFAULT_TIMEOUT: Final = 120.0


@dataclass(frozen=True, kw_only=True)
class DriveOptions:
    """Tunables of the Drive client; the defaults suit production."""

    endpoint: str | None = None
    chunk_size: int = DEFAULT_CHUNK
    download_chunk: int = DEFAULT_CHUNK
    multipart_limit: int = DEFAULT_MULTIPART_LIMIT
    page_size: int = DEFAULT_PAGE_SIZE
    timeout: float = DEFAULT_TIMEOUT
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if self.chunk_size < UPLOAD_GRANULE or self.chunk_size % UPLOAD_GRANULE:
            raise ConfigError(f"Drive chunk size {self.chunk_size} is not a multiple of 256 KiB")
        if self.download_chunk < 1 or self.multipart_limit < 0 or not 1 <= self.page_size <= 1000:
            raise ConfigError(f"invalid Drive options {self!r}")
        if self.endpoint is not None and not self.endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"Drive endpoint {self.endpoint!r} is not an http(s) URL")


@dataclass(frozen=True, kw_only=True)
class DriveFile:
    id: str
    name: str
    mime_type: str
    created_time: str = ""
    size: int | None = None
    app_properties: Mapping[str, str] = field(default_factory=dict)
    trashed: bool = False
    can_add_children: bool | None = None

    @property
    def is_folder(self) -> bool:
        return self.mime_type == FOLDER_MIME

    @property
    def is_google_document(self) -> bool:
        """Docs, Sheets, shortcuts, folders: items without downloadable bytes."""
        return self.mime_type.startswith(GOOGLE_APPS_MIME)

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> DriveFile:
        size = item.get("size")
        return cls(
            id=str(item["id"]),
            name=str(item.get("name", "")),
            mime_type=str(item.get("mimeType", "")),
            created_time=str(item.get("createdTime", "")),
            size=None if size is None else int(size),
            app_properties=dict(item.get("appProperties") or {}),
            trashed=bool(item.get("trashed", False)),
            can_add_children=(item.get("capabilities") or {}).get("canAddChildren"),
        )


def quote(value: str) -> str:
    """A Drive query string literal: single quotes, with backslash and quote escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def children_query(parent_id: str, name: str | None = None) -> str:
    terms = [f"{quote(parent_id)} in parents", "trashed = false"]
    if name is not None:
        terms.insert(0, f"name = {quote(name)}")
    return " and ".join(terms)
