"""One digest that vouches for every aggregate of a run so far, in order.

A hospital that rebuilds its global model (it restarted, or the run ends at an earlier round
than the one it is at) replays the stored aggregates of rounds 1..r. The store is untrusted and
an announcement names only one aggregate by its SHA-256, so the coordinator also signs the chain
of all of them: ``c_0 = ""`` and ``c_k = sha256(f"{c_(k-1)}:{sha256 of aggregate k}")`` in hex.
The hospital hashes each aggregate it replays and keeps its model only if the chain it computed
is the one the coordinator signed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

#: The chain of no aggregate (before round 1 closed).
EMPTY_CHAIN: Final = ""


def extend_chain(chain: str, sha256: str) -> str:
    """The chain after one more aggregate, named by its SHA-256 (hex)."""
    return hashlib.sha256(f"{chain}:{sha256}".encode()).hexdigest()


def aggregate_chain(sha256s: Iterable[str]) -> str:
    """The chain of the aggregates of rounds 1, 2, ... in that order."""
    chain = EMPTY_CHAIN
    for sha256 in sha256s:
        chain = extend_chain(chain, sha256)
    return chain
