"""The fake Drive's uploads: ``files.create`` with multipart or resumable media.

A resumable session starts with a POST of the metadata (``200`` and a ``Location`` session URI);
chunks are PUT with ``Content-Range``; every chunk but the last is a multiple of 256 KiB; the
answer is ``308`` with ``Range: bytes=0-N`` until the last byte arrives, then the file resource.
An empty PUT with ``bytes */TOTAL`` asks how far the upload got. The file exists, visible to
``files.list``, only once complete. A chunk that starts before the received offset (a resend)
is accepted and its known bytes ignored; one that starts after it (a gap) is refused.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from testkit.drive.model import (
    FILE_SCHEMA,
    FOLDER_MIME,
    WRITABLE_ON_CREATE,
    ApiError,
    FakeFile,
    Files,
    check_body,
    invalid,
)
from testkit.drive.query import FieldTree, requested, select
from testkit.drive.wire import Handler, cut, parse_multipart, read_body, send, send_json

GRANULE = 256 * 1024
FILE_DEFAULT: FieldTree = {"kind": None, "id": None, "name": None, "mimeType": None}


@dataclass
class Session:
    owner: str
    metadata: dict[str, Any]
    fields: Any
    total: int | None
    data: bytearray = field(default_factory=bytearray)
    file_id: str | None = None
    expired: bool = False


class Uploads:
    """Mixed into ``FakeDrive``, which provides the state below."""

    lock: threading.RLock
    files: Files
    sessions: dict[str, Session]

    @property
    def url(self) -> str:
        raise NotImplementedError

    def _take_fault(self, call: str, kind: str) -> Any:
        raise NotImplementedError

    def _create(self, h: Handler, query: dict[str, str], email: str) -> None:
        upload = query.get("uploadType")
        body = read_body(h)
        if h.path.startswith("/upload/"):
            if upload == "multipart":
                metadata, content = parse_multipart(h.headers.get("Content-Type", ""), body)
            elif upload == "resumable":
                metadata, content = json.loads(body or b"{}"), None
            else:
                raise invalid(f"fake drive: uploadType {upload!r} is not implemented", "uploadType")
        else:
            if upload is not None:
                raise invalid("uploadType needs the /upload URI", "uploadType")
            metadata, content = json.loads(body or b"{}"), None
        check_body(metadata, WRITABLE_ON_CREATE, update=False)
        tree = requested(query, FILE_SCHEMA, FILE_DEFAULT)
        with self.lock:
            parent = self.files.check_create(email, metadata)
            if upload == "resumable":
                session_id = secrets.token_urlsafe(16)
                total = h.headers.get("X-Upload-Content-Length")
                self.sessions[session_id] = Session(
                    email, metadata, tree, None if total is None else int(total)
                )
                location = (
                    f"{self.url}upload/drive/v3/files?uploadType=resumable&upload_id={session_id}"
                )
                return send(h, 200, b"", {"Location": location})
            item = self._new_file(email, metadata, parent, content)
            return send_json(h, 200, select(self.files.resource(email, item), tree))

    def _new_file(
        self, email: str, metadata: dict[str, Any], parent: str, content: bytes | None
    ) -> FakeFile:
        mime_type = metadata.get("mimeType") or "application/octet-stream"
        return self.files.add(
            name=metadata.get("name", "Untitled"),
            mime_type=mime_type,
            parent=parent,
            owner=email,
            content=None if mime_type == FOLDER_MIME else (content or b""),
            app_properties=metadata.get("appProperties"),
        )

    def _chunk(self, h: Handler, query: dict[str, str], email: str) -> None:
        with self.lock:
            session = self.sessions.get(query.get("upload_id", ""))
        if session is None or session.expired:
            read_body(h)
            raise ApiError(404, "notFound", "Upload session not found or expired.")
        length = int(h.headers.get("Content-Length", "0"))
        content_range = h.headers.get("Content-Range", "")
        match = re.fullmatch(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)", content_range)
        if match is None:
            read_body(h)
            raise invalid("Failed to parse Content-Range header.", "Content-Range")
        first_text, last_text, total_text = match.groups()
        total = None if total_text == "*" else int(total_text)
        if first_text is None:  # a status query
            read_body(h)
            return self._session_status(h, session, email)
        first, last = int(first_text), int(last_text)
        self._check_chunk(h, session, first, last, length, total)
        fault = self._take_fault("upload.chunk", "drop")
        if fault is not None:
            received = h.rfile.read(min(fault.after_bytes, length))
            kept = len(received) // GRANULE * GRANULE  # the server persists whole granules
            with self.lock:
                _merge(session, first, received[:kept])
            cut(h)
        data = h.rfile.read(length)
        with self.lock:
            _merge(session, first, data)
            session.total = total if total is not None else session.total
            complete = session.total is not None and len(session.data) == session.total
            if complete and session.file_id is None:
                parent = self.files.check_create(email, session.metadata)
                item = self._new_file(email, session.metadata, parent, bytes(session.data))
                session.file_id = item.id
            return self._session_status(h, session, email)

    def _check_chunk(
        self, h: Handler, session: Session, first: int, last: int, length: int, total: int | None
    ) -> None:
        problem = None
        if last - first + 1 != length:
            problem = "Content-Range does not match Content-Length."
        elif not (total is not None and last + 1 == total) and length % GRANULE:
            problem = (
                "Invalid request. The number of bytes uploaded is required to be equal or "
                "greater than 262144, except for the final request (it's recommended to be the "
                "exact multiple of 262144)."
            )
        elif first > len(session.data):
            problem = (
                f"Invalid request. According to the Content-Range header, the upload offset is "
                f"{first} byte(s), which exceeds already uploaded size of {len(session.data)} "
                "byte(s)."
            )
        if problem is not None:
            read_body(h)
            raise invalid(problem, "Content-Range")

    def _session_status(self, h: Handler, session: Session, email: str) -> None:
        with self.lock:
            if session.file_id is not None:
                item = self.files.items[session.file_id]
                return send_json(h, 200, select(self.files.resource(email, item), session.fields))
        headers = {"Range": f"bytes=0-{len(session.data) - 1}"} if session.data else {}
        return send(h, 308, b"", headers)


def _merge(session: Session, first: int, data: bytes) -> None:
    """Put bytes at ``first``; a resend overwrites the overlap (with the same bytes)."""
    if first + len(data) > len(session.data):
        session.data[first:] = data
