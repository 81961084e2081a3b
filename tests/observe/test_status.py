"""The coordinator's status (``/api/status``), its page and its metrics, from run states.

The attacker here is a hospital: what it writes (its name is fixed by the plan, but the error of
a failure report is its own text) must not inject markup into the operator's page, and the
metrics, which a shared Prometheus may hold, must name no hospital.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

from common.observe.prometheus import Exposition
from coordinator import status_page
from coordinator.state import (
    fail_run,
    finish_run,
    new_run,
    with_hello,
    with_ready,
    with_rejection,
)
from coordinator.status import Meter, metric_families, status
from tests.protocol.test_coordinator_state import T0, close, make_plan, with_quorum
from tests.protocol.test_early_stopping import run_with_losses

PLAN = make_plan(hospitals=("hospital-1", "hospital-2", "hospital-3", "hospital-4"))


def two_rounds_closed():  # type: ignore[no-untyped-def]
    state = new_run(PLAN, T0)
    for hospital in PLAN.hospitals:
        state = with_hello(state, hospital)
    for r in (1, 2):
        state = replace(state, accepted=())
        state = with_quorum_named(state, auc=0.6 + r / 100, loss=0.4 - r / 100)
        state = close(PLAN, state, T0 + 10 * r, ref=f"agg-{r}")
    return with_rejection(with_rejection(state, "late"), "bad-signature")


def with_quorum_named(state, **metrics):  # type: ignore[no-untyped-def]
    renamed = with_quorum(state, **metrics)
    names = dict(zip(("h1", "h2", "h3"), PLAN.hospitals, strict=False))
    accepted = tuple(replace(a, hospital=names[a.hospital]) for a in renamed.accepted)
    return replace(renamed, accepted=accepted)


def test_the_status_tells_the_operator_round_phase_roster_and_history() -> None:
    state = two_rounds_closed()
    seen = {"hospital-1": T0 + 18.0}
    got = status(PLAN, state, seen=seen, meter=Meter(bytes_received=300), now=T0 + 20.0)
    assert (got["run"], got["phase"], got["round"], got["rounds"]) == ("run-1", "round", 3, 3)
    assert got["rounds_closed"] == 2
    assert [r["contributors"] for r in got["history"]] == [3, 3]
    # Round 1's model was evaluated by round 2's submissions: its AUC is known, round 2's not yet.
    assert got["history"][0]["auc"] == 0.62 and got["history"][1]["auc"] is None
    assert got["roster"][0] == {
        "hospital": "hospital-1",
        "present": True,
        "last_seen_seconds": 2.0,
        "this_round": "-",
    }
    assert got["roster"][3]["last_seen_seconds"] is None
    assert got["rejected"] == {"bad-signature": 1, "late": 1}
    assert got["bytes_received"] == 300
    json.dumps(got, allow_nan=False)  # /api/status is strict JSON


def test_the_phase_names_the_masked_steps() -> None:
    plan = replace(PLAN, masking=True)
    state = with_ready(new_run(plan, T0), "hospital-2")
    got = status(plan, state, seen={}, meter=Meter(), now=T0)
    assert got["activity"] == "round 1: training (1 ready)"
    assert [h["this_round"] for h in got["roster"]] == ["-", "ready", "-", "-"]
    fixed = replace(state, participants=PLAN.hospitals[:3], attempt=2, mask_deadline=T0 + 9)
    got = status(plan, fixed, seen={}, meter=Meter(), now=T0)
    assert got["activity"] == "round 1: masked upload, attempt 2 (3 participants)"
    assert got["deadline_seconds"] == 9.0


def test_the_page_shows_the_round_the_status_reports_and_its_charts() -> None:
    got = status(PLAN, two_rounds_closed(), seen={}, meter=Meter(), now=T0 + 20)
    page = status_page.render(got)
    assert re.search(r'id="round" data-round="3">3</span> of 3 \(2 closed\)', page)
    assert page.count("<svg") == 3  # AUC, loss, durations
    assert "<polyline" in page
    assert "hospital-4" in page  # the operator sees the roster
    assert "<script" not in page


def test_an_early_stopped_run_says_when_it_stopped_why_and_which_model_is_final() -> None:
    # Models of rounds 1..4 score 0.50, 0.40 (best), 0.45, 0.41: stopped when round 5 closed.
    plan, state = run_with_losses([0.50, 0.40, 0.45, 0.41, 0.30], rounds=10, patience=2)
    for got in (
        status(plan, state, seen={}, meter=Meter(), now=T0 + 6),  # waiting for final reports
        status(plan, finish_run(state), seen={}, meter=Meter(), now=T0 + 7),
    ):
        assert (got["final_round"], got["stop_reason"]) == (2, "early-stopping")
        assert (got["rounds_closed"], got["rounds"], got["patience"]) == (5, 10, 2)
        json.dumps(got, allow_nan=False)
        page = status_page.render(got)
        assert (
            "<th>Outcome</th><td>stopped early after round 5: no better mean hold-out loss for "
            "2 rounds; final model: round 2</td>"
        ) in page
    plan, state = run_with_losses([0.50, 0.495, 0.49, 0.2], rounds=10, patience=2, min_delta=0.02)
    page = status_page.render(status(plan, state, seen={}, meter=Meter(), now=T0 + 5))
    assert (
        "stopped early after round 4: no mean hold-out loss better by more than 0.02 for 2 "
        "rounds; final model: round 1"
    ) in page


def test_a_run_that_used_every_round_says_the_last_model_is_final() -> None:
    plan, state = run_with_losses([0.5, 0.4, 0.3], rounds=4, patience=3)
    got = status(plan, state, seen={}, meter=Meter(), now=T0 + 5)
    assert (got["final_round"], got["stop_reason"]) == (4, "max-rounds")
    assert "ran all 4 rounds; final model: round 4" in status_page.render(got)
    running = status(PLAN, two_rounds_closed(), seen={}, meter=Meter(), now=T0 + 20)
    assert (running["final_round"], running["stop_reason"]) == (None, None)
    assert "Outcome" not in status_page.render(running)


def test_a_hospital_cannot_inject_markup_through_its_failure_report() -> None:
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    state = fail_run(new_run(PLAN, T0), f"round 1: reported: hospital-2: {evil}")
    page = status_page.render(status(PLAN, state, seen={}, meter=Meter(), now=T0))
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;" in page


def test_the_metrics_count_the_run_and_name_no_hospital() -> None:
    state = two_rounds_closed()
    meter = Meter(bytes_received=1000, bytes_sent=400, aggregation_seconds=0.25)
    text = Exposition(lambda: metric_families(PLAN, state, meter=meter)).render()[0].decode()
    assert "hefl_rounds_closed_total 2.0" in text
    assert "hefl_submissions_accepted_total 6.0" in text
    assert 'hefl_submissions_rejected_total{reason="late"} 1.0' in text
    assert "hefl_hospitals_present 3.0" in text  # hospital-4 missed the rounds
    assert "hefl_round_duration_seconds_count 2.0" in text
    assert "hefl_bytes_received_total 1000.0" in text
    assert "hefl_aggregation_seconds_total 0.25" in text
    assert "hefl_model_auc 0.62" in text
    assert "hospital-" not in text
