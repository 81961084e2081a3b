"""Blob format: framing, header and spec checks, without any encryption."""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from typing import Any

import pytest

from common.crypto.blob import (
    FORMAT_VERSION,
    MAGIC,
    Binding,
    BlobHeader,
    decode_blob,
    encode_blob,
    payload_digest,
    read_header,
)
from common.crypto.spec import BlobSpec
from common.errors import BlobError

DIGEST = "a" * 64
KEY = "b" * 64
CHUNKS = [b"\x01" * 12, b"\x02" * 12, b"\x03" * 12]
EXPECT = {"expect_scheme": "ckks", "expect_param_digest": DIGEST, "expect_key_id": KEY}


def make_header(chunks: list[bytes] = CHUNKS, **changes: Any) -> BlobHeader:
    header = BlobHeader(
        kind="update",
        run="run-7",
        round=3,
        sender="hospital-2",
        scheme="ckks",
        encoding="test",
        param_digest=DIGEST,
        key_id=KEY,
        value_count=10,
        chunk_count=len(chunks),
        chunk_bytes=tuple(len(chunk) for chunk in chunks),
        coeff_bits=24,
        summands=1,
        payload_sha256=payload_digest(chunks),
    )
    return replace(header, **changes)


def make_blob() -> bytes:
    return encode_blob(make_header(), CHUNKS)


def with_raw_header(header: dict[str, object], payload: bytes = b"".join(CHUNKS)) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<8sHI", MAGIC, FORMAT_VERSION, len(raw)) + raw + payload


def test_round_trip_returns_header_and_chunks() -> None:
    header, chunks = decode_blob(make_blob(), **EXPECT)
    assert header == make_header()
    assert chunks == CHUNKS


def test_blob_starts_with_magic_and_version() -> None:
    blob = make_blob()
    assert blob[:8] == MAGIC
    assert struct.unpack_from("<H", blob, 8)[0] == FORMAT_VERSION


def test_bad_magic_is_rejected() -> None:
    blob = b"NOTABLOB" + make_blob()[8:]
    with pytest.raises(BlobError, match="bad magic"):
        decode_blob(blob, **EXPECT)


def test_a_blob_of_the_previous_format_is_refused_as_written_by_an_older_hefl() -> None:
    blob = bytearray(make_blob())
    struct.pack_into("<H", blob, 8, FORMAT_VERSION - 1)
    with pytest.raises(BlobError, match="older hefl: start a new run"):
        decode_blob(bytes(blob), **EXPECT)


def test_the_header_binds_the_blob_to_run_round_and_sender() -> None:
    header, start = read_header(make_blob(), **EXPECT)
    assert header.binding == Binding(run="run-7", round=3, sender="hospital-2")
    assert start == len(make_blob()) - sum(len(c) for c in CHUNKS)


def test_the_header_is_read_without_touching_the_payload() -> None:
    blob = make_blob()
    header_only = blob[: len(blob) - sum(len(c) for c in CHUNKS)]
    header, _ = read_header(header_only, **EXPECT)  # a cut payload does not matter here
    assert header == make_header()
    with pytest.raises(BlobError, match="truncated"):
        decode_blob(header_only, **EXPECT)


@pytest.mark.parametrize(
    ("field", "value"), [("run", ""), ("sender", ""), ("round", -1), ("round", "3")]
)
def test_a_header_with_a_bad_binding_is_refused(field: str, value: object) -> None:
    with pytest.raises(BlobError, match=field):
        make_header(**{field: value})


def test_other_format_version_is_rejected() -> None:
    blob = bytearray(make_blob())
    struct.pack_into("<H", blob, 8, FORMAT_VERSION + 1)
    with pytest.raises(BlobError, match=f"format version {FORMAT_VERSION + 1}"):
        decode_blob(bytes(blob), **EXPECT)


@pytest.mark.parametrize("keep", [0, 5, 13, 30])
def test_truncated_in_preamble_or_header_is_rejected(keep: int) -> None:
    with pytest.raises(BlobError, match="truncated"):
        decode_blob(make_blob()[:keep], **EXPECT)


def test_truncated_payload_is_rejected() -> None:
    with pytest.raises(BlobError, match="truncated"):
        decode_blob(make_blob()[:-1], **EXPECT)


def test_trailing_bytes_are_rejected() -> None:
    with pytest.raises(BlobError, match="2 trailing bytes"):
        decode_blob(make_blob() + b"\x00\x00", **EXPECT)


def test_header_that_is_not_json_is_rejected() -> None:
    raw = b"{not json"
    blob = struct.pack("<8sHI", MAGIC, FORMAT_VERSION, len(raw)) + raw
    with pytest.raises(BlobError, match="not valid JSON"):
        decode_blob(blob, **EXPECT)


def test_header_that_is_a_json_list_is_rejected() -> None:
    with pytest.raises(BlobError, match="not a JSON object"):
        decode_blob(with_raw_header([1, 2]), **EXPECT)  # type: ignore[arg-type]


def test_header_with_missing_or_unknown_fields_is_rejected() -> None:
    fields = json.loads(make_header().to_json())
    del fields["summands"]
    fields["extra"] = 1
    with pytest.raises(BlobError, match=r"missing \['summands'\], unknown \['extra'\]"):
        decode_blob(with_raw_header(fields), **EXPECT)


def test_chunk_count_inconsistent_with_lengths_is_rejected() -> None:
    fields = json.loads(make_header().to_json())
    fields["chunk_count"] = 2
    with pytest.raises(BlobError, match="lists 3 chunk lengths but chunk_count is 2"):
        decode_blob(with_raw_header(fields), **EXPECT)


@pytest.mark.parametrize(
    ("field", "value"),
    [("value_count", 0), ("summands", 0), ("value_count", "10"), ("coeff_bits", 65)],
)
def test_header_with_bad_counts_is_rejected(field: str, value: object) -> None:
    fields = json.loads(make_header().to_json())
    fields[field] = value
    with pytest.raises(BlobError, match=field):
        decode_blob(with_raw_header(fields), **EXPECT)


@pytest.mark.parametrize(
    ("expect", "message"),
    [
        ({"expect_scheme": "bfv"}, "scheme 'ckks' is foreign"),
        ({"expect_param_digest": "c" * 64}, "parameter digest"),
        ({"expect_key_id": "d" * 64}, "key id"),
        ({"expect_kind": "aggregate"}, "kind 'update' is foreign"),
    ],
)
def test_foreign_blob_is_rejected(expect: dict[str, str], message: str) -> None:
    with pytest.raises(BlobError, match=message):
        decode_blob(make_blob(), **{**EXPECT, **expect})


def test_flipped_payload_byte_is_rejected() -> None:
    blob = bytearray(make_blob())
    blob[-5] ^= 0x01
    with pytest.raises(BlobError, match="corrupted"):
        decode_blob(bytes(blob), **EXPECT)


def test_encode_refuses_chunks_the_header_does_not_describe() -> None:
    with pytest.raises(BlobError, match="chunk lengths"):
        encode_blob(make_header(), CHUNKS[:2])
    with pytest.raises(BlobError, match="payload_sha256"):
        encode_blob(make_header(), [b"\x09" * 12] * 3)


def test_non_bytes_input_is_rejected() -> None:
    with pytest.raises(BlobError, match="must be bytes"):
        decode_blob("text", **EXPECT)  # type: ignore[arg-type]


SPEC = BlobSpec(
    scheme="ckks",
    encoding="test",
    param_digest=DIGEST,
    key_id=KEY,
    values_per_chunk=4,
    chunk_bytes=12,
    update_chunk_bytes=12,
    coeff_bits=24,
    max_hospitals=5,
)


def test_spec_round_trip() -> None:
    blob = SPEC.encode(kind="update", value_count=10, summands=2, chunks=CHUNKS)
    header, chunks = SPEC.decode(blob)
    assert (header.value_count, header.summands, header.chunk_count) == (10, 2, 3)
    assert chunks == CHUNKS


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"encoding": "other"}, "encoding 'other'"),
        ({"coeff_bits": 32}, "keeps 32 bits per coefficient"),
        ({"value_count": 20}, "3 chunks for 20 values, expected 5"),
        ({"summands": 6}, "above max_hospitals 5"),
    ],
)
def test_spec_rejects_blobs_that_do_not_fit(changes: dict[str, object], message: str) -> None:
    blob = encode_blob(make_header(CHUNKS, **changes), CHUNKS)
    with pytest.raises(BlobError, match=message):
        SPEC.decode(blob)


def test_spec_rejects_a_chunk_of_the_wrong_size() -> None:
    chunks = [*CHUNKS[:2], b"\x03" * 11]
    with pytest.raises(BlobError, match="chunk 2 is 11 bytes, expected 12"):
        SPEC.decode(encode_blob(make_header(chunks), chunks))
