"""One interface over every encoding the benchmarks compare: ours (CKKS, BFV) and plain float32.

A ``Codec`` is the whole upload path of one scheme: the hospital's ``encrypt`` (encrypt and
serialize), the coordinator's running sum (``new_sum``, then ``add`` per hospital: deserialize and
add, and ``to_blob``), and the hospital's ``decrypt`` (deserialize and decrypt). The anchors
(TenSEAL as NVIDIA FLARE configures it, Pyfhel used directly) live in ``bench/anchors.py``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from common.crypto import (
    UPDATE,
    HEConfig,
    open_aggregator,
    open_cipher,
    run_key_ceremony,
)

OURS_CKKS = "ours CKKS (default)"
OURS_BFV = "ours BFV"
#: The default before seeded uploads (issue 17): 56-bit last prime, scale 2**40, public-key
#: encryption into full ciphertexts. Measured alongside, the baseline of "not below today's".
OURS_CKKS_FULL = "ours CKKS before seeding (56-bit, full)"
FULL_CKKS = HEConfig(coeff_modulus_bits=(56, 53), scale_bits=40)
FLOAT32 = "plaintext float32"
_COUNT = struct.Struct("<I")
_LENGTH = struct.Struct("<Q")


class Accumulator(Protocol):
    """The coordinator's running sum of one round."""

    def add(self, blob: bytes) -> None: ...

    def to_blob(self) -> bytes: ...


class Codec(Protocol):
    label: str

    def encrypt(self, values: np.ndarray) -> bytes: ...

    def new_sum(self) -> Accumulator: ...

    def decrypt(self, blob: bytes) -> np.ndarray: ...


class HeflCodec:
    """This project's cipher and aggregator, from a real key ceremony in ``workdir``."""

    def __init__(self, label: str, config: HEConfig, workdir: Path, *, kind: str = UPDATE) -> None:
        """``kind``: the blob kind encrypted; an ``UPDATE`` is seeded, any other kind full."""
        self.label = label
        self.config = config
        self._kind = kind
        hospital, coordinator = workdir / "hospital", workdir / "coordinator"
        run_key_ceremony(config, hospital, coordinator, overwrite=True)
        self.hospital_dir, self.coordinator_dir = hospital, coordinator
        self._cipher = open_cipher(hospital)
        self._aggregator = open_aggregator(coordinator)

    def encrypt(self, values: np.ndarray) -> bytes:
        return self._cipher.encrypt(values, kind=self._kind)

    def new_sum(self) -> Accumulator:
        return self._aggregator.new_sum()

    def decrypt(self, blob: bytes) -> np.ndarray:
        return self._cipher.decrypt(blob)


class Float32Sum:
    def __init__(self) -> None:
        self._total: np.ndarray | None = None

    def add(self, blob: bytes) -> None:
        values = np.frombuffer(blob, dtype="<f4")
        if self._total is None:
            self._total = values.copy()
        else:
            np.add(self._total, values, out=self._total)

    def to_blob(self) -> bytes:
        if self._total is None:
            raise ValueError("empty sum")
        return self._total.tobytes()


class Float32Codec:
    """No encryption: the float32 weights a plaintext FedAvg (Flower, TFF) sends and sums."""

    label = FLOAT32

    def encrypt(self, values: np.ndarray) -> bytes:
        return np.asarray(values, dtype="<f4").tobytes()

    def new_sum(self) -> Accumulator:
        return Float32Sum()

    def decrypt(self, blob: bytes) -> np.ndarray:
        return np.frombuffer(blob, dtype="<f4").astype(np.float64)


def frame(parts: Sequence[bytes]) -> bytes:
    """Several serialized objects as one blob: a count, then (length, bytes) per part."""
    pieces = [_COUNT.pack(len(parts))]
    for part in parts:
        pieces += [_LENGTH.pack(len(part)), part]
    return b"".join(pieces)


def unframe(blob: bytes) -> list[bytes]:
    view = memoryview(blob)
    (count,) = _COUNT.unpack_from(view, 0)
    offset, parts = _COUNT.size, []
    for _ in range(count):
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        parts.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(blob):
        raise ValueError(f"framed blob has {len(blob) - offset} trailing bytes")
    return parts


def split_layers(values: np.ndarray, layers: Sequence[int]) -> list[np.ndarray]:
    """Cut a flat vector into per-layer pieces (``layers`` must add up to its length)."""
    if sum(layers) != len(values):
        raise ValueError(f"layers add up to {sum(layers)}, the vector has {len(values)} values")
    return np.split(values, np.cumsum(layers)[:-1])


def mlp_layers(parameters: int, hidden: int = 128) -> tuple[int, ...]:
    """A synthetic model's layers, shaped like ``Dense(hidden) -> Dense(1)``.

    Kernel, bias, kernel, bias: ``(parameters - 2 * hidden - 1, hidden, hidden, 1)``. Small
    vectors (below ``4 * hidden``) count as one layer.
    """
    if parameters < 4 * hidden:
        return (parameters,)
    return (parameters - 2 * hidden - 1, hidden, hidden, 1)
