"""The patched Pyfhel (``tools/build_pyfhel.py``) encrypts with the secret key, SEAL's seeded form.

A hospital holds the secret key, so ``Pyfhel.encrypt_symmetric_bytes`` lets it upload a ciphertext
whose second polynomial is only the 64-byte seed of the PRNG that draws it. The coordinator, with
the context and public key alone, loads it (SEAL expands the seed), adds it to other ciphertexts
and returns the sum, which the hospital decrypts. These tests drive Pyfhel directly: they check
the wheel this project builds, beneath ``common.crypto.seal``.
"""

from __future__ import annotations

import importlib.util
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from Pyfhel import PyCtxt, Pyfhel, PyPtxt

ROOT = Path(__file__).resolve().parents[2]
N = 4096
SEAL_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, major, minor, compression, -, size
MEMBERS = struct.Struct("<32s?QQQdQ")  # parms_id, ntt, polys, degree, primes, scale, correction
SEED_INFO_BYTES = SEAL_HEADER.size + 1 + 64  # UniformRandomGeneratorInfo: header, type, seed
BLAKE2XB = 1  # seal::prng_type::blake2xb, SEAL's default PRNG
# CKKS error bounds, in encoding steps (1 / scale), at n = 4096. Measured over 10 240 slots: at most
# about 560 for a seeded ciphertext (noise e only), 4 000 to 5 800 for a public-key one (u*e terms;
# SEAL's own path, 1.7e-4 at scale 2**25), so 2**12 and 2**14 leave a wide margin.
SEEDED_NOISE = 2**12
SUM_NOISE = 2**14


@dataclass(frozen=True)
class Scheme:
    """One parameter set, and how many data levels its plaintexts are switched down."""

    name: str
    qi_sizes: tuple[int, ...]
    scale_bits: int = 0
    t_bits: int = 0

    @property
    def ckks(self) -> bool:
        return self.name == "ckks"

    @property
    def switches(self) -> int:
        """CKKS: down to the last data level (one prime). BFV always encrypts at the first."""
        return len(self.qi_sizes) - 2 if self.ckks else 0


SCHEMES = [
    Scheme("ckks", (36, 53), scale_bits=20),  # the project's default: one data level
    Scheme("ckks", (56, 53), scale_bits=40),  # the default before seeded uploads
    Scheme("ckks", (36, 36, 37), scale_bits=25),  # two data levels: switched down one
    Scheme("bfv", (36, 36, 37), t_bits=20),  # SEAL's BFV default chain for n = 4096
]


@dataclass(frozen=True)
class Keys:
    scheme: Scheme
    context: bytes
    public_key: bytes
    secret_key: bytes


def generate(scheme: Scheme) -> Pyfhel:
    """A fresh context and key pair."""
    he = Pyfhel()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*do not support rescaling.*")
        if scheme.ckks:
            sizes = list(scheme.qi_sizes)
            he.contextGen(scheme="ckks", n=N, scale_bits=scheme.scale_bits, qi_sizes=sizes)
        else:
            he.contextGen(scheme="bfv", n=N, t_bits=scheme.t_bits, qi_sizes=list(scheme.qi_sizes))
    he.keyGen()
    return he


@pytest.fixture(scope="module", params=SCHEMES, ids=lambda s: f"{s.name}-{len(s.qi_sizes)}primes")
def keys(request: pytest.FixtureRequest) -> Keys:
    he = generate(request.param)
    return Keys(
        request.param,
        he.to_bytes_context("none"),
        he.to_bytes_public_key("none"),
        he.to_bytes_secret_key("none"),
    )


def hospital(keys: Keys) -> Pyfhel:
    """Context, public and secret key, loaded from bytes as a hospital does."""
    he = Pyfhel()
    he.from_bytes_context(keys.context)
    he.from_bytes_public_key(keys.public_key)
    he.from_bytes_secret_key(keys.secret_key)
    return he


def coordinator(keys: Keys) -> Pyfhel:
    """Context and public key only: it cannot decrypt."""
    he = Pyfhel()
    he.from_bytes_context(keys.context)
    he.from_bytes_public_key(keys.public_key)
    return he


def values(scheme: Scheme, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if scheme.ckks:
        return rng.uniform(-8.0, 8.0, N // 2)
    return rng.integers(-1000, 1000, N, dtype=np.int64)


def encode(he: Pyfhel, scheme: Scheme, data: np.ndarray) -> PyPtxt:
    """A plaintext at the level the project sends ciphertexts at (CKKS: the last one)."""
    if not scheme.ckks:
        return he.encodeInt(data)
    ptxt = he.encodeFrac(data)
    for _ in range(scheme.switches):
        he.mod_switch_to_next(ptxt)
    return ptxt


def seeded(he: Pyfhel, scheme: Scheme, data: np.ndarray) -> bytes:
    return he.encrypt_symmetric_bytes(encode(he, scheme, data))


def full(he: Pyfhel, scheme: Scheme, data: np.ndarray) -> bytes:
    """Today's upload: public-key encryption, switched down, uncompressed."""
    if not scheme.ckks:
        return he.encryptInt(data).to_bytes("none")
    ctxt = he.encryptFrac(data)
    for _ in range(scheme.switches):
        he.mod_switch_to_next(ctxt)
    return ctxt.to_bytes("none")


def decrypt(he: Pyfhel, scheme: Scheme, ctxt: PyCtxt) -> np.ndarray:
    if scheme.ckks:
        return np.asarray(he.decryptFrac(ctxt))[: N // 2]
    return np.asarray(he.decryptInt(ctxt))


def close(scheme: Scheme, got: np.ndarray, want: np.ndarray, *, steps: int = SEEDED_NOISE) -> bool:
    """CKKS: within ``steps`` encoding steps (``1 / scale``) of the values; BFV: exact."""
    if not scheme.ckks:
        return bool(np.array_equal(got, want))
    return bool(np.max(np.abs(got - want)) <= steps * 2.0**-scheme.scale_bits)


@dataclass(frozen=True)
class SeededLayout:
    polys: int
    degree: int
    primes: int
    coeffs: np.ndarray
    prng_type: int
    seed: bytes


def read_seeded(data: bytes) -> SeededLayout:
    """Walk SEAL's bytes: header, members, the first polynomial, then the PRNG info."""
    magic, header_size, major, minor, compression, _, size = SEAL_HEADER.unpack_from(data, 0)
    assert (magic, header_size, major, minor, compression) == (0xA15E, 16, 4, 1, 0)
    assert size == len(data)
    offset = SEAL_HEADER.size
    _, _, polys, degree, primes, _, _ = MEMBERS.unpack_from(data, offset)
    offset += MEMBERS.size
    *_, compression, _, array_bytes = SEAL_HEADER.unpack_from(data, offset)
    offset += SEAL_HEADER.size
    (count,) = struct.unpack_from("<Q", data, offset)
    offset += 8
    assert compression == 0
    assert array_bytes == SEAL_HEADER.size + 8 + 8 * count
    coeffs = np.frombuffer(data, dtype="<u8", count=count, offset=offset)
    offset += 8 * count
    magic, *_, compression, _, info_bytes = SEAL_HEADER.unpack_from(data, offset)
    assert (magic, compression, info_bytes) == (0xA15E, 0, SEED_INFO_BYTES)
    offset += SEAL_HEADER.size
    prng_type, seed = data[offset], data[offset + 1 : offset + 65]
    assert offset + 65 == len(data)
    return SeededLayout(polys, degree, primes, coeffs, prng_type, seed)


def test_seeded_bytes_are_one_polynomial_and_a_64_byte_seed(keys: Keys) -> None:
    he = hospital(keys)
    data = values(keys.scheme, 1)
    small, big = seeded(he, keys.scheme, data), full(he, keys.scheme, data)
    layout = read_seeded(small)
    level_primes = 1 if keys.scheme.ckks else len(keys.scheme.qi_sizes) - 1
    assert (layout.polys, layout.degree, layout.primes) == (2, N, level_primes)
    assert layout.coeffs.size == N * level_primes  # only c0: c1 is the seed
    assert layout.prng_type == BLAKE2XB
    assert len(set(layout.seed)) > 16  # 64 random bytes, not a constant
    # Same prefix as a full ciphertext at that level, minus c1, plus the PRNG info.
    assert len(small) == len(big) - 8 * N * level_primes + SEED_INFO_BYTES
    assert len(small) / len(big) < 0.51
    assert small[:6] == big[:6]  # magic, header size, SEAL 4.1, no compression
    assert small[16:48] == big[16:48]  # the same parms_id: the same level


def test_coordinator_adds_seeded_and_full_ciphertexts_that_the_hospital_decrypts(
    keys: Keys,
) -> None:
    he = hospital(keys)
    a, b, c = (values(keys.scheme, seed) for seed in (2, 3, 4))
    uploads = [seeded(he, keys.scheme, a), full(he, keys.scheme, b), seeded(he, keys.scheme, c)]

    server = coordinator(keys)
    assert server.is_secret_key_empty()
    total, *others = (PyCtxt(pyfhel=server, bytestring=upload) for upload in uploads)
    for other in others:
        server.add(total, other, in_new_ctxt=False)
    summed = total.to_bytes("none")

    got = decrypt(he, keys.scheme, PyCtxt(pyfhel=he, bytestring=summed))
    assert close(keys.scheme, got, a + b + c, steps=SUM_NOISE)
    if not keys.scheme.ckks:
        assert he.noise_level(PyCtxt(pyfhel=he, bytestring=summed)) > 0


def test_each_encryption_draws_a_fresh_seed(keys: Keys) -> None:
    he = hospital(keys)
    data = values(keys.scheme, 5)
    first, second = (read_seeded(seeded(he, keys.scheme, data)) for _ in range(2))
    assert first.seed != second.seed
    assert not np.array_equal(first.coeffs, second.coeffs)


def test_the_seed_determines_the_second_polynomial(keys: Keys) -> None:
    he, server = hospital(keys), coordinator(keys)
    data = values(keys.scheme, 6)
    good = seeded(he, keys.scheme, data)
    # Both sides expand the seed into the same c1, behind the c0 that was sent.
    expanded = PyCtxt(pyfhel=server, bytestring=good).to_bytes("none")
    assert expanded == PyCtxt(pyfhel=he, bytestring=good).to_bytes("none")
    c0 = read_seeded(good).coeffs
    assert expanded[-16 * c0.size : -8 * c0.size] == c0.tobytes()
    assert close(keys.scheme, decrypt(he, keys.scheme, PyCtxt(pyfhel=he, bytestring=good)), data)

    bad = bytearray(good)
    bad[-64 + 10] ^= 0x01  # one bit of the seed (the last 64 bytes)
    garbled = decrypt(he, keys.scheme, PyCtxt(pyfhel=server, bytestring=bytes(bad)))
    if keys.scheme.ckks:
        assert np.median(np.abs(garbled - data)) > 1e3  # noise, not values
    else:
        assert np.mean(garbled == data) < 0.01


def test_symmetric_encryption_works_whatever_order_the_keys_were_loaded_in(keys: Keys) -> None:
    he = Pyfhel()
    he.from_bytes_context(keys.context)
    he.from_bytes_secret_key(keys.secret_key)  # before the public key, which resets the encryptor
    he.from_bytes_public_key(keys.public_key)
    data = values(keys.scheme, 7)
    ctxt = PyCtxt(pyfhel=he, bytestring=seeded(he, keys.scheme, data))
    assert close(keys.scheme, decrypt(he, keys.scheme, ctxt), data)


def test_symmetric_encryption_works_right_after_key_generation() -> None:
    scheme = SCHEMES[0]
    he = generate(scheme)
    data = values(scheme, 8)
    got = decrypt(he, scheme, PyCtxt(pyfhel=he, bytestring=seeded(he, scheme, data)))
    assert close(scheme, got, data)


def test_without_a_secret_key_encryption_raises(keys: Keys) -> None:
    server = coordinator(keys)
    ptxt = encode(server, keys.scheme, values(keys.scheme, 8))
    with pytest.raises(RuntimeError, match="Secret Key not initialized"):
        server.encrypt_symmetric_bytes(ptxt)
    with pytest.raises(TypeError):
        server.encrypt_symmetric_bytes(None)


# ------------------------------------------------------------------------------ the build script


def build_script() -> ModuleType:
    """``tools/build_pyfhel.py`` is a script, not a package: load it by path."""
    spec = importlib.util.spec_from_file_location(
        "build_pyfhel", ROOT / "tools" / "build_pyfhel.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_patch_id_changes_with_any_replacement_text_or_cmake_option() -> None:
    script = build_script()
    edits = list(script.SOURCE_EDITS)
    assert script.patch_id(script.CMAKE_OVERRIDES, edits) == script.PATCH_ID
    seen = {script.PATCH_ID}
    for index, edit in enumerate(edits):
        changed = [*edits]
        changed[index] = edit._replace(text=edit.text + " ")
        seen.add(script.patch_id(script.CMAKE_OVERRIDES, changed))
    seen.add(script.patch_id({**script.CMAKE_OVERRIDES, "SEAL_USE_ZSTD": "ON"}, edits))
    assert len(seen) == len(edits) + 2


def test_source_edits_replace_each_anchor_once_and_stop_when_one_is_missing(
    tmp_path: Path,
) -> None:
    script = build_script()
    edits = script.SOURCE_EDITS
    for edit in edits:
        path = tmp_path / edit.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"before\n{edit.anchor}after\n")
    script.apply_source_edits(tmp_path, edits)
    for edit in edits:
        assert (tmp_path / edit.path).read_text() == f"before\n{edit.text}after\n"

    anchor = edits[0].anchor
    (tmp_path / edits[0].path).write_text("Pyfhel 3.6 moved things\n")
    with pytest.raises(SystemExit, match="found it 0 times"):
        script.apply_source_edits(tmp_path, edits)
    (tmp_path / edits[0].path).write_text(anchor + anchor)
    with pytest.raises(SystemExit, match="found it 2 times"):
        script.apply_source_edits(tmp_path, edits)
