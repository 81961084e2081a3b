"""Where each blob of a run lives in the store (shared by coordinator and hospitals)."""

from __future__ import annotations


def run_prefix(run: str) -> str:
    return f"runs/{run}"


def update_key(run: str, round_: int, hospital: str) -> str:
    return f"{run_prefix(run)}/round-{round_:04d}/update-{hospital}.blob"


def aggregate_key(run: str, round_: int) -> str:
    return f"{run_prefix(run)}/round-{round_:04d}/aggregate.blob"


def state_key(run: str) -> str:
    return f"{run_prefix(run)}/coordinator-state.json"


def summary_key(run: str) -> str:
    return f"{run_prefix(run)}/summary.json"
