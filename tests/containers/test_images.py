"""What the two images hold, looked at inside the built images.

The hospital trains on TensorFlow's CPU-only build (no CUDA libraries), the coordinator has no
TensorFlow at all, and neither carries the Docker SDK (pyproject's ``ops`` extra, for operators on
the host). The images are built as CI builds them (``testkit.images``: local stand-in base,
offline wheelhouse, root): minutes the first time, seconds when Docker's layer cache holds them.
"""

from __future__ import annotations

import pytest

from testkit import images
from testkit.images import ROLES, Build, ImageError

pytestmark = pytest.mark.cluster  # in `make test` (CI) and `make test-cluster`; not in bare pytest

TAG = "images-test"
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
