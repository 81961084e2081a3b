"""The coordinator side: add blobs into a running sum without being able to decrypt.

``ChunkSum`` is the one running-sum implementation for every scheme; a scheme only supplies chunk
arithmetic (load and validate, add in place, dump). Adding is streaming and atomic: a blob is
decoded, validated and fully deserialized before anything is added, and the new totals replace the
old ones only once every chunk has been added, so a rejected blob leaves the sum unchanged.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from common.crypto.blob import UNBOUND, Binding
from common.crypto.cipher import AGGREGATE
from common.crypto.spec import BlobSpec
from common.errors import BlobError, CryptoError, ValueRangeError

T = TypeVar("T")


class RunningSum(Protocol):
    """The encrypted sum of one round, fed one blob at a time."""

    @property
    def count(self) -> int:
        """Blobs added so far."""
        ...

    @property
    def summands(self) -> int:
        """Fresh inputs inside the sum (equals ``count`` when only updates are added)."""
        ...

    def add(self, blob: bytes) -> None:
        """Add one blob; on any error the sum is left unchanged."""
        ...

    def to_blob(self, kind: str = AGGREGATE, binding: Binding = UNBOUND) -> bytes:
        """Serialize the sum (``summands`` is recorded in the header), bound to ``binding``."""
        ...


class Aggregator(Protocol):
    """Public material only: makes running sums. There is no decrypt, by construction."""

    @property
    def scheme(self) -> str: ...

    @property
    def spec(self) -> BlobSpec:
        """What this bundle's blobs look like (headers can be checked before adding)."""
        ...

    def new_sum(self) -> RunningSum: ...


class ChunkArithmetic(Protocol[T]):
    """How one scheme loads, adds and dumps chunks."""

    def load_chunk(self, chunk: bytes) -> T:
        """Validate and deserialize; a defect raises BlobError."""
        ...

    def add_into(self, target: T, other: T) -> None:
        """``target += other``."""
        ...

    def dump_chunk(self, item: T) -> bytes: ...


class ChunkSum(Generic[T]):
    """Running sum over chunks of one ``BlobSpec``."""

    def __init__(self, spec: BlobSpec, arithmetic: ChunkArithmetic[T]) -> None:
        self._spec = spec
        self._arithmetic = arithmetic
        self._totals: list[T] = []
        self._value_count = 0
        self._count = 0
        self._summands = 0

    @property
    def count(self) -> int:
        return self._count

    @property
    def summands(self) -> int:
        return self._summands

    @property
    def value_count(self) -> int:
        return self._value_count

    def __repr__(self) -> str:
        return (
            f"ChunkSum(scheme={self._spec.scheme!r}, count={self._count}, "
            f"summands={self._summands}, value_count={self._value_count})"
        )

    def add(self, blob: bytes) -> None:
        header, chunks = self._spec.decode(blob)
        if self._summands + header.summands > self._spec.max_hospitals:
            raise ValueRangeError(
                f"running sum holds {self._summands} inputs; adding {header.summands} more would "
                f"exceed max_hospitals {self._spec.max_hospitals}"
            )
        if self._count and header.value_count != self._value_count:
            raise BlobError(
                f"blob carries {header.value_count} values, the running sum {self._value_count}"
            )
        incoming = [self._arithmetic.load_chunk(chunk) for chunk in chunks]
        del chunks
        for new, total in zip(incoming, self._totals, strict=False):
            self._arithmetic.add_into(new, total)
        self._totals = incoming
        self._value_count = header.value_count
        self._count += 1
        self._summands += header.summands

    def to_blob(self, kind: str = AGGREGATE, binding: Binding = UNBOUND) -> bytes:
        if not self._count:
            raise CryptoError("the running sum is empty: add at least one blob first")
        chunks = [self._arithmetic.dump_chunk(total) for total in self._totals]
        return self._spec.encode(
            kind=kind,
            value_count=self._value_count,
            summands=self._summands,
            chunks=chunks,
            binding=binding,
        )
