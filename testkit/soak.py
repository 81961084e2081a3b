"""One chaos soak run: real processes on a three-node RabbitMQ, faults from ``testkit.chaos``.

``run_soak`` starts a broker cluster (``testkit.broker_cluster``), prepares shards and keys,
starts ``hefl coordinator`` and every ``hefl hospital`` (``testkit.cluster``) and, while the
run goes, injects the planned faults. It supervises like the deployments' restart policies: a
process the scheduler killed is started again when its fault clears, and one that exits on its
own with an error is started again after a second (counted as an unplanned restart). The
store is either a folder on a small tmpfs (``store="local"``: the ``store-full`` fault fills
it) or the fake Google Drive in this process, each site on its own confined URL
(``store="drive"``: ``store-5xx`` and ``store-drop`` faults). The same run without faults is
the reference the soak's final model is compared with.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from common.protocol import layout
from common.protocol.runconfig import hospital_names
from testkit.broker_cluster import BrokerCluster, broker_cluster
from testkit.chaos import Fault, Outcome, Scheduler
from testkit.cluster import ProcessCluster, sample_csv

#: Generous deadlines: a restarted hospital must answer within its round (no one is dropped).
COORDINATOR_FLAGS: Final = (
    "--round-timeout",
    "1200",
    "--mask-timeout",
    "300",
    "--final-timeout",
    "300",
)
TMPFS_SIZE: Final = "64m"
FILLER: Final = ".chaos-filler"  # a dot name: the store's listing never takes it for a key
RESTART_DELAY: Final = 1.0
#: Heavier than the process tests' model: rounds of seconds, so faults land inside them.
MODEL_FLAGS: Final = ("--hidden", "32", "--batch-size", "32")


@dataclass(frozen=True)
class SoakConfig:
    root: Path
    hospitals: int = 8
    rounds: int = 20
    store: str = "local"  # "local" (tmpfs) or "drive" (the fake Drive)
    faults: Sequence[Fault] = ()
    patients: int = 4000
    data_seed: int = 5  # the sample and the split: fixed, so every soak trains the same model
    local_epochs: int = 3  # more: longer rounds, more room for faults inside them
    timeout: float = 3600.0


@dataclass
class SoakResult:
    config: SoakConfig
    seconds: float
    weights: dict[str, np.ndarray]  # every hospital's final model, flattened
    accepted: list[list[str]]  # per closed round, who was accepted
    outcomes: list[Outcome] = field(default_factory=list)
    unplanned_restarts: dict[str, int] = field(default_factory=dict)

    def max_difference(self, other: SoakResult) -> float:
        """The largest absolute weight difference of any hospital's final model."""
        return max(
            float(np.max(np.abs(self.weights[name] - other.weights[name]))) for name in self.weights
        )


class Soak:
    """A running federation the scheduler injects faults into (``testkit.chaos.Federation``)."""

    def __init__(self, cluster: ProcessCluster, brokers: BrokerCluster, drive: Any = None):
        self.cluster = cluster
        self.brokers = brokers
        self.drive = drive
        self.down: set[str] = set()  # labels killed on purpose, not yet restarted
        self.unplanned: dict[str, int] = {}
        self._booting: threading.Thread | None = None  # a broker node starting again

    def wait_nodes(self) -> None:
        """Until a broker node being restarted runs (one node down at most, so quorum holds)."""
        if self._booting is not None:
            self._booting.join()
            self._booting = None

    def state(self) -> dict[str, Any] | None:
        return self.cluster.state()

    def state_mtime(self) -> float:
        with contextlib.suppress(OSError):
            return (self.cluster.state_dir / layout.state_key(self.cluster.run)).stat().st_mtime
        return 0.0

    def inject(self, fault: Fault) -> None:
        if fault.kind in ("kill-hospital", "kill-coordinator"):
            self.down.add(fault.target)
            with contextlib.suppress(ProcessLookupError):  # it had ended by itself
                self.cluster.kill(fault.target)
        elif fault.kind == "kill-broker-node":
            self.wait_nodes()
            self.brokers.kill(self._node(fault))
        elif fault.kind == "pause":
            self._signal(fault.target, signal.SIGSTOP)
        elif fault.kind == "store-5xx":
            self.drive.fail_next(fault.size, status=503)
        elif fault.kind == "store-drop":
            self.drive.drop_next(fault.size)
        elif fault.kind == "store-full":
            fill(self.cluster.store / FILLER)
        else:
            raise ValueError(f"unknown fault kind {fault.kind!r}")

    def clear(self, fault: Fault) -> None:
        if fault.kind in ("kill-hospital", "kill-coordinator"):
            self._start(fault.target)
            self.down.discard(fault.target)
        elif fault.kind == "kill-broker-node":  # a node boots for seconds: the soak goes on
            node = self._node(fault)
            self._booting = threading.Thread(target=self.brokers.start_node, args=(node,))
            self._booting.start()
        elif fault.kind == "pause":
            self._signal(fault.target, signal.SIGCONT)
        elif fault.kind == "store-full":
            (self.cluster.store / FILLER).unlink(missing_ok=True)

    def check(self) -> None:
        """Restart a process that exited with an error on its own (a restart policy would)."""
        for label, process in list(self.cluster.processes.items()):
            if label in self.down or process.poll() in (None, 0):
                continue
            self.unplanned[label] = self.unplanned.get(label, 0) + 1
            if sum(self.unplanned.values()) > 50:
                raise AssertionError(f"processes keep failing: {self.unplanned}")
            time.sleep(RESTART_DELAY)
            self._start(label)

    def _start(self, label: str) -> subprocess.Popen[bytes]:
        if label == "coordinator":
            return self.cluster.start_coordinator(*COORDINATOR_FLAGS)
        return self.cluster.start_hospital(label)

    def _signal(self, label: str, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.cluster.signal(label, sig)

    def _node(self, fault: Fault) -> Any:
        return self.brokers.nodes[int(fault.target.removeprefix("node-")) - 1]


def fill(path: Path) -> None:
    """Write ``path`` until its file system is full."""
    chunk = b"\0" * (1 << 20)
    with path.open("wb") as handle:
        with contextlib.suppress(OSError):
            while True:
                handle.write(chunk)
                handle.flush()
        with contextlib.suppress(OSError):
            os.fsync(handle.fileno())
    with contextlib.suppress(OSError), path.open("ab") as handle:  # the last bytes a page left
        while True:
            handle.write(b"\0" * 512)
            handle.flush()


@contextlib.contextmanager
def tmpfs(path: Path, size: str = TMPFS_SIZE) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (root only), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise OSError(errno.EPERM, f"cannot mount a tmpfs at {path} (root only): {done.stderr}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def run_soak(config: SoakConfig, brokers: BrokerCluster | None = None) -> SoakResult:
    """Run the federation once with ``config.faults`` (on ``brokers``, else a cluster of its
    own); its result for comparison."""
    root = config.root
    root.mkdir(parents=True, exist_ok=True)
    source = sample_csv(root / "sample.csv", patients=config.patients, seed=config.data_seed)
    names = hospital_names(config.hospitals)
    with contextlib.ExitStack() as stack:
        if brokers is None:
            brokers = stack.enter_context(broker_cluster())
        site = stack.enter_context(brokers.site(names, prefix=f"hefl-soak-{uuid.uuid4().hex[:8]}"))
        cluster = ProcessCluster(
            root=root / "run",
            site=site,
            hospitals=config.hospitals,
            rounds=config.rounds,
            model_flags=(*MODEL_FLAGS, "--local-epochs", str(config.local_epochs)),
        )
        stack.callback(cluster.stop_all)
        drive = None
        if config.store == "drive":
            drive, urls = stack.enter_context(_drive_store(root, cluster.run, names))
            cluster.store_urls.update(urls)
        else:
            stack.enter_context(tmpfs(cluster.store))
        cluster.prepare(source, seed=config.data_seed)
        soak = Soak(cluster, brokers, drive)
        started = time.monotonic()
        for name in cluster.names:
            cluster.start_hospital(name)
        cluster.start_coordinator(*COORDINATOR_FLAGS)
        stack.callback(soak.wait_nodes)  # a node still booting is up before the next run
        scheduler = Scheduler(soak, config.faults)
        scheduler.run(done=_finished)
        _wait_done(soak, scheduler, config.timeout - (time.monotonic() - started))
        for name in cluster.names:
            if cluster.processes[name].poll() is None:
                cluster.wait_exit(name, timeout=300)
        state = cluster.state() or {}
        return SoakResult(
            config=config,
            seconds=time.monotonic() - started,
            weights={name: cluster.final_weights(name) for name in cluster.names},
            accepted=[sorted(record["accepted"]) for record in state.get("history", [])],
            outcomes=scheduler.outcomes,
            unplanned_restarts=dict(soak.unplanned),
        )
    raise AssertionError("unreachable")  # pragma: no cover  (ExitStack swallows nothing)


def _finished(state: dict[str, Any] | None) -> bool:
    return state is not None and state.get("phase") in ("done", "failed")


def _wait_done(soak: Soak, scheduler: Scheduler, timeout: float) -> None:
    deadline = time.monotonic() + max(timeout, 0.0)
    while time.monotonic() < deadline:
        state = soak.state()
        if _finished(state) and soak.cluster.processes["coordinator"].poll() is not None:
            scheduler.note_progress()
            if state is not None and state["phase"] == "failed":
                raise AssertionError(f"the run failed: {state.get('error')}")
            return
        soak.check()
        scheduler.note_progress()
        time.sleep(0.1)
    raise AssertionError(
        f"the soak did not finish in time; state={soak.state()}\n{soak.cluster.tail_logs()}"
    )


@contextlib.contextmanager
def _drive_store(root: Path, run: str, names: Sequence[str]) -> Iterator[tuple[Any, dict]]:
    from testkit.drive.deployment import drive_deployment  # only the Drive soak needs it

    with drive_deployment(root / "drive-credentials", run=run, hospitals=names) as made:
        yield made
