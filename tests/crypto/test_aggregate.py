"""Coordinator-side aggregation: correct sums, atomic rejection, limits, and no way to decrypt."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from common.crypto import (
    Aggregator,
    BfvCipher,
    ChunkSum,
    Cipher,
    HeAggregator,
    HEConfig,
    PlainAggregator,
    RunningSum,
    decode_blob,
    encode_blob,
    open_aggregator,
    open_cipher,
    payload_digest,
    plain_aggregator,
    plain_cipher,
    run_key_ceremony,
    seal_layout,
)
from common.crypto.blob import FORMAT_VERSION, BlobHeader
from common.crypto.plain_aggregator import Float64Chunks
from common.crypto.seal import SealPublic
from common.errors import BlobError, CryptoError, ValueRangeError

N = 4096
LENGTH = N + 17  # two chunks, the second mostly padding
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Setup:
    cipher: Cipher
    aggregator: Aggregator
    hospital_dir: Path
    coordinator_dir: Path


def make_setup(tmp: Path, scheme: str, **kwargs: object) -> Setup:
    hospital, coordinator = tmp / "hospital", tmp / "coordinator"
    if scheme == "plain":
        return Setup(plain_cipher(), plain_aggregator(), hospital, coordinator)
    run_key_ceremony(HEConfig(scheme=scheme, **kwargs), hospital, coordinator)  # type: ignore[arg-type]
    return Setup(open_cipher(hospital), open_aggregator(coordinator), hospital, coordinator)


@pytest.fixture(scope="module", params=["ckks", "bfv", "plain"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return make_setup(tmp_path_factory.mktemp(request.param), request.param)


def inputs(count: int, seed: int = 0, length: int = LENGTH) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-10, 10, length) for _ in range(count)]


def tolerance(setup: Setup, summands: int) -> float:
    """CKKS: the configuration's stated error bound. BFV: K times its resolution 2**-f. Plain:
    float rounding."""
    if isinstance(setup.cipher, BfvCipher):
        return summands * setup.cipher.resolution
    return HEConfig().error_bound(summands) if setup.cipher.scheme == "ckks" else 1e-12


def header_of(blob: bytes) -> BlobHeader:
    return BlobHeader.from_json(blob[14 : 14 + int.from_bytes(blob[10:14], "little")])


def reencode(blob: bytes, setup: Setup, **changes: object) -> bytes:
    """Rewrite header fields of a valid blob, keeping its framing and digest consistent."""
    spec = setup.cipher.spec  # type: ignore[attr-defined]
    header, chunks = decode_blob(
        blob,
        expect_scheme=spec.scheme,
        expect_param_digest=spec.param_digest,
        expect_key_id=spec.key_id,
    )
    new_chunks = changes.pop("chunks", chunks)
    assert isinstance(new_chunks, list)
    lengths = tuple(len(chunk) for chunk in new_chunks)
    header = replace(
        header, payload_sha256=payload_digest(new_chunks), chunk_bytes=lengths, **changes
    )  # type: ignore[arg-type]
    return encode_blob(header, new_chunks)


@pytest.mark.parametrize("count", [2, 10, 100])
def test_the_sum_of_encrypted_vectors_equals_the_plaintext_sum(setup: Setup, count: int) -> None:
    values = inputs(count, seed=count)
    running = setup.aggregator.new_sum()
    for vector in values:
        running.add(setup.cipher.encrypt(vector))
    blob = running.to_blob()
    total = setup.cipher.decrypt(blob)
    assert (running.count, running.summands) == (count, count)
    assert header_of(blob).kind == "aggregate"
    assert header_of(blob).summands == count
    assert np.abs(total - np.sum(values, axis=0)).max() <= tolerance(setup, count)


def corruptions(setup: Setup, tmp: Path) -> dict[str, bytes]:
    """One bad blob per way a blob can be wrong."""
    good = setup.cipher.encrypt(inputs(1, seed=99)[0])
    flipped = bytearray(good)
    flipped[-100] ^= 0x10
    version = bytearray(good)
    version[8:10] = (FORMAT_VERSION + 1).to_bytes(2, "little")
    spec = setup.cipher.spec  # type: ignore[attr-defined]
    _, chunks = decode_blob(
        good,
        expect_scheme=spec.scheme,
        expect_param_digest=spec.param_digest,
        expect_key_id=spec.key_id,
    )
    out_of_range = bytearray(chunks[0])
    out_of_range[:8] = b"\xff" * 8  # the first coefficient: all ones, above its prime
    bad = {
        "truncated": good[: len(good) // 2],
        "wrong_version": bytes(version),
        "flipped_byte": bytes(flipped),
        "other_length": setup.cipher.encrypt(np.ones(7)),
    }
    ones = np.ones(LENGTH)
    if spec.scheme == "plain":
        bad["foreign_scheme"] = make_setup(tmp, "ckks").cipher.encrypt(ones)
    else:
        bad["foreign_scheme"] = plain_cipher().encrypt(ones)
        bad["foreign_key"] = make_setup(tmp / "other", spec.scheme).cipher.encrypt(ones)
        broken = [bytes(out_of_range), *chunks[1:]]
        bad["coefficient_not_below_q"] = reencode(good, setup, chunks=broken)
        # Seeded chunks: a seed no PRNG of SEAL's expands, and a full ciphertext as an update.
        for name, prng in (("unknown_prng", 0), ("prng_out_of_range", 9)):
            seed = bytearray(chunks[0])
            seed[-65] = prng
            bad[name] = reencode(good, setup, chunks=[bytes(seed), *chunks[1:]])
        full = setup.cipher.encrypt(inputs(1, seed=99)[0], kind="full")
        _, full_chunks = decode_blob(
            full,
            expect_scheme=spec.scheme,
            expect_param_digest=spec.param_digest,
            expect_key_id=spec.key_id,
        )
        bad["full_chunks_as_an_update"] = reencode(good, setup, chunks=full_chunks)
    return bad


@pytest.mark.parametrize("scheme", ["ckks", "bfv"])
def test_seeded_updates_load_without_the_secret_key_and_sum_with_full_blobs(
    scheme: str, tmp_path: Path
) -> None:
    he = make_setup(tmp_path, scheme)
    a, b, c = inputs(3, seed=7)
    seeded = he.cipher.encrypt(a)  # an update: secret-key encryption, seeded
    full = he.cipher.encrypt(b, kind="weight")  # any other kind: public-key encryption, full
    small, big = header_of(seeded).chunk_bytes[0], header_of(full).chunk_bytes[0]
    assert small == -(-N * header_of(seeded).coeff_bits // 8) + 65
    assert big == -(-2 * N * header_of(full).coeff_bits // 8)
    # The coordinator's material: a context and a public key (its bundle refuses a secret key).
    coordinator = open_aggregator(he.coordinator_dir)
    running = coordinator.new_sum()
    for blob in (seeded, full, he.cipher.encrypt(c)):
        running.add(blob)
    aggregate = running.to_blob()
    assert header_of(aggregate).chunk_bytes == (big, big)  # a sum is a full ciphertext
    total = he.cipher.decrypt(aggregate)
    # A public-key encryption is noisier than a seeded one: a margin of 8 for it.
    assert np.abs(total - (a + b + c)).max() <= 8 * tolerance(he, 3)


@pytest.mark.parametrize("scheme", ["ckks", "bfv"])
def test_max_hospitals_uploads_at_the_value_bound_sum_within_the_stated_error_bound(
    scheme: str, tmp_path: Path
) -> None:
    config = HEConfig(scheme=scheme)
    he = make_setup(tmp_path, scheme)
    bound, hospitals = he.cipher.value_bound, config.max_hospitals
    assert bound == config.value_bound
    # Every slot at the bound: the sums reach +-max_hospitals * bound, the largest they may.
    signs = np.where(np.random.default_rng(3).random(N) < 0.5, -1.0, 1.0)
    running = he.aggregator.new_sum()
    for _ in range(hospitals):
        running.add(he.cipher.encrypt(bound * signs))
    total = he.cipher.decrypt(running.to_blob())
    error = np.abs(total - hospitals * bound * signs).max()
    assert error <= config.error_bound(hospitals)
    if scheme == "ckks":  # the bound is a few times what a sum of fresh noise reaches
        assert config.error_bound(hospitals) / 10 < error


def test_a_bad_blob_is_rejected_and_leaves_the_sum_unchanged(setup: Setup, tmp_path: Path) -> None:
    first, second = inputs(2, seed=5)
    for name, blob in corruptions(setup, tmp_path).items():
        running = setup.aggregator.new_sum()
        running.add(setup.cipher.encrypt(first))
        with pytest.raises(BlobError):
            running.add(blob)
        assert running.count == 1, name
        running.add(setup.cipher.encrypt(second))
        total = setup.cipher.decrypt(running.to_blob())
        assert np.abs(total - (first + second)).max() <= tolerance(setup, 2), name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("unknown_prng", "PRNG type 0"),
        ("prng_out_of_range", "PRNG type 9"),
        ("full_chunks_as_an_update", "update blob chunk 0 is .* bytes, expected"),
    ],
)
def test_a_forged_seed_or_a_full_update_is_refused_by_name(
    name: str, message: str, tmp_path: Path
) -> None:
    he = make_setup(tmp_path, "ckks")
    with pytest.raises(BlobError, match=message):
        he.aggregator.new_sum().add(corruptions(he, tmp_path)[name])


def test_a_bad_first_blob_leaves_the_sum_empty(setup: Setup) -> None:
    running = setup.aggregator.new_sum()
    with pytest.raises(BlobError):
        running.add(b"HEFLBLOB")
    assert running.count == 0
    with pytest.raises(CryptoError, match="empty"):
        running.to_blob()


def test_more_than_max_hospitals_is_refused(tmp_path: Path) -> None:
    limited = make_setup(tmp_path, "ckks", max_hospitals=3)
    values = inputs(4, seed=3)
    running = limited.aggregator.new_sum()
    for vector in values[:3]:
        running.add(limited.cipher.encrypt(vector))
    with pytest.raises(ValueRangeError, match="max_hospitals 3"):
        running.add(limited.cipher.encrypt(values[3]))
    total = limited.cipher.decrypt(running.to_blob())
    assert np.abs(total - np.sum(values[:3], axis=0)).max() <= HEConfig().error_bound(3)


def test_an_aggregate_can_be_added_again_and_counts_its_summands(setup: Setup) -> None:
    values = inputs(3, seed=8)
    inner = setup.aggregator.new_sum()
    for vector in values[:2]:
        inner.add(setup.cipher.encrypt(vector))
    outer = setup.aggregator.new_sum()
    outer.add(inner.to_blob())
    outer.add(setup.cipher.encrypt(values[2]))
    assert (outer.count, outer.summands) == (2, 3)
    total = setup.cipher.decrypt(outer.to_blob())
    assert np.abs(total - np.sum(values, axis=0)).max() <= tolerance(setup, 3)


@pytest.mark.parametrize("scheme", ["ckks", "bfv"])
def test_garbage_ciphertexts_are_caught_at_decryption(scheme: str, tmp_path: Path) -> None:
    """Coefficients below q are valid to SEAL; the hospital's checks catch the garbage.

    BFV notices the exhausted noise budget (BlobError), CKKS the out-of-range sum.
    """
    he = make_setup(tmp_path, scheme)
    good = he.cipher.encrypt(np.ones(10))
    header = header_of(good)
    rng = np.random.default_rng(1)
    modulus = 2 ** (header.coeff_bits - 1)  # below any prime of that width
    coeffs = rng.integers(0, modulus, N, dtype=np.uint64)
    seed = good[-65:]  # a seeded update: garbage first polynomial, a valid seed
    chunk = seal_layout.pack(coeffs, header.coeff_bits) + seed
    forged = reencode(good, he, chunks=[chunk])
    running = he.aggregator.new_sum()
    running.add(forged)
    with pytest.raises((ValueRangeError, BlobError), match="corrupted"):
        he.cipher.decrypt(running.to_blob())


def test_a_bfv_sum_that_wraps_is_an_error_not_a_value(tmp_path: Path) -> None:
    """300 inputs at the bound exceed t/2; forged headers let them past the aggregator."""
    bfv = make_setup(tmp_path, "bfv")
    at_bound = np.full(5, bfv.cipher.value_bound)
    hundred = bfv.aggregator.new_sum()
    blob = bfv.cipher.encrypt(at_bound)
    for _ in range(100):
        hundred.add(blob)
    lying = reencode(hundred.to_blob(), bfv, summands=1)
    wrapped = bfv.aggregator.new_sum()
    for _ in range(3):
        wrapped.add(lying)
    with pytest.raises(ValueRangeError, match="overflowed"):
        bfv.cipher.decrypt(wrapped.to_blob())


@pytest.mark.parametrize(
    "kind", [HeAggregator, ChunkSum, SealPublic, PlainAggregator, Float64Chunks]
)
def test_the_coordinator_side_types_have_no_decrypt(kind: type) -> None:
    names = [name.lower() for name in dir(kind)]
    assert not [name for name in names if "decrypt" in name or "secret" in name]


def test_the_aggregator_protocols_have_no_decrypt() -> None:
    for protocol in (Aggregator, RunningSum):
        assert not [name for name in dir(protocol) if "decrypt" in name.lower()]


ATTACK = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np
    from common.crypto import open_aggregator

    coordinator_dir, blob_path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    aggregator = open_aggregator(coordinator_dir)
    running = aggregator.new_sum()
    running.add(Path(blob_path).read_bytes())
    # Reach past the API to the raw Pyfhel object and ciphertext the coordinator holds.
    he = aggregator._seal._he
    ciphertext = running._totals[0]._ctxt
    if mode == "control":  # the same attack, given the hospital's secret key
        he.from_bytes_secret_key(Path(sys.argv[4]).read_bytes())
    print("attempting decryption", flush=True)
    slots = np.asarray(he.decryptComplex(ciphertext))
    print(" ".join(f"{v:.2f}" for v in np.column_stack([slots.real, slots.imag]).ravel()[:8]))
    """
)


def run_attack(ckks: Setup, blob: Path, mode: str) -> subprocess.CompletedProcess[str]:
    args = [str(ckks.coordinator_dir), str(blob), mode, str(ckks.hospital_dir / "secret_key.seal")]
    return subprocess.run(
        [sys.executable, "-c", ATTACK, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_coordinator_material_cannot_decrypt_an_aggregate(tmp_path: Path) -> None:
    ckks = make_setup(tmp_path, "ckks")
    values = [np.array([12.34, 23.45, 34.56, 45.67, 56.78, 67.89, 7.12, 8.23]), np.full(8, 10.0)]
    running = ckks.aggregator.new_sum()
    for vector in values:
        running.add(ckks.cipher.encrypt(vector))
    blob = tmp_path / "aggregate.blob"
    blob.write_bytes(running.to_blob())
    expected = [f"{v:.2f}" for v in values[0] + values[1]]  # 22.34, 33.45, ...

    attack = run_attack(ckks, blob, "coordinator")
    output = attack.stdout + attack.stderr
    assert "attempting decryption" in attack.stdout, output  # it got as far as decrypting
    assert attack.returncode != 0, output  # SIGSEGV (-11) in this Pyfhel build, or an error
    assert not [value for value in expected if value in output], output

    control = run_attack(ckks, blob, "control")
    assert control.returncode == 0, control.stderr
    assert all(value in control.stdout for value in expected), control.stdout


def test_add_time_for_a_model_upload_is_measured(tmp_path: Path) -> None:
    ckks = make_setup(tmp_path, "ckks")
    blob = ckks.cipher.encrypt(inputs(1, length=41_474)[0])
    running = ckks.aggregator.new_sum()
    started = time.perf_counter()
    for _ in range(10):
        running.add(blob)
    per_add = (time.perf_counter() - started) / 10
    print(f"ckks add of 41474 values: {per_add * 1e3:.2f} ms")
    assert per_add < 1.0
