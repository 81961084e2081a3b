"""SEAL byte layouts and value encoding: pure functions, checked on synthetic bytes."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from common.crypto import seal_layout
from common.crypto.encoding import blocks, check_sum, checked_values, from_fixed, to_fixed
from common.errors import BlobError, CryptoError, ValueRangeError

Q = (1 << 56) - 5  # any modulus of 56 bits will do for layout tests
DEGREE = 8


def seal_header(size: int, *, magic: int = 0xA15E, major: int = 4, compr: int = 0) -> bytes:
    return struct.pack("<HBBBBHQ", magic, 16, major, 1, compr, 0, size)


def fake_ciphertext(coeffs: np.ndarray, *, seed: bytes | None = None, **header: int) -> bytes:
    """SEAL's bytes of a 2-polynomial ciphertext: full, or seeded (``coeffs`` of the first
    polynomial alone, then the PRNG info)."""
    count = len(coeffs)
    data = seal_header(16 + 8 + 8 * count) + struct.pack("<Q", count) + coeffs.tobytes()
    if seed is not None:
        data += seal_header(16 + len(seed)) + seed
    members = struct.pack("<32s?QQQdQ", b"\x07" * 32, True, 2, DEGREE, 1, 2.0**40, 1)
    total = 16 + len(members) + len(data)
    return seal_header(total, **header) + members + data


def random_coeffs(seed: int = 0, polys: int = 2, modulus: int = Q) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, modulus, polys * DEGREE, dtype=np.uint64)


SEED = bytes([1]) + bytes(range(64))  # blake2xb, and 64 seed bytes


def test_parse_pack_expand_assemble_round_trip() -> None:
    coeffs = random_coeffs()
    data = fake_ciphertext(coeffs)
    layout = seal_layout.parse_ciphertext(data)
    assert (layout.polys, layout.degree, layout.primes) == (2, DEGREE, 1)
    assert layout.seed is None
    assert len(layout.prefix) == seal_layout.CIPHERTEXT_PREFIX_BYTES
    bits = seal_layout.coeff_bits_for(Q)
    chunk = seal_layout.pack(layout.coeffs, bits)
    assert len(chunk) == 2 * DEGREE * 7
    restored = seal_layout.expand(chunk, bits=bits, degree=DEGREE, moduli=[Q])
    assert seal_layout.assemble(layout.prefix, restored) == data


def test_a_seeded_ciphertext_round_trips_with_one_polynomial_and_its_seed() -> None:
    first = random_coeffs(polys=1)
    data = fake_ciphertext(first, seed=SEED)
    layout = seal_layout.parse_ciphertext(data)
    assert (layout.polys, layout.degree, layout.primes) == (2, DEGREE, 1)
    assert layout.seed == SEED
    assert np.array_equal(layout.coeffs, first)
    # the same prefix as a full ciphertext of this shape but for the sizes it declares
    full = seal_layout.parse_ciphertext(fake_ciphertext(random_coeffs()))
    assert seal_layout.members(layout.prefix) == seal_layout.members(full.prefix)
    assert seal_layout.assemble(full.prefix, first, SEED) == data
    assert seal_layout.assemble(layout.prefix, random_coeffs(1)) == fake_ciphertext(
        random_coeffs(1)
    )


@pytest.mark.parametrize(
    ("seed", "message"),
    [(bytes([0]) + bytes(64), "PRNG type 0"), (bytes([1]) + bytes(63), "does not fit")],
    ids=["unknown-prng", "short-seed"],
)
def test_parse_rejects_a_foreign_seed(seed: bytes, message: str) -> None:
    with pytest.raises(CryptoError, match=message):
        seal_layout.parse_ciphertext(fake_ciphertext(random_coeffs(polys=1), seed=seed))


def test_assemble_refuses_a_seed_of_the_wrong_length_or_type() -> None:
    prefix = seal_layout.parse_ciphertext(fake_ciphertext(random_coeffs())).prefix
    with pytest.raises(BlobError, match="seed is 65 bytes"):
        seal_layout.assemble(prefix, random_coeffs(polys=1), SEED[:-1])
    with pytest.raises(BlobError, match="PRNG type 9"):
        seal_layout.assemble(prefix, random_coeffs(polys=1), bytes([9]) + SEED[1:])


@pytest.mark.parametrize("bits", [1, 7, 20, 36, 40, 45, 50, 56, 60, 63, 64])
def test_pack_keeps_exactly_the_low_bits_at_bit_granularity(bits: int) -> None:
    rng = np.random.default_rng(bits)
    count = 2 * DEGREE + 3  # not a multiple of 8: the last byte is padded
    high = 1 << bits if bits < 64 else None
    coeffs = (
        rng.integers(0, high, count, dtype=np.uint64)
        if high
        else rng.integers(0, 2**63, count, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    )
    packed = seal_layout.pack(coeffs, bits)
    assert len(packed) == seal_layout.packed_bytes(count, bits) == -(-count * bits // 8)
    assert np.array_equal(seal_layout.unpack(packed, bits, count), coeffs)
    # the bit stream is the coefficients' low bits, little-endian, back to back
    stream = sum(int(c) << (i * bits) for i, c in enumerate(coeffs))
    assert packed == stream.to_bytes(len(packed), "little")


def test_unpack_refuses_non_zero_padding_and_a_wrong_length() -> None:
    packed = bytearray(seal_layout.pack(random_coeffs(modulus=2**36), 36))
    assert len(packed) == 72  # 16 x 36 bits: no padding
    three = bytearray(seal_layout.pack(np.arange(3, dtype=np.uint64), 36))  # 108 bits in 14 bytes
    three[-1] |= 0x80
    with pytest.raises(BlobError, match="padding bits are not zero"):
        seal_layout.unpack(bytes(three), 36, 3)
    with pytest.raises(BlobError, match="expected 72"):
        seal_layout.unpack(bytes(packed[:-1]), 36, 16)


@pytest.mark.parametrize(
    ("modulus", "bits"),
    [(2**56 - 5, 56), (2**60 - 93, 60), (2**49 - 1, 49), (2**48 - 59, 48), (2**36 - 5, 36)],
)
def test_coefficient_width_follows_the_modulus(modulus: int, bits: int) -> None:
    assert seal_layout.coeff_bits_for(modulus) == bits


@pytest.mark.parametrize("polys", [1, 2])
def test_expand_rejects_a_coefficient_not_below_the_modulus(polys: int) -> None:
    modulus = 2**36 - 5
    coeffs = random_coeffs(polys=polys, modulus=modulus)
    coeffs[5] = modulus
    chunk = seal_layout.pack(coeffs, 36)
    with pytest.raises(BlobError, match="coefficient 5 is not below its modulus"):
        seal_layout.expand(chunk, bits=36, degree=DEGREE, moduli=[modulus], polys=polys)


def test_expand_rejects_a_chunk_of_the_wrong_length() -> None:
    with pytest.raises(BlobError, match="expected 112"):
        seal_layout.expand(b"\x00" * 111, bits=56, degree=DEGREE, moduli=[Q])


def test_pack_refuses_to_drop_non_zero_bits() -> None:
    with pytest.raises(CryptoError, match="more than 56 bits"):
        seal_layout.pack(np.array([1 << 60], dtype=np.uint64), 56)
    with pytest.raises(CryptoError, match="more than 36 bits"):
        seal_layout.pack(np.array([1 << 36], dtype=np.uint64), 36)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"magic": 0x1234}, "no SEAL header"),
        ({"major": 3}, "SEAL 3.x"),
        ({"compr": 2}, "compressed"),
    ],
)
def test_parse_rejects_foreign_layouts(header: dict[str, int], message: str) -> None:
    with pytest.raises(CryptoError, match=message):
        seal_layout.parse_ciphertext(fake_ciphertext(random_coeffs(), **header))


def test_parse_rejects_a_size_mismatch() -> None:
    with pytest.raises(CryptoError, match="header says"):
        seal_layout.parse_ciphertext(fake_ciphertext(random_coeffs()) + b"\x00")


def fake_context(
    *, sec: int = 128, scheme: int = 2, moduli: tuple[int, ...] = (Q, 2**53 - 111)
) -> bytes:
    sizes = [q.bit_length() for q in moduli]
    pyfhel = struct.pack(f"<iQ{len(sizes)}id", sec, len(sizes), *sizes, 2.0**40)
    body = struct.pack("<BQQ", scheme, 4096, len(moduli))
    for value in (*moduli, 0):
        body += seal_header(24) + struct.pack("<Q", value)
    return pyfhel + seal_header(16 + len(body)) + body


def test_parse_context_reads_the_declared_parameters() -> None:
    info = seal_layout.parse_context(fake_context())
    assert (info.sec, info.scheme, info.degree) == (128, "ckks", 4096)
    assert info.moduli == (Q, 2**53 - 111)
    assert info.prime_sizes == (56, 53)
    assert info.scale == 2.0**40


@pytest.mark.parametrize("cut", [3, 20, 40, -1])
def test_parse_context_rejects_truncation(cut: int) -> None:
    with pytest.raises(CryptoError):
        seal_layout.parse_context(fake_context()[:cut])


def test_checked_values_names_the_first_offender() -> None:
    with pytest.raises(ValueRangeError, match=r"index 2 \(nan\) is not finite"):
        checked_values(np.array([1.0, 2.0, np.nan, np.inf]), 10.0)
    with pytest.raises(ValueRangeError, match=r"index 1 \(-10.5\) exceeds the bound 10"):
        checked_values(np.array([10.0, -10.5]), 10.0)


def test_checked_values_refuses_shapes_and_types() -> None:
    with pytest.raises(ValueRangeError, match="1-D"):
        checked_values(np.zeros((2, 2)), 1.0)
    with pytest.raises(ValueRangeError, match="empty"):
        checked_values(np.zeros(0), 1.0)
    with pytest.raises(ValueRangeError, match="dtype"):
        checked_values(np.array(["a"]), 1.0)


def test_check_sum_refuses_values_beyond_the_limit() -> None:
    check_sum(np.array([3.0, -3.0]), 3.0)
    with pytest.raises(ValueRangeError, match="index 1"):
        check_sum(np.array([3.0, -3.5]), 3.0)


def test_blocks_pad_the_last_block_with_zeros() -> None:
    parts = blocks(np.arange(1.0, 6.0), 2)
    assert [part.tolist() for part in parts] == [[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]]


def test_fixed_point_round_trip_within_half_a_step() -> None:
    values = np.random.default_rng(1).uniform(-64, 64, 1000)
    restored = from_fixed(to_fixed(values, 21), 21)
    assert np.abs(restored - values).max() <= 2.0**-22
