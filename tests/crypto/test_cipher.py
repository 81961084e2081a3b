"""Hospital-side ciphers: round trips, value ranges, blob headers, upload size."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from common.crypto import (
    BfvCipher,
    Cipher,
    CkksCipher,
    HEConfig,
    PlainCipher,
    decode_blob,
    open_cipher,
    plain_cipher,
    run_key_ceremony,
)
from common.crypto.blob import BlobHeader
from common.errors import BlobError, ValueRangeError

N = 4096
MODEL_SIZE = 41_474  # parameters of the project's readmission model
CKKS_TARGET_BYTES_PER_VALUE = 16.0


def ceremony(tmp: Path, scheme: str, **kwargs: object) -> Cipher:
    run_key_ceremony(HEConfig(scheme=scheme, **kwargs), tmp / "h", tmp / "c")  # type: ignore[arg-type]
    return open_cipher(tmp / "h")


@pytest.fixture(scope="module")
def ciphers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Cipher]:
    return {
        "ckks": ceremony(tmp_path_factory.mktemp("ckks"), "ckks"),
        "bfv": ceremony(tmp_path_factory.mktemp("bfv"), "bfv"),
        "plain": plain_cipher(),
    }


def tolerance(cipher: Cipher) -> float:
    if isinstance(cipher, BfvCipher):
        return cipher.resolution / 2
    if isinstance(cipher, CkksCipher):
        return HEConfig().error_bound(1)  # the fixture's ceremonies use the default parameters
    return 0.0


def header_of(blob: bytes, cipher: Cipher) -> BlobHeader:
    spec = cipher.spec  # type: ignore[attr-defined]
    header, _ = decode_blob(
        blob,
        expect_scheme=spec.scheme,
        expect_param_digest=spec.param_digest,
        expect_key_id=spec.key_id,
    )
    return header


def test_factories_build_the_bundle_scheme(ciphers: dict[str, Cipher]) -> None:
    assert isinstance(ciphers["ckks"], CkksCipher)
    assert isinstance(ciphers["bfv"], BfvCipher)
    assert isinstance(ciphers["plain"], PlainCipher)
    assert [c.scheme for c in ciphers.values()] == ["ckks", "bfv", "plain"]
    assert ciphers["ckks"].value_bound == pytest.approx(81.92)
    assert ciphers["bfv"].value_bound == 64.0


@pytest.mark.parametrize("scheme", ["ckks", "bfv", "plain"])
@pytest.mark.parametrize("length", [1, N - 1, N, N + 1, 50_000])
def test_round_trip(ciphers: dict[str, Cipher], scheme: str, length: int) -> None:
    cipher = ciphers[scheme]
    values = np.random.default_rng(length).uniform(-10, 10, length)
    out = cipher.decrypt(cipher.encrypt(values))
    assert out.dtype == np.float64
    assert out.shape == (length,)
    assert np.abs(out - values).max() <= tolerance(cipher)


@pytest.mark.parametrize("scheme", ["ckks", "bfv"])
def test_values_at_the_bound_round_trip(ciphers: dict[str, Cipher], scheme: str) -> None:
    cipher = ciphers[scheme]
    values = np.array([cipher.value_bound, -cipher.value_bound, 0.0])
    out = cipher.decrypt(cipher.encrypt(values))
    assert np.abs(out - values).max() <= tolerance(cipher)


@pytest.mark.parametrize("scheme", ["ckks", "bfv", "plain"])
def test_upload_header_describes_the_blob(ciphers: dict[str, Cipher], scheme: str) -> None:
    cipher = ciphers[scheme]
    header = header_of(cipher.encrypt(np.ones(N + 1), kind="weight"), cipher)
    assert (header.kind, header.scheme, header.value_count) == ("weight", scheme, N + 1)
    assert (header.chunk_count, header.summands) == (2, 1)


def test_ckks_packs_two_reals_per_slot_in_few_ciphertexts(ciphers: dict[str, Cipher]) -> None:
    header = header_of(ciphers["ckks"].encrypt(np.zeros(MODEL_SIZE)), ciphers["ckks"])
    assert header.chunk_count == -(-MODEL_SIZE // N) == 11
    bits = header.coeff_bits
    assert bits == ciphers["ckks"].spec.coeff_bits
    # An update: seeded ciphertexts, the first polynomial and SEAL's 65-byte PRNG seed.
    assert header.chunk_bytes == (-(-N * bits // 8) + 65,) * 11


@pytest.mark.parametrize("scheme", ["ckks", "bfv"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(ciphers: dict[str, Cipher], scheme: str, bad: float) -> None:
    values = np.zeros(10)
    values[7] = bad
    with pytest.raises(ValueRangeError, match="index 7"):
        ciphers[scheme].encrypt(values)


@pytest.mark.parametrize("scheme", ["ckks", "bfv"])
def test_values_beyond_the_bound_are_refused(ciphers: dict[str, Cipher], scheme: str) -> None:
    cipher = ciphers[scheme]
    values = np.zeros(100)
    values[42] = -cipher.value_bound * 1.001
    with pytest.raises(ValueRangeError, match=r"index 42 \(-.*\) exceeds the bound"):
        cipher.encrypt(values)


def test_plain_refuses_nan_too(ciphers: dict[str, Cipher]) -> None:
    with pytest.raises(ValueRangeError, match="index 0"):
        ciphers["plain"].encrypt(np.array([np.nan]))


def test_encrypt_does_not_modify_its_input(ciphers: dict[str, Cipher]) -> None:
    values = np.linspace(-5, 5, 11)
    before = values.copy()
    for cipher in ciphers.values():
        cipher.encrypt(values)
    assert np.array_equal(values, before)


def test_a_blob_from_another_ceremony_is_refused(
    tmp_path: Path, ciphers: dict[str, Cipher]
) -> None:
    same_parameters = ceremony(tmp_path / "same", "ckks")
    with pytest.raises(BlobError, match=r"key id .* is foreign"):
        ciphers["ckks"].decrypt(same_parameters.encrypt(np.ones(3)))
    other_parameters = ceremony(tmp_path / "other", "ckks", max_hospitals=10, scale_bits=22)
    with pytest.raises(BlobError, match=r"parameter digest .* is foreign"):
        ciphers["ckks"].decrypt(other_parameters.encrypt(np.ones(3)))


def test_a_blob_of_another_scheme_is_refused(ciphers: dict[str, Cipher]) -> None:
    with pytest.raises(BlobError, match="scheme 'plain' is foreign"):
        ciphers["ckks"].decrypt(ciphers["plain"].encrypt(np.ones(3)))


def test_ckks_upload_meets_the_size_target(ciphers: dict[str, Cipher]) -> None:
    values = np.random.default_rng(7).uniform(-1, 1, MODEL_SIZE)
    started = time.perf_counter()
    blob = ciphers["ckks"].encrypt(values)
    elapsed = time.perf_counter() - started
    per_value = len(blob) / MODEL_SIZE
    print(f"ckks: {len(blob)} bytes, {per_value:.3f} bytes/value, encrypt {elapsed * 1e3:.1f} ms")
    assert per_value <= CKKS_TARGET_BYTES_PER_VALUE


def test_bfv_upload_size_is_measured(ciphers: dict[str, Cipher]) -> None:
    blob = ciphers["bfv"].encrypt(np.zeros(MODEL_SIZE))
    per_value = len(blob) / MODEL_SIZE
    print(f"bfv: {len(blob)} bytes, {per_value:.3f} bytes/value")
    # 60-bit data prime: 8 bytes per coefficient, 2 polynomials, last-chunk padding, header.
    assert per_value <= 2 * 8 * (11 * N) / MODEL_SIZE + 0.05


def test_bfv_with_a_56_bit_data_prime_matches_ckks_size(tmp_path: Path) -> None:
    cipher = ceremony(tmp_path, "bfv", coeff_modulus_bits=(56, 53))
    values = np.random.default_rng(3).uniform(-64, 64, MODEL_SIZE)
    blob = cipher.encrypt(values)
    assert len(blob) / MODEL_SIZE <= CKKS_TARGET_BYTES_PER_VALUE
    assert np.abs(cipher.decrypt(blob) - values).max() <= 2.0**-22


def test_each_cipher_states_its_error_bound(ciphers: dict[str, Cipher]) -> None:
    assert ciphers["ckks"].error_bound(7) == HEConfig().error_bound(7) > 0
    assert ciphers["bfv"].error_bound(2) == HEConfig(scheme="bfv").resolution
    assert ciphers["plain"].error_bound(100) == 0.0
