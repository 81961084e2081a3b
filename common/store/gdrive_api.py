"""The Drive v3 calls the Drive store makes: the only module that imports googleapiclient.

Each method is one logical Drive operation with bounded retries (exponential backoff with jitter)
on 429, 5xx, Drive's 403 rate-limit reasons and dropped connections; anything else, or the last
transient error, becomes a ``DriveCallError``. Uploads up to ``multipart_limit`` bytes go in one
multipart request; larger ones use a resumable session, and a chunk that fails is resumed from
the offset the server reports. Downloads stream in ``download_chunk`` ranges, resumed the same
way, and stop as soon as they pass the caller's ``max_bytes``. The client is built from the
discovery document bundled with googleapiclient (no discovery fetch at run time); ``endpoint``
replaces its root URL, for a private endpoint or a test server.
"""

from __future__ import annotations

import functools
import http.client
import io
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import google_auth_httplib2
import httplib2
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import Credentials
from googleapiclient import discovery, discovery_cache
from googleapiclient import errors as api_errors
from googleapiclient import http as api_http

from common.errors import BlobTooLargeError, ConfigError
from common.logs import log_event
from common.store.gdrive_errors import RATE_LIMIT_REASONS, DriveCallError
from common.store.gdrive_types import (
    BLOB_MIME,
    FILE_FIELDS,
    FOLDER_INFO_FIELDS,
    FOLDER_MIME,
    DriveFile,
    DriveOptions,
    children_query,
)
from common.store.retry import RetriesExhausted, call_with_retries

logger = logging.getLogger("hefl.store.gdrive")
T = TypeVar("T")

RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
SESSION_RESTARTS: Final = 2


class _BytesUpload(api_http.MediaUpload):
    """In-memory media that hands out byte slices, so a re-sent chunk is always whole."""

    def __init__(self, data: bytes, *, chunk_size: int, resumable: bool) -> None:
        self._data = data
        self._chunk_size = chunk_size
        self._resumable = resumable

    def chunksize(self) -> int:
        return self._chunk_size

    def mimetype(self) -> str:
        return BLOB_MIME

    def size(self) -> int:
        return len(self._data)

    def resumable(self) -> bool:
        return self._resumable

    def getbytes(self, begin: int, length: int) -> bytes:
        return self._data[begin : begin + length]

    def has_stream(self) -> bool:
        return False


class _BoundedBuffer(io.BytesIO):
    """Downloaded bytes, refused as soon as they pass ``limit`` (a file larger than it said)."""

    def __init__(self, file_id: str, limit: int | None, digest: Any = None) -> None:
        super().__init__()
        self._file_id = file_id
        self._limit = limit
        self._digest = digest

    def write(self, data: Any) -> int:
        if self._limit is not None and self.tell() + len(data) > self._limit:
            raise BlobTooLargeError(
                f"Drive file {self._file_id} sent more than the limit of {self._limit} bytes: "
                "download stopped"
            )
        if self._digest is not None:
            self._digest.update(data)
        return super().write(data)


@functools.lru_cache(maxsize=8)
def _bundled_document(endpoint: str | None) -> str:
    text = discovery_cache.get_static_doc("drive", "v3")
    if text is None:  # pragma: no cover - the document ships with googleapiclient
        raise ConfigError("googleapiclient has no bundled Drive v3 discovery document")
    if endpoint is None:
        return str(text)
    document = json.loads(text)
    # Both API calls (rootUrl + servicePath) and media uploads (rootUrl + "upload/" + ...) are
    # built from rootUrl; client_options.api_endpoint would move only the former.
    document["rootUrl"] = endpoint if endpoint.endswith("/") else endpoint + "/"
    document.pop("mtlsRootUrl", None)
    return json.dumps(document)


def _reasons(exc: api_errors.HttpError) -> tuple[frozenset[str], str]:
    """Google's reason codes (``errors[].reason``, ``details[].reason``) and message."""
    try:
        error = json.loads(exc.content.decode("utf-8"))["error"]
    except (ValueError, KeyError, TypeError, AttributeError):
        return frozenset(), str(getattr(exc, "reason", "")) or str(exc.resp.status)
    if not isinstance(error, dict):
        return frozenset(), str(error)
    found = {
        str(item["reason"])
        for bucket in ("errors", "details")
        for item in error.get(bucket) or []
        if isinstance(item, dict) and "reason" in item
    }
    return frozenset(found), str(error.get("message", "")) or str(exc.resp.status)


def _retry_after(exc: api_errors.HttpError) -> float | None:
    try:
        return float(exc.resp.get("retry-after", ""))
    except ValueError:
        return None


def _transient(exc: BaseException) -> tuple[bool, float | None]:
    if isinstance(exc, api_errors.HttpError):
        status = exc.resp.status
        if status in RETRY_STATUSES or (status == 403 and _reasons(exc)[0] & RATE_LIMIT_REASONS):
            return True, _retry_after(exc)
        return False, None
    if isinstance(exc, auth_exceptions.RefreshError):
        return bool(getattr(exc, "retryable", False)), None
    if isinstance(
        exc,
        OSError
        | http.client.HTTPException
        | httplib2.HttpLib2Error
        | auth_exceptions.TransportError,
    ):
        return True, None
    return False, None


def _call_error(call: str, exc: BaseException, attempts: int) -> DriveCallError:
    if isinstance(exc, api_errors.HttpError):
        reasons, message = _reasons(exc)
        return DriveCallError(
            call=call, status=exc.resp.status, reasons=reasons, detail=message, attempts=attempts
        )
    if isinstance(exc, auth_exceptions.GoogleAuthError) and not isinstance(
        exc, auth_exceptions.TransportError
    ):  # no token could be had: the key or refresh token was refused
        return DriveCallError(
            call=call,
            status=401,
            reasons=frozenset({"tokenRefreshFailed"}),
            detail=f"token refresh failed: {exc}",
            attempts=attempts,
        )
    return DriveCallError(
        call=call,
        status=None,
        reasons=frozenset(),
        detail=f"{type(exc).__name__}: {exc}",
        attempts=attempts,
    )


_TRANSLATED: Final = (
    api_errors.HttpError,
    auth_exceptions.GoogleAuthError,
    OSError,
    http.client.HTTPException,
    httplib2.HttpLib2Error,
)


class DriveApi:
    """The subset of Drive v3 the store uses, with retries; not thread-safe (the store locks)."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        options: DriveOptions | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.options = options or DriveOptions()
        self._sleep = sleep
        self._rand = rand
        transport = httplib2.Http(timeout=self.options.timeout)
        # Drive answers "308 Resume Incomplete" to upload chunks: not a redirect to follow.
        transport.redirect_codes = transport.redirect_codes - {308}
        authorized = google_auth_httplib2.AuthorizedHttp(credentials, http=transport)
        service = discovery.build_from_document(
            _bundled_document(self.options.endpoint), http=authorized
        )
        self._files = service.files()
        self._permissions = service.permissions()

    def __repr__(self) -> str:
        return f"DriveApi(endpoint={self.options.endpoint or 'https://www.googleapis.com/'!r})"

    def _call(self, call: str, action: Callable[[], T]) -> T:
        def on_retry(attempt: int, delay: float, exc: BaseException) -> None:
            log_event(
                logger,
                "drive_retry",
                level=logging.WARNING,
                call=call,
                attempt=attempt,
                delay=round(delay, 3),
                error=f"{type(exc).__name__}: {exc}"[:300],
            )

        try:
            return call_with_retries(
                action,
                policy=self.options.retry,
                transient=_transient,
                sleep=self._sleep,
                rand=self._rand,
                on_retry=on_retry,
            )
        except RetriesExhausted as exc:
            raise _call_error(call, exc.last, exc.attempts) from exc.last
        except _TRANSLATED as exc:
            raise _call_error(call, exc, 1) from exc

    # -- metadata ----------------------------------------------------------------------------

    def folder_info(self, folder_id: str) -> DriveFile:
        request = self._files.get(
            fileId=folder_id, fields=FOLDER_INFO_FIELDS, supportsAllDrives=True
        )
        return DriveFile.from_json(self._call("files.get", request.execute))

    def children(self, parent_id: str, *, name: str | None = None) -> list[DriveFile]:
        """Every untrashed child of a folder (optionally only those called ``name``), all pages."""
        query = children_query(parent_id, name)
        found: list[DriveFile] = []
        token: str | None = None
        while True:
            request = self._files.list(
                q=query,
                fields=f"nextPageToken, files({FILE_FIELDS})",
                pageSize=self.options.page_size,
                pageToken=token,
                supportsAllDrives=True,
                includeItemsFromAllDrives=True,
            )
            page = self._call("files.list", request.execute)
            found.extend(DriveFile.from_json(item) for item in page.get("files", []))
            token = page.get("nextPageToken")
            if not token:
                return found

    def create_folder(self, parent_id: str, name: str) -> DriveFile:
        request = self._files.create(
            body={"name": name, "parents": [parent_id], "mimeType": FOLDER_MIME},
            fields=FILE_FIELDS,
            supportsAllDrives=True,
        )
        return DriveFile.from_json(self._call("files.create", request.execute))

    def share(self, file_id: str, email: str, role: str) -> None:
        """Give the account ``email`` the ``role`` (reader, writer, ...) on a file or folder.

        No notification email: the accounts are services' and sites' own, told by their operator.
        """
        request = self._permissions.create(
            fileId=file_id,
            body={"type": "user", "role": role, "emailAddress": email},
            sendNotificationEmail=False,
            fields="id",
            supportsAllDrives=True,
        )
        self._call("permissions.create", request.execute)

    def trash(self, file_id: str) -> None:
        request = self._files.update(
            fileId=file_id, body={"trashed": True}, fields="id", supportsAllDrives=True
        )
        self._call("files.update", request.execute)

    def delete(self, file_id: str) -> None:
        """Delete for good; a file that is already gone counts as deleted (retried deletes)."""
        request = self._files.delete(fileId=file_id, supportsAllDrives=True)
        try:
            self._call("files.delete", request.execute)
        except DriveCallError as exc:
            if exc.status != 404:
                raise

    # -- content -----------------------------------------------------------------------------

    def upload(
        self, parent_id: str, name: str, data: bytes, app_properties: Mapping[str, str]
    ) -> DriveFile:
        """Create a new file with ``data``; Drive makes it visible only once all bytes arrived."""
        body = {"name": name, "parents": [parent_id], "appProperties": dict(app_properties)}
        resumable = len(data) > self.options.multipart_limit
        media = _BytesUpload(data, chunk_size=self.options.chunk_size, resumable=resumable)

        def new_request() -> Any:
            return self._files.create(
                body=body, media_body=media, fields=FILE_FIELDS, supportsAllDrives=True
            )

        if not resumable:
            return DriveFile.from_json(self._call("files.create", new_request().execute))
        for restart in range(SESSION_RESTARTS + 1):
            request = new_request()
            response = None
            try:
                while response is None:
                    # One retry budget per chunk: progress made is never thrown away.
                    _, response = self._call("files.create (resumable)", request.next_chunk)
                return DriveFile.from_json(response)
            except DriveCallError as exc:
                expired = exc.status in (404, 410) and request.resumable_uri is not None
                if not expired or restart == SESSION_RESTARTS:
                    raise
                log_event(logger, "drive_upload_restarted", level=logging.WARNING, name=name)
        raise AssertionError("unreachable")  # pragma: no cover

    def download(self, file_id: str, *, max_bytes: int | None = None, digest: Any = None) -> bytes:
        """The file's bytes, fetched in ranges (each fed to ``digest``, a hashlib object, as it
        arrives); a failed range is fetched again.

        More than ``max_bytes`` is ``BlobTooLargeError`` as soon as it arrives (callers check the
        file's ``size`` first; this bounds a file that is larger than its metadata said).
        """
        request = self._files.get_media(fileId=file_id, supportsAllDrives=True)
        buffer = _BoundedBuffer(file_id, max_bytes, digest)
        downloader = api_http.MediaIoBaseDownload(
            buffer, request, chunksize=self.options.download_chunk
        )
        done = False
        while not done:
            _, done = self._call("files.get (media)", downloader.next_chunk)
        return buffer.getvalue()
