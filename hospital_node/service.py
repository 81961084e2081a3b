"""A hospital node: answers round announcements with an encrypted weighted model.

Each round the node decrypts the announced aggregate (sum of weighted models and sum of
weights) into the round's average and applies the run's server optimizer to it
(``hospital_node.global_model``), keeping the global model and the optimizer's state in memory; a
restarted node rebuilds both by replaying the stored aggregates and answers the next
announcement. Any failure while evaluating, training or encrypting is reported to the
coordinator as ``UpdateFailed``, not as silence.

Besides its data and keys, the node keeps on disk only its reply journal (``journal``,
``hospital_node.journal``): each signed ``UpdateSubmitted`` is journaled after its blob is put and
before it is published, and a restarted node asked again for the same (run, round, attempt)
publishes the journaled bytes instead of encrypting anew, so a blob the coordinator accepted keeps
the bytes its digest names. A crash before the journal write re-uploads a blob the coordinator
never saw; one after it re-publishes a reply the coordinator takes as a repeated delivery.

In a masked run (``masks`` given) the node trains, keeps its update in memory and says
``UpdateReady``; it encrypts and uploads only for a ``ParticipantsFixed`` that names it, adding
its pairwise masks for exactly that set (``common.crypto.masking``). A later attempt of the same
round (a participant dropped out) is answered by masking the same update afresh: no retraining.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.bundle import BUNDLE_DIR, BundleSettings, write_bundle
from common.clinical import DEFAULT_TOP_FRACTION, ClinicalMetrics, clinical_metrics
from common.crypto import Binding, Cipher
from common.crypto.masking import Cohort, Masker, PairwiseMasks
from common.data.local import LocalData
from common.errors import HeflError, ProtocolError, TrainingError
from common.fedavg import (
    DEFAULT_SANITY,
    IMPRECISE_AVERAGE,
    Sanity,
    training_seed,
    weighted_payload,
)
from common.logs import log_event
from common.metrics import Metrics
from common.protocol import layout
from common.protocol.messages import (
    FOLLOW_RUN,
    FinalReport,
    Hello,
    ParticipantsFixed,
    RoundStarted,
    RunAborted,
    RunFinished,
    UpdateFailed,
    UpdateReady,
    UpdateSubmitted,
)
from common.protocol.signing import MessageCodec
from common.server_optimizer import DEFAULT_SERVER_CONFIG, ServerOptimizerConfig
from common.store import Store, sha256_hex
from common.transport import ANNOUNCE, SUBMIT, Transport
from hospital_node.global_model import GlobalModels
from hospital_node.journal import Journal, JournalError
from hospital_node.observer import HospitalObserver, Phase
from hospital_node.trainer import Trainer

logger = logging.getLogger("hefl.hospital")


@dataclass(frozen=True)
class _Trained:
    """A trained update and its metrics (a masked run keeps it until its participants are fixed)."""

    round: int
    payload: np.ndarray
    metrics: dict[str, float]


class Hospital:
    """One hospital's participation in one run."""

    def __init__(
        self,
        hospital: str,
        *,
        run: str | None,
        data: LocalData,
        trainer: Trainer,
        cipher: Cipher,
        transport: Transport,
        store: Store,
        codec: MessageCodec,
        initial_weights: np.ndarray,
        seed: int,
        config_digest: str,
        out_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
        sanity: Sanity = DEFAULT_SANITY,
        masks: PairwiseMasks | None = None,
        observers: Sequence[HospitalObserver] = (),
        bundle: BundleSettings | None = None,
        server_optimizer: ServerOptimizerConfig = DEFAULT_SERVER_CONFIG,
        journal: Journal | None = None,
    ) -> None:
        """``bundle``: keep the final model in ``out_dir`` as a model bundle (for ``hefl
        predict``); without it, as a bare ``final_model.keras``. Either way the final report
        carries the clinical metrics of the final model on this hospital's hold-out.
        ``journal``: where the replies sent are kept, so that a restart resends rather than
        re-uploads (None in the embedded simulation, whose hospitals never restart)."""
        self.hospital = hospital
        # None: follow the run the coordinator announces (the first signed RoundStarted of this
        # run's configuration whose deadline is ahead); a replayed one of an old run has expired.
        self.run = run or ""
        self._data = data
        self._trainer = trainer
        self._cipher = cipher
        self._transport = transport
        self._store = store
        self._codec = codec
        self.rejected: dict[str, int] = {}
        # The global model and the server optimizer's state, one round on per aggregate.
        self._globals = GlobalModels(
            store=store,
            cipher=cipher,
            initial_weights=initial_weights,
            server_optimizer=server_optimizer,
            sanity=sanity,
            on_precision=self._precision,
        )
        self._seed = seed
        self._config_digest = config_digest
        self._out_dir = out_dir
        self._clock = clock
        self._answered: set[int] = set()
        self._precision_warned = False  # the coarse-precision warning: once, then debug lines
        self._masks = masks
        self._trained: _Trained | None = None
        self._masked: tuple[int, int] = (0, 0)  # the (round, attempt) last uploaded
        self._observers = tuple(observers)
        self._done = 0  # the last round reported done to the observers
        self.final_weights: np.ndarray | None = None
        self.error: HeflError | None = None  # set when the final model could not be kept
        self.final_metrics: Metrics | None = None
        self.final_clinical: ClinicalMetrics | None = None
        self._bundle = bundle
        self._journal = journal

    def start(self, *, hello: bool = True) -> None:
        """Subscribe to announcements; ``hello`` asks the coordinator to re-announce its round
        (needed when joining a run in progress; the embedded simulation starts everyone first)."""
        self._transport.subscribe(ANNOUNCE, self.handle)
        if hello:
            self._transport.publish(
                SUBMIT,
                self._codec.encode(Hello(run=self.run or FOLLOW_RUN, hospital=self.hospital)),
            )

    def handle(self, body: bytes) -> None:
        try:
            message = self._codec.decode(body)
        except ProtocolError as exc:
            reason = type(exc).__name__
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
            self._log("message_rejected", level=logging.WARNING, reason=reason, detail=exc)
            return
        if not self.run and isinstance(message, RoundStarted):
            self._follow(message)
        if getattr(message, "run", None) != self.run:
            return
        if isinstance(message, RoundStarted):
            self._on_round(message)
        elif isinstance(message, ParticipantsFixed):
            self._on_participants(message)
        elif isinstance(message, RunFinished):
            self._on_finished(message)
        elif isinstance(message, RunAborted) and self.final_weights is None:
            self._log("run_aborted", level=logging.ERROR, reason=message.reason)
            self.error = ProtocolError(f"the coordinator aborted run {self.run}: {message.reason}")

    def _follow(self, msg: RoundStarted) -> None:
        if msg.config_digest == self._config_digest and msg.deadline > self._clock():
            self.run = msg.run
            self._log("run_followed", round=msg.round)

    def _global_weights(
        self, round_: int, ref: str | None, sha256: str | None, chain: str | None
    ) -> np.ndarray:
        """The global model after round ``round_`` (0: the initial model), whose aggregate
        ``ref`` has digest ``sha256``; ``chain``: the signed chain of rounds 1..``round_``."""
        return self._globals.after(self.run, round_, ref, sha256, chain).trainable

    def _precision(self, round_: int, error: float) -> None:
        if error <= IMPRECISE_AVERAGE:
            return
        if self._precision_warned:  # the same cause every round: said once at warning level
            self._log("imprecise_average", level=logging.DEBUG, round=round_, error=f"{error:.2g}")
            return
        self._precision_warned = True
        self._log(
            "imprecise_average",
            level=logging.WARNING,
            round=round_,
            error=f"{error:.2g}",
            hint="the federation's rows are few for this encryption's precision: a key "
            "ceremony with a larger --ckks-prime-bits lowers it (docs/encoding.md); "
            "later rounds log it at debug level",
        )

    def _on_round(self, msg: RoundStarted) -> None:
        if msg.round in self._answered:
            # A re-announcement (another hospital joined, or the coordinator restarted). Our reply
            # is already in the coordinator's durable queue or accepted in its persisted state,
            # so answering again would only produce a late duplicate.
            self._log("round_already_answered", level=logging.DEBUG, round=msg.round)
            return
        journaled = None if self._masks else self._journaled(msg.round, 0)
        if journaled is not None:
            # Answered before a restart: the same signed reply, and the accepted blob untouched.
            self._answered.add(msg.round)
            self._resend(msg.round, 0, journaled)
            return
        if self._clock() > msg.deadline:
            self._log("round_skipped", round=msg.round, reason="deadline passed")
            return
        started = time.perf_counter()
        try:
            reply = self._train_and_answer(msg)
        except HeflError as exc:
            self._report_failure(msg.round, exc)
            return
        self._answered.add(msg.round)
        self._transport.publish(SUBMIT, reply)
        if not self._masks:
            self._round_done(msg.round)
        event = "update_ready" if self._masks else "update_submitted"
        self._log(event, round=msg.round, seconds=time.perf_counter() - started)

    def _on_participants(self, msg: ParticipantsFixed) -> None:
        """Mask the trained update for this participant set, encrypt and upload it."""
        if (msg.round, msg.attempt) <= self._masked or self._masks is None:
            return  # done already (a re-announcement), or not a masked run
        trained = self._trained if self._trained and self._trained.round == msg.round else None
        if self.hospital not in msg.participants:
            if trained is not None:
                self._log("left_out", round=msg.round, attempt=msg.attempt)
            return
        journaled = self._journaled(msg.round, msg.attempt)
        if journaled is not None:
            # Uploaded for this very set before a restart: masking afresh would overwrite it.
            self._masked = (msg.round, msg.attempt)
            self._resend(msg.round, msg.attempt, journaled)
            return
        if self._clock() > msg.deadline:
            self._log("participants_skipped", round=msg.round, reason="deadline passed")
            return
        if trained is None:
            # Restarted after training: this set was queued for us while we were down. The
            # Hello we said on start makes the coordinator announce the round and this set
            # again; training is seeded, so the update we mask then is the one it expects.
            self._log(
                "participants_before_training",
                level=logging.WARNING,
                round=msg.round,
                attempt=msg.attempt,
                detail="restarted after training: waiting for the round's re-announcement",
            )
            return
        self._masked = (msg.round, msg.attempt)
        try:
            cohort = Cohort(
                run=self.run, round=msg.round, attempt=msg.attempt, participants=msg.participants
            )
            started = time.perf_counter()
            mask = self._masks.for_cohort(cohort)
            reply = self._upload(trained, mask, msg.attempt)
        except HeflError as exc:
            self._report_failure(msg.round, exc)
            return
        self._transport.publish(SUBMIT, reply)
        self._round_done(msg.round)
        self._log(
            "update_submitted",
            round=msg.round,
            attempt=msg.attempt,
            participants=len(msg.participants),
            seconds=time.perf_counter() - started,
        )

    def _resend(self, round_: int, attempt: int, reply: bytes) -> None:
        self._transport.publish(SUBMIT, reply)
        self._round_done(round_)
        self._log("update_resent", round=round_, attempt=attempt)

    def _journaled(self, round_: int, attempt: int) -> bytes | None:
        """The signed reply journaled for (run, ``round_``, ``attempt``), if a sound one is; a
        damaged entry is logged and ignored (the node then answers as if it had none)."""
        if self._journal is None:
            return None
        try:
            return self._journal.submission(self._codec, self.run, round_, attempt)
        except JournalError as exc:
            self._log(
                "journal_entry_ignored",
                level=logging.WARNING,
                round=round_,
                attempt=attempt,
                error=exc,
            )
            return None

    def _report_failure(self, round_: int, exc: HeflError) -> None:
        self._log("round_failed", level=logging.ERROR, round=round_, error=exc)
        failed = UpdateFailed(
            run=self.run, round=round_, hospital=self.hospital, error=str(exc)[:500]
        )
        self._transport.publish(SUBMIT, self._codec.encode(failed))

    def _train_and_answer(self, msg: RoundStarted) -> bytes:
        """Evaluate the global model, train on it; the signed answer: the upload's
        ``UpdateSubmitted``, or in a masked run ``UpdateReady`` (the update waits in memory)."""
        if msg.config_digest != self._config_digest:
            raise ProtocolError(
                f"run configuration differs from this hospital's (digest {msg.config_digest[:12]} "
                f"!= {self._config_digest[:12]}): check model, HE and schema settings"
            )
        weights = self._global_weights(
            msg.round - 1, msg.global_ref, msg.global_sha256, msg.history_sha256
        )
        d = self._data
        held_out = self._trainer.evaluate(weights, d.x_test, d.y_test)
        for observer in self._observers:
            observer.round_started(msg.round)
        started = time.perf_counter()
        fit = self._trainer.fit(
            weights, d.x_train, d.y_train, seed=training_seed(self._seed, msg.round, self.hospital)
        )
        self._phase_done("training", started)
        metrics = {
            "auc": held_out.auc,
            "accuracy": held_out.accuracy,
            "loss": held_out.loss,
            "train_loss": fit.loss,
        }
        trained = _Trained(msg.round, weighted_payload(fit.weights, fit.n), metrics)
        if self._masks is None:
            return self._upload(trained)
        self._trained = trained
        return self._codec.encode(
            UpdateReady(run=self.run, round=msg.round, hospital=self.hospital)
        )

    def _upload(self, trained: _Trained, mask: Masker | None = None, attempt: int = 0) -> bytes:
        """Encrypt (and mask) the update, put it in the store; the signed message naming it."""
        round_ = trained.round
        binding = Binding(run=self.run, round=round_, sender=self.hospital)
        started = time.perf_counter()
        blob = self._cipher.encrypt(trained.payload, binding=binding, mask=mask)
        self._phase_done("encryption", started)
        key = layout.update_key(self.run, round_, self.hospital)
        started = time.perf_counter()
        self._store.put(key, blob)
        self._phase_done("upload", started)
        reply = self._codec.encode(
            UpdateSubmitted(
                run=self.run,
                round=round_,
                hospital=self.hospital,
                blob_ref=key,
                sha256=sha256_hex(blob),
                attempt=attempt,
                metrics=trained.metrics,
            )
        )
        if self._journal is not None:
            try:
                self._journal.record(self.run, round_, attempt, reply)
            except JournalError as exc:
                # Not a reason to withhold the update: only a restart before the round closes
                # would then upload again (the behaviour without a journal).
                self._log(
                    "journal_write_failed",
                    level=logging.WARNING,
                    round=round_,
                    attempt=attempt,
                    error=exc,
                )
        return reply

    def _phase_done(self, phase: Phase, started: float) -> None:
        seconds = time.perf_counter() - started
        for observer in self._observers:
            observer.phase_done(phase, seconds)

    def _round_done(self, round_: int) -> None:
        """Once per round, though a masked round may take several uploads."""
        if round_ > self._done:
            self._done = round_
            for observer in self._observers:
                observer.round_done(round_)

    def _on_finished(self, msg: RunFinished) -> None:
        if self.final_weights is not None:
            return
        top = DEFAULT_TOP_FRACTION if self._bundle is None else self._bundle.top_fraction
        try:
            weights = self._global_weights(
                msg.model_round, msg.final_ref, msg.final_sha256, msg.history_sha256
            )
            d = self._data
            metrics = self._trainer.evaluate(weights, d.x_test, d.y_test)
            scores = self._trainer.predict(weights, d.x_test)
            clinical = clinical_metrics(d.y_test, scores, top_fraction=top)
            folder = None if self._out_dir is None else self._out_dir / self.hospital
            if folder is not None and self._bundle is None:
                folder.mkdir(parents=True, exist_ok=True)
                self._trainer.save_model(weights, folder / "final_model.keras", metrics)
            elif folder is not None and self._bundle is not None:
                manifest = self._bundle.manifest(
                    hospital=self.hospital,
                    run=self.run,
                    rounds=msg.rounds,
                    final_round=msg.model_round,
                    seed=self._seed,
                    config_digest=self._config_digest,
                    parameters=int(weights.size),
                    holdout=metrics,
                    clinical=clinical,
                )
                write_bundle(
                    folder / BUNDLE_DIR,
                    manifest,
                    self._bundle.schema_text,
                    lambda path: self._trainer.save_model(weights, path, None),
                )
        except (HeflError, OSError) as exc:
            # Not raised: a transport handler would only log it. The process decides (exit 8).
            self._log("final_failed", level=logging.ERROR, error=exc)
            self.error = TrainingError(f"{self.hospital}: cannot keep the final model: {exc}")
            return
        self.final_weights, self.final_metrics = weights, metrics
        self.final_clinical = clinical
        # No row counts: the coordinator never learns dataset sizes.
        report = FinalReport(
            run=self.run,
            hospital=self.hospital,
            metrics={
                "auc": metrics.auc,
                "accuracy": metrics.accuracy,
                "loss": metrics.loss,
                **clinical.reported(),
            },
        )
        self._transport.publish(SUBMIT, self._codec.encode(report))
        self._log("final_model_saved", auc=metrics.auc)

    def _log(self, event: str, *, level: int = logging.INFO, **fields: object) -> None:
        log_event(logger, event, level=level, run=self.run, hospital=self.hospital, **fields)
