"""Timing proxies around the seams ``run_federated`` is built from: cipher, store, aggregator
and trainer. They change nothing about what is computed; they only add up wall time per phase.

A round's segment ends when the coordinator writes that round's aggregate blob, so one segment
holds everything the round costs: hospitals downloading and decrypting the previous aggregate,
evaluating it, training, encrypting, uploading; the coordinator fetching, verifying and adding
the updates, persisting its state and writing the aggregate; messages and signatures ("other").
Details sit beside the segments, not in them, so a segment's phases still add up to its wall
time (``DETAILS``): the pairwise-mask words a masked upload draws inside "encrypt", and the
process's CPU seconds over the round (every thread), which other processes on a shared machine
disturb far less than wall time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from common.crypto import UNBOUND, Aggregator, Binding, Cipher, RunningSum
from common.crypto.cipher import AGGREGATE, UPDATE
from common.crypto.masking import Masker
from common.crypto.spec import BlobSpec
from common.metrics import Metrics
from common.store import Store

PHASES = (
    "train",
    "evaluate",
    "encrypt",
    "upload",
    "aggregate",
    "download",
    "decrypt",
    "coordinator_state",
)
#: "mask": ``Masker.words`` within "encrypt" (masking's ChaCha20 streams); "cpu": process CPU time.
DETAILS = ("mask", "cpu")


class PhaseClock:
    """Wall time per phase, cut into one segment per round; ``details[i]`` belongs to
    ``segments[i]``."""

    def __init__(self) -> None:
        self.segments: list[dict[str, float]] = []
        self.details: list[dict[str, float]] = []
        self._current: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self._detail: dict[str, float] = dict.fromkeys(DETAILS, 0.0)
        self._mark = time.perf_counter()
        self._cpu_mark = time.process_time()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self._current[name] += time.perf_counter() - started

    @contextmanager
    def detail(self, name: str) -> Iterator[None]:
        """Time part of a phase on its own (the phase's time still includes it)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self._detail[name] += time.perf_counter() - started

    def close_round(self) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        self._detail["cpu"] = cpu - self._cpu_mark
        segment = dict(self._current)
        segment["wall"] = now - self._mark
        segment["other"] = segment["wall"] - sum(self._current.values())
        self.segments.append(segment)
        self.details.append(self._detail)
        self._current = dict.fromkeys(PHASES, 0.0)
        self._detail = dict.fromkeys(DETAILS, 0.0)
        self._mark, self._cpu_mark = now, cpu


class TimedCipher:
    def __init__(self, inner: Cipher, clock: PhaseClock) -> None:
        self._inner, self._clock = inner, clock

    @property
    def scheme(self) -> str:
        return self._inner.scheme

    @property
    def value_bound(self) -> float:
        return self._inner.value_bound

    @property
    def spec(self) -> BlobSpec:
        return self._inner.spec

    def encrypt(
        self,
        values: np.ndarray,
        *,
        kind: str = UPDATE,
        binding: Binding = UNBOUND,
        mask: Masker | None = None,
    ) -> bytes:
        timed = None if mask is None else TimedMasker(mask, self._clock)
        with self._clock.phase("encrypt"):
            return self._inner.encrypt(values, kind=kind, binding=binding, mask=timed)

    def decrypt(self, blob: bytes) -> np.ndarray:
        with self._clock.phase("decrypt"):
            return self._inner.decrypt(blob)

    def error_bound(self, summands: int) -> float:
        return self._inner.error_bound(summands)


class TimedMasker:
    """A cohort mask whose word generation is timed as the "mask" detail."""

    def __init__(self, inner: Masker, clock: PhaseClock) -> None:
        self._inner, self._clock = inner, clock

    def words(self, count: int, modulus: int) -> np.ndarray:
        with self._clock.detail("mask"):
            return self._inner.words(count, modulus)


class TimedSum:
    def __init__(self, inner: RunningSum, clock: PhaseClock) -> None:
        self._inner, self._clock = inner, clock

    @property
    def count(self) -> int:
        return self._inner.count

    @property
    def summands(self) -> int:
        return self._inner.summands

    def add(self, blob: bytes) -> None:
        with self._clock.phase("aggregate"):
            self._inner.add(blob)

    def to_blob(self, kind: str = AGGREGATE, binding: Binding = UNBOUND) -> bytes:
        with self._clock.phase("aggregate"):
            return self._inner.to_blob(kind, binding)


class TimedAggregator:
    def __init__(self, inner: Aggregator, clock: PhaseClock) -> None:
        self._inner, self._clock = inner, clock

    @property
    def scheme(self) -> str:
        return self._inner.scheme

    @property
    def spec(self) -> BlobSpec:
        return self._inner.spec

    def new_sum(self) -> RunningSum:
        return TimedSum(self._inner.new_sum(), self._clock)


def _kind(key: str) -> str:
    """A key's role by the run layout (``common.protocol.layout``): ``runs/<run>/updates/<h>/
    round-NNNN.blob``, ``runs/<run>/aggregates/round-NNNN.blob``, anything else is state."""
    parts = key.split("/")
    if not parts[-1].startswith("round-"):
        return "state"
    if len(parts) >= 3 and parts[-3] == "updates":
        return "update"
    if len(parts) >= 2 and parts[-2] == "aggregates":
        return "aggregate"
    return "state"


class TimedStore:
    """Hospitals put updates ("upload") and get aggregates ("download"); the coordinator gets
    updates and puts aggregates ("aggregate") and reads and writes its state."""

    def __init__(self, inner: Store, clock: PhaseClock) -> None:
        self._inner, self._clock = inner, clock

    def put(self, key: str, data: bytes) -> None:
        kind = _kind(key)
        phase = {"update": "upload", "aggregate": "aggregate"}.get(kind, "coordinator_state")
        with self._clock.phase(phase):
            self._inner.put(key, data)
        if kind == "aggregate":
            self._clock.close_round()

    def get(self, key: str, *, max_bytes: int | None = None, sha256: str | None = None) -> bytes:
        phase = {"update": "aggregate", "aggregate": "download"}.get(
            _kind(key), "coordinator_state"
        )
        with self._clock.phase(phase):
            return self._inner.get(key, max_bytes=max_bytes, sha256=sha256)

    def exists(self, key: str) -> bool:
        return self._inner.exists(key)

    def list(self, prefix: str = "") -> list[str]:
        return self._inner.list(prefix)

    def delete(self, key: str) -> None:
        self._inner.delete(key)


class TimedTrainer:
    """Wraps the hospital's LocalTrainer (which ``run_federated`` builds itself)."""

    def __init__(self, inner: Any, clock: PhaseClock) -> None:
        self._inner, self._clock = inner, clock

    def fit(self, weights: np.ndarray, x: np.ndarray, y: np.ndarray, *, seed: int) -> Any:
        with self._clock.phase("train"):
            return self._inner.fit(weights, x, y, seed=seed)

    def evaluate(self, weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> Metrics:
        with self._clock.phase("evaluate"):
            return self._inner.evaluate(weights, x, y)

    def predict(self, weights: np.ndarray, x: np.ndarray) -> np.ndarray:
        with self._clock.phase("evaluate"):
            return np.asarray(self._inner.predict(weights, x))

    def save_model(self, weights: np.ndarray, path: Path, metrics: Metrics | None) -> None:
        self._inner.save_model(weights, path, metrics)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


#: Phases whose cost differs between an encrypted and a plaintext round (the rest is the same work).
CRYPTO_PHASES = ("encrypt", "upload", "aggregate", "download", "decrypt")


def crypto_ratio(encrypted: dict[str, float], plaintext: dict[str, float]) -> float:
    """The encrypted/plaintext ratio counting only the crypto phases' extra time.

    Training time varies by several percent between identical rounds on a busy machine; this
    estimate leaves it out: ``1 + sum(encrypted[p] - plaintext[p]) / plaintext["wall"]``.
    """
    extra = sum(encrypted[p] - plaintext[p] for p in CRYPTO_PHASES)
    return 1.0 + extra / plaintext["wall"]
