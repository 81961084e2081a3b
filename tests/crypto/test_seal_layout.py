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


def fake_ciphertext(coeffs: np.ndarray, **header: int) -> bytes:
    count = len(coeffs)
    data = seal_header(16 + 8 + 8 * count) + struct.pack("<Q", count) + coeffs.tobytes()
    members = struct.pack("<32s?QQQdQ", b"\x07" * 32, True, 2, DEGREE, 1, 2.0**40, 1)
    total = 16 + len(members) + len(data)
    return seal_header(total, **header) + members + data


def random_coeffs(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, Q, 2 * DEGREE, dtype=np.uint64)


def test_parse_compact_expand_assemble_round_trip() -> None:
    coeffs = random_coeffs()
    data = fake_ciphertext(coeffs)
    layout = seal_layout.parse_ciphertext(data)
    assert (layout.polys, layout.degree, layout.primes) == (2, DEGREE, 1)
    assert len(layout.prefix) == seal_layout.CIPHERTEXT_PREFIX_BYTES
    width = seal_layout.coeff_bytes_for(Q)
    chunk = seal_layout.compact(layout.coeffs, width)
    assert len(chunk) == 2 * DEGREE * 7
    restored = seal_layout.expand(chunk, width=width, degree=DEGREE, moduli=[Q])
    assert seal_layout.assemble(layout.prefix, restored) == data


@pytest.mark.parametrize(
    ("modulus", "width"), [(2**56 - 5, 7), (2**60 - 93, 8), (2**49 - 1, 7), (2**48 - 59, 6)]
)
def test_coefficient_width_follows_the_modulus(modulus: int, width: int) -> None:
    assert seal_layout.coeff_bytes_for(modulus) == width


def test_expand_rejects_a_coefficient_not_below_the_modulus() -> None:
    coeffs = random_coeffs()
    coeffs[5] = Q
    chunk = seal_layout.compact(coeffs, 7)
    with pytest.raises(BlobError, match="coefficient 5 is not below its modulus"):
        seal_layout.expand(chunk, width=7, degree=DEGREE, moduli=[Q])


def test_expand_rejects_a_chunk_of_the_wrong_length() -> None:
    with pytest.raises(BlobError, match="expected 112"):
        seal_layout.expand(b"\x00" * 111, width=7, degree=DEGREE, moduli=[Q])


def test_compact_refuses_to_drop_non_zero_bytes() -> None:
    with pytest.raises(CryptoError, match="more than 7 bytes"):
        seal_layout.compact(np.array([1 << 60], dtype=np.uint64), 7)


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
