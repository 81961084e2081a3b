"""Server optimizers and early stopping end to end: coordinator and hospitals in memory.

The coordinator only adds; each hospital applies the server optimizer to the decrypted average
and keeps its state in memory. These tests check that every hospital, including one restarted
mid-run, ends with bit-identical weights, equal to FedAdam written out by hand over
``np.average``; that an early-stopped run ends with the best round's model; and that a hospital
rebuilding its state refuses stored aggregates the coordinator did not sign for.
"""

from __future__ import annotations

import math
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
    plain_aggregator,
    plain_cipher,
    run_key_ceremony,
)
from common.crypto.blob import COORDINATOR_SENDER
from common.fedavg import weighted_payload
from common.model import initial_weights
from common.protocol import layout
from common.protocol.history import aggregate_chain
from common.protocol.messages import (
    Message,
    RoundStarted,
    RunFinished,
    UpdateFailed,
    UpdateSubmitted,
)
from common.server_optimizer import ServerOptimizerConfig
from common.store import InMemoryStore
from common.transport import ANNOUNCE, SUBMIT
from coordinator.service import Coordinator
from hospital_node.service import Hospital, training_seed
from hospital_node.training import LocalTrainer
from tests.protocol.test_round_protocol import (
    DATA,
    FOUR,
    MODEL,
    N_FEATURES,
    SEED,
    Cluster,
    codec,
    make_plan,
    reference_fedavg,
)

FEDADAM = ServerOptimizerConfig(name="fedadam", learning_rate=0.05)
THREE = ("h1", "h2", "h3")


def reference_fedadam(names: tuple[str, ...], rounds: int, lr: float = 0.05) -> np.ndarray:
    """FedAdam written out (Reddi et al., with TFF's bias correction) over np.average."""
    beta_1, beta_2, epsilon = 0.9, 0.99, 1e-3
    trainer = LocalTrainer(MODEL, N_FEATURES)
    x = initial_weights(MODEL, N_FEATURES, SEED).astype(np.float64)
    m, v = np.zeros_like(x), np.zeros_like(x)
    for t in range(1, rounds + 1):
        fits = [
            trainer.fit(
                x.astype(np.float32),
                DATA[n].x_train,
                DATA[n].y_train,
                seed=training_seed(SEED, t, n),
            )
            for n in names
        ]
        average = np.average(
            np.stack([f.weights for f in fits]), axis=0, weights=[f.n for f in fits]
        )
        delta = average - x
        m = beta_1 * m + (1 - beta_1) * delta
        v = beta_2 * v + (1 - beta_2) * delta**2
        x = x + lr * math.sqrt(1 - beta_2**t) / (1 - beta_1**t) * m / (np.sqrt(v) + epsilon)
    return x.astype(np.float32)


class Killable(Hospital):
    """A hospital whose process can die: once ``dead``, it handles nothing more."""

    dead = False

    def handle(self, body: bytes) -> None:
        if not self.dead:
            super().handle(body)


def fedadam_cluster(hospitals: tuple[str, ...] = THREE, **plan: object) -> Cluster:
    cluster = Cluster(store=InMemoryStore(), plan=make_plan(hospitals=hospitals, **plan))
    for name in hospitals:
        cluster.add_hospital(name, kind=Killable, server_optimizer=FEDADAM)
    return cluster


def run_until_round(cluster: Cluster, round_: int) -> Coordinator:
    coordinator = cluster.start_coordinator()
    while coordinator.state.round < round_:
        assert cluster.transport.deliver_all(limit=1), f"stalled before round {round_}"
    return coordinator


def restart(cluster: Cluster, name: str, *, hello: bool = True) -> Hospital:
    """``name``'s process dies and a new one with the same identity and data starts."""
    old = cluster.hospitals[name]
    assert isinstance(old, Killable)
    old.dead = True
    cluster.add_hospital(name, hello=hello, server_optimizer=FEDADAM)
    return cluster.hospitals[name]


class Submissions:
    """What hospitals submit from now on, decoded when read."""

    def __init__(self, cluster: Cluster) -> None:
        self._bodies: list[bytes] = []
        cluster.transport.subscribe(SUBMIT, self._bodies.append)

    def of(self, hospital: str) -> list[Message]:
        decoded = [codec("coordinator").decode(body) for body in self._bodies]
        return [m for m in decoded if getattr(m, "hospital", None) == hospital]


def finals(cluster: Cluster) -> list[np.ndarray]:
    weights = [h.final_weights for h in cluster.hospitals.values()]
    assert all(w is not None for w in weights)
    return [w for w in weights if w is not None]


@pytest.fixture(scope="module")
def adam_reference() -> np.ndarray:
    return reference_fedadam(THREE, 3)


def test_every_hospital_ends_with_identical_weights_equal_to_fedadam(
    adam_reference: np.ndarray,
) -> None:
    cluster = fedadam_cluster()
    cluster.start_coordinator()
    coordinator = cluster.run_to_end()
    assert coordinator.state.phase == "done"
    first, *others = finals(cluster)
    assert all(np.array_equal(first, other) for other in others)
    np.testing.assert_allclose(first, adam_reference, atol=1e-6)
    # The server optimizer did something: plain FedAvg ends elsewhere.
    assert np.max(np.abs(first - reference_fedavg(THREE, 3))) > 1e-3


def test_a_hospital_restarted_mid_run_ends_with_exactly_the_others_weights(
    adam_reference: np.ndarray,
) -> None:
    cluster = fedadam_cluster()
    coordinator = run_until_round(cluster, 3)  # rounds 1 and 2 are aggregated
    restarted = restart(cluster, "h2")  # rebuilds rounds 1..2 from the store, then trains
    coordinator = cluster.run_to_end()
    assert coordinator.state.phase == "done"
    assert set(coordinator.state.history[2].accepted) == set(THREE)  # it answered round 3
    final = restarted.final_weights
    assert final is not None and len(finals(cluster)) == 3
    for other in finals(cluster):
        assert np.array_equal(final, other)  # bit for bit
    np.testing.assert_allclose(final, adam_reference, atol=1e-6)


def test_an_encrypted_masked_fedadam_run_gives_every_hospital_the_same_model(
    tmp_path: Path, adam_reference: np.ndarray
) -> None:
    run_key_ceremony(HEConfig(**ckks_parameters(56)), tmp_path / "hospital", tmp_path / "coord")
    cluster = Cluster(store=InMemoryStore(), plan=make_plan(masking=True))
    for name in THREE:
        cipher = open_cipher(tmp_path / "hospital")
        cluster.add_hospital(name, cipher=cipher, server_optimizer=FEDADAM)
    cluster.start_coordinator(open_aggregator(tmp_path / "coord"))
    assert cluster.run_to_end().state.phase == "done"
    first, *others = finals(cluster)
    assert all(np.array_equal(first, other) for other in others)
    np.testing.assert_allclose(first, adam_reference, atol=1e-5)  # CKKS noise of ~1e-9


def test_early_stopping_ends_with_the_best_rounds_model_rebuilt_by_every_hospital() -> None:
    # No drop of the mean loss counts (min_delta 10): round 1's model stays the best, and the
    # run stops when round 3 closes, the first round whose model scored no better (patience 1).
    cluster = fedadam_cluster(rounds=6, patience=1, min_delta=10.0)
    announced: list[bytes] = []
    cluster.transport.subscribe(ANNOUNCE, announced.append)
    cluster.start_coordinator()
    coordinator = cluster.run_to_end()
    state = coordinator.state
    assert state.phase == "done"
    assert (len(state.history), state.final_round, state.stop_reason) == (3, 1, "early-stopping")
    finished = [m for body in announced if isinstance(m := codec("h1").decode(body), RunFinished)]
    assert finished and finished[-1].rounds == 3 and finished[-1].final_round == 1
    assert finished[-1].final_ref == state.history[0].aggregate_ref
    assert finished[-1].history_sha256 == aggregate_chain([state.history[0].aggregate_sha256])
    # Every hospital was at round 2's model and went back to round 1's by replaying.
    first, *others = finals(cluster)
    assert all(np.array_equal(first, other) for other in others)
    np.testing.assert_allclose(first, reference_fedadam(THREE, 1), atol=1e-6)
    summary = coordinator.summary()
    assert (summary["rounds_run"], summary["final_round"]) == (3, 1)
    assert (summary["best_round"], summary["stopped"]) == (1, "early-stopping")


def test_a_restarted_hospital_refuses_a_stored_aggregate_the_coordinator_did_not_announce() -> None:
    cluster = fedadam_cluster(FOUR, min_hospitals=3)
    coordinator = run_until_round(cluster, 3)
    # Someone with the hospitals' key rewrites round 1's aggregate in the store: a well-formed
    # sum, bound to round 1 as the coordinator's, whose average is harmless-looking.
    forged = plain_aggregator().new_sum()
    start = initial_weights(MODEL, N_FEATURES, SEED) + 0.01
    for sender in ("h1", "h3", "h4"):
        binding = Binding(run="run-1", round=1, sender=sender)
        forged.add(plain_cipher().encrypt(weighted_payload(start, 100), binding=binding))
    blob = forged.to_blob(AGGREGATE, Binding(run="run-1", round=1, sender=COORDINATOR_SENDER))
    cluster.store.put(layout.aggregate_key("run-1", 1), blob)
    submissions = Submissions(cluster)
    restarted = restart(cluster, "h2")
    cluster.run_to_end()
    cluster.now[0] += 61.0  # it never reports a final model: the final phase times out
    coordinator.tick()
    assert coordinator.state.phase == "done"
    failures = [m for m in submissions.of("h2") if isinstance(m, UpdateFailed)]
    assert failures and "not the ones the coordinator announced" in failures[0].error
    assert set(coordinator.state.history[2].accepted) == {"h1", "h3", "h4"}
    assert restarted.final_weights is None  # nor does it keep a model it cannot vouch for
    assert "not the ones the coordinator announced" in str(restarted.error)
    for other in ("h1", "h3", "h4"):
        assert cluster.hospitals[other].final_weights is not None


def test_an_announcement_without_history_cannot_be_replayed_but_plain_fedavg_needs_none() -> None:
    for server_optimizer, answer in ((FEDADAM, UpdateFailed), (None, UpdateSubmitted)):
        cluster = Cluster(store=InMemoryStore(), plan=make_plan(rounds=3))
        for name in THREE:
            options = {} if server_optimizer is None else {"server_optimizer": server_optimizer}
            cluster.add_hospital(name, kind=Killable, **options)  # type: ignore[arg-type]
        coordinator = run_until_round(cluster, 3)
        old = cluster.hospitals["h2"]
        assert isinstance(old, Killable)
        old.dead = True
        cluster.transport.deliver_all()  # round 3 is announced; h2 is gone
        cluster.add_hospital("h2", **options)  # type: ignore[arg-type]
        ref = coordinator.state.global_ref
        assert ref is not None
        legacy = RoundStarted(  # as a coordinator from before server optimizers announces it
            run="run-1",
            round=3,
            global_ref=ref[0],
            global_sha256=ref[1],
            deadline=cluster.now[0] + 60,
            config_digest=coordinator.plan.config_digest,
        )
        submissions = Submissions(cluster)
        cluster.transport.publish(ANNOUNCE, codec("coordinator").encode(legacy))
        cluster.transport.deliver_all()
        from_h2 = [m for m in submissions.of("h2") if isinstance(m, UpdateSubmitted | UpdateFailed)]
        assert len(from_h2) == 1 and isinstance(from_h2[0], answer), from_h2
        if isinstance(from_h2[0], UpdateFailed):
            assert "no history digest" in from_h2[0].error
