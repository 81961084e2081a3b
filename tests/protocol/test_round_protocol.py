"""Coordinator and hospitals over the in-memory transport: the round protocol and its faults.

Real Keras training on small synthetic data; the plaintext cipher keeps these fast (the encrypted
path is the same code and is exercised in test_simulation.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from common.crypto import (
    HEConfig,
    ckks_parameters,
    open_aggregator,
    open_cipher,
    plain_aggregator,
    plain_cipher,
    run_key_ceremony,
)
from common.errors import TrainingError
from common.fedavg import payload_size
from common.model import ModelConfig, initial_weights, parameter_count
from common.protocol import layout
from common.protocol.messages import RoundStarted, UpdateSubmitted, encode
from common.protocol.signing import MessageCodec, generate_identities
from common.server_optimizer import DEFAULT_SERVER_CONFIG, ServerOptimizerConfig
from common.store import InMemoryStore, sha256_hex
from common.transport import SUBMIT, InMemoryTransport
from coordinator.service import Coordinator
from coordinator.state import RunPlan
from hospital_node.journal import Journal
from hospital_node.observer import HospitalObserver
from hospital_node.service import Hospital, LocalData, training_seed
from hospital_node.training import LocalTrainer

N_FEATURES = 6
MODEL = ModelConfig(hidden_units=(4,), batch_size=16)
SEED = 11
DIGEST = "cfg-digest"


def make_data(index: int, n: int) -> LocalData:
    rng = np.random.default_rng(100 + index)
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    logits = x @ np.linspace(-1.0, 1.0, N_FEATURES) + 0.3 * index
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    cut = int(n * 0.75)
    return LocalData(x_train=x[:cut], y_train=y[:cut], x_test=x[cut:], y_test=y[cut:])


DATA = {f"h{i}": make_data(i, 80 + 40 * i) for i in range(1, 5)}
IDENTITIES, TRUST = generate_identities(["h1", "h2", "h3", "h4"])
FOUR = ("h1", "h2", "h3", "h4")


def codec(name: str) -> MessageCodec:
    return MessageCodec(IDENTITIES[name], TRUST)


class FullDiskTrainer(LocalTrainer):
    def save_model(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")


class FailingTrainer(LocalTrainer):
    def fit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise TrainingError("simulated out-of-memory during training")


@dataclass
class Cluster:
    """One coordinator and its hospitals on one transport, with a controllable clock."""

    store: InMemoryStore
    plan: RunPlan
    state_store: InMemoryStore = field(default_factory=InMemoryStore)  # the coordinator's own
    now: list[float] = field(default_factory=lambda: [1000.0])
    transport: InMemoryTransport = field(default_factory=InMemoryTransport)
    hospitals: dict[str, Hospital] = field(default_factory=dict)
    coordinator: Coordinator | None = None

    def clock(self) -> float:
        return self.now[0]

    def add_hospital(
        self,
        name: str,
        *,
        trainer: LocalTrainer | None = None,
        cipher=None,
        out_dir: Path | None = None,
        hello: bool = False,
        kind: type[Hospital] = Hospital,
        observers: tuple[HospitalObserver, ...] = (),
        server_optimizer: ServerOptimizerConfig = DEFAULT_SERVER_CONFIG,
        journal: Journal | None = None,
    ) -> None:
        hospital = kind(
            name,
            run=self.plan.run,
            data=DATA[name],
            trainer=trainer or LocalTrainer(MODEL, N_FEATURES),
            cipher=cipher or plain_cipher(),
            transport=self.transport.participant(name),
            store=self.store,
            codec=codec(name),
            initial_weights=initial_weights(MODEL, N_FEATURES, SEED),
            seed=SEED,
            config_digest=DIGEST,
            out_dir=out_dir,
            clock=self.clock,
            masks=codec(name).pairwise_masks() if self.plan.masking else None,
            observers=observers,
            server_optimizer=server_optimizer,
            journal=journal,
        )
        hospital.start(hello=hello)
        self.hospitals[name] = hospital

    def start_coordinator(self, aggregator=None, **options) -> Coordinator:
        self.coordinator = Coordinator(
            self.plan,
            transport=self.transport,
            store=self.store,
            state_store=self.state_store,
            aggregator=aggregator or plain_aggregator(),
            codec=codec("coordinator"),
            clock=self.clock,
            **options,
        )
        self.coordinator.start()
        return self.coordinator

    def run_to_end(self) -> Coordinator:
        coordinator = self.coordinator
        assert coordinator is not None
        while not coordinator.finished and self.transport.deliver_all():
            pass
        return coordinator


def make_plan(**overrides) -> RunPlan:
    values = dict(
        run="run-1",
        rounds=3,
        hospitals=("h1", "h2", "h3"),
        min_hospitals=3,
        round_timeout=60.0,
        final_timeout=60.0,
        config_digest=DIGEST,
        value_count=payload_size(parameter_count(MODEL, N_FEATURES)),
    )
    values.update(overrides)
    return RunPlan(**values)  # type: ignore[arg-type]


def full_cluster(**plan_overrides) -> Cluster:
    cluster = Cluster(store=InMemoryStore(), plan=make_plan(**plan_overrides))
    for name in cluster.plan.hospitals:
        cluster.add_hospital(name)
    return cluster


def reference_fedavg(names: tuple[str, ...], rounds: int) -> np.ndarray:
    """FedAvg written out directly with np.average: what the protocol must reproduce."""
    trainer = LocalTrainer(MODEL, N_FEATURES)
    weights = initial_weights(MODEL, N_FEATURES, SEED)
    for round_ in range(1, rounds + 1):
        fits = [
            trainer.fit(
                weights,
                DATA[n].x_train,
                DATA[n].y_train,
                seed=training_seed(SEED, round_, n),
            )
            for n in names
        ]
        weights = np.average(
            np.stack([f.weights for f in fits]), axis=0, weights=[f.n for f in fits]
        ).astype(np.float32)
    return weights


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return reference_fedavg(("h1", "h2", "h3"), 3)


def test_a_run_reproduces_weighted_fedavg(reference: np.ndarray) -> None:
    cluster = full_cluster()
    cluster.start_coordinator()
    coordinator = cluster.run_to_end()
    assert coordinator.state.phase == "done"
    finals = [h.final_weights for h in cluster.hospitals.values()]
    for final in finals:
        assert final is not None
        np.testing.assert_allclose(final, reference, atol=1e-6)
    assert [len(r.accepted) for r in coordinator.state.history] == [3, 3, 3]
    assert all(r.model_metrics is not None for r in coordinator.state.history)
    assert coordinator.state.rejected == {}


def encrypted_run(tmp_path: Path, config: HEConfig) -> np.ndarray:
    run_key_ceremony(config, tmp_path / "hospital", tmp_path / "coordinator")
    cluster = Cluster(store=InMemoryStore(), plan=make_plan())
    for name in cluster.plan.hospitals:
        cluster.add_hospital(name, cipher=open_cipher(tmp_path / "hospital"))
    cluster.start_coordinator(open_aggregator(tmp_path / "coordinator"))
    coordinator = cluster.run_to_end()
    assert coordinator.state.phase == "done"
    final = cluster.hospitals["h1"].final_weights
    assert final is not None
    return final


def test_encrypted_run_matches_the_plaintext_reference(
    tmp_path: Path, reference: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    # These hospitals hold 60 to 150 training rows: a 56-bit prime keeps their average exact.
    with caplog.at_level(logging.WARNING, logger="hefl.hospital"):
        final = encrypted_run(tmp_path, HEConfig(**ckks_parameters(56)))
    np.testing.assert_allclose(final, reference, atol=1e-6)
    assert "imprecise_average" not in caplog.text


def test_a_hospital_warns_when_the_default_precision_is_coarse_for_few_rows(
    tmp_path: Path, reference: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    # The default 36-bit prime over FedAvg weights summing to 0.03 (300 rows): each hospital
    # says so once, naming the remedy (later rounds at debug level), and the run still ends
    # near the reference.
    with caplog.at_level(logging.DEBUG, logger="hefl.hospital"):
        final = encrypted_run(tmp_path, HEConfig())
    said = [r for r in caplog.records if "imprecise_average" in r.getMessage()]
    warnings = [r for r in said if r.levelno == logging.WARNING]
    assert len(warnings) == 3, [r.getMessage() for r in warnings]  # one per hospital
    assert {w.getMessage().split("hospital=")[1].split()[0] for w in warnings} == {"h1", "h2", "h3"}
    assert all("--ckks-prime-bits" in w.getMessage() for w in warnings)
    assert len(said) > len(warnings)  # every round's aggregate was imprecise: the rest at debug
    assert 1e-6 < np.max(np.abs(final - reference)) < 0.5


def test_garbage_and_forgeries_are_counted_and_the_run_still_completes(
    reference: np.ndarray,
) -> None:
    cluster = full_cluster()
    coordinator = cluster.start_coordinator()
    forged_blob = b"not a ciphertext"
    key = layout.update_key("run-1", 1, "h2")
    cluster.store.put("runs/run-1/elsewhere.blob", forged_blob)
    outsider_ids, outsider_trust = generate_identities(["h2"])
    outsider = MessageCodec(outsider_ids["h2"], outsider_trust)  # right name, wrong key

    def update(**fields: object) -> UpdateSubmitted:
        values: dict = dict(run="run-1", round=1, hospital="h2", blob_ref=key, sha256="0" * 64)
        values.update(fields)
        return UpdateSubmitted(**values)

    bad = [  # (sender, body): what each participant's own broker login sends
        ("h1", b"\x00\xff garbage"),
        ("h1", b'{"type": "UpdateSubmitted"}'),
        ("h2", encode(update())),  # valid message, unsigned
        ("h2", outsider.encode(update())),  # forged signature
        ("h1", codec("h1").encode(update())),  # h1 speaking for h2
        ("h1", codec("h1").encode(update(run="other", hospital="h1"))),
        ("h2", codec("h2").encode(update())),  # right signer, digest does not match the blob
        (
            "h3",
            codec("h3").encode(
                update(
                    hospital="h3",
                    blob_ref="runs/run-1/elsewhere.blob",
                    sha256=sha256_hex(forged_blob),
                )
            ),
        ),
        ("h1", codec("h2").encode(update())),  # h2's valid message relayed by h1's login
        (None, codec("h2").encode(update())),  # no authenticated sender: dropped unread
    ]
    for sender, body in bad:
        cluster.transport.publish(SUBMIT, body, sender=sender)
    cluster.run_to_end()
    assert coordinator.state.phase == "done"
    assert coordinator.state.rejected == {
        "malformed": 1,
        "bad-signature": 4,
        "other-run": 1,
        "StoreError": 1,
        "bad-ref": 1,
        "sender-mismatch": 1,
    }
    assert cluster.transport.dropped == {"unauthenticated": 1}
    np.testing.assert_allclose(cluster.hospitals["h1"].final_weights, reference, atol=1e-6)


def test_hospitals_ignore_a_forged_round_announcement() -> None:
    cluster = full_cluster(rounds=1)
    forged = codec("h1").encode(
        RoundStarted(
            run="run-1",
            round=1,
            global_ref=None,
            global_sha256=None,
            deadline=1e12,
            config_digest=DIGEST,
        )
    )
    cluster.transport.publish("announce", forged)
    cluster.transport.deliver_all()
    for hospital in cluster.hospitals.values():
        assert hospital.rejected == {"SignatureError": 1}
    assert cluster.store.list() == []  # nobody trained on the forged announcement


def test_a_replayed_submission_from_an_earlier_round_is_rejected_as_late() -> None:
    cluster = full_cluster(rounds=2)
    coordinator = cluster.start_coordinator()
    captured: list[bytes] = []
    cluster.transport.subscribe(SUBMIT, captured.append)
    while coordinator.state.round < 2:
        cluster.transport.deliver_all(limit=1)
    reader = codec("coordinator")
    first_round = [
        b for b in captured if isinstance(m := reader.decode(b), UpdateSubmitted) and m.round == 1
    ]
    assert first_round
    replayed = reader.decode(first_round[0])
    assert isinstance(replayed, UpdateSubmitted)
    cluster.transport.publish(SUBMIT, first_round[0], sender=replayed.hospital)
    cluster.run_to_end()
    assert coordinator.state.phase == "done"
    assert coordinator.state.rejected == {"late": 1}


def test_a_failing_hospital_replies_with_an_error_and_the_round_closes_on_quorum() -> None:
    cluster = Cluster(store=InMemoryStore(), plan=make_plan(hospitals=FOUR, rounds=2))
    for name in ("h1", "h2", "h3"):
        cluster.add_hospital(name)
    cluster.add_hospital("h4", trainer=FailingTrainer(MODEL, N_FEATURES))
    cluster.start_coordinator()
    coordinator = cluster.run_to_end()
    assert coordinator.state.phase == "done"
    assert [r.failed for r in coordinator.state.history] == [("h4",), ("h4",)]
    expected = reference_fedavg(("h1", "h2", "h3"), 2)
    np.testing.assert_allclose(cluster.hospitals["h1"].final_weights, expected, atol=1e-6)


def test_without_quorum_the_run_fails_with_a_clear_error() -> None:
    cluster = Cluster(store=InMemoryStore(), plan=make_plan(min_hospitals=3))
    cluster.add_hospital("h1")
    cluster.add_hospital("h2")
    cluster.add_hospital("h3", trainer=FailingTrainer(MODEL, N_FEATURES))
    coordinator = cluster.start_coordinator()
    cluster.run_to_end()
    assert coordinator.state.phase == "failed"
    assert "only 2 of 3" in (coordinator.state.error or "")
    for hospital in cluster.hospitals.values():  # told to stop, with the reason
        assert hospital.final_weights is None
        assert "only 2 of 3" in str(hospital.error)


def test_the_deadline_closes_a_round_with_a_silent_hospital() -> None:
    cluster = Cluster(store=InMemoryStore(), plan=make_plan(hospitals=FOUR, rounds=1))
    for name in ("h1", "h2", "h3"):  # h4 never starts
        cluster.add_hospital(name)
    coordinator = cluster.start_coordinator()
    cluster.transport.deliver_all()
    assert coordinator.state.phase == "round" and len(coordinator.state.accepted) == 3
    cluster.now[0] += 61.0
    coordinator.tick()
    cluster.transport.deliver_all()
    assert coordinator.state.history[0].accepted == ("h1", "h2", "h3")
    cluster.now[0] += 1.0  # h4 left the roster: the final phase waits only for the three
    coordinator.tick()
    assert coordinator.state.phase == "done"


def test_fewer_replicas_than_identities_run_without_waiting_for_deadlines() -> None:
    plan = make_plan(hospitals=FOUR, expected_hospitals=3, rounds=3)
    cluster = Cluster(store=InMemoryStore(), plan=plan)
    coordinator = cluster.start_coordinator()
    for name in ("h1", "h2", "h3"):  # h4's identity was issued, but no replica runs it
        cluster.add_hospital(name, hello=True)
    while coordinator.state.round < 2:  # the clock never moves: no deadline can close a round
        assert cluster.transport.deliver_all(limit=1), "round 1 stalled"
    cluster.add_hospital("h4", hello=True)  # scaled up between rounds: joins round 2
    cluster.run_to_end()
    assert coordinator.state.phase == "done"
    assert [set(r.accepted) for r in coordinator.state.history] == [
        {"h1", "h2", "h3"},
        set(FOUR),
        set(FOUR),
    ]
    assert set(coordinator.state.roster) == set(FOUR)
    assert all(h.final_weights is not None for h in cluster.hospitals.values())


def test_a_restarted_coordinator_resumes_the_round_without_losing_accepted_updates(
    reference: np.ndarray,
) -> None:
    store, state_store = InMemoryStore(), InMemoryStore()
    first = Cluster(store=store, plan=make_plan(), state_store=state_store)
    for name in first.plan.hospitals:
        first.add_hospital(name)
    coordinator = first.start_coordinator()
    while not (coordinator.state.round == 2 and len(coordinator.state.accepted) == 2):
        first.transport.deliver_all(limit=1)
    accepted_before = coordinator.state.accepted
    # The coordinator process dies here; hospitals restart too (they are stateless).
    second = Cluster(store=store, plan=make_plan(), state_store=state_store)
    for name in second.plan.hospitals:
        second.add_hospital(name)
    resumed = second.start_coordinator()
    assert resumed.state.round == 2 and resumed.state.accepted == accepted_before
    second.run_to_end()
    assert resumed.state.phase == "done"
    np.testing.assert_allclose(second.hospitals["h2"].final_weights, reference, atol=1e-6)


def test_a_hospital_that_cannot_save_the_final_model_reports_the_error(tmp_path: Path) -> None:
    cluster = Cluster(store=InMemoryStore(), plan=make_plan(rounds=1))
    cluster.add_hospital("h1", out_dir=tmp_path)
    cluster.add_hospital("h2", out_dir=tmp_path)
    cluster.add_hospital("h3", trainer=FullDiskTrainer(MODEL, N_FEATURES), out_dir=tmp_path)
    cluster.start_coordinator()
    cluster.transport.deliver_all()
    failed = cluster.hospitals["h3"]
    assert failed.final_weights is None
    assert isinstance(failed.error, TrainingError)
    assert "No space left on device" in str(failed.error)
    assert (tmp_path / "h1" / "final_model.keras").exists()
