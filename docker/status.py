#!/usr/bin/env python3
"""`make status`: the compose cluster's containers, health, hospital sites and run progress.

Uses the Docker SDK for Python (the ``docker`` package, pyproject's ``ops`` extra). Each hospital
site is its own service (``hospital-K``, with its one-shot ``keys-hospital-K``); the IDENTITY
column is the ``HEFL_HOSPITAL`` a container was configured with. Progress is the coordinator's
last ``round N/M closed`` line and, when this user can read the coordinator's state volume, the
persisted run state (phase, round, accepted hospitals per round). Last, the URLs of the
coordinator's status page and of Prometheus, at the host ports compose published them on.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from docker.errors import DockerException

import docker

ROUND_LINE = re.compile(r"^(round \d+/\d+ closed.*|run .* finished.*)$", re.MULTILINE)
IDENTITY = "HEFL_HOSPITAL="
#: service -> (what it serves, its port inside the container) (docker/compose.yaml)
PUBLISHED = {"coordinator": ("status page", 8080), "prometheus": ("prometheus", 9090)}


def describe(container: Any) -> dict[str, str]:
    state = container.attrs["State"]
    # Docker keeps the last health status of a stopped container; it means nothing there.
    health = state.get("Health", {}).get("Status", "-") if state["Running"] else "-"
    labels = container.labels
    row = {
        "service": labels.get("com.docker.compose.service", "?"),
        "container": container.name,
        "state": state["Status"]
        + (f" ({state['ExitCode']})" if state["Status"] == "exited" else ""),
        "health": health,
        "identity": "",
    }
    for variable in container.attrs["Config"].get("Env") or []:
        if variable.startswith(IDENTITY):  # a site's name, never a secret
            row["identity"] = variable[len(IDENTITY) :]
    return row


def _order(row: dict[str, str]) -> tuple[str, int, str]:
    """Services by name, hospital-2 before hospital-10."""
    stem, _, number = row["service"].rpartition("-")
    return (stem, int(number), row["container"]) if number.isdigit() else (row["service"], 0, "")


def published_url(container: Any, port: int) -> str | None:
    """``http://HOST:PORT/`` where the host reaches ``port`` of the container: its live binding
    when it runs, else the one it was created with (compose publishes on 127.0.0.1)."""
    key = f"{port}/tcp"
    bindings = (container.attrs["NetworkSettings"].get("Ports") or {}).get(key) or (
        container.attrs["HostConfig"].get("PortBindings") or {}
    ).get(key)
    if not bindings:
        return None
    host = bindings[0].get("HostIp") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{bindings[0]['HostPort']}/" if bindings[0].get("HostPort") else None


def urls(containers: list[Any]) -> dict[str, str]:
    """What the operator opens: the status page and Prometheus, with the container's state."""
    found = {}
    for container in containers:
        service = container.labels.get("com.docker.compose.service")
        if service in PUBLISHED:
            what, port = PUBLISHED[service]
            url = published_url(container, port)
            if url is not None:
                found[what] = url + ("" if container.status == "running" else " (not running)")
    return found


def run_state(client: Any, project: str, run: str | None) -> dict[str, Any] | None:
    try:
        volume = client.volumes.get(f"{project}_coordinator-state")
        runs = Path(volume.attrs["Mountpoint"]) / "runs"
        if run is None:  # the newest run the coordinator keeps state for
            found = sorted(runs.glob("*/coordinator-state.json"), key=lambda p: p.stat().st_mtime)
            if not found:
                return None
            run = found[-1].parent.name
        path = runs / run / "coordinator-state.json"
        # The coordinator signs its state; the operator's view only reads the body.
        return json.loads(json.loads(path.read_text())["state"])
    except (DockerException, OSError, ValueError, KeyError, TypeError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="hefl")
    parser.add_argument("--run", help="run id (default: the newest run of the coordinator)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    try:
        client = docker.from_env()  # the docker package (the SDK), not this folder
        containers = client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={args.project}"}
        )
    except DockerException as exc:
        print(f"error: cannot reach the Docker engine: {exc}", file=sys.stderr)
        return 1
    rows = sorted((describe(c) for c in containers), key=_order)
    progress = []
    for container in containers:
        if container.labels.get("com.docker.compose.service") == "coordinator":
            progress = ROUND_LINE.findall(container.logs(tail=5000).decode(errors="replace"))
    state = run_state(client, args.project, args.run)
    if args.json:
        found = {"containers": rows, "progress": progress, "state": state, "urls": urls(containers)}
        print(json.dumps(found, indent=2))
        return 0
    if not rows:
        print(f"no containers of project {args.project}: make up")
        return 0
    print(f"{'SERVICE':<18} {'CONTAINER':<32} {'STATE':<14} {'HEALTH':<10} IDENTITY")
    for r in rows:
        print(
            f"{r['service']:<18} {r['container']:<32} {r['state']:<14} {r['health']:<10} "
            f"{r['identity']}"
        )
    print(f"progress: {progress[-1] if progress else 'no round closed yet'}")
    if state is not None:
        accepted = [len(record["accepted"]) for record in state.get("history", [])]
        print(
            f"run {state.get('run')}: phase {state.get('phase')} round {state.get('round')} "
            f"accepted per round {accepted} rejected {state.get('rejected')}"
        )
    for what, url in urls(containers).items():
        print(f"{what}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
