"""Pairwise masks: one hospital's upload decrypts to uniform noise, even with the HE secret key.

Every hospital holds the HE secret key, so HE alone does not hide one hospital's update from
another that obtains the blob. Before uploading, each participant ``i`` of a round's fixed
participant set (a ``Cohort``) adds to the first polynomial ``c0`` of every ciphertext, modulo
the ciphertext's prime ``q``::

    r_i = sum over peers j > i of PRG(s_ij)  -  sum over peers j < i of PRG(s_ij)   (mod q)

``s_ij`` is a 32-byte seed both ``i`` and ``j`` derive alone: X25519 between their masking keys
(issued at the key ceremony), then HKDF-SHA256 over the cohort (run, round, attempt, the sorted
participants) and the pair, so every attempt and every round gets fresh, unrelated masks. The PRG
is ChaCha20's keystream; 64-bit words cut to the bit length of ``q`` and rejected when ``>= q``
(no modulo bias), so each mask word is exactly uniform modulo ``q`` (up to ChaCha20's security).

Why ``c0`` modulo ``q``, for CKKS and BFV alike: decryption is linear, ``c0 + c1*s``, so a
uniform ``r`` on ``c0`` makes the whole decrypted polynomial uniform modulo ``q`` (one upload
decrypts to noise under either scheme), while the coordinator's ciphertext addition works
modulo ``q`` too, so the masks of a complete cohort cancel exactly in the sum: the aggregate is
bit for bit what it would be without masks. The upload keeps its size. The second polynomial is
left alone, so seeded ciphertexts (whose ``c1`` is a PRNG seed) stay possible. Masks over real
numbers would not hide exactly; masks modulo the plaintext modulus would need a second code path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Final, Protocol

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from common.errors import ConfigError, KeyBundleError
from common.fedavg import MIN_CONTRIBUTORS

_INFO: Final = b"hefl-pairwise-mask-v1\x00"
_NONCE: Final = bytes(16)  # every seed is used for one stream only
#: Seconds a fixed participant set has to mask, encrypt and upload (no training left to do).
DEFAULT_MASK_TIMEOUT: Final = 120.0
#: SEAL's primes are at most 60 bits, so two residues add without overflowing 64 bits.
MAX_MODULUS_BITS: Final = 62


@dataclass(frozen=True, kw_only=True)
class Cohort:
    """The participant set the coordinator fixed and signed for one attempt of one round."""

    run: str
    round: int
    attempt: int
    participants: tuple[str, ...]

    def __post_init__(self) -> None:
        names = tuple(self.participants)
        object.__setattr__(self, "participants", names)
        if list(names) != sorted(set(names)):
            raise ConfigError(f"a cohort lists distinct participants in order, got {names}")
        if len(names) < MIN_CONTRIBUTORS:
            raise ConfigError(
                f"a cohort needs at least {MIN_CONTRIBUTORS} participants, got {len(names)}: "
                "with 2, each would learn the other's update from the sum"
            )
        if self.attempt < 1 or self.round < 1:
            raise ConfigError(f"cohort round and attempt start at 1: {self}")

    def context(self) -> bytes:
        """Canonical bytes naming this cohort (what every seed of it is derived for)."""
        body = asdict(self)
        body["participants"] = list(self.participants)
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class Masker(Protocol):
    """The mask one participant adds: ``count`` words uniform modulo ``modulus``."""

    def words(self, count: int, modulus: int) -> np.ndarray: ...


def mask_stream(seed: bytes, count: int, modulus: int) -> np.ndarray:
    """``count`` uint64 words, each uniform in ``[0, modulus)``, from ChaCha20 keyed by ``seed``."""
    if len(seed) != 32:
        raise ConfigError(f"a mask seed is 32 bytes, got {len(seed)}")
    if not 2 <= modulus < 1 << MAX_MODULUS_BITS:
        raise ConfigError(f"mask modulus must be within 2..2^{MAX_MODULUS_BITS}, got {modulus}")
    bits = (modulus - 1).bit_length()
    keep = np.uint64((1 << bits) - 1)
    limit = np.uint64(modulus)
    stream = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    parts: list[np.ndarray] = []
    found = 0
    while found < count:
        # A word is kept with probability modulus / 2^bits (> 1/2): ask for what should do,
        # plus a margin. The words kept are the same whatever the batch sizes.
        want = (count - found) * (1 << bits) // modulus + 64
        raw = np.frombuffer(stream.update(bytes(8 * want)), dtype="<u8") & keep
        accepted = raw[raw < limit]
        parts.append(accepted)
        found += accepted.size
    return np.concatenate(parts)[:count].astype(np.uint64, copy=False)


def add_mod(a: np.ndarray, b: np.ndarray, modulus: int) -> np.ndarray:
    """``(a + b) mod modulus`` for residues below ``modulus`` (no overflow below 2^63)."""
    total = a + b
    total[total >= np.uint64(modulus)] -= np.uint64(modulus)
    return total


class CohortMask:
    """One participant's mask for one cohort: its pairwise streams, signed by peer order."""

    def __init__(self, me: str, seeds: Mapping[str, bytes]) -> None:
        self._me = me
        self._seeds = dict(seeds)

    def __repr__(self) -> str:
        return f"CohortMask({self._me!r}, peers={sorted(self._seeds)})"

    def words(self, count: int, modulus: int) -> np.ndarray:
        # The streams of higher-named peers are added, those of lower-named ones subtracted, so
        # every pair cancels. Residues are summed without reducing until 64 bits could overflow.
        fits = max(1, ((1 << 64) - 1) // modulus - 1)
        q = np.uint64(modulus)
        sums = {True: np.zeros(count, dtype=np.uint64), False: np.zeros(count, dtype=np.uint64)}
        held = {True: 0, False: 0}
        for peer, seed in sorted(self._seeds.items()):
            adds = peer > self._me
            if held[adds] >= fits:
                np.remainder(sums[adds], q, out=sums[adds])
                held[adds] = 1
            np.add(sums[adds], mask_stream(seed, count, modulus), out=sums[adds])
            held[adds] += 1
        plus, minus = (np.remainder(sums[side], q) for side in (True, False))
        return add_mod(plus, np.where(minus == 0, minus, q - minus), modulus)


class PairwiseMasks:
    """A hospital's masking key and every peer's public masking key (from ``trust.json``)."""

    def __init__(
        self, me: str, key: X25519PrivateKey, peers: Mapping[str, X25519PublicKey]
    ) -> None:
        self.me = me
        self._shared: dict[str, bytes] = {}
        for peer, public in peers.items():
            if peer == me:
                continue
            try:
                self._shared[peer] = key.exchange(public)
            except ValueError as exc:  # a low-order point: no secret to share
                raise KeyBundleError(f"the masking key of {peer} is unusable: {exc}") from exc

    def __repr__(self) -> str:
        return f"PairwiseMasks({self.me!r}, peers={len(self._shared)})"

    def for_cohort(self, cohort: Cohort) -> CohortMask:
        """The mask of this hospital in ``cohort``; every other participant must be known."""
        if self.me not in cohort.participants:
            raise ConfigError(f"{self.me} is not a participant of {cohort}")
        unknown = [p for p in cohort.participants if p != self.me and p not in self._shared]
        if unknown:
            raise KeyBundleError(
                f"no masking key for {', '.join(unknown)} in the trust file: re-issue the "
                "identities (hefl keygen) so every hospital has one"
            )
        context = cohort.context()
        seeds = {
            peer: _pair_seed(self._shared[peer], context, self.me, peer)
            for peer in cohort.participants
            if peer != self.me
        }
        return CohortMask(self.me, seeds)


def _pair_seed(shared: bytes, context: bytes, a: str, b: str) -> bytes:
    pair = json.dumps(sorted((a, b))).encode()
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO + context + pair)
    return hkdf.derive(shared)
