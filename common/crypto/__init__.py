"""Homomorphic encryption of model updates (CKKS default, BFV, and a plain comparison scheme).

Hospitals hold a ``Cipher`` (encrypt, decrypt); the coordinator holds an ``Aggregator`` built from
public material only, which adds blobs into a ``RunningSum`` and has no way to decrypt. Blobs are
self-describing (``BlobHeader``) and are checked against the key bundle on every use.
"""

from common.crypto.aggregator import Aggregator, ChunkSum, RunningSum
from common.crypto.blob import (
    FORMAT_VERSION,
    UNBOUND,
    Binding,
    BlobHeader,
    decode_blob,
    encode_blob,
    payload_digest,
)
from common.crypto.cipher import AGGREGATE, UPDATE, Cipher
from common.crypto.config import (
    BFV,
    CKKS,
    CKKS_HEADROOM_BITS,
    CKKS_PRIME_BITS,
    CKKS_SPECIAL_PRIME_BITS,
    DEFAULT_CKKS_PRIME_BITS,
    HEConfig,
    ckks_parameters,
)
from common.crypto.factory import open_aggregator, open_cipher, plain_aggregator, plain_cipher
from common.crypto.he_aggregator import HeAggregator
from common.crypto.he_cipher import BfvCipher, CkksCipher
from common.crypto.keys import (
    Ceremony,
    CoordinatorBundle,
    HospitalBundle,
    Manifest,
    load_coordinator_bundle,
    load_hospital_bundle,
    run_key_ceremony,
)
from common.crypto.plain_aggregator import PlainAggregator
from common.crypto.plain_cipher import PlainCipher
from common.crypto.spec import PLAIN

__all__ = [
    "AGGREGATE",
    "BFV",
    "CKKS",
    "CKKS_HEADROOM_BITS",
    "CKKS_PRIME_BITS",
    "CKKS_SPECIAL_PRIME_BITS",
    "DEFAULT_CKKS_PRIME_BITS",
    "FORMAT_VERSION",
    "PLAIN",
    "UNBOUND",
    "UPDATE",
    "Aggregator",
    "BfvCipher",
    "Binding",
    "BlobHeader",
    "Ceremony",
    "ChunkSum",
    "Cipher",
    "CkksCipher",
    "CoordinatorBundle",
    "HEConfig",
    "HeAggregator",
    "HospitalBundle",
    "Manifest",
    "PlainAggregator",
    "PlainCipher",
    "RunningSum",
    "ckks_parameters",
    "decode_blob",
    "encode_blob",
    "load_coordinator_bundle",
    "load_hospital_bundle",
    "open_aggregator",
    "open_cipher",
    "payload_digest",
    "plain_aggregator",
    "plain_cipher",
    "run_key_ceremony",
]
