"""A participating hospital that misbehaves: it holds the HE secret key and its own signing key,
and can write its own update to the store. Every attack is refused with a named reason and a
counter, and the run ends with the model the honest hospitals alone produce.

Coordinator and hospitals run over the in-memory transport with real Keras training and real
CKKS ciphertexts (one key ceremony per module). ``h4`` is the insider; ``h1``..``h3`` are honest.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from common.crypto import (
    AGGREGATE,
    Binding,
    HEConfig,
    ckks_parameters,
    open_aggregator,
    open_cipher,
    run_key_ceremony,
)
from common.errors import ProtocolError
from common.fedavg import DEFAULT_SANITY, Sanity, payload_size, sane_average, weighted_payload
from common.model import parameter_count
from common.protocol import layout
from common.protocol.messages import Hello, RoundStarted, UpdateFailed, UpdateSubmitted
from common.store import LocalStore, sha256_hex
from common.transport import ANNOUNCE, SUBMIT
from coordinator import state as sm
from coordinator.service import REJECTION_SAVE_SECONDS
from tests.protocol.test_round_protocol import (
    DIGEST,
    FOUR,
    MODEL,
    N_FEATURES,
    Cluster,
    codec,
    make_plan,
    reference_fedavg,
)

RUN = "run-1"
ROUNDS = 2
HONEST = ("h1", "h2", "h3")
VALUES = payload_size(parameter_count(MODEL, N_FEATURES))

Craft = Callable[[int], bytes]  # round -> the insider's blob for it


@pytest.fixture(scope="module")
def ceremony(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ceremony")
    # Tens of rows per hospital: the 56-bit chain keeps their average exact (docs/encoding.md).
    run_key_ceremony(HEConfig(**ckks_parameters(56)), root / "hospital", root / "coordinator")
    return root


@pytest.fixture(scope="module")
def honest_reference() -> np.ndarray:
    """The run without the insider: the model every attack must leave unchanged."""
    return reference_fedavg(HONEST, ROUNDS)


class CountingStore(LocalStore):
    """A local store that counts writes (a Drive store pays API quota for each)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.puts = 0

    def put(self, key: str, data: bytes) -> None:
        self.puts += 1
        super().put(key, data)


Stores = Callable[[], CountingStore]


@pytest.fixture
def stores(tmp_path: Path) -> Stores:
    """Fresh local stores (the shared folder, the coordinator's state folder) under tmp_path."""
    made = itertools.count()
    return lambda: CountingStore(tmp_path / f"store-{next(made)}")


class Insider:
    """``h4``: answers every announcement with a crafted blob under its own, valid signature."""

    def __init__(self, cluster: Cluster, craft: Craft) -> None:
        self.cluster = cluster
        self.craft = craft
        self.codec = codec("h4")
        # Subscribed after the honest hospitals: their blobs are in the store when it acts.
        cluster.transport.subscribe(ANNOUNCE, self.on_announce)

    def on_announce(self, body: bytes) -> None:
        message = self.codec.decode(body)
        if not isinstance(message, RoundStarted):
            return
        blob = self.craft(message.round)
        key = layout.update_key(RUN, message.round, "h4")
        self.cluster.store.put(key, blob)
        submitted = UpdateSubmitted(
            run=RUN,
            round=message.round,
            hospital="h4",
            blob_ref=key,
            sha256=sha256_hex(blob),
            metrics={},
        )
        self.cluster.transport.publish(SUBMIT, self.codec.encode(submitted), sender="h4")


def encrypted_cluster(ceremony: Path, stores: Stores, **plan: object) -> Cluster:
    values: dict = {"hospitals": FOUR, "rounds": ROUNDS} | plan
    cluster = Cluster(store=stores(), plan=make_plan(**values), state_store=stores())
    for name in HONEST:
        cluster.add_hospital(name, cipher=open_cipher(ceremony / "hospital"))
    return cluster


def run_with_insider(
    ceremony: Path, stores: Stores, craft_for: Callable[[Cluster], Craft]
) -> Cluster:
    cluster = encrypted_cluster(ceremony, stores)
    Insider(cluster, craft_for(cluster))
    coordinator = cluster.start_coordinator(open_aggregator(ceremony / "coordinator"))
    cluster.run_to_end()
    assert coordinator.state.phase == "final"  # the insider sends no final report: the deadline
    cluster.now[0] += cluster.plan.final_timeout
    coordinator.tick()
    return cluster


def own(round_: int) -> Binding:
    return Binding(run=RUN, round=round_, sender="h4")


def honest_payload() -> np.ndarray:
    return np.full(VALUES, 0.01)


def copy_of_h1(cluster: Cluster) -> Craft:
    """The exact bytes h1 uploaded this round, submitted as h4's."""
    return lambda round_: cluster.store.get(layout.update_key(RUN, round_, "h1"))


def hundred_summands(ceremony: Path) -> Craft:
    """A well-formed blob whose header claims 100 summands (it made every honest add fail)."""
    cipher = open_cipher(ceremony / "hospital")

    def craft(round_: int) -> bytes:
        header, chunks = cipher.spec.decode(cipher.encrypt(honest_payload(), binding=own(round_)))
        return cipher.spec.encode(
            kind=header.kind,
            value_count=header.value_count,
            summands=100,
            chunks=chunks,
            binding=own(round_),
        )

    return craft


def one_value(ceremony: Path) -> Craft:
    cipher = open_cipher(ceremony / "hospital")
    return lambda round_: cipher.encrypt(np.zeros(1), binding=own(round_))


def an_aggregate(ceremony: Path) -> Craft:
    cipher = open_cipher(ceremony / "hospital")
    return lambda round_: cipher.encrypt(honest_payload(), kind=AGGREGATE, binding=own(round_))


def next_round_blob(ceremony: Path) -> Craft:
    """Its own blob, bound to another round (as a replay of an earlier round's would be)."""
    cipher = open_cipher(ceremony / "hospital")
    return lambda round_: cipher.encrypt(honest_payload(), binding=own(round_ + 1))


def oversized(ceremony: Path) -> Craft:
    """A valid blob with megabytes appended: refused by its size before it is read."""
    cipher = open_cipher(ceremony / "hospital")
    limit = cipher.spec.max_blob_bytes(VALUES)
    return lambda round_: cipher.encrypt(honest_payload(), binding=own(round_)) + bytes(limit)


@pytest.mark.parametrize(
    ("make_craft", "reason"),
    [
        (lambda cluster, ceremony: copy_of_h1(cluster), "blob-binding"),
        (lambda cluster, ceremony: hundred_summands(ceremony), "blob-summands"),
        (lambda cluster, ceremony: one_value(ceremony), "blob-values"),
        (lambda cluster, ceremony: an_aggregate(ceremony), "blob-kind"),
        (lambda cluster, ceremony: next_round_blob(ceremony), "blob-binding"),
        (lambda cluster, ceremony: oversized(ceremony), "blob-size"),
    ],
    ids=["copy-of-another-hospital", "100-summands", "1-value", "aggregate", "other-round", "size"],
)
def test_a_forged_blob_header_is_refused_and_the_honest_run_is_unchanged(
    ceremony: Path,
    honest_reference: np.ndarray,
    make_craft: Callable[[Cluster, Path], Craft],
    stores: Stores,
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = run_with_insider(ceremony, stores, lambda cluster: make_craft(cluster, ceremony))
    coordinator = cluster.coordinator
    assert coordinator is not None and coordinator.state.phase == "done"
    assert coordinator.state.rejected == {reason: ROUNDS}
    assert f"reason={reason}" in caplog.text
    assert [set(r.accepted) for r in coordinator.state.history] == [set(HONEST)] * ROUNDS
    assert [r.failed for r in coordinator.state.history] == [("h4",)] * ROUNDS  # not waited for
    for name in HONEST:
        final = cluster.hospitals[name].final_weights
        assert final is not None
        np.testing.assert_allclose(final, honest_reference, atol=1e-6)


def test_the_shared_store_holds_no_state_no_per_hospital_metrics_and_no_updates(
    ceremony: Path, stores: Stores
) -> None:
    cluster = encrypted_cluster(ceremony, stores, hospitals=HONEST, expected_hospitals=None)
    coordinator = cluster.start_coordinator(open_aggregator(ceremony / "coordinator"))
    cluster.run_to_end()
    assert coordinator.state.phase == "done"
    shared = cluster.store.list()
    assert shared == sorted(
        [layout.aggregate_key(RUN, r) for r in range(1, ROUNDS + 1)]
        + [layout.public_summary_key(RUN)]
    )
    public = json.loads(cluster.store.get(layout.public_summary_key(RUN)))
    assert [r["contributors"] for r in public["rounds"]] == [3] * ROUNDS
    assert all(set(r["holdout_metrics_mean"]) >= {"auc"} for r in public["rounds"])
    for hospital in HONEST:  # hospitals' names appear nowhere in what they can all read
        assert hospital not in json.dumps(public)
    private = json.loads(cluster.state_store.get(layout.summary_key(RUN)))
    assert set(private["rounds"][0]["holdout_metrics_by_hospital"]) == set(HONEST)
    assert cluster.state_store.exists(layout.state_key(RUN))


def test_update_blobs_are_kept_only_when_asked(ceremony: Path, stores: Stores) -> None:
    cluster = encrypted_cluster(
        ceremony, stores, hospitals=HONEST, expected_hospitals=None, rounds=1
    )
    cluster.start_coordinator(open_aggregator(ceremony / "coordinator"))
    assert cluster.coordinator is not None
    cluster.coordinator._keep_updates = True  # as --keep-updates sets it
    cluster.run_to_end()
    kept = [key for key in cluster.store.list() if "/updates/" in key]
    assert kept == sorted(layout.update_key(RUN, 1, h) for h in HONEST)


def _stop_in_round_2_with_two_accepted(ceremony: Path, stores: Stores) -> Cluster:
    cluster = encrypted_cluster(ceremony, stores, hospitals=HONEST, expected_hospitals=None)
    coordinator = cluster.start_coordinator(open_aggregator(ceremony / "coordinator"))
    while not (coordinator.state.round == 2 and len(coordinator.state.accepted) == 2):
        assert cluster.transport.deliver_all(limit=1), "the run stalled"
    return cluster


def _restart(cluster: Cluster, ceremony: Path) -> None:
    second = Cluster(store=cluster.store, plan=cluster.plan, state_store=cluster.state_store)
    second.start_coordinator(open_aggregator(ceremony / "coordinator"))


def test_a_state_edited_after_signing_is_refused_on_resume(ceremony: Path, stores: Stores) -> None:
    cluster = _stop_in_round_2_with_two_accepted(ceremony, stores)
    key = layout.state_key(RUN)
    envelope = json.loads(cluster.state_store.get(key))
    state = json.loads(envelope["state"])
    forged = dict(state["accepted"][0], hospital="h3")  # an "accepted" entry for a peer
    state["accepted"].append(forged)
    envelope["state"] = json.dumps(state)
    cluster.state_store.put(key, json.dumps(envelope).encode())
    with pytest.raises(ProtocolError, match=r"does not verify \(edited or forged\)"):
        _restart(cluster, ceremony)


def test_a_state_signed_by_a_hospital_is_refused_on_resume(ceremony: Path, stores: Stores) -> None:
    cluster = _stop_in_round_2_with_two_accepted(ceremony, stores)
    key = layout.state_key(RUN)
    body = json.loads(cluster.state_store.get(key))["state"].encode()
    cluster.state_store.put(key, codec("h1").seal_state(body))
    with pytest.raises(ProtocolError, match="state signed by 'h1', not by coordinator"):
        _restart(cluster, ceremony)


def test_an_unsigned_state_is_refused_on_resume(ceremony: Path, stores: Stores) -> None:
    cluster = _stop_in_round_2_with_two_accepted(ceremony, stores)
    key = layout.state_key(RUN)
    cluster.state_store.put(key, json.loads(cluster.state_store.get(key))["state"].encode())
    with pytest.raises(ProtocolError, match="unsigned state"):
        _restart(cluster, ceremony)


def test_a_resumed_round_re_verifies_each_accepted_submission(
    ceremony: Path, stores: Stores
) -> None:
    """Even state the coordinator signed counts an entry only with the hospital's own message."""
    cluster = _stop_in_round_2_with_two_accepted(ceremony, stores)
    coordinator = cluster.coordinator
    assert coordinator is not None
    first, second = coordinator.state.accepted
    mixed = replace(first, envelope=second.envelope)  # h_a's entry carrying h_b's message
    state = replace(coordinator.state, accepted=(mixed, second))
    cluster.state_store.put(
        layout.state_key(RUN), codec("coordinator").seal_state(sm.to_json(state))
    )
    with pytest.raises(ProtocolError, match="does not match the signed submission"):
        _restart(cluster, ceremony)


def test_the_resumed_run_is_the_uninterrupted_run(ceremony: Path, stores: Stores) -> None:
    cluster = _stop_in_round_2_with_two_accepted(ceremony, stores)
    # As if the crash came between round 1's aggregate and the deletion of its updates.
    leftover = layout.update_key(RUN, 1, "h1")
    cluster.store.put(leftover, b"round 1's update, summed already")
    assert cluster.coordinator is not None
    accepted = [entry.blob_ref for entry in cluster.coordinator.state.accepted]
    assert [layout.round_of_update(key) for key in accepted] == [2, 2]
    second = Cluster(store=cluster.store, plan=cluster.plan, state_store=cluster.state_store)
    for name in HONEST:
        second.add_hospital(name, cipher=open_cipher(ceremony / "hospital"))
    resumed = second.start_coordinator(open_aggregator(ceremony / "coordinator"))
    assert resumed.state.round == 2 and len(resumed.state.accepted) == 2
    assert not cluster.store.exists(leftover)
    assert all(cluster.store.exists(key) for key in accepted)  # still to be summed again
    second.run_to_end()
    assert resumed.state.phase == "done"
    np.testing.assert_allclose(
        second.hospitals["h1"].final_weights, reference_fedavg(HONEST, ROUNDS), atol=1e-6
    )


def test_a_hello_flood_causes_one_announcement_and_garbage_causes_no_write(
    ceremony: Path, stores: Stores
) -> None:
    # No hospital runs: only the flood reaches the coordinator.
    cluster = Cluster(store=stores(), plan=make_plan(), state_store=stores())  # type: ignore[arg-type]
    coordinator = cluster.start_coordinator(open_aggregator(ceremony / "coordinator"))
    store, state_store = cluster.store, cluster.state_store
    assert isinstance(store, CountingStore) and isinstance(state_store, CountingStore)
    cluster.transport.deliver_all()  # the first announcement
    announced = cluster.transport.published[ANNOUNCE]
    shared_writes, state_writes = store.puts, state_store.puts
    hello = codec("h1").encode(Hello(run=RUN, hospital="h1"))
    for index in range(100):
        cluster.transport.publish(SUBMIT, hello, sender="h1")
        cluster.transport.publish(SUBMIT, b"unsigned garbage %d" % index, sender="h2")
    cluster.transport.deliver_all()
    assert cluster.transport.published[ANNOUNCE] - announced == 1  # for the first hello only
    # The second waits for the interval's end (a restarted hospital's); the other 98 are refused.
    assert coordinator.state.rejected == {"hello-rate": 98, "malformed": 100}
    assert store.puts == shared_writes  # nothing reaches the shared store (Drive quota)
    assert state_store.puts - state_writes == 1  # the hello's roster change; counters wait
    cluster.now[0] += REJECTION_SAVE_SECONDS
    coordinator.tick()  # counters are saved within REJECTION_SAVE_SECONDS
    saved = json.loads(json.loads(state_store.get(layout.state_key(RUN)))["state"])
    assert saved["rejected"] == {"hello-rate": 98, "malformed": 100}
    assert state_store.puts - state_writes == 2
    assert cluster.transport.published[ANNOUNCE] - announced == 1  # the interval is not over
    cluster.now[0] += coordinator.plan.hello_interval
    coordinator.tick()  # the deferred hello is answered, once
    coordinator.tick()
    assert cluster.transport.published[ANNOUNCE] - announced == 2


def drive_to_the_end(cluster: Cluster) -> None:
    """Deliver everything; when nothing moves, let the clock reach the next deadline."""
    coordinator = cluster.coordinator
    assert coordinator is not None
    for _ in range(100):
        if coordinator.finished:
            return
        if not cluster.transport.deliver_all():
            cluster.now[0] = max(cluster.now[0], coordinator.state.deadline)
            coordinator.tick()
    raise AssertionError(f"the run did not end: {coordinator.state}")


class LinkingInsider(Insider):
    """Plants a symlink to /dev/zero at its own update's key and submits it."""

    def on_announce(self, body: bytes) -> None:
        message = self.codec.decode(body)
        if not isinstance(message, RoundStarted):
            return
        key = layout.update_key(RUN, message.round, "h4")
        store = self.cluster.store
        assert isinstance(store, LocalStore)
        path = store.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        path.symlink_to("/dev/zero")
        submitted = UpdateSubmitted(
            run=RUN, round=message.round, hospital="h4", blob_ref=key, sha256="0" * 64
        )
        self.cluster.transport.publish(SUBMIT, self.codec.encode(submitted), sender="h4")


def test_a_symlink_to_dev_zero_as_an_update_is_refused_unread(
    ceremony: Path, stores: Stores, honest_reference: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = encrypted_cluster(ceremony, stores)
    LinkingInsider(cluster, craft=lambda round_: b"")
    cluster.start_coordinator(open_aggregator(ceremony / "coordinator"))
    drive_to_the_end(cluster)
    coordinator = cluster.coordinator
    assert coordinator is not None and coordinator.state.phase == "done"
    assert coordinator.state.rejected.get("StoreError", 0) >= 1
    assert "refusing symlink" in caplog.text
    assert [set(r.accepted) for r in coordinator.state.history] == [set(HONEST)] * ROUNDS
    for name in HONEST:
        np.testing.assert_allclose(
            cluster.hospitals[name].final_weights, honest_reference, atol=1e-6
        )


@pytest.mark.parametrize(
    ("senders", "bound_to", "fragment"),
    [
        (("h1", "h2"), Binding(run=RUN, round=1, sender="coordinator"), "sums 2 updates"),
        (HONEST, Binding(run=RUN, round=5, sender="coordinator"), "not the aggregate of"),
        (HONEST, Binding(run="run-0", round=1, sender="coordinator"), "not the aggregate of"),
    ],
    ids=["two-updates", "other-round", "other-run"],
)
def test_a_hospital_refuses_an_aggregate_it_must_not_decrypt(
    ceremony: Path, stores: Stores, senders: tuple[str, ...], bound_to: Binding, fragment: str
) -> None:
    """A coordinator (keyless, but it signs announcements) passing off a sum of 2 updates, from
    which each contributor could learn the other's, or another round's sum."""
    cluster = encrypted_cluster(ceremony, stores, hospitals=HONEST, expected_hospitals=None)
    cipher = open_cipher(ceremony / "hospital")
    total = open_aggregator(ceremony / "coordinator").new_sum()
    for sender in senders:
        total.add(
            cipher.encrypt(honest_payload(), binding=Binding(run=RUN, round=1, sender=sender))
        )
    blob = total.to_blob(AGGREGATE, bound_to)
    key = layout.aggregate_key(RUN, 1)
    cluster.store.put(key, blob)
    replies: list[bytes] = []
    cluster.transport.subscribe(SUBMIT, replies.append)
    announcement = RoundStarted(
        run=RUN,
        round=2,
        global_ref=key,
        global_sha256=sha256_hex(blob),
        deadline=cluster.now[0] + 60,
        config_digest=DIGEST,
    )
    cluster.transport.publish(ANNOUNCE, codec("coordinator").encode(announcement))
    cluster.transport.deliver_all()
    answers = [codec("coordinator").decode(body) for body in replies]
    assert len(answers) == len(HONEST)
    for answer in answers:
        assert isinstance(answer, UpdateFailed) and fragment in answer.error, answer


def test_a_hospital_without_run_follows_the_live_run_not_a_replayed_one(
    ceremony: Path, stores: Stores
) -> None:
    cluster = encrypted_cluster(ceremony, stores, hospitals=HONEST, expected_hospitals=None)
    for hospital in cluster.hospitals.values():
        hospital.run = ""  # as `hefl hospital` without --run
    old = RoundStarted(  # an earlier run's announcement, replayed: its deadline has passed
        run="run-0",
        round=1,
        global_ref=None,
        global_sha256=None,
        deadline=cluster.now[0] - 1,
        config_digest=DIGEST,
    )
    cluster.transport.publish(ANNOUNCE, codec("coordinator").encode(old))
    cluster.transport.deliver_all()
    assert all(h.run == "" for h in cluster.hospitals.values())
    assert cluster.store.list() == []  # nobody trained for the replayed run
    coordinator = cluster.start_coordinator(open_aggregator(ceremony / "coordinator"))
    cluster.run_to_end()
    assert coordinator.state.phase == "done"
    assert all(h.run == RUN and h.final_weights is not None for h in cluster.hospitals.values())


# -- a poisoned but well-formed update ---------------------------------------------------------


def poisoned(rows: int, value: float) -> Callable[[Path], Craft]:
    """An honestly formed update from a hospital that lies about its rows and its weights."""

    def make(ceremony: Path) -> Craft:
        cipher = open_cipher(ceremony / "hospital")
        weights = np.full(VALUES - 1, value)
        return lambda round_: cipher.encrypt(weighted_payload(weights, rows), binding=own(round_))

    return make


@pytest.mark.parametrize(
    ("rows", "value", "fragment"),
    [
        (800_000, 0.99, "moves the model by"),  # the reproduced attack: mean pulled to 0.99
        (-50_000, 0.0, "not positive"),
    ],
    ids=["800k-rows-of-0.99", "negative-weight"],
)
def test_a_poisoned_global_update_is_refused_and_the_run_aborts_with_the_reason(
    ceremony: Path, stores: Stores, rows: int, value: float, fragment: str
) -> None:
    cluster = encrypted_cluster(ceremony, stores)
    Insider(cluster, poisoned(rows, value)(ceremony))
    coordinator = cluster.start_coordinator(open_aggregator(ceremony / "coordinator"))
    drive_to_the_end(cluster)
    assert coordinator.state.phase == "failed"
    assert coordinator.state.round == 2  # round 1 summed the lie; nobody trained on its result
    error = coordinator.state.error or ""
    assert "global update refused" in error and fragment in error, error
    assert "h1, h2, h3" in error  # every honest hospital refused it, and says so
    for hospital in cluster.hospitals.values():
        assert hospital.final_weights is None and fragment in str(hospital.error)


def test_sane_average_bounds(ceremony: Path) -> None:
    previous = np.ones(4, dtype=np.float32)
    total = weighted_payload(np.full(4, 1.1), 30_000)  # 3 rows-weighted models of 1.1
    np.testing.assert_allclose(sane_average(total, 3, previous, DEFAULT_SANITY), 1.1, rtol=1e-6)
    with pytest.raises(ProtocolError, match="moves the model by"):
        sane_average(weighted_payload(np.full(4, 9.0), 30_000), 3, previous, DEFAULT_SANITY)
    strict = Sanity(max_rows=1_000, max_update_ratio=0.5)
    with pytest.raises(ProtocolError, match="claim 30,000 training rows, more than 1,000"):
        sane_average(total, 3, previous, strict)
    with pytest.raises(ProtocolError, match="not finite"):
        sane_average(weighted_payload(np.array([1.0, np.inf, 1.0, 1.0]), 3), 3, previous, strict)
