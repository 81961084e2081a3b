"""The ciphertext blob: what a hospital uploads and what the coordinator writes back.

Layout (all integers little-endian)::

    b"HEFLBLOB"  magic, 8 bytes
    u16          format version (FORMAT_VERSION)
    u32          header length in bytes
    header       UTF-8 JSON object (BlobHeader fields)
    chunks       chunk payloads back to back, lengths as listed in the header

The header says what is encrypted and how (scheme, encoding, parameter digest, key id, counts), so
a receiver never guesses; ``decode_blob`` rejects anything that does not match exactly. The header
also carries the SHA-256 of the payload: a flipped bit in a ciphertext usually still yields valid
coefficients, so without it corruption would surface only as wrong numbers after decryption. (It
detects accidents, not forgeries: the signed message naming the blob does that.)

Since format 2 the header binds the blob to its run, round and sender (``Binding``). The signed
message that names a blob carries its SHA-256, so the binding is covered by the sender's
signature: a copy of another hospital's blob, or of an earlier round's, names another sender or
round than the message that submits it, and the coordinator refuses it before reading the
payload (``read_header``). This module is pure: it knows nothing of SEAL, only of bytes.

Since format 3 coefficients are packed at bit granularity (``coeff_bits``) and an update's chunks
are seeded ciphertexts (one polynomial and a PRNG seed); aggregates stay full size. Blobs of
formats 1 and 2 are refused by their version, with a message that says so.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

from common.errors import BlobError

MAGIC = b"HEFLBLOB"
FORMAT_VERSION = 3
_PREAMBLE = struct.Struct("<8sHI")
PREAMBLE_BYTES = _PREAMBLE.size
#: Headers are small (a few hundred bytes plus one length per chunk); refuse absurd ones early.
MAX_HEADER_BYTES = 1 << 20
MAX_COEFF_BITS = 64
#: Blob kinds: what a hospital uploads, and the sum the coordinator writes back.
UPDATE = "update"
AGGREGATE = "aggregate"
#: The sender of aggregates.
COORDINATOR_SENDER = "coordinator"


@dataclass(frozen=True, kw_only=True)
class Binding:
    """Which run, round and sender a blob belongs to (``UNBOUND``: a blob outside any run)."""

    run: str
    round: int
    sender: str


UNBOUND = Binding(run="-", round=0, sender="-")


@dataclass(frozen=True, kw_only=True)
class BlobHeader:
    """Self-description of a blob.

    ``kind``: what the blob is for ("update", "aggregate", ...). ``scheme``: "ckks", "bfv" or
    "plain". ``encoding``: how reals become plaintexts (packing, scale or fraction bits).
    ``param_digest``: SHA-256 of the HE context bytes. ``key_id``: SHA-256 of the public key.
    ``value_count``: reals carried. ``chunk_count`` and ``chunk_bytes``: one entry per ciphertext
    (or plaintext block). ``coeff_bits``: low-order bits kept per coefficient (64 for plain
    float64). ``summands``: how many fresh inputs were added into this blob (1 for an upload).
    ``payload_sha256``: SHA-256 of the chunks in order (see ``payload_digest``). ``run``,
    ``round`` and ``sender``: the blob's ``Binding``.
    """

    kind: str
    run: str
    round: int
    sender: str
    scheme: str
    encoding: str
    param_digest: str
    key_id: str
    value_count: int
    chunk_count: int
    chunk_bytes: tuple[int, ...]
    coeff_bits: int
    summands: int
    payload_sha256: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "chunk_bytes", tuple(self.chunk_bytes))
        for name in (
            "kind",
            "run",
            "sender",
            "scheme",
            "encoding",
            "param_digest",
            "key_id",
            "payload_sha256",
        ):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise BlobError(f"blob header field {name!r} must be a non-empty string")
        for name in ("value_count", "chunk_count", "summands"):
            _require_count(name, getattr(self, name), low=1)
        _require_count("coeff_bits", self.coeff_bits, low=1)
        _require_count("round", self.round, low=0)
        if self.coeff_bits > MAX_COEFF_BITS:
            raise BlobError(f"blob header coeff_bits {self.coeff_bits} exceeds {MAX_COEFF_BITS}")
        for length in self.chunk_bytes:
            _require_count("chunk_bytes entry", length, low=1)
        if len(self.chunk_bytes) != self.chunk_count:
            raise BlobError(
                f"blob header lists {len(self.chunk_bytes)} chunk lengths "
                f"but chunk_count is {self.chunk_count}"
            )

    @property
    def binding(self) -> Binding:
        return Binding(run=self.run, round=self.round, sender=self.sender)

    def to_json(self) -> bytes:
        data = asdict(self)
        data["chunk_bytes"] = list(self.chunk_bytes)
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> BlobHeader:
        try:
            data: Any = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BlobError(f"blob header is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise BlobError("blob header is not a JSON object")
        expected = {field.name for field in fields(cls)}
        missing = sorted(expected - set(data))
        unknown = sorted(set(data) - expected)
        if missing or unknown:
            raise BlobError(f"blob header fields: missing {missing}, unknown {unknown}")
        if not isinstance(data["chunk_bytes"], list):
            raise BlobError("blob header field 'chunk_bytes' must be a list")
        data["chunk_bytes"] = tuple(data["chunk_bytes"])
        return cls(**data)


def payload_digest(chunks: Iterable[bytes]) -> str:
    """SHA-256 (hex) of the chunks concatenated, as recorded in ``BlobHeader.payload_sha256``."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def encode_blob(header: BlobHeader, chunks: list[bytes]) -> bytes:
    """Serialize ``header`` and ``chunks``; the header must describe exactly these chunks."""
    lengths = tuple(len(chunk) for chunk in chunks)
    if lengths != header.chunk_bytes:
        raise BlobError(f"chunk lengths {lengths} do not match the header's {header.chunk_bytes}")
    if payload_digest(chunks) != header.payload_sha256:
        raise BlobError("the header's payload_sha256 does not match the chunks")
    raw = header.to_json()
    return b"".join([_PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(raw)), raw, *chunks])


def read_header(
    data: bytes,
    *,
    expect_scheme: str,
    expect_param_digest: str,
    expect_key_id: str,
    expect_kind: str | None = None,
) -> tuple[BlobHeader, int]:
    """Parse and check the preamble and header only; also return where the payload starts.

    Cheap whatever the blob's size: a receiver can refuse a blob by its header (kind, counts,
    binding) before it touches the payload.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BlobError(f"blob must be bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    if len(view) < _PREAMBLE.size:
        raise BlobError(f"blob truncated: {len(view)} bytes, shorter than the preamble")
    magic, version, header_len = _PREAMBLE.unpack_from(view)
    if magic != MAGIC:
        raise BlobError(f"bad magic {bytes(magic)!r}: not a ciphertext blob")
    if version != FORMAT_VERSION:
        older = " (written by an older hefl: start a new run)" if version < FORMAT_VERSION else ""
        raise BlobError(f"blob format version {version}, this build reads {FORMAT_VERSION}{older}")
    if header_len > MAX_HEADER_BYTES:
        raise BlobError(f"blob header length {header_len} exceeds {MAX_HEADER_BYTES}")
    start = _PREAMBLE.size + header_len
    if len(view) < start:
        raise BlobError(f"blob truncated inside the header: {len(view)} of {start}+ bytes")
    header = BlobHeader.from_json(bytes(view[_PREAMBLE.size : start]))
    _check_expected("scheme", header.scheme, expect_scheme)
    _check_expected("parameter digest", header.param_digest, expect_param_digest)
    _check_expected("key id", header.key_id, expect_key_id)
    if expect_kind is not None:
        _check_expected("kind", header.kind, expect_kind)
    return header, start


def decode_blob(
    data: bytes,
    *,
    expect_scheme: str,
    expect_param_digest: str,
    expect_key_id: str,
    expect_kind: str | None = None,
) -> tuple[BlobHeader, list[bytes]]:
    """Parse and check a blob; every mismatch raises BlobError saying what is wrong."""
    header, start = read_header(
        data,
        expect_scheme=expect_scheme,
        expect_param_digest=expect_param_digest,
        expect_key_id=expect_key_id,
        expect_kind=expect_kind,
    )
    view = memoryview(data).cast("B")
    size = start + sum(header.chunk_bytes)
    if len(view) < size:
        raise BlobError(f"blob truncated: {len(view)} bytes, header promises {size}")
    if len(view) > size:
        raise BlobError(f"blob has {len(view) - size} trailing bytes after its last chunk")
    chunks = []
    offset = start
    for length in header.chunk_bytes:
        chunks.append(bytes(view[offset : offset + length]))
        offset += length
    if payload_digest(chunks) != header.payload_sha256:
        raise BlobError("blob payload does not match its SHA-256: the chunks are corrupted")
    return header, chunks


def _check_expected(what: str, found: str, expected: str) -> None:
    if found != expected:
        raise BlobError(f"blob {what} {found!r} is foreign: expected {expected!r}")


def _require_count(name: str, value: Any, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BlobError(f"blob header field {name!r} must be an integer, got {value!r}")
    if value < low:
        raise BlobError(f"blob header field {name!r} must be at least {low}, got {value}")
