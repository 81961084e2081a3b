"""A hospital killed after its update was accepted loses nothing and corrupts nothing.

Encryption is randomized, so a restarted hospital that encrypted its (retrained, identical)
update again would overwrite the accepted blob with other bytes, and a coordinator restarted in
that round could not re-add it. The reply journal makes the restarted hospital publish the signed
reply it sent before, leaving the blob alone. Real CKKS where the randomness matters; the
plaintext cipher elsewhere.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.crypto import HEConfig, ckks_parameters, open_aggregator, open_cipher, run_key_ceremony
from common.errors import StoreError
from common.protocol import layout
from common.protocol.messages import UpdateReady, UpdateSubmitted
from common.store import InMemoryStore, sha256_hex
from common.transport import SUBMIT, Handler, Transport
from hospital_node.journal import JOURNAL_DIR, MAX_ENTRY_BYTES, Journal, JournalError
from hospital_node.service import Hospital
from tests.protocol.test_masked_rounds import GoneAfterReady
from tests.protocol.test_round_protocol import FOUR, Cluster, codec, make_plan, reference_fedavg

RUN = "run-1"
THREE = ("h1", "h2", "h3")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ckks")
    run_key_ceremony(HEConfig(**ckks_parameters(56)), root / "hospital", root / "coordinator")
    return root


class Killable(Hospital):
    """A hospital process that can be killed: from then on it handles nothing."""

    killed = False

    def handle(self, body: bytes) -> None:
        if not self.killed:
            super().handle(body)


def journal_of(root: Path, name: str) -> Journal:
    return Journal(root / name / JOURNAL_DIR)


def update_sha(store: InMemoryStore, name: str, round_: int = 1) -> str:
    return sha256_hex(store.get(layout.update_key(RUN, round_, name)))


def restart(cluster: Cluster, name: str, **options: object) -> None:
    """Kill ``name``'s process and start a new one, which says hello like a restarted pod."""
    old = cluster.hospitals[name]
    assert isinstance(old, Killable)
    old.killed = True
    cluster.add_hospital(name, hello=True, **options)  # type: ignore[arg-type]


# -- the restart of an accepted hospital, then of the coordinator --------------------------------


def test_a_restarted_hospital_resends_its_reply_and_a_restarted_coordinator_still_resumes(
    keys: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, state_store, plan = InMemoryStore(), InMemoryStore(), make_plan(rounds=1)
    first = Cluster(store=store, plan=plan, state_store=state_store)
    for name in ("h1", "h2"):  # h3 is slow to start: the round stays open
        first.add_hospital(
            name,
            cipher=open_cipher(keys / "hospital"),
            journal=journal_of(tmp_path, name),
            kind=Killable,
        )
    coordinator = first.start_coordinator(open_aggregator(keys / "coordinator"))
    first.transport.deliver_all()
    accepted = {entry.hospital: entry.sha256 for entry in coordinator.state.accepted}
    assert set(accepted) == {"h1", "h2"} and coordinator.state.round == 1

    with caplog.at_level(logging.INFO, logger="hefl.hospital"):
        restart(
            first, "h1", cipher=open_cipher(keys / "hospital"), journal=journal_of(tmp_path, "h1")
        )
        first.transport.deliver_all()
    assert update_sha(store, "h1") == accepted["h1"]  # the accepted blob keeps its bytes
    assert coordinator.state.rejected == {}  # the resent reply is a repeated delivery
    assert "update_resent run=run-1 hospital=h1 round=1 attempt=0" in caplog.text

    # The coordinator is restarted in the same round (its hospitals reconnect: new processes).
    second = Cluster(store=store, plan=plan, state_store=state_store)
    for name in THREE:
        second.add_hospital(
            name, cipher=open_cipher(keys / "hospital"), journal=journal_of(tmp_path, name)
        )
    resumed = second.start_coordinator(open_aggregator(keys / "coordinator"))
    assert {e.hospital: e.sha256 for e in resumed.state.accepted} == accepted
    second.run_to_end()
    assert resumed.state.phase == "done", resumed.state.error
    assert set(resumed.state.history[0].accepted) == set(THREE)
    assert resumed.state.rejected == {}
    expected = reference_fedavg(THREE, 1)
    for hospital in second.hospitals.values():
        assert hospital.final_weights is not None
        np.testing.assert_allclose(hospital.final_weights, expected, atol=1e-6)


def test_without_a_journal_the_restart_overwrites_the_accepted_blob(keys: Path) -> None:
    # The hazard the journal removes, shown on the same steps (so the test above tests it).
    store, state_store, plan = InMemoryStore(), InMemoryStore(), make_plan(rounds=1)
    first = Cluster(store=store, plan=plan, state_store=state_store)
    for name in ("h1", "h2"):
        first.add_hospital(name, cipher=open_cipher(keys / "hospital"), kind=Killable)
    coordinator = first.start_coordinator(open_aggregator(keys / "coordinator"))
    first.transport.deliver_all()
    accepted = {entry.hospital: entry.sha256 for entry in coordinator.state.accepted}
    restart(first, "h1", cipher=open_cipher(keys / "hospital"))
    first.transport.deliver_all()
    assert update_sha(store, "h1") != accepted["h1"]
    assert coordinator.state.rejected == {"duplicate": 1}
    second = Cluster(store=store, plan=plan, state_store=state_store)
    with pytest.raises(StoreError, match="does not match"):
        second.start_coordinator(open_aggregator(keys / "coordinator"))


def test_a_masked_restart_resends_its_attempt_and_masks_a_new_attempt_afresh(
    keys: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, state_store = InMemoryStore(), InMemoryStore()
    plan = make_plan(hospitals=FOUR, rounds=1, masking=True, mask_timeout=30.0)
    first = Cluster(store=store, plan=plan, state_store=state_store)
    for name in FOUR:  # h4 says it is ready, then dies: the set of four never completes
        first.add_hospital(
            name,
            cipher=open_cipher(keys / "hospital"),
            journal=journal_of(tmp_path, name),
            kind=GoneAfterReady if name == "h4" else Killable,
        )
    coordinator = first.start_coordinator(open_aggregator(keys / "coordinator"))
    first.transport.deliver_all()
    assert coordinator.state.participants == FOUR and coordinator.state.attempt == 1
    accepted = {entry.hospital: entry.sha256 for entry in coordinator.state.accepted}
    assert set(accepted) == set(THREE)

    with caplog.at_level(logging.INFO, logger="hefl.hospital"):
        restart(
            first, "h1", cipher=open_cipher(keys / "hospital"), journal=journal_of(tmp_path, "h1")
        )
        first.transport.deliver_all()
    assert update_sha(store, "h1") == accepted["h1"]
    assert "update_resent run=run-1 hospital=h1 round=1 attempt=1" in caplog.text
    assert coordinator.state.rejected == {}

    # The coordinator restarts; h4 is gone for good, so the mask deadline drops it.
    second = Cluster(store=store, plan=plan, state_store=state_store, now=first.now)
    for name in THREE:
        second.add_hospital(
            name, cipher=open_cipher(keys / "hospital"), journal=journal_of(tmp_path, name)
        )
    resumed = second.start_coordinator(open_aggregator(keys / "coordinator"))
    second.transport.deliver_all()
    assert {e.hospital: e.sha256 for e in resumed.state.accepted} == accepted
    second.now[0] += 31.0
    resumed.tick()
    assert resumed.state.attempt == 2 and resumed.state.participants == THREE
    second.run_to_end()
    assert resumed.state.phase == "done", resumed.state.error
    record = resumed.state.history[0]
    assert (record.attempts, set(record.accepted), record.failed) == (2, set(THREE), ("h4",))
    expected = reference_fedavg(THREE, 1)
    final = second.hospitals["h1"].final_weights
    assert final is not None
    np.testing.assert_allclose(final, expected, atol=1e-6)
    # Attempt 2 was masked afresh and journaled next to attempt 1.
    assert journal_of(tmp_path, "h1").get(RUN, 1, 2) is not None


# -- the journal's own faults ---------------------------------------------------------------------


class LosesUpdates:
    """A hospital's connection that dies with the process right before an update goes out."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def publish(self, topic: str, body: bytes) -> None:
        if not (topic == SUBMIT and isinstance(codec("h1").decode(body), UpdateSubmitted)):
            self._transport.publish(topic, body)

    def subscribe(self, topic: str, handler: Handler) -> None:
        self._transport.subscribe(topic, handler)


class DiesBeforePublishing(Killable):
    """Puts its blob and journals its reply, then is killed before the reply goes out."""

    def __init__(self, name: str, *, transport: Transport, **options: Any) -> None:
        super().__init__(name, transport=LosesUpdates(transport), **options)  # type: ignore[arg-type]


def test_a_reply_journaled_but_never_published_is_published_after_a_restart(
    tmp_path: Path,
) -> None:
    cluster = Cluster(store=InMemoryStore(), plan=make_plan(rounds=1))
    journal = journal_of(tmp_path, "h1")
    cluster.add_hospital("h1", journal=journal, kind=DiesBeforePublishing)
    cluster.add_hospital("h2")  # h3 is slow to start: the round stays open
    coordinator = cluster.start_coordinator()
    cluster.transport.deliver_all()
    assert coordinator.state.accepted_hospitals == ("h2",)
    journaled = journal.get(RUN, 1, 0)
    assert journaled is not None
    blob = cluster.store.get(layout.update_key(RUN, 1, "h1"))

    restart(cluster, "h1", journal=journal)
    cluster.transport.deliver_all()
    entry = next(e for e in coordinator.state.accepted if e.hospital == "h1")
    assert entry.envelope.encode() == journaled  # the journaled reply, not a new upload
    assert entry.sha256 == sha256_hex(blob) == update_sha(cluster.store, "h1")
    cluster.add_hospital("h3", hello=True)
    cluster.run_to_end()
    assert coordinator.state.phase == "done", coordinator.state.error
    assert coordinator.state.rejected == {}


def test_a_damaged_journal_entry_is_ignored_with_a_warning_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = Cluster(store=InMemoryStore(), plan=make_plan(rounds=1))
    journal = journal_of(tmp_path, "h1")
    journal.folder.mkdir(parents=True)
    damaged = journal.path(RUN, 1, 0)
    damaged.write_bytes(b'{"signer": "h1", "body"')  # cut short by a failing disk
    cluster.add_hospital("h1", journal=journal)
    for name in ("h2", "h3"):
        cluster.add_hospital(name)
    coordinator = cluster.start_coordinator()
    with caplog.at_level(logging.WARNING, logger="hefl.hospital"):
        cluster.run_to_end()
    assert coordinator.state.phase == "done", coordinator.state.error
    warnings = [r.getMessage() for r in caplog.records if "journal_entry_ignored" in r.getMessage()]
    assert len(warnings) == 1 and str(damaged) in warnings[0]
    assert "hospital=h1" in warnings[0] and "round=1" in warnings[0]
    # The node answered as without a journal, and journaled that answer over the damaged entry.
    assert journal.submission(codec("h1"), RUN, 1, 0) is not None


def test_another_hospitals_reply_in_the_journal_is_not_resent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A swapped file (a restored backup of another site, or a tampered folder) is not h1's answer.
    foreign = codec("h2").encode(UpdateReady(run=RUN, round=1, hospital="h2"))
    journal = journal_of(tmp_path, "h1")
    journal.record(RUN, 1, 0, foreign)
    cluster = Cluster(store=InMemoryStore(), plan=make_plan(rounds=1))
    for name in THREE:
        cluster.add_hospital(name, journal=journal if name == "h1" else None)
    coordinator = cluster.start_coordinator()
    with caplog.at_level(logging.WARNING, logger="hefl.hospital"):
        cluster.run_to_end()
    assert coordinator.state.phase == "done" and coordinator.state.rejected == {}
    assert "journal_entry_ignored" in caplog.text and "not the submission of h1" in caplog.text


def test_the_journal_keeps_only_the_round_last_answered(tmp_path: Path) -> None:
    cluster = Cluster(store=InMemoryStore(), plan=make_plan(rounds=3))
    for name in THREE:
        cluster.add_hospital(name, journal=journal_of(tmp_path, name))
    cluster.start_coordinator()
    coordinator = cluster.run_to_end()
    assert coordinator.state.phase == "done", coordinator.state.error
    for name in THREE:
        journal = journal_of(tmp_path, name)
        assert [p.name for p in journal.folder.iterdir()] == [journal.path(RUN, 3, 0).name]


# -- the journal on its own ----------------------------------------------------------------------


def test_a_recorded_reply_reads_back_byte_for_byte(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "h1" / JOURNAL_DIR)
    assert journal.get(RUN, 1, 0) is None  # nothing yet, not even the folder
    journal.record(RUN, 1, 0, b"reply one")
    journal.record(RUN, 1, 1, b"reply two")
    assert journal.get(RUN, 1, 0) == b"reply one" and journal.get(RUN, 1, 1) == b"reply two"
    assert journal.get(RUN, 2, 0) is None and journal.get("run-2", 1, 0) is None
    journal.record(RUN, 1, 0, b"replaced")
    assert journal.get(RUN, 1, 0) == b"replaced"


def test_journal_files_are_private(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "h1" / JOURNAL_DIR)
    journal.record(RUN, 1, 0, b"reply")
    assert stat.S_IMODE(os.stat(journal.path(RUN, 1, 0)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(journal.folder).st_mode) == 0o700


def test_a_write_killed_midway_leaves_no_entry_and_its_debris_goes(tmp_path: Path) -> None:
    journal = Journal(tmp_path / JOURNAL_DIR)
    journal.record(RUN, 1, 0, b"whole reply")
    # What write_atomic leaves when the process dies before its rename: a temporary file only.
    debris = journal.folder / f".{journal.path(RUN, 2, 0).name}.x1y2.tmp"
    debris.write_bytes(b"half a re")
    assert journal.get(RUN, 2, 0) is None and journal.get(RUN, 1, 0) == b"whole reply"
    journal.record(RUN, 2, 0, b"round two")
    assert sorted(p.name for p in journal.folder.iterdir()) == [journal.path(RUN, 2, 0).name]


def test_recording_a_round_removes_earlier_rounds_and_other_runs_only(tmp_path: Path) -> None:
    journal = Journal(tmp_path / JOURNAL_DIR)
    journal.folder.mkdir()
    for run, round_, attempt in ((RUN, 1, 0), (RUN, 2, 1), ("run-0", 5, 0)):
        journal.path(run, round_, attempt).write_bytes(b"old")  # left by earlier processes
    notes = journal.folder / "README"  # not the journal's: left alone
    notes.write_text("operator notes")
    journal.record(RUN, 2, 2, b"new")
    assert journal.get(RUN, 1, 0) is None and journal.get("run-0", 5, 0) is None
    assert journal.get(RUN, 2, 1) == b"old" and journal.get(RUN, 2, 2) == b"new"
    assert notes.exists()


def test_unreadable_or_unwritable_entries_raise_journal_errors_naming_the_file(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / JOURNAL_DIR)
    journal.folder.mkdir()
    journal.path(RUN, 1, 0).mkdir()  # a folder where the entry should be
    with pytest.raises(JournalError, match=str(journal.path(RUN, 1, 0))):
        journal.get(RUN, 1, 0)
    journal.path(RUN, 2, 0).write_bytes(b"x" * (MAX_ENTRY_BYTES + 1))
    with pytest.raises(JournalError, match="exceeds"):
        journal.get(RUN, 2, 0)
    blocked = Journal(tmp_path / "a-file" / JOURNAL_DIR)
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(JournalError, match="cannot write"):
        blocked.record(RUN, 1, 0, b"reply")


def test_only_this_hospitals_signed_submission_for_the_attempt_is_resent(tmp_path: Path) -> None:
    journal = Journal(tmp_path / JOURNAL_DIR)
    submitted = UpdateSubmitted(
        run=RUN, round=1, hospital="h1", blob_ref="k", sha256="0" * 64, attempt=1, metrics={}
    )
    journal.record(RUN, 1, 1, codec("h1").encode(submitted))
    assert journal.submission(codec("h1"), RUN, 1, 1) == codec("h1").encode(submitted)
    journal.record(RUN, 1, 2, codec("h1").encode(submitted))  # filed under another attempt
    with pytest.raises(JournalError, match="not the submission"):
        journal.submission(codec("h1"), RUN, 1, 2)
    journal.record(RUN, 1, 1, codec("h1").encode(submitted).replace(b"h1", b"h2", 1))
    with pytest.raises(JournalError, match="damaged"):
        journal.submission(codec("h1"), RUN, 1, 1)
    assert journal.submission(codec("h1"), RUN, 1, 3) is None
