"""SEAL 4.1 byte layouts (compr_mode "none"), read and written without SEAL itself.

Ciphertext::save writes a 16-byte SEAL header, 73 bytes of members (parms_id 32, is_ntt_form 1,
size u64, poly_modulus_degree u64, coeff_modulus_size u64, scale f64, correction_factor u64), then
the data DynArray: a 16-byte SEAL header, a u64 element count and that many u64 coefficients,
ordered polynomial, prime, coefficient. Coefficients are below their prime ``q``, so only the low
``ceil(bits(q) / 8)`` bytes are ever non-zero: ``compact`` keeps those, ``expand`` restores them and
checks every coefficient against ``q`` before anything reaches SEAL.

Pyfhel's context bytes are Pyfhel's own prefix (i32 sec, u64 count, i32 prime sizes, f64 scale)
followed by SEAL's EncryptionParameters (header, u8 scheme, u64 degree, u64 prime count, each prime
as a SEAL-headed u64, then the plain modulus likewise).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.errors import BlobError, CryptoError

SEAL_MAGIC = 0xA15E
SEAL_MAJOR_VERSION = 4
SEAL_HEADER = struct.Struct("<HBBBBHQ")
CIPHERTEXT_MEMBERS = struct.Struct("<32s?QQQdQ")
U64 = struct.Struct("<Q")
#: Bytes before the first coefficient: SEAL header, members, data header, element count.
CIPHERTEXT_PREFIX_BYTES = SEAL_HEADER.size + CIPHERTEXT_MEMBERS.size + SEAL_HEADER.size + U64.size
_PYFHEL_PREFIX = struct.Struct("<iQ")
_SCHEMES = {1: "bfv", 2: "ckks", 3: "bgv"}


@dataclass(frozen=True)
class CiphertextBytes:
    """A parsed ciphertext: the fixed prefix and the coefficients (read-only uint64)."""

    prefix: bytes
    polys: int
    degree: int
    primes: int
    coeffs: np.ndarray


@dataclass(frozen=True)
class ContextInfo:
    """What a Pyfhel context file declares."""

    sec: int
    prime_sizes: tuple[int, ...]
    scale: float
    scheme: str
    degree: int
    moduli: tuple[int, ...]
    plain_modulus: int


def coeff_bytes_for(modulus: int) -> int:
    """Low-order bytes that can be non-zero in a coefficient below ``modulus``."""
    return -(-(modulus - 1).bit_length() // 8)


def parse_ciphertext(data: bytes) -> CiphertextBytes:
    """Split serialized ciphertext bytes; raise CryptoError if the layout is not SEAL 4's."""
    total = len(data)
    size = _read_seal_header(data, 0, "ciphertext", CryptoError)
    if size != total:
        raise CryptoError(f"ciphertext header says {size} bytes, got {total}")
    if total < CIPHERTEXT_PREFIX_BYTES:
        raise CryptoError(f"ciphertext is {total} bytes, shorter than its fixed prefix")
    offset = SEAL_HEADER.size
    _parms, _ntt, polys, degree, primes, _scale, _correction = CIPHERTEXT_MEMBERS.unpack_from(
        data, offset
    )
    offset += CIPHERTEXT_MEMBERS.size
    data_size = _read_seal_header(data, offset, "ciphertext data", CryptoError)
    offset += SEAL_HEADER.size
    (count,) = U64.unpack_from(data, offset)
    offset += U64.size
    if count != polys * degree * primes:
        raise CryptoError(f"ciphertext holds {count} coefficients, not {polys}x{degree}x{primes}")
    if data_size != SEAL_HEADER.size + U64.size + 8 * count or total != offset + 8 * count:
        raise CryptoError(f"ciphertext data size {data_size} does not fit {count} coefficients")
    coeffs = np.frombuffer(data, dtype="<u8", offset=offset, count=count)
    return CiphertextBytes(bytes(data[:offset]), polys, degree, primes, coeffs)


def compact(coeffs: np.ndarray, width: int) -> bytes:
    """Keep the ``width`` low bytes of each coefficient (all dropped bytes must be zero)."""
    raw = np.ascontiguousarray(coeffs, dtype="<u8").view(np.uint8).reshape(-1, 8)
    if raw[:, width:].any():
        raise CryptoError(f"a coefficient needs more than {width} bytes")
    return raw[:, :width].tobytes()


def expand(chunk: bytes, *, width: int, degree: int, moduli: Sequence[int]) -> np.ndarray:
    """Rebuild uint64 coefficients of a 2-polynomial ciphertext; each must be below its prime."""
    count = 2 * degree * len(moduli)
    if len(chunk) != count * width:
        raise BlobError(f"ciphertext chunk is {len(chunk)} bytes, expected {count * width}")
    raw = np.zeros((count, 8), dtype=np.uint8)
    raw[:, :width] = np.frombuffer(chunk, dtype=np.uint8).reshape(count, width)
    coeffs = raw.view("<u8").reshape(2, len(moduli), degree)
    limits = np.asarray(moduli, dtype=np.uint64).reshape(1, -1, 1)
    bad = np.flatnonzero(coeffs >= limits)
    if bad.size:
        raise BlobError(
            f"ciphertext chunk corrupted: coefficient {int(bad[0])} is not below its modulus"
        )
    return coeffs.reshape(-1)


def assemble(prefix: bytes, coeffs: np.ndarray) -> bytes:
    """Inverse of ``parse_ciphertext``: prefix followed by little-endian coefficients."""
    return prefix + np.ascontiguousarray(coeffs, dtype="<u8").tobytes()


def parse_context(data: bytes) -> ContextInfo:
    """Read the parameters a Pyfhel context declares; raise CryptoError if malformed."""
    try:
        sec, count = _PYFHEL_PREFIX.unpack_from(data, 0)
        if count > 64:
            raise CryptoError(f"context declares {count} primes")
        offset = _PYFHEL_PREFIX.size
        sizes = struct.unpack_from(f"<{count}i", data, offset)
        offset += 4 * count
        (scale,) = struct.unpack_from("<d", data, offset)
        offset += 8
        start = offset
        size = _read_seal_header(data, offset, "context", CryptoError)
        offset += SEAL_HEADER.size
        scheme_id, degree, primes = struct.unpack_from("<BQQ", data, offset)
        offset += struct.calcsize("<BQQ")
        if primes > 64:
            raise CryptoError(f"context declares {primes} primes")
        values = []
        for _ in range(primes + 1):
            _read_seal_header(data, offset, "modulus", CryptoError)
            values.append(U64.unpack_from(data, offset + SEAL_HEADER.size)[0])
            offset += SEAL_HEADER.size + U64.size
    except struct.error as exc:
        raise CryptoError(f"context bytes truncated: {exc}") from exc
    if offset - start != size or offset != len(data):
        raise CryptoError(f"context is {len(data)} bytes, its headers describe {start + size}")
    if scheme_id not in _SCHEMES:
        raise CryptoError(f"context declares unknown scheme id {scheme_id}")
    return ContextInfo(
        sec=sec,
        prime_sizes=tuple(sizes),
        scale=scale,
        scheme=_SCHEMES[scheme_id],
        degree=degree,
        moduli=tuple(values[:-1]),
        plain_modulus=values[-1],
    )


def _read_seal_header(data: bytes, offset: int, what: str, error: type[CryptoError]) -> int:
    """Check a SEAL header at ``offset`` and return the size it declares."""
    if len(data) < offset + SEAL_HEADER.size:
        raise error(f"{what} truncated before its SEAL header")
    magic, header_size, major, _minor, compr_mode, _reserved, size = SEAL_HEADER.unpack_from(
        data, offset
    )
    if magic != SEAL_MAGIC or header_size != SEAL_HEADER.size:
        raise error(f"{what} has no SEAL header (magic {magic:#06x}, header size {header_size})")
    if major != SEAL_MAJOR_VERSION:
        raise error(f"{what} written by SEAL {major}.x, expected {SEAL_MAJOR_VERSION}.x")
    if compr_mode != 0:
        raise error(f"{what} is compressed (mode {compr_mode}); only 'none' is supported")
    return int(size)
