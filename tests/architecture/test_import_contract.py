"""The import contract holds for the checkout, and the checker catches each kind of breach.

The rules live in ``testkit/imports.py``. The synthetic trees below break one rule each, so a
checker that silently stopped looking would fail here too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.imports import PACKAGES, python_files, violations

ROOT = Path(__file__).resolve().parents[2]


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        for parent in path.relative_to(root).parents:
            if parent != Path("."):
                (root / parent / "__init__.py").touch()
    return root


def test_the_checkout_keeps_the_import_contract() -> None:
    found = violations(ROOT)
    assert not found, "\n".join(map(str, found))


def test_the_checker_reads_every_package_of_the_checkout() -> None:
    seen = {path.relative_to(ROOT).parts[0] for path in python_files(ROOT)}
    assert seen == set(PACKAGES)
    assert len(list(python_files(ROOT))) > 100


@pytest.mark.parametrize(
    ("files", "rule", "needle"),
    [
        ({"common/x.py": "from coordinator import state\n"}, "layer", "common imports coordinator"),
        ({"common/x.py": "import hefl.cli\n"}, "layer", "common imports hefl"),
        ({"coordinator/x.py": "from hospital_node import service\n"}, "layer", "coordinator"),
        ({"hospital_node/x.py": "def f():\n    import coordinator.state\n"}, "layer", "hospital"),
        ({"coordinator/x.py": "from hefl.simulation import run_federated\n"}, "layer", "hefl"),
        ({"bench/x.py": "from tests import conftest\n"}, "layer", "bench imports tests"),
        ({"hefl/x.py": "from testkit import broker\n"}, "layer", "hefl imports testkit"),
        ({"common/store/x.py": "from Pyfhel import Pyfhel\n"}, "sole-importer", "Pyfhel"),
        ({"hefl/x.py": "import pika\n"}, "sole-importer", "pika"),
        ({"common/transport/x.py": "import pika.exceptions\n"}, "sole-importer", "pika"),
        (
            {"common/store/x.py": "from googleapiclient import discovery\n"},
            "sole-importer",
            "googleapiclient",
        ),
        (
            {"hefl/x.py": "from hefl.cli.parser import _show\n", "hefl/cli/parser.py": "_show=1\n"},
            "private-name",
            "hefl.cli.parser._show",
        ),
        (
            {"tests/x.py": "from common.crypto import _seal\n"},
            "private-name",
            "common.crypto._seal",
        ),
        (
            {"hefl/x.py": "from common._private import thing\n"},
            "private-name",
            "common._private",
        ),
    ],
)
def test_each_kind_of_breach_is_reported(
    tmp_path: Path, files: dict[str, str], rule: str, needle: str
) -> None:
    found = violations(write_tree(tmp_path, files))
    assert [v.rule for v in found] == [rule], found
    assert needle in str(found[0])


@pytest.mark.parametrize(
    "files",
    [
        {"common/crypto/seal.py": "from Pyfhel import PyCtxt, Pyfhel\n"},
        {"common/transport/rabbitmq/io.py": "import pika\nfrom pika import exceptions\n"},
        {"common/store/gdrive_api.py": "from googleapiclient import http\n"},
        {"common/crypto/blob.py": "from common.crypto.seal_layout import _parse\n"},
        {"common/crypto/blob.py": "from . import _helpers\n", "common/crypto/_helpers.py": ""},
        {"hefl/x.py": "from common.crypto import __all__\n"},
        {"coordinator/x.py": "from common.fedavg import mean_metrics\n"},
    ],
)
def test_allowed_imports_are_not_reported(tmp_path: Path, files: dict[str, str]) -> None:
    assert violations(write_tree(tmp_path, files)) == []


def test_bench_patches_no_import_path() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in python_files(ROOT, ["bench"])
        if "sys.path" in path.read_text()
    ]
    assert offenders == []
