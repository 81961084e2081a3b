"""The coordinator's round state machine: pure functions over frozen dataclasses.

Nothing here does I/O. The service (``coordinator.service``) feeds messages and the clock in and
carries out what these functions decide, so every transition is tested without a broker or store.

The roster is the set of hospitals known to be present: those that said Hello or answered. A
round closes early once every roster member has answered (round 1 also waits until
``expected_hospitals`` have answered, so the first round does not close before slower starters
join). A member that misses a round closed at its deadline leaves the roster until it speaks
again, so later rounds do not wait for a replica that is gone.

Metrics arrive one round late by design: a hospital evaluates the global model it receives at
the start of round r (the model produced by round r-1) before training on it. A round's record
therefore gets its hold-out metrics when the next round closes, or from the final reports.

Early stopping (``RunPlan.patience``): when ``patience`` rounds' models in a row did not lower
the best mean hold-out loss by more than ``min_delta``, the run ends before ``plan.rounds`` and
its final model is the best round's (``RunState.final_round``), which every hospital rebuilds.
The candidates are the models of rounds 1, 2, ...: the initial model is never the final one.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Annotated, Final, Literal

import pydantic
from pydantic import AfterValidator, AllowInfNan, ConfigDict, TypeAdapter, with_config

from common.crypto.cipher import UPDATE
from common.crypto.masking import DEFAULT_MASK_TIMEOUT
from common.errors import ConfigError, ProtocolError
from common.fedavg import MIN_CONTRIBUTORS, finite_metrics, mean_metrics
from common.validation import dotted_path, explain, missing_field

Phase = Literal["round", "final", "done", "failed"]
#: Why a run stopped: it ran ``plan.rounds`` rounds, or its loss stopped improving.
StopReason = Literal["max-rounds", "early-stopping"]
#: A hospital's Hellos re-announce the round at most once per this many seconds.
DEFAULT_HELLO_INTERVAL: Final = 10.0
Decision = Literal["wait", "fix", "refix", "close", "fail"]


def _not_infinite(value: float) -> float:
    if math.isinf(value):
        raise ValueError(f"a metric is a finite number or NaN (undefined), got {value}")
    return value


# A hospital's metric: finite, or NaN when undefined (e.g. the AUC of a one-class hold-out).
Metrics = dict[str, Annotated[float, AllowInfNan(), AfterValidator(_not_infinite)]]
# How from_json reads: no "2" for 2 or true for 1, other floats finite, no unknown fields.
_PERSISTED: Final = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """What the coordinator was asked to run; validated once."""

    run: str
    rounds: int
    hospitals: tuple[str, ...]
    min_hospitals: int
    round_timeout: float
    final_timeout: float
    config_digest: str
    value_count: int  # reals in every update blob (the model's parameters and the weight)
    expected_hospitals: int | None = None  # round 1 waits for this many (None: all)
    hello_interval: float = DEFAULT_HELLO_INTERVAL
    # Pairwise masking: hospitals train, say UpdateReady, and upload only once the coordinator
    # fixed the round's participants (ParticipantsFixed); a dropout after that re-fixes the set.
    masking: bool = False
    mask_timeout: float = DEFAULT_MASK_TIMEOUT
    # Early stopping: end the run after this many rounds without a lower mean hold-out loss
    # (by more than min_delta); 0: run all ``rounds``.
    patience: int = 0
    min_delta: float = 0.0

    @property
    def expected(self) -> int:
        return len(self.hospitals) if self.expected_hospitals is None else self.expected_hospitals

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        if not self.hospitals or len(set(self.hospitals)) != len(self.hospitals):
            raise ConfigError(f"hospitals must be distinct and non-empty: {self.hospitals}")
        if len(self.hospitals) < MIN_CONTRIBUTORS:
            raise ConfigError(
                f"a run needs at least {MIN_CONTRIBUTORS} hospitals, got {len(self.hospitals)}: "
                "with 2, each would learn the other's update from the sum"
            )
        if not MIN_CONTRIBUTORS <= self.min_hospitals <= len(self.hospitals):
            raise ConfigError(
                f"min_hospitals must be within {MIN_CONTRIBUTORS}..{len(self.hospitals)} "
                f"(a round never closes with fewer than {MIN_CONTRIBUTORS}), "
                f"got {self.min_hospitals}"
            )
        if not isinstance(self.value_count, int) or self.value_count < 2:
            raise ConfigError(f"value_count must be a whole number >= 2, got {self.value_count}")
        if not (math.isfinite(self.hello_interval) and self.hello_interval >= 0):
            raise ConfigError(f"hello_interval must be >= 0 seconds, got {self.hello_interval}")
        if not 1 <= self.expected <= len(self.hospitals):
            raise ConfigError(
                f"expected_hospitals must be within 1..{len(self.hospitals)}, got {self.expected}"
            )
        if isinstance(self.patience, bool) or not isinstance(self.patience, int):
            raise ConfigError(f"patience must be a whole number of rounds, got {self.patience!r}")
        if self.patience < 0:
            raise ConfigError(f"patience must be >= 0 rounds (0: off), got {self.patience}")
        if not (math.isfinite(self.min_delta) and self.min_delta >= 0):
            raise ConfigError(
                f"min_delta must be a finite loss difference >= 0, got {self.min_delta}"
            )
        for name in ("round_timeout", "final_timeout", "mask_timeout"):
            timeout = getattr(self, name)
            if not (math.isfinite(timeout) and timeout > 0):  # NaN would never expire
                raise ConfigError(f"{name} must be a positive number of seconds, got {timeout}")


@with_config(_PERSISTED)
@dataclass(frozen=True, kw_only=True)
class Accepted:
    """An accepted submission; ``envelope`` is the hospital's signed message, so a resumed
    coordinator re-verifies every entry with the hospital's own key before re-adding its blob."""

    hospital: str
    blob_ref: str
    sha256: str
    size: int
    metrics: Metrics
    envelope: str


@with_config(_PERSISTED)
@dataclass(frozen=True, kw_only=True)
class RoundRecord:
    """A closed round: who contributed, what it cost, and (later) how good its model is."""

    round: int
    accepted: tuple[str, ...]
    failed: tuple[str, ...]
    seconds: float
    bytes_uploaded: int
    train_loss: float | None
    aggregate_ref: str
    aggregate_sha256: str
    attempts: int = 0  # participant sets fixed (masked runs): more than 1 after a dropout
    model_metrics: dict[str, float] | None = None
    hospital_metrics: dict[str, dict[str, float]] = field(default_factory=dict)


@with_config(_PERSISTED)
@dataclass(frozen=True, kw_only=True)
class RunState:
    run: str
    phase: Phase
    round: int
    started_at: float
    deadline: float
    accepted: tuple[Accepted, ...] = ()
    failed: tuple[str, ...] = ()
    final_reports: tuple[tuple[str, Metrics], ...] = ()
    history: tuple[RoundRecord, ...] = ()
    rejected: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    roster: tuple[str, ...] = ()  # hospitals known to be present
    joined: tuple[str, ...] = ()  # said Hello during the current round
    # Masked runs: who trained and waits, and the participant set of the current attempt.
    ready: tuple[str, ...] = ()
    participants: tuple[str, ...] = ()
    attempt: int = 0  # 0: no set fixed yet this round
    mask_deadline: float = 0.0
    # Set when the run enters its final phase: the round whose model is final, and why.
    final_round: int = 0
    stop_reason: StopReason | None = None

    @property
    def global_ref(self) -> tuple[str, str] | None:
        """The aggregate hospitals start the current round from (None: initial weights)."""
        if not self.history:
            return None
        last = self.history[-1]
        return last.aggregate_ref, last.aggregate_sha256

    @property
    def final_record(self) -> RoundRecord | None:
        """The closed round whose global model is the run's final model (None: not decided)."""
        if not 1 <= self.final_round <= len(self.history):
            return None
        return self.history[self.final_round - 1]

    @property
    def accepted_hospitals(self) -> tuple[str, ...]:
        return tuple(entry.hospital for entry in self.accepted)


_STATE: Final = TypeAdapter(RunState)  # reads what ``to_json`` writes


def new_run(plan: RunPlan, now: float) -> RunState:
    return RunState(
        run=plan.run, phase="round", round=1, started_at=now, deadline=now + plan.round_timeout
    )


def judge_submission(
    plan: RunPlan, state: RunState, run: str, round_: int, hospital: str, attempt: int | None = None
) -> str:
    """Return "" to accept, or the reason a submission must be rejected. ``attempt`` is that of
    an update (None for other answers): a masked update counts only for the current set."""
    if run != plan.run:
        return "other-run"
    if hospital not in plan.hospitals:
        return "unknown-hospital"
    if state.phase != "round" or round_ < state.round:
        return "late"
    if round_ > state.round:
        return "future-round"
    if attempt is not None and plan.masking:
        if attempt != state.attempt:
            return "other-attempt"
        if hospital not in state.participants:
            return "not-a-participant"
    elif attempt:
        return "other-attempt"  # a masked update in an unmasked run
    if hospital in state.accepted_hospitals or hospital in state.failed:
        return "duplicate"
    return ""


def judge_ready(plan: RunPlan, state: RunState, run: str, round_: int, hospital: str) -> str:
    """Return "" when ``hospital`` may join the round's participant set, or the reason not."""
    reason = judge_submission(plan, state, run, round_, hospital)
    if reason:
        return reason
    if not plan.masking:
        return "unmasked-run"
    if state.participants:
        return "late"  # the set is fixed: it joins the next round
    if hospital in state.ready:
        return "duplicate"
    return ""


def judge_blob(
    plan: RunPlan,
    *,
    kind: str,
    summands: int,
    value_count: int,
    binding: tuple[str, int, str],
    run: str,
    round_: int,
    hospital: str,
) -> str:
    """Return "" when an update blob's header fits the plan and the signed message naming it,
    or the reason to reject it (its payload is then never read)."""
    if kind != UPDATE:
        return "blob-kind"
    if summands != 1:
        return "blob-summands"
    if value_count != plan.value_count:
        return "blob-values"
    if binding != (run, round_, hospital):
        return "blob-binding"
    return ""


def with_rejection(state: RunState, reason: str) -> RunState:
    counters = dict(state.rejected)
    counters[reason] = counters.get(reason, 0) + 1
    return replace(state, rejected=counters)


def with_member(state: RunState, hospital: str) -> RunState:
    """``hospital`` is alive (it answered, even late): rounds wait for it again."""
    if hospital in state.roster:
        return state
    return replace(state, roster=(*state.roster, hospital))


def with_hello(state: RunState, hospital: str) -> RunState:
    """A hospital (re)joined; it stays on the roster through the current round's close."""
    state = with_member(state, hospital)
    if hospital in state.joined:
        return state
    return replace(state, joined=(*state.joined, hospital))


def with_accepted(state: RunState, entry: Accepted) -> RunState:
    return with_member(replace(state, accepted=(*state.accepted, entry)), entry.hospital)


def with_failed(state: RunState, hospital: str) -> RunState:
    return with_member(replace(state, failed=(*state.failed, hospital)), hospital)


def with_ready(state: RunState, hospital: str) -> RunState:
    return with_member(replace(state, ready=(*state.ready, hospital)), hospital)


def round_decision(plan: RunPlan, state: RunState, now: float) -> Decision:
    """What the round needs now.

    Unmasked: "close" early when the roster has answered with a quorum; at the deadline, close
    on a quorum or "fail" without one. Masked, the same rule over the hospitals that are ready
    says when to "fix" the participant set; once fixed, the round closes when every participant
    uploaded; when one failed or the mask deadline passed, the ones that uploaded are the next
    attempt's set ("refix") if they are a quorum, else the run fails.
    """
    if state.phase != "round":
        return "wait"
    if not plan.masking:
        gathered = _gathered(plan, state, state.accepted_hospitals, now)
        return "close" if gathered == "done" else gathered
    if not state.participants:
        gathered = _gathered(plan, state, state.ready, now)
        return "fix" if gathered == "done" else gathered
    uploaded = set(state.accepted_hospitals)
    fixed = set(state.participants)
    if uploaded >= fixed:
        return "close"
    if uploaded | set(state.failed) >= fixed or now >= state.mask_deadline:
        return "refix" if len(uploaded) >= plan.min_hospitals else "fail"
    return "wait"


def _gathered(
    plan: RunPlan, state: RunState, answered_ok: tuple[str, ...], now: float
) -> Literal["wait", "done", "fail"]:
    answered = {*answered_ok, *state.failed}
    quorum = len(answered_ok) >= plan.min_hospitals
    if answered >= set(plan.hospitals) or now >= state.deadline:
        return "done" if quorum else "fail"
    enough = state.round > 1 or len(answered) >= plan.expected
    if quorum and enough and answered >= set(state.roster):
        return "done"
    return "wait"


def fix_participants(plan: RunPlan, state: RunState, now: float) -> RunState:
    """The first participant set of the round: every hospital that is ready."""
    return replace(
        state,
        participants=tuple(sorted(state.ready)),
        attempt=1,
        mask_deadline=now + plan.mask_timeout,
    )


def refix_participants(plan: RunPlan, state: RunState, now: float) -> RunState:
    """After a dropout: the participants that uploaded mask afresh among themselves (their
    uploads of the failed attempt hold masks of the missing ones and are dropped); the rest
    count as failed for this round, and the silent ones leave the roster until they speak."""
    survivors = tuple(sorted(state.accepted_hospitals))
    silent = tuple(h for h in state.participants if h not in survivors and h not in state.failed)
    return replace(
        state,
        participants=survivors,
        attempt=state.attempt + 1,
        mask_deadline=now + plan.mask_timeout,
        accepted=(),
        failed=(*state.failed, *silent),
        roster=tuple(h for h in state.roster if h not in silent),
        joined=tuple(h for h in state.joined if h not in silent),
    )


def best_round(history: tuple[RoundRecord, ...], min_delta: float = 0.0) -> int | None:
    """The round whose global model has the lowest mean hold-out loss, counting a later round
    as better only when it is lower by more than ``min_delta`` (None: no loss reported yet)."""
    best: tuple[int, float] | None = None
    for record in history:
        loss = (record.model_metrics or {}).get("loss")
        if loss is None or not math.isfinite(loss):
            continue
        if best is None or loss < best[1] - min_delta:
            best = (record.round, loss)
    return None if best is None else best[0]


def _stop(plan: RunPlan, history: tuple[RoundRecord, ...]) -> tuple[int, StopReason] | None:
    """Whether the run ends with the round just closed: its final round and why, else None."""
    last = history[-1].round
    if last >= plan.rounds:
        return last, "max-rounds"
    if plan.patience <= 0:
        return None
    best = best_round(history, plan.min_delta)
    evaluated = [r.round for r in history if (r.model_metrics or {}).get("loss") is not None]
    if best is not None and evaluated and evaluated[-1] - best >= plan.patience:
        return best, "early-stopping"
    return None


def close_round(
    plan: RunPlan, state: RunState, *, aggregate_ref: str, aggregate_sha256: str, now: float
) -> RunState:
    """Record the round, attach the metrics its submissions carried to the previous round, and
    end the run when it reached ``plan.rounds`` or (with ``plan.patience``) stopped improving."""
    losses = [a.metrics.get("train_loss", math.nan) for a in state.accepted]
    losses = [loss for loss in losses if math.isfinite(loss)]  # as mean_metrics: NaN is absent
    record = RoundRecord(
        round=state.round,
        accepted=state.accepted_hospitals,
        failed=state.failed,
        seconds=now - state.started_at,
        bytes_uploaded=sum(a.size for a in state.accepted),
        train_loss=sum(losses) / len(losses) if losses else None,
        aggregate_ref=aggregate_ref,
        aggregate_sha256=aggregate_sha256,
        attempts=state.attempt,
    )
    history = list(state.history)
    if history:
        history[-1] = replace(
            history[-1],
            model_metrics=mean_metrics([a.metrics for a in state.accepted]),
            hospital_metrics={a.hospital: finite_metrics(a.metrics) for a in state.accepted},
        )
    history.append(record)
    present = {*state.accepted_hospitals, *state.failed, *state.joined}  # the rest missed it
    stop = _stop(plan, tuple(history))
    last = stop is not None
    timeout = plan.final_timeout if last else plan.round_timeout
    return replace(
        state,
        final_round=stop[0] if stop else 0,
        stop_reason=stop[1] if stop else None,
        phase="final" if last else "round",
        round=state.round if last else state.round + 1,
        started_at=now,
        deadline=now + timeout,
        accepted=(),
        failed=(),
        history=tuple(history),
        roster=tuple(h for h in state.roster if h in present),
        joined=(),
        ready=(),
        participants=(),
        attempt=0,
        mask_deadline=0.0,
    )


def fail_run(state: RunState, error: str) -> RunState:
    return replace(state, phase="failed", error=error)


def with_final_report(
    plan: RunPlan, state: RunState, hospital: str, metrics: dict[str, float]
) -> RunState:
    if hospital not in plan.hospitals:
        raise ProtocolError(f"final report from unknown hospital {hospital}")
    if state.phase != "final":
        raise ProtocolError(f"final report from {hospital} outside the final phase")
    if any(h == hospital for h, _ in state.final_reports):
        return state
    return replace(state, final_reports=(*state.final_reports, (hospital, dict(metrics))))


def final_decision(plan: RunPlan, state: RunState, now: float) -> bool:
    """True when the run can be declared done (the roster reported, or the deadline passed)."""
    reported = {h for h, _ in state.final_reports}
    return state.phase == "final" and (reported >= set(state.roster) or now >= state.deadline)


def finish_run(state: RunState) -> RunState:
    """The run is done; the final reports are the metrics of the last round's model. (After
    early stopping the final model is an earlier round's, whose record has its metrics already
    from the round after it: the last round's model is then never evaluated.)"""
    history = list(state.history)
    if history and state.final_round in (0, len(history)):
        history[-1] = replace(
            history[-1],
            model_metrics=mean_metrics([m for _, m in state.final_reports]),
            hospital_metrics={h: finite_metrics(m) for h, m in state.final_reports},
        )
    return replace(state, phase="done", history=tuple(history))


def to_json(state: RunState) -> bytes:
    """The state as JSON; an undefined metric is written as ``NaN``, which ``from_json`` reads."""
    return json.dumps(asdict(state), sort_keys=True, indent=1).encode()


def from_json(data: bytes) -> RunState:
    """Read persisted state back, checking the type of every field (the store is untrusted)."""
    try:
        state = _STATE.validate_json(data)
        body = json.loads(data)
        state, body = _upgraded(state, body)
        missing = missing_field(state, body, dotted_path)  # to_json writes them all
    except pydantic.ValidationError as exc:
        raise ProtocolError(f"persisted coordinator state: {explain(exc, dotted_path)}") from exc
    except (ValueError, RecursionError) as exc:  # where Python's parser is stricter than pydantic's
        raise ProtocolError(f"persisted coordinator state is not JSON: {exc}") from exc
    if missing:
        raise ProtocolError(f"persisted coordinator state: {missing}")
    return state


#: Fields added to the persisted state after its format was fixed (a file without them is older).
_ADDED_FOR_EARLY_STOPPING: Final = ("final_round", "stop_reason")


def _upgraded(state: RunState, body: object) -> tuple[RunState, object]:
    """State saved before early stopping existed, as if saved now: a run that had ended its
    rounds then ran them all, and its final model is the last round's."""
    if not isinstance(body, dict) or any(name in body for name in _ADDED_FOR_EARLY_STOPPING):
        return state, body
    if state.phase in ("final", "done") and state.history:
        state = replace(state, final_round=len(state.history), stop_reason="max-rounds")
    return state, {**body, **{name: None for name in _ADDED_FOR_EARLY_STOPPING}}
