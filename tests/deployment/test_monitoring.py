"""Watching a live run as its operator does: a real Prometheus scrapes it, Chromium shows its
status page (real processes on a real RabbitMQ, Debian's prometheus and chromium).

The hospitals are frozen (SIGSTOP) while the page is captured, so the round cannot move between
what ``/api/status`` reports and what the browser shows.
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from testkit.browser import read_png, rendered_dom, screenshot
from testkit.cluster import ProcessCluster, process_cluster, sample_csv
from testkit.prometheus import Prometheus, free_port, prometheus_server

ROUNDS = 4
HOSPITALS = 3


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sample_csv(tmp_path_factory.mktemp("data") / "sample.csv", patients=1500)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return str(answer.read().decode())


def eventually(check: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except (OSError, AssertionError) as exc:
            found, error = None, exc
        else:
            error = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}: {error}")
        time.sleep(0.5)


def settled_status(api: str) -> dict[str, Any]:
    """/api/status once it stopped changing for 2 s (messages in flight have landed)."""
    last = get_json(api)
    while True:
        time.sleep(2)
        now = get_json(api)
        if (now["round"], now["activity"]) == (last["round"], last["activity"]):
            return dict(now)
        last = now


def capture(cluster: ProcessCluster, page: str, tmp_path: Path) -> tuple[dict[str, Any], str]:
    """With every hospital frozen: the status, then the page as Chromium renders it (and a
    screenshot), then the status again, which must not have moved."""
    api = page + "api/status"
    for name in cluster.names:
        cluster.signal(name, signal.SIGSTOP)
    try:
        for _ in range(3):
            before = settled_status(api)
            screenshot(page, tmp_path / "status.png")
            dom = rendered_dom(page, tmp_path)
            after = get_json(api)
            if after["round"] == before["round"]:
                return before, dom
        raise AssertionError(f"the round kept moving: {before['round']} -> {after['round']}")
    finally:
        for name in cluster.names:
            cluster.signal(name, signal.SIGCONT)


def value(prometheus: Prometheus, promql: str) -> dict[str, float]:
    return prometheus.query(promql)


def test_prometheus_scrapes_a_live_run_and_chromium_shows_its_round(
    tmp_path: Path, broker: ModuleType, source: Path
) -> None:
    with process_cluster(tmp_path, hospitals=HOSPITALS, rounds=ROUNDS) as cluster:
        cluster.prepare(source)
        ports = {name: free_port() for name in ["coordinator", *cluster.names]}
        jobs = {
            "coordinator": [f"127.0.0.1:{ports['coordinator']}"],
            "hospitals": [f"127.0.0.1:{ports[name]}" for name in cluster.names],
        }
        with prometheus_server(tmp_path / "prometheus", jobs) as prometheus:
            cluster.start_coordinator(
                "--http-port", str(ports["coordinator"]), "--http-linger", "60"
            )
            for name in cluster.names:
                cluster.start_hospital(name, "--http-port", str(ports[name]))
            page = f"http://127.0.0.1:{ports['coordinator']}/"
            cluster.wait_for(
                # round 1's model is evaluated with round 2's submissions: its AUC is known
                lambda s: len(s["history"]) >= 2 and s["phase"] == "round",
                timeout=300,
                what="round 2 closed",
            )

            # Every target is scraped while the run goes on.
            eventually(
                lambda: len(value(prometheus, "up == 1")) == 1 + HOSPITALS,
                timeout=30,
                what="the coordinator and every hospital up in Prometheus",
            )

            status, dom = capture(cluster, page, tmp_path)
            shown = re.search(r'id="round" data-round="(\d+)"', dom)
            assert shown is not None, dom[:2000]
            assert int(shown[1]) == status["round"] >= 3
            assert status["run"] == cluster.run and status["run"] in dom
            assert dom.count("<svg") == 3  # AUC, loss and round durations
            assert "<polyline" in dom  # a line is drawn: at least one closed round
            for name in cluster.names:
                assert name in dom  # the operator's roster
            png = read_png(tmp_path / "status.png")
            assert (png.width, png.height) == (1280, 1600)
            assert png.distinct_bytes > 50, "the screenshot is blank"

            # The run ends; the coordinator lingers, so the last scrape sees every round.
            cluster.wait_for(lambda s: s["phase"] == "done", timeout=600, what="the run's end")
            closed = len(cluster.summary()["rounds"])
            assert closed == ROUNDS
            eventually(
                lambda: (
                    value(prometheus, "max_over_time(hefl_rounds_closed_total[10m])")
                    == {f"instance=127.0.0.1:{ports['coordinator']},job=coordinator": closed}
                ),
                timeout=60,
                what=f"hefl_rounds_closed_total = {closed} in Prometheus",
            )
            # A hospital exits once its final model is saved, perhaps before its last scrape, and
            # a scrape that lands while it trains may time out (TensorFlow holds the process):
            # on a loaded machine one hospital may never be seen past round 0.
            done = value(prometheus, "max_over_time(hefl_hospital_rounds_done_total[10m])")
            assert len(done) == HOSPITALS
            assert all(0 <= n <= ROUNDS for n in done.values()), done
            assert max(done.values()) >= status["round"] - 1, done
            accepted = value(prometheus, "max_over_time(hefl_submissions_accepted_total[10m])")
            assert list(accepted.values()) == [float(ROUNDS * HOSPITALS)]
            trained = value(prometheus, "max_over_time(hefl_hospital_training_seconds_total[10m])")
            assert len(trained) == HOSPITALS and min(trained.values()) > 0
            memory = value(prometheus, 'process_resident_memory_bytes{job="coordinator"}')
            assert memory and min(memory.values()) > 10e6

            # No hospital's name in what the coordinator lets Prometheus keep.
            metrics = get_text(page + "metrics")
            assert "hefl_rounds_closed_total" in metrics
            assert "hospital-" not in metrics
