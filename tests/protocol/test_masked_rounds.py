"""Masked rounds end to end over the in-memory transport, with real CKKS and real Keras training.

The participant set is fixed and signed by the coordinator before anyone masks; a dropout after
that costs one re-mask of the survivors' already trained updates, never the round; a hospital
with the secret key and a copy of the store reads noise from another's upload, while the run
still reproduces plaintext FedAvg.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from common.crypto import (
    Cipher,
    HEConfig,
    ckks_parameters,
    open_aggregator,
    open_cipher,
    run_key_ceremony,
)
from common.crypto.aggregator import Aggregator
from common.crypto.masking import Cohort, Masker, PairwiseMasks
from common.errors import BlobError, ValueRangeError
from common.protocol import layout
from common.protocol.messages import (
    Hello,
    ParticipantsFixed,
    UpdateFailed,
    UpdateReady,
    UpdateSubmitted,
)
from common.store import InMemoryStore
from common.transport import ANNOUNCE, SUBMIT
from hospital_node.service import Hospital
from tests.protocol.test_round_protocol import FOUR, Cluster, codec, make_plan, reference_fedavg


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ckks")
    # Tens of rows per hospital: the 56-bit chain keeps their average exact (docs/encoding.md).
    run_key_ceremony(HEConfig(**ckks_parameters(56)), root / "hospital", root / "coordinator")
    return root


class RecordingCipher:
    """A hospital's real cipher that remembers what it was asked to encrypt (the truth the
    curious hospital tries to recover)."""

    def __init__(self, cipher: Cipher) -> None:
        self._cipher = cipher
        self.encrypted: list[np.ndarray] = []

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._cipher, name)

    def encrypt(self, values: np.ndarray, **options: object) -> bytes:
        self.encrypted.append(np.array(values, dtype=np.float64))
        return self._cipher.encrypt(values, **options)  # type: ignore[arg-type]


class CopyingStore(InMemoryStore):
    """A store whose provider (or a curious hospital's backup) keeps a copy of every blob."""

    def __init__(self) -> None:
        super().__init__()
        self.copies: dict[str, list[bytes]] = {}

    def put(self, key: str, data: bytes) -> None:
        self.copies.setdefault(key, []).append(bytes(data))
        super().put(key, data)


class GoneAfterReady(Hospital):
    """Trains and says it is ready, then is killed: it never answers the participant set, nor
    anything after it."""

    fixed_seen: ParticipantsFixed | None = None

    def handle(self, body: bytes) -> None:
        if self.fixed_seen is None:
            super().handle(body)

    def _on_participants(self, msg: ParticipantsFixed) -> None:
        self.fixed_seen = msg


def masked_cluster(keys: Path, store: InMemoryStore | None = None, **plan: object) -> Cluster:
    values = {"hospitals": FOUR, "rounds": 2, "masking": True, "mask_timeout": 30.0, **plan}
    return Cluster(store=store or InMemoryStore(), plan=make_plan(**values))


def add_all(cluster: Cluster, keys: Path, **kinds: type[Hospital]) -> None:
    for name in cluster.plan.hospitals:
        cipher = RecordingCipher(open_cipher(keys / "hospital"))
        cluster.add_hospital(name, cipher=cipher, kind=kinds.get(name, Hospital))


def test_a_masked_run_reproduces_plaintext_fedavg(keys: Path) -> None:
    cluster = masked_cluster(keys)
    add_all(cluster, keys)
    cluster.start_coordinator(open_aggregator(keys / "coordinator"))
    coordinator = cluster.run_to_end()
    assert coordinator.state.phase == "done", coordinator.state.error
    assert [r.attempts for r in coordinator.state.history] == [1, 1]
    assert [r.accepted for r in coordinator.state.history] == [FOUR, FOUR]
    assert coordinator.state.rejected == {}
    expected = reference_fedavg(FOUR, 2)
    for hospital in cluster.hospitals.values():
        np.testing.assert_allclose(hospital.final_weights, expected, atol=1e-6)


def test_a_dropout_after_the_set_is_fixed_costs_a_remask_not_the_round(keys: Path) -> None:
    cluster = masked_cluster(keys)
    add_all(cluster, keys, h4=GoneAfterReady)
    coordinator = cluster.start_coordinator(open_aggregator(keys / "coordinator"))
    cluster.transport.deliver_all()
    # Everyone was ready, so the set holds all four; h4 is gone, the other three uploaded.
    assert coordinator.state.participants == FOUR and coordinator.state.attempt == 1
    assert set(coordinator.state.accepted_hospitals) == {"h1", "h2", "h3"}
    gone = cluster.hospitals["h4"]
    assert isinstance(gone, GoneAfterReady) and gone.fixed_seen is not None
    assert gone.fixed_seen.participants == FOUR
    trained = {n: len(h._cipher.encrypted) for n, h in cluster.hospitals.items()}  # type: ignore[attr-defined]
    cluster.now[0] += 31.0  # the mask deadline passes
    coordinator.tick()
    assert coordinator.state.attempt == 2 and coordinator.state.participants == ("h1", "h2", "h3")
    cluster.run_to_end()
    assert coordinator.state.phase == "done", coordinator.state.error
    first = coordinator.state.history[0]
    assert (first.attempts, first.accepted, first.failed) == (2, ("h1", "h2", "h3"), ("h4",))
    # The survivors re-masked their trained update: one more encryption each, no retraining.
    for name in ("h1", "h2", "h3"):
        upload = cluster.hospitals[name]._cipher.encrypted  # type: ignore[attr-defined]
        assert len(upload) == trained[name] + 2  # round 1 again, then round 2
        np.testing.assert_array_equal(upload[trained[name]], upload[trained[name] - 1])
    expected = reference_fedavg(("h1", "h2", "h3"), 2)
    np.testing.assert_allclose(cluster.hospitals["h1"].final_weights, expected, atol=1e-6)


def test_a_participant_that_reports_failure_is_dropped_at_once(keys: Path) -> None:
    class FailsToMask(Hospital):
        def _on_participants(self, msg: ParticipantsFixed) -> None:
            self._report_failure(msg.round, ValueRangeError("simulated: out of memory"))

    cluster = masked_cluster(keys, rounds=1)
    add_all(cluster, keys, h2=FailsToMask)
    coordinator = cluster.start_coordinator(open_aggregator(keys / "coordinator"))
    cluster.run_to_end()  # the clock never moves: no deadline is needed
    assert coordinator.state.phase == "done", coordinator.state.error
    record = coordinator.state.history[0]
    assert (record.attempts, record.accepted) == (2, ("h1", "h3", "h4"))


def test_uploads_queued_while_the_coordinator_was_paused_close_the_round(keys: Path) -> None:
    """The coordinator was frozen (SIGSTOP, a suspended VM) past the mask deadline while the
    participants uploaded: on resume it counts the queued uploads before judging the deadline."""
    cluster = masked_cluster(keys, rounds=1)
    add_all(cluster, keys)
    coordinator = cluster.start_coordinator(open_aggregator(keys / "coordinator"))
    while not coordinator.state.participants:
        assert cluster.transport.deliver_all(limit=1) == 1
    announced = cluster.transport.pending
    assert cluster.transport.deliver_all(limit=announced) == announced  # the set goes out
    assert cluster.transport.pending == len(FOUR)  # their uploads wait for the coordinator
    cluster.now[0] = coordinator.state.mask_deadline + 5.0  # which was paused meanwhile
    cluster.run_to_end()
    assert coordinator.state.phase == "done", coordinator.state.error
    record = coordinator.state.history[0]
    assert (record.attempts, record.accepted, record.failed) == (1, FOUR, ())


def test_without_a_quorum_of_uploads_the_run_fails_with_the_reason(keys: Path) -> None:
    cluster = masked_cluster(keys, rounds=1, min_hospitals=4)
    add_all(cluster, keys, h4=GoneAfterReady)
    coordinator = cluster.start_coordinator(open_aggregator(keys / "coordinator"))
    cluster.transport.deliver_all()
    cluster.now[0] += 31.0
    coordinator.tick()
    cluster.transport.deliver_all()
    assert coordinator.state.phase == "failed"
    assert "only 3 of 4 required hospitals submitted" in (coordinator.state.error or "")


def test_a_restarted_coordinator_resumes_a_fixed_set(keys: Path) -> None:
    store, state_store = InMemoryStore(), InMemoryStore()
    first = masked_cluster(keys, store)
    first.state_store = state_store
    add_all(first, keys)
    coordinator = first.start_coordinator(open_aggregator(keys / "coordinator"))
    while not (coordinator.state.participants and len(coordinator.state.accepted) == 2):
        assert first.transport.deliver_all(limit=1), "round 1 stalled"
    # Coordinator and hospitals die; the hospitals lost their trained updates.
    second = masked_cluster(keys, store)
    second.state_store = state_store
    add_all(second, keys)
    resumed = second.start_coordinator(open_aggregator(keys / "coordinator"))
    assert (resumed.state.attempt, len(resumed.state.accepted)) == (1, 2)
    second.run_to_end()
    assert resumed.state.phase == "done", resumed.state.error
    np.testing.assert_allclose(
        second.hospitals["h1"].final_weights, reference_fedavg(FOUR, 2), atol=1e-6
    )


def test_a_forged_participant_set_from_a_hospital_is_refused(keys: Path) -> None:
    cluster = masked_cluster(keys, rounds=1)
    add_all(cluster, keys)
    coordinator = cluster.start_coordinator(open_aggregator(keys / "coordinator"))
    # h4 signs a set without h1, hoping h2 and h3 mask for it alone with h4 (whose mask it
    # knows): the codec accepts a ParticipantsFixed only from the coordinator.
    forged = ParticipantsFixed(
        run="run-1", round=1, attempt=9, participants=("h2", "h3", "h4"), deadline=1e12
    )
    cluster.transport.publish(ANNOUNCE, codec("h4").encode(forged))
    cluster.run_to_end()
    assert coordinator.state.phase == "done"
    assert all(h.rejected.get("SignatureError") == 1 for h in cluster.hospitals.values())
    assert coordinator.state.history[0].attempts == 1


def test_an_update_for_another_attempt_or_from_outside_the_set_is_refused(keys: Path) -> None:
    cluster = masked_cluster(keys, rounds=1, expected_hospitals=3)
    for name in ("h1", "h2", "h3"):  # h4's identity exists, but it never said it was ready
        cluster.add_hospital(name, cipher=open_cipher(keys / "hospital"))
    coordinator = cluster.start_coordinator(open_aggregator(keys / "coordinator"))
    while not coordinator.state.participants:
        assert cluster.transport.deliver_all(limit=1), "the set was never fixed"
    assert coordinator.state.participants == ("h1", "h2", "h3") and not coordinator.state.accepted

    def update(hospital: str, attempt: int) -> None:
        message = UpdateSubmitted(
            run="run-1", round=1, hospital=hospital, blob_ref="x", sha256="y", attempt=attempt
        )
        coordinator.handle(codec(hospital).encode(message), hospital)

    update("h1", 7)  # masked for a set that was never fixed
    update("h2", 0)  # unmasked, in a masked run
    update("h4", 1)  # not in the set: its masks cancel with nobody's
    assert coordinator.state.rejected == {"other-attempt": 2, "not-a-participant": 1}
    cluster.run_to_end()
    assert coordinator.state.phase == "done"
    assert coordinator.state.history[0].accepted == ("h1", "h2", "h3")


def summed(aggregator: Aggregator, blobs: list[bytes]) -> bytes:
    total = aggregator.new_sum()
    for blob in blobs:
        total.add(blob)
    return total.to_blob()


@pytest.mark.parametrize("masking", [True, False])
def test_a_curious_hospital_with_a_copy_of_the_store(keys: Path, masking: bool) -> None:
    """h2 holds the HE secret key and a copy of every blob ever written to the store."""
    store = CopyingStore()
    cluster = masked_cluster(keys, store, rounds=1, masking=masking)
    add_all(cluster, keys)
    cluster.start_coordinator(open_aggregator(keys / "coordinator"))
    coordinator = cluster.run_to_end()
    assert coordinator.state.phase == "done"
    key = layout.update_key("run-1", 1, "h1")
    assert store.copies[key] and not store.exists(key)  # deleted, but the copy remains
    upload = store.copies[key][-1]
    truth = cluster.hospitals["h1"]._cipher.encrypted[-1]  # type: ignore[attr-defined]
    curious: Cipher = cluster.hospitals["h2"]._cipher  # type: ignore[attr-defined]
    if not masking:  # the attack works without masks: every weight and the row count
        np.testing.assert_allclose(curious.decrypt(upload), truth, atol=1e-6)
        return
    with pytest.raises((ValueRangeError, BlobError)):
        curious.decrypt(upload)  # its own decrypt refuses noise as a model
    seal = curious._seal  # type: ignore[attr-defined]
    _, chunks = curious.spec.decode(upload)
    seen = np.concatenate([seal.decrypt_block(c) for c in chunks])[: truth.size]
    # Noise of the order of q / scale, nothing like the update (this model has only a few
    # dozen values; tests/crypto/test_masking.py checks the statistics on 20,000).
    assert np.median(np.abs(seen - truth)) > 1000 * np.max(np.abs(truth))
    assert abs(np.corrcoef(seen, truth)[0, 1]) < 0.9
    # The round's uploads together still sum to the plaintext sum of the four updates.
    uploads = [store.copies[layout.update_key("run-1", 1, n)][-1] for n in FOUR]
    total = curious.decrypt(summed(open_aggregator(keys / "coordinator"), uploads))
    expected = np.sum([cluster.hospitals[n]._cipher.encrypted[-1] for n in FOUR], axis=0)  # type: ignore[attr-defined]
    np.testing.assert_allclose(total, expected, atol=1e-6)


@pytest.mark.parametrize("restart_after", [15.0, 1.0], ids=["later", "within-hello-interval"])
def test_a_participant_restarted_after_training_waits_for_the_round_and_is_not_lost(
    keys: Path, caplog: pytest.LogCaptureFixture, restart_after: float
) -> None:
    """h4 trained, said it was ready and died; the participant set was queued for it meanwhile.
    Restarted, it meets that set first, without a trained update: it reports no failure but
    waits for the re-announcement its Hello brings, trains again (seeded, the same update) and
    masks for the same set. The round keeps all four, in one attempt. Restarted within the
    hello interval of its first Hello (the chaos soak's case), its Hello is answered when the
    interval is over rather than refused."""
    cluster = masked_cluster(keys, rounds=2)
    add_all(cluster, keys, h4=GoneAfterReady)
    coordinator = cluster.start_coordinator(open_aggregator(keys / "coordinator"))
    cluster.transport.deliver_all()
    gone = cluster.hospitals["h4"]
    assert isinstance(gone, GoneAfterReady) and gone.fixed_seen is not None
    assert set(coordinator.state.accepted_hospitals) == {"h1", "h2", "h3"}

    # The old process's last Hello (the interval counts from it), then the new process starts.
    hello = codec("h4").encode(Hello(run="run-1", hospital="h4"))
    cluster.transport.publish(SUBMIT, hello, sender="h4")
    cluster.transport.deliver_all()
    cluster.now[0] += restart_after  # before the mask deadline
    cluster.add_hospital("h4", cipher=RecordingCipher(open_cipher(keys / "hospital")), hello=True)
    restarted = cluster.hospitals["h4"]
    with caplog.at_level(logging.WARNING):
        restarted.handle(codec("coordinator").encode(gone.fixed_seen))  # the queued set
    assert "participants_before_training" in caplog.text
    sent = [codec("coordinator").decode(body) for _, body, _ in cluster.transport._queue]  # type: ignore[attr-defined]
    assert not [m for m in sent if isinstance(m, UpdateFailed)]

    cluster.transport.deliver_all()
    assert "h4" not in coordinator.state.accepted_hospitals or restart_after > 10.0
    cluster.now[0] += 10.0  # the hello interval is over: a deferred Hello is answered
    coordinator.tick()
    coordinator = cluster.run_to_end()
    assert coordinator.state.rejected == {}
    assert coordinator.state.phase == "done", coordinator.state.error
    assert [r.accepted for r in coordinator.state.history] == [FOUR, FOUR]
    assert [r.attempts for r in coordinator.state.history] == [1, 1]
    expected = reference_fedavg(FOUR, 2)
    for name in FOUR[:3]:
        np.testing.assert_allclose(cluster.hospitals[name].final_weights, expected, atol=1e-6)
    np.testing.assert_allclose(restarted.final_weights, expected, atol=1e-6)


def test_a_hospital_that_masks_wrongly_turns_the_sum_into_noise_and_the_run_stops(
    keys: Path,
) -> None:
    """What masking costs: one participant's wrong mask cannot be traced to it, but the sum is
    noise, every hospital refuses it at decryption, and the run aborts with that reason."""

    class WrongMasks:
        def __init__(self, masks: PairwiseMasks) -> None:
            self._masks = masks

        def for_cohort(self, cohort: Cohort) -> Masker:
            return self._masks.for_cohort(replace(cohort, attempt=cohort.attempt + 50))

    cluster = masked_cluster(keys, rounds=2)
    add_all(cluster, keys)
    cheat = cluster.hospitals["h4"]
    cheat._masks = WrongMasks(codec("h4").pairwise_masks())  # type: ignore[assignment]
    coordinator = cluster.start_coordinator(open_aggregator(keys / "coordinator"))
    cluster.run_to_end()
    assert coordinator.state.phase == "failed"
    error = coordinator.state.error or ""
    assert "round 2" in error and "h1, h2, h3, h4" in error, error
    assert "(the others failed)" in error and "is beyond" in error  # the sum is noise
    assert all(h.final_weights is None for h in cluster.hospitals.values())


def test_a_hospital_ready_after_the_set_is_fixed_is_waited_for_next_round(keys: Path) -> None:
    cluster = masked_cluster(keys, rounds=2, expected_hospitals=3)
    for name in ("h1", "h2", "h3"):
        cluster.add_hospital(name, cipher=open_cipher(keys / "hospital"))
    coordinator = cluster.start_coordinator(open_aggregator(keys / "coordinator"))
    while not coordinator.state.participants:
        assert cluster.transport.deliver_all(limit=1), "the set was never fixed"
    late = UpdateReady(run="run-1", round=1, hospital="h4")
    coordinator.handle(codec("h4").encode(late), "h4")
    assert coordinator.state.rejected == {} and "h4" in coordinator.state.roster
    cluster.add_hospital("h4", cipher=open_cipher(keys / "hospital"))  # answers from round 2
    cluster.run_to_end()
    assert coordinator.state.phase == "done"
    assert [r.accepted for r in coordinator.state.history] == [("h1", "h2", "h3"), FOUR]


def test_an_upload_of_a_failed_attempt_is_refused_and_deleted_with_the_round(keys: Path) -> None:
    class Slow(GoneAfterReady):
        """Ready in time, but its upload for the set comes after the mask deadline."""

    store = CopyingStore()
    cluster = masked_cluster(keys, store, rounds=1)
    add_all(cluster, keys, h4=Slow)
    coordinator = cluster.start_coordinator(open_aggregator(keys / "coordinator"))
    cluster.transport.deliver_all()
    cluster.now[0] += 31.0
    coordinator.tick()  # h4 is dropped; h1..h3 mask afresh
    slow = cluster.hospitals["h4"]
    assert isinstance(slow, Slow) and slow.fixed_seen is not None
    cluster.now[0] -= 31.0  # it started masking in time; its upload lands after the re-fix
    Hospital._on_participants(slow, slow.fixed_seen)
    cluster.now[0] += 31.0
    key = layout.update_key("run-1", 1, "h4")
    assert store.exists(key)
    cluster.run_to_end()
    assert coordinator.state.phase == "done"
    assert coordinator.state.rejected == {"other-attempt": 1}
    assert coordinator.state.history[0].accepted == ("h1", "h2", "h3")
    assert not store.exists(key)  # not left behind for anyone to difference against
    assert [k for k in store.list("runs/") if "/updates/" in k] == []


def test_a_newcomer_is_not_announced_a_round_whose_set_is_fixed(keys: Path) -> None:
    cluster = masked_cluster(keys, rounds=2, expected_hospitals=3)
    for name in ("h1", "h2", "h3"):
        cluster.add_hospital(name, cipher=RecordingCipher(open_cipher(keys / "hospital")))
    coordinator = cluster.start_coordinator(open_aggregator(keys / "coordinator"))
    while not coordinator.state.participants:
        assert cluster.transport.deliver_all(limit=1), "the set was never fixed"
    announced = cluster.transport.published[ANNOUNCE]
    cluster.add_hospital("h4", cipher=RecordingCipher(open_cipher(keys / "hospital")))
    coordinator.handle(codec("h4").encode(Hello(run="run-1", hospital="h4")), "h4")
    assert cluster.transport.published[ANNOUNCE] == announced  # no re-announcement
    assert "h4" in coordinator.state.roster
    cluster.run_to_end()
    assert coordinator.state.phase == "done" and coordinator.state.rejected == {}
    assert [r.accepted for r in coordinator.state.history] == [("h1", "h2", "h3"), FOUR]
    newcomer = cluster.hospitals["h4"]._cipher  # type: ignore[attr-defined]
    assert len(newcomer.encrypted) == 1  # it trained and uploaded for round 2 only
