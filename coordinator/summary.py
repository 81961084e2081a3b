"""What the coordinator says about a run in plaintext: pure functions of the plan and state.

Two audiences: the operator (``operator_summary``, kept in the coordinator's private state
store: per-hospital metrics, who failed, rejection counters) and the hospitals
(``public_summary``, written to the shared store: per round, the contributor count and the
mean metrics only).
"""

from __future__ import annotations

import json
from typing import Any

from coordinator.state import RunPlan, RunState, best_round


def stopping(plan: RunPlan, state: RunState) -> dict[str, Any]:
    """How the run ended (so far): rounds run, the final and the best round, and why it
    stopped (``max-rounds`` or ``early-stopping``; None while it runs or after a failure)."""
    return {
        "rounds_run": len(state.history),
        "max_rounds": plan.rounds,
        "patience": plan.patience,
        "min_delta": plan.min_delta,
        "best_round": best_round(state.history, plan.min_delta),
        "final_round": state.final_round or None,
        "stopped": state.stop_reason,
    }


def operator_summary(plan: RunPlan, state: RunState) -> dict[str, Any]:
    """Metrics, timings and bytes moved: everything the coordinator may say in plaintext."""
    return {
        "run": plan.run,
        "phase": state.phase,
        "error": state.error,
        **stopping(plan, state),
        "rounds": [
            {
                "round": r.round,
                "accepted": list(r.accepted),
                "failed": list(r.failed),
                "seconds": r.seconds,
                "attempts": r.attempts,
                "bytes_uploaded": r.bytes_uploaded,
                "train_loss": r.train_loss,
                "holdout_metrics_mean": r.model_metrics,
                "holdout_metrics_by_hospital": r.hospital_metrics,
                "aggregate": r.aggregate_ref,
            }
            for r in state.history
        ],
        "rejected": dict(state.rejected),
    }


def public_summary(plan: RunPlan, state: RunState) -> dict[str, Any]:
    """What hospitals may read: per round, the contributor count and aggregate metrics."""
    return {
        "run": plan.run,
        "phase": state.phase,
        **stopping(plan, state),
        "rounds": [
            {
                "round": r.round,
                "contributors": len(r.accepted),
                "seconds": r.seconds,
                "train_loss": r.train_loss,
                "holdout_metrics_mean": r.model_metrics,
                "aggregate": r.aggregate_ref,
            }
            for r in state.history
        ],
    }


def to_bytes(summary: dict[str, Any]) -> bytes:
    """A summary as the JSON file written to a store (no NaN: undefined metrics are absent)."""
    return json.dumps(summary, indent=1, allow_nan=False, default=str).encode()
