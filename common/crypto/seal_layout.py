"""SEAL 4.1 byte layouts (compr_mode "none"), read and written without SEAL itself.

Ciphertext::save writes a 16-byte SEAL header, 73 bytes of members (parms_id 32, is_ntt_form 1,
size u64, poly_modulus_degree u64, coeff_modulus_size u64, scale f64, correction_factor u64), then
the data DynArray: a 16-byte SEAL header, a u64 element count and that many u64 coefficients,
ordered polynomial, prime, coefficient. A *seeded* ciphertext (SEAL's ``encrypt_symmetric``,
saved without expanding) holds only the first polynomial in its DynArray, then the seed of the
PRNG that draws the second: a SEAL-headed ``UniformRandomGeneratorInfo`` (u8 PRNG type, 64 seed
bytes). ``Ciphertext::load`` expands the seed, so whoever loads it needs no secret key.

Coefficients are below their prime ``q``, so only the low ``bits(q - 1)`` bits are ever non-zero:
``pack`` keeps those, back to back at bit granularity (whole bytes when the width is a multiple
of 8), ``expand`` restores them and checks every coefficient against ``q`` before anything
reaches SEAL.

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
#: What a seeded ciphertext keeps of its PRNG info in a chunk: the u8 PRNG type and the seed.
SEED_BYTES = 1 + 64
#: The PRNG info as SEAL saves it: its own SEAL header, then the type and the seed.
PRNG_INFO_BYTES = SEAL_HEADER.size + SEED_BYTES
#: seal::prng_type values that expand a seed (1 blake2xb, SEAL's default; 2 shake256).
PRNG_TYPES = (1, 2)
_DATA_OFFSET = SEAL_HEADER.size + CIPHERTEXT_MEMBERS.size  # where the data DynArray starts
#: Up to this width, a coefficient and its bit shift fit one 8-byte read: packed by byte groups.
_GROUPED_BITS = 56
_PYFHEL_PREFIX = struct.Struct("<iQ")
_SCHEMES = {1: "bfv", 2: "ckks", 3: "bgv"}


@dataclass(frozen=True)
class CiphertextBytes:
    """A parsed ciphertext: the fixed prefix, the coefficients (read-only uint64) and, when it is
    seeded, the PRNG type and seed that stand for its second polynomial (``SEED_BYTES``)."""

    prefix: bytes
    polys: int
    degree: int
    primes: int
    coeffs: np.ndarray
    seed: bytes | None = None


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


def coeff_bits_for(modulus: int) -> int:
    """Low-order bits that can be non-zero in a coefficient below ``modulus``."""
    return (modulus - 1).bit_length()


def packed_bytes(count: int, bits: int) -> int:
    """Bytes ``pack`` writes for ``count`` coefficients of ``bits`` bits."""
    return -(-count * bits // 8)


def parse_ciphertext(data: bytes) -> CiphertextBytes:
    """Split serialized ciphertext bytes, full or seeded; raise CryptoError if the layout is not
    SEAL 4's."""
    total = len(data)
    size = _read_seal_header(data, 0, "ciphertext", CryptoError)
    if size != total:
        raise CryptoError(f"ciphertext header says {size} bytes, got {total}")
    if total < CIPHERTEXT_PREFIX_BYTES:
        raise CryptoError(f"ciphertext is {total} bytes, shorter than its fixed prefix")
    _parms, _ntt, polys, degree, primes, _scale, _correction = CIPHERTEXT_MEMBERS.unpack_from(
        data, SEAL_HEADER.size
    )
    offset = _DATA_OFFSET
    data_size = _read_seal_header(data, offset, "ciphertext data", CryptoError)
    offset += SEAL_HEADER.size
    (count,) = U64.unpack_from(data, offset)
    offset += U64.size
    per_poly = degree * primes
    seeded = polys >= 2 and count == (polys - 1) * per_poly
    if count != polys * per_poly and not seeded:
        raise CryptoError(f"ciphertext holds {count} coefficients, not {polys}x{degree}x{primes}")
    end = offset + 8 * count + (PRNG_INFO_BYTES if seeded else 0)
    if data_size != SEAL_HEADER.size + U64.size + 8 * count or total != end:
        raise CryptoError(f"ciphertext data size {data_size} does not fit {count} coefficients")
    coeffs = np.frombuffer(data, dtype="<u8", offset=offset, count=count)
    seed = None
    if seeded:
        info = offset + 8 * count
        if _read_seal_header(data, info, "PRNG seed", CryptoError) != PRNG_INFO_BYTES:
            raise CryptoError("ciphertext's PRNG seed is not a 64-byte seed")
        seed = bytes(data[info + SEAL_HEADER.size : end])
        _check_prng_type(seed[0], CryptoError)
    return CiphertextBytes(bytes(data[:offset]), polys, degree, primes, coeffs, seed)


def pack(coeffs: np.ndarray, bits: int) -> bytes:
    """Keep the ``bits`` low bits of each coefficient, back to back (little-endian bit order,
    the last byte zero-padded); every dropped bit must be zero."""
    words = np.ascontiguousarray(coeffs, dtype="<u8")
    if bits < 64 and (words >> np.uint64(bits)).any():
        raise CryptoError(f"a coefficient needs more than {bits} bits")
    raw = words.view(np.uint8).reshape(-1, 8)
    if bits % 8 == 0:
        return raw[:, : bits // 8].tobytes()
    size = packed_bytes(len(words), bits)
    if bits <= _GROUPED_BITS:
        groups = _grouped(words, bits)
        out = np.zeros((len(groups), bits + 8), dtype=np.uint8)
        for j in range(8):  # OR each coefficient's bits in at its byte offset and shift
            offset, shift = divmod(j * bits, 8)
            view = _words_at(out, offset)
            view |= groups[:, j] << np.uint64(shift)
        return out[:, :bits].tobytes()[:size]
    kept = np.unpackbits(raw, axis=1, count=bits, bitorder="little")
    return np.packbits(kept.reshape(-1), bitorder="little").tobytes()


def unpack(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of ``pack``: ``count`` uint64 coefficients; padding bits must be zero."""
    if len(data) != packed_bytes(count, bits):
        raise BlobError(
            f"ciphertext chunk is {len(data)} bytes of coefficients, "
            f"expected {packed_bytes(count, bits)}"
        )
    raw = np.frombuffer(data, dtype=np.uint8)
    if bits % 8 == 0:
        words = np.zeros((count, 8), dtype=np.uint8)
        words[:, : bits // 8] = raw.reshape(count, bits // 8)
        return words.view("<u8").reshape(-1)
    if count * bits % 8 and raw[-1] >> (count * bits % 8):
        raise BlobError("ciphertext chunk corrupted: its padding bits are not zero")
    if bits <= _GROUPED_BITS:
        groups = -(-count // 8)
        flat = np.zeros(groups * bits, dtype=np.uint8)
        flat[: len(raw)] = raw
        padded = np.zeros((groups, bits + 8), dtype=np.uint8)
        padded[:, :bits] = flat.reshape(groups, bits)
        mask = np.uint64((1 << bits) - 1)
        out = np.empty((groups, 8), dtype=np.uint64)
        for j in range(8):  # each coefficient: 8 bytes read at its byte offset, shifted, masked
            offset, shift = divmod(j * bits, 8)
            out[:, j] = (_words_at(padded, offset) >> np.uint64(shift)) & mask
        return out.reshape(-1)[:count].copy()
    stream = np.unpackbits(raw, bitorder="little")
    spread = np.zeros((count, 64), dtype=np.uint8)
    spread[:, :bits] = stream[: count * bits].reshape(count, bits)
    return np.packbits(spread, axis=1, bitorder="little").view("<u8").reshape(-1)


def _grouped(words: np.ndarray, bits: int) -> np.ndarray:
    """Coefficients as rows of 8 (zero-padded): 8 coefficients take exactly ``bits`` bytes."""
    groups = np.zeros((-(-len(words) // 8), 8), dtype=np.uint64)
    groups.reshape(-1)[: len(words)] = words
    return groups


def _words_at(rows: np.ndarray, offset: int) -> np.ndarray:
    """A little-endian uint64 view of 8 bytes at ``offset`` in each row of ``rows`` (uint8)."""
    return np.ndarray(
        (rows.shape[0],), dtype="<u8", buffer=rows, offset=offset, strides=(rows.strides[0],)
    )


def expand(
    chunk: bytes, *, bits: int, degree: int, moduli: Sequence[int], polys: int = 2
) -> np.ndarray:
    """Rebuild the uint64 coefficients of ``polys`` polynomials; each must be below its prime."""
    count = polys * degree * len(moduli)
    coeffs = unpack(chunk, bits, count).reshape(polys, len(moduli), degree)
    limits = np.asarray(moduli, dtype=np.uint64).reshape(1, -1, 1)
    bad = np.flatnonzero(coeffs >= limits)
    if bad.size:
        raise BlobError(
            f"ciphertext chunk corrupted: coefficient {int(bad[0])} is not below its modulus"
        )
    return coeffs.reshape(-1)


def check_seed(seed: bytes) -> None:
    """A chunk's seed part: ``SEED_BYTES``, of a PRNG type SEAL expands."""
    if len(seed) != SEED_BYTES:
        raise BlobError(f"a ciphertext seed is {SEED_BYTES} bytes, got {len(seed)}")
    _check_prng_type(seed[0], BlobError)


def assemble(prefix: bytes, coeffs: np.ndarray, seed: bytes | None = None) -> bytes:
    """Inverse of ``parse_ciphertext``: ``prefix`` (any ciphertext's of this shape, full or
    seeded) with its sizes set for ``coeffs`` and, when given, the PRNG ``seed`` after them."""
    if len(prefix) != CIPHERTEXT_PREFIX_BYTES:
        raise CryptoError(f"a ciphertext prefix is {CIPHERTEXT_PREFIX_BYTES} bytes")
    body = np.ascontiguousarray(coeffs, dtype="<u8").tobytes()
    tail = b""
    if seed is not None:
        check_seed(seed)
        tail = _with_size(prefix[: SEAL_HEADER.size], PRNG_INFO_BYTES) + seed
    head = _with_size(prefix[: SEAL_HEADER.size], len(prefix) + len(body) + len(tail))
    data_header = _with_size(
        prefix[_DATA_OFFSET : _DATA_OFFSET + SEAL_HEADER.size],
        SEAL_HEADER.size + U64.size + len(body),
    )
    return b"".join(
        [
            head,
            prefix[SEAL_HEADER.size : _DATA_OFFSET],
            data_header,
            U64.pack(len(body) // 8),
            body,
            tail,
        ]
    )


def members(prefix: bytes) -> bytes:
    """A ciphertext's members (level, NTT form, size, degree, primes, scale): equal for every
    ciphertext of one shape, full or seeded."""
    return prefix[SEAL_HEADER.size : _DATA_OFFSET]


def _with_size(header: bytes, size: int) -> bytes:
    """A SEAL header with its size field set to ``size``."""
    fields = list(SEAL_HEADER.unpack(header))
    fields[-1] = size
    return SEAL_HEADER.pack(*fields)


def _check_prng_type(prng_type: int, error: type[CryptoError]) -> None:
    if prng_type not in PRNG_TYPES:
        raise error(f"ciphertext seed names PRNG type {prng_type}, not one SEAL expands")


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
