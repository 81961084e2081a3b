"""A real Prometheus server (Debian's ``prometheus``) scraping the endpoints a test names.

It runs on a free localhost port with its data in a temporary folder, scrapes every second, and
is queried through its HTTP API as a user's dashboards would. Fails loudly when the binary is
missing (``make monitor-env`` installs it)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Prometheus:
    url: str

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as answer:
            body = json.load(answer)
        if body.get("status") != "success":
            raise AssertionError(f"prometheus {path}: {body}")
        return body["data"]

    def query(self, promql: str) -> dict[str, float]:
        """An instant query: each series' job/instance (or name) -> value."""
        result = self.api("query", query=promql)["result"]
        return {
            ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items())): float(r["value"][1])
            for r in result
        }

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets")["activeTargets"])


def _config(jobs: Mapping[str, Sequence[str]]) -> str:
    lines = ["global:", "  scrape_interval: 1s", "  scrape_timeout: 1s", "scrape_configs:"]
    for job, targets in jobs.items():
        quoted = ", ".join(f'"{t}"' for t in targets)
        lines += [f"  - job_name: {job}", "    static_configs:", f"      - targets: [{quoted}]"]
    return "\n".join(lines) + "\n"


@contextmanager
def prometheus_server(root: Path, jobs: Mapping[str, Sequence[str]]) -> Iterator[Prometheus]:
    """Prometheus scraping ``jobs`` (job name -> host:port targets) until the block ends."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise AssertionError("Debian's prometheus is not installed: make monitor-env")
    root.mkdir(parents=True, exist_ok=True)
    (root / "prometheus.yml").write_text(_config(jobs))
    port = free_port()
    log = (root / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Prometheus(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(
                    f"prometheus exited: {(root / 'prometheus.log').read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("prometheus not ready within 60 s") from None
                time.sleep(0.3)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
