"""The one module that imports Pyfhel: key generation and ciphertext chunks over Microsoft SEAL.

``SealPublic`` holds a context and a public key (the coordinator's material): it can turn chunks
into ciphertexts, add them and turn them back into chunks, and nothing else. ``SealSecret`` adds
encryption and decryption and can only be built with a secret key, because Pyfhel crashes the
process (it does not raise) when asked to decrypt without one.

A chunk is one ciphertext at its last modulus level with only the non-zero low bytes of each
coefficient (see ``seal_layout``). Pyfhel and SEAL errors are translated here into ours.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from Pyfhel import PyCtxt, Pyfhel

from common.crypto import seal_layout
from common.crypto.config import BFV, CKKS, SECURITY_LEVEL, HEConfig
from common.crypto.masking import add_mod
from common.errors import BlobError, ConfigError, CryptoError, HeflError, KeyBundleError

_COMPRESSION = "none"  # this Pyfhel build has neither zlib nor zstd
_VALID = "success: valid"
_FOREIGN_ERRORS = (RuntimeError, ValueError, TypeError, AssertionError, OverflowError)


@dataclass(frozen=True)
class KeyMaterial:
    """Serialized output of one key generation."""

    context: bytes = field(repr=False)
    public_key: bytes = field(repr=False)
    secret_key: bytes = field(repr=False)


class Ciphertext:
    """An opaque ciphertext owned by a ``SealPublic``."""

    __slots__ = ("_ctxt",)

    def __init__(self, ctxt: PyCtxt) -> None:
        self._ctxt = ctxt


@contextmanager
def _foreign(error: type[HeflError], what: str) -> Iterator[None]:
    """Translate Pyfhel/SEAL exceptions raised while doing ``what``."""
    try:
        yield
    except _FOREIGN_ERRORS as exc:
        raise error(f"{what}: {exc}") from exc


def generate_keys(config: HEConfig) -> KeyMaterial:
    """Create a fresh context and key pair for ``config`` (128-bit security enforced by SEAL)."""
    he = Pyfhel()
    with _foreign(ConfigError, "SEAL rejected the parameters"), warnings.catch_warnings():
        # Pyfhel warns when prime sizes do not allow CKKS rescaling; we only ever add.
        warnings.filterwarnings("ignore", message=".*do not support rescaling.*")
        status = _context_gen(he, config)
        if status != _VALID:
            raise ConfigError(f"SEAL rejected the parameters {config}: {status}")
        he.keyGen()
        return KeyMaterial(
            context=he.to_bytes_context(_COMPRESSION),
            public_key=he.to_bytes_public_key(_COMPRESSION),
            secret_key=he.to_bytes_secret_key(_COMPRESSION),
        )


def _context_gen(he: Pyfhel, config: HEConfig) -> str:
    sizes = list(config.coeff_modulus_bits)
    n = config.poly_modulus_degree
    if config.scheme == CKKS:
        return str(
            he.contextGen(
                scheme=CKKS, n=n, scale_bits=config.scale_bits, qi_sizes=sizes, sec=SECURITY_LEVEL
            )
        )
    # With sec > 0 Pyfhel ignores qi_sizes for BFV and falls back to SEAL's BFVDefault chain.
    # Ask SEAL for primes of the configured sizes, then pass them explicitly so that the
    # context is still validated at 128-bit security.
    probe = Pyfhel()
    probe.contextGen(scheme=BFV, n=n, t_bits=config.plain_modulus_bits, qi_sizes=sizes, sec=0)
    primes = [int(q) for q in probe.qi]
    return str(
        he.contextGen(
            scheme=BFV, n=n, t_bits=config.plain_modulus_bits, qi=primes, sec=SECURITY_LEVEL
        )
    )


class SealPublic:
    """Context and public key: load, add and dump ciphertext chunks. Cannot decrypt."""

    def __init__(self, config: HEConfig, *, context: bytes, public_key: bytes) -> None:
        info = seal_layout.parse_context(context)
        if info.sec != SECURITY_LEVEL:
            raise KeyBundleError(f"context declares {info.sec}-bit security, need {SECURITY_LEVEL}")
        self.config = config
        self._he = Pyfhel()
        with _foreign(KeyBundleError, "cannot load the HE context or public key"):
            self._he.from_bytes_context(context)
            self._he.from_bytes_public_key(public_key)
        self._moduli = info.moduli[:1]  # the prime left at the last level
        self.coeff_bytes = seal_layout.coeff_bytes_for(self._moduli[0])
        self.values_per_chunk = config.values_per_ciphertext
        self.chunk_bytes = 2 * config.poly_modulus_degree * self.coeff_bytes
        zero = self._fresh(np.zeros(self.values_per_chunk))
        with _foreign(CryptoError, "cannot serialize a ciphertext"):
            layout = seal_layout.parse_ciphertext(zero.to_bytes(_COMPRESSION))
        if (layout.polys, layout.degree, layout.primes) != (2, config.poly_modulus_degree, 1):
            raise CryptoError(
                f"unexpected fresh ciphertext shape {layout.polys}x{layout.degree}x{layout.primes}"
            )
        self._prefix = layout.prefix

    def _fresh(self, block: np.ndarray) -> PyCtxt:
        """Encrypt one block (public key only) and switch it down to the last level."""
        with _foreign(CryptoError, "encryption failed"):
            if self.config.scheme == CKKS:
                ctxt = self._he.encryptComplex(block[0::2] + 1j * block[1::2])
                for _ in range(len(self.config.coeff_modulus_bits) - 2):
                    self._he.mod_switch_to_next(ctxt)
            else:
                ctxt = self._he.encryptInt(block.astype(np.int64))
        return ctxt

    def load_chunk(self, chunk: bytes) -> Ciphertext:
        """Validate a chunk and deserialize it; any defect raises BlobError."""
        coeffs = seal_layout.expand(
            chunk,
            width=self.coeff_bytes,
            degree=self.config.poly_modulus_degree,
            moduli=self._moduli,
        )
        with _foreign(BlobError, "SEAL rejected the ciphertext"):
            ctxt = PyCtxt(pyfhel=self._he, bytestring=seal_layout.assemble(self._prefix, coeffs))
        return Ciphertext(ctxt)

    def add_into(self, target: Ciphertext, other: Ciphertext) -> None:
        """``target += other``; ``other`` is left as it was."""
        with _foreign(CryptoError, "ciphertext addition failed"):
            self._he.add(target._ctxt, other._ctxt, in_new_ctxt=False)

    @property
    def modulus(self) -> int:
        """The prime a chunk's coefficients are reduced by (the last level's)."""
        return self._moduli[0]

    def mask_chunk(self, chunk: bytes, mask: np.ndarray) -> bytes:
        """Add ``mask`` (``poly_modulus_degree`` residues) to the chunk's first polynomial,
        modulo its prime; the second polynomial is unchanged (``common.crypto.masking``)."""
        degree = self.config.poly_modulus_degree
        if mask.shape != (degree,):
            raise CryptoError(f"a chunk's mask holds {degree} residues, got {mask.shape}")
        coeffs = seal_layout.expand(
            chunk, width=self.coeff_bytes, degree=degree, moduli=self._moduli
        ).copy()
        coeffs[:degree] = add_mod(coeffs[:degree], mask, self._moduli[0])
        return seal_layout.compact(coeffs, self.coeff_bytes)

    def dump_chunk(self, ciphertext: Ciphertext) -> bytes:
        """Serialize with only the non-zero coefficient bytes."""
        with _foreign(CryptoError, "cannot serialize a ciphertext"):
            data = ciphertext._ctxt.to_bytes(_COMPRESSION)
        layout = seal_layout.parse_ciphertext(data)
        if layout.prefix != self._prefix:
            raise CryptoError("ciphertext metadata differ from a fresh ciphertext's")
        return seal_layout.compact(layout.coeffs, self.coeff_bytes)


class SealSecret(SealPublic):
    """Context, public and secret key: also encrypts and decrypts blocks of one chunk."""

    def __init__(
        self, config: HEConfig, *, context: bytes, public_key: bytes, secret_key: bytes
    ) -> None:
        super().__init__(config, context=context, public_key=public_key)
        with _foreign(KeyBundleError, "cannot load the secret key"):
            self._he.from_bytes_secret_key(secret_key)
        if self._he.is_secret_key_empty():
            raise KeyBundleError("the secret key did not load")

    def encrypt_block(self, block: np.ndarray) -> bytes:
        """Encrypt ``values_per_chunk`` numbers: reals (CKKS) or fixed-point integers (BFV)."""
        return self.dump_chunk(Ciphertext(self._fresh(block)))

    def decrypt_block(self, chunk: bytes) -> np.ndarray:
        """Decrypt one chunk: float64 reals (CKKS) or int64 fixed-point integers (BFV)."""
        ctxt = self.load_chunk(chunk)._ctxt
        with _foreign(CryptoError, "decryption failed"):
            if self.config.scheme == CKKS:
                slots = np.asarray(self._he.decryptComplex(ctxt))
                values = np.empty(self.values_per_chunk, dtype=np.float64)
                values[0::2] = slots.real
                values[1::2] = slots.imag
                return values
            if self._he.noise_level(ctxt) <= 0:
                raise BlobError("ciphertext noise budget exhausted: corrupted or over-added")
            return np.asarray(self._he.decryptInt(ctxt), dtype=np.int64)
