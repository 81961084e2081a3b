"""Copy bench/results/PERFORMANCE.md into the README, between the performance markers.

    .venv/bin/python bench/update_readme.py [--check] [--readme README.md] [--source PATH]

The README keeps

    <!-- performance:start -->
    ...generated...
    <!-- performance:end -->

and everything between the two markers is replaced. ``--check`` changes nothing and exits 1 when
the README differs from the results (for CI).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START = "<!-- performance:start -->"
END = "<!-- performance:end -->"


def splice(readme: str, generated: str) -> str:
    """``readme`` with the text between the markers replaced by ``generated``."""
    if readme.count(START) != 1 or readme.count(END) != 1:
        raise ValueError(f"the README needs exactly one {START} and one {END} line")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{generated.strip()}\n{END}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument(
        "--source", type=Path, default=ROOT / "bench" / "results" / "PERFORMANCE.md"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is stale")
    args = parser.parse_args(argv)
    if not args.source.exists():
        print(f"error: {args.source} not found: run `make bench` first", file=sys.stderr)
        return 2
    current = args.readme.read_text()
    try:
        updated = splice(current, args.source.read_text())
    except ValueError as exc:
        print(f"error: {args.readme}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if updated != current:
            print(f"{args.readme} is stale: run bench/update_readme.py", file=sys.stderr)
            return 1
        return 0
    if updated != current:
        args.readme.write_text(updated)
        print(f"updated the performance section of {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
