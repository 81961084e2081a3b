"""What one key bundle's blobs must look like, checked on every blob in and out.

A ``BlobSpec`` is derived once from the bundle (or from the plain-scheme constants); ciphers and
aggregators of every scheme go through it, so every blob is validated the same way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from common.crypto.blob import (
    PREAMBLE_BYTES,
    UNBOUND,
    UPDATE,
    Binding,
    BlobHeader,
    decode_blob,
    encode_blob,
    payload_digest,
    read_header,
)
from common.crypto.config import CKKS
from common.crypto.keys import Manifest
from common.errors import BlobError

PLAIN = "plain"
PLAIN_ENCODING = "float64-le"
#: The plain scheme has no context or key; these fixed digests stand in for them.
PLAIN_PARAM_DIGEST = hashlib.sha256(b"hefl/plain/float64-le").hexdigest()
PLAIN_KEY_ID = hashlib.sha256(b"hefl/plain/no-key").hexdigest()
PLAIN_VALUES_PER_CHUNK = 4096


@dataclass(frozen=True, kw_only=True)
class BlobSpec:
    """Scheme, encoding, identity and chunk geometry every blob of one bundle shares.

    Every chunk carries exactly ``values_per_chunk`` values (the last one zero-padded) in exactly
    ``update_chunk_bytes`` bytes in an update (seeded ciphertexts) and ``chunk_bytes`` in any
    other blob (full ones: sums); ``max_hospitals`` caps ``summands``.
    """

    scheme: str
    encoding: str
    param_digest: str
    key_id: str
    values_per_chunk: int
    chunk_bytes: int
    update_chunk_bytes: int
    coeff_bits: int
    max_hospitals: int

    def chunk_bytes_of(self, kind: str) -> int:
        """The size of every chunk of a ``kind`` blob."""
        return self.update_chunk_bytes if kind == UPDATE else self.chunk_bytes

    def chunk_count(self, value_count: int) -> int:
        return -(-value_count // self.values_per_chunk)

    def max_blob_bytes(self, value_count: int) -> int:
        """The most bytes a blob of ``value_count`` values can take (header allowance included):
        a store refuses anything larger before reading it."""
        chunks = self.chunk_count(value_count)
        largest = max(self.chunk_bytes, self.update_chunk_bytes)
        return PREAMBLE_BYTES + 4096 + 16 * chunks + chunks * largest

    def encode(
        self,
        *,
        kind: str,
        value_count: int,
        summands: int,
        chunks: list[bytes],
        binding: Binding = UNBOUND,
    ) -> bytes:
        """Build a blob; the chunks must match this spec (a mismatch is a bug, still BlobError)."""
        if len(chunks) != self.chunk_count(value_count):
            raise BlobError(f"{len(chunks)} chunks cannot carry {value_count} values")
        header = BlobHeader(
            kind=kind,
            run=binding.run,
            round=binding.round,
            sender=binding.sender,
            scheme=self.scheme,
            encoding=self.encoding,
            param_digest=self.param_digest,
            key_id=self.key_id,
            value_count=value_count,
            chunk_count=len(chunks),
            chunk_bytes=tuple(len(chunk) for chunk in chunks),
            coeff_bits=self.coeff_bits,
            summands=summands,
            payload_sha256=payload_digest(chunks),
        )
        self._check_geometry(header)
        return encode_blob(header, chunks)

    def header(self, blob: bytes) -> BlobHeader:
        """Parse and check only ``blob``'s header against this spec (its payload is not read)."""
        header, _ = read_header(
            blob,
            expect_scheme=self.scheme,
            expect_param_digest=self.param_digest,
            expect_key_id=self.key_id,
        )
        self._check_header(header)
        return header

    def decode(self, blob: bytes) -> tuple[BlobHeader, list[bytes]]:
        """Parse ``blob`` and check it against this spec."""
        header, chunks = decode_blob(
            blob,
            expect_scheme=self.scheme,
            expect_param_digest=self.param_digest,
            expect_key_id=self.key_id,
        )
        self._check_header(header)
        return header, chunks

    def _check_header(self, header: BlobHeader) -> None:
        if header.encoding != self.encoding:
            raise BlobError(f"blob encoding {header.encoding!r}, expected {self.encoding!r}")
        self._check_geometry(header)

    def _check_geometry(self, header: BlobHeader) -> None:
        if header.coeff_bits != self.coeff_bits:
            raise BlobError(
                f"blob keeps {header.coeff_bits} bits per coefficient, expected {self.coeff_bits}"
            )
        expected = self.chunk_count(header.value_count)
        if header.chunk_count != expected:
            raise BlobError(
                f"blob has {header.chunk_count} chunks for {header.value_count} values, "
                f"expected {expected}"
            )
        size = self.chunk_bytes_of(header.kind)
        for index, length in enumerate(header.chunk_bytes):
            if length != size:
                raise BlobError(
                    f"{header.kind} blob chunk {index} is {length} bytes, expected {size}"
                )
        if header.summands > self.max_hospitals:
            raise BlobError(
                f"blob sums {header.summands} inputs, above max_hospitals {self.max_hospitals}"
            )


def plain_spec(max_hospitals: int) -> BlobSpec:
    """Spec of the plaintext comparison scheme: float64 blocks in the same blob format."""
    return BlobSpec(
        scheme=PLAIN,
        encoding=PLAIN_ENCODING,
        param_digest=PLAIN_PARAM_DIGEST,
        key_id=PLAIN_KEY_ID,
        values_per_chunk=PLAIN_VALUES_PER_CHUNK,
        chunk_bytes=PLAIN_VALUES_PER_CHUNK * 8,
        update_chunk_bytes=PLAIN_VALUES_PER_CHUNK * 8,
        coeff_bits=64,
        max_hospitals=max_hospitals,
    )


class ChunkGeometry(Protocol):
    """What a SEAL context makes of a chunk (``common.crypto.seal.SealPublic``)."""

    coeff_bits: int
    chunk_bytes: int
    seeded_chunk_bytes: int


def he_spec(manifest: Manifest, geometry: ChunkGeometry) -> BlobSpec:
    """Spec of a CKKS or BFV bundle: one ciphertext at one prime per chunk, seeded in updates."""
    config = manifest.config
    if config.scheme == CKKS:
        encoding = f"ckks-complex-pairs/scale-bits={config.scale_bits}"
    else:
        encoding = f"bfv-fixed-point/fraction-bits={config.fraction_bits}"
    return BlobSpec(
        scheme=config.scheme,
        encoding=encoding,
        param_digest=manifest.param_digest,
        key_id=manifest.key_id,
        values_per_chunk=config.values_per_ciphertext,
        chunk_bytes=geometry.chunk_bytes,
        update_chunk_bytes=geometry.seeded_chunk_bytes,
        coeff_bits=geometry.coeff_bits,
        max_hospitals=config.max_hospitals,
    )
