"""The distributed deployment: the coordinator and hospital processes.

The same Coordinator and Hospital classes as the embedded simulation, wired to RabbitMQ and a
store chosen by URL, with key material from a ``hefl.keylayout.KeyLayout``. Every setting arrives
here as a validated value from ``hefl.cli``.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from common.bundle import BUNDLE_DIR, BundleSettings
from common.clinical import DEFAULT_TOP_FRACTION
from common.crypto import (
    HEConfig,
    load_coordinator_bundle,
    load_hospital_bundle,
    open_aggregator,
    open_cipher,
)
from common.crypto.masking import DEFAULT_MASK_TIMEOUT
from common.data import FeatureEncoder, load_local_data, load_schema, schema_text
from common.data.partition import DEFAULT_TEST_FRACTION
from common.errors import ConfigError, HeflError
from common.fedavg import DEFAULT_SANITY, Sanity, payload_size
from common.logs import log_event
from common.model import ModelConfig, initial_weights, parameter_count
from common.observe import HttpEndpoint, Route
from common.protocol import layout as store_layout
from common.protocol.runconfig import new_run_id, run_config_digest
from common.protocol.signing import COORDINATOR, MessageCodec
from common.store import LocalStore, SpaceWaitingStore
from common.store.url import open_store
from common.transport.rabbitmq import RabbitMQTransport
from coordinator.endpoint import status_routes
from coordinator.service import Coordinator
from coordinator.state import RoundRecord, RunPlan, RunState
from hefl.keylayout import KeyLayout
from hospital_node.journal import JOURNAL_DIR, Journal
from hospital_node.metrics import HospitalMeter, metrics_routes
from hospital_node.progress import hospital_progress
from hospital_node.service import Hospital
from hospital_node.trainer import TrainerFactory

logger = logging.getLogger("hefl.deploy")


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """What coordinator and hospitals must agree on (their digest is announced every round)."""

    run: str | None  # None: the coordinator picks (resume_or_new_run), hospitals follow it
    rounds: int
    seed: int
    schema: str
    model: ModelConfig
    test_fraction: float = DEFAULT_TEST_FRACTION
    masking: bool = True

    def value_count(self) -> int:
        """Reals in every update blob: the model's parameters and the FedAvg weight."""
        n_features = FeatureEncoder(load_schema(self.schema)).n_features
        return payload_size(parameter_count(self.model, n_features))

    def digest(self, he: HEConfig) -> str:
        encoder = FeatureEncoder(load_schema(self.schema))
        return run_config_digest(
            model=self.model,
            he=he,
            layout_digest=encoder.layout_digest,
            n_features=encoder.n_features,
            seed=self.seed,
            rounds=self.rounds,
            masking=self.masking,
        )


@dataclass(frozen=True, kw_only=True)
class Endpoints:
    keys: Path
    store: str
    broker: str
    prefix: str = "hefl"
    broker_ca: Path | None = None  # the private CA of an amqps:// broker (the key ceremony's)
    http_host: str = "127.0.0.1"
    http_port: int | None = None  # None: no HTTP endpoint

    def serve_http(self, routes: dict[str, Route], who: str) -> HttpEndpoint | None:
        """Start this process's read-only HTTP endpoint, if one was asked for."""
        if self.http_port is None:
            return None
        endpoint = HttpEndpoint(routes, host=self.http_host, port=self.http_port).start()
        print(f"{who}: serving {', '.join(routes)} at {endpoint.url}", flush=True)
        return endpoint

    def transport(self, identity: str, senders: tuple[str, ...]) -> RabbitMQTransport:
        """``identity``'s broker connection, accepting messages only from ``senders``."""
        return RabbitMQTransport(
            url=self.broker,
            identity=identity,
            prefix=self.prefix,
            ca_file=None if self.broker_ca is None else str(self.broker_ca),
            senders=senders,
        )


def _stop_on_signals(flag: threading.Event) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        log_event(logger, "signal_received", signal=signal.Signals(signum).name)
        flag.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def progress_line(record: RoundRecord, state: RunState, total: int) -> str:
    metrics = record.model_metrics or {}
    return (
        f"round {record.round}/{total} closed: hospitals {len(record.accepted)} "
        f"failed {len(record.failed)} auc {metrics.get('auc', math.nan):.4f} "
        f"loss {metrics.get('loss', math.nan):.4f} seconds {record.seconds:.1f} "
        f"uploaded {record.bytes_uploaded} rejected {sum(state.rejected.values())}"
    )


def resume_or_new_run(state_store: LocalStore, codec: MessageCodec) -> str:
    """The one unfinished run this coordinator signed in its state folder, else a new run id."""
    unfinished = []
    for key in state_store.list(store_layout.RUNS_PREFIX):
        if key.endswith("/" + store_layout.STATE_FILE):
            try:
                state = json.loads(codec.open_state(state_store.get(key)))
            except (HeflError, ValueError) as exc:
                log_event(logger, "state_skipped", level=logging.WARNING, key=key, error=exc)
                continue
            if state.get("phase") in ("round", "final"):
                unfinished.append(str(state.get("run")))
    if len(unfinished) > 1:
        raise ConfigError(
            f"{len(unfinished)} unfinished runs in {state_store.root} ({', '.join(unfinished)}): "
            "pass --run to choose one"
        )
    return unfinished[0] if unfinished else new_run_id()


def run_coordinator(
    settings: RunSettings,
    endpoints: Endpoints,
    *,
    participants: tuple[str, ...] | None,
    min_hospitals: int | None,
    expect_hospitals: int | None = None,
    round_timeout: float,
    final_timeout: float,
    state_dir: Path,
    keep_updates: bool = False,
    mask_timeout: float | None = None,
    http_linger: float = 0.0,
    patience: int = 0,
    min_delta: float = 0.0,
) -> int:
    """Run (or resume) one federated run to its end; 0 when done, 1 when it failed.
    ``patience`` > 0 ends it early when that many rounds' models in a row did not lower the
    mean hold-out loss by more than ``min_delta`` (``settings.rounds`` is then the most)."""
    layout = KeyLayout(endpoints.keys)
    bundle = load_coordinator_bundle(layout.he_coordinator)
    codec = layout.codec(COORDINATOR)
    names = participants or codec.trust.hospitals
    state_folder = LocalStore(state_dir)
    run = settings.run or resume_or_new_run(state_folder, codec)
    print(f"coordinator: run {run} (state in {state_dir})", flush=True)
    plan = RunPlan(
        run=run,
        rounds=settings.rounds,
        hospitals=tuple(names),
        min_hospitals=min_hospitals or len(names),
        expected_hospitals=expect_hospitals,
        round_timeout=round_timeout,
        final_timeout=final_timeout,
        config_digest=settings.digest(bundle.manifest.config),
        value_count=settings.value_count(),
        masking=settings.masking,
        mask_timeout=mask_timeout or min(DEFAULT_MASK_TIMEOUT, round_timeout),
        patience=patience,
        min_delta=min_delta,
    )
    stop = threading.Event()
    _stop_on_signals(stop)
    transport = endpoints.transport(COORDINATOR, senders=plan.hospitals)
    endpoint: HttpEndpoint | None = None
    try:
        coordinator = Coordinator(
            plan,
            transport=transport,
            # A full disk is waited out (a bounded time), not a reason to stop the run.
            store=SpaceWaitingStore(open_store(endpoints.store)),
            state_store=SpaceWaitingStore(state_folder),
            aggregator=open_aggregator(layout.he_coordinator),
            keep_updates=keep_updates,
            codec=codec,
            on_progress=lambda record, state: print(
                progress_line(record, state, plan.rounds), flush=True
            ),
        )
        endpoint = endpoints.serve_http(status_routes(coordinator), "coordinator")
        coordinator.start()
        transport.serve(
            stop=lambda: coordinator.finished or stop.is_set(),
            on_idle=coordinator.tick,
            idle_interval=0.5,
        )
        if endpoint is not None and coordinator.finished and http_linger > 0:
            log_event(logger, "http_lingering", run=plan.run, seconds=http_linger)
            stop.wait(http_linger)
    finally:
        transport.close()
        if endpoint is not None:
            endpoint.close()
    state = coordinator.state
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    log_event(logger, "coordinator_exit", run=plan.run, phase=state.phase, peak_rss_mb=peak_mb)
    if state.phase == "done":
        early = (
            f" (early stopping: final model of round {state.final_round})"
            if state.stop_reason == "early-stopping"
            else ""
        )
        print(
            f"run {plan.run} finished: {len(state.history)} rounds{early}; "
            f"peak RSS {peak_mb:.1f} MB",
            flush=True,
        )
        return 0
    if state.phase == "failed":
        raise HeflError(f"run {plan.run} failed: {state.error}")
    print(f"coordinator stopped in round {state.round}; restart it to resume", flush=True)
    return 0


def run_hospital(
    settings: RunSettings,
    endpoints: Endpoints,
    *,
    name: str,
    csv: Path,
    out: Path | None,
    trainer_for: TrainerFactory | None = None,
    sanity: Sanity = DEFAULT_SANITY,
    top_fraction: float = DEFAULT_TOP_FRACTION,
) -> int:
    """Take part in the run until the final model is saved as a model bundle under
    ``out/<name>/bundle``; 0 on success. ``trainer_for`` None: the Keras trainer, reporting its
    local epochs to the progress bars. ``top_fraction``: the share of the hold-out flagged as
    highest risk, which sets the bundle's decision threshold."""
    layout = KeyLayout(endpoints.keys)
    bundle = load_hospital_bundle(layout.he_hospital)
    codec = layout.codec(name)
    model_bundle = BundleSettings(
        schema_text=schema_text(settings.schema),
        model=settings.model,
        he=bundle.manifest.config.to_dict(),
        top_fraction=top_fraction,
    )
    data = load_local_data(
        csv,
        load_schema(settings.schema),
        name,
        seed=settings.seed,
        test_fraction=settings.test_fraction,
    )
    n_features = data.x_train.shape[1]
    stop = threading.Event()
    _stop_on_signals(stop)
    transport = endpoints.transport(name, senders=(COORDINATOR,))
    meter = HospitalMeter()
    endpoint = endpoints.serve_http(metrics_routes(meter), name)
    # Bars of rounds and local epochs on a terminal; a line per round in a log.
    with hospital_progress(rounds=settings.rounds, stream=sys.stderr) as bars:
        try:
            hospital = Hospital(
                name,
                run=settings.run,
                data=data,
                trainer=(trainer_for or bars.trainer_for)(settings.model, n_features),
                cipher=open_cipher(layout.he_hospital),
                transport=transport,
                store=SpaceWaitingStore(open_store(endpoints.store)),  # waits out a full disk
                codec=codec,
                initial_weights=initial_weights(settings.model, n_features, settings.seed),
                seed=settings.seed,
                config_digest=settings.digest(bundle.manifest.config),
                out_dir=out,
                sanity=sanity,
                masks=codec.pairwise_masks() if settings.masking else None,
                observers=(meter, bars.observer),
                bundle=model_bundle,
                server_optimizer=settings.model.server_optimizer,
                # Replies sent, so that a restart resends them rather than re-uploading.
                journal=None if out is None else Journal(out / name / JOURNAL_DIR),
            )
            hospital.start(hello=True)
            log_event(
                logger,
                "hospital_ready",
                run=settings.run or "(following the coordinator)",
                hospital=name,
                rows=len(data.y_train),
            )
            transport.serve(
                stop=lambda: (
                    hospital.final_weights is not None
                    or hospital.error is not None
                    or stop.is_set()
                )
            )
        finally:
            transport.close()
            if endpoint is not None:
                endpoint.close()
    if hospital.error is not None:
        raise hospital.error
    if hospital.final_weights is not None and hospital.final_metrics is not None:
        where = "" if out is None else f" to {out / name / BUNDLE_DIR}"
        print(
            f"{name}: final model saved{where}, hold-out auc {hospital.final_metrics.auc:.4f}",
            flush=True,
        )
    return 0
