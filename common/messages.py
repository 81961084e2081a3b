"""Control messages of the round protocol and their versioned JSON wire format.

Messages are small: they name blobs in the store (by key and SHA-256) and carry metrics, never
weights or patient data. ``decode`` checks the whole shape of a message before anything acts on
it, so garbage or a message of another schema is a ``ProtocolError`` naming what is wrong.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Final

from common.errors import ProtocolError

PROTOCOL_VERSION: Final = 1
MAX_MESSAGE_BYTES: Final = 64 * 1024


@dataclass(frozen=True, kw_only=True)
class Hello:
    """A hospital announces that it is ready to take part in a run."""

    run: str
    hospital: str


@dataclass(frozen=True, kw_only=True)
class RoundStarted:
    """The coordinator opens a round; ``global_ref`` is None in round 1 (initial weights)."""

    run: str
    round: int
    global_ref: str | None
    global_sha256: str | None
    deadline: float
    config_digest: str


@dataclass(frozen=True, kw_only=True)
class UpdateSubmitted:
    """A hospital uploaded its encrypted weighted model; metrics are of the model it received."""

    run: str
    round: int
    hospital: str
    blob_ref: str
    sha256: str
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class UpdateFailed:
    """A hospital could not produce an update this round (an error reply, not silence)."""

    run: str
    round: int
    hospital: str
    error: str


@dataclass(frozen=True, kw_only=True)
class RunFinished:
    """The last round is aggregated; hospitals decrypt and keep the final model."""

    run: str
    rounds: int
    final_ref: str
    final_sha256: str
    config_digest: str


@dataclass(frozen=True, kw_only=True)
class RunAborted:
    """The coordinator gave up on the run (e.g. no quorum by a deadline); hospitals stop."""

    run: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class FinalReport:
    """A hospital's metrics of the final model on its own hold-out."""

    run: str
    hospital: str
    metrics: dict[str, float] = field(default_factory=dict)


Message = (
    Hello | RoundStarted | UpdateSubmitted | UpdateFailed | RunFinished | RunAborted | FinalReport
)
_TYPES: Final[dict[str, type[Message]]] = {
    cls.__name__: cls
    for cls in (
        Hello,
        RoundStarted,
        UpdateSubmitted,
        UpdateFailed,
        RunFinished,
        RunAborted,
        FinalReport,
    )
}
# Expected JSON types per field; "ref" allows str or None.
_FIELD_KINDS: Final = {
    "run": str,
    "hospital": str,
    "round": int,
    "rounds": int,
    "deadline": float,
    "config_digest": str,
    "global_ref": "ref",
    "global_sha256": "ref",
    "blob_ref": str,
    "sha256": str,
    "final_ref": str,
    "final_sha256": str,
    "error": str,
    "reason": str,
    "metrics": dict,
}


def encode(message: Message) -> bytes:
    """Serialize a message as canonical JSON with its type and the protocol version."""
    body = {"type": type(message).__name__, "v": PROTOCOL_VERSION, **asdict(message)}
    if "metrics" in body:  # NaN (e.g. AUC of a one-class hold-out) travels as null
        body["metrics"] = {k: v if math.isfinite(v) else None for k, v in body["metrics"].items()}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _finite_float(value: Any) -> float | None:
    """The value as a finite float, or None if it is not a finite JSON number (bools excluded)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)  # an int of hundreds of digits overflows
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _check_field(type_name: str, name: str, value: Any) -> Any:
    kind = _FIELD_KINDS[name]
    if kind == "ref":
        if value is None or isinstance(value, str):
            return value
    elif kind is float:
        number = _finite_float(value)
        if number is not None:
            return number
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    elif kind is dict:
        if isinstance(value, dict) and all(
            isinstance(k, str) and (v is None or _finite_float(v) is not None)
            for k, v in value.items()
        ):
            return {k: (math.nan if v is None else float(v)) for k, v in value.items()}
    elif isinstance(value, str) and value:
        return value
    raise ProtocolError(f"{type_name}: field {name!r} has an invalid value {value!r:.80}")


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"message contains {name}, which is not JSON")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate keys would let two readers of one (signed) message see different values.
    body = dict(pairs)
    if len(body) != len(pairs):
        duplicated = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        raise ProtocolError(f"message repeats the keys {duplicated!r:.80}")
    return body


def decode(data: bytes) -> Message:
    """Parse and validate one message; anything malformed raises ProtocolError."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        body = json.loads(
            data.decode("utf-8"),
            parse_constant=_reject_constant,
            object_pairs_hook=_unique_object,
        )
    except (ValueError, RecursionError) as exc:  # also: integers beyond the digit limit
        raise ProtocolError(f"message is not UTF-8 JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ProtocolError("message is not a JSON object")
    type_name = body.pop("type", None)
    version = body.pop("v", None)
    cls = _TYPES.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {type_name!r:.60}")
    if type(version) is not int or version != PROTOCOL_VERSION:  # true == 1, 1.0 == 1
        raise ProtocolError(f"{type_name}: protocol version {version!r} is not {PROTOCOL_VERSION}")
    names = {f.name for f in fields(cls)}
    missing = sorted(names - body.keys())
    extra = sorted(body.keys() - names)
    if missing or extra:
        raise ProtocolError(f"{type_name}: missing fields {missing}, unexpected fields {extra}")
    values = {name: _check_field(type_name, name, body[name]) for name in names}
    return cls(**values)
