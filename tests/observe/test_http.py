"""The read-only HTTP endpoint and Prometheus's exposition of metric families."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from common.errors import ConfigError
from common.observe import Family, HttpEndpoint, Sample, counter, gauge, histogram
from common.observe.families import labelled_counter
from common.observe.prometheus import Exposition


def fetch(url: str, method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def broken() -> tuple[bytes, str]:
    raise RuntimeError("secret detail of a broken route")


@pytest.fixture
def endpoint() -> HttpEndpoint:
    routes = {"/": lambda: (b"<p>hi</p>", "text/html"), "/broken": broken}
    with HttpEndpoint(routes, port=0) as served:
        yield served


def test_it_serves_its_routes_and_nothing_else(endpoint: HttpEndpoint) -> None:
    status, body, headers = fetch(endpoint.url)
    assert (status, body) == (200, b"<p>hi</p>")
    assert headers["Content-Type"] == "text/html"
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["Cache-Control"] == "no-store"
    assert fetch(endpoint.url + "?refresh=1")[0] == 200  # a query string is ignored
    assert fetch(endpoint.url + "nothing-here")[0] == 404
    assert fetch(endpoint.url + "../etc/passwd")[0] == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_it_is_read_only(endpoint: HttpEndpoint, method: str) -> None:
    status, _, headers = fetch(endpoint.url, method)
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"


def test_head_answers_without_a_body(endpoint: HttpEndpoint) -> None:
    status, body, headers = fetch(endpoint.url, "HEAD")
    assert (status, body, headers["Content-Length"]) == (200, b"", "9")


def test_a_broken_route_is_a_500_without_its_detail(endpoint: HttpEndpoint) -> None:
    status, body, _ = fetch(endpoint.url + "broken")
    assert status == 500
    assert b"secret" not in body
    assert fetch(endpoint.url)[0] == 200  # the endpoint goes on serving


def _outside_address() -> str:
    """This machine's address on its default route (not loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: it only picks the route
        address = str(probe.getsockname()[0])
    assert not address.startswith("127."), "this machine has no non-loopback address"
    return address


def test_by_default_it_answers_on_loopback_only(endpoint: HttpEndpoint) -> None:
    """A hospital on the network plays the attacker: the operator's page does not answer it."""
    with pytest.raises(OSError), socket.create_connection((_outside_address(), endpoint.port), 3):
        pass
    with socket.create_connection(("127.0.0.1", endpoint.port), 3):
        pass


def test_a_port_in_use_is_a_clear_error(endpoint: HttpEndpoint) -> None:
    with pytest.raises(ConfigError, match=rf"127.0.0.1:{endpoint.port}"):
        HttpEndpoint({}, port=endpoint.port)


def test_exposition_renders_counters_gauges_labels_histograms_and_the_process() -> None:
    families = [
        counter("hefl_rounds_closed", "Rounds", 3),
        gauge("hefl_round", "Round", 4),
        labelled_counter("hefl_rejected", "Refused", "reason", {"late": 2, "bad-signature": 1}),
        histogram("hefl_seconds", "Durations", [0.4, 3.0, 700.0]),
    ]
    body, content_type = Exposition(lambda: families).render()
    text = body.decode()
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "hefl_rounds_closed_total 3.0" in text
    assert "hefl_round 4.0" in text
    assert 'hefl_rejected_total{reason="bad-signature"} 1.0' in text
    assert 'hefl_seconds_bucket{le="0.5"} 1.0' in text
    assert 'hefl_seconds_bucket{le="5"} 2.0' in text
    assert 'hefl_seconds_bucket{le="+Inf"} 3.0' in text
    assert "hefl_seconds_count 3.0" in text
    assert "hefl_seconds_sum 703.4" in text
    assert "process_resident_memory_bytes" in text


def test_families_are_computed_at_each_scrape() -> None:
    value = [1]
    exposition = Exposition(lambda: [counter("hefl_n", "n", value[0])], process=False)
    assert b"hefl_n_total 1.0" in exposition.render()[0]
    value[0] = 5
    assert b"hefl_n_total 5.0" in exposition.render()[0]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: counter("hefl_x_total", "x", 1), "suffix"),
        (lambda: counter("hefl_x", "x", -1), "value"),
        (lambda: gauge("hefl_x", "x", float("nan")), "value"),
        (
            lambda: Family(name="x", kind="counter", help="x", samples=(Sample(1, {"a": "b"}),)),
            "labels",
        ),
    ],
)
def test_a_malformed_family_is_refused(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


def test_a_client_gone_mid_answer_leaves_no_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    """A scrape that timed out (the client closed first) is routine, not an error report."""
    release = threading.Event()

    def slow() -> tuple[bytes, str]:
        release.wait(5)
        return b"x" * 1_000_000, "text/plain"

    with HttpEndpoint({"/slow": slow}, port=0) as served:
        with socket.create_connection(("127.0.0.1", served.port), 3) as client:
            client.sendall(b"GET /slow HTTP/1.0\r\n\r\n")
            client.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
        release.set()
        time.sleep(0.5)
        assert fetch(served.url + "slow")[0] == 200
    assert "Traceback" not in capfd.readouterr().err
