"""Plumbing every benchmark shares: the machine description, medians, and the result files.

Each benchmark writes ``bench/results/<name>.json`` (figures plus machine, mode and command) and
``bench/results/<name>.md`` (the same figures as markdown tables). Nothing here imports
TensorFlow or TenSEAL: versions are read from package metadata, so the coordinator-scaling cells
stay small processes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
#: Distributions whose versions every result file records.
LIBRARIES = ("numpy", "tensorflow", "keras", "Pyfhel", "tenseal", "pandas", "scikit-learn")
QUICK, FULL = "quick", "full"


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (falls back to ``platform``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine() -> dict[str, Any]:
    """What a reader needs to judge the figures: CPU, cores, memory, OS and library versions."""
    memory_gb = None
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory_gb = round(pages * page_size / 2**30, 1)
    except (OSError, ValueError):
        pass
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
    }


def describe_machine(info: dict[str, Any]) -> str:
    libs = ", ".join(f"{k} {v}" for k, v in info["libraries"].items() if v is not None)
    return (
        f"{info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB RAM, {info['os']}; "
        f"Python {info['python']}; {libs}"
    )


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The command that produced a result: ``python -m module`` (from the checkout) and its args."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join([".venv/bin/python", "-m", module, *(shlex.quote(a) for a in args)])


def median(values: Iterable[float]) -> float:
    items = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(items) if items else math.nan


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (smoke run)")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="folder for <name>.json and <name>.md"
    )
    return parser


def write_results(
    name: str,
    *,
    out: Path,
    mode: str,
    title: str,
    figures: dict[str, Any],
    markdown: str,
    module: str,
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write ``<name>.json`` and ``<name>.md``; return the JSON document."""
    info = machine()
    document = {
        "benchmark": name,
        "title": title,
        "mode": mode,
        "command": command_line(module, argv),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": info,
        **figures,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(
        json.dumps(finite(document), indent=1, allow_nan=False) + "\n"
    )
    header = [
        f"## {title}",
        "",
        f"Mode: {mode}. Command: `{document['command']}`. Date: {document['date']}.",
        f"Machine: {describe_machine(info)}.",
        "",
    ]
    (out / f"{name}.md").write_text("\n".join(header) + markdown.rstrip() + "\n")
    return document


def publish(
    name: str,
    *,
    out: Path,
    mode: str,
    title: str,
    figures: dict[str, Any],
    markdown: str,
    argv: Sequence[str] | None = None,
) -> int:
    """Write the results of ``bench.<name>`` and print its table; the script's exit status."""
    write_results(
        name,
        out=out,
        mode=mode,
        title=title,
        figures=figures,
        markdown=markdown,
        module=f"bench.{name}",
        argv=argv,
    )
    print(markdown)
    return 0


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float | None, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB: ``VmHWM`` from /proc/self/status.

    Not ``ru_maxrss``: on Linux a child started with fork+exec inherits its parent's high-water
    mark there (a cell launched by a 390 MB parent reported 390 MB whatever it did), while
    ``VmHWM`` belongs to the process's own address space.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """This process's resident set size now, in MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
