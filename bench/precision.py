"""CKKS precision against upload size: which last prime the default keeps (issue 17).

For each data prime of 56, 50, 45, 40 and 36 bits (SEAL's special prime 53 bits; scale
``2**(prime - 16)``, so the value bound at ``max_hospitals`` 100 stays the config's 81.92 for
every prime, as the default derives it today): the upload's bytes per parameter (the Diabetes-130
MLP and 1M parameters), the largest decryption error after 100 sums of values uniform in [-1, 1]
next to the bound the configuration states (``HEConfig.error_bound``), and the final test AUC of
encrypted FedAvg against plaintext FedAvg after 10 rounds on the full data, at 4 and 10 hospitals
(Dirichlet label skew, alpha 0.5; every run seeded alike, so only the arithmetic differs). The
recommended prime is the smallest whose AUC difference stays within 0.0005 in every cell.

    .venv/bin/python -m bench.precision [--quick] [--primes 56,40,36] [--cells 4,10] [--rounds 10]

Writes bench/results/precision.{json,md}.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import report
from bench.data import dataset
from bench.he_codec import diabetes_layers, uniform
from common.crypto import (
    CKKS_HEADROOM_BITS,
    CKKS_PRIME_BITS,
    CKKS_SPECIAL_PRIME_BITS,
    HEConfig,
    ckks_parameters,
    open_aggregator,
    open_cipher,
    plain_aggregator,
    plain_cipher,
    run_key_ceremony,
)
from common.model import ModelConfig
from common.store import LocalStore
from hefl.simulation import Cohort, SimulationConfig, load_cohort, run_federated
from hospital_node.trainer import Trainer, keras_trainer

NAME = "precision"
TITLE = "CKKS precision: last prime, upload bytes, decryption error and AUC against plaintext"
PRIMES = tuple(sorted(CKKS_PRIME_BITS, reverse=True))
CELLS = (4, 10)
ALPHA = 0.5
AUC_TOLERANCE = 5e-4
SUMS = 100
ERROR_VALUES = 16_384
SIZES = (0, 1_000_000)  # 0 stands for the Diabetes-130 MLP
SEED = 20261203


def config_for(prime: int) -> HEConfig:
    return HEConfig(**ckks_parameters(prime))


def codec_figures(prime: int, workdir: Path, rng: np.random.Generator) -> dict[str, Any]:
    """Bytes per parameter and the error after ``SUMS`` sums, for one prime."""
    config = config_for(prime)
    hospital, coordinator = workdir / "hospital", workdir / "coordinator"
    run_key_ceremony(config, hospital, coordinator, overwrite=True)
    cipher, aggregator = open_cipher(hospital), open_aggregator(coordinator)
    sizes = {}
    for size in SIZES:
        count = sum(diabetes_layers()) if size == 0 else size
        blob = cipher.encrypt(uniform(rng, count))
        sizes["mlp" if size == 0 else str(size)] = {
            "parameters": count,
            "bytes_per_parameter": len(blob) / count,
        }
    total, exact = aggregator.new_sum(), np.zeros(ERROR_VALUES)
    started = time.perf_counter()
    for _ in range(SUMS):
        values = uniform(rng, ERROR_VALUES)
        total.add(cipher.encrypt(values))
        exact += values
    error = float(np.max(np.abs(cipher.decrypt(total.to_blob()) - exact)))
    return {
        "prime_bits": prime,
        "scale_bits": config.scale_bits,
        "value_bound": config.value_bound,
        "config": config.to_dict(),
        "sizes": sizes,
        "error_after_sums": error,
        "stated_bound": config.error_bound(SUMS),
        "sums_seconds": time.perf_counter() - started,
    }


def auc_of(
    sim: SimulationConfig,
    cohort: Cohort,
    evaluator: Trainer,
    run: str,
    cipher_for: Any,
    aggregator: Any,
    store: Path,
) -> tuple[float, float]:
    """Final test AUC of one federated run on the pooled hold-out, and its seconds."""
    result = run_federated(
        sim, cohort, run=run, cipher_for=cipher_for, aggregator=aggregator, store=LocalStore(store)
    )
    x_test, y_test = cohort.pooled_test
    return float(evaluator.evaluate(result.weights, x_test, y_test).auc), result.seconds


def quality_cell(
    csv: Path, root: Path, hospitals: int, primes: Sequence[int], rounds: int
) -> dict[str, Any]:
    sim = SimulationConfig(
        dataset=csv,
        hospitals=hospitals,
        partition="dirichlet",
        alpha=ALPHA,
        rounds=rounds,
        out=root / f"out-{hospitals}",
        model=ModelConfig(),
    )
    # One split and one evaluator for every run of the cell: only the arithmetic differs.
    cohort = load_cohort(sim)
    evaluator = keras_trainer(sim.model, cohort.n_features)
    store = root / f"store-{hospitals}"
    plain, plain_seconds = auc_of(
        sim, cohort, evaluator, "plaintext", lambda _n: plain_cipher(), plain_aggregator(), store
    )
    print(f"precision: {hospitals} hospitals, plaintext AUC {plain:.5f}", flush=True)
    encrypted = {}
    for prime in primes:
        keys = root / f"keys-{prime}"
        run_key_ceremony(config_for(prime), keys / "hospital", keys / "coordinator", overwrite=True)
        auc, seconds = auc_of(
            sim,
            cohort,
            evaluator,
            f"ckks-{prime}",
            lambda _n, keys=keys: open_cipher(keys / "hospital"),
            open_aggregator(keys / "coordinator"),
            store,
        )
        encrypted[str(prime)] = {"auc": auc, "difference": abs(auc - plain), "seconds": seconds}
        print(f"precision: {hospitals} hospitals, {prime}-bit prime AUC {auc:.5f}", flush=True)
    return {
        "hospitals": hospitals,
        "partition": "dirichlet",
        "alpha": ALPHA,
        "rounds": rounds,
        "plaintext_auc": plain,
        "plaintext_seconds": plain_seconds,
        "encrypted": encrypted,
    }


def recommend(primes: Sequence[int], cells: Sequence[dict[str, Any]]) -> int | None:
    """The smallest prime whose AUC difference is within ``AUC_TOLERANCE`` in every cell."""
    fine = [
        p
        for p in primes
        if all(c["encrypted"][str(p)]["difference"] <= AUC_TOLERANCE for c in cells)
    ]
    return min(fine) if fine else None


def render(
    codecs: list[dict[str, Any]], cells: list[dict[str, Any]], best: int | None, patients: int
) -> str:
    headers = [
        "last prime",
        "scale",
        "value bound",
        "bytes/param (MLP)",
        "bytes/param (1M)",
        f"max error, {SUMS} sums",
        "stated bound",
        *(f"|AUC diff| {c['hospitals']} hospitals" for c in cells),
    ]
    rows = [
        [
            f"{c['prime_bits']} bits",
            f"2^{c['scale_bits']}",
            report.fmt(c["value_bound"], ".4g"),
            report.fmt(c["sizes"]["mlp"]["bytes_per_parameter"], ".2f"),
            report.fmt(c["sizes"]["1000000"]["bytes_per_parameter"], ".3f"),
            report.fmt(c["error_after_sums"], ".2e"),
            report.fmt(c["stated_bound"], ".2e"),
            *(
                report.fmt(cell["encrypted"][str(c["prime_bits"])]["difference"], ".1e")
                for cell in cells
            ),
        ]
        for c in codecs
    ]
    plain = ", ".join(f"{c['hospitals']} hospitals {c['plaintext_auc']:.4f}" for c in cells)
    verdict = (
        f"Recommended (smallest prime within {AUC_TOLERANCE} AUC in every cell): {best} bits."
        if best is not None
        else f"No prime stays within {AUC_TOLERANCE} AUC in every cell."
    )
    return "\n".join(
        [
            f"Special prime {CKKS_SPECIAL_PRIME_BITS} bits, n = 4096, max_hospitals 100; "
            f"scale = prime - {CKKS_HEADROOM_BITS} bits. Error: max |decrypted - exact| over "
            f"{ERROR_VALUES:,} values after {SUMS} sums of uploads uniform in [-1, 1]; the "
            "stated bound is `HEConfig.error_bound(100)`. AUC: final test AUC after "
            f"{cells[0]['rounds'] if cells else 0} rounds on "
            f"{'full Diabetes-130' if patients <= 0 else f'a sample of {patients} patients'}, "
            "Dirichlet label "
            f"skew (alpha {ALPHA}), against plaintext FedAvg ({plain}).",
            "",
            report.md_table(headers, rows),
            "",
            verdict,
        ]
    )


def parse_ints(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = report.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--primes", type=parse_ints, help="data prime sizes in bits")
    parser.add_argument("--cells", type=parse_ints, help="hospital counts")
    parser.add_argument("--patients", type=int, default=None, help="sample size; 0 = full data")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    mode = report.QUICK if args.quick else report.FULL
    primes = sorted(args.primes or PRIMES, reverse=True)
    hospitals = args.cells or list(CELLS)
    patients = args.patients if args.patients is not None else (4000 if args.quick else 0)
    rounds = args.rounds or (2 if args.quick else 10)
    rng = np.random.default_rng(SEED)
    with tempfile.TemporaryDirectory(prefix="hefl-bench-precision-") as tmp:
        root = Path(tmp)
        codecs = []
        for prime in primes:
            print(f"precision: {prime}-bit prime, bytes and error", flush=True)
            codecs.append(codec_figures(prime, root / f"codec-{prime}", rng))
        csv = dataset(root, patients)
        cells = [quality_cell(csv, root, h, primes, rounds) for h in hospitals]
    best = recommend(primes, cells)
    figures = {
        "config": {
            "primes": primes,
            "special_prime": CKKS_SPECIAL_PRIME_BITS,
            "headroom_bits": CKKS_HEADROOM_BITS,
            "hospitals": hospitals,
            "patients": patients,
            "rounds": rounds,
            "auc_tolerance": AUC_TOLERANCE,
        },
        "codecs": codecs,
        "cells": cells,
        "recommended_prime_bits": best,
    }
    return report.publish(
        NAME,
        out=args.out,
        mode=mode,
        title=TITLE,
        figures=figures,
        markdown=render(codecs, cells, best, patients),
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
