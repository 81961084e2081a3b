"""The coordinator's read-only HTTP routes: the status page, its JSON and ``/metrics``."""

from __future__ import annotations

import json
from typing import Any, Protocol

from common.observe import Family, Route
from common.observe.prometheus import Exposition
from coordinator import status_page


class Watched(Protocol):
    """What the routes read from a running coordinator (``coordinator.service.Coordinator``)."""

    def status(self) -> dict[str, Any]: ...

    def metric_families(self) -> list[Family]: ...


def status_routes(coordinator: Watched) -> dict[str, Route]:
    exposition = Exposition(coordinator.metric_families)

    def page() -> tuple[bytes, str]:
        return status_page.render(coordinator.status()).encode(), "text/html; charset=utf-8"

    def api() -> tuple[bytes, str]:
        body = json.dumps(coordinator.status(), indent=1, allow_nan=False)
        return body.encode(), "application/json"

    return {"/": page, "/api/status": api, "/metrics": exposition.render}
