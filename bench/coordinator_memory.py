"""Coordinator peak memory at 4 and at 20 hospitals: streaming accumulation keeps it flat.

Runs the real deployment (RabbitMQ, `hefl coordinator`, N `hefl hospital` processes) twice in one
command, with a wide model so each encrypted update is several megabytes, and reports the
coordinator's peak resident memory (``ru_maxrss``) for each and their ratio. Were updates held
until the round closed, 20 hospitals would add 16 more updates' worth of memory.

    .venv/bin/python -m bench.coordinator_memory [--hidden 1024] [--rounds 2]

Needs a RabbitMQ server on localhost (started if installed and not running). Writes
bench/results/coordinator_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import tempfile
from pathlib import Path

from testkit import broker
from testkit import cluster as harness

ROOT = Path(__file__).resolve().parents[1]


def peak_mb(log: str) -> float:
    match = re.search(r"peak RSS ([0-9.]+) MB", log)
    if match is None:
        raise SystemExit(f"coordinator did not report its peak RSS:\n{log[-2000:]}")
    return float(match.group(1))


def measure(hospitals: int, rounds: int, hidden: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="hefl-bench-") as tmp:
        root = Path(tmp)
        source = harness.sample_csv(root / "sample.csv", patients=300 * hospitals, seed=3)
        with harness.process_cluster(
            root,
            hospitals=hospitals,
            rounds=rounds,
            scheme="ckks",
            model_flags=("--hidden", str(hidden), "--batch-size", "64", "--local-epochs", "1"),
        ) as cluster:
            cluster.prepare(source)
            cluster.start_coordinator()
            for name in cluster.names:
                cluster.start_hospital(name)
            if cluster.wait_exit("coordinator", timeout=1800) != 0:
                raise SystemExit(cluster.tail_logs())
            state = cluster.state() or {}
            update_bytes = state["history"][0]["bytes_uploaded"] / hospitals
            return {
                "hospitals": hospitals,
                "peak_rss_mb": peak_mb(cluster.log("coordinator")),
                "update_mb": update_bytes / 1e6,
            }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--counts", default="4,20")
    args = parser.parse_args()
    broker.ensure_running()
    counts = [int(n) for n in args.counts.split(",")]
    rows = [measure(n, args.rounds, args.hidden) for n in counts]
    base = rows[0]["peak_rss_mb"]
    for row in rows:
        row["ratio_to_first"] = row["peak_rss_mb"] / base
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
    (out / "coordinator_memory.json").write_text(
        json.dumps({"machine": machine, "rows": rows}, indent=1)
    )
    lines = [
        f"Coordinator peak RSS, CKKS, MLP hidden {args.hidden}, {args.rounds} rounds "
        f"(`.venv/bin/python -m bench.coordinator_memory`)",
        "",
        "| hospitals | update per hospital (MB) | coordinator peak RSS (MB) | ratio |",
        "|---|---|---|---|",
        *(
            f"| {r['hospitals']} | {r['update_mb']:.2f} | {r['peak_rss_mb']:.1f} | "
            f"{r['ratio_to_first']:.3f} |"
            for r in rows
        ),
    ]
    (out / "coordinator_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
