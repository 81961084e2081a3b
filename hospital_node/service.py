"""A hospital node: answers round announcements with an encrypted weighted model.

The node is stateless apart from its data and keys: every round it rebuilds the global model
from the announced aggregate (sum of weighted models and sum of weights, both encrypted), so a
restarted node simply answers the next announcement. Any failure while evaluating, training or
encrypting is reported to the coordinator as ``UpdateFailed``, not as silence.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

import numpy as np

from common import layout
from common.crypto import Cipher
from common.errors import HeflError, ProtocolError, TrainingError
from common.logs import log_event
from common.messages import (
    FinalReport,
    Hello,
    RoundStarted,
    RunAborted,
    RunFinished,
    UpdateFailed,
    UpdateSubmitted,
)
from common.metrics import Metrics
from common.signing import MessageCodec
from common.store import Store, get_verified, sha256_hex
from common.transport import ANNOUNCE, SUBMIT, Transport

if TYPE_CHECKING:  # training imports TensorFlow; the protocol code does not need it
    from hospital_node.training import FitResult

logger = logging.getLogger("hefl.hospital")

# A hospital's FedAvg weight is its training-row count divided by this, so encrypted values stay
# small (within the cipher's value bound) while weights keep their ratios.
WEIGHT_UNIT: Final = 10_000.0


class Trainer(Protocol):
    def fit(self, weights: np.ndarray, x: np.ndarray, y: np.ndarray, *, seed: int) -> FitResult: ...

    def evaluate(self, weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> Metrics: ...

    def save_model(self, weights: np.ndarray, path: Path, metrics: Metrics | None) -> None: ...


@dataclass(frozen=True, eq=False)
class LocalData:
    """A hospital's own rows, already encoded; they never leave this process."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def training_seed(seed: int, round_: int, hospital: str) -> int:
    """Per-round, per-hospital shuffling seed, the same in every process and deployment."""
    digest = hashlib.sha256(f"{seed}:{round_}:{hospital}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def weighted_payload(weights: np.ndarray, n_train: int) -> np.ndarray:
    """``[w * theta..., w]``: what a hospital encrypts (w hides nothing more than its ratio)."""
    w = n_train / WEIGHT_UNIT
    return np.concatenate([np.asarray(weights, dtype=np.float64) * w, [w]])


def average_from_sum(total: np.ndarray, n_params: int) -> np.ndarray:
    """Divide the decrypted sum of weighted models by the decrypted sum of weights."""
    if total.shape != (n_params + 1,):
        raise ProtocolError(f"aggregate holds {total.shape[0]} values, expected {n_params + 1}")
    weight = float(total[-1])
    if not np.isfinite(weight) or weight <= 0:
        raise ProtocolError(f"aggregate weight {weight} is not positive")
    return (total[:-1] / weight).astype(np.float32)


class Hospital:
    """One hospital's participation in one run."""

    def __init__(
        self,
        hospital: str,
        *,
        run: str,
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
    ) -> None:
        self.hospital = hospital
        self.run = run
        self._data = data
        self._trainer = trainer
        self._cipher = cipher
        self._transport = transport
        self._store = store
        self._codec = codec
        self.rejected: dict[str, int] = {}
        self._initial = np.asarray(initial_weights, dtype=np.float32)
        self._seed = seed
        self._config_digest = config_digest
        self._out_dir = out_dir
        self._clock = clock
        self._answered: set[int] = set()
        self.final_weights: np.ndarray | None = None
        self.error: HeflError | None = None  # set when the final model could not be kept
        self.final_metrics: Metrics | None = None

    def start(self, *, hello: bool = True) -> None:
        """Subscribe to announcements; ``hello`` asks the coordinator to re-announce its round
        (needed when joining a run in progress; the embedded simulation starts everyone first)."""
        self._transport.subscribe(ANNOUNCE, self.handle)
        if hello:
            self._transport.publish(
                SUBMIT, self._codec.encode(Hello(run=self.run, hospital=self.hospital))
            )

    def handle(self, body: bytes) -> None:
        try:
            message = self._codec.decode(body)
        except ProtocolError as exc:
            reason = type(exc).__name__
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
            self._log("message_rejected", level=logging.WARNING, reason=reason, detail=exc)
            return
        if getattr(message, "run", None) != self.run:
            return
        if isinstance(message, RoundStarted):
            self._on_round(message)
        elif isinstance(message, RunFinished):
            self._on_finished(message)
        elif isinstance(message, RunAborted) and self.final_weights is None:
            self._log("run_aborted", level=logging.ERROR, reason=message.reason)
            self.error = ProtocolError(f"the coordinator aborted run {self.run}: {message.reason}")

    def _global_weights(self, ref: str | None, sha256: str | None) -> np.ndarray:
        if ref is None or sha256 is None:
            return self._initial
        total = self._cipher.decrypt(get_verified(self._store, ref, sha256))
        return average_from_sum(total, self._initial.shape[0])

    def _on_round(self, msg: RoundStarted) -> None:
        if msg.round in self._answered:
            # A re-announcement (another hospital joined, or the coordinator restarted). Our reply
            # is already in the coordinator's durable queue or accepted in its persisted state,
            # so answering again would only produce a late duplicate.
            self._log("round_already_answered", level=logging.DEBUG, round=msg.round)
            return
        if self._clock() > msg.deadline:
            self._log("round_skipped", round=msg.round, reason="deadline passed")
            return
        started = time.perf_counter()
        try:
            reply = self._train_and_upload(msg)
        except HeflError as exc:
            self._log("round_failed", level=logging.ERROR, round=msg.round, error=exc)
            failed = UpdateFailed(
                run=self.run, round=msg.round, hospital=self.hospital, error=str(exc)[:500]
            )
            self._transport.publish(SUBMIT, self._codec.encode(failed))
            return
        self._answered.add(msg.round)
        self._transport.publish(SUBMIT, reply)
        self._log("update_submitted", round=msg.round, seconds=time.perf_counter() - started)

    def _train_and_upload(self, msg: RoundStarted) -> bytes:
        if msg.config_digest != self._config_digest:
            raise ProtocolError(
                f"run configuration differs from this hospital's (digest {msg.config_digest[:12]} "
                f"!= {self._config_digest[:12]}): check model, HE and schema settings"
            )
        weights = self._global_weights(msg.global_ref, msg.global_sha256)
        d = self._data
        held_out = self._trainer.evaluate(weights, d.x_test, d.y_test)
        fit = self._trainer.fit(
            weights, d.x_train, d.y_train, seed=training_seed(self._seed, msg.round, self.hospital)
        )
        blob = self._cipher.encrypt(weighted_payload(fit.weights, fit.n))
        key = layout.update_key(self.run, msg.round, self.hospital)
        self._store.put(key, blob)
        metrics = {
            "auc": held_out.auc,
            "accuracy": held_out.accuracy,
            "loss": held_out.loss,
            "train_loss": fit.loss,
        }
        return self._codec.encode(
            UpdateSubmitted(
                run=self.run,
                round=msg.round,
                hospital=self.hospital,
                blob_ref=key,
                sha256=sha256_hex(blob),
                metrics=metrics,
            )
        )

    def _on_finished(self, msg: RunFinished) -> None:
        if self.final_weights is not None:
            return
        try:
            weights = self._global_weights(msg.final_ref, msg.final_sha256)
            metrics = self._trainer.evaluate(weights, self._data.x_test, self._data.y_test)
            if self._out_dir is not None:
                path = self._out_dir / self.hospital / "final_model.keras"
                path.parent.mkdir(parents=True, exist_ok=True)
                self._trainer.save_model(weights, path, metrics)
        except (HeflError, OSError) as exc:
            # Not raised: a transport handler would only log it. The process decides (exit 8).
            self._log("final_failed", level=logging.ERROR, error=exc)
            self.error = TrainingError(f"{self.hospital}: cannot keep the final model: {exc}")
            return
        self.final_weights, self.final_metrics = weights, metrics
        report = FinalReport(
            run=self.run,
            hospital=self.hospital,
            metrics={"auc": metrics.auc, "accuracy": metrics.accuracy, "loss": metrics.loss},
        )
        self._transport.publish(SUBMIT, self._codec.encode(report))
        self._log("final_model_saved", auc=metrics.auc)

    def _log(self, event: str, *, level: int = logging.INFO, **fields: object) -> None:
        log_event(logger, event, level=level, run=self.run, hospital=self.hospital, **fields)
