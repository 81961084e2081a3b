"""The coordinator: wires transport, store and aggregator around the pure state machine.

It holds public HE material only. Each accepted submission is added into the round's running
sum as it arrives and then dropped, so memory grows with the model, not with the number of
hospitals.

Nothing a hospital writes is trusted beyond what its signature covers. An update blob is read
only after the signed message naming it passed the round rules; its size is bounded before it is
read, and its header (kind, summands, value count, run, round, sender) must match the plan and
that message before its payload is touched.

State lives in the coordinator's private state store (``state_store``: a folder only it can
write), signed with its own key after every transition, with each accepted entry's signed
message inside; a restarted coordinator checks its signature, re-verifies every entry with the
hospital's key and re-adds the blobs. The operator's summary (per-hospital metrics) is there too;
the shared store gets only the aggregates and a public summary of aggregate metrics. Rejection
counters are saved in batches, so a flood of garbage costs no write per message.

In a masked run (``plan.masking``) hospitals first say ``UpdateReady``; the coordinator fixes and
signs the round's participant set (``ParticipantsFixed``) and accepts only uploads masked for
that set. When a participant fails or misses the mask deadline, the attempt's partial sum is
dropped (it holds masks of the missing one) and those that uploaded are fixed as the next
attempt's set, to mask their trained update afresh.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from common.crypto import AGGREGATE, Aggregator, Binding, BlobHeader, RunningSum
from common.crypto.blob import COORDINATOR_SENDER
from common.errors import BlobTooLargeError, HeflError, ProtocolError, StoreError
from common.logs import log_event
from common.observe import Family
from common.protocol import layout
from common.protocol.history import aggregate_chain
from common.protocol.messages import (
    FOLLOW_RUN,
    FinalReport,
    Hello,
    Message,
    ParticipantsFixed,
    RoundStarted,
    RunAborted,
    RunFinished,
    UpdateFailed,
    UpdateReady,
    UpdateSubmitted,
)
from common.protocol.signing import MessageCodec, SignatureError
from common.store import Store, get_verified, sha256_hex
from common.transport import ANNOUNCE, SUBMIT, Transport
from coordinator import state as sm
from coordinator import status as statuses
from coordinator import summary as summaries

logger = logging.getLogger("hefl.coordinator")

#: Rejection counters alone are saved at most this often (any transition saves them at once).
REJECTION_SAVE_SECONDS = 5.0
#: Largest signed state the coordinator reads back.
MAX_STATE_BYTES = 64 << 20


ProgressCallback = Callable[[sm.RoundRecord, sm.RunState], None]


class Coordinator:
    """Runs one federated run to completion over a Transport and a Store."""

    def __init__(
        self,
        plan: sm.RunPlan,
        *,
        transport: Transport,
        store: Store,
        state_store: Store,
        aggregator: Aggregator,
        codec: MessageCodec,
        clock: Callable[[], float] = time.time,
        on_progress: ProgressCallback | None = None,
        keep_updates: bool = False,
    ) -> None:
        if state_store is store:
            raise ProtocolError(
                "the coordinator's state store must not be the shared store: hospitals can write "
                "there, and it holds per-hospital metrics"
            )
        self.plan = plan
        self._codec = codec
        self._transport = transport
        self._store = store
        self._state_store = state_store
        self._aggregator = aggregator
        self._clock = clock
        self._on_progress = on_progress
        self._keep_updates = keep_updates
        self._max_blob = aggregator.spec.max_blob_bytes(plan.value_count)
        self._sum: RunningSum = aggregator.new_sum()
        self._hello_at: dict[str, float] = {}
        # A second Hello within the interval (a hospital restarted at once): answered when the
        # interval is over, so a restarted hospital still learns the round; more are refused.
        self._deferred_hellos: dict[str, str] = {}  # hospital -> the run it said hello for
        self._seen: dict[str, float] = {}  # when each hospital's last signed message came
        self.meter = statuses.Meter()
        self._failures: dict[str, str] = {}  # this round's UpdateFailed errors, for the operator
        self._unsaved_rejections = False
        self._saved_at = -float("inf")
        self.state = sm.new_run(plan, clock())

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe, resume persisted state if any, and (re)announce the current round."""
        self._transport.subscribe_with_sender(SUBMIT, self.handle)
        key = layout.state_key(self.plan.run)
        if self._state_store.exists(key):
            self.state = self._load_state(key)
            self._rebuild_sum()
            self._delete_summed_updates()  # a crash may have come between aggregate and delete
            self._log("run_resumed", phase=self.state.phase)
        else:
            self._persist()
            self._log("run_started", rounds=self.plan.rounds, hospitals=len(self.plan.hospitals))
        self._announce()

    @property
    def finished(self) -> bool:
        return self.state.phase in ("done", "failed")

    def tick(self, *, deadlines: bool = True) -> None:
        """Act on what the run needs now; call periodically, when no delivery is waiting.

        Each delivery calls it with ``deadlines=False``: a message can complete a round, but
        only the periodic call enforces a deadline. After the coordinator was paused, the
        submissions queued meanwhile are then counted before a deadline can fail the round.
        """
        now = self._clock()
        for hospital, run in list(self._deferred_hellos.items()):
            if now - self._hello_at.get(hospital, -float("inf")) >= self.plan.hello_interval:
                del self._deferred_hellos[hospital]
                self._on_hello(Hello(run=run, hospital=hospital))
        if self._unsaved_rejections and now - self._saved_at >= REJECTION_SAVE_SECONDS:
            self._persist()
        judged_at = now if deadlines else -float("inf")
        if self.state.phase == "round":
            decision = sm.round_decision(self.plan, self.state, judged_at)
            if decision == "close":
                self._close_round(now)
            elif decision in ("fix", "refix"):
                self._fix_participants(decision, now)
            elif decision == "fail":
                self._fail(self._quorum_missed(judged_at))
        elif self.state.phase == "final" and sm.final_decision(self.plan, self.state, judged_at):
            self.state = sm.finish_run(self.state)
            self._report_progress(self.state.history[-1])
            self._persist()
            self._write_summary()
            self._log(
                "run_finished",
                rounds=len(self.state.history),
                final_round=self.state.final_round,
                stopped=self.state.stop_reason,
            )

    # -- messages --------------------------------------------------------------------------------

    def handle(self, body: bytes, sender: str) -> None:
        """Handle one submission-topic message from ``sender`` (the participant the transport
        authenticated); bad input is counted and logged, never raised."""
        try:
            message = self._codec.decode(body)
        except SignatureError as exc:
            self._reject("bad-signature", str(exc))
            return
        except ProtocolError as exc:
            self._reject("malformed", str(exc))
            return
        speaker = getattr(message, "hospital", None)
        if speaker != sender:
            # Signed by the hospital it names, but sent over another participant's connection:
            # a relayed or replayed message. Only a site's own login may speak for it.
            self._reject("sender-mismatch", f"{sender} sent a message of {speaker}")
            return
        self._seen[sender] = self._clock()
        try:
            self._dispatch(message, body)
        except HeflError as exc:
            self._reject(type(exc).__name__, str(exc))
        self.tick(deadlines=False)

    def _dispatch(self, message: Message, body: bytes) -> None:
        if isinstance(message, UpdateSubmitted):
            self._on_update(message, body)
        elif isinstance(message, UpdateReady):
            self._on_ready(message)
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
            self._on_hello(message)
        else:
            raise ProtocolError(f"{type(message).__name__} is not for the coordinator")

    def _on_hello(self, msg: Hello) -> None:
        if msg.run not in (self.plan.run, FOLLOW_RUN) or msg.hospital not in self.plan.hospitals:
            self._reject("other-run", f"hello from {msg.hospital} for run {msg.run}")
            return
        now = self._clock()
        if now - self._hello_at.get(msg.hospital, -float("inf")) < self.plan.hello_interval:
            # A re-announcement goes to every hospital: a chatty one must not flood them. One
            # Hello waits for the interval's end (a restarted hospital must learn the round).
            if msg.hospital not in self._deferred_hellos:
                self._deferred_hellos[msg.hospital] = msg.run
                self._log("hello_deferred", hospital=msg.hospital)
                return
            self._reject(
                "hello-rate",
                f"{msg.hospital} said hello again within {self.plan.hello_interval:g} s",
            )
            return
        self._hello_at[msg.hospital] = now
        self._log("hello", hospital=msg.hospital)
        self._join(msg.hospital)
        fixed_without = self.state.participants and msg.hospital not in self.state.participants
        if fixed_without and msg.run == self.plan.run:
            # The round's set is fixed without it: it would train for nothing. It is on the
            # roster now, and the next announcement reaches it. (One that follows whatever
            # run is announced still gets this one: it learns the run id from it.)
            self._log("hello_after_fix", hospital=msg.hospital)
            return
        self._announce()

    def _join(self, hospital: str) -> None:
        """``hospital`` is alive: on the roster through this round's close, persisted."""
        joined = sm.with_hello(self.state, hospital)
        if joined is not self.state:  # with_hello returns its argument when nothing changes
            self.state = joined
            self._persist()

    def _on_ready(self, msg: UpdateReady) -> None:
        reason = sm.judge_ready(self.plan, self.state, msg.run, msg.round, msg.hospital)
        if reason == "duplicate" and msg.hospital in self.state.ready:
            return  # at-least-once delivery
        if reason == "late":
            # An honest newcomer: it trained for a round whose set was already fixed (the
            # re-announcement it joined on). Not a rejection; the next round waits for it.
            self._join(msg.hospital)
            self._log("ready_too_late", hospital=msg.hospital, for_round=msg.round)
            return
        if reason:
            self._reject(reason, f"readiness of {msg.hospital} for round {msg.round}")
            return
        self.state = sm.with_ready(self.state, msg.hospital)
        self._persist()
        self._log("hospital_ready", hospital=msg.hospital)

    def _on_update(self, msg: UpdateSubmitted, envelope: bytes) -> None:
        reason = sm.judge_submission(
            self.plan, self.state, msg.run, msg.round, msg.hospital, msg.attempt
        )
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
        try:
            blob = get_verified(self._store, msg.blob_ref, msg.sha256, max_bytes=self._max_blob)
        except BlobTooLargeError as exc:
            self._refuse_blob(msg, "blob-size", str(exc))
            return
        reason = self._judge_header(self._aggregator.spec.header(blob), msg)
        if reason:
            self._refuse_blob(msg, reason, f"{msg.hospital}'s blob {msg.blob_ref}")
            return
        self.meter.bytes_received += len(blob)
        started = time.perf_counter()
        self._sum.add(blob)
        self.meter.aggregation_seconds += time.perf_counter() - started
        entry = sm.Accepted(
            hospital=msg.hospital,
            blob_ref=msg.blob_ref,
            sha256=msg.sha256,
            size=len(blob),
            metrics=dict(msg.metrics),
            envelope=envelope.decode(),
        )
        self.state = sm.with_accepted(self.state, entry)
        self._persist()
        self._log("update_accepted", hospital=msg.hospital, bytes=len(blob))

    def _refuse_blob(self, msg: UpdateSubmitted, reason: str, detail: str) -> None:
        """The hospital signed a submission of a blob that can never count: its answer to this
        round is a failure, so the round does not wait for it until the deadline."""
        self._reject(reason, f"{detail} for round {msg.round}")
        self.state = sm.with_failed(self.state, msg.hospital)
        self._persist()

    def _judge_header(self, header: BlobHeader, msg: UpdateSubmitted) -> str:
        return sm.judge_blob(
            self.plan,
            kind=header.kind,
            summands=header.summands,
            value_count=header.value_count,
            binding=(header.run, header.round, header.sender),
            run=msg.run,
            round_=msg.round,
            hospital=msg.hospital,
        )

    def _on_failed(self, msg: UpdateFailed) -> None:
        reason = sm.judge_submission(self.plan, self.state, msg.run, msg.round, msg.hospital)
        if reason:
            self._reject(reason, f"failure report from {msg.hospital} for round {msg.round}")
            return
        self.state = sm.with_failed(self.state, msg.hospital)
        self._failures[msg.hospital] = msg.error
        self._persist()
        self._log("update_failed", level=logging.WARNING, hospital=msg.hospital, error=msg.error)

    def _quorum_missed(self, now: float) -> str:
        """Why the round failed: too few hospitals ready (masked, before the set is fixed) or
        submitted, by the deadline or because the others reported failures."""
        gathering = self.plan.masking and not self.state.participants
        answered = self.state.ready if gathering else self.state.accepted
        deadline = self.state.mask_deadline if self.state.participants else self.state.deadline
        return (
            f"round {self.state.round}: only {len(answered)} of {self.plan.min_hospitals} "
            f"required hospitals {'were ready' if gathering else 'submitted'} "
            + ("before the deadline" if now >= deadline else "(the others failed)")
            + self._reported_failures()
        )

    def _reported_failures(self) -> str:
        """The errors hospitals reported this round, each once with who reported it."""
        by_error: dict[str, list[str]] = {}
        for hospital, error in sorted(self._failures.items()):
            by_error.setdefault(error, []).append(hospital)
        reports = [f"{', '.join(names)}: {error}" for error, names in by_error.items()]
        text = f"; reported: {'; '.join(reports)}" if reports else ""
        return text if len(text) <= 2000 else text[:1997] + "..."  # RunAborted stays small

    # -- transitions -----------------------------------------------------------------------------

    def _close_round(self, now: float) -> None:
        closed = self.state.round
        binding = Binding(run=self.plan.run, round=closed, sender=COORDINATOR_SENDER)
        started = time.perf_counter()
        aggregate = self._sum.to_blob(AGGREGATE, binding)
        key = layout.aggregate_key(self.plan.run, closed)
        self._store.put(key, aggregate)
        self.meter.aggregation_seconds += time.perf_counter() - started
        self.meter.bytes_sent += len(aggregate)
        contributed = [entry.blob_ref for entry in self.state.accepted]
        # Participants dropped from a masked round may have left an upload of an earlier
        # attempt (masked for a set that never completed): it goes too.
        dropped = set(self.state.ready) - set(self.state.accepted_hospitals)
        contributed += [layout.update_key(self.plan.run, closed, h) for h in sorted(dropped)]
        closed_state = sm.close_round(
            self.plan,
            self.state,
            aggregate_ref=key,
            aggregate_sha256=sha256_hex(aggregate),
            now=now,
        )
        # Adopted only once saved: a write that fails (a full disk, after waiting) leaves the
        # round open with its running sum, and the next tick closes it again.
        self._persist(closed_state)
        self.state = closed_state
        self._sum = self._aggregator.new_sum()
        self._failures = {}
        self._announce()  # the new round is durable: announce it before the writes that may wait
        self._write_public_summary()
        if not self._keep_updates:  # the aggregate and the state naming it are durable now
            for ref in contributed:
                self._store.delete(ref)
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

    def _fix_participants(self, decision: str, now: float) -> None:
        """Fix who masks with whom; after a dropout, the ones that uploaded mask afresh."""
        if decision == "refix":
            before = self.state.participants
            self.state = sm.refix_participants(self.plan, self.state, now)
            self._sum = self._aggregator.new_sum()  # it holds masks of the missing ones
            missing = ",".join(h for h in before if h not in self.state.participants)
            self._log("participants_dropped", level=logging.WARNING, missing=missing)
        else:
            self.state = sm.fix_participants(self.plan, self.state, now)
        self._persist()
        self._log(
            "participants_fixed",
            attempt=self.state.attempt,
            participants=len(self.state.participants),
        )
        self._announce()

    def _fail(self, error: str) -> None:
        self.state = sm.fail_run(self.state, error)
        self._persist()
        self._write_summary()
        self._log("run_failed", level=logging.ERROR, error=error)
        self._announce()

    def _announce(self) -> None:
        history = self.state.history
        if self.state.phase == "round":
            ref = self.state.global_ref
            message: Message = RoundStarted(
                run=self.plan.run,
                round=self.state.round,
                global_ref=ref[0] if ref else None,
                global_sha256=ref[1] if ref else None,
                deadline=self.state.deadline,
                config_digest=self.plan.config_digest,
                history_sha256=aggregate_chain(r.aggregate_sha256 for r in history),
            )
            if self.state.participants:  # also re-announced, for a restarted coordinator
                self._transport.publish(ANNOUNCE, self._codec.encode(message))
                message = ParticipantsFixed(
                    run=self.plan.run,
                    round=self.state.round,
                    attempt=self.state.attempt,
                    participants=self.state.participants,
                    deadline=self.state.mask_deadline,
                )
        elif self.state.phase == "final":
            final = self.state.final_record
            if final is None:
                return
            message = RunFinished(
                run=self.plan.run,
                rounds=len(history),
                final_ref=final.aggregate_ref,
                final_sha256=final.aggregate_sha256,
                config_digest=self.plan.config_digest,
                final_round=final.round,
                history_sha256=aggregate_chain(r.aggregate_sha256 for r in history[: final.round]),
            )
        elif self.state.phase == "failed":
            message = RunAborted(run=self.plan.run, reason=self.state.error or "run failed")
        else:
            return
        self._transport.publish(ANNOUNCE, self._codec.encode(message))

    # -- persistence and reporting ---------------------------------------------------------------

    def _delete_summed_updates(self) -> None:
        """Delete the update blobs of rounds already summed (unless ``keep_updates``)."""
        if self._keep_updates:
            return
        open_round = self.state.round if self.state.phase == "round" else self.state.round + 1
        for hospital in self.plan.hospitals:
            for key in self._store.list(layout.updates_prefix(self.plan.run, hospital) + "/"):
                summed = layout.round_of_update(key)
                if summed is not None and summed < open_round:
                    self._store.delete(key)

    def _load_state(self, key: str) -> sm.RunState:
        where = f"{key} in {self._state_store!r}"
        try:
            body = self._codec.open_state(self._state_store.get(key, max_bytes=MAX_STATE_BYTES))
        except (SignatureError, StoreError) as exc:
            raise ProtocolError(
                f"refusing to resume from the coordinator state {where}: {exc}. Move it away to "
                "start the run afresh"
            ) from exc
        state = sm.from_json(body)
        if state.run != self.plan.run:
            raise ProtocolError(f"the coordinator state {where} is of run {state.run}")
        return state

    def _rebuild_sum(self) -> None:
        """After a restart, re-add the blobs this round had already accepted, each only after
        its hospital's signed message is verified again and still names it."""
        self._sum = self._aggregator.new_sum()
        for entry in self.state.accepted:
            message = self._codec.decode(entry.envelope.encode())
            if not (
                isinstance(message, UpdateSubmitted)
                and (message.run, message.round, message.hospital, message.attempt)
                == (self.plan.run, self.state.round, entry.hospital, self.state.attempt)
                and (message.blob_ref, message.sha256) == (entry.blob_ref, entry.sha256)
            ):
                raise ProtocolError(
                    f"coordinator state: the accepted entry of {entry.hospital} does not match "
                    "the signed submission it carries"
                )
            blob = get_verified(self._store, entry.blob_ref, entry.sha256, max_bytes=self._max_blob)
            if self._judge_header(self._aggregator.spec.header(blob), message):
                raise ProtocolError(f"coordinator state: {entry.blob_ref} no longer fits its round")
            self._sum.add(blob)

    def _persist(self, state: sm.RunState | None = None) -> None:
        """Save ``state`` (by default the current one), signed, in the private state store."""
        body = self._codec.seal_state(sm.to_json(self.state if state is None else state))
        self._state_store.put(layout.state_key(self.plan.run), body)
        self._unsaved_rejections = False
        self._saved_at = self._clock()

    def summary(self) -> dict[str, Any]:
        """The operator's summary (``coordinator.summary.operator_summary``)."""
        return summaries.operator_summary(self.plan, self.state)

    def _write_summary(self) -> None:
        body = summaries.to_bytes(self.summary())
        self._state_store.put(layout.summary_key(self.plan.run), body)
        self._write_public_summary()

    def _write_public_summary(self) -> None:
        body = summaries.to_bytes(summaries.public_summary(self.plan, self.state))
        self._store.put(layout.public_summary_key(self.plan.run), body)
        self.meter.bytes_sent += len(body)

    def status(self) -> dict[str, Any]:
        """The operator's live view (``coordinator.status.status``); safe from another thread:
        it reads the current immutable state and copies of the running totals."""
        return statuses.status(
            self.plan, self.state, seen=dict(self._seen), meter=self.meter, now=self._clock()
        )

    def metric_families(self) -> list[Family]:
        """The run's Prometheus metrics (no hospital named in any)."""
        return statuses.metric_families(self.plan, self.state, meter=self.meter)

    def _report_progress(self, record: sm.RoundRecord) -> None:
        if self._on_progress is not None:
            self._on_progress(record, self.state)

    def _reject(self, reason: str, detail: str) -> None:
        self.state = sm.with_rejection(self.state, reason)
        self._unsaved_rejections = True  # saved by the next transition or tick, not per message
        self._log("message_rejected", level=logging.WARNING, reason=reason, detail=detail)

    def _log(self, event: str, *, level: int = logging.INFO, **fields: object) -> None:
        log_event(logger, event, level=level, run=self.plan.run, round=self.state.round, **fields)
