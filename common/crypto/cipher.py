"""The hospital side: turn model values into a blob and a blob back into values.

Every scheme goes through ``BlockCipher``: values are checked, split into fixed-size blocks, each
block becomes one chunk, and the blob is built and checked by the bundle's ``BlobSpec``. A scheme
only supplies how one block is encrypted and decrypted.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from common.crypto.blob import AGGREGATE, UNBOUND, UPDATE, Binding
from common.crypto.encoding import blocks, check_sum, checked_values
from common.crypto.masking import Masker
from common.crypto.spec import BlobSpec
from common.errors import ConfigError

__all__ = ["AGGREGATE", "UPDATE", "BlockCipher", "Cipher"]


class Cipher(Protocol):
    """Encrypts a hospital's values and decrypts blobs made with the same key bundle."""

    @property
    def scheme(self) -> str: ...

    @property
    def value_bound(self) -> float:
        """Largest |x| ``encrypt`` accepts."""
        ...

    def encrypt(
        self,
        values: np.ndarray,
        *,
        kind: str = UPDATE,
        binding: Binding = UNBOUND,
        mask: Masker | None = None,
    ) -> bytes:
        """Encrypt a 1-D float64 array into one blob bound to ``binding`` (run, round, sender);
        with ``mask``, each ciphertext carries its share of the cohort's pairwise masks."""
        ...

    def decrypt(self, blob: bytes) -> np.ndarray:
        """Decrypt a blob into exactly ``value_count`` float64 values."""
        ...

    def error_bound(self, summands: int) -> float:
        """The stated largest error of one value decrypted from a sum of ``summands`` uploads."""
        ...

    @property
    def spec(self) -> BlobSpec:
        """What this bundle's blobs look like (headers can be checked without decrypting)."""
        ...


class BlockCipher:
    """Shared encrypt/decrypt path; subclasses encrypt and decrypt one block."""

    #: Decrypted sums may exceed ``summands * value_bound`` by this much per summand (noise,
    #: rounding) before they count as overflow or corruption.
    sum_slack: float = 0.0

    def __init__(self, spec: BlobSpec, *, value_bound: float) -> None:
        self._spec = spec
        self._value_bound = value_bound

    @property
    def scheme(self) -> str:
        return self._spec.scheme

    @property
    def value_bound(self) -> float:
        return self._value_bound

    @property
    def spec(self) -> BlobSpec:
        return self._spec

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(scheme={self.scheme!r}, value_bound={self.value_bound:g}, "
            f"key_id={self._spec.key_id[:12]!r})"
        )

    def encrypt(
        self,
        values: np.ndarray,
        *,
        kind: str = UPDATE,
        binding: Binding = UNBOUND,
        mask: Masker | None = None,
    ) -> bytes:
        array = checked_values(values, self._value_bound)
        size = self._spec.values_per_chunk
        # An update goes out seeded (half the bytes); anything else a hospital encrypts is full.
        seeded = kind == UPDATE
        chunks = [self._encrypt_block(block, seeded=seeded) for block in blocks(array, size)]
        if mask is not None:
            chunks = self._mask_chunks(chunks, mask)
        return self._spec.encode(
            kind=kind, value_count=len(array), summands=1, chunks=chunks, binding=binding
        )

    def decrypt(self, blob: bytes) -> np.ndarray:
        header, chunks = self._spec.decode(blob)
        decrypted = [self._decrypt_block(chunk) for chunk in chunks]
        values = np.concatenate(decrypted)[: header.value_count]
        check_sum(values, header.summands * (self._value_bound + self.sum_slack))
        return values

    def error_bound(self, summands: int) -> float:
        return 0.0  # float64 blocks: only the additions' rounding

    def _encrypt_block(self, block: np.ndarray, *, seeded: bool) -> bytes:
        raise NotImplementedError

    def _mask_chunks(self, chunks: list[bytes], mask: Masker) -> list[bytes]:
        raise ConfigError(
            f"pairwise masking needs an HE scheme; the {self.scheme} scheme cannot hide values"
        )

    def _decrypt_block(self, chunk: bytes) -> np.ndarray:
        raise NotImplementedError
