"""What the coordinator's operator sees while a run goes on: ``/api/status`` and ``/metrics``.

Pure functions of the plan, the run state, when each hospital was last heard from and a few
running totals (:class:`Meter`). The status names hospitals (the roster, last seen, each one's
part in the current round): it is the operator's, served on the coordinator's own HTTP endpoint
only, never written to the shared store. The metrics hold no per-hospital figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.observe.families import Family, counter, gauge, histogram, labelled_counter
from coordinator.state import RunPlan, RunState


@dataclass
class Meter:
    """Running totals of this coordinator process (the rest comes from the run state)."""

    bytes_received: int = 0  # update blobs read from the store
    bytes_sent: int = 0  # aggregates and public summaries written to the store
    aggregation_seconds: float = 0.0  # adding blobs into the running sum, writing the aggregate


def phase_text(plan: RunPlan, state: RunState) -> str:
    """The run's phase in words, e.g. ``round 3: masked upload, attempt 2 (4 participants)``."""
    if state.phase == "round":
        if state.participants:
            return (
                f"round {state.round}: masked upload, attempt {state.attempt} "
                f"({len(state.participants)} participants)"
            )
        if plan.masking:
            return f"round {state.round}: training ({len(state.ready)} ready)"
        return f"round {state.round}: training and upload ({len(state.accepted)} received)"
    if state.phase == "final":
        return f"final: waiting for reports ({len(state.final_reports)} in)"
    return {"done": "done", "failed": "failed"}.get(state.phase, state.phase)


def _part(state: RunState, hospital: str) -> str:
    """A hospital's part in the current round."""
    if state.phase == "final":
        return "reported" if any(h == hospital for h, _ in state.final_reports) else "-"
    for part, members in (
        ("accepted", state.accepted_hospitals),
        ("failed", state.failed),
        ("participant", state.participants),
        ("ready", state.ready),
    ):
        if hospital in members:
            return part
    return "-"


def status(
    plan: RunPlan, state: RunState, *, seen: Mapping[str, float], meter: Meter, now: float
) -> dict[str, Any]:
    """The operator's view of the run (JSON-ready: no NaN)."""
    roster = [
        {
            "hospital": name,
            "present": name in state.roster,
            "last_seen_seconds": None if name not in seen else round(now - seen[name], 1),
            "this_round": _part(state, name),
        }
        for name in plan.hospitals
    ]
    rounds = [
        {
            "round": r.round,
            "contributors": len(r.accepted),
            "failed": len(r.failed),
            "attempts": r.attempts,
            "seconds": round(r.seconds, 3),
            "bytes_uploaded": r.bytes_uploaded,
            "train_loss": _finite(r.train_loss),
            # Hold-out metrics of this round's global model, reported with the next round.
            "auc": _finite((r.model_metrics or {}).get("auc")),
            "loss": _finite((r.model_metrics or {}).get("loss")),
        }
        for r in state.history
    ]
    deadline = state.mask_deadline if state.participants else state.deadline
    return {
        "run": plan.run,
        "phase": state.phase,
        "activity": phase_text(plan, state),
        "round": state.round,
        "rounds": plan.rounds,
        "rounds_closed": len(state.history),
        "masking": plan.masking,
        "deadline_seconds": round(deadline - now, 1) if state.phase in ("round", "final") else None,
        "error": state.error,
        # Set once the run's rounds are over: the round whose model is final and why it ended
        # there (``max-rounds`` or ``early-stopping``, with the plan's patience and min_delta).
        "final_round": state.final_round or None,
        "stop_reason": state.stop_reason,
        "patience": plan.patience,
        "min_delta": plan.min_delta,
        "roster": roster,
        "history": rounds,
        "rejected": dict(sorted(state.rejected.items())),
        "bytes_received": meter.bytes_received,
        "bytes_sent": meter.bytes_sent,
        "aggregation_seconds": round(meter.aggregation_seconds, 3),
    }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def metric_families(plan: RunPlan, state: RunState, *, meter: Meter) -> list[Family]:
    """The coordinator's Prometheus metrics: no hospital's name or figure in any of them."""
    accepted = sum(len(r.accepted) for r in state.history) + len(state.accepted)
    evaluated = [r.model_metrics for r in state.history if r.model_metrics]
    auc = (evaluated[-1] or {}).get("auc", math.nan) if evaluated else math.nan
    families = [
        counter(
            "hefl_rounds_closed", "Rounds of the run closed with an aggregate", len(state.history)
        ),
        gauge("hefl_round", "The run's current round", state.round),
        gauge("hefl_rounds_planned", "Rounds the run is planned for", plan.rounds),
        gauge("hefl_run_finished", "1 once the run is done, -1 if it failed", _finished(state)),
        histogram(
            "hefl_round_duration_seconds",
            "Seconds from a round's announcement to its aggregate",
            (r.seconds for r in state.history),
        ),
        gauge("hefl_hospitals_present", "Hospitals on the roster this round", len(state.roster)),
        counter("hefl_submissions_accepted", "Encrypted updates summed", accepted),
        labelled_counter(
            "hefl_submissions_rejected",
            "Messages refused, by reason",
            "reason",
            dict(state.rejected),
        ),
        counter("hefl_bytes_received", "Update bytes read from the store", meter.bytes_received),
        counter("hefl_bytes_sent", "Aggregate and summary bytes written", meter.bytes_sent),
        counter(
            "hefl_aggregation_seconds",
            "Seconds spent adding ciphertexts and writing aggregates",
            meter.aggregation_seconds,
        ),
    ]
    if math.isfinite(auc):
        families.append(
            gauge("hefl_model_auc", "Mean hold-out AUC of the last evaluated model", auc)
        )
    return families


def _finished(state: RunState) -> int:
    return {"done": 1, "failed": -1}.get(state.phase, 0)
