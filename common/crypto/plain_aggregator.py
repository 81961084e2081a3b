"""Plaintext aggregator: float64 sums through the same running-sum code as the HE schemes."""

from __future__ import annotations

import numpy as np

from common.crypto.aggregator import ChunkSum
from common.crypto.config import DEFAULT_MAX_HOSPITALS
from common.crypto.spec import BlobSpec, plain_spec
from common.errors import BlobError


class Float64Chunks:
    """Chunk arithmetic on little-endian float64 blocks."""

    def load_chunk(self, chunk: bytes) -> np.ndarray:
        values = np.frombuffer(chunk, dtype="<f8").astype(np.float64)
        if not np.isfinite(values).all():
            raise BlobError("plain chunk holds a non-finite value")
        return values

    def add_into(self, target: np.ndarray, other: np.ndarray) -> None:
        np.add(target, other, out=target)

    def dump_chunk(self, item: np.ndarray) -> bytes:
        return item.astype("<f8").tobytes()


class PlainAggregator:
    """Adds plaintext blobs (scheme "plain")."""

    def __init__(self, *, max_hospitals: int = DEFAULT_MAX_HOSPITALS) -> None:
        self._spec = plain_spec(max_hospitals)

    @property
    def scheme(self) -> str:
        return self._spec.scheme

    @property
    def spec(self) -> BlobSpec:
        return self._spec

    def __repr__(self) -> str:
        return f"PlainAggregator(max_hospitals={self._spec.max_hospitals})"

    def new_sum(self) -> ChunkSum[np.ndarray]:
        return ChunkSum(self._spec, Float64Chunks())
