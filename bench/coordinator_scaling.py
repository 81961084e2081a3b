"""Coordinator scaling: aggregation wall time and peak RSS against hospitals and model size.

Each cell (codec, model size, number of hospitals N) runs in a fresh subprocess, so cells cannot
inherit each other's memory: it loads the coordinator's public material, then fetches N update
blobs from a local-folder store, checks each blob's SHA-256 and adds it into the running sum,
exactly as the coordinator does per submission, and serializes the sum. Wall time covers the N
fetches, checks and adds and the final serialization; peak RSS is the cell's ``VmHWM`` (not
``ru_maxrss``, which a fork+exec child inherits from its parent on Linux).

The updates are synthetic: ``DISTINCT`` random vectors (uniform in [-1, 1]) are encrypted once
per codec and size, and hospital i submits blob ``i % DISTINCT`` (read from disk afresh each
time). Ours runs CKKS with ``max_hospitals`` raised to the largest N (the default is 100). The
anchors are TenSEAL as FLARE configures it (server context without keys, ``+`` per layer) and
plaintext float32 sums.

    .venv/bin/python -m bench.coordinator_scaling [--quick] [--sizes 100000,1000000]
        [--counts 10,50,200]

Writes bench/results/coordinator_scaling.{json,md}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import report
from bench.schemes import Float32Codec, Float32Sum, mlp_layers
from common.crypto import HEConfig, open_aggregator, open_cipher, run_key_ceremony
from common.store import LocalStore, get_verified

NAME = "coordinator_scaling"
TITLE = "Coordinator scaling: aggregation time and peak RSS against hospitals and model size"
QUICK_SIZES, FULL_SIZES = (10_000, 100_000), (100_000, 1_000_000)
COUNTS = (10, 50, 200)
DISTINCT = 4
OURS, TENSEAL, FLOAT32 = "ours CKKS", "TenSEAL CKKS (FLARE config)", "plaintext float32"
CODECS = (OURS, TENSEAL, FLOAT32)
SLUG = {OURS: "ours", TENSEAL: "tenseal", FLOAT32: "float32"}


def prepare(root: Path, sizes: Sequence[int], max_hospitals: int) -> None:
    """Keys for every codec, and DISTINCT encrypted updates per codec and size, on disk."""
    from bench.anchors import TensealFlareCodec, TensealKeys

    keys = root / "keys"
    run_key_ceremony(HEConfig(max_hospitals=max_hospitals), keys / "hospital", keys / "coordinator")
    cipher = open_cipher(keys / "hospital")
    tenseal_keys = TensealKeys()
    (keys / "tenseal-server.ctx").write_bytes(tenseal_keys.server_bytes)
    rng = np.random.default_rng(11)
    for size in sizes:
        encoders = {
            OURS: cipher.encrypt,
            TENSEAL: TensealFlareCodec(tenseal_keys, mlp_layers(size)).encrypt,
            FLOAT32: Float32Codec().encrypt,
        }
        vectors = [rng.uniform(-1.0, 1.0, size) for _ in range(DISTINCT)]
        for codec, encrypt in encoders.items():
            store = LocalStore(root / f"size-{size}" / SLUG[codec])
            digests = []
            for i, vector in enumerate(vectors):
                blob = encrypt(vector)
                store.put(f"update-{i}.blob", blob)
                digests.append(hashlib.sha256(blob).hexdigest())
            (root / f"size-{size}" / f"{SLUG[codec]}.json").write_text(json.dumps(digests))


def cell(root: Path, codec: str, size: int, count: int) -> dict[str, Any]:
    """One coordinator's aggregation of ``count`` submissions (runs in its own process)."""
    slug = SLUG[codec]
    store = LocalStore(root / f"size-{size}" / slug)
    digests = json.loads((root / f"size-{size}" / f"{slug}.json").read_text())
    if codec == OURS:
        total: Any = open_aggregator(root / "keys" / "coordinator").new_sum()
    elif codec == TENSEAL:
        from bench.anchors import TensealSum, require_tenseal

        ts = require_tenseal()
        server = ts.context_from((root / "keys" / "tenseal-server.ctx").read_bytes())
        total = TensealSum(ts, server)
    else:
        total = Float32Sum()
    before_peak, before_rss = report.peak_rss_mb(), report.current_rss_mb()
    started = time.perf_counter()
    for i in range(count):
        blob = get_verified(store, f"update-{i % DISTINCT}.blob", digests[i % DISTINCT])
        total.add(blob)
        del blob
    aggregate = total.to_blob()
    seconds = time.perf_counter() - started
    return {
        "codec": codec,
        "parameters": size,
        "hospitals": count,
        "seconds": seconds,
        "ms_per_hospital": 1e3 * seconds / count,
        "upload_bytes": (root / f"size-{size}" / slug / "update-0.blob").stat().st_size,
        "aggregate_bytes": len(aggregate),
        "rss_before_mb": before_rss,
        "peak_rss_before_mb": before_peak,
        "peak_rss_mb": report.peak_rss_mb(),
    }


def run_cell(root: Path, codec: str, size: int, count: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.coordinator_scaling", "--cell", SLUG[codec]]
    command += ["--root", str(root)]
    command += ["--size", str(size), "--count", str(count)]
    done = subprocess.run(command, cwd=report.ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"cell {codec} {size} x{count} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add, per (codec, size), RSS relative to the smallest N; per (size, N), time vs TenSEAL."""
    by_key = {(c["codec"], c["parameters"], c["hospitals"]): c for c in cells}
    for c in cells:
        smallest = min(h for (k, p, h) in by_key if k == c["codec"] and p == c["parameters"])
        c["rss_vs_smallest"] = (
            c["peak_rss_mb"] / by_key[(c["codec"], c["parameters"], smallest)]["peak_rss_mb"]
        )
        anchor = by_key.get((TENSEAL, c["parameters"], c["hospitals"]))
        c["speedup_vs_tenseal"] = anchor["seconds"] / c["seconds"] if anchor else None
    return cells


def render(cells: list[dict[str, Any]], counts: Sequence[int]) -> str:
    headers = [
        "params",
        "codec",
        "hospitals",
        "upload (MB)",
        "wall (s)",
        "ms / hospital",
        "x TenSEAL speed",
        "RSS before adds (MB)",
        "peak RSS (MB)",
        f"RSS / RSS at {min(counts)}",
    ]
    rows = [
        [
            f"{c['parameters']:,}",
            c["codec"],
            c["hospitals"],
            report.fmt(c["upload_bytes"] / 1e6, ".2f"),
            report.fmt(c["seconds"], ".2f"),
            report.fmt(c["ms_per_hospital"], ".1f"),
            report.fmt(c["speedup_vs_tenseal"], ".2f"),
            report.fmt(c["rss_before_mb"], ".1f"),
            report.fmt(c["peak_rss_mb"], ".1f"),
            report.fmt(c["rss_vs_smallest"], ".3f"),
        ]
        for c in cells
    ]
    return "\n".join(
        [
            f"One fresh process per cell; synthetic submissions ({DISTINCT} distinct encrypted "
            "vectors per codec, re-read from disk for every hospital). Wall time: fetch, SHA-256 "
            "check and add of every submission, then serializing the sum.",
            "",
            report.md_table(headers, rows),
        ]
    )


def parse_ints(text: str) -> list[int]:
    return [int(s) for s in text.replace("_", "").split(",") if s.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = report.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=parse_ints)
    parser.add_argument("--counts", type=parse_ints, default=list(COUNTS))
    parser.add_argument("--cell", choices=sorted(SLUG.values()), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cell:
        codec = {slug: name for name, slug in SLUG.items()}[args.cell]
        print(json.dumps(cell(args.root, codec, args.size, args.count)))
        return 0
    mode = report.QUICK if args.quick else report.FULL
    sizes = args.sizes or list(QUICK_SIZES if args.quick else FULL_SIZES)
    counts = sorted(args.counts)
    cells = []
    with tempfile.TemporaryDirectory(prefix="hefl-bench-scaling-") as tmp:
        root = Path(tmp)
        prepare(root, sizes, max(counts))
        for size in sizes:
            for count in counts:
                for codec in CODECS:
                    print(f"coordinator_scaling: {codec}, {size:,} params, {count}", flush=True)
                    cells.append(run_cell(root, codec, size, count))
    cells = summarize(cells)
    figures = {
        "config": {"sizes": sizes, "counts": counts, "distinct_blobs": DISTINCT},
        "cells": cells,
    }
    return report.publish(
        NAME,
        out=args.out,
        mode=mode,
        title=TITLE,
        figures=figures,
        markdown=render(cells, counts),
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
