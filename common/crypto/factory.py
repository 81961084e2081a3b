"""Build the cipher or aggregator a role needs from its key bundle directory."""

from __future__ import annotations

import os

from common.crypto.aggregator import Aggregator
from common.crypto.cipher import Cipher
from common.crypto.config import BFV, DEFAULT_MAX_HOSPITALS
from common.crypto.he_aggregator import HeAggregator
from common.crypto.he_cipher import BfvCipher, CkksCipher
from common.crypto.keys import load_coordinator_bundle, load_hospital_bundle
from common.crypto.plain_aggregator import PlainAggregator
from common.crypto.plain_cipher import PlainCipher


def open_cipher(hospital_bundle_dir: str | os.PathLike[str]) -> Cipher:
    """Cipher of the bundle's scheme, from a verified hospital bundle."""
    bundle = load_hospital_bundle(hospital_bundle_dir)
    if bundle.manifest.config.scheme == BFV:
        return BfvCipher.from_bundle(bundle)
    return CkksCipher.from_bundle(bundle)


def open_aggregator(coordinator_bundle_dir: str | os.PathLike[str]) -> Aggregator:
    """Aggregator from a verified coordinator bundle; refuses any bundle with a secret key."""
    return HeAggregator(load_coordinator_bundle(coordinator_bundle_dir))


def plain_cipher(*, max_hospitals: int = DEFAULT_MAX_HOSPITALS) -> Cipher:
    """Plaintext cipher for the unencrypted FedAvg comparison."""
    return PlainCipher(max_hospitals=max_hospitals)


def plain_aggregator(*, max_hospitals: int = DEFAULT_MAX_HOSPITALS) -> Aggregator:
    """Plaintext aggregator for the unencrypted FedAvg comparison."""
    return PlainAggregator(max_hospitals=max_hospitals)
