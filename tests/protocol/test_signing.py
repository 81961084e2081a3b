"""Ed25519 identities, the trust file and the signed envelope."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from common.errors import KeyBundleError, ProtocolError
from common.protocol.messages import FinalReport, RoundStarted, UpdateFailed, encode
from common.protocol.signing import (
    SIGNING_KEY_FILE,
    TRUST_FILE,
    MessageCodec,
    SignatureError,
    generate_identities,
    issue_identities,
    load_identity,
    load_trust,
)

IDS, TRUST = generate_identities(["h1", "h2"])
ANNOUNCE = RoundStarted(
    run="r", round=2, global_ref="k", global_sha256="s", deadline=5.0, config_digest="d"
)
REPORT = FinalReport(run="r", hospital="h1", metrics={"auc": 0.7})


def codec(name: str) -> MessageCodec:
    return MessageCodec(IDS[name], TRUST)


def test_a_signed_message_round_trips() -> None:
    assert codec("h2").decode(codec("coordinator").encode(ANNOUNCE)) == ANNOUNCE
    assert codec("coordinator").decode(codec("h1").encode(REPORT)) == REPORT


def test_a_tampered_body_does_not_verify() -> None:
    envelope = json.loads(codec("h1").encode(REPORT))
    envelope["body"] = envelope["body"].replace("0.7", "0.9")
    with pytest.raises(SignatureError, match="does not verify"):
        codec("coordinator").decode(json.dumps(envelope).encode())


def test_an_unsigned_message_is_rejected() -> None:
    with pytest.raises(SignatureError, match="unsigned"):
        codec("coordinator").decode(encode(REPORT))


def test_a_hospital_cannot_speak_for_another_or_announce_rounds() -> None:
    forged = UpdateFailed(run="r", round=1, hospital="h2", error="x")
    with pytest.raises(SignatureError, match="signed by h1"):
        codec("coordinator").decode(codec("h1").encode(forged))
    with pytest.raises(SignatureError, match="signed by h1"):
        codec("h2").decode(codec("h1").encode(ANNOUNCE))


def test_a_signer_outside_the_trust_file_is_rejected() -> None:
    other_ids, other_trust = generate_identities(["h3"])
    stranger = MessageCodec(other_ids["h3"], other_trust)
    report = FinalReport(run="r", hospital="h3", metrics={})
    with pytest.raises(SignatureError, match="not in the trust file"):
        codec("coordinator").decode(stranger.encode(report))


def test_a_same_named_impostor_fails_the_signature_check() -> None:
    other_ids, other_trust = generate_identities(["h1"])
    impostor = MessageCodec(other_ids["h1"], other_trust)
    with pytest.raises(SignatureError, match="does not verify"):
        codec("coordinator").decode(impostor.encode(REPORT))


@pytest.mark.parametrize("data", [b"", b"[1]", b'{"signer": 1, "body": "", "sig": ""}', b"\xff"])
def test_garbage_envelopes_raise_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        codec("coordinator").decode(data)


def test_issued_identities_load_back_with_private_files(tmp_path: Path) -> None:
    issue_identities(tmp_path, ["hospital-1", "hospital-2"])
    trust = load_trust(tmp_path / TRUST_FILE)
    assert trust.hospitals == ("hospital-1", "hospital-2")
    assert trust.role_of("coordinator") == "coordinator"
    for name in ("coordinator", "hospital-1", "hospital-2"):
        path = tmp_path / name / SIGNING_KEY_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        identity = load_identity(path, name)
        MessageCodec(identity, trust)  # key matches the trust file
    sender = MessageCodec(
        load_identity(tmp_path / "hospital-1" / SIGNING_KEY_FILE, "hospital-1"), trust
    )
    receiver = MessageCodec(
        load_identity(tmp_path / "coordinator" / SIGNING_KEY_FILE, "coordinator"), trust
    )
    report = FinalReport(run="r", hospital="hospital-1", metrics={})
    assert receiver.decode(sender.encode(report)) == report


def test_a_key_that_does_not_match_the_trust_file_is_refused(tmp_path: Path) -> None:
    issue_identities(tmp_path, ["hospital-1"])
    trust = load_trust(tmp_path / TRUST_FILE)
    with pytest.raises(KeyBundleError, match="does not match"):
        MessageCodec(IDS["coordinator"], trust)


def test_a_malformed_trust_file_names_the_problem(tmp_path: Path) -> None:
    path = tmp_path / TRUST_FILE
    path.write_text('{"participants": {"coordinator": {"role": "boss", "ed25519": ""}}}')
    with pytest.raises(KeyBundleError, match="unknown role"):
        load_trust(path)
    path.write_text("not json")
    with pytest.raises(KeyBundleError, match="cannot read the trust file"):
        load_trust(path)


# -- masking keys: issued with the signing keys, one per hospital ---------------------------------


def test_hospitals_get_a_masking_key_and_the_coordinator_none(tmp_path: Path) -> None:
    issue_identities(tmp_path, ["hospital-1", "hospital-2", "hospital-3"])
    trust = load_trust(tmp_path / TRUST_FILE)
    assert set(trust.masking) == {"hospital-1", "hospital-2", "hospital-3"}
    listed = json.loads((tmp_path / TRUST_FILE).read_text())["participants"]
    assert "x25519" not in listed["coordinator"] and "x25519" in listed["hospital-2"]
    coordinator = load_identity(tmp_path / "coordinator" / SIGNING_KEY_FILE, "coordinator")
    assert coordinator.masking is None
    with pytest.raises(KeyBundleError, match="holds no masking key"):
        MessageCodec(coordinator, trust).pairwise_masks()
    own = load_identity(tmp_path / "hospital-1" / SIGNING_KEY_FILE, "hospital-1")
    masks = MessageCodec(own, trust).pairwise_masks()
    assert masks.me == "hospital-1" and "peers=2" in repr(masks)


def test_an_identity_file_of_before_masking_is_refused_with_what_to_do(tmp_path: Path) -> None:
    issue_identities(tmp_path, ["hospital-1", "hospital-2", "hospital-3"])
    path = tmp_path / "hospital-1" / SIGNING_KEY_FILE
    first_block = path.read_bytes().split(b"-----END PRIVATE KEY-----")[0]
    path.write_bytes(first_block + b"-----END PRIVATE KEY-----\n")  # the Ed25519 key alone
    trust = load_trust(tmp_path / TRUST_FILE)
    codec = MessageCodec(load_identity(path, "hospital-1"), trust)  # it can still sign
    with pytest.raises(KeyBundleError, match="re-issue the identities with hefl keygen"):
        codec.pairwise_masks()


def test_identity_files_with_wrong_keys_are_refused(tmp_path: Path) -> None:
    issue_identities(tmp_path, ["hospital-1", "hospital-2", "hospital-3"])
    one = tmp_path / "hospital-1" / SIGNING_KEY_FILE
    two = tmp_path / "hospital-2" / SIGNING_KEY_FILE
    doubled = tmp_path / "doubled.pem"
    doubled.write_bytes(one.read_bytes() + one.read_bytes())
    with pytest.raises(KeyBundleError, match="found 4 keys"):
        load_identity(doubled, "hospital-1")
    truncated = tmp_path / "truncated.pem"
    truncated.write_bytes(one.read_bytes()[:-40])
    with pytest.raises(KeyBundleError, match="outside complete PEM blocks"):
        load_identity(truncated, "hospital-1")
    # hospital-1's signing key with hospital-2's masking key: the trust file tells them apart.
    mixed = tmp_path / "mixed.pem"
    mixed.write_bytes(
        one.read_bytes().split(b"-----END PRIVATE KEY-----")[0]
        + b"-----END PRIVATE KEY-----\n"
        + two.read_bytes().split(b"-----END PRIVATE KEY-----\n")[1]
        + b"-----END PRIVATE KEY-----\n"
    )
    trust = load_trust(tmp_path / TRUST_FILE)
    with pytest.raises(KeyBundleError, match="masking key of hospital-1 does not match"):
        MessageCodec(load_identity(mixed, "hospital-1"), trust)


def test_a_trust_file_without_a_peer_masking_key_is_refused_by_name(tmp_path: Path) -> None:
    issue_identities(tmp_path, ["hospital-1", "hospital-2", "hospital-3"])
    listed = json.loads((tmp_path / TRUST_FILE).read_text())
    del listed["participants"]["hospital-3"]["x25519"]
    (tmp_path / TRUST_FILE).write_text(json.dumps(listed))
    trust = load_trust(tmp_path / TRUST_FILE)
    own = load_identity(tmp_path / "hospital-1" / SIGNING_KEY_FILE, "hospital-1")
    with pytest.raises(KeyBundleError, match="no masking key for hospital-3"):
        MessageCodec(own, trust).pairwise_masks()
