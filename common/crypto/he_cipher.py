"""CKKS and BFV ciphers over a hospital bundle (context, public and secret key)."""

from __future__ import annotations

from typing import Self

import numpy as np

from common.crypto.cipher import BlockCipher
from common.crypto.config import BFV, CKKS
from common.crypto.encoding import from_fixed, to_fixed
from common.crypto.keys import HospitalBundle
from common.crypto.masking import Masker
from common.crypto.seal import SealSecret
from common.crypto.spec import BlobSpec, he_spec
from common.errors import KeyBundleError


class _HeCipher(BlockCipher):
    scheme_name = ""

    def __init__(self, seal: SealSecret, spec: BlobSpec) -> None:
        super().__init__(spec, value_bound=seal.config.value_bound)
        self._seal = seal

    @classmethod
    def from_bundle(cls, bundle: HospitalBundle) -> Self:
        """Load the bundle's keys; the bundle's scheme must be this class's scheme."""
        if not isinstance(bundle, HospitalBundle):
            raise KeyBundleError(f"a cipher needs a hospital bundle, got {type(bundle).__name__}")
        manifest = bundle.manifest
        if manifest.config.scheme != cls.scheme_name:
            raise KeyBundleError(
                f"{cls.__name__} needs a {cls.scheme_name} bundle, got {manifest.config.scheme}"
            )
        seal = SealSecret(
            manifest.config,
            context=bundle.context,
            public_key=bundle.public_key,
            secret_key=bundle.secret_key,
        )
        return cls(seal, he_spec(manifest, seal))

    def error_bound(self, summands: int) -> float:
        return self._seal.config.error_bound(summands)

    def _mask_chunks(self, chunks: list[bytes], mask: Masker) -> list[bytes]:
        degree = self._seal.config.poly_modulus_degree
        words = mask.words(len(chunks) * degree, self._seal.modulus)
        return [
            self._seal.mask_chunk(chunk, words[i * degree : (i + 1) * degree])
            for i, chunk in enumerate(chunks)
        ]


class CkksCipher(_HeCipher):
    """CKKS: two reals per complex slot, so one ciphertext carries n values."""

    scheme_name = CKKS

    def __init__(self, seal: SealSecret, spec: BlobSpec) -> None:
        super().__init__(seal, spec)
        # Twice the seeded error bound: room for public-key (full) encryptions, noisier.
        self.sum_slack = 2 * seal.config.error_bound(1)

    def _encrypt_block(self, block: np.ndarray, *, seeded: bool) -> bytes:
        return self._seal.encrypt_block(block, seeded=seeded)

    def _decrypt_block(self, chunk: bytes) -> np.ndarray:
        return self._seal.decrypt_block(chunk)


class BfvCipher(_HeCipher):
    """BFV: fixed point ``round(x * 2**f)`` in n batching slots; resolution ``2**-f``."""

    scheme_name = BFV

    def __init__(self, seal: SealSecret, spec: BlobSpec) -> None:
        super().__init__(seal, spec)
        self._fraction_bits = seal.config.fraction_bits
        self.sum_slack = seal.config.resolution

    @property
    def resolution(self) -> float:
        return 2.0**-self._fraction_bits

    def _encrypt_block(self, block: np.ndarray, *, seeded: bool) -> bytes:
        return self._seal.encrypt_block(to_fixed(block, self._fraction_bits), seeded=seeded)

    def _decrypt_block(self, chunk: bytes) -> np.ndarray:
        return from_fixed(self._seal.decrypt_block(chunk), self._fraction_bits)
