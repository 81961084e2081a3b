"""Test harness for the distributed deployment: real `hefl` processes on a real RabbitMQ broker.

A ``ProcessCluster`` prepares hospital CSVs (``hefl partition``), key material (``hefl keygen``)
and a store folder, then starts and kills ``hefl coordinator`` / ``hefl hospital`` processes,
each logged in to the broker as its own user (``process_cluster`` makes them on a throw-away
virtual host). Progress is read from the coordinator's persisted state in its state folder, as
its operator would.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.bundle import BUNDLE_DIR, MODEL_FILE
from common.data.sources import DEFAULT_DATASET
from common.protocol import layout
from common.protocol.runconfig import hospital_names
from testkit.broker import Site, temporary_site

BIN = Path(sys.executable).parent / "hefl"
DATA = DEFAULT_DATASET
#: A tiny model, so that the processes' rounds take seconds.
MODEL_FLAGS: tuple[str, ...] = ("--hidden", "8", "--batch-size", "64", "--local-epochs", "1")


def sample_csv(path: Path, patients: int, seed: int = 5, *, source: Path = DATA) -> Path:
    """A seeded sample of whole patients of ``source`` (Diabetes-130), so that patient-grouped
    splits still mean something."""
    frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    chosen = frame["patient_nbr"].drop_duplicates().sample(n=patients, random_state=seed)
    frame[frame["patient_nbr"].isin(chosen)].to_csv(path, index=False)
    return path


def read_signed_state(path: Path) -> dict[str, Any] | None:
    """The coordinator's persisted state (the body of its signed envelope), None until written.

    Tests only look: the coordinator itself checks the signature when it resumes."""
    try:
        return json.loads(json.loads(path.read_text())["state"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return None


@dataclass
class ProcessCluster:
    root: Path
    site: Site  # one broker user per participant
    hospitals: int
    rounds: int
    scheme: str = "bfv"
    run: str = "run-1"
    model_flags: tuple[str, ...] = MODEL_FLAGS
    masking: bool = True  # pairwise masks, every participant's default (False: --no-masking)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    store_urls: dict[str, str] = field(default_factory=dict)  # identity -> store URL (else `store`)

    @property
    def prefix(self) -> str:
        return self.site.plan.prefix

    def broker_url(self, identity: str) -> str:
        """``identity``'s own broker login."""
        return self.site.url(identity)

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def state_dir(self) -> Path:
        return self.root / "coordinator-state"

    @property
    def names(self) -> list[str]:
        return [f"hospital-{i}" for i in range(1, self.hospitals + 1)]

    def prepare(self, source_csv: Path, *, seed: int = 42) -> None:
        self.hefl(
            "partition",
            "--dataset",
            str(source_csv),
            "--out",
            str(self.root / "shards"),
            "--hospitals",
            str(self.hospitals),
            "--seed",
            str(seed),
        )
        self.hefl(
            "keygen",
            "--keys",
            str(self.keys),
            "--hospitals",
            str(self.hospitals),
            "--scheme",
            self.scheme,
        )

    def hefl(self, *args: str) -> str:
        result = subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise AssertionError(f"hefl {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return result.stdout

    def _common(self, identity: str) -> list[str]:
        return [
            "--run",
            self.run,
            "--keys",
            str(self.keys),
            "--store",
            self.store_urls.get(identity, str(self.store)),
            "--broker",
            self.broker_url(identity),
            "--prefix",
            self.prefix,
            "--rounds",
            str(self.rounds),
            *self.model_flags,
            *(() if self.masking else ("--no-masking",)),
        ]

    def _spawn(self, label: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.root / "logs").joinpath(f"{label}.log")
        log.parent.mkdir(exist_ok=True)
        env = dict(os.environ, HEFL_LOG_LEVEL="INFO", PYTHONUNBUFFERED="1")
        with log.open("ab") as handle:
            process = subprocess.Popen(
                [str(BIN), *args],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.processes[label] = process
        return process

    def start_coordinator(self, *extra: str) -> subprocess.Popen[bytes]:
        args = ["coordinator", *self._common("coordinator"), "--state-dir", str(self.state_dir)]
        args.extend(extra)
        return self._spawn("coordinator", args)

    def start_hospital(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        shard = self.root / "shards" / f"{name}.csv"
        return self._spawn(
            name,
            [
                "hospital",
                *self._common(name),
                "--hospital",
                name,
                "--csv",
                str(shard),
                "--out",
                str(self.root / "models"),
                *extra,
            ],
        )

    def kill(self, label: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[label]
        os.killpg(process.pid, sig)
        process.wait(timeout=30)

    def signal(self, label: str, sig: int) -> None:
        """Send ``sig`` (e.g. SIGSTOP / SIGCONT to freeze and thaw) without waiting for an exit."""
        os.killpg(self.processes[label].pid, sig)

    def state(self) -> dict[str, Any] | None:
        return read_signed_state(self.state_dir / layout.state_key(self.run))

    def summary(self) -> dict[str, Any]:
        """The operator's summary the coordinator writes in its state folder when the run ends."""
        return json.loads((self.state_dir / layout.summary_key(self.run)).read_text())

    def wait_for(
        self, condition: Callable[[dict[str, Any]], bool], *, timeout: float, what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            if state is not None and condition(state):
                return state
            self._check_alive()
            time.sleep(0.05)
        raise AssertionError(
            f"timed out after {timeout:.0f}s waiting for {what}; "
            f"state={self.state()}\n{self.tail_logs()}"
        )

    def _check_alive(self) -> None:
        coordinator = self.processes.get("coordinator")
        if coordinator is not None and coordinator.poll() not in (None, 0):
            raise AssertionError(
                f"coordinator exited with {coordinator.returncode}\n{self.tail_logs()}"
            )

    def wait_exit(self, label: str, timeout: float) -> int:
        try:
            return self.processes[label].wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"{label} did not exit in {timeout}s\n{self.tail_logs()}") from exc

    def final_weights(self, name: str) -> np.ndarray:
        """The final model a hospital saved, flattened like the embedded simulation's."""
        import keras

        model = keras.models.load_model(self.root / "models" / name / BUNDLE_DIR / MODEL_FILE)
        return np.concatenate([w.reshape(-1) for w in model.get_weights()])

    def log(self, label: str) -> str:
        path = self.root / "logs" / f"{label}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_log(
        self, label: str, pattern: str, *, timeout: float, interval: float = 0.005
    ) -> re.Match[str]:
        """The first match of ``pattern`` (a regular expression) in ``label``'s log, polled
        every ``interval`` seconds: fast enough to freeze a process between two of its steps."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while (found := compiled.search(self.log(label))) is None:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:.0f}s waiting for {pattern!r} in {label}'s log\n"
                    f"{self.tail_logs()}"
                )
            self._check_alive()
            time.sleep(interval)
        return found

    def tail_logs(self, lines: int = 15) -> str:
        parts = []
        for label in self.processes:
            text = self.log(label).splitlines()[-lines:]
            parts.append(f"--- {label}\n" + "\n".join(text))
        return "\n".join(parts)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


@contextmanager
def process_cluster(
    root: Path, *, hospitals: int, rounds: int, **options: Any
) -> Iterator[ProcessCluster]:
    """A ``ProcessCluster`` with its broker users on a throw-away virtual host; every process is
    killed and the users deleted afterwards."""
    prefix = f"hefl-test-{uuid.uuid4().hex[:8]}"
    with temporary_site(hospital_names(hospitals), prefix=prefix) as site:
        cluster = ProcessCluster(
            root=root, site=site, hospitals=hospitals, rounds=rounds, **options
        )
        try:
            yield cluster
        finally:
            cluster.stop_all()
