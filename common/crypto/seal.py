"""The one module that imports Pyfhel: key generation and ciphertext chunks over Microsoft SEAL.

``SealPublic`` holds a context and a public key (the coordinator's material): it can turn chunks
into ciphertexts, add them and turn them back into chunks, and nothing else. ``SealSecret`` adds
encryption and decryption and can only be built with a secret key, because Pyfhel crashes the
process (it does not raise) when asked to decrypt without one.

A chunk is one ciphertext at its last modulus level with only the non-zero low bits of each
coefficient (see ``seal_layout``). A *full* chunk holds both polynomials (public-key encryption,
and every sum); a *seeded* chunk holds the first polynomial and the 65-byte PRNG seed of the
second (secret-key encryption, what a hospital uploads: about half the bytes). Chunks are told
apart by their length. Pyfhel and SEAL errors are translated here into ours.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from Pyfhel import PyCtxt, Pyfhel, PyPtxt

from common.crypto import seal_layout
from common.crypto.config import BFV, CKKS, SECURITY_LEVEL, HEConfig
from common.crypto.masking import add_mod
from common.errors import BlobError, ConfigError, CryptoError, HeflError, KeyBundleError

_COMPRESSION = "none"  # this Pyfhel build has neither zlib nor zstd
_VALID = "success: valid"
_FOREIGN_ERRORS = (RuntimeError, ValueError, TypeError, AssertionError, OverflowError)
_Leveled = TypeVar("_Leveled", PyCtxt, PyPtxt)


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
        self._degree = config.poly_modulus_degree
        self.coeff_bits = seal_layout.coeff_bits_for(self._moduli[0])
        self.values_per_chunk = config.values_per_ciphertext
        self.chunk_bytes = seal_layout.packed_bytes(2 * self._degree, self.coeff_bits)
        self.seeded_chunk_bytes = (
            seal_layout.packed_bytes(self._degree, self.coeff_bits) + seal_layout.SEED_BYTES
        )
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
                ctxt = self._at_last_level(self._he.encryptComplex(block[0::2] + 1j * block[1::2]))
            else:
                ctxt = self._he.encryptInt(block.astype(np.int64))
        return ctxt

    def _at_last_level(self, item: _Leveled) -> _Leveled:
        """Switch a CKKS ciphertext or plaintext down to the chain's last data prime."""
        for _ in range(len(self.config.coeff_modulus_bits) - 2):
            self._he.mod_switch_to_next(item)
        return item

    def load_chunk(self, chunk: bytes) -> Ciphertext:
        """Validate a full or seeded chunk and deserialize it (SEAL expands a seed); any defect
        raises BlobError."""
        coeffs, seed = self._coefficients(chunk)
        with _foreign(BlobError, "SEAL rejected the ciphertext"):
            data = seal_layout.assemble(self._prefix, coeffs, seed)
            ctxt = PyCtxt(pyfhel=self._he, bytestring=data)
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
        modulo its prime; the second polynomial (or its seed) is unchanged
        (``common.crypto.masking``)."""
        if mask.shape != (self._degree,):
            raise CryptoError(f"a chunk's mask holds {self._degree} residues, got {mask.shape}")
        coeffs, seed = self._coefficients(chunk)
        coeffs = coeffs.copy()
        coeffs[: self._degree] = add_mod(coeffs[: self._degree], mask, self._moduli[0])
        return self._packed(coeffs, seed)

    def dump_chunk(self, ciphertext: Ciphertext) -> bytes:
        """Serialize a (full) ciphertext with only the non-zero coefficient bits."""
        with _foreign(CryptoError, "cannot serialize a ciphertext"):
            data = ciphertext._ctxt.to_bytes(_COMPRESSION)
        layout = seal_layout.parse_ciphertext(data)
        if layout.prefix != self._prefix or layout.seed is not None:
            raise CryptoError("ciphertext metadata differ from a fresh ciphertext's")
        return self._packed(layout.coeffs, None)

    def _coefficients(self, chunk: bytes) -> tuple[np.ndarray, bytes | None]:
        """A chunk's coefficients (checked below the prime) and its seed, if it is seeded."""
        if len(chunk) == self.chunk_bytes:
            polys, seed = 2, None
        elif len(chunk) == self.seeded_chunk_bytes:
            polys, seed = 1, chunk[-seal_layout.SEED_BYTES :]
            seal_layout.check_seed(seed)
            chunk = chunk[: -seal_layout.SEED_BYTES]
        else:
            raise BlobError(
                f"ciphertext chunk is {len(chunk)} bytes: neither full ({self.chunk_bytes}) "
                f"nor seeded ({self.seeded_chunk_bytes})"
            )
        coeffs = seal_layout.expand(
            chunk, bits=self.coeff_bits, degree=self._degree, moduli=self._moduli, polys=polys
        )
        return coeffs, seed

    def _packed(self, coeffs: np.ndarray, seed: bytes | None) -> bytes:
        packed = seal_layout.pack(coeffs, self.coeff_bits)
        return packed if seed is None else packed + seed


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

    def encrypt_block(self, block: np.ndarray, *, seeded: bool = False) -> bytes:
        """Encrypt ``values_per_chunk`` numbers: reals (CKKS) or fixed-point integers (BFV).

        ``seeded``: with the secret key, into a seeded chunk (the plaintext is encoded at the
        last level first: switching a seeded ciphertext would expand it); else with the public
        key, into a full one.
        """
        if not seeded:
            return self.dump_chunk(Ciphertext(self._fresh(block)))
        with _foreign(CryptoError, "encryption failed"):
            if self.config.scheme == CKKS:
                ptxt = self._at_last_level(self._he.encodeComplex(block[0::2] + 1j * block[1::2]))
            else:
                ptxt = self._he.encodeInt(block.astype(np.int64))
            data = self._he.encrypt_symmetric_bytes(ptxt)
        layout = seal_layout.parse_ciphertext(data)
        if layout.seed is None or seal_layout.members(layout.prefix) != seal_layout.members(
            self._prefix
        ):
            raise CryptoError("a seeded ciphertext's parameters differ from a fresh ciphertext's")
        return self._packed(layout.coeffs, layout.seed)

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
