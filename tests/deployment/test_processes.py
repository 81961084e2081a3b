"""The distributed deployment with real OS processes and a real RabbitMQ server.

BFV is used where results are compared bit for bit: its fixed-point sums decrypt exactly, so a
distributed run must reproduce the embedded simulation's final model to the last float (CKKS adds
fresh noise per encryption, which training amplifies to ~1e-5; see test_simulation.py). Pairwise
masking is on, as it is by default: the masks cancel exactly in the sum, so they change nothing
in the model; hospitals say UpdateReady, the coordinator fixes the round's participants, and only
then do they upload.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import numpy as np
import pytest

from common.crypto import (
    AGGREGATE,
    Binding,
    Cipher,
    HEConfig,
    open_aggregator,
    open_cipher,
    plain_aggregator,
    plain_cipher,
    run_key_ceremony,
)
from common.data import FeatureEncoder, load_local_data, load_schema
from common.errors import TrainingError
from common.metrics import Metrics
from common.model import ModelConfig
from common.protocol import layout
from common.protocol.messages import (
    FinalReport,
    Hello,
    ParticipantsFixed,
    RoundStarted,
    RunFinished,
    UpdateReady,
    UpdateSubmitted,
)
from common.protocol.signing import issue_identities
from common.store import LocalStore, sha256_hex
from common.transport import ANNOUNCE, SUBMIT
from common.transport.rabbitmq import RabbitMQTransport
from hefl.keylayout import KeyLayout
from hefl.simulation import Cohort, FederatedResult, SimulationConfig, run_federated
from hospital_node.trainer import FitResult, Trainer, TrainerFactory, keras_trainer
from testkit.cluster import DATA, ProcessCluster, process_cluster, sample_csv

MODEL = ModelConfig(hidden_units=(8,), batch_size=64, local_epochs=1)
ROUNDS = 5
#: Seconds a fixed participant set has to upload before a silent member is dropped.
MASK_TIMEOUT = "8"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sample_csv(tmp_path_factory.mktemp("data") / "sample.csv", patients=3000)


@pytest.fixture
def cluster(tmp_path: Path, broker: ModuleType, source: Path) -> Iterator[ProcessCluster]:
    """4 hospitals' keys, shards and broker users, ready to start; every process is killed
    afterwards."""
    with process_cluster(tmp_path, hospitals=4, rounds=ROUNDS) as running:
        running.prepare(source)
        yield running


def shard_cohort(cluster: ProcessCluster, names: tuple[str, ...] | None = None) -> Cohort:
    """The cluster's shards (of ``names``: every site), encoded as its hospitals encode them."""
    names = names or tuple(cluster.names)
    data = tuple(
        load_local_data(
            cluster.root / "shards" / f"{n}.csv",
            load_schema("diabetes130"),
            n,
            seed=42,
            test_fraction=0.2,
        )
        for n in names
    )
    encoder = FeatureEncoder(load_schema("diabetes130"))
    return Cohort(
        names=names, data=data, n_features=encoder.n_features, layout_digest=encoder.layout_digest
    )


def embedded_run(
    cluster: ProcessCluster,
    out: Path,
    cohort: Cohort,
    *,
    plaintext: bool = False,
    min_hospitals: int | None = None,
    trainer_for: TrainerFactory = keras_trainer,
) -> FederatedResult:
    """The embedded simulation on the same shards, keys and seed: encrypted FedAvg under the
    cluster's keys (masked as the cluster is), or ``plaintext`` FedAvg."""
    keys = KeyLayout(cluster.keys)
    config = SimulationConfig(
        dataset=DATA,
        hospitals=len(cohort.names),
        rounds=ROUNDS,
        model=MODEL,
        out=out,
        min_hospitals=min_hospitals,
        masking=cluster.masking,
    )

    def cipher_for(_name: str) -> Cipher:
        return plain_cipher() if plaintext else open_cipher(keys.he_hospital)

    return run_federated(
        config,
        cohort,
        run="plaintext" if plaintext else "embedded",
        cipher_for=cipher_for,
        aggregator=plain_aggregator() if plaintext else open_aggregator(keys.he_coordinator),
        store_dir=out / "store",
        trainer_for=trainer_for,
    )


def embedded_reference(
    cluster: ProcessCluster, out: Path, names: tuple[str, ...] | None = None
) -> np.ndarray:
    """The embedded simulation's final model (of ``names``: every site)."""
    return embedded_run(cluster, out, shard_cohort(cluster, names)).weights


def pooled_auc(cohort: Cohort, weights: np.ndarray) -> float:
    """The AUC of ``weights`` on the union of the cohort's hold-outs."""
    x_test, y_test = cohort.pooled_test
    return keras_trainer(MODEL, cohort.n_features).evaluate(weights, x_test, y_test).auc


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.1)


def run_everyone(cluster: ProcessCluster, *coordinator_flags: str) -> None:
    """Hospitals first (their hello waits in the durable submit queue), so round 1's deadline
    does not run while they are still importing TensorFlow on a busy machine."""
    for name in cluster.names:
        cluster.start_hospital(name)
    cluster.start_coordinator(*coordinator_flags)


def assert_completed(cluster: ProcessCluster, reference: np.ndarray | None) -> dict:
    assert cluster.wait_exit("coordinator", timeout=300) == 0, cluster.tail_logs()
    for name in cluster.names:
        assert cluster.wait_exit(name, timeout=120) == 0, cluster.tail_logs()
    state = cluster.state()
    assert state is not None and state["phase"] == "done"
    assert [r["round"] for r in state["history"]] == list(range(1, ROUNDS + 1))
    if reference is not None:
        for name in cluster.names:
            np.testing.assert_allclose(cluster.final_weights(name), reference, rtol=0, atol=1e-6)
    return state


def test_four_hospital_processes_reproduce_the_embedded_simulation(
    cluster: ProcessCluster,
    tmp_path: Path,
) -> None:
    run_everyone(cluster)
    state = assert_completed(cluster, embedded_reference(cluster, tmp_path / "embedded"))
    assert all(len(r["accepted"]) == 4 for r in state["history"])
    assert all(r["attempts"] == 1 for r in state["history"])  # masked, nobody dropped
    assert state["rejected"] == {}
    assert "round 5/5 closed" in cluster.log("coordinator")
    # Encrypted, masked and distributed, the model is as good as plaintext FedAvg's.
    cohort = shard_cohort(cluster)
    plaintext = embedded_run(cluster, tmp_path / "plaintext", cohort, plaintext=True).weights
    final = cluster.final_weights("hospital-1")
    assert abs(pooled_auc(cohort, final) - pooled_auc(cohort, plaintext)) <= 0.001


def test_a_hospital_killed_mid_round_is_left_out_then_rejoins(
    cluster: ProcessCluster,
) -> None:
    others = {"hospital-1", "hospital-2", "hospital-3"}
    # 45 s: round 1's deadline also runs while the hospitals import TensorFlow (23 s on a busy
    # machine in one CI run, which failed round 1 at a 20 s deadline).
    run_everyone(cluster, "--min-hospitals", "3", "--round-timeout", "45")
    # Killed (SIGKILL, as the OOM killer would) between its upload of round 1 and its answer to
    # round 2; dying in the participant set once it said it was ready is the next test.
    cluster.wait_log("hospital-4", r"update_submitted .*round=1\b", timeout=120)
    cluster.kill("hospital-4")
    assert not re.search(r"update_ready .*round=2\b", cluster.log("hospital-4")), (
        "hospital-4 was killed after it said it was ready for round 2"
    )

    # The round it misses: the other three are ready and the round waits for hospital-4, which
    # is still on the roster, until the deadline.
    def waiting_for_it(state: dict) -> bool:
        return state["phase"] == "round" and set(state["ready"]) == others

    stuck = cluster.wait_for(waiting_for_it, timeout=60, what="a round without hospital-4")
    time.sleep(1)
    assert cluster.state() == stuck, "the round did not wait for hospital-4"
    missed = stuck["round"]
    # Freeze the coordinator so the restarted hospital's hello arrives after that deadline
    # but before the next round can close without it. The hospital restarts after the deadline:
    # an answer it sent before it, while the coordinator was frozen, would still count.
    cluster.signal("coordinator", signal.SIGSTOP)
    try:
        wait_until(lambda: time.time() > stuck["deadline"] + 0.5, timeout=60, what="deadline")
        cluster.start_hospital("hospital-4")  # its log is appended to
        wait_until(
            lambda: cluster.log("hospital-4").count("hospital_ready") == 2,
            timeout=120,
            what="hospital-4 restarted",
        )
    finally:
        cluster.signal("coordinator", signal.SIGCONT)
    state = assert_completed(cluster, reference=None)
    accepted = [set(r["accepted"]) for r in state["history"]]
    assert missed == 2 and accepted[0] == others | {"hospital-4"}
    assert accepted[missed - 1] == others  # closed on quorum (3 of 4) at the deadline
    assert all(a == others | {"hospital-4"} for a in accepted[missed:])  # back right after


@dataclass
class LeavesAfter:
    """The trainer of an embedded run, where the hospital training on ``leaver`` (its training
    set) is gone after ``rounds`` rounds: its later fits fail, so the others go on without it."""

    trainer: Trainer
    leaver: np.ndarray
    rounds: int
    fits: int = field(default=0, init=False)

    def fit(self, weights: np.ndarray, x: np.ndarray, y: np.ndarray, *, seed: int) -> FitResult:
        if x is self.leaver:
            self.fits += 1
            if self.fits > self.rounds:
                raise TrainingError(f"gone after round {self.rounds}")
        return self.trainer.fit(weights, x, y, seed=seed)

    def evaluate(self, weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> Metrics:
        return self.trainer.evaluate(weights, x, y)

    def predict(self, weights: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self.trainer.predict(weights, x)

    def save_model(self, weights: np.ndarray, path: Path, metrics: Metrics | None) -> None:
        self.trainer.save_model(weights, path, metrics)


def freeze_once_ready(cluster: ProcessCluster, victim: str, *, gate: str) -> int:
    """SIGSTOP ``victim`` in the first round from 2 on where it said it is ready before the
    participant set was fixed; return that round.

    The set is fixed once every present hospital is ready, so ``gate`` is frozen from its upload
    of the round before until ``victim`` is frozen: the set cannot be fixed in between. A round
    where ``gate`` was already ready when frozen is skipped."""
    for round_ in range(2, ROUNDS + 1):
        cluster.wait_log(gate, rf"update_submitted .*round={round_ - 1}\b", timeout=120)
        cluster.signal(gate, signal.SIGSTOP)
        try:
            if re.search(rf"update_ready .*round={round_}\b", cluster.log(gate)):
                continue  # frozen too late
            cluster.wait_log(victim, rf"update_ready .*round={round_}\b", timeout=60)
            cluster.signal(victim, signal.SIGSTOP)
            return round_
        finally:
            cluster.signal(gate, signal.SIGCONT)
    raise AssertionError(f"{gate} could not be frozen before it was ready\n{cluster.tail_logs()}")


def test_a_hospital_killed_after_the_participants_were_fixed_is_dropped_and_the_rest_is_fedavg(
    cluster: ProcessCluster,
    tmp_path: Path,
) -> None:
    survivors = ("hospital-1", "hospital-2", "hospital-3")
    for name in cluster.names:
        cluster.start_hospital(name)
    for name in cluster.names:  # so that round 1 waits for no hospital's TensorFlow import
        cluster.wait_log(name, "amqp_waiting_for_topology", timeout=120)  # for the coordinator
    cluster.start_coordinator(
        "--min-hospitals", "3", "--round-timeout", "15", "--mask-timeout", MASK_TIMEOUT
    )
    dropped = freeze_once_ready(cluster, "hospital-4", gate="hospital-1")
    cluster.wait_log(
        "coordinator",
        rf"participants_fixed .*round={dropped} attempt=1 participants=4\b",
        timeout=30,
    )
    cluster.kill("hospital-4")  # in the fixed set, it never uploads
    assert not re.search(rf"update_submitted .*round={dropped}\b", cluster.log("hospital-4")), (
        f"hospital-4 uploaded in round {dropped} before it was frozen"
    )

    assert cluster.wait_exit("coordinator", timeout=120) == 0, cluster.tail_logs()
    for name in survivors:
        assert cluster.wait_exit(name, timeout=60) == 0, cluster.tail_logs()
    state = cluster.state()
    assert state is not None and state["phase"] == "done"
    history = state["history"]
    assert [r["round"] for r in history] == list(range(1, ROUNDS + 1))
    record = history[dropped - 1]
    assert record["attempts"] == 2
    assert set(record["accepted"]) == set(survivors) and record["failed"] == ["hospital-4"]
    assert all(len(r["accepted"]) == 4 for r in history[: dropped - 1])
    assert all(set(r["accepted"]) == set(survivors) for r in history[dropped:])
    assert cluster.summary()["rounds"][dropped - 1]["attempts"] == 2
    log = cluster.log("coordinator")
    assert f"participants_dropped run={cluster.run} round={dropped} missing=hospital-4" in log
    assert re.search(rf"participants_fixed .*round={dropped} attempt=2 participants=3\b", log)

    # The same schedule embedded: hospital-4 takes part until the round before, then not.
    cohort = shard_cohort(cluster)
    leaver = cohort.data[cohort.names.index("hospital-4")].x_train

    def trainers(model: ModelConfig, n_features: int) -> Trainer:
        return LeavesAfter(keras_trainer(model, n_features), leaver, dropped - 1)

    encrypted = embedded_run(
        cluster, tmp_path / "embedded", cohort, min_hospitals=3, trainer_for=trainers
    )
    plaintext = embedded_run(
        cluster,
        tmp_path / "plaintext",
        cohort,
        plaintext=True,
        min_hospitals=3,
        trainer_for=trainers,
    )
    for reference in (encrypted, plaintext):
        assert [set(r.accepted) for r in reference.rounds] == [set(r["accepted"]) for r in history]
    plaintext_auc = pooled_auc(cohort, plaintext.weights)
    for name in survivors:
        final = cluster.final_weights(name)
        np.testing.assert_allclose(final, encrypted.weights, rtol=0, atol=1e-6)  # measured: 0
        # BFV's fixed-point encoding is all that separates it from plaintext FedAvg (~6e-6).
        np.testing.assert_allclose(final, plaintext.weights, rtol=0, atol=5e-5)
        assert abs(pooled_auc(cohort, final) - plaintext_auc) <= 0.001


def test_a_restarted_coordinator_resumes_and_loses_nothing(
    cluster: ProcessCluster,
    tmp_path: Path,
) -> None:
    run_everyone(cluster)
    before = cluster.wait_for(
        lambda s: s["round"] >= 2 and s["phase"] == "round", timeout=180, what="round 2"
    )
    cluster.kill("coordinator")
    cluster.start_coordinator()
    assert_completed(cluster, embedded_reference(cluster, tmp_path / "embedded"))
    assert "run_resumed" in cluster.log("coordinator")
    assert before["round"] >= 2


def test_everyone_reconnects_after_the_broker_restarts(
    cluster: ProcessCluster,
    tmp_path: Path,
    broker: ModuleType,
) -> None:
    run_everyone(cluster)
    cluster.wait_for(
        lambda s: s["round"] >= 2 and s["phase"] == "round", timeout=180, what="round 2"
    )
    broker.restart()
    assert_completed(cluster, embedded_reference(cluster, tmp_path / "embedded"))


def test_bad_input_on_the_live_broker_is_rejected_and_the_run_is_right(
    cluster: ProcessCluster,
    tmp_path: Path,
) -> None:
    # Unmasked: the forged updates below come before any participant set is fixed, where a
    # masked run refuses them all as "not-a-participant" (tests/protocol) before these checks.
    cluster.masking = False
    keys = KeyLayout(cluster.keys)
    store = LocalStore(cluster.store)
    cluster.start_coordinator()
    cluster.wait_for(lambda s: s["round"] == 1, timeout=60, what="the coordinator")
    # A ciphertext under another key ceremony's key, honestly signed by hospital-2.
    run_key_ceremony(HEConfig(scheme="bfv"), tmp_path / "other-h", tmp_path / "other-c")
    foreign = open_cipher(tmp_path / "other-h").encrypt(np.zeros(10))
    key2 = layout.update_key(cluster.run, 1, "hospital-2")
    store.put(key2, foreign)
    # A blob whose digest does not match the message that names it.
    key1 = layout.update_key(cluster.run, 1, "hospital-1")
    store.put(key1, b"placeholder")
    h1, h3 = keys.codec("hospital-1"), keys.codec("hospital-3")
    outsider = KeyLayout(tmp_path / "outsider")
    issue_identities(outsider.root / "identities", ["hospital-1"])
    forged = outsider.codec("hospital-1")  # right name, wrong key

    def update(hospital: str, round_: int, ref: str, sha: str) -> UpdateSubmitted:
        return UpdateSubmitted(
            run=cluster.run, round=round_, hospital=hospital, blob_ref=ref, sha256=sha
        )

    bad = [  # each from the broker login of the hospital it claims to be
        ("hospital-1", b"\x00\x01garbage\xff"),  # malformed
        ("hospital-1", b'{"type": "Hello", "v": 1, "run": "run-1", "hospital": "hospital-1"}'),
        ("hospital-1", h1.wrap(b'{"type": "Hello", "v": 1, "run": 7}')),  # signed, wrong schema
        ("hospital-1", forged.encode(update("hospital-1", 1, key1, "0" * 64))),  # bad signature
        ("hospital-1", h1.encode(update("hospital-1", 1, key1, "f" * 64))),  # digest mismatch
        (
            "hospital-2",
            keys.codec("hospital-2").encode(update("hospital-2", 1, key2, sha256_hex(foreign))),
        ),
        ("hospital-3", h1.encode(update("hospital-1", 1, key1, "e" * 64))),  # relayed by another
    ]
    logins = {
        name: RabbitMQTransport(url=cluster.broker_url(name), identity=name, prefix=cluster.prefix)
        for name in ("hospital-1", "hospital-2", "hospital-3")
    }
    try:
        for sender, body in bad:
            logins[sender].publish(SUBMIT, body)
        cluster.wait_for(
            lambda s: sum(s["rejected"].values()) >= len(bad), timeout=60, what="rejections"
        )
        for name in cluster.names:
            cluster.start_hospital(name)
        cluster.wait_for(lambda s: s["round"] >= 3, timeout=180, what="round 3")
        # A replay of hospital-3's round-1 submission (validly signed, for a closed round); its
        # blob was deleted once round 1's aggregate was written.
        ref3 = layout.update_key(cluster.run, 1, "hospital-3")
        assert not store.exists(ref3)
        replay = h3.encode(update("hospital-3", 1, ref3, sha256_hex(b"round 1")))
        logins["hospital-3"].publish(SUBMIT, replay)
        state = assert_completed(cluster, embedded_reference(cluster, tmp_path / "embedded"))
    finally:
        for login in logins.values():
            login.close()
    assert state["rejected"] == {
        "malformed": 2,
        "bad-signature": 2,
        "StoreError": 1,
        "BlobError": 1,
        "late": 1,
        "sender-mismatch": 1,
    }
    log = cluster.log("coordinator")
    for reason in (
        "reason=malformed",
        "reason=bad-signature",
        "reason=StoreError",
        "reason=BlobError",
        "reason=late",
        "reason=sender-mismatch",
    ):
        assert reason in log


class Insider:
    """hospital-4 played by the test: its own broker login, signing key and HE bundle. It says it
    is ready every round, and once named in the participant set uploads a blob whose header lies
    (a different lie each round)."""

    LIES: ClassVar[dict[int, str]] = {
        1: "blob-summands",
        2: "blob-values",
        3: "blob-binding",
        4: "blob-kind",
        5: "blob-size",
    }

    def __init__(self, cluster: ProcessCluster) -> None:
        keys = KeyLayout(cluster.keys)
        self.cluster = cluster
        self.codec = keys.codec("hospital-4")
        self.cipher = open_cipher(keys.he_hospital)
        self.store = LocalStore(cluster.store)
        self.values = 0
        self.ready: set[int] = set()
        self.answered: set[tuple[int, int]] = set()
        self.done = threading.Event()
        self.bus = RabbitMQTransport(
            url=cluster.broker_url("hospital-4"),
            identity="hospital-4",
            prefix=cluster.prefix,
            senders=("coordinator",),
        )

    def craft(self, round_: int) -> bytes:
        own = Binding(run=self.cluster.run, round=round_, sender="hospital-4")
        payload = np.full(self.values, 0.01)
        spec = self.cipher.spec
        if round_ == 1:
            header, chunks = spec.decode(self.cipher.encrypt(payload, binding=own))
            return spec.encode(
                kind=header.kind, value_count=len(payload), summands=100, chunks=chunks, binding=own
            )
        if round_ == 2:
            return self.cipher.encrypt(np.zeros(1), binding=own)
        if round_ == 3:
            return self.cipher.encrypt(payload, binding=replace(own, sender="hospital-1"))
        if round_ == 4:
            return self.cipher.encrypt(payload, kind=AGGREGATE, binding=own)
        return self.cipher.encrypt(payload, binding=own) + bytes(spec.max_blob_bytes(len(payload)))

    def handle(self, body: bytes) -> None:
        message = self.codec.decode(body)
        run = self.cluster.run
        if isinstance(message, RoundStarted) and message.round not in self.ready:
            self.ready.add(message.round)  # re-announcements (hellos) are not new rounds
            if message.global_ref is not None:  # learn the model size from the aggregate
                self.values = self.cipher.decrypt(self.store.get(message.global_ref)).shape[0]
            elif not self.values:
                self.values = 10  # round 1: any size will do for the lies of round 1
            ready = UpdateReady(run=run, round=message.round, hospital="hospital-4")
            self.bus.publish(SUBMIT, self.codec.encode(ready))
        elif (
            isinstance(message, ParticipantsFixed)
            and "hospital-4" in message.participants
            and (message.round, message.attempt) not in self.answered
        ):
            self.answered.add((message.round, message.attempt))
            blob = self.craft(message.round)
            key = layout.update_key(run, message.round, "hospital-4")
            self.store.put(key, blob)
            submitted = UpdateSubmitted(
                run=run,
                round=message.round,
                hospital="hospital-4",
                blob_ref=key,
                sha256=sha256_hex(blob),
                attempt=message.attempt,
            )
            self.bus.publish(SUBMIT, self.codec.encode(submitted))
        elif isinstance(message, RunFinished):
            report = FinalReport(run=run, hospital="hospital-4", metrics={})
            self.bus.publish(SUBMIT, self.codec.encode(report))
            self.done.set()

    def serve(self) -> None:
        self.bus.subscribe(ANNOUNCE, self.handle)
        self.bus.publish(
            SUBMIT, self.codec.encode(Hello(run=self.cluster.run, hospital="hospital-4"))
        )
        self.bus.serve(stop=self.done.is_set)


def test_an_insider_on_the_live_broker_is_refused_and_the_others_model_is_unchanged(
    cluster: ProcessCluster,
    tmp_path: Path,
) -> None:
    honest = ("hospital-1", "hospital-2", "hospital-3")
    for name in honest:
        cluster.start_hospital(name)
    cluster.start_coordinator("--min-hospitals", "3")
    insider = Insider(cluster)
    thread = threading.Thread(target=insider.serve, daemon=True)
    thread.start()
    try:
        assert cluster.wait_exit("coordinator", timeout=300) == 0, cluster.tail_logs()
        thread.join(timeout=60)
    finally:
        insider.done.set()
        insider.bus.close()
    for name in honest:
        assert cluster.wait_exit(name, timeout=120) == 0, cluster.tail_logs()
    state = cluster.state()
    assert state is not None and state["phase"] == "done"
    assert state["rejected"] == {reason: 1 for reason in Insider.LIES.values()}
    assert [set(r["accepted"]) for r in state["history"]] == [set(honest)] * ROUNDS
    assert [r["failed"] for r in state["history"]] == [["hospital-4"]] * ROUNDS
    # Its refused upload ends the first attempt at once: the honest three mask afresh.
    assert [r["attempts"] for r in state["history"]] == [2] * ROUNDS
    log = cluster.log("coordinator")
    for reason in Insider.LIES.values():
        assert f"reason={reason}" in log
    reference = embedded_reference(cluster, tmp_path / "embedded", names=honest)
    for name in honest:
        np.testing.assert_allclose(cluster.final_weights(name), reference, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_twenty_hospital_processes_complete_three_rounds(
    tmp_path: Path,
    broker: ModuleType,
) -> None:
    source = sample_csv(tmp_path / "sample.csv", patients=6000, seed=9)
    with process_cluster(tmp_path, hospitals=20, rounds=3) as cluster:
        cluster.prepare(source)
        run_everyone(cluster)
        assert cluster.wait_exit("coordinator", timeout=600) == 0, cluster.tail_logs()
        state = cluster.state()
        assert state is not None and state["phase"] == "done"
        assert [len(r["accepted"]) for r in state["history"]] == [20, 20, 20]
