"""Tests of the control messages' wire format: round trips, and every way decode refuses input."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from common.errors import ProtocolError
from common.protocol import messages
from common.protocol.messages import (
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    FinalReport,
    Hello,
    Message,
    ParticipantsFixed,
    RoundStarted,
    RunAborted,
    RunFinished,
    UpdateFailed,
    UpdateReady,
    UpdateSubmitted,
    decode,
    encode,
)

SHA = "ab" * 32

EXAMPLES: list[Message] = [
    Hello(run="run-1", hospital="h1"),
    RoundStarted(
        run="run-1",
        round=1,
        global_ref=None,
        global_sha256=None,
        deadline=1_700_000_000.5,
        config_digest="cfg",
    ),
    RoundStarted(
        run="run-1",
        round=3,
        global_ref="runs/run-1/round-0002/aggregate.blob",
        global_sha256=SHA,
        deadline=12.0,
        config_digest="cfg",
        history_sha256=SHA,
    ),
    UpdateSubmitted(
        run="run-1",
        round=2,
        hospital="h2",
        blob_ref="runs/run-1/round-0002/update-h2.blob",
        sha256=SHA,
        metrics={"auc": 0.71, "accuracy": 0.88, "loss": 0.35, "train_loss": 0.3},
    ),
    UpdateSubmitted(
        run="run-1", round=1, hospital="h1", blob_ref="b", sha256=SHA
    ),  # default (empty) metrics
    UpdateFailed(run="run-1", round=4, hospital="h3", error="TrainingError: no rows"),
    RunFinished(
        run="run-1",
        rounds=5,
        final_ref="runs/run-1/round-0005/aggregate.blob",
        final_sha256=SHA,
        config_digest="cfg",
        final_round=5,
        history_sha256=SHA,
    ),
    RunFinished(  # stopped early: the final model is round 3's
        run="run-1",
        rounds=5,
        final_ref="runs/run-1/round-0003/aggregate.blob",
        final_sha256=SHA,
        config_digest="cfg",
        final_round=3,
        history_sha256=SHA,
    ),
    FinalReport(run="run-1", hospital="h1", metrics={"auc": 0.5, "accuracy": 1.0, "loss": 2.0}),
    FinalReport(run="run-1", hospital="h1"),
    RunAborted(run="run-1", reason="round 2: only 1 of 3 required hospitals submitted"),
    UpdateReady(run="run-1", round=2, hospital="h2"),
    ParticipantsFixed(
        run="run-1", round=2, attempt=2, participants=("h1", "h2", "h4"), deadline=1e9
    ),
    UpdateSubmitted(run="run-1", round=2, hospital="h4", blob_ref="b", sha256=SHA, attempt=2),
]

MESSAGE_TYPES = {type(m) for m in EXAMPLES}


def _body(message: Message) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(encode(message))
    return body


def _bytes(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def _short_id(value: object) -> str:
    if type(value) in MESSAGE_TYPES:
        return type(value).__name__
    return repr(value)[:16]


def _rejects(data: bytes, *fragments: str) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(data)
    text = str(info.value)
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"
    return text


# -- round trips -----------------------------------------------------------------------------


def test_examples_cover_every_message_type() -> None:
    assert set(messages.MESSAGE_TYPES) == MESSAGE_TYPES


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_encode_then_decode_returns_an_equal_message(message: Message) -> None:
    decoded = decode(encode(message))
    assert decoded == message
    assert type(decoded) is type(message)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_encoding_names_type_and_protocol_version(message: Message) -> None:
    body = _body(message)
    assert body["type"] == type(message).__name__
    assert body["v"] == PROTOCOL_VERSION


def test_encoding_is_canonical_and_deterministic() -> None:
    message = EXAMPLES[3]
    data = encode(message)
    assert data == encode(decode(data))
    assert b" " not in data.replace(b"TrainingError: no rows", b"")
    keys = list(json.loads(data))
    assert keys == sorted(keys)


def test_integer_deadline_decodes_as_float() -> None:
    body = _body(EXAMPLES[1])
    body["deadline"] = 100
    message = decode(_bytes(body))
    assert isinstance(message, RoundStarted)
    assert message.deadline == 100.0
    assert isinstance(message.deadline, float)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_metric_travels_as_null_and_comes_back_as_nan(value: float) -> None:
    message = UpdateSubmitted(
        run="r", round=1, hospital="h", blob_ref="b", sha256=SHA, metrics={"auc": value, "loss": 1}
    )
    data = encode(message)
    assert json.loads(data)["metrics"] == {"auc": None, "loss": 1}
    assert b"NaN" not in data and b"Infinity" not in data
    decoded = decode(data)
    assert isinstance(decoded, UpdateSubmitted)
    assert math.isnan(decoded.metrics["auc"])
    assert decoded.metrics["loss"] == 1.0


def test_final_report_nan_metric_comes_back_as_nan() -> None:
    decoded = decode(encode(FinalReport(run="r", hospital="h", metrics={"auc": math.nan})))
    assert isinstance(decoded, FinalReport)
    assert math.isnan(decoded.metrics["auc"])


# -- rejections ------------------------------------------------------------------------------


def test_rejects_bytes_that_are_not_utf8() -> None:
    _rejects(b'{"type": "Hello", "run": "\xff\xfe"}', "UTF-8")


@pytest.mark.parametrize("data", [b"", b"{", b"hello", b"{'type': 'Hello'}", b'{"a": 1,}'])
def test_rejects_text_that_is_not_json(data: bytes) -> None:
    _rejects(data, "JSON")


@pytest.mark.parametrize("data", [b"[]", b'[{"type": "Hello"}]', b'"Hello"', b"42", b"null"])
def test_rejects_json_that_is_not_an_object(data: bytes) -> None:
    _rejects(data, "not a JSON object")


@pytest.mark.parametrize("type_name", ["Goodbye", "hello", "", None, 7, ["Hello"], "Message"])
def test_rejects_unknown_message_type(type_name: object) -> None:
    body = _body(EXAMPLES[0])
    body["type"] = type_name
    _rejects(_bytes(body), "unknown message type")


def test_rejects_message_without_type() -> None:
    body = _body(EXAMPLES[0])
    del body["type"]
    _rejects(_bytes(body), "unknown message type")


@pytest.mark.parametrize("version", [0, 2, "1", None, True, 1.0, [1]])
def test_rejects_other_protocol_versions(version: object) -> None:
    body = _body(EXAMPLES[0])
    body["v"] = version
    _rejects(_bytes(body), "Hello", "protocol version")


def test_rejects_message_without_version() -> None:
    body = _body(EXAMPLES[0])
    del body["v"]
    _rejects(_bytes(body), "protocol version")


@pytest.mark.parametrize(
    ("message", "name"),
    [(EXAMPLES[1], "deadline"), (EXAMPLES[3], "sha256"), (EXAMPLES[3], "metrics")],
)
def test_rejects_missing_field_and_names_it(message: Message, name: str) -> None:
    body = _body(message)
    del body[name]
    _rejects(_bytes(body), type(message).__name__, "missing", repr(name))


def test_rejects_unexpected_extra_field_and_names_it() -> None:
    body = _body(EXAMPLES[0])
    body["secret_key"] = "oops"
    _rejects(_bytes(body), "Hello", "unexpected", "'secret_key'")


def test_rejects_repeated_keys() -> None:
    # A reader taking the first and one taking the last value would disagree on the run.
    data = b'{"type":"Hello","v":1,"run":"r1","hospital":"h","run":"r2"}'
    _rejects(data, "repeats", "'run'")


@pytest.mark.parametrize(
    ("base", "name", "value"),
    [
        (EXAMPLES[3], "round", "2"),
        (EXAMPLES[3], "round", -1),
        (EXAMPLES[3], "round", True),
        (EXAMPLES[3], "round", 2.0),
        (EXAMPLES[3], "round", None),
        (EXAMPLES[6], "rounds", False),
        (EXAMPLES[1], "deadline", "soon"),
        (EXAMPLES[1], "deadline", True),
        (EXAMPLES[1], "deadline", None),
        (EXAMPLES[1], "deadline", 10**400),
        (EXAMPLES[1], "global_ref", 5),
        (EXAMPLES[3], "hospital", ""),
        (EXAMPLES[3], "hospital", 1),
        (EXAMPLES[3], "run", None),
        (EXAMPLES[3], "sha256", ["ab"]),
        (EXAMPLES[3], "metrics", {"auc": "0.7"}),
        (EXAMPLES[3], "metrics", {"auc": True}),
        (EXAMPLES[3], "metrics", {"auc": [0.7]}),
        (EXAMPLES[3], "metrics", {"auc": 10**400}),
        (EXAMPLES[3], "metrics", [0.7]),
        (EXAMPLES[3], "metrics", None),
        (EXAMPLES[7], "metrics", "auc=0.5"),
    ],
    ids=_short_id,
)
def test_rejects_field_of_wrong_type_and_names_it(base: Message, name: str, value: object) -> None:
    body = _body(base)
    body[name] = value
    _rejects(_bytes(body), type(base).__name__, repr(name))


@pytest.mark.parametrize(
    ("base", "name", "value"),
    [
        (EXAMPLES[3], "round", "1"),
        (EXAMPLES[6], "rounds", "5"),
        (EXAMPLES[1], "deadline", "1.5"),
        (EXAMPLES[1], "global_sha256", 1),
        (EXAMPLES[0], "hospital", True),
    ],
    ids=_short_id,
)
def test_rejects_text_for_numbers_and_numbers_for_text_without_coercion(
    base: Message, name: str, value: object
) -> None:
    body = _body(base)
    body[name] = value
    text = _rejects(_bytes(body), f"{type(base).__name__}: field {name!r}: ", repr(value))
    assert "\n" not in text


def test_rejection_names_the_metric_under_the_metrics_field() -> None:
    body = _body(EXAMPLES[3])
    body["metrics"] = {"auc": 0.7, "loss": "low"}
    _rejects(_bytes(body), "UpdateSubmitted: field 'metrics'['loss']: ", "'low'")


def test_rejects_extra_field_and_lists_the_allowed_ones() -> None:
    body = _body(EXAMPLES[0])
    body["secret_key"] = "oops"
    _rejects(_bytes(body), "Hello: unexpected field 'secret_key'", "['hospital', 'run']")


def test_rejection_counts_the_other_problems() -> None:
    body = _body(EXAMPLES[3])
    body["round"] = "2"
    body["hospital"] = ""
    _rejects(_bytes(body), "UpdateSubmitted: field ", "(and 1 more)")


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_rejects_nan_and_infinity_constants_by_name(literal: bytes) -> None:
    data = encode(EXAMPLES[3]).replace(b'"loss":0.35', b'"loss":' + literal)
    assert literal in data
    _rejects(data, f"contains {literal.decode()}, which is not JSON")


@pytest.mark.parametrize("literal", [b"Infinity", b"-Infinity", b"NaN", b"1e400"])
def test_rejects_non_finite_deadline(literal: bytes) -> None:
    data = encode(EXAMPLES[1]).replace(b'"deadline":1700000000.5', b'"deadline":' + literal)
    assert literal in data
    _rejects(data)


@pytest.mark.parametrize("literal", [b"Infinity", b"-Infinity", b"NaN", b"1e400"])
def test_rejects_non_finite_metric_literals(literal: bytes) -> None:
    # On the wire a non-finite metric is null; anything else is not canonical JSON.
    data = encode(EXAMPLES[3]).replace(b'"auc":0.71', b'"auc":' + literal)
    assert literal in data
    _rejects(data)


def test_rejects_integer_beyond_the_digit_limit() -> None:
    data = encode(EXAMPLES[3]).replace(b'"round":2', b'"round":' + b"9" * 5000)
    assert len(data) < MAX_MESSAGE_BYTES
    _rejects(data)


def test_rejects_deeply_nested_json() -> None:
    _rejects(b"[" * (MAX_MESSAGE_BYTES - 1))


def test_rejects_oversize_message_before_parsing() -> None:
    message = UpdateFailed(run="r", round=1, hospital="h", error="x" * MAX_MESSAGE_BYTES)
    data = encode(message)
    assert len(data) > MAX_MESSAGE_BYTES
    _rejects(data, "exceeds", str(MAX_MESSAGE_BYTES))


def test_accepts_message_of_exactly_the_size_limit() -> None:
    empty = len(encode(UpdateFailed(run="r", round=1, hospital="h", error="x")))
    message = UpdateFailed(
        run="r", round=1, hospital="h", error="x" * (MAX_MESSAGE_BYTES - empty + 1)
    )
    data = encode(message)
    assert len(data) == MAX_MESSAGE_BYTES
    assert decode(data) == message


# -- robustness ------------------------------------------------------------------------------


def _decode_fails_only_with_protocol_error(data: bytes) -> None:
    try:
        decode(data)
    except ProtocolError:
        return
    except Exception as exc:  # anything else would stop a coordinator's message loop
        pytest.fail(f"decode({data[:80]!r}) raised {exc!r}")


def test_random_bytes_raise_only_protocol_error() -> None:
    rng = random.Random(20240601)
    for _ in range(300):
        data = rng.randbytes(rng.randrange(0, 200))
        _decode_fails_only_with_protocol_error(data)


_TOKENS = [
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b",",
    b":",
    b"null",
    b"true",
    b"-1",
    b"1e999",
    b"NaN",
    b"9" * 5000,
    b"[" * 3000,
    b"\xff",
    b"\\u0000",
    b'"type"',
    b'"v"',
    b'"round"',
    b'"metrics"',
]


def _mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        action = rng.randrange(4)
        pos = rng.randrange(len(buf) + 1)
        if action == 0 and buf:  # flip a byte
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif action == 1:  # delete a span
            del buf[pos : pos + rng.randint(1, 8)]
        elif action == 2:  # insert a JSON-ish token
            buf[pos:pos] = rng.choice(_TOKENS)
        else:  # truncate
            del buf[pos:]
    return bytes(buf)


def test_mutated_valid_messages_raise_only_protocol_error() -> None:
    rng = random.Random(7)
    originals = [encode(m) for m in EXAMPLES]
    decoded_some = False
    for _ in range(600):
        data = _mutate(rng.choice(originals), rng)
        try:
            result = decode(data)
        except ProtocolError:
            continue
        decoded_some = True
        assert type(result) in MESSAGE_TYPES
    assert decoded_some  # the mutations are not all trivially broken


def test_structurally_valid_bodies_with_random_field_values_raise_only_protocol_error() -> None:
    rng = random.Random(11)
    odd_values: list[object] = [
        None,
        True,
        -1,
        0,
        10**30,
        1.5,
        "",
        "x",
        [],
        {},
        {"auc": None},
        {"auc": "x"},
        [1, 2],
        {"1": {"2": 3}},
    ]
    for _ in range(400):
        body = _body(rng.choice(EXAMPLES))
        for name in rng.sample(sorted(body), rng.randint(1, 3)):
            body[name] = rng.choice(odd_values)
        _decode_fails_only_with_protocol_error(_bytes(body))


# -- fields added within version 1 -------------------------------------------------------------

STOPPED_EARLY = next(m for m in EXAMPLES if isinstance(m, RunFinished) and m.final_round == 3)
LATER_ROUND = next(m for m in EXAMPLES if isinstance(m, RoundStarted) and m.round == 3)


def test_announcements_from_before_server_optimizers_still_decode_with_the_old_meaning() -> None:
    started = _body(LATER_ROUND)
    del started["history_sha256"]
    old = decode(_bytes(started))
    assert isinstance(old, RoundStarted) and old.history_sha256 is None
    finished = _body(STOPPED_EARLY)
    del finished["final_round"], finished["history_sha256"]
    last = decode(_bytes(finished))
    assert isinstance(last, RunFinished) and last.final_round is None
    assert last.model_round == last.rounds == 5  # the last round's model is final
    assert STOPPED_EARLY.model_round == 3
    cut = _body(STOPPED_EARLY)
    del cut["config_digest"]  # an original field missing is still a cut message
    _rejects(_bytes(cut), "missing field 'config_digest'")


@pytest.mark.parametrize("final_round", [0, 6])
def test_a_final_round_outside_the_rounds_run_is_refused(final_round: int) -> None:
    body = _body(STOPPED_EARLY)
    body["final_round"] = final_round
    _rejects(_bytes(body), "final_round must be within 1..rounds (5)")
    assert decode(_bytes({**body, "final_round": 3})) == STOPPED_EARLY
