"""Early stopping in the coordinator's pure state machine, its persistence and its summary.

Hospitals report in round r the hold-out metrics of the model they started from, the global
model of round r-1: so the loss of round k's model reaches the coordinator when round k+1
closes, and a run stopped when round R closes ends with the model of an earlier round.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest

from common.errors import ConfigError, ProtocolError
from coordinator.state import (
    RunPlan,
    RunState,
    best_round,
    finish_run,
    from_json,
    new_run,
    to_json,
    with_final_report,
)
from coordinator.summary import operator_summary, public_summary
from tests.protocol.test_coordinator_state import T0, close, make_plan, with_quorum


def run_with_losses(losses: list[float], **plan: Any) -> tuple[RunPlan, RunState]:
    """Close rounds until the run leaves the round phase; in round r the hospitals report
    ``losses[r - 2]`` for the model of round r-1 (round 1 reports the initial model's 0.9)."""
    plan_ = make_plan(**plan)
    state = new_run(plan_, T0)
    while state.phase == "round":
        r = state.round
        state = with_quorum(state, loss=0.9 if r == 1 else losses[r - 2], auc=0.6)
        state = close(plan_, state, T0 + r, ref=f"agg-{r}")
    return plan_, state


def test_the_run_stops_after_patience_rounds_without_improvement_at_the_best_round() -> None:
    # Models of rounds 1..4 score 0.50, 0.40 (best), 0.45, 0.41: two rounds without a better
    # one once round 5 closes, of at most 10.
    _, state = run_with_losses([0.50, 0.40, 0.45, 0.41, 0.30], rounds=10, patience=2)
    assert state.phase == "final"
    assert len(state.history) == 5 and state.round == 5
    assert (state.final_round, state.stop_reason) == (2, "early-stopping")
    final = state.final_record
    assert final is not None and final.aggregate_ref == "agg-2"
    assert best_round(state.history) == 2


def test_each_improvement_restarts_the_count() -> None:
    _, state = run_with_losses([0.5, 0.45, 0.46, 0.40, 0.41, 0.42, 0.1], rounds=10, patience=2)
    assert (len(state.history), state.final_round, state.stop_reason) == (7, 4, "early-stopping")


def test_an_improvement_must_exceed_min_delta() -> None:
    # 0.495 and 0.49 are lower than 0.50, but by less than 0.02: round 1 stays the best.
    _, state = run_with_losses([0.50, 0.495, 0.49, 0.2], rounds=10, patience=2, min_delta=0.02)
    assert (len(state.history), state.final_round, state.stop_reason) == (4, 1, "early-stopping")


def test_without_patience_every_round_runs_and_the_last_model_is_final() -> None:
    _, state = run_with_losses([0.5, 0.6, 0.7, 0.8], rounds=5)
    assert (len(state.history), state.final_round, state.stop_reason) == (5, 5, "max-rounds")
    assert best_round(state.history) == 1


def test_reaching_the_round_limit_first_ends_with_the_last_model() -> None:
    _, state = run_with_losses([0.5, 0.4, 0.3], rounds=4, patience=3)
    assert (len(state.history), state.final_round, state.stop_reason) == (4, 4, "max-rounds")


def test_best_round_skips_rounds_without_a_loss() -> None:
    _, state = run_with_losses([0.5, 0.4, 0.45], rounds=4)
    assert best_round(state.history[:0]) is None
    assert best_round(state.history) == 2
    assert best_round(state.history, min_delta=0.2) == 1
    assert state.history[-1].model_metrics is None  # the last model is not evaluated yet


def test_finishing_an_early_stopped_run_keeps_the_best_rounds_metrics() -> None:
    plan, state = run_with_losses([0.50, 0.40, 0.45, 0.41], rounds=10, patience=2)
    state = with_final_report(plan, state, "h1", {"auc": 0.7, "loss": 0.399})
    done = finish_run(state)
    assert done.phase == "done"
    assert done.history == state.history  # the final reports score round 2's model again
    assert done.final_round == 2


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"patience": -1}, "patience must be >= 0"),
        ({"patience": 1.5}, "patience must be a whole number"),
        ({"patience": True}, "patience must be a whole number"),
        ({"min_delta": -0.01}, "min_delta must be a finite loss difference >= 0"),
        ({"min_delta": math.nan}, "min_delta must be a finite loss difference >= 0"),
    ],
)
def test_bad_early_stopping_settings_are_refused(overrides: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        make_plan(**overrides)


def test_the_decision_survives_persistence() -> None:
    _, state = run_with_losses([0.50, 0.40, 0.45, 0.41], rounds=10, patience=2)
    restored = from_json(to_json(state))
    assert restored == state
    assert (restored.final_round, restored.stop_reason) == (2, "early-stopping")


def test_a_state_saved_before_early_stopping_loads_as_a_run_of_every_round() -> None:
    _, state = run_with_losses([0.5, 0.4], rounds=3)
    body = json.loads(to_json(state))
    del body["final_round"], body["stop_reason"]
    old = from_json(json.dumps(body).encode())
    assert (old.final_round, old.stop_reason) == (3, "max-rounds")
    body = json.loads(to_json(new_run(make_plan(), T0)))
    del body["final_round"], body["stop_reason"]
    assert from_json(json.dumps(body).encode()).final_round == 0
    body = json.loads(to_json(state))
    del body["stop_reason"]  # one of the two missing is a cut file, not an old one
    with pytest.raises(ProtocolError, match="missing field stop_reason"):
        from_json(json.dumps(body).encode())


def test_the_summaries_say_how_many_rounds_ran_and_why_the_run_stopped() -> None:
    plan, state = run_with_losses([0.50, 0.40, 0.45, 0.41], rounds=10, patience=2)
    for summary in (operator_summary(plan, state), public_summary(plan, state)):
        assert summary["rounds_run"] == 5 and len(summary["rounds"]) == 5
        assert (summary["max_rounds"], summary["patience"], summary["min_delta"]) == (10, 2, 0.0)
        assert (summary["best_round"], summary["final_round"]) == (2, 2)
        assert summary["stopped"] == "early-stopping"
    running = operator_summary(plan, new_run(plan, T0))
    assert (running["rounds_run"], running["final_round"], running["stopped"]) == (0, None, None)
