"""The HE anchors: TenSEAL CKKS as NVIDIA FLARE configures it, and Pyfhel CKKS used plainly.

Benchmark-only code. TenSEAL is an optional dependency (the ``bench`` extra) and is imported
here and nowhere in the runtime packages. The runtime rule "exactly one module imports Pyfhel"
(``common/crypto/seal.py``) covers the runtime packages; this anchor imports Pyfhel directly on
purpose, to measure Pyfhel without this project's packing, level switch and byte trimming.

TenSEAL 0.3.16 bundles its own protobuf: in a process that imported TensorFlow first it crashes
(segmentation fault, or "failed to save proto"). Benchmarks that use it never import TensorFlow,
and ``run_all.py`` runs every benchmark in its own process.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from Pyfhel import PyCtxt, Pyfhel

from bench.schemes import Accumulator, frame, split_layers, unframe

TENSEAL_FLARE = "TenSEAL CKKS (FLARE config)"
PYFHEL_PLAIN = "Pyfhel CKKS, 1 real/slot"
#: NVIDIA FLARE's HEBuilder defaults (nvflare/lighter/impl/he.py).
FLARE_POLY_MODULUS_DEGREE = 8192
FLARE_COEFF_MOD_BIT_SIZES = (60, 40, 40)
FLARE_SCALE_BITS = 40
#: This project's Pyfhel build has neither zstd nor zlib (tools/build_pyfhel.py).
PYFHEL_COMPRESSION = "none"


@contextmanager
def quiet_stdout() -> Iterator[None]:
    """Silence file descriptor 1: TenSEAL's C++ prints a warning for every vector longer than
    one ciphertext. Costs two ``dup2`` calls, nothing next to an encryption."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def require_tenseal() -> Any:
    """Import TenSEAL or fail with the command that installs it (never skip silently)."""
    try:
        import tenseal
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "TenSEAL is not installed; it is a benchmark-only dependency: "
            ".venv/bin/pip install -e '.[bench]' (or `make bench`)"
        ) from exc
    return tenseal


class TensealKeys:
    """One FLARE-style provisioning: the clients' context (with secret key) and the server's.

    As FLARE's ``HEBuilder``: CKKS, n=8192, coefficient moduli [60, 40, 40], scale 2**40,
    symmetric encryption, relinearization keys; the server context is serialized without public
    and secret key.
    """

    def __init__(self) -> None:
        ts = require_tenseal()
        self.ts = ts
        context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=FLARE_POLY_MODULUS_DEGREE,
            coeff_mod_bit_sizes=list(FLARE_COEFF_MOD_BIT_SIZES),
            encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
        )
        context.generate_relin_keys()
        context.global_scale = 2**FLARE_SCALE_BITS
        self.client_bytes = context.serialize(
            save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=True
        )
        self.server_bytes = context.serialize(
            save_public_key=False,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=True,
        )
        self.client = ts.context_from(self.client_bytes)
        self.server = ts.context_from(self.server_bytes)
        if self.server.is_private():
            raise RuntimeError("the FLARE server context must not hold the secret key")


class TensealSum:
    """FLARE's server side: deserialize each layer's ckks_vector and add with ``+``."""

    def __init__(self, ts: Any, server_context: Any) -> None:
        self._ts = ts
        self._context = server_context
        self._totals: list[Any] | None = None

    def add(self, blob: bytes) -> None:
        vectors = [self._ts.ckks_vector_from(self._context, part) for part in unframe(blob)]
        if self._totals is None:
            self._totals = vectors
            return
        for total, vector in zip(self._totals, vectors, strict=True):
            total += vector  # in place; FLARE also multiplies by a plaintext weight first

    def to_blob(self) -> bytes:
        if self._totals is None:
            raise ValueError("empty sum")
        return frame([vector.serialize() for vector in self._totals])


class TensealFlareCodec:
    """One ``ts.ckks_vector`` per layer, ``.serialize()``d, as FLARE's HEModelEncryptor does."""

    label = TENSEAL_FLARE

    def __init__(self, keys: TensealKeys, layers: Sequence[int]) -> None:
        self._keys = keys
        self.layers = tuple(layers)

    def encrypt(self, values: np.ndarray) -> bytes:
        ts, context = self._keys.ts, self._keys.client
        with quiet_stdout():
            return frame(
                [
                    ts.ckks_vector(context, part).serialize()
                    for part in split_layers(values, self.layers)
                ]
            )

    def new_sum(self) -> Accumulator:
        return TensealSum(self._keys.ts, self._keys.server)

    def decrypt(self, blob: bytes) -> np.ndarray:
        ts, context = self._keys.ts, self._keys.client
        parts = [np.asarray(ts.ckks_vector_from(context, p).decrypt()) for p in unframe(blob)]
        return np.concatenate(parts)


class PyfhelKeys:
    """Pyfhel CKKS on FLARE's chain (n=8192, [60, 40, 40], scale 2**40), public-key encryption.

    The coordinator side loads the context only (adding needs no key).
    """

    def __init__(self) -> None:
        he = Pyfhel()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*rescaling.*")
            he.contextGen(
                scheme="ckks",
                n=FLARE_POLY_MODULUS_DEGREE,
                scale_bits=FLARE_SCALE_BITS,
                qi_sizes=list(FLARE_COEFF_MOD_BIT_SIZES),
            )
        he.keyGen()
        self.client = he
        self.server = Pyfhel()
        self.server.from_bytes_context(he.to_bytes_context(PYFHEL_COMPRESSION))
        self.slots = FLARE_POLY_MODULUS_DEGREE // 2


class PyfhelSum:
    def __init__(self, server: Pyfhel) -> None:
        self._he = server
        self._totals: list[PyCtxt] | None = None

    def add(self, blob: bytes) -> None:
        ctxts = [PyCtxt(pyfhel=self._he, bytestring=part) for part in unframe(blob)]
        if self._totals is None:
            self._totals = ctxts
            return
        for total, ctxt in zip(self._totals, ctxts, strict=True):
            self._he.add(total, ctxt, in_new_ctxt=False)

    def to_blob(self) -> bytes:
        if self._totals is None:
            raise ValueError("empty sum")
        return frame([c.to_bytes(PYFHEL_COMPRESSION) for c in self._totals])


class PyfhelPlainCodec:
    """One real per complex slot (n/2 values per ciphertext), top level, full 8-byte words.

    The vector is cut into blocks of n/2 values regardless of layers, so the comparison with
    ours isolates packing, level switch and byte trimming. ``layers`` only fixes the length.
    """

    label = PYFHEL_PLAIN

    def __init__(self, keys: PyfhelKeys, layers: Sequence[int]) -> None:
        self._keys = keys
        self.count = sum(layers)

    def encrypt(self, values: np.ndarray) -> bytes:
        he, slots = self._keys.client, self._keys.slots
        values = np.asarray(values, dtype=np.float64)
        if len(values) != self.count:
            raise ValueError(f"expected {self.count} values, got {len(values)}")
        blocks = math.ceil(len(values) / slots)
        return frame(
            [
                he.encryptFrac(np.ascontiguousarray(values[i * slots : (i + 1) * slots])).to_bytes(
                    PYFHEL_COMPRESSION
                )
                for i in range(blocks)
            ]
        )

    def new_sum(self) -> Accumulator:
        return PyfhelSum(self._keys.server)

    def decrypt(self, blob: bytes) -> np.ndarray:
        he, slots = self._keys.client, self._keys.slots
        decoded = [
            np.asarray(he.decryptFrac(PyCtxt(pyfhel=he, bytestring=part)))[:slots]
            for part in unframe(blob)
        ]
        return np.concatenate(decoded)[: self.count]
