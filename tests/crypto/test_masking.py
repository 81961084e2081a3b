"""Pairwise masks: exact cancellation in the sum, uniform streams, and the curious hospital.

The curious hospital holds the HE secret key (every hospital does) and a full copy of the store.
Without masks it decrypts another hospital's update exactly; with masks what it decrypts cannot
be told apart from the decryption of a masked upload of zeros, and has no correlation with the
true update beyond chance, while the round's sum still decrypts to the plaintext sum.
"""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from scipy import stats

from common.crypto import Cipher, HEConfig, open_aggregator, open_cipher, run_key_ceremony
from common.crypto.aggregator import Aggregator
from common.crypto.encoding import from_fixed
from common.crypto.masking import Cohort, PairwiseMasks, add_mod, mask_stream
from common.crypto.seal import SealSecret
from common.errors import BlobError, ConfigError, KeyBundleError, ValueRangeError
from common.fedavg import weighted_payload

NAMES = ("hospital-1", "hospital-2", "hospital-3", "hospital-4")
PRIME_56 = (1 << 55) + 2**20 + 1  # any odd modulus of that size; only its width matters here
VALUES = 20_000  # a model of this many parameters (plus the weight)
# |r| of two independent samples of this size exceeds this with probability about 1e-6.
CHANCE_CORRELATION = 4.9 / np.sqrt(VALUES)


def masks_for(names: tuple[str, ...]) -> dict[str, PairwiseMasks]:
    keys = {name: X25519PrivateKey.generate() for name in names}
    public = {name: key.public_key() for name, key in keys.items()}
    return {name: PairwiseMasks(name, keys[name], public) for name in names}


def cohort(attempt: int = 1, names: tuple[str, ...] = NAMES, round_: int = 1) -> Cohort:
    return Cohort(run="run-x", round=round_, attempt=attempt, participants=names)


# -- the masks themselves ---------------------------------------------------------------------


def test_the_stream_is_deterministic_below_the_modulus_and_uniform() -> None:
    seed = bytes(range(32))
    words = mask_stream(seed, 100_000, PRIME_56)
    assert np.array_equal(words, mask_stream(seed, 100_000, PRIME_56))
    assert np.array_equal(words[:1000], mask_stream(seed, 1000, PRIME_56))  # a prefix
    assert words.dtype == np.uint64 and int(words.max()) < PRIME_56
    other = mask_stream(bytes(31) + b"\x01", 100_000, PRIME_56)
    assert not np.array_equal(words, other)
    # Kolmogorov-Smirnov against U(0, 1): a biased sampler (e.g. modulo reduction of a
    # too-narrow draw) fails this by far at this size.
    assert stats.kstest(words.astype(np.float64) / PRIME_56, "uniform").pvalue > 1e-4


def test_a_modulo_bias_would_be_caught_by_the_uniformity_check() -> None:
    # The check above can fail: 56-bit words reduced modulo a prime 3/4 of 2^56 are biased.
    raw = mask_stream(bytes(32), 100_000, 1 << 56)
    modulus = 3 << 54
    biased = raw % np.uint64(modulus)
    assert stats.kstest(biased.astype(np.float64) / modulus, "uniform").pvalue < 1e-10


@pytest.mark.parametrize("count", [1, 4096, 30_001])
def test_the_masks_of_a_complete_cohort_cancel_exactly(count: int) -> None:
    masks = masks_for(NAMES)
    total = np.zeros(count, dtype=np.uint64)
    for name in NAMES:
        words = masks[name].for_cohort(cohort()).words(count, PRIME_56)
        assert words.any()  # each one alone is not zero
        total = add_mod(total, words, PRIME_56)
    assert not total.any()


@pytest.mark.parametrize("modulus", [257, PRIME_56, (1 << 61) - 1])
def test_masks_cancel_for_ten_hospitals_and_any_prime_width(modulus: int) -> None:
    # With a 61-bit prime only 7 streams add up without overflowing 64 bits: the sums are
    # reduced on the way, and must still cancel exactly.
    names = tuple(sorted(f"hospital-{i}" for i in range(1, 11)))
    masks = masks_for(names)
    total = np.zeros(3000, dtype=np.uint64)
    for name in names:
        words = masks[name].for_cohort(cohort(names=names)).words(3000, modulus)
        assert int(words.max()) < modulus
        total = add_mod(total, words, modulus)
    assert not total.any()


def test_without_one_participant_the_masks_do_not_cancel() -> None:
    masks = masks_for(NAMES)
    total = np.zeros(1000, dtype=np.uint64)
    for name in NAMES[:3]:
        total = add_mod(total, masks[name].for_cohort(cohort()).words(1000, PRIME_56), PRIME_56)
    assert np.count_nonzero(total) == 1000


def test_every_attempt_and_round_gets_unrelated_masks() -> None:
    mine = masks_for(NAMES)["hospital-1"]
    first = mine.for_cohort(cohort(1)).words(5000, PRIME_56)
    second = mine.for_cohort(cohort(2)).words(5000, PRIME_56)
    later = mine.for_cohort(cohort(1, round_=2)).words(5000, PRIME_56)
    fewer = mine.for_cohort(cohort(2, names=NAMES[:3])).words(5000, PRIME_56)
    for other in (second, later, fewer):
        assert not np.any(first == other)


def test_a_cohort_needs_three_sorted_participants_and_known_keys() -> None:
    with pytest.raises(ConfigError, match="at least 3"):
        cohort(names=NAMES[:2])
    with pytest.raises(ConfigError, match="distinct participants in order"):
        cohort(names=("hospital-2", "hospital-1", "hospital-3"))
    masks = masks_for(NAMES)
    with pytest.raises(ConfigError, match="not a participant"):
        masks["hospital-4"].for_cohort(cohort(names=NAMES[:3]))
    stranger = ("hospital-1", "hospital-2", "hospital-9")
    with pytest.raises(KeyBundleError, match="no masking key for hospital-9"):
        masks["hospital-1"].for_cohort(cohort(names=stranger))


def test_the_plain_comparison_scheme_refuses_masks() -> None:
    from common.crypto import plain_cipher

    mask = masks_for(NAMES)["hospital-1"].for_cohort(cohort())
    with pytest.raises(ConfigError, match="needs an HE scheme"):
        plain_cipher().encrypt(np.ones(3), mask=mask)


# -- the curious hospital, with real ciphertexts ------------------------------------------------


@pytest.fixture(scope="module", params=["ckks", "bfv"])
def he(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp(request.param)
    run_key_ceremony(HEConfig(scheme=request.param), root / "h", root / "c")
    return open_cipher(root / "h"), open_aggregator(root / "c")


def updates(seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        name: weighted_payload(rng.normal(0, 0.3, VALUES), int(rng.integers(2000, 9000)))
        for name in NAMES
    }


def summed(aggregator: Aggregator, blobs: list[bytes]) -> bytes:
    total = aggregator.new_sum()
    for blob in blobs:
        total.add(blob)
    return total.to_blob()


def read_with_the_secret_key(cipher: Cipher, blob: bytes) -> np.ndarray:
    """What a hospital holding the secret key reads from one upload, bypassing every check."""
    seal = cipher._seal  # type: ignore[attr-defined]
    assert isinstance(seal, SealSecret)
    header, chunks = cipher.spec.decode(blob)
    values = []
    for chunk in chunks:
        try:
            values.append(cipher._decrypt_block(chunk))  # type: ignore[attr-defined]
        except BlobError:  # BFV: the noise budget reads as exhausted; read the slots anyway
            slots = np.asarray(seal._he.decryptInt(seal.load_chunk(chunk)._ctxt), dtype=np.int64)
            values.append(from_fixed(slots, cipher._fraction_bits))  # type: ignore[attr-defined]
    return np.concatenate(values)[: header.value_count].astype(np.float64)


def test_a_curious_hospital_decrypts_an_unmasked_update_exactly(he) -> None:  # type: ignore[no-untyped-def]
    # The attack the masks defeat: a hospital with the secret key and another's blob.
    cipher, _ = he
    truth = updates()["hospital-1"]
    recovered = read_with_the_secret_key(cipher, cipher.encrypt(truth))
    bound = HEConfig().error_bound(1) if cipher.scheme == "ckks" else 1e-3
    assert np.max(np.abs(recovered - truth)) < bound


def test_a_curious_hospital_reads_only_noise_from_a_masked_update(he) -> None:  # type: ignore[no-untyped-def]
    cipher, _ = he
    truth = updates()["hospital-1"]
    masks = masks_for(NAMES)
    masked = cipher.encrypt(truth, mask=masks["hospital-1"].for_cohort(cohort(1)))
    zeros = cipher.encrypt(np.zeros_like(truth), mask=masks["hospital-1"].for_cohort(cohort(2)))
    seen = read_with_the_secret_key(cipher, masked)
    baseline = read_with_the_secret_key(cipher, zeros)
    # No correlation with the true update beyond chance, over all values.
    assert abs(np.corrcoef(seen, truth)[0, 1]) < CHANCE_CORRELATION
    # Nothing near the truth: the error is of the order of the noise, not of the values.
    assert np.median(np.abs(seen - truth)) > 100 * np.max(np.abs(truth))
    # Indistinguishable from what a masked upload of zeros decrypts to.
    assert stats.ks_2samp(seen, baseline).pvalue > 1e-4
    # ...while the same test tells the unmasked update apart at once (it can fail).
    plain = read_with_the_secret_key(cipher, cipher.encrypt(truth))
    assert stats.ks_2samp(plain, baseline).pvalue < 1e-10
    # The hospital's own decrypt refuses the upload rather than return noise as a model.
    with pytest.raises((ValueRangeError, BlobError)):
        cipher.decrypt(masked)


def test_the_masked_round_sums_to_the_plaintext_sum(he) -> None:  # type: ignore[no-untyped-def]
    cipher, aggregator = he
    payloads = updates(11)
    masks = masks_for(NAMES)
    blobs = [
        cipher.encrypt(payloads[name], mask=masks[name].for_cohort(cohort())) for name in NAMES
    ]
    assert all(len(blob) == len(cipher.encrypt(payloads[NAMES[0]])) for blob in blobs)
    total = cipher.decrypt(summed(aggregator, blobs))
    expected = np.sum([payloads[name] for name in NAMES], axis=0)
    tolerance = HEConfig().error_bound(4) if cipher.scheme == "ckks" else 4 * cipher.resolution  # type: ignore[attr-defined]
    assert np.max(np.abs(total - expected)) < tolerance


def test_a_sum_missing_one_masked_upload_is_noise(he) -> None:  # type: ignore[no-untyped-def]
    # Why a dropout after masking forces a re-mask: the dropped one's pairs stay in the sum.
    cipher, aggregator = he
    payloads = updates(13)
    masks = masks_for(NAMES)
    blobs = [
        cipher.encrypt(payloads[name], mask=masks[name].for_cohort(cohort())) for name in NAMES[:3]
    ]
    seen = read_with_the_secret_key(cipher, summed(aggregator, blobs))
    expected = np.sum([payloads[name] for name in NAMES[:3]], axis=0)
    assert abs(np.corrcoef(seen, expected)[0, 1]) < CHANCE_CORRELATION
