"""The project's import contract, checked by walking every module's syntax tree.

The rules (``tests/architecture/test_import_contract.py`` runs them on the checkout):

- layers: ``common`` imports no role, no ``hefl`` and no harness; a role (``coordinator``,
  ``hospital_node``) imports neither the other role nor ``hefl``; runtime packages import no
  ``bench``, ``tests`` or ``testkit``; ``bench`` and ``testkit`` never import ``tests``;
- one importer per I/O library: Pyfhel only in ``common.crypto.seal`` (and ``bench.anchors``,
  which measures plain Pyfhel as a baseline, and ``tests.crypto.test_pyfhel_patch``, which
  tests the build's source patch on Pyfhel itself), pika only inside ``common.transport.rabbitmq``,
  googleapiclient only in ``common.store.gdrive_api``;
- no module imports an underscore (private) name, or a private module, of another package.

Every import counts, wherever it is written (top level, inside a function, under
``TYPE_CHECKING``), since each of them runs or names a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: Top-level folders holding Python modules of this project.
PACKAGES: Final = (
    "common",
    "coordinator",
    "hospital_node",
    "hefl",
    "bench",
    "testkit",
    "tests",
    "tff_engine",
)
RUNTIME: Final = ("common", "coordinator", "hospital_node", "hefl")
HARNESS: Final = ("bench", "tests", "testkit")

#: importer's top-level package -> top-level packages it must not import
FORBIDDEN_LAYERS: Final[Mapping[str, tuple[str, ...]]] = {
    "common": ("coordinator", "hospital_node", "hefl", *HARNESS),
    "coordinator": ("hospital_node", "hefl", *HARNESS),
    "hospital_node": ("coordinator", "hefl", *HARNESS),
    "hefl": HARNESS,
    "bench": ("tests",),
    "testkit": ("tests",),
}

#: third-party library -> the modules allowed to import it (a package: it and its submodules)
SOLE_IMPORTERS: Final[Mapping[str, tuple[str, ...]]] = {
    "Pyfhel": ("common.crypto.seal", "bench.anchors", "tests.crypto.test_pyfhel_patch"),
    "pika": ("common.transport.rabbitmq",),
    "googleapiclient": ("common.store.gdrive_api",),
    "prometheus_client": ("common.observe.prometheus",),
    "tqdm": ("common.progress",),
    "matplotlib": ("hefl.report.figures",),  # an optional extra: the images do not carry it
}


@dataclass(frozen=True)
class Import:
    """One imported module (and the name taken from it, for ``from m import name``)."""

    importer: str
    module: str
    name: str | None
    line: int


@dataclass(frozen=True)
class Violation:
    importer: str
    line: int
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.importer}:{self.line}: {self.rule}: {self.detail}"


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package_of(module: str, is_package: bool) -> str:
    return module if is_package else module.rpartition(".")[0]


def imports_of(root: Path, path: Path) -> Iterator[Import]:
    """Every import in one file, relative imports resolved."""
    importer = module_name(root, path)
    package = _package_of(importer, path.name == "__init__.py")
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(importer, alias.name, None, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield Import(importer, base, alias.name, node.lineno)


def python_files(root: Path, packages: Iterable[str] = PACKAGES) -> Iterator[Path]:
    for package in packages:
        folder = root / package
        if folder.is_dir():
            yield from sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _allowed(importer: str, allowed: tuple[str, ...]) -> bool:
    return any(importer == entry or importer.startswith(entry + ".") for entry in allowed)


def check(imp: Import, *, importer_package: str, target_package: str) -> Iterator[Violation]:
    """The violations of one import (``target_package``: the package holding what it imports)."""
    top = imp.importer.split(".")[0]
    target_top = imp.module.split(".")[0]
    if target_top in FORBIDDEN_LAYERS.get(top, ()):
        yield Violation(imp.importer, imp.line, "layer", f"{top} imports {imp.module}")
    library = SOLE_IMPORTERS.get(target_top)
    if library is not None and not _allowed(imp.importer, library):
        yield Violation(
            imp.importer,
            imp.line,
            "sole-importer",
            f"{target_top} may be imported only by {', '.join(library)}",
        )
    if target_top in PACKAGES:
        names = imp.module.split(".")
        private_module = any(_private(part) for part in names)
        private_name = imp.name is not None and _private(imp.name)
        if (private_module or private_name) and target_package != importer_package:
            shown = f"{imp.module}.{imp.name}" if imp.name else imp.module
            yield Violation(imp.importer, imp.line, "private-name", f"imports {shown}")


def violations(root: Path, packages: Iterable[str] = PACKAGES) -> list[Violation]:
    """Every violation of the contract under ``root``."""
    found: list[Violation] = []
    for path in python_files(root, packages):
        importer = module_name(root, path)
        package = _package_of(importer, path.name == "__init__.py")
        for imp in imports_of(root, path):
            is_package = root.joinpath(*imp.module.split(".")).is_dir()
            target = imp.module if is_package else imp.module.rpartition(".")[0]
            found.extend(check(imp, importer_package=package, target_package=target))
    return found
