"""The hefl container images, built as CI builds them, and what is installed in them.

``build(tag)`` prepares the Docker engine and the local stand-in base image
(``tools/container_engine.sh``), fills ``docker/wheelhouse`` and builds both images with
``tools/container_build.sh`` on the stand-in, offline (no image registry is reachable in CI; the
wheelhouse is filled with this machine's pip configuration). It builds once per process and tag:
a second call with the same tag reuses the images. ``distributions`` and ``run_python`` look
inside an image without its entry point and without network.

Every failure raises ``ImageError`` with the reason; a test then fails, never skips. The engine
needs root, as in ``tests/containers/test_compose.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]
STANDIN_PYTHON: Final = "hefl-standin/python:3.11-slim"
ROLES: Final = ("coordinator", "hospital")
BUILD_TIMEOUT: Final = 3600.0
RUN_TIMEOUT: Final = 300.0
# Normalized distribution names (PEP 503) of every package installed in an image's venv.
_LIST_DISTRIBUTIONS: Final = (
    "import importlib.metadata as m, json, re; "
    "print(json.dumps(sorted({re.sub(r'[-_.]+', '-', d.metadata['Name']).lower() "
    "for d in m.distributions()})))"
)


class ImageError(RuntimeError):
    """An image cannot be built or looked into; the message says why."""


@dataclass(frozen=True)
class Build:
    """The images of one tag, and what building them took."""

    tag: str
    seconds: float
    sizes_mb: dict[str, float]

    def image(self, role: str) -> str:
        return f"hefl-{role}:{self.tag}"


_built: dict[str, Build] = {}


def build(tag: str) -> Build:
    """Both images under ``tag``, built on the stand-in base unless this process already did."""
    if tag in _built:
        return _built[tag]
    if os.geteuid() != 0:
        raise ImageError("building the images needs root to install and start dockerd")
    start = time.monotonic()
    _run("bash", "tools/container_engine.sh", "daemon", timeout=600)
    _run("bash", "tools/container_engine.sh", "standins", timeout=900)
    fill_wheelhouse()
    env = dict(os.environ, BASE_IMAGE=STANDIN_PYTHON, OFFLINE="1", HEFL_TAG=tag)
    _run("bash", "tools/container_build.sh", *ROLES, env=env, timeout=BUILD_TIMEOUT)
    sizes = {role: size_mb(f"hefl-{role}:{tag}") for role in ROLES}
    _built[tag] = Build(tag=tag, seconds=time.monotonic() - start, sizes_mb=sizes)
    return _built[tag]


def fill_wheelhouse() -> None:
    """``tools/container_wheelhouse.sh``: Pyfhel and every dependency, tensorflow-cpu included."""
    _run("bash", "tools/container_wheelhouse.sh", timeout=900)


def size_mb(image: str) -> float:
    """The size of ``image`` as ``docker image inspect`` reports it, in MB (10**6 bytes)."""
    return int(_run("docker", "image", "inspect", "-f", "{{.Size}}", image, timeout=60)) / 1e6


def distributions(image: str) -> frozenset[str]:
    """Normalized names of the Python distributions installed in ``image``."""
    done = run_python(image, _LIST_DISTRIBUTIONS)
    if done.returncode != 0:
        raise ImageError(f"cannot list the distributions of {image}:\n{done.stderr[-4000:]}")
    return frozenset(json.loads(done.stdout))


def run_python(image: str, code: str) -> subprocess.CompletedProcess[str]:
    """``python -c code`` run in ``image`` as its user, without network; the caller checks it."""
    args = ["docker", "run", "--rm", "--network", "none", "--entrypoint", "python", image]
    return _call(*args, "-c", code, timeout=RUN_TIMEOUT)


def _call(
    *args: str, env: dict[str, str] | None = None, timeout: float
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ImageError(f"{' '.join(args[:3])} ...: {exc}") from exc


def _run(*args: str, env: dict[str, str] | None = None, timeout: float) -> str:
    done = _call(*args, env=env, timeout=timeout)
    if done.returncode != 0:
        raise ImageError(
            f"{' '.join(args[:3])} ... failed ({done.returncode}):\n{done.stderr[-4000:]}"
        )
    return done.stdout
