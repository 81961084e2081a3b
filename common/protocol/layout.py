"""Where each blob of a run lives in the store (shared by coordinator and hospitals).

One folder per site and one for the aggregates, so that a store with permissions (Drive) can
let each hospital write only its own folder and read the aggregates, while only the coordinator
reads the update folders. The coordinator's state and its per-hospital summary are not in the
shared store at all: they live in its private state folder (``coordinator.service``).
"""

from __future__ import annotations

from typing import Final

RUNS_PREFIX: Final = "runs/"
STATE_FILE: Final = "coordinator-state.json"


def run_prefix(run: str) -> str:
    return f"runs/{run}"


def updates_prefix(run: str, hospital: str) -> str:
    """The folder only ``hospital`` (and the coordinator) may use."""
    return f"{run_prefix(run)}/updates/{hospital}"


def update_key(run: str, round_: int, hospital: str) -> str:
    return f"{updates_prefix(run, hospital)}/round-{round_:04d}.blob"


def round_of_update(key: str) -> int | None:
    """The round an ``update_key`` names (None: not an update key)."""
    name = key.rsplit("/", 1)[-1]
    if not (name.startswith("round-") and name.endswith(".blob")):
        return None
    digits = name[len("round-") : -len(".blob")]
    return int(digits) if digits.isdigit() else None


def aggregates_prefix(run: str) -> str:
    """The folder every hospital reads."""
    return f"{run_prefix(run)}/aggregates"


def aggregate_key(run: str, round_: int) -> str:
    return f"{aggregates_prefix(run)}/round-{round_:04d}.blob"


def public_summary_key(run: str) -> str:
    """What hospitals may read of the run's progress: aggregate metrics only."""
    return f"{aggregates_prefix(run)}/summary.json"


def state_key(run: str) -> str:
    """The coordinator's signed state, in its private state store."""
    return f"{run_prefix(run)}/{STATE_FILE}"


def summary_key(run: str) -> str:
    """The operator's summary (per-hospital metrics), in the coordinator's private state store."""
    return f"{run_prefix(run)}/summary.json"
