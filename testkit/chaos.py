"""A seeded fault scheduler for the chaos soak (``bench/chaos.py``, ``make chaos``).

``plan_faults`` draws, from one seed, a bounded list of faults: which kind, on whom, at which
moment of a round and for how long. ``Scheduler`` injects them one after the other into a
running federation (``testkit.soak``), clears each after its hold time (restarts what it
killed, thaws what it froze, frees what it filled) and times the recovery: a fault has
recovered when a round closes after it was cleared with every hospital accepted, or the run
ends well. The same seed gives the same plan; when a fault lands depends on the run's pace.

Moments are read from the coordinator's persisted state, as an operator would: ``training`` (the
round is open and the target has not said it is ready), ``upload`` (the participants are fixed
and the target's update is not in yet), ``aggregation`` (all but one update are in: the next one
closes the round; a hospital hit then has mostly had its update accepted already),
``state-write`` (right after the state file changed).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Protocol

#: Every kind of fault, and the moments each may be timed to.
KINDS: Final[Mapping[str, tuple[str, ...]]] = {
    "kill-hospital": ("training", "upload", "aggregation"),
    "kill-coordinator": ("upload", "aggregation", "state-write"),
    "kill-broker-node": ("training", "upload", "aggregation"),
    "pause": ("training", "upload", "aggregation"),
    "store-5xx": ("upload", "aggregation"),
    "store-drop": ("upload", "aggregation"),
    "store-full": ("upload", "aggregation"),
}
#: Seconds each kind holds (a restart delay, a pause, an outage, a full disk): (least, most).
HOLDS: Final[Mapping[str, tuple[float, float]]] = {
    "kill-hospital": (0.5, 3.0),
    "kill-coordinator": (0.5, 3.0),
    "kill-broker-node": (5.0, 20.0),
    "pause": (2.0, 8.0),
    "store-5xx": (0.0, 0.0),
    "store-drop": (0.0, 0.0),
    "store-full": (3.0, 10.0),
}
#: Seconds a fault waits for its moment before it is injected anyway (moment "any").
MOMENT_WAIT: Final = 30.0


@dataclass(frozen=True)
class Fault:
    kind: str
    target: str  # a hospital, "coordinator", a broker node's index ("node-2"), or "store"
    moment: str
    hold: float  # seconds before it is cleared
    gap: float  # seconds after the previous fault was cleared
    size: int = 0  # store-5xx: answers failed; store-drop: connections dropped


@dataclass
class Outcome:
    """What became of one injected fault; times in seconds since the soak started."""

    fault: Fault
    moment: str  # the moment it landed in ("any" when its own never came)
    injected: float
    cleared: float
    recovered: float | None = None
    round: int = 0  # the open round when it was injected

    @property
    def time_to_recover(self) -> float | None:
        return None if self.recovered is None else self.recovered - self.injected

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self.fault),
            "landed": self.moment,
            "round": self.round,
            "injected": round(self.injected, 2),
            "cleared": round(self.cleared, 2),
            "recovered": None if self.recovered is None else round(self.recovered, 2),
            "time_to_recover": (
                None if self.time_to_recover is None else round(self.time_to_recover, 2)
            ),
        }


def plan_faults(
    seed: int,
    *,
    count: int,
    kinds: Sequence[str],
    hospitals: Sequence[str],
    broker_nodes: int,
    gap: tuple[float, float] = (2.0, 10.0),
    hold_scale: float = 1.0,
) -> list[Fault]:
    """``count`` faults drawn from ``kinds``: each kind once (when ``count`` allows), then random
    ones, in a seeded order, holding ``hold_scale`` times their kind's ``HOLDS``; the same
    arguments give the same list."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ValueError(f"unknown fault kinds {unknown}; known: {', '.join(KINDS)}")
    rng = random.Random(seed)
    # Every kind once first (in a seeded order), so a run that ends early has still seen each.
    chosen = rng.sample(list(kinds), len(kinds))[:count]
    chosen += [rng.choice(list(kinds)) for _ in range(count - len(chosen))]
    faults = []
    for kind in chosen:
        if kind in ("kill-hospital", "pause"):
            pool = [*hospitals, "coordinator"] if kind == "pause" else list(hospitals)
            target = rng.choice(pool)
        elif kind == "kill-coordinator":
            target = "coordinator"
        elif kind == "kill-broker-node":
            target = f"node-{rng.randrange(broker_nodes) + 1}"
        else:
            target = "store"
        least, most = HOLDS[kind]
        size = {"store-5xx": rng.randint(2, 5), "store-drop": rng.randint(1, 2)}.get(kind, 0)
        faults.append(
            Fault(
                kind=kind,
                target=target,
                moment=rng.choice(KINDS[kind]),
                hold=round(rng.uniform(least, most) * hold_scale, 2),
                gap=round(rng.uniform(*gap), 2),
                size=size,
            )
        )
    return faults


class Federation(Protocol):
    """What the scheduler needs of a running soak (``testkit.soak.Soak``)."""

    def state(self) -> dict[str, Any] | None: ...
    def state_mtime(self) -> float: ...
    def inject(self, fault: Fault) -> None: ...
    def clear(self, fault: Fault) -> None: ...
    def check(self) -> None: ...


@dataclass
class Scheduler:
    federation: Federation
    faults: Sequence[Fault]
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    poll: float = 0.02
    outcomes: list[Outcome] = field(default_factory=list)
    started: float = 0.0

    def run(self, *, done: Callable[[dict[str, Any] | None], bool]) -> None:
        """Inject every fault in turn (stopping early when ``done``), then wait for none."""
        self.started = self.clock()
        for fault in self.faults:
            if self._wait(fault.gap, done):
                return
            moment = self._await_moment(fault, done)
            if moment is None:
                return
            state = self.federation.state() or {}
            injected = self._now()
            self.federation.inject(fault)
            self._wait(fault.hold, lambda _state: False)
            self.federation.clear(fault)
            self.outcomes.append(
                Outcome(fault, moment, injected, self._now(), round=int(state.get("round", 0)))
            )
            self.note_progress()

    def note_progress(self) -> None:
        """Mark as recovered every outcome whose round has closed (or the run ended)."""
        state = self.federation.state() or {}
        closed = _closed_rounds(state)
        finished = state.get("phase") == "done"
        for outcome in self.outcomes:
            if outcome.recovered is not None:
                continue
            if finished or closed >= max(outcome.round, 1):  # its round has closed since
                outcome.recovered = self._now()

    def _now(self) -> float:
        return self.clock() - self.started

    def _wait(self, seconds: float, done: Callable[[dict[str, Any] | None], bool]) -> bool:
        """Sleep ``seconds`` while watching the federation; True when it is done."""
        until = self.clock() + seconds
        while self.clock() < until:
            self.federation.check()
            self.note_progress()
            if done(self.federation.state()):
                return True
            self.sleep(self.poll)
        return False

    def _await_moment(
        self, fault: Fault, done: Callable[[dict[str, Any] | None], bool]
    ) -> str | None:
        """Wait until ``fault``'s moment (at most ``MOMENT_WAIT`` s); the moment it landed in,
        None when the run ended meanwhile."""
        until = self.clock() + MOMENT_WAIT
        seen = self.federation.state_mtime()
        while self.clock() < until:
            self.federation.check()
            self.note_progress()
            state = self.federation.state()
            if done(state):
                return None
            mtime = self.federation.state_mtime()
            if state is not None and _at_moment(fault, state, changed=mtime != seen):
                return fault.moment
            seen = mtime
            self.sleep(self.poll)
        return "any"


def _closed_rounds(state: Mapping[str, Any]) -> int:
    return len(state.get("history") or ())


def _at_moment(fault: Fault, state: Mapping[str, Any], *, changed: bool) -> bool:
    if state.get("phase") != "round":
        return False
    if fault.moment == "state-write":
        return changed
    participants = list(state.get("participants") or ())
    accepted = {entry["hospital"] for entry in state.get("accepted") or ()}
    hospital = fault.target if fault.target.startswith("hospital-") else None
    if fault.moment == "training":
        ready = set(state.get("ready") or ())
        return not participants and (hospital not in ready if hospital else not ready)
    if fault.moment == "upload":
        return bool(participants) and (
            hospital not in accepted if hospital else len(accepted) < len(participants) - 1
        )
    if fault.moment == "aggregation":  # whoever the target: one accepted hits the journal path
        missing = [h for h in participants if h not in accepted]
        return bool(participants) and len(missing) == 1
    raise ValueError(f"unknown moment {fault.moment!r}")
