"""The embedded deployment: a coordinator and N hospitals in one process.

The same Coordinator and Hospital classes as the real deployment, wired to the in-memory
transport and the store named by ``SimulationConfig.store`` (a store URL; by default a local
folder under ``out``). ``run_federated`` runs one federated run with any cipher/aggregator pair,
so encrypted and plaintext FedAvg share one code path; the trainer comes from an injected
factory (``hospital_node.trainer.TrainerFactory``), so a benchmark can time it without patching.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.bundle import BundleSettings
from common.clinical import DEFAULT_TOP_FRACTION, checked_top_fraction
from common.crypto import PLAIN, Aggregator, Cipher, HEConfig
from common.data import (
    FeatureEncoder,
    Schema,
    encode_local,
    load_schema,
    partition,
    read_csv,
    schema_text,
)
from common.data.local import LocalData
from common.data.partition import DEFAULT_TEST_FRACTION, Method
from common.errors import ConfigError, HeflError
from common.fedavg import payload_size
from common.model import ModelConfig, initial_weights, parameter_count
from common.protocol import layout
from common.protocol.runconfig import hospital_names, run_config_digest
from common.protocol.signing import MessageCodec, generate_identities
from common.store import InMemoryStore, LocalStore, Store
from common.transport import InMemoryTransport
from coordinator.service import Coordinator
from coordinator.state import RoundRecord, RunPlan, RunState
from hospital_node.service import Hospital
from hospital_node.trainer import TrainerFactory, keras_trainer

logger = logging.getLogger("hefl.simulation")


@dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    """Everything one embedded run needs; validated by the CLI before it gets here."""

    dataset: Path
    schema: str = "diabetes130"
    hospitals: int = 4
    partition: Method = "dirichlet"
    alpha: float = 0.5
    column: str | None = None
    rounds: int = 10
    seed: int = 42
    test_fraction: float = DEFAULT_TEST_FRACTION
    min_hospitals: int | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    he: HEConfig = field(default_factory=HEConfig)
    out: Path = Path("out/demo")
    store: str | None = None  # a store URL (common.store.open_store); None: <out>/store
    masking: bool = True  # pairwise masks inside encrypted updates (the plain scheme has none)
    top_fraction: float = DEFAULT_TOP_FRACTION  # the riskiest share flagged, in every evaluation
    # Early stopping (coordinator.state.RunPlan): ``rounds`` is then the most rounds run.
    patience: int = 0
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "top_fraction", checked_top_fraction(self.top_fraction))

    def describe(self) -> dict[str, Any]:
        """The settings a run summary records (``summary.json``'s ``config``)."""
        return {
            "dataset": str(self.dataset),
            "schema": self.schema,
            "hospitals": self.hospitals,
            "partition": self.partition,
            "alpha": self.alpha,
            "column": self.column,
            "rounds": self.rounds,
            "seed": self.seed,
            "test_fraction": self.test_fraction,
            "model": self.model.to_dict(),
            "masking": self.masking,
            "top_fraction": self.top_fraction,
            "patience": self.patience,
            "min_delta": self.min_delta,
        }


@dataclass(frozen=True, eq=False)
class Cohort:
    """The simulated hospitals' encoded data, plus the pooled test set used for comparisons."""

    names: tuple[str, ...]
    data: tuple[LocalData, ...]
    n_features: int
    layout_digest: str

    @property
    def pooled_test(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.concatenate([d.x_test for d in self.data]),
            np.concatenate([d.y_test for d in self.data]),
        )

    @property
    def pooled_train(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.concatenate([d.x_train for d in self.data]),
            np.concatenate([d.y_train for d in self.data]),
        )


@dataclass(frozen=True, eq=False)
class FederatedResult:
    weights: np.ndarray
    rounds: tuple[RoundRecord, ...]
    seconds: float
    bytes_uploaded: int
    summary: dict[str, Any]


def load_cohort(config: SimulationConfig) -> Cohort:
    """Read one CSV, split it into hospitals, split each by patient into train and test."""
    schema: Schema = load_schema(config.schema)
    frame = read_csv(config.dataset, schema)
    parts = partition(
        frame,
        schema,
        config.hospitals,
        method=config.partition,
        alpha=config.alpha,
        column=config.column,
        seed=config.seed,
    )
    encoder = FeatureEncoder(schema)
    names = hospital_names(config.hospitals)
    data = [
        encode_local(part, schema, name, seed=config.seed, test_fraction=config.test_fraction)
        for name, part in zip(names, parts, strict=True)
    ]
    return Cohort(
        names=names,
        data=tuple(data),
        n_features=encoder.n_features,
        layout_digest=encoder.layout_digest,
    )


def config_digest(config: SimulationConfig, cohort: Cohort, *, masking: bool) -> str:
    return run_config_digest(
        model=config.model,
        he=config.he,
        layout_digest=cohort.layout_digest,
        n_features=cohort.n_features,
        seed=config.seed,
        rounds=config.rounds,
        masking=masking,
    )


def run_federated(
    config: SimulationConfig,
    cohort: Cohort,
    *,
    run: str,
    cipher_for: Callable[[str], Cipher],
    aggregator: Aggregator,
    store: Store | None = None,
    store_dir: Path | None = None,
    on_progress: Callable[[RoundRecord, RunState], None] | None = None,
    trainer_for: TrainerFactory = keras_trainer,
    masking: bool | None = None,
) -> FederatedResult:
    """Run coordinator and hospitals to the end of the run; return the hospitals' final model.

    ``masking`` defaults to ``config.masking`` for HE schemes; the plain comparison scheme has
    nothing to mask inside. The store is ``store``, or a local folder ``store_dir``. An embedded
    run always starts afresh: what an earlier simulation left under ``runs/<run>/`` in the store
    (which may outlive ``out``, e.g. a Drive folder) is removed first.
    """
    if store is None and store_dir is not None:
        store = LocalStore(store_dir)
    elif store is None or store_dir is not None:
        raise ConfigError("run_federated needs exactly one of store and store_dir")
    transport = InMemoryTransport()
    for key in store.list(layout.run_prefix(run) + "/"):
        store.delete(key)
    if masking is None:
        masking = config.masking and aggregator.scheme != PLAIN
    digest = config_digest(config, cohort, masking=masking)
    plan = RunPlan(
        run=run,
        rounds=config.rounds,
        hospitals=cohort.names,
        min_hospitals=config.min_hospitals or len(cohort.names),
        round_timeout=3600.0,
        final_timeout=600.0,
        config_digest=digest,
        value_count=payload_size(parameter_count(config.model, cohort.n_features)),
        masking=masking,
        patience=config.patience,
        min_delta=config.min_delta,
    )
    identities, trust = generate_identities(list(cohort.names))
    coordinator = Coordinator(
        plan,
        transport=transport.participant("coordinator"),
        store=store,
        state_store=InMemoryStore(),  # an embedded run never resumes
        aggregator=aggregator,
        codec=MessageCodec(identities["coordinator"], trust),
        on_progress=on_progress,
    )
    start_weights = initial_weights(config.model, cohort.n_features, config.seed)
    codecs = {name: MessageCodec(identities[name], trust) for name in cohort.names}
    bundle = BundleSettings(
        schema_text=schema_text(config.schema),
        model=config.model,
        he={"scheme": PLAIN} if aggregator.scheme == PLAIN else config.he.to_dict(),
        top_fraction=config.top_fraction,
    )
    hospitals = [
        Hospital(
            name,
            run=run,
            data=data,
            trainer=trainer_for(config.model, cohort.n_features),
            cipher=cipher_for(name),
            transport=transport.participant(name),
            store=store,
            codec=codecs[name],
            initial_weights=start_weights,
            seed=config.seed,
            config_digest=digest,
            out_dir=config.out / run / "models",
            masks=codecs[name].pairwise_masks() if masking else None,
            bundle=bundle,
            server_optimizer=config.model.server_optimizer,
        )
        for name, data in zip(cohort.names, cohort.data, strict=True)
    ]
    started = time.perf_counter()
    for hospital in hospitals:
        hospital.start(hello=False)
    coordinator.start()
    while not coordinator.finished:
        if transport.deliver_all() == 0:
            coordinator.tick()
            if not coordinator.finished and transport.pending == 0:
                raise HeflError(f"run {run} stalled in phase {coordinator.state.phase}")
    if coordinator.state.phase == "failed":
        raise HeflError(f"run {run} failed: {coordinator.state.error}")
    for hospital in hospitals:
        if hospital.error is not None:
            raise hospital.error
    finals = [h.final_weights for h in hospitals if h.final_weights is not None]
    if len(finals) != len(hospitals):
        raise HeflError(f"run {run}: only {len(finals)} hospitals kept the final model")
    summary = coordinator.summary()
    return FederatedResult(
        weights=finals[0],
        rounds=coordinator.state.history,
        seconds=time.perf_counter() - started,
        bytes_uploaded=sum(r.bytes_uploaded for r in coordinator.state.history),
        summary=summary,
    )
