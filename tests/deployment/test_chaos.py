"""Issue 18's short chaos soak (``make chaos`` runs the full one into bench/results/chaos.md).

4 hospital processes and the coordinator on a three-node RabbitMQ, BFV, 10 rounds on a local
store mounted on a small tmpfs; a seeded scheduler kills hospitals, the coordinator and broker
nodes, freezes processes and fills the store's disk, and the final model must equal the
fault-free run's, every round keeping every hospital. Needs root (tmpfs, broker nodes).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.chaos import QUICK, by_kind, markdown, passed, soak
from testkit.broker import BrokerError
from testkit.chaos import KINDS, Fault, Scheduler, plan_faults


def test_the_fault_plan_is_seeded_bounded_and_covers_every_kind_asked_for() -> None:
    names = ("hospital-1", "hospital-2")
    kinds = tuple(KINDS)
    plan = plan_faults(7, count=12, kinds=kinds, hospitals=names, broker_nodes=3)
    assert plan == plan_faults(7, count=12, kinds=kinds, hospitals=names, broker_nodes=3)
    assert plan != plan_faults(8, count=12, kinds=kinds, hospitals=names, broker_nodes=3)
    assert len(plan) == 12 and {f.kind for f in plan[: len(kinds)]} == set(kinds)  # first
    for fault in plan:
        assert fault.moment in KINDS[fault.kind]
        if fault.kind == "kill-hospital":
            assert fault.target in names
        if fault.kind == "kill-broker-node":
            assert fault.target in {"node-1", "node-2", "node-3"}
    with pytest.raises(ValueError, match="unknown fault kinds"):
        plan_faults(1, count=1, kinds=("flood",), hospitals=names, broker_nodes=3)


class _Script:
    """A federation whose state is scripted: the scheduler's timing and bookkeeping alone."""

    def __init__(self, states: list[dict]) -> None:
        self.states = states
        self.calls: list[tuple[str, str]] = []

    def state(self) -> dict | None:
        return self.states[0]

    def state_mtime(self) -> float:
        return float(len(self.states))

    def inject(self, fault: Fault) -> None:
        self.calls.append(("inject", fault.kind))

    def clear(self, fault: Fault) -> None:
        self.calls.append(("clear", fault.kind))
        if len(self.states) > 1:
            self.states.pop(0)

    def check(self) -> None:
        pass


def test_a_fault_waits_for_its_moment_and_recovers_when_a_later_round_closes() -> None:
    training = {"phase": "round", "round": 2, "history": [{}], "ready": [], "participants": []}
    closed = {"phase": "round", "round": 3, "history": [{}, {}], "ready": [], "participants": []}
    uploading = {**training, "ready": ["hospital-1"], "participants": ["hospital-1"]}
    federation = _Script([uploading, uploading, closed])
    fault = Fault("kill-hospital", "hospital-1", "upload", hold=0.0, gap=0.0)
    scheduler = Scheduler(federation, [fault], sleep=lambda _s: None)
    scheduler.run(done=lambda state: False)
    assert federation.calls == [("inject", "kill-hospital"), ("clear", "kill-hospital")]
    (outcome,) = scheduler.outcomes
    assert outcome.moment == "upload" and outcome.round == 2
    assert outcome.recovered is None  # round 2 is still open
    federation.states.pop(0)
    scheduler.note_progress()
    assert outcome.recovered is not None and outcome.time_to_recover is not None


def test_the_verdict_names_a_lost_hospital_a_different_model_and_an_unrecovered_fault() -> None:
    fault = {"kind": "pause", "landed": "upload", "recovered": None, "time_to_recover": None}
    run = {
        "seed": 1,
        "store": "local",
        "seconds": 1.0,
        "rounds": 4,
        "rounds_with_everyone": 3,
        "reference_rounds": 4,
        "max_difference": 0.5,
        "unplanned_restarts": {},
        "faults": [fault],
    }
    figures = {"runs": [run], "kinds": by_kind([run])}
    problems = " ".join(passed(figures))
    assert "differs by 0.5" in problems
    assert "3 of 4 rounds kept every hospital" in problems
    assert "1 faults never recovered" in problems
    assert figures["kinds"]["pause"] == {
        "injected": 1,
        "recovered": 0,
        "median_seconds": pytest.approx(float("nan"), nan_ok=True),
        "max_seconds": None,
        "moments": ["upload"],
    }


def test_under_chaos_the_bfv_model_equals_the_fault_free_one_and_no_hospital_is_lost(
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    try:
        figures = soak(QUICK, tmp_path)
    except BrokerError as exc:
        pytest.fail(str(exc), pytrace=False)
    print(markdown(figures))
    print(f"short chaos soak: {time.monotonic() - started:.0f} s")
    assert passed(figures) == []
    (run,) = figures["runs"]
    assert len(run["faults"]) >= 3, run  # faults were injected, not skipped by a quick run
    assert run["max_difference"] <= 1e-6 and run["rounds"] == QUICK.rounds
