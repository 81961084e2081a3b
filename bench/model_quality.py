"""Model quality on Diabetes-130: encrypted FedAvg against its anchors, per cohort shape.

Each cell runs the demo's comparison (``hefl.compare.run_comparison``): encrypted FedAvg (CKKS),
plaintext FedAvg, every hospital alone and centralized training on the pooled data, all scored
on the same pooled hold-out (patient-grouped test splits). Cells: 4 and 10 hospitals, IID and
label-skewed (Dirichlet, alpha 0.5); the demo's model and training settings, seed 42.

    .venv/bin/python -m bench.model_quality [--quick] [--cells 4:iid,10:dirichlet] [--rounds 10]
        [--ckks-prime-bits 36]

Writes bench/results/model_quality.{json,md}.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import report
from bench.data import dataset
from common.crypto import CKKS_PRIME_BITS, DEFAULT_CKKS_PRIME_BITS, HEConfig, ckks_parameters
from common.model import ModelConfig
from hefl.compare import run_comparison
from hefl.simulation import SimulationConfig

NAME = "model_quality"
TITLE = "Model quality on Diabetes-130: encrypted FedAvg against plaintext, centralized, local"
CELLS = ((4, "iid"), (4, "dirichlet"), (10, "iid"), (10, "dirichlet"))
ALPHA = 0.5
ENCRYPTED = "encrypted FedAvg (CKKS)"
PLAINTEXT = "plaintext FedAvg"
CENTRALIZED = "centralized (pooled data)"
LOCAL_MEAN = "mean of hospitals alone"


def parse_cells(text: str) -> list[tuple[int, str]]:
    cells = []
    for item in text.split(","):
        hospitals, partition = item.split(":")
        cells.append((int(hospitals), partition))
    return cells


def run_cell(
    csv: Path,
    out: Path,
    hospitals: int,
    partition: str,
    rounds: int,
    model: ModelConfig,
    he: HEConfig,
) -> dict[str, Any]:
    config = SimulationConfig(
        he=he,
        dataset=csv,
        hospitals=hospitals,
        partition=partition,  # type: ignore[arg-type]
        alpha=ALPHA,
        rounds=rounds,
        out=out,
        model=model,
    )
    lines: list[str] = []
    started = time.perf_counter()
    summary = run_comparison(config, emit=lines.append)
    seconds = time.perf_counter() - started
    auc = {row["method"]: row["auc"] for row in summary["results"]}
    return {
        "hospitals": hospitals,
        "partition": partition,
        "alpha": ALPHA if partition == "dirichlet" else None,
        "rounds": rounds,
        "auc": {
            "encrypted": auc[ENCRYPTED],
            "plaintext": auc[PLAINTEXT],
            "centralized": auc[CENTRALIZED],
            "local_mean": auc[LOCAL_MEAN],
        },
        "auc_difference": abs(auc[ENCRYPTED] - auc[PLAINTEXT]),
        "max_abs_weight_difference": summary["runs"]["max_abs_weight_difference"],
        "results": summary["results"],
        "upload": summary["upload"],
        "seconds": seconds,
    }


def render(cells: list[dict[str, Any]], patients: int, model: ModelConfig) -> str:
    data = "full Diabetes-130" if patients <= 0 else f"a sample of {patients} patients"
    headers = [
        "hospitals",
        "partition",
        "encrypted FedAvg",
        "plaintext FedAvg",
        "|difference|",
        "centralized",
        "mean local-only",
        "max |weight difference|",
        "seconds",
    ]
    rows = [
        [
            c["hospitals"],
            c["partition"] + (f" (alpha {c['alpha']})" if c["alpha"] else ""),
            report.fmt(c["auc"]["encrypted"], ".4f"),
            report.fmt(c["auc"]["plaintext"], ".4f"),
            report.fmt(c["auc_difference"], ".1e"),
            report.fmt(c["auc"]["centralized"], ".4f"),
            report.fmt(c["auc"]["local_mean"], ".4f"),
            report.fmt(c["max_abs_weight_difference"], ".1e"),
            report.fmt(c["seconds"], ".0f"),
        ]
        for c in cells
    ]
    return "\n".join(
        [
            f"Test AUC on the pooled hold-out; {data}; {cells[0]['rounds']} rounds; model "
            f"Dense {list(model.hidden_units)}, {model.optimizer} lr {model.learning_rate}, "
            f"batch {model.batch_size}, {model.local_epochs} local epochs; seed 42. "
            "Local-only models train as many epochs as a federated hospital.",
            "",
            report.md_table(headers, rows),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = report.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--cells", type=parse_cells, help="hospitals:partition, comma-separated")
    parser.add_argument("--patients", type=int, default=None, help="sample size; 0 = full data")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=None, help="hidden units (default 128)")
    parser.add_argument(
        "--ckks-prime-bits",
        type=int,
        choices=CKKS_PRIME_BITS,
        default=DEFAULT_CKKS_PRIME_BITS,
        help="CKKS last prime (a sample of a few hundred rows needs 45 or more)",
    )
    args = parser.parse_args(argv)
    mode = report.QUICK if args.quick else report.FULL
    cells_wanted = args.cells or list(CELLS)
    patients = args.patients if args.patients is not None else (4000 if args.quick else 0)
    rounds = args.rounds or (2 if args.quick else 10)
    model = ModelConfig(hidden_units=(args.hidden,)) if args.hidden else ModelConfig()
    cells = []
    with tempfile.TemporaryDirectory(prefix="hefl-bench-quality-") as tmp:
        root = Path(tmp)
        csv = dataset(root, patients)
        for hospitals, partition in cells_wanted:
            print(f"model_quality: {hospitals} hospitals, {partition}", flush=True)
            out = root / f"cell-{hospitals}-{partition}"
            he = HEConfig(**ckks_parameters(args.ckks_prime_bits))
            cells.append(run_cell(csv, out, hospitals, partition, rounds, model, he))
    figures = {
        "config": {
            "patients": patients,
            "rounds": rounds,
            "model": model.to_dict(),
            "ckks_prime_bits": args.ckks_prime_bits,
            "cells": [[h, p] for h, p in cells_wanted],
        },
        "cells": cells,
    }
    return report.publish(
        NAME,
        out=args.out,
        mode=mode,
        title=TITLE,
        figures=figures,
        markdown=render(cells, patients, model),
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
