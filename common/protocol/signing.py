"""Signed messages: Ed25519 identities, the trust file, and the signed envelope.

The key ceremony issues one signing key per participant (the coordinator and every hospital) and
one public ``trust.json`` naming each participant's verification key and role. A hospital's
identity file also holds its X25519 masking key (a second PEM block), whose public half is in
``trust.json`` too: hospitals agree pairwise masks with it (``common.crypto.masking``).

Every control message travels in an envelope ``{"signer", "body", "sig"}``;
``MessageCodec.decode`` accepts it only if the signer is known, the signature over the exact body
bytes is valid, and the signer is the party the message speaks for (a hospital signs only its own
submissions, only the coordinator announces rounds). Replays are caught by the round state: a
submission for a closed round is late, the same submission twice changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from common.crypto.masking import PairwiseMasks
from common.errors import KeyBundleError, ProtocolError
from common.protocol.messages import MAX_MESSAGE_BYTES, Message, decode, encode

Role = Literal["coordinator", "hospital"]
COORDINATOR: Final = "coordinator"
SIGNING_KEY_FILE: Final = "signing_key.pem"
TRUST_FILE: Final = "trust.json"
_CONTEXT: Final = b"hefl-message-v1\x00"  # domain separation for signatures
_STATE_CONTEXT: Final = b"hefl-state-v1\x00"  # a signed state is never a valid message


class SignatureError(ProtocolError):
    """A message is unsigned, signed by an unknown party, forged, or signed by the wrong party."""


@dataclass(frozen=True, eq=False)
class Identity:
    """One participant's name, private signing key and (a hospital's) masking key."""

    name: str
    key: Ed25519PrivateKey
    masking: X25519PrivateKey | None = None

    def __repr__(self) -> str:
        return f"Identity({self.name!r})"


@dataclass(frozen=True, eq=False)
class Trust:
    """Every participant's verification key and role (public)."""

    keys: dict[str, tuple[Role, Ed25519PublicKey]]
    masking: dict[str, X25519PublicKey] = field(default_factory=dict)

    def role_of(self, name: str) -> Role | None:
        entry = self.keys.get(name)
        return entry[0] if entry else None

    @property
    def hospitals(self) -> tuple[str, ...]:
        return tuple(sorted(n for n, (role, _) in self.keys.items() if role == "hospital"))


def _raw(public: Ed25519PublicKey | X25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def generate_identities(hospitals: list[str]) -> tuple[dict[str, Identity], Trust]:
    """Fresh signing keys for the coordinator and each hospital, and the matching trust."""
    names = [COORDINATOR, *hospitals]
    if len(set(names)) != len(names):
        raise KeyBundleError(f"participant names must be distinct: {names}")
    identities = {
        name: Identity(
            name=name,
            key=Ed25519PrivateKey.generate(),
            masking=None if name == COORDINATOR else X25519PrivateKey.generate(),
        )
        for name in names
    }
    trust = Trust(
        keys={
            name: ("coordinator" if name == COORDINATOR else "hospital", ident.key.public_key())
            for name, ident in identities.items()
        },
        masking={
            name: ident.masking.public_key()
            for name, ident in identities.items()
            if ident.masking is not None
        },
    )
    return identities, trust


def issue_identities(directory: Path, hospitals: list[str]) -> Trust:
    """Write ``<directory>/<name>/signing_key.pem`` (0600) for the coordinator and each hospital,
    and the public ``<directory>/trust.json``."""
    identities, trust = generate_identities(hospitals)
    directory.mkdir(parents=True, exist_ok=True)
    for name, identity in identities.items():
        pem = b"".join(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            for key in (identity.key, identity.masking)
            if key is not None
        )
        folder = directory / name
        folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / SIGNING_KEY_FILE
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
    body: dict[str, dict[str, str]] = {
        name: {"role": role, "ed25519": _raw(pub)} for name, (role, pub) in trust.keys.items()
    }
    for name, public in trust.masking.items():
        body[name]["x25519"] = _raw(public)
    (directory / TRUST_FILE).write_text(json.dumps({"participants": body}, indent=1) + "\n")
    return trust


_PEM_BLOCK: Final = re.compile(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----\s*", re.S)


def load_identity(path: Path, name: str) -> Identity:
    """Read a participant's keys (the file written by ``issue_identities``): one Ed25519 signing
    key and, for a hospital, one X25519 masking key."""
    try:
        data = path.read_bytes()
        blocks = [block.group(0) for block in _PEM_BLOCK.finditer(data)]
        if len(blocks) != data.count(b"-----BEGIN ") or b"".join(blocks) != data.lstrip():
            raise ValueError("it holds text outside complete PEM blocks (truncated?)")
        keys = [serialization.load_pem_private_key(block, password=None) for block in blocks]
    except (OSError, ValueError, TypeError) as exc:
        raise KeyBundleError(f"{path}: cannot read the signing key of {name}: {exc}") from exc
    signing = [key for key in keys if isinstance(key, Ed25519PrivateKey)]
    masking = [key for key in keys if isinstance(key, X25519PrivateKey)]
    if len(signing) != 1 or len(masking) > 1 or len(keys) != len(signing) + len(masking):
        raise KeyBundleError(
            f"{path}: expected one Ed25519 signing key and at most one X25519 masking key, "
            f"found {len(keys)} keys ({len(signing)} Ed25519, {len(masking)} X25519)"
        )
    return Identity(name=name, key=signing[0], masking=masking[0] if masking else None)


def load_trust(path: Path) -> Trust:
    """Read ``trust.json``; malformed entries are a KeyBundleError naming the participant."""
    try:
        data = json.loads(path.read_text())
        participants = data["participants"]
        keys: dict[str, tuple[Role, Ed25519PublicKey]] = {}
        masking: dict[str, X25519PublicKey] = {}
        for name, entry in participants.items():
            role = entry["role"]
            if role not in ("coordinator", "hospital"):
                raise ValueError(f"{name}: unknown role {role!r}")
            raw = base64.b64decode(entry["ed25519"], validate=True)
            keys[name] = (role, Ed25519PublicKey.from_public_bytes(raw))
            if "x25519" in entry:
                raw = base64.b64decode(entry["x25519"], validate=True)
                masking[name] = X25519PublicKey.from_public_bytes(raw)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise KeyBundleError(f"{path}: cannot read the trust file: {exc}") from exc
    if keys.get(COORDINATOR, ("", None))[0] != "coordinator":
        raise KeyBundleError(f"{path}: the trust file names no coordinator")
    return Trust(keys=keys, masking=masking)


def _speaker(message: Message) -> tuple[str, Role]:
    """Who must have signed a message: the hospital it names, or the coordinator."""
    hospital = getattr(message, "hospital", None)
    if isinstance(hospital, str):
        return hospital, "hospital"
    return COORDINATOR, "coordinator"


def _envelope(data: bytes, field: str, *, not_json: type[ProtocolError]) -> tuple[str, str, str]:
    """``(signer, body, sig)`` of a signed envelope whose body is under ``field``."""
    what = "message" if field == "body" else field
    try:
        envelope = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise not_json(f"envelope is not JSON: {exc}") from exc
    if not isinstance(envelope, dict) or set(envelope) != {"signer", field, "sig"}:
        raise SignatureError(f"unsigned {what}: expected an envelope {{signer, {field}, sig}}")
    signer, body, sig = envelope["signer"], envelope[field], envelope["sig"]
    if not all(isinstance(v, str) for v in (signer, body, sig)):
        raise SignatureError(f"{what} envelope fields must be strings")
    return signer, body, sig


class MessageCodec:
    """Signs what this participant sends; verifies and binds what it receives."""

    def __init__(self, identity: Identity, trust: Trust) -> None:
        if identity.name not in trust.keys:
            raise KeyBundleError(f"{identity.name} is not in the trust file")
        if _raw(trust.keys[identity.name][1]) != _raw(identity.key.public_key()):
            raise KeyBundleError(f"the signing key of {identity.name} does not match trust.json")
        if identity.masking is not None:
            public = trust.masking.get(identity.name)
            if public is None or _raw(public) != _raw(identity.masking.public_key()):
                raise KeyBundleError(
                    f"the masking key of {identity.name} does not match trust.json"
                )
        self.identity = identity
        self.trust = trust

    def pairwise_masks(self) -> PairwiseMasks:
        """This hospital's masking key with every peer's public masking key."""
        if self.identity.masking is None:
            raise KeyBundleError(
                f"the identity of {self.identity.name} holds no masking key (issued before "
                "masking existed): re-issue the identities with hefl keygen, or run with "
                "--no-masking"
            )
        missing = [name for name in self.trust.hospitals if name not in self.trust.masking]
        if missing:
            raise KeyBundleError(
                f"trust.json holds no masking key for {', '.join(missing)}: re-issue the "
                "identities with hefl keygen, or run with --no-masking"
            )
        return PairwiseMasks(self.identity.name, self.identity.masking, self.trust.masking)

    def encode(self, message: Message) -> bytes:
        return self.wrap(encode(message))

    def wrap(self, body: bytes) -> bytes:
        """Sign raw body bytes (``encode`` does this for a message)."""
        return self._sign(_CONTEXT, "body", body)

    def seal_state(self, body: bytes) -> bytes:
        """Sign persisted state with this participant's own key (``open_state`` checks it)."""
        return self._sign(_STATE_CONTEXT, "state", body)

    def _sign(self, context: bytes, field: str, body: bytes) -> bytes:
        signature = self.identity.key.sign(context + body)
        envelope = {
            "signer": self.identity.name,
            field: body.decode(),
            "sig": base64.b64encode(signature).decode(),
        }
        return json.dumps(envelope, separators=(",", ":")).encode()

    def open_state(self, data: bytes) -> bytes:
        """The state body, if this participant itself signed it; SignatureError otherwise."""
        signer, body, sig = _envelope(data, "state", not_json=SignatureError)
        if signer != self.identity.name:
            raise SignatureError(f"state signed by {signer!r:.60}, not by {self.identity.name}")
        try:
            self.identity.key.public_key().verify(
                base64.b64decode(sig, validate=True), _STATE_CONTEXT + body.encode()
            )
        except (InvalidSignature, binascii.Error, ValueError) as exc:
            raise SignatureError(
                f"the signature of {self.identity.name} over its state does not verify "
                "(edited or forged)"
            ) from exc
        return body.encode()

    def decode(self, data: bytes) -> Message:
        """Verify the envelope, then parse and bind the message; ProtocolError on any failure."""
        if len(data) > 2 * MAX_MESSAGE_BYTES:
            raise ProtocolError(f"envelope of {len(data)} bytes is too large")
        signer, body, sig = _envelope(data, "body", not_json=ProtocolError)
        entry = self.trust.keys.get(signer)
        if entry is None:
            raise SignatureError(f"signer {signer!r:.60} is not in the trust file")
        try:
            entry[1].verify(base64.b64decode(sig, validate=True), _CONTEXT + body.encode())
        except (InvalidSignature, binascii.Error, ValueError) as exc:
            raise SignatureError(f"signature of {signer} does not verify (forged?)") from exc
        message = decode(body.encode())
        speaker, role = _speaker(message)
        if signer != speaker or entry[0] != role:
            raise SignatureError(
                f"{type(message).__name__} for {speaker} was signed by {signer} ({entry[0]})"
            )
        return message
