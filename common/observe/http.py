"""A read-only HTTP endpoint on a thread of its own: the status page and ``/metrics``.

Only GET and HEAD of the configured paths; anything else is 404 or 405. A route computes its
body from state the process already holds (read, never changed), so serving cannot disturb
the run; an error inside a route is a 500 with no detail and a log line. It binds 127.0.0.1
unless told otherwise: what it shows is for the machine's operator.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from common.errors import ConfigError
from common.logs import log_event

logger = logging.getLogger("hefl.http")

#: A route: () -> (body, content type).
Route = Callable[[], tuple[bytes, str]]

DEFAULT_HOST = "127.0.0.1"

_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # The page is one document with inline styles and SVG: no script, nothing fetched.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
}


def _handler(routes: Mapping[str, Route]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "hefl"
        sys_version = ""

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def _answer(self, *, send_body: bool) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                self._send(404, b"not found\n", "text/plain; charset=utf-8", send_body)
                return
            try:
                body, content_type = route()
            except Exception as exc:  # a broken page must not take the run down
                log_event(logger, "http_error", level=logging.ERROR, path=self.path, error=exc)
                self._send(500, b"internal error\n", "text/plain; charset=utf-8", send_body)
                return
            self._send(200, body, content_type, send_body)

        def _send(self, status: int, body: bytes, content_type: str, send_body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in _HEADERS.items():
                self.send_header(name, value)
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def _refuse(self) -> None:
            self.send_response(405)
            self.send_header("Allow", "GET, HEAD")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

        def log_message(self, format: str, *args: object) -> None:
            log_event(logger, "http_request", level=logging.DEBUG, request=format % args)

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client gone mid-answer (a scrape that timed out) is routine: one line, no trace."""
        error = sys.exc_info()[1]
        level = logging.DEBUG if isinstance(error, ConnectionError) else logging.WARNING
        log_event(logger, "http_client_error", level=level, client=client_address, error=error)


class HttpEndpoint:
    """Serves ``routes`` on ``host:port`` (port 0: any free port) until :meth:`close`."""

    def __init__(self, routes: Mapping[str, Route], *, host: str = DEFAULT_HOST, port: int) -> None:
        self._routes = dict(routes)
        try:
            self._server = _Server((host, port), _handler(self._routes))
        except OSError as exc:
            raise ConfigError(f"cannot serve HTTP on {host}:{port}: {exc.strerror or exc}") from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"http-{port}", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._server.server_address[0])
        return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{self.port}/"

    def start(self) -> HttpEndpoint:
        self._thread.start()
        log_event(logger, "http_serving", url=self.url, paths=",".join(sorted(self._routes)))
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HttpEndpoint:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()
