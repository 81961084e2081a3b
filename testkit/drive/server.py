"""A local fake of the Google Drive v3 REST API and Google's OAuth token endpoint.

Stdlib only, threaded, bound to 127.0.0.1 on an ephemeral port. It serves what the Drive store
uses, the way Drive does: ``files.list`` (``q``, ``fields``, ``pageSize``, ``pageToken``),
``files.get`` (metadata and ``alt=media`` with ranges), ``files.create`` (metadata, multipart and
resumable uploads: session URI, ``Content-Range`` chunks, ``308`` with ``Range``, status queries),
``files.update`` (metadata), ``files.delete`` and ``permissions.create`` (share with a user); and
the token endpoint for the JWT-bearer grant
(service accounts; the JWT signature is checked) and the refresh-token grant (OAuth users).

It rejects what Drive rejects (bad ``q``, unknown ``fields``, bad page tokens, unknown or read-only
body fields, chunks that are not multiples of 256 KiB, missing or expired tokens, missing scopes,
items not shared with the caller) and refuses parameters it does not implement. Faults are
injected with ``fail_next`` (429/5xx/403 answers), ``drop_next`` (the connection is closed with no
answer, before or after the request is carried out), ``drop_next_chunk`` and ``drop_next_download``
(the connection is cut after K bytes), ``expire_sessions`` and ``expire_tokens``.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives.asymmetric import rsa

from testkit.drive.model import (
    FILE_SCHEMA,
    FOLDER_MIME,
    LIST_SCHEMA,
    PERMISSION_DEFAULT,
    PERMISSION_SCHEMA,
    ROLES,
    WRITABLE_ON_UPDATE,
    ApiError,
    FakeFile,
    Files,
    check_body,
    forbidden,
    invalid,
)
from testkit.drive.oauth import OAuth, Token
from testkit.drive.query import FieldTree, QueryError, parse_query, requested, select
from testkit.drive.uploads import FILE_DEFAULT, GRANULE, Session, Uploads
from testkit.drive.wire import (
    RECORDED_HEADERS,
    Dropped,
    Handler,
    Server,
    classify,
    cut,
    read_body,
    send,
    send_json,
)

DRIVE_SCOPE = "https://www.googleapis.com/auth/drive"
READONLY_SCOPE = "https://www.googleapis.com/auth/drive.readonly"
COMMON_PARAMS = {"alt", "fields", "prettyPrint", "supportsAllDrives"}
PARAMS = {
    "files.list": {"q", "pageSize", "pageToken", "includeItemsFromAllDrives"},
    "files.get": {"acknowledgeAbuse"},
    "files.create": {"uploadType"},
    "files.update": set(),
    "files.delete": set(),
    "permissions.create": {"sendNotificationEmail", "emailMessage"},
    "upload.chunk": {"uploadType", "upload_id"},
}
LIST_DEFAULT: FieldTree = {
    "kind": None,
    "incompleteSearch": None,
    "nextPageToken": None,
    "files": FILE_DEFAULT,
}


@dataclass
class Fault:
    call: str | None
    kind: str  # "status" | "drop" (mid-transfer) | "cut" (no answer at all)
    status: int = 500
    reason: str = "backendError"
    after_bytes: int = 0
    retry_after: float | None = None
    skip: int = 0  # matching requests to let through first
    applied: bool = False  # "cut": the request is carried out, only its answer is lost


@dataclass(frozen=True)
class Recorded:
    call: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


class FakeDrive(Uploads, OAuth):
    """The fake service; configure it, point a client at ``url``, inspect ``requests``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.files = Files()
        self.sessions: dict[str, Session] = {}
        self.tokens: dict[str, Token] = {}
        self.public_keys: dict[str, rsa.RSAPublicKey] = {}
        self.refresh_tokens: dict[str, tuple[str, frozenset[str]]] = {}
        self.refused: set[str] = set()  # accounts whose grants fail (revoked key)
        self.rejected: set[str] = set()  # accounts whose tokens the API rejects (disabled)
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self._pages: dict[str, tuple[str, int]] = {}
        self._server = Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeDrive:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    @property
    def token_uri(self) -> str:
        return self.url + "token"

    # -- set-up ----------------------------------------------------------------------------------

    def add_service_account(self, email: str, public_key: rsa.RSAPublicKey) -> None:
        with self.lock:
            self.public_keys[email] = public_key
            self.files.service_accounts.add(email)

    def add_refresh_token(self, token: str, email: str, scopes: set[str] | None = None) -> None:
        with self.lock:
            self.refresh_tokens[token] = (email, frozenset(scopes or {DRIVE_SCOPE}))

    def create_folder(
        self,
        name: str,
        *,
        parent: str | None = None,
        owner: str = "owner@example.org",
        shared_drive: bool = True,
    ) -> str:
        with self.lock:
            return self.files.add(
                name=name,
                mime_type=FOLDER_MIME,
                parent=parent,
                owner=owner,
                shared_drive=shared_drive,
            ).id

    def add_file(
        self,
        parent: str,
        name: str,
        content: bytes,
        *,
        app_properties: dict[str, str] | None = None,
        owner: str = "owner@example.org",
        mime_type: str = "application/octet-stream",
    ) -> str:
        """A file as another client (or a person in the web UI) would leave it."""
        with self.lock:
            return self.files.add(
                name=name,
                mime_type=mime_type,
                parent=parent,
                owner=owner,
                content=content,
                app_properties=app_properties,
            ).id

    def share(self, file_id: str, email: str, role: str) -> None:
        with self.lock:
            self.files.items[file_id].shares[email] = role

    def children(self, parent: str) -> list[FakeFile]:
        with self.lock:
            found = [f for f in self.files.items.values() if parent in f.parents and not f.trashed]
            return sorted(found, key=lambda f: f.created)

    def path_of(self, root: str, path: str) -> FakeFile | None:
        """The untrashed item at ``a/b/c`` under ``root`` (first of duplicates), for asserts."""
        node = root
        item = None
        for part in path.split("/"):
            matches = [f for f in self.children(node) if f.name == part]
            if not matches:
                return None
            item = matches[0]
            node = item.id
        return item

    # -- faults ----------------------------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 500,
        reason: str | None = None,
        call: str | None = None,
        retry_after: float | None = None,
        skip: int = 0,
    ) -> None:
        """The next ``count`` API requests (of ``call``, if given, after ``skip`` of them that
        pass) get an error answer."""
        default = {429: "rateLimitExceeded", 403: "userRateLimitExceeded"}.get(
            status, "backendError"
        )
        with self.lock:
            self.faults.extend(
                Fault(call, "status", status, reason or default, retry_after=retry_after, skip=skip)
                for _ in range(count)
            )

    def drop_next(self, count: int = 1, *, call: str | None = None, applied: bool = False) -> None:
        """Close the connection of the next ``count`` API requests (of ``call``, if given) with no
        answer, as a network failure would; ``applied``: only after carrying the request out, so
        the client cannot tell whether it happened (a retried create then makes a second file).

        The token endpoint is never affected, as with ``fail_next``. httplib2 silently sends a
        request again once when its first answer is missing, so two drops in a row are what
        reach the client's own retries.
        """
        with self.lock:
            self.faults.extend(Fault(call, "cut", applied=applied) for _ in range(count))

    def drop_next_chunk(self, after_bytes: int, *, count: int = 1) -> None:
        with self.lock:
            self.faults.extend(
                Fault("upload.chunk", "drop", after_bytes=after_bytes) for _ in range(count)
            )

    def drop_next_download(self, after_bytes: int, *, count: int = 1) -> None:
        with self.lock:
            self.faults.extend(
                Fault("files.get_media", "drop", after_bytes=after_bytes) for _ in range(count)
            )

    def expire_sessions(self) -> None:
        with self.lock:
            for session in self.sessions.values():
                session.expired = True

    def expire_tokens(self) -> None:
        with self.lock:
            for token in self.tokens.values():
                token.valid = False

    def calls(self, name: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.call == name]

    # -- HTTP ------------------------------------------------------------------------------------

    def handle(self, h: Handler) -> None:
        url = urlsplit(h.path)
        raw = parse_qs(url.query, keep_blank_values=True)
        query = {name: values[-1] for name, values in raw.items()}
        call = classify(h.command, url.path, query)
        headers = {k.lower(): v for k, v in h.headers.items() if k.lower() in RECORDED_HEADERS}
        with self.lock:
            self.requests.append(Recorded(call, h.command, url.path, query, headers))
        try:
            if any(len(values) > 1 for values in raw.values()):
                raise invalid("Repeated parameter", "query")
            if call == "token":
                return self._token(h)
            if call == "unknown":
                raise ApiError(404, "notFound", f"fake drive: no route {h.command} {url.path}")
            fault = self._take_fault(call, "status")
            if fault is not None:
                read_body(h)
                headers_out = {}
                if fault.retry_after is not None:
                    headers_out["Retry-After"] = str(int(fault.retry_after))
                domain = "usageLimits" if fault.status in (403, 429) else "global"
                raise ApiError(
                    fault.status, fault.reason, "injected fault", domain=domain, headers=headers_out
                )
            lost = self._take_fault(call, "cut")
            if lost is None:
                self._serve(h, call, url.path, query)
            elif lost.applied:
                self._serve_unanswered(h, call, url.path, query)
            else:
                read_body(h)
                cut(h)
        except ApiError as exc:
            send_json(h, exc.status, exc.body, exc.headers)
        except Dropped:
            h.close_connection = True
        except Exception as exc:  # a bug in the fake: say so, and never as a retryable error
            send_json(h, 400, {"error": {"code": 400, "message": f"fake drive bug: {exc!r}"}})
            h.close_connection = True

    def _serve(self, h: Handler, call: str, path: str, query: dict[str, str]) -> None:
        allowed = COMMON_PARAMS | PARAMS.get(call.removesuffix("_media"), set())
        unknown = sorted(set(query) - allowed)
        if unknown:
            raise invalid(f"fake drive: parameter {unknown[0]} is not implemented", unknown[0])
        email, _scopes = self._authenticate(h, call)
        self._route(h, call, path, query, email)

    def _serve_unanswered(self, h: Handler, call: str, path: str, query: dict[str, str]) -> None:
        """Carry the request out, write its answer nowhere, then cut the connection."""
        wire = h.wfile
        h.wfile = io.BytesIO()
        try:
            self._serve(h, call, path, query)
        except ApiError:
            pass  # refused: nothing was done, and the refusal is lost like any answer
        finally:
            h.wfile = wire
        cut(h)

    def _take_fault(self, call: str, kind: str) -> Fault | None:
        with self.lock:
            for index, fault in enumerate(self.faults):
                if fault.kind == kind and fault.call in (None, call):
                    if fault.skip:
                        fault.skip -= 1
                        return None
                    return self.faults.pop(index)
        return None

    def _authenticate(self, h: Handler, call: str) -> tuple[str, frozenset[str]]:
        header = h.headers.get("Authorization", "")
        with self.lock:
            token = self.tokens.get(header.removeprefix("Bearer ")) if header else None
            if token is None or not token.valid or token.email in self.rejected:
                read_body(h)
                raise ApiError(
                    401,
                    "authError",
                    "Request had invalid authentication credentials. Expected OAuth 2 access "
                    "token, login cookie or other valid authentication credential.",
                    location="Authorization",
                    headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
                )
            write = call not in ("files.list", "files.get", "files.get_media")
            if DRIVE_SCOPE not in token.scopes and (write or READONLY_SCOPE not in token.scopes):
                read_body(h)
                raise ApiError(
                    403,
                    "insufficientPermissions",
                    "Request had insufficient authentication scopes.",
                    details=[{"reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT"}],
                )
            return token.email, token.scopes

    def _route(
        self,
        h: Handler,
        call: str,
        path: str,
        query: dict[str, str],
        email: str,
    ) -> None:
        file_id = path.rsplit("/", 1)[-1] if re.search(r"/files/[^/]+$", path) else None
        if call == "upload.chunk":
            return self._chunk(h, query, email)
        if call == "files.create":
            return self._create(h, query, email)
        body = read_body(h)
        if call == "files.list":
            return send_json(h, 200, self._list(query, email))
        if call == "permissions.create":
            return self._share(h, path, query, email, body)
        if file_id is None:
            raise invalid("missing file id", "fileId")
        with self.lock:
            item = self.files.visible(email, file_id)
            if call == "files.get_media":
                if item.content is None:
                    raise ApiError(
                        403,
                        "fileNotDownloadable",
                        "Only files with binary content can be downloaded.",
                    )
                content = item.content
            elif call == "files.get":
                return send_json(h, 200, self._render(email, item, query))
            elif call == "files.update":
                metadata = check_body(json.loads(body or b"{}"), WRITABLE_ON_UPDATE, update=True)
                if self.files.role(email, item) < ROLES["writer"]:
                    raise forbidden(item.id)
                if metadata.get("trashed"):
                    self.files.check_remove(email, item, permanently=False)
                item.name = metadata.get("name", item.name)
                item.trashed = bool(metadata.get("trashed", item.trashed))
                item.app_properties.update(metadata.get("appProperties", {}))
                return send_json(h, 200, self._render(email, item, query))
            else:  # files.delete
                self.files.check_remove(email, item, permanently=True)
                self.files.delete(item)
                return send(h, 204, b"", {})
        return self._media(h, content)

    def _share(self, h: Handler, path: str, query: dict[str, str], email: str, body: bytes) -> None:
        tree = requested(query, PERMISSION_SCHEMA, PERMISSION_DEFAULT)
        with self.lock:
            item = self.files.visible(email, path.split("/")[-2])
            permission = self.files.add_permission(email, item, json.loads(body or b"{}"))
        send_json(h, 200, select(permission, tree))

    def _render(self, email: str, item: FakeFile, query: dict[str, str]) -> dict[str, Any]:
        tree = requested(query, FILE_SCHEMA, FILE_DEFAULT)
        return select(self.files.resource(email, item), tree)

    def _list(self, query: dict[str, str], email: str) -> dict[str, Any]:
        tree = requested(query, LIST_SCHEMA, LIST_DEFAULT)
        try:
            size = int(query.get("pageSize", "100"))
        except ValueError:
            size = 0
        if not 1 <= size <= 1000:
            raise invalid(
                f"Invalid value '{query.get('pageSize')}'. Values must be within the range: "
                "[1, 1000]",
                "pageSize",
            )
        q = query.get("q", "")
        try:
            predicate = parse_query(q) if q else (lambda item: True)
        except QueryError as exc:
            raise invalid(f"Invalid Value ({exc})", "q") from exc
        offset = 0
        if "pageToken" in query:
            with self.lock:
                saved = self._pages.get(query["pageToken"])
            if saved is None or saved[0] != q:
                raise invalid("Invalid Value", "pageToken")
            offset = saved[1]
        with self.lock:
            items = [
                self.files.resource(email, f)
                for f in sorted(self.files.items.values(), key=lambda f: f.id)
                if self.files.role(email, f) > 0
            ]
            matching = [r for r in items if predicate(r)]
            page = matching[offset : offset + size]
            out: dict[str, Any] = {
                "kind": "drive#fileList",
                "incompleteSearch": False,
                "files": page,
            }
            if offset + size < len(matching):
                token = secrets.token_urlsafe(12)
                self._pages[token] = (q, offset + size)
                out["nextPageToken"] = token
        return select(out, tree)

    def _media(self, h: Handler, content: bytes) -> None:
        size = len(content)
        wanted = h.headers.get("Range")
        status, start, end = 200, 0, size
        if wanted:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted)
            if match is None:
                raise invalid("bad Range", "Range")
            start = int(match.group(1))
            end = min(size, int(match.group(2)) + 1) if match.group(2) else size
            if start >= size:
                return send(h, 416, b"", {"Content-Range": f"bytes */{size}"})
            status = 206
        headers = {"Content-Type": "application/octet-stream"}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        body = content[start:end]
        fault = self._take_fault("files.get_media", "drop")
        if fault is not None:
            h.send_response(status)
            for name, value in headers.items():
                h.send_header(name, value)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body[: fault.after_bytes])
            h.wfile.flush()
            cut(h)
        send(h, status, body, headers)


__all__ = ["GRANULE", "FakeDrive", "Session", "Token"]
