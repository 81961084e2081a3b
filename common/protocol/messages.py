"""Control messages of the round protocol and their versioned JSON wire format.

Messages are small: they name blobs in the store (by key and SHA-256) and carry metrics, never
weights or patient data. ``decode`` checks the whole shape of a message before anything acts on
it, so garbage or a message of another schema is a ``ProtocolError`` naming what is wrong.

The field types below are the wire schema: pydantic validates each field strictly (no ``"1"``
for 1, no ``true`` for 1), floats must be finite, and unknown fields are refused. The checks
pydantic cannot make on parsed JSON (size, repeated keys, ``NaN`` literals) run before it.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Annotated, Any, Final

from pydantic import (
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    with_config,
)

from common.errors import ProtocolError
from common.validation import explain, missing_field, quoted_path

PROTOCOL_VERSION: Final = 1
MAX_MESSAGE_BYTES: Final = 64 * 1024


def _null_as_nan(value: Any, handler: ValidatorFunctionWrapHandler) -> float:
    # An undefined metric (e.g. the AUC of a one-class hold-out) travels as null.
    return math.nan if value is None else handler(value)


#: ``Hello.run`` of a hospital that follows whatever run its coordinator announces.
FOLLOW_RUN: Final = "*"
Name = Annotated[str, Strict(), Field(min_length=1)]  # a run, hospital, store key, digest, reason
Ref = Annotated[str, Strict()] | None  # a store key or digest; None before round 1's aggregate
Count = Annotated[int, Strict(), Field(ge=0)]
Seconds = Annotated[float, Strict()]  # finite: see _WIRE
Metrics = dict[str, Annotated[float, Strict(), WrapValidator(_null_as_nan)]]

# Fields are strict one by one: a strict dataclass would take only instances, not parsed JSON.
_WIRE: Final = ConfigDict(extra="forbid", allow_inf_nan=False)


@with_config(_WIRE)
@dataclass(frozen=True, kw_only=True)
class Hello:
    """A hospital announces that it is ready to take part in a run."""

    run: Name
    hospital: Name


@with_config(_WIRE)
@dataclass(frozen=True, kw_only=True)
class RoundStarted:
    """The coordinator opens a round; ``global_ref`` is None in round 1 (initial weights).

    ``history_sha256`` chains the aggregates of rounds 1..round-1 (``common.protocol.history``;
    ``""`` in round 1), so a hospital that replays them to rebuild its server optimizer's
    state knows each is the one the coordinator wrote. None (a coordinator from before server
    optimizers) lets a hospital build only the next round's model, not replay."""

    run: Name
    round: Count
    global_ref: Ref
    global_sha256: Ref
    deadline: Seconds
    config_digest: Name
    history_sha256: Ref = None


@with_config(_WIRE)
@dataclass(frozen=True, kw_only=True)
class UpdateReady:
    """A hospital of a masked run trained its update and waits for the round's participants."""

    run: Name
    round: Count
    hospital: Name


@with_config(_WIRE)
@dataclass(frozen=True, kw_only=True)
class ParticipantsFixed:
    """The coordinator fixes who masks with whom in this attempt of a round; they upload by
    ``deadline``. A later attempt (after a dropout) names the survivors, who mask afresh."""

    run: Name
    round: Count
    attempt: Count
    participants: tuple[Name, ...]
    deadline: Seconds


@with_config(_WIRE)
@dataclass(frozen=True, kw_only=True)
class UpdateSubmitted:
    """A hospital uploaded its encrypted weighted model; metrics are of the model it received.
    ``attempt`` names the participant set it masked for (0: an unmasked run)."""

    run: Name
    round: Count
    hospital: Name
    blob_ref: Name
    sha256: Name
    attempt: Count = 0
    metrics: Metrics = field(default_factory=dict)


@with_config(_WIRE)
@dataclass(frozen=True, kw_only=True)
class UpdateFailed:
    """A hospital could not produce an update this round (an error reply, not silence)."""

    run: Name
    round: Count
    hospital: Name
    error: Name


@with_config(_WIRE)
@dataclass(frozen=True, kw_only=True)
class RunFinished:
    """The run is over after ``rounds`` rounds; hospitals decrypt and keep the final model.

    The final model is the global model after round ``final_round``, whose aggregate is
    ``final_ref``: the last round, or with early stopping the round whose model had the lowest
    mean hold-out loss. ``history_sha256`` chains the aggregates of rounds 1..final_round
    (``common.protocol.history``) for the hospitals that replay them. Both are None from a
    coordinator before early stopping: the final model is then the last round's."""

    run: Name
    rounds: Count
    final_ref: Name
    final_sha256: Name
    config_digest: Name
    final_round: Count | None = None
    history_sha256: Ref = None

    def __post_init__(self) -> None:
        if self.final_round is not None and not 1 <= self.final_round <= self.rounds:
            raise ValueError(
                f"final_round must be within 1..rounds ({self.rounds}), got {self.final_round}"
            )

    @property
    def model_round(self) -> int:
        """The round whose global model is the run's final model."""
        return self.rounds if self.final_round is None else self.final_round


@with_config(_WIRE)
@dataclass(frozen=True, kw_only=True)
class RunAborted:
    """The coordinator gave up on the run (e.g. no quorum by a deadline); hospitals stop."""

    run: Name
    reason: Name


@with_config(_WIRE)
@dataclass(frozen=True, kw_only=True)
class FinalReport:
    """A hospital's metrics of the final model on its own hold-out."""

    run: Name
    hospital: Name
    metrics: Metrics = field(default_factory=dict)


Message = (
    Hello
    | RoundStarted
    | UpdateReady
    | ParticipantsFixed
    | UpdateSubmitted
    | UpdateFailed
    | RunFinished
    | RunAborted
    | FinalReport
)
MESSAGE_TYPES: Final[tuple[type[Message], ...]] = (
    Hello,
    RoundStarted,
    UpdateReady,
    ParticipantsFixed,
    UpdateSubmitted,
    UpdateFailed,
    RunFinished,
    RunAborted,
    FinalReport,
)
_CLASSES: Final = {cls.__name__: cls for cls in MESSAGE_TYPES}
# Fields added within protocol version 1. Every sender now writes them; one from before leaves
# them out, which means their default (the behaviour before them), not a cut message.
_ADDED_FIELDS: Final[dict[type[Message], tuple[str, ...]]] = {
    RoundStarted: ("history_sha256",),
    RunFinished: ("final_round", "history_sha256"),
}
_ADAPTERS: Final[dict[type[Message], TypeAdapter[Message]]] = {
    cls: TypeAdapter(cls) for cls in MESSAGE_TYPES
}


def encode(message: Message) -> bytes:
    """Serialize a message as canonical JSON with its type and the protocol version."""
    body = {"type": type(message).__name__, "v": PROTOCOL_VERSION, **asdict(message)}
    if "metrics" in body:  # NaN (e.g. AUC of a one-class hold-out) travels as null
        body["metrics"] = {k: v if math.isfinite(v) else None for k, v in body["metrics"].items()}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def decode(data: bytes) -> Message:
    """Parse and validate one message; anything malformed raises ProtocolError."""
    body = _parse(data)
    type_name = body.pop("type", None)
    version = body.pop("v", None)
    cls = _CLASSES.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {type_name!r:.60}")
    if type(version) is not int or version != PROTOCOL_VERSION:  # true == 1, 1.0 == 1
        raise ProtocolError(f"{type_name}: protocol version {version!r} is not {PROTOCOL_VERSION}")
    try:
        message = _ADAPTERS[cls].validate_python(body)
    except ValidationError as exc:
        allowed = [f.name for f in fields(cls)]
        raise ProtocolError(
            f"{type_name}: {explain(exc, quoted_path, allowed=lambda _: allowed)}"
        ) from exc
    added = dict.fromkeys(_ADDED_FIELDS.get(cls, ()))
    missing = missing_field(message, {**added, **body}, quoted_path)
    if missing:
        raise ProtocolError(f"{type_name}: {missing}")
    return message


def _parse(data: bytes) -> dict[str, Any]:
    """The JSON object in ``data``, refusing what JSON parsers disagree on or should not take."""
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
    return body


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"message contains {name}, which is not JSON")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate keys would let two readers of one (signed) message see different values.
    body = dict(pairs)
    if len(body) != len(pairs):
        duplicated = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        raise ProtocolError(f"message repeats the keys {duplicated!r:.80}")
    return body
