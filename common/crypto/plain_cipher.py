"""Plaintext cipher: float64 in the same blob format, for the plaintext FedAvg comparison.

It goes through exactly the code path of the HE ciphers (checks, blocks, blob header, summands),
without any encryption, so that a run with ``scheme="plain"`` differs from an encrypted run only
in the arithmetic.
"""

from __future__ import annotations

import math

import numpy as np

from common.crypto.cipher import BlockCipher
from common.crypto.config import DEFAULT_MAX_HOSPITALS
from common.crypto.spec import plain_spec


class PlainCipher(BlockCipher):
    """No encryption: chunks are little-endian float64 blocks."""

    def __init__(
        self, *, max_hospitals: int = DEFAULT_MAX_HOSPITALS, value_bound: float = math.inf
    ) -> None:
        super().__init__(plain_spec(max_hospitals), value_bound=value_bound)

    def _encrypt_block(self, block: np.ndarray, *, seeded: bool) -> bytes:
        return block.astype("<f8").tobytes()

    def _decrypt_block(self, chunk: bytes) -> np.ndarray:
        return np.frombuffer(chunk, dtype="<f8").astype(np.float64)
