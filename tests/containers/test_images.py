"""What the images hold, looked at inside the built images.

The hospital trains on TensorFlow's CPU-only build (no CUDA libraries), the coordinator has no
TensorFlow at all, and neither carries the Docker SDK (pyproject's ``ops`` extra, for operators on
the host). The images are built as CI builds them (``testkit.images``: local stand-in base,
offline wheelhouse, root): minutes the first time, seconds when Docker's layer cache holds them.
The Prometheus image (Debian's package, on the Debian stand-in, from Debian's archive) runs as its
fixed non-root user, and its own promtool accepts the compose and the Kubernetes scrape
configurations and discovers, from the target files hefl.sites writes, every site.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from testkit import images
from testkit.images import ROLES, STANDIN_PYTHON, Build, ImageError

pytestmark = pytest.mark.cluster  # in `make test` (CI) and `make test-cluster`; not in bare pytest

TAG = "images-test"
ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = f"hefl-prometheus:{TAG}"
PROMETHEUS_UID = "10002"  # docker/prometheus/Dockerfile; k8s/prometheus.yaml runs it as such
HOSPITAL_IMPORTS = "import tensorflow, keras, Pyfhel, hefl.cli, hospital_node.training"
# Bytecode compiled at build time and TensorFlow's C++ headers: nothing a container loads.
BUILD_LEFTOVERS = (
    "import pathlib, sys; venv = pathlib.Path(sys.prefix); "
    "print(*sorted(str(p) for p in venv.rglob('*') "
    "if p.name == '__pycache__' or p.match('site-packages/tensorflow/include')), sep='\\n')"
)


@pytest.fixture(scope="module")
def built() -> Build:
    try:
        build = images.build(TAG)
    except ImageError as exc:
        pytest.fail(str(exc), pytrace=False)
    print(f"images {TAG}: built in {build.seconds:.0f} s, sizes MB {build.sizes_mb}")
    return build


@pytest.fixture(scope="module")
def installed(built: Build) -> dict[str, frozenset[str]]:
    try:
        return {role: images.distributions(built.image(role)) for role in ROLES}
    except ImageError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.mark.parametrize("role", ROLES)
def test_no_image_installs_the_docker_sdk(installed: dict[str, frozenset[str]], role: str) -> None:
    assert "docker" not in installed[role]


def test_hospital_installs_tensorflow_cpu_and_not_tensorflow(
    installed: dict[str, frozenset[str]],
) -> None:
    assert "tensorflow-cpu" in installed["hospital"]
    assert "tensorflow" not in installed["hospital"]


def test_coordinator_installs_no_tensorflow(installed: dict[str, frozenset[str]]) -> None:
    assert sorted(name for name in installed["coordinator"] if name.startswith("tensorflow")) == []


def test_hospital_imports_its_training_stack(built: Build) -> None:
    done = images.run_python(built.image("hospital"), HOSPITAL_IMPORTS)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("role", ROLES)
def test_venv_has_no_bytecode_nor_tensorflow_headers(built: Build, role: str) -> None:
    done = images.run_python(built.image(role), BUILD_LEFTOVERS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == []


# -- hefl-prometheus -----------------------------------------------------------------------------


def docker(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def prometheus(built: Build) -> str:
    """hefl-prometheus on the Debian stand-in (the engine and stand-ins are ready: ``built``)."""
    env = dict(os.environ, PROMETHEUS_BASE_IMAGE=STANDIN_PYTHON, HEFL_TAG=TAG)
    done = subprocess.run(
        ["bash", "tools/container_build.sh", "prometheus"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        pytest.fail(f"building {PROMETHEUS} failed:\n{done.stderr[-4000:]}", pytrace=False)
    return PROMETHEUS


def promtool(image: str, mounts: dict[Path, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``promtool ARGS`` inside the image, without network, with ``mounts`` read-only."""
    volumes = [v for source, target in mounts.items() for v in ("-v", f"{source}:{target}:ro")]
    return docker(
        "run", "--rm", "--network", "none", *volumes, "--entrypoint", "promtool", image, *args
    )


def discovered(image: str, mounts: dict[Path, str], config: str, job: str) -> list[Any]:
    """The targets of ``job`` after discovery and relabelling: (address, labels we set)."""
    done = promtool(image, mounts, "check", "service-discovery", config, job)
    assert done.returncode == 0, done.stdout + done.stderr
    return [
        (
            t["labels"]["__address__"],
            {k: v for k, v in t["labels"].items() if k in ("site", "role")},
        )
        for t in json.loads(done.stdout)
    ]


def test_prometheus_image_runs_debians_prometheus_as_a_fixed_non_root_user(prometheus: str) -> None:
    config = json.loads(docker("image", "inspect", prometheus).stdout)[0]["Config"]
    assert config["User"] == f"{PROMETHEUS_UID}:{PROMETHEUS_UID}"
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert config["Entrypoint"] == ["/usr/bin/prometheus"]
    version = docker("run", "--rm", "--network", "none", prometheus, "--version")
    assert version.returncode == 0 and "prometheus, version 2." in version.stdout + version.stderr
    who = docker("run", "--rm", "--network", "none", "--entrypoint", "id", prometheus, "-u")
    assert who.stdout.strip() == PROMETHEUS_UID


def test_prometheus_accepts_the_compose_config_and_finds_the_sites_hefl_sites_lists(
    prometheus: str, tmp_path: Path
) -> None:
    targets = tmp_path / "targets"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "hefl.sites", "compose", "--sites", "3", "--issued", "4"),
            *("--out", str(tmp_path / "sites.yaml"), "--targets", str(targets / "sites.json")),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    service = compose["services"]["prometheus"]
    config = next(a.split("=", 1)[1] for a in service["command"] if a.startswith("--config.file="))
    binds = [v.rsplit(":", 2) for v in service["volumes"] if v.startswith("./")]  # source:target:ro
    mounts = {(ROOT / "docker" / b[0]).resolve(): b[1] for b in binds if b[0].startswith("./pro")}
    (sites_folder,) = [target for source, target, _ in binds if source.endswith("-targets")]
    mounts[targets] = sites_folder
    assert list(mounts.values()).count(config) == 1
    checked = promtool(prometheus, mounts, "check", "config", config)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert discovered(prometheus, mounts, config, "hefl-coordinator") == [
        ("coordinator:8080", {"role": "coordinator"})
    ]
    assert sorted(discovered(prometheus, mounts, config, "hefl-hospitals")) == [
        (f"hospital-{k}:9100", {"site": f"hospital-{k}"}) for k in (1, 2, 3)
    ]  # promtool lists discovered targets in no fixed order


def test_prometheus_accepts_the_kubernetes_config_and_finds_every_site_service(
    prometheus: str, tmp_path: Path
) -> None:
    documents = [
        doc
        for name in ("prometheus.yaml", "hospitals.yaml")
        for doc in yaml.safe_load_all((ROOT / "k8s" / name).read_text())
        if doc and doc["kind"] == "ConfigMap"
    ]
    config_maps = {doc["metadata"]["name"]: doc["data"] for doc in documents}
    mounts = {}
    for name, target in (
        ("hefl-prometheus", "/etc/prometheus/config"),
        ("hefl-prometheus-sites", "/etc/prometheus/sites"),
    ):
        folder = tmp_path / name
        folder.mkdir()
        for file, text in config_maps[name].items():
            (folder / file).write_text(text)
        mounts[folder] = target
    config = "/etc/prometheus/config/prometheus.yml"
    checked = promtool(prometheus, mounts, "check", "config", config)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert discovered(prometheus, mounts, config, "hefl-coordinator") == [
        ("hefl-coordinator-status:8080", {"role": "coordinator"})
    ]
    assert sorted(discovered(prometheus, mounts, config, "hefl-hospitals")) == [
        (f"hefl-hospital-{k}-metrics:9100", {"site": f"hospital-{k}"}) for k in (1, 2, 3, 4)
    ]
