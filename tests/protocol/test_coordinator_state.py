"""Tests of the coordinator's pure round state machine: no broker, no store, no clock."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from typing import Any

import pytest

from common.crypto.cipher import AGGREGATE, UPDATE
from common.errors import ConfigError, ProtocolError
from common.fedavg import MIN_CONTRIBUTORS
from coordinator.state import (
    DEFAULT_HELLO_INTERVAL,
    Accepted,
    RoundRecord,
    RunPlan,
    RunState,
    close_round,
    fail_run,
    final_decision,
    finish_run,
    fix_participants,
    from_json,
    judge_blob,
    judge_ready,
    judge_submission,
    new_run,
    refix_participants,
    round_decision,
    to_json,
    with_accepted,
    with_failed,
    with_final_report,
    with_hello,
    with_member,
    with_ready,
    with_rejection,
)

T0 = 1_000.0
ROUND_TIMEOUT = 60.0
FINAL_TIMEOUT = 30.0


def make_plan(**overrides: Any) -> RunPlan:
    values: dict[str, Any] = {
        "run": "run-1",
        "rounds": 3,
        "hospitals": ("h1", "h2", "h3", "h4"),
        "min_hospitals": 3,
        "round_timeout": ROUND_TIMEOUT,
        "final_timeout": FINAL_TIMEOUT,
        "config_digest": "cfg",
        "value_count": 10,
    }
    values.update(overrides)
    return RunPlan(**values)


def accepted(hospital: str, *, size: int = 100, **metrics: float) -> Accepted:
    return Accepted(
        hospital=hospital,
        blob_ref=f"runs/run-1/update-{hospital}.blob",
        sha256=f"sha-{hospital}",
        size=size,
        metrics=dict(metrics),
        envelope=f"signed-{hospital}",
    )


def with_quorum(state: RunState, **metrics: float) -> RunState:
    """h1, h2 and h3 answer the current round (the smallest quorum); h4 does not."""
    for hospital in ("h1", "h2", "h3"):
        state = with_accepted(state, replace(accepted(hospital), metrics=dict(metrics)))
    return state


def close(plan: RunPlan, state: RunState, now: float, ref: str = "agg") -> RunState:
    return close_round(plan, state, aggregate_ref=ref, aggregate_sha256=f"sha-{ref}", now=now)


# -- RunPlan -----------------------------------------------------------------------------------


def test_valid_plan_is_accepted() -> None:
    plan = make_plan()
    assert plan.rounds == 3
    assert plan.value_count == 10
    assert plan.hello_interval == DEFAULT_HELLO_INTERVAL
    assert make_plan(min_hospitals=4).min_hospitals == 4
    assert make_plan(hospitals=("h1", "h2", "h3")).hospitals == ("h1", "h2", "h3")
    assert make_plan(value_count=2).value_count == 2
    assert make_plan(hello_interval=0.0).hello_interval == 0.0
    assert MIN_CONTRIBUTORS == 3


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"rounds": 0}, "rounds"),
        ({"rounds": -2}, "rounds"),
        ({"hospitals": ()}, "hospitals"),
        ({"hospitals": ("h1", "h2", "h1")}, "distinct"),
        ({"hospitals": ("solo",)}, "at least 3 hospitals"),
        ({"hospitals": ("solo",), "min_hospitals": 1}, "at least 3 hospitals"),
        ({"hospitals": ("h1", "h2")}, "at least 3 hospitals"),
        ({"hospitals": ("h1", "h2"), "min_hospitals": 2}, "at least 3 hospitals"),
        ({"min_hospitals": 0}, "min_hospitals"),
        ({"min_hospitals": 1}, "min_hospitals must be within 3..4"),
        ({"min_hospitals": 2}, "min_hospitals must be within 3..4"),
        ({"min_hospitals": 2}, "never closes with fewer than 3"),
        ({"min_hospitals": 5}, "min_hospitals"),
        ({"value_count": 0}, "value_count"),
        ({"value_count": 1}, "value_count"),
        ({"value_count": "3"}, "value_count"),
        ({"hello_interval": -1.0}, "hello_interval"),
        ({"hello_interval": math.nan}, "hello_interval"),
        ({"hello_interval": math.inf}, "hello_interval"),
        ({"round_timeout": 0.0}, "round_timeout"),
        ({"round_timeout": -1.0}, "round_timeout"),
        ({"round_timeout": math.nan}, "round_timeout"),
        ({"round_timeout": math.inf}, "round_timeout"),
        ({"final_timeout": 0.0}, "final_timeout"),
        ({"final_timeout": math.nan}, "final_timeout"),
    ],
    ids=lambda value: repr(value)[:30] if isinstance(value, dict) else None,
)
def test_invalid_plan_raises_config_error(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        make_plan(**overrides)


def test_new_run_opens_round_one_with_a_deadline() -> None:
    state = new_run(make_plan(), T0)
    assert (state.phase, state.round) == ("round", 1)
    assert state.started_at == T0
    assert state.deadline == T0 + ROUND_TIMEOUT
    assert state.global_ref is None  # round 1 starts from the initial weights
    assert state.accepted == () and state.history == () and state.rejected == {}


# -- judge_submission ----------------------------------------------------------------------------


def test_judge_accepts_a_first_submission_for_the_current_round() -> None:
    plan = make_plan()
    assert judge_submission(plan, new_run(plan, T0), "run-1", 1, "h1") == ""


def test_judge_rejects_other_run_before_anything_else() -> None:
    plan = make_plan()
    assert judge_submission(plan, new_run(plan, T0), "run-0", 1, "stranger") == "other-run"


def test_judge_rejects_unknown_hospital() -> None:
    plan = make_plan()
    assert judge_submission(plan, new_run(plan, T0), "run-1", 1, "h9") == "unknown-hospital"


def test_judge_rejects_an_earlier_round_as_late() -> None:
    plan = make_plan()
    state = close(plan, with_quorum(new_run(plan, T0)), T0 + 5)
    assert state.round == 2
    assert judge_submission(plan, state, "run-1", 1, "h4") == "late"
    assert judge_submission(plan, state, "run-1", 2, "h4") == ""


@pytest.mark.parametrize("phase", ["final", "done", "failed"])
def test_judge_rejects_any_submission_after_the_rounds_as_late(phase: str) -> None:
    plan = make_plan()
    state = replace(new_run(plan, T0), phase=phase, round=3)  # type: ignore[arg-type]
    assert judge_submission(plan, state, "run-1", 3, "h1") == "late"
    assert judge_submission(plan, state, "run-1", 4, "h1") == "late"


def test_judge_rejects_future_round() -> None:
    plan = make_plan()
    assert judge_submission(plan, new_run(plan, T0), "run-1", 2, "h1") == "future-round"


def test_judge_rejects_a_second_answer_from_the_same_hospital_as_duplicate() -> None:
    plan = make_plan()
    state = with_accepted(new_run(plan, T0), accepted("h1"))
    state = with_failed(state, "h2")
    assert judge_submission(plan, state, "run-1", 1, "h1") == "duplicate"
    assert judge_submission(plan, state, "run-1", 1, "h2") == "duplicate"
    assert judge_submission(plan, state, "run-1", 1, "h3") == ""


def test_with_accepted_and_with_failed_do_not_mutate_their_argument() -> None:
    plan = make_plan()
    state = new_run(plan, T0)
    after = with_failed(with_accepted(state, accepted("h1")), "h2")
    assert state.accepted == () and state.failed == ()
    assert after.accepted_hospitals == ("h1",)
    assert after.failed == ("h2",)


# -- judge_blob ----------------------------------------------------------------------------------


def blob_verdict(**overrides: Any) -> str:
    """Judge an update blob's header against the signed message (run-1, round 2, h3)."""
    header: dict[str, Any] = {
        "kind": UPDATE,
        "summands": 1,
        "value_count": 10,
        "binding": ("run-1", 2, "h3"),
    }
    header.update(overrides)
    return judge_blob(make_plan(), **header, run="run-1", round_=2, hospital="h3")


def test_judge_blob_accepts_a_header_that_fits_the_plan_and_the_message() -> None:
    assert blob_verdict() == ""
    assert (
        judge_blob(
            make_plan(value_count=2),
            kind=UPDATE,
            summands=1,
            value_count=2,
            binding=("run-1", 1, "h1"),
            run="run-1",
            round_=1,
            hospital="h1",
        )
        == ""
    )


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"kind": AGGREGATE}, "blob-kind"),
        ({"kind": "weights"}, "blob-kind"),
        ({"summands": 100}, "blob-summands"),
        ({"summands": 0}, "blob-summands"),
        ({"summands": 3}, "blob-summands"),
        ({"value_count": 9}, "blob-values"),
        ({"value_count": 11}, "blob-values"),
        ({"binding": ("run-1", 2, "h1")}, "blob-binding"),  # signed by h3, made for h1
        ({"binding": ("run-1", 1, "h3")}, "blob-binding"),  # h3's blob of an earlier round
        ({"binding": ("run-0", 2, "h3")}, "blob-binding"),  # h3's blob of another run
    ],
    ids=lambda value: repr(value)[:30] if isinstance(value, dict) else None,
)
def test_judge_blob_rejects_a_header_that_does_not_fit(
    overrides: dict[str, Any], reason: str
) -> None:
    assert blob_verdict(**overrides) == reason


# -- round_decision ------------------------------------------------------------------------------


def test_waits_until_every_hospital_answered() -> None:
    plan = make_plan()
    state = new_run(plan, T0)
    assert round_decision(plan, state, T0 + 1) == "wait"
    state = with_quorum(state)  # quorum reached, but h4 may still answer
    assert round_decision(plan, state, T0 + 1) == "wait"


def test_closes_when_everyone_answered_with_quorum() -> None:
    plan = make_plan()
    state = new_run(plan, T0)
    for hospital in ("h1", "h2", "h3"):
        state = with_accepted(state, accepted(hospital))
    state = with_failed(state, "h4")
    assert round_decision(plan, state, T0 + 1) == "close"


def test_closes_at_the_deadline_with_quorum() -> None:
    plan = make_plan()
    state = with_quorum(new_run(plan, T0))
    assert round_decision(plan, state, state.deadline - 0.001) == "wait"
    assert round_decision(plan, state, state.deadline) == "close"
    assert round_decision(plan, state, state.deadline + 100) == "close"


def test_fails_at_the_deadline_without_quorum() -> None:
    plan = make_plan()
    state = with_accepted(with_accepted(new_run(plan, T0), accepted("h1")), accepted("h2"))
    assert round_decision(plan, state, state.deadline - 0.001) == "wait"
    assert round_decision(plan, state, state.deadline) == "fail"  # 2 of 3 is no quorum
    assert round_decision(plan, new_run(plan, T0), T0 + ROUND_TIMEOUT) == "fail"


def test_fails_when_everyone_answered_but_failures_left_it_below_quorum() -> None:
    plan = make_plan()
    state = with_accepted(with_accepted(new_run(plan, T0), accepted("h1")), accepted("h2"))
    state = with_failed(with_failed(state, "h3"), "h4")
    assert round_decision(plan, state, T0 + 1) == "fail"


def test_round_one_closes_once_the_expected_number_and_the_roster_answered() -> None:
    plan = make_plan(expected_hospitals=3)  # e.g. `make up HOSPITALS=3` with 4 identities issued
    state = with_hello(with_hello(with_hello(new_run(plan, T0), "h1"), "h2"), "h3")
    state = with_accepted(with_accepted(state, accepted("h1")), accepted("h2"))
    assert round_decision(plan, state, T0 + 1) == "wait"
    state = with_accepted(state, accepted("h3"))
    assert round_decision(plan, state, T0 + 1) == "close"  # h4 never joined: no deadline wait


def test_round_one_waits_for_the_expected_number_even_when_the_roster_answered() -> None:
    plan = make_plan(expected_hospitals=4)
    state = with_quorum(new_run(plan, T0))
    assert set(state.roster) == {"h1", "h2", "h3"}  # a slow starter has not said Hello yet
    assert round_decision(plan, state, T0 + 1) == "wait"
    assert round_decision(plan, state, state.deadline) == "close"


def test_a_hospital_that_said_hello_is_waited_for() -> None:
    plan = make_plan(expected_hospitals=3)
    state = with_quorum(new_run(plan, T0))
    state = with_hello(state, "h4")  # a replica scaled in before the round closed
    state = with_hello(state, "h4")
    assert state.roster == ("h1", "h2", "h3", "h4") and state.joined == ("h4",)
    assert round_decision(plan, state, T0 + 1) == "wait"
    assert round_decision(plan, with_failed(state, "h4"), T0 + 1) == "close"


def test_the_roster_answering_without_a_quorum_waits_for_the_deadline() -> None:
    plan = make_plan(min_hospitals=3, expected_hospitals=2)
    state = with_hello(with_hello(new_run(plan, T0), "h1"), "h2")
    state = with_accepted(with_accepted(state, accepted("h1")), accepted("h2"))
    assert round_decision(plan, state, T0 + 1) == "wait"  # another hospital may still join
    assert round_decision(plan, state, state.deadline) == "fail"


def test_a_member_that_missed_a_round_is_not_waited_for_until_it_speaks_again() -> None:
    plan = make_plan(rounds=4)
    state = new_run(plan, T0)
    for hospital in ("h1", "h2", "h3", "h4"):
        state = with_accepted(state, accepted(hospital))
    state = close(plan, state, T0 + 1)
    # Round 2: h4 was killed; the round closes at its deadline on quorum and h4 leaves the roster.
    state = with_quorum(state)
    assert round_decision(plan, state, T0 + 2) == "wait"
    state = close(plan, state, state.deadline)
    assert state.roster == ("h1", "h2", "h3")
    # Round 3 closes as soon as the three present hospitals answered.
    state = with_quorum(state)
    assert round_decision(plan, state, state.started_at + 1) == "close"
    # Round 4: h4 restarted and said Hello; the round waits for it again.
    state = with_hello(close(plan, state, state.started_at + 1), "h4")
    state = with_quorum(state)
    assert round_decision(plan, state, state.started_at + 1) == "wait"


def test_a_hello_during_a_round_keeps_a_slow_starter_on_the_roster() -> None:
    plan = make_plan()
    state = with_hello(new_run(plan, T0), "h4")  # still importing TensorFlow at the deadline
    state = with_quorum(state)
    state = close(plan, state, state.deadline)
    assert state.roster == ("h4", "h1", "h2", "h3") and state.joined == ()


def test_a_late_answer_puts_a_hospital_back_on_the_roster() -> None:
    state = new_run(make_plan(), T0)
    assert with_member(state, "h2").roster == ("h2",)
    assert with_member(with_member(state, "h2"), "h2").roster == ("h2",)
    assert state.roster == ()


def test_expected_hospitals_must_be_within_the_identities() -> None:
    assert make_plan().expected == 4
    assert make_plan(expected_hospitals=1).expected == 1
    for bad in (0, 5):
        with pytest.raises(ConfigError, match="expected_hospitals"):
            make_plan(expected_hospitals=bad)


@pytest.mark.parametrize("phase", ["final", "done", "failed"])
def test_decides_nothing_outside_the_round_phase(phase: str) -> None:
    plan = make_plan()
    state = replace(new_run(plan, T0), phase=phase)  # type: ignore[arg-type]
    assert round_decision(plan, state, T0 + 10 * ROUND_TIMEOUT) == "wait"


# -- close_round ---------------------------------------------------------------------------------


def test_close_round_records_the_round_and_opens_the_next() -> None:
    plan = make_plan()
    state = new_run(plan, T0)
    state = with_accepted(state, accepted("h1", size=1000, train_loss=0.5))
    state = with_accepted(state, accepted("h3", size=2000, train_loss=0.7))
    state = with_accepted(state, accepted("h4", size=3000, train_loss=0.6))
    state = with_failed(state, "h2")
    state = close(plan, state, T0 + 12.5, ref="agg-1")

    assert (state.phase, state.round) == ("round", 2)
    assert state.started_at == T0 + 12.5
    assert state.deadline == T0 + 12.5 + ROUND_TIMEOUT
    assert state.accepted == () and state.failed == ()
    assert state.global_ref == ("agg-1", "sha-agg-1")
    (record,) = state.history
    assert record.round == 1
    assert record.accepted == ("h1", "h3", "h4")
    assert record.failed == ("h2",)
    assert record.seconds == 12.5
    assert record.bytes_uploaded == 6000
    assert record.train_loss == pytest.approx(0.6)
    assert record.aggregate_ref == "agg-1"
    assert record.aggregate_sha256 == "sha-agg-1"
    assert record.model_metrics is None  # known only when round 2's submissions arrive


def test_close_round_without_train_losses_records_none() -> None:
    plan = make_plan()
    state = close(plan, with_quorum(new_run(plan, T0), auc=0.5), T0 + 1)
    assert state.history[0].train_loss is None


def test_close_round_train_loss_ignores_nan() -> None:
    # A NaN loss arrives as null -> NaN; it must not poison the mean (the summary is strict JSON).
    plan = make_plan()
    state = new_run(plan, T0)
    state = with_accepted(state, accepted("h1", train_loss=math.nan))
    state = with_accepted(state, accepted("h2", train_loss=0.4))
    state = with_accepted(state, accepted("h3", train_loss=math.nan))
    assert close(plan, state, T0 + 1).history[0].train_loss == pytest.approx(0.4)
    only_nan = with_quorum(new_run(plan, T0), train_loss=math.nan)
    assert close(plan, only_nan, T0 + 1).history[0].train_loss is None


def test_metrics_reported_in_round_r_are_attached_to_round_r_minus_1() -> None:
    plan = make_plan()
    state = new_run(plan, T0)
    # Round-1 submissions evaluate the initial model: nothing to attach them to.
    state = with_quorum(state, auc=0.5, accuracy=0.5, loss=0.69)
    state = close(plan, state, T0 + 1, ref="agg-1")
    assert state.history[0].model_metrics is None

    state = with_accepted(state, accepted("h1", auc=0.7, accuracy=0.8, loss=0.4, train_loss=0.3))
    state = with_accepted(state, accepted("h2", auc=0.8, accuracy=0.9, loss=0.2, train_loss=0.1))
    state = with_accepted(state, accepted("h3", auc=0.75, accuracy=0.85, loss=0.3, train_loss=0.2))
    state = close(plan, state, T0 + 2, ref="agg-2")

    first, second = state.history
    assert first.model_metrics == pytest.approx({"auc": 0.75, "accuracy": 0.85, "loss": 0.3})
    assert "train_loss" not in (first.model_metrics or {})
    assert first.train_loss is None  # its own train loss is unchanged
    assert second.model_metrics is None
    assert second.train_loss == pytest.approx(0.2)


def test_closing_the_last_round_enters_the_final_phase() -> None:
    plan = make_plan(rounds=2)
    state = new_run(plan, T0)
    state = close(plan, with_quorum(state), T0 + 1, ref="agg-1")
    assert (state.phase, state.round) == ("round", 2)
    state = close(plan, with_quorum(state), T0 + 2, ref="agg-2")
    assert (state.phase, state.round) == ("final", 2)
    assert state.deadline == T0 + 2 + FINAL_TIMEOUT
    assert [r.round for r in state.history] == [1, 2]
    assert state.global_ref == ("agg-2", "sha-agg-2")  # the final model


def test_single_round_run_goes_straight_to_final() -> None:
    plan = make_plan(rounds=1)
    state = close(plan, with_quorum(new_run(plan, T0)), T0 + 1)
    assert (state.phase, state.round) == ("final", 1)


# -- final phase ---------------------------------------------------------------------------------


def _final_state(plan: RunPlan) -> RunState:
    state = new_run(plan, T0)
    for round_ in range(plan.rounds):
        state = with_quorum(state, auc=0.6, train_loss=0.5)
        state = close(plan, state, T0 + round_ + 1, ref=f"agg-{round_ + 1}")
    assert state.phase == "final"
    return state


def test_with_final_report_is_idempotent() -> None:
    plan = make_plan(rounds=1)
    state = with_final_report(plan, _final_state(plan), "h1", {"auc": 0.9})
    again = with_final_report(plan, state, "h1", {"auc": 0.1})  # redelivered or replayed
    assert again == state
    assert again.final_reports == (("h1", {"auc": 0.9}),)


def test_with_final_report_copies_the_metrics() -> None:
    plan = make_plan(rounds=1)
    metrics = {"auc": 0.9}
    state = with_final_report(plan, _final_state(plan), "h1", metrics)
    metrics["auc"] = 0.0
    assert state.final_reports == (("h1", {"auc": 0.9}),)


def test_with_final_report_refuses_unknown_hospital_and_other_phases() -> None:
    plan = make_plan(rounds=1)
    with pytest.raises(ProtocolError, match="unknown hospital h9"):
        with_final_report(plan, _final_state(plan), "h9", {"auc": 0.9})
    with pytest.raises(ProtocolError, match="outside the final phase"):
        with_final_report(plan, new_run(plan, T0), "h1", {"auc": 0.9})


def test_final_decision_waits_for_every_report_or_the_deadline() -> None:
    plan = make_plan(rounds=1)
    state = _final_state(plan)
    state = replace(state, roster=("h1", "h2", "h3", "h4"))
    assert not final_decision(plan, state, T0 + 2)
    for hospital in ("h1", "h2", "h3"):
        state = with_final_report(plan, state, hospital, {})
    assert not final_decision(plan, state, T0 + 2)
    assert final_decision(plan, state, state.deadline)
    state = with_final_report(plan, state, "h4", {})
    assert final_decision(plan, state, T0 + 2)
    assert not final_decision(plan, new_run(plan, T0), T0 + 1e9)


def test_final_decision_waits_only_for_the_hospitals_still_on_the_roster() -> None:
    plan = make_plan(rounds=2)
    state = new_run(plan, T0)
    for hospital in ("h1", "h2", "h3", "h4"):
        state = with_accepted(state, accepted(hospital))
    state = close(plan, state, T0 + 1)
    state = close(plan, with_quorum(state), state.deadline)  # h4 missed the last round
    assert state.phase == "final" and state.roster == ("h1", "h2", "h3")
    for hospital in ("h1", "h2"):
        state = with_final_report(plan, state, hospital, {})
    assert not final_decision(plan, state, state.started_at + 1)
    assert final_decision(plan, with_final_report(plan, state, "h3", {}), state.started_at + 1)


def test_finish_run_attaches_mean_final_metrics_to_the_last_record() -> None:
    plan = make_plan(rounds=2)
    state = _final_state(plan)
    state = with_final_report(plan, state, "h1", {"auc": 0.8, "accuracy": 0.9, "loss": math.nan})
    state = with_final_report(plan, state, "h2", {"auc": 0.6, "accuracy": 0.7, "loss": 0.5})
    done = finish_run(state)
    assert done.phase == "done"
    assert done.history[-1].model_metrics == pytest.approx(
        {"auc": 0.7, "accuracy": 0.8, "loss": 0.5}
    )
    assert done.history[0] == state.history[0]
    assert state.phase == "final"  # the argument is untouched


def test_finish_run_without_reports_leaves_no_metrics() -> None:
    plan = make_plan(rounds=1)
    assert finish_run(_final_state(plan)).history[-1].model_metrics is None


def test_fail_run_records_the_error() -> None:
    plan = make_plan()
    failed = fail_run(new_run(plan, T0), "round 1: only 2 of 3")
    assert failed.phase == "failed"
    assert failed.error == "round 1: only 2 of 3"


# -- rejections -----------------------------------------------------------------


def test_with_rejection_counts_per_reason_without_mutating() -> None:
    plan = make_plan()
    start = new_run(plan, T0)
    state = start
    for reason in ["late", "duplicate", "late", "malformed", "late"]:
        state = with_rejection(state, reason)
    assert state.rejected == {"late": 3, "duplicate": 1, "malformed": 1}
    assert start.rejected == {}


# -- persistence ---------------------------------------------------------------------------------


def _state_with_history() -> RunState:
    plan = make_plan(rounds=2)
    state = new_run(plan, T0)
    state = with_accepted(state, accepted("h1", size=10, auc=0.5, train_loss=0.6))
    state = with_accepted(state, accepted("h2", size=20, auc=0.6, train_loss=0.4))
    state = with_accepted(state, accepted("h3", size=30, auc=0.7, train_loss=0.5))
    state = with_failed(state, "h4")
    state = close(plan, state, T0 + 3, ref="agg-1")
    state = with_rejection(with_rejection(state, "late"), "bad-ref")
    state = with_accepted(state, accepted("h2", size=20, auc=0.7, accuracy=0.8, loss=0.5))
    state = with_accepted(state, accepted("h3", size=30, auc=0.9, accuracy=0.6, loss=0.3))
    state = with_accepted(state, accepted("h4", size=40, auc=0.8, accuracy=0.7, loss=0.4))
    state = close(plan, state, T0 + 7, ref="agg-2")
    state = with_final_report(plan, state, "h1", {"auc": 0.8, "accuracy": 0.75, "loss": 0.4})
    return state


def test_state_round_trips_through_json() -> None:
    state = _state_with_history()
    assert len(state.history) == 2 and state.final_reports and state.rejected
    restored = from_json(to_json(state))
    assert restored == state
    assert to_json(restored) == to_json(state)
    assert isinstance(restored.history[0], RoundRecord)
    assert isinstance(restored.history[0].accepted, tuple)
    assert isinstance(restored.final_reports[0], tuple)


def test_state_mid_round_round_trips_through_json() -> None:
    plan = make_plan()
    state = with_failed(with_accepted(new_run(plan, T0), accepted("h1", auc=0.5)), "h2")
    restored = from_json(to_json(state))
    assert restored == state
    assert isinstance(restored.accepted[0], Accepted)
    assert restored.accepted[0].envelope == "signed-h1"  # re-verified when the service resumes


def test_from_json_of_an_accepted_entry_without_its_envelope_raises_protocol_error() -> None:
    plan = make_plan()
    body = json.loads(to_json(with_accepted(new_run(plan, T0), accepted("h1", auc=0.5))))
    del body["accepted"][0]["envelope"]
    with pytest.raises(ProtocolError, match=re.escape("missing field accepted[0].envelope")):
        from_json(json.dumps(body).encode())


def test_failed_state_round_trips_through_json() -> None:
    state = fail_run(_state_with_history(), "round 3: no quorum")
    assert from_json(to_json(state)) == state


def test_nan_metrics_survive_persistence_as_nan() -> None:
    plan = make_plan()
    state = with_accepted(new_run(plan, T0), accepted("h1", auc=math.nan))
    restored = from_json(to_json(state))
    assert math.isnan(restored.accepted[0].metrics["auc"])


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff\xfe", b"not json", b"[]", b"null", b"42", b'"state"', b"{}", b"[" * 100_000],
    ids=lambda data: repr(data)[:20],
)
def test_from_json_of_garbage_raises_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="coordinator state"):
        from_json(data)


def _valid_body() -> dict[str, Any]:
    body: dict[str, Any] = json.loads(to_json(_state_with_history()))
    return body


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("run",), 5),
        (("phase",), "paused"),
        (("round",), "2"),
        (("round",), True),
        (("round",), 2.5),
        (("deadline",), "soon"),
        (("deadline",), 10**400),
        (("accepted",), "h1"),
        (("accepted",), [5]),
        (("accepted",), [{"hospital": "h1"}]),
        (("failed",), "h4"),
        (("failed",), [None]),
        (("final_reports",), [["h1"]]),
        (("final_reports",), [["h1", {"auc": 0.5}, "extra"]]),
        (("final_reports",), [["h1", {"auc": "high"}]]),
        (("history", 0, "accepted"), 3),
        (("history", 0, "bytes_uploaded"), "many"),
        (("history", 0, "model_metrics"), [0.5]),
        (("history", 1, "extra"), 1),
        (("rejected",), {"late": "3"}),
        (("rejected",), []),
        (("error",), 5),
        (("unexpected",), 1),
    ],
    ids=lambda value: "/".join(map(str, value)) if isinstance(value, tuple) else repr(value)[:20],
)
def test_from_json_of_a_state_with_a_wrong_field_raises_protocol_error(
    path: tuple[str | int, ...], value: object
) -> None:
    body = _valid_body()
    target: Any = body
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    with pytest.raises(ProtocolError, match="coordinator state"):
        from_json(json.dumps(body).encode())


@pytest.mark.parametrize(
    "name", ["run", "phase", "round", "history", "rejected", "error", "roster", "joined"]
)
def test_from_json_of_a_state_missing_a_field_raises_protocol_error(name: str) -> None:
    body = _valid_body()
    del body[name]
    with pytest.raises(ProtocolError, match="coordinator state"):
        from_json(json.dumps(body).encode())


# A state file as ``to_json`` writes it (accepted entries carry their signed envelope since the
# 3-contributor floor): NaN marks undefined metrics.
WRITTEN_STATE = b"""{
 "accepted": [{"blob_ref": "b2", "envelope": "signed-h2", "hospital": "h2",
               "metrics": {"auc": NaN, "loss": 0.5}, "sha256": "s2", "size": 20}],
 "deadline": 1063.0, "error": null, "failed": ["h3"],
 "final_reports": [["h1", {"auc": NaN, "loss": 0.4}]],
 "history": [{"accepted": ["h1", "h2", "h3"], "aggregate_ref": "agg-1",
              "aggregate_sha256": "sha-1", "attempts": 1, "bytes_uploaded": 30, "failed": [],
              "hospital_metrics": {"h1": {"auc": 0.5}}, "model_metrics": null, "round": 1,
              "seconds": 3.0, "train_loss": 0.5}],
 "joined": [], "phase": "round", "rejected": {"late": 1}, "roster": ["h1", "h2", "h3"],
 "round": 2, "run": "run-1", "started_at": 1003,
 "ready": [], "participants": [], "attempt": 0, "mask_deadline": 0.0
}"""


def test_a_state_file_in_the_written_format_loads() -> None:
    state = from_json(WRITTEN_STATE)
    assert (state.run, state.phase, state.round, state.failed) == ("run-1", "round", 2, ("h3",))
    assert state.started_at == 1003.0 and isinstance(state.started_at, float)
    assert math.isnan(state.accepted[0].metrics["auc"])
    assert state.accepted[0].envelope == "signed-h2"
    assert state.history[0].accepted == ("h1", "h2", "h3")
    assert math.isnan(state.final_reports[0][1]["auc"])
    assert state.history[0].hospital_metrics == {"h1": {"auc": 0.5}}
    assert from_json(to_json(state)).history == state.history


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        (b'"round": 2,', b'"round": "2",', "field round: Input should be a valid integer"),
        (b'"bytes_uploaded": 30', b'"bytes_uploaded": "30"', "field history[0].bytes_uploaded"),
        (b'"auc": NaN, "loss": 0.5', b'"auc": Infinity, "loss": 0.5', "accepted[0].metrics.auc"),
        (b'"deadline": 1063.0', b'"deadline": NaN', "field deadline: Input should be a finite"),
        (b'"seconds": 3.0', b'"seconds": true', "field history[0].seconds"),
        (b'"size": 20', b'"size": 20, "owner": "x"', "unexpected field accepted[0].owner"),
        (b'"sha256": "s2", ', b"", "missing field accepted[0].sha256"),
        (b'"envelope": "signed-h2", ', b"", "missing field accepted[0].envelope"),
        (b'"envelope": "signed-h2"', b'"envelope": 5', "field accepted[0].envelope"),
        (b'"roster": ["h1", "h2", "h3"],', b"", "missing field roster"),
        (b'"model_metrics": null, ', b"", "missing field history[0].model_metrics"),
    ],
    ids=lambda value: value.decode()[:24] if isinstance(value, bytes) else None,
)
def test_from_json_names_the_bad_field_by_its_path(old: bytes, new: bytes, fragment: str) -> None:
    assert old in WRITTEN_STATE
    with pytest.raises(ProtocolError) as info:
        from_json(WRITTEN_STATE.replace(old, new))
    text = str(info.value)
    assert text.startswith("persisted coordinator state: ") and fragment in text, text
    assert "\n" not in text


# -- masked rounds: readiness, the fixed participant set, re-fixing after a dropout -------------

MASK_TIMEOUT = 20.0


def masked_plan(**overrides: Any) -> RunPlan:
    return make_plan(**{"masking": True, "mask_timeout": MASK_TIMEOUT, **overrides})


def ready(state: RunState, *hospitals: str) -> RunState:
    for hospital in hospitals:
        state = with_ready(state, hospital)
    return state


def test_the_set_is_fixed_once_the_roster_is_ready_or_at_the_deadline() -> None:
    plan = masked_plan()
    state = ready(new_run(plan, T0), "h1", "h2", "h3")
    assert round_decision(plan, state, T0 + 1) == "wait"  # round 1 waits for all four
    assert round_decision(plan, ready(state, "h4"), T0 + 1) == "fix"
    assert round_decision(plan, state, T0 + ROUND_TIMEOUT) == "fix"  # quorum at the deadline
    thin = ready(new_run(plan, T0), "h1", "h2")
    assert round_decision(plan, thin, T0 + ROUND_TIMEOUT) == "fail"
    fixed = fix_participants(plan, ready(state, "h4"), T0 + 5)
    assert (fixed.participants, fixed.attempt) == (("h1", "h2", "h3", "h4"), 1)
    assert fixed.mask_deadline == T0 + 5 + MASK_TIMEOUT


def test_readiness_and_updates_are_judged_against_the_fixed_set() -> None:
    plan = masked_plan()
    state = ready(new_run(plan, T0), "h1", "h2", "h3")
    assert judge_ready(plan, state, "run-1", 1, "h1") == "duplicate"
    assert judge_ready(make_plan(), new_run(make_plan(), T0), "run-1", 1, "h1") == "unmasked-run"
    assert judge_submission(plan, state, "run-1", 1, "h1", 1) == "other-attempt"  # not fixed
    fixed = fix_participants(plan, state, T0 + 1)
    assert judge_ready(plan, fixed, "run-1", 1, "h4") == "late"
    assert judge_submission(plan, fixed, "run-1", 1, "h1", 1) == ""
    assert judge_submission(plan, fixed, "run-1", 1, "h1", 2) == "other-attempt"
    assert judge_submission(plan, fixed, "run-1", 1, "h4", 1) == "not-a-participant"
    assert judge_submission(make_plan(), fixed, "run-1", 1, "h1", 1) == "other-attempt"


def test_a_dropout_re_fixes_the_set_with_those_that_uploaded() -> None:
    plan = masked_plan()
    state = fix_participants(plan, ready(new_run(plan, T0), "h1", "h2", "h3", "h4"), T0)
    state = with_quorum(state)  # h1..h3 uploaded, h4 did not
    assert round_decision(plan, state, T0 + MASK_TIMEOUT - 1) == "wait"
    assert round_decision(plan, state, T0 + MASK_TIMEOUT) == "refix"
    again = refix_participants(plan, state, T0 + MASK_TIMEOUT)
    assert (again.participants, again.attempt, again.accepted) == (("h1", "h2", "h3"), 2, ())
    assert again.failed == ("h4",) and "h4" not in again.roster
    assert round_decision(plan, again, T0 + MASK_TIMEOUT + 1) == "wait"
    assert round_decision(plan, with_quorum(again), T0 + MASK_TIMEOUT + 1) == "close"
    closed = close(plan, with_quorum(again), T0 + 30)
    assert closed.history[-1].attempts == 2 and closed.history[-1].failed == ("h4",)
    assert (closed.ready, closed.participants, closed.attempt) == ((), (), 0)


def test_a_reported_failure_re_fixes_at_once_and_too_few_uploads_fail_the_run() -> None:
    plan = masked_plan()
    state = fix_participants(plan, ready(new_run(plan, T0), "h1", "h2", "h3", "h4"), T0)
    state = with_failed(with_quorum(state), "h4")
    assert round_decision(plan, state, T0 + 1) == "refix"
    fixed = fix_participants(plan, ready(new_run(plan, T0), "h1", "h2", "h3", "h4"), T0)
    two = with_accepted(with_accepted(fixed, accepted("h1")), accepted("h2"))
    assert round_decision(plan, two, T0 + 1) == "wait"
    assert round_decision(plan, two, T0 + MASK_TIMEOUT) == "fail"  # 2 uploads, quorum 3


def test_a_masked_plan_checks_its_mask_timeout() -> None:
    with pytest.raises(ConfigError, match="mask_timeout"):
        masked_plan(mask_timeout=0.0)
