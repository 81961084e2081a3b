"""The coordinator: wires transport, store and aggregator around the pure state machine.

It holds public HE material only. Each accepted submission is added into the round's running
sum as it arrives and then dropped, so memory grows with the model, not with the number of
hospitals. State is persisted in the store after every transition, so a restarted coordinator
resumes at the same round by re-adding the blobs it had already accepted.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from common.crypto import Aggregator, RunningSum
from common.errors import HeflError, ProtocolError
from common.logs import log_event
from common.protocol import layout
from common.protocol.messages import (
    FinalReport,
    Hello,
    Message,
    RoundStarted,
    RunAborted,
    RunFinished,
    UpdateFailed,
    UpdateSubmitted,
)
from common.protocol.signing import MessageCodec, SignatureError
from common.store import Store, get_verified, sha256_hex
from common.transport import ANNOUNCE, SUBMIT, Transport
from coordinator import state as sm

logger = logging.getLogger("hefl.coordinator")


ProgressCallback = Callable[[sm.RoundRecord, sm.RunState], None]


class Coordinator:
    """Runs one federated run to completion over a Transport and a Store."""

    def __init__(
        self,
        plan: sm.RunPlan,
        *,
        transport: Transport,
        store: Store,
        aggregator: Aggregator,
        codec: MessageCodec,
        clock: Callable[[], float] = time.time,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.plan = plan
        self._codec = codec
        self._transport = transport
        self._store = store
        self._aggregator = aggregator
        self._clock = clock
        self._on_progress = on_progress
        self._sum: RunningSum = aggregator.new_sum()
        self.state = sm.new_run(plan, clock())

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe, resume persisted state if any, and (re)announce the current round."""
        self._transport.subscribe(SUBMIT, self.handle)
        key = layout.state_key(self.plan.run)
        if self._store.exists(key):
            self.state = sm.from_json(self._store.get(key))
            self._rebuild_sum()
            self._log("run_resumed", phase=self.state.phase)
        else:
            self._persist()
            self._log("run_started", rounds=self.plan.rounds, hospitals=len(self.plan.hospitals))
        self._announce()

    @property
    def finished(self) -> bool:
        return self.state.phase in ("done", "failed")

    def tick(self) -> None:
        """Act on deadlines; call periodically (the embedded loop calls it after each delivery)."""
        now = self._clock()
        if self.state.phase == "round":
            decision = sm.round_decision(self.plan, self.state, now)
            if decision == "close":
                self._close_round(now)
            elif decision == "fail":
                self._fail(
                    f"round {self.state.round}: only {len(self.state.accepted)} of "
                    f"{self.plan.min_hospitals} required hospitals submitted before the deadline"
                )
        elif self.state.phase == "final" and sm.final_decision(self.plan, self.state, now):
            self.state = sm.finish_run(self.state)
            self._report_progress(self.state.history[-1])
            self._persist()
            self._write_summary()
            self._log("run_finished", rounds=self.plan.rounds)

    # -- messages --------------------------------------------------------------------------------

    def handle(self, body: bytes) -> None:
        """Handle one submission-topic message; bad input is counted and logged, never raised."""
        try:
            message = self._codec.decode(body)
        except SignatureError as exc:
            self._reject("bad-signature", str(exc))
            return
        except ProtocolError as exc:
            self._reject("malformed", str(exc))
            return
        try:
            self._dispatch(message)
        except HeflError as exc:
            self._reject(type(exc).__name__, str(exc))
        self.tick()

    def _dispatch(self, message: Message) -> None:
        if isinstance(message, UpdateSubmitted):
            self._on_update(message)
        elif isinstance(message, UpdateFailed):
            self._on_failed(message)
        elif isinstance(message, FinalReport):
            if message.run != self.plan.run:
                raise ProtocolError(f"final report for run {message.run}")
            self.state = sm.with_final_report(
                self.plan, self.state, message.hospital, message.metrics
            )
            self._persist()
        elif isinstance(message, Hello):
            self._log("hello", hospital=message.hospital)
            if message.run == self.plan.run and message.hospital in self.plan.hospitals:
                joined = sm.with_hello(self.state, message.hospital)
                if joined is not self.state:  # with_hello returns its argument when nothing changes
                    self.state = joined
                    self._persist()
                self._announce()
        else:
            raise ProtocolError(f"{type(message).__name__} is not for the coordinator")

    def _on_update(self, msg: UpdateSubmitted) -> None:
        reason = sm.judge_submission(self.plan, self.state, msg.run, msg.round, msg.hospital)
        if reason == "duplicate" and any(
            a.hospital == msg.hospital and a.sha256 == msg.sha256 for a in self.state.accepted
        ):
            return  # at-least-once delivery: the same submission again changes nothing
        if reason == "late":
            self.state = sm.with_member(self.state, msg.hospital)  # alive: wait for it again
        if reason:
            self._reject(reason, f"update from {msg.hospital} for round {msg.round}")
            return
        if msg.blob_ref != layout.update_key(msg.run, msg.round, msg.hospital):
            self._reject("bad-ref", f"{msg.hospital} named blob {msg.blob_ref}")
            return
        blob = get_verified(self._store, msg.blob_ref, msg.sha256)
        self._sum.add(blob)
        entry = sm.Accepted(
            hospital=msg.hospital,
            blob_ref=msg.blob_ref,
            sha256=msg.sha256,
            size=len(blob),
            metrics=dict(msg.metrics),
        )
        self.state = sm.with_accepted(self.state, entry)
        self._persist()
        self._log("update_accepted", hospital=msg.hospital, bytes=len(blob))

    def _on_failed(self, msg: UpdateFailed) -> None:
        reason = sm.judge_submission(self.plan, self.state, msg.run, msg.round, msg.hospital)
        if reason:
            self._reject(reason, f"failure report from {msg.hospital} for round {msg.round}")
            return
        self.state = sm.with_failed(self.state, msg.hospital)
        self._persist()
        self._log("update_failed", level=logging.WARNING, hospital=msg.hospital, error=msg.error)

    # -- transitions -----------------------------------------------------------------------------

    def _close_round(self, now: float) -> None:
        aggregate = self._sum.to_blob()
        key = layout.aggregate_key(self.plan.run, self.state.round)
        self._store.put(key, aggregate)
        closed = self.state.round
        self.state = sm.close_round(
            self.plan,
            self.state,
            aggregate_ref=key,
            aggregate_sha256=sha256_hex(aggregate),
            now=now,
        )
        self._sum = self._aggregator.new_sum()
        self._persist()
        record = self.state.history[-1]
        self._log(
            "round_closed",
            closed_round=closed,
            accepted=len(record.accepted),
            failed=len(record.failed),
            seconds=round(record.seconds, 3),
            bytes=record.bytes_uploaded,
        )
        if len(self.state.history) >= 2:
            self._report_progress(self.state.history[-2])
        self._announce()

    def _fail(self, error: str) -> None:
        self.state = sm.fail_run(self.state, error)
        self._persist()
        self._write_summary()
        self._log("run_failed", level=logging.ERROR, error=error)
        self._announce()

    def _announce(self) -> None:
        if self.state.phase == "round":
            ref = self.state.global_ref
            message: Message = RoundStarted(
                run=self.plan.run,
                round=self.state.round,
                global_ref=ref[0] if ref else None,
                global_sha256=ref[1] if ref else None,
                deadline=self.state.deadline,
                config_digest=self.plan.config_digest,
            )
        elif self.state.phase == "final":
            final = self.state.global_ref
            if final is None:
                return
            message = RunFinished(
                run=self.plan.run,
                rounds=self.plan.rounds,
                final_ref=final[0],
                final_sha256=final[1],
                config_digest=self.plan.config_digest,
            )
        elif self.state.phase == "failed":
            message = RunAborted(run=self.plan.run, reason=self.state.error or "run failed")
        else:
            return
        self._transport.publish(ANNOUNCE, self._codec.encode(message))

    # -- persistence and reporting ---------------------------------------------------------------

    def _rebuild_sum(self) -> None:
        """After a restart, re-add the blobs this round had already accepted."""
        self._sum = self._aggregator.new_sum()
        for entry in self.state.accepted:
            self._sum.add(get_verified(self._store, entry.blob_ref, entry.sha256))

    def _persist(self) -> None:
        self._store.put(layout.state_key(self.plan.run), sm.to_json(self.state))

    def summary(self) -> dict[str, Any]:
        """Metrics, timings and bytes moved: everything the coordinator may say in plaintext."""
        return {
            "run": self.plan.run,
            "phase": self.state.phase,
            "error": self.state.error,
            "rounds": [
                {
                    "round": r.round,
                    "accepted": list(r.accepted),
                    "failed": list(r.failed),
                    "seconds": r.seconds,
                    "bytes_uploaded": r.bytes_uploaded,
                    "train_loss": r.train_loss,
                    "holdout_metrics_mean": r.model_metrics,
                    "holdout_metrics_by_hospital": r.hospital_metrics,
                    "aggregate": r.aggregate_ref,
                }
                for r in self.state.history
            ],
            "rejected": dict(self.state.rejected),
        }

    def _write_summary(self) -> None:
        body = json.dumps(self.summary(), indent=1, allow_nan=False, default=str).encode()
        self._store.put(layout.summary_key(self.plan.run), body)

    def _report_progress(self, record: sm.RoundRecord) -> None:
        if self._on_progress is not None:
            self._on_progress(record, self.state)

    def _reject(self, reason: str, detail: str) -> None:
        self.state = sm.with_rejection(self.state, reason)
        self._persist()  # counters survive a restart, and operators can watch them in the store
        self._log("message_rejected", level=logging.WARNING, reason=reason, detail=detail)

    def _log(self, event: str, *, level: int = logging.INFO, **fields: object) -> None:
        log_event(logger, event, level=level, run=self.plan.run, round=self.state.round, **fields)
