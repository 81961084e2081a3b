"""Public surface of ``common.crypto`` and the single-importer rule for Pyfhel."""

from __future__ import annotations

import ast
from pathlib import Path

import common.crypto

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "coordinator", "hospital_node", "hefl")


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in vars(common.crypto) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(common.crypto, name)).__name__ == "module"}
    assert sorted(common.crypto.__all__) == sorted(public - modules)
    for name in common.crypto.__all__:
        assert getattr(common.crypto, name) is not None


def test_the_factories_and_ceremony_are_exported() -> None:
    for name in (
        "open_cipher",
        "open_aggregator",
        "plain_cipher",
        "plain_aggregator",
        "run_key_ceremony",
        "load_hospital_bundle",
        "load_coordinator_bundle",
        "encode_blob",
        "decode_blob",
    ):
        assert callable(getattr(common.crypto, name)), name


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_exactly_one_module_imports_pyfhel() -> None:
    importers = sorted(
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "Pyfhel" in imports_of(path)
    )
    assert importers == ["common/crypto/seal.py"]
