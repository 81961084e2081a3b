"""The fake Drive's HTTP plumbing: server, request routing names, answers, dropped connections.

Answers are written with ``Content-Length`` on a keep-alive HTTP/1.1 connection, as Google's
front end does; Nagle is off so that small answers are not held back by delayed ACKs.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from testkit.drive.model import ApiError

RECORDED_HEADERS = {"content-range", "range", "content-length", "x-upload-content-length"}


class Service(Protocol):
    def handle(self, h: Handler) -> None: ...


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # one small answer must not wait for a delayed ACK
    server: Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _dispatch(self) -> None:
        self.server.service.handle(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, service: Service) -> None:
        super().__init__(("127.0.0.1", 0), Handler)  # loopback only, ephemeral port
        self.service = service

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (a killed process, a dropped connection) is no error of ours."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class Dropped(Exception):
    """The handler cut the connection on purpose (an injected network failure)."""


def classify(method: str, path: str, query: dict[str, str]) -> str:
    """The API method a request calls, named as in the discovery document."""
    if path == "/token" and method == "POST":
        return "token"
    if path == "/upload/drive/v3/files":
        return {"POST": "files.create", "PUT": "upload.chunk"}.get(method, "unknown")
    if path == "/drive/v3/files":
        return {"GET": "files.list", "POST": "files.create"}.get(method, "unknown")
    if re.fullmatch(r"/drive/v3/files/[A-Za-z0-9_-]+/permissions", path):
        return "permissions.create" if method == "POST" else "unknown"
    if re.fullmatch(r"/drive/v3/files/[A-Za-z0-9_-]+", path):
        if method == "GET":
            return "files.get_media" if query.get("alt") == "media" else "files.get"
        return {"PATCH": "files.update", "DELETE": "files.delete"}.get(method, "unknown")
    return "unknown"


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, Any], bytes]:
    """A ``multipart/related`` upload: JSON metadata, then the media bytes."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/related") or match is None:
        raise ApiError(400, "badContent", "Unsupported content with type: " + content_type)
    delimiter = b"--" + match.group(1).encode()
    parts = body.split(delimiter)
    if len(parts) != 4 or not parts[3].startswith(b"--"):
        raise ApiError(400, "badContent", "Malformed multipart body.")
    sections = []
    for part in parts[1:3]:
        newline = b"\r\n" if part.startswith(b"\r\n") else b"\n"
        head, _, content = part[len(newline) :].partition(newline + newline)
        if not content.endswith(newline):
            raise ApiError(400, "badContent", "Malformed multipart body.")
        sections.append((head.decode("latin-1").lower(), content[: -len(newline)]))
    if "application/json" not in sections[0][0]:
        raise ApiError(400, "badContent", "The first part must be the JSON metadata.")
    return json.loads(sections[0][1]), sections[1][1]


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def read_body(h: Handler) -> bytes:
    return h.rfile.read(int(h.headers.get("Content-Length", "0") or 0))


def cut(h: Handler) -> None:
    """Drop the connection without an answer, as a network failure would."""
    with contextlib.suppress(OSError):
        h.connection.shutdown(socket.SHUT_RDWR)
    raise Dropped


def send(h: Handler, status: int, body: bytes, headers: dict[str, str]) -> None:
    h.send_response(status)
    for name, value in headers.items():
        h.send_header(name, value)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def send_json(h: Handler, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(payload).encode()
    send(h, status, body, {"Content-Type": "application/json; charset=UTF-8", **(headers or {})})
