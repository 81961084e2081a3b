"""Which private keys a set of files really holds, block by block, against ``trust.json``.

The container tests ask what a container or a Kubernetes Secret hands a participant. hefl's own
loader (``common.protocol.signing.load_identity``) accepts an identity file of one Ed25519
signing key and, a hospital's, one X25519 masking key; these helpers do not use it. They read
every PEM private-key block of every file on their own, so a file holding a second, a foreign or
an unexpected kind of key shows it, and they compare each key's public half with the public keys
the ceremony's ``trust.json`` lists for each participant.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

SIGNING: Final = "ed25519"  # trust.json's field of the signing key
MASKING: Final = "x25519"  # trust.json's field of a hospital's masking key
_PRIVATE_BLOCK: Final = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----.+?-----END \1-----", re.DOTALL
)
_MARKER: Final = b"PRIVATE KEY-----"


@dataclass(frozen=True, order=True)
class FoundKey:
    """One private key: where it is, its algorithm and its public half (base64 of the raw bytes,
    as ``trust.json`` writes it; the class name of any other kind of key)."""

    where: str
    algorithm: str
    public: str


def _raw(public: Ed25519PublicKey | X25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def keys_in(where: str, data: bytes) -> list[FoundKey]:
    """Every PEM private key in ``data`` (the content of the file named ``where``)."""
    if _MARKER not in data:
        return []
    found = []
    for block in _PRIVATE_BLOCK.finditer(data):
        key = serialization.load_pem_private_key(block.group(0), password=None)
        if isinstance(key, Ed25519PrivateKey):
            found.append(FoundKey(where, SIGNING, _raw(key.public_key())))
        elif isinstance(key, X25519PrivateKey):
            found.append(FoundKey(where, MASKING, _raw(key.public_key())))
        else:
            found.append(FoundKey(where, type(key).__name__, ""))
    return found


def keys_in_files(files: Iterable[tuple[str, Path]]) -> list[FoundKey]:
    """Every PEM private key in the given files (``(name to report, path)``), sorted."""
    return sorted(key for where, path in files for key in keys_in(where, path.read_bytes()))


def trusted(trust_json: bytes | str) -> dict[str, dict[str, str]]:
    """``trust.json`` as participant -> {"ed25519": ..., and a hospital's "x25519": ...}."""
    participants: Mapping[str, Mapping[str, str]] = json.loads(trust_json)["participants"]
    return {
        name: {field: entry[field] for field in (SIGNING, MASKING) if field in entry}
        for name, entry in participants.items()
    }


def masking_keys(trust: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """Who ``trust.json`` lists a masking key for (the hospitals), and its public half."""
    return {name: entry[MASKING] for name, entry in trust.items() if MASKING in entry}


def own_identity(where: str, name: str, trust: Mapping[str, Mapping[str, str]]) -> list[FoundKey]:
    """What ``name``'s identity file at ``where`` must hold, and nothing else: its signing key
    and, for a hospital (``trust.json`` lists an X25519 key for it), its masking key."""
    return sorted(FoundKey(where, field, public) for field, public in trust[name].items())
