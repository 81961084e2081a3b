"""Round overhead: a full embedded round, encrypted (CKKS) against the plaintext cipher.

The embedded deployment (``hefl.simulation.run_federated``: coordinator and hospitals in one
process, in-memory transport, local-folder store) runs with timing proxies around the cipher,
store, aggregator and trainer (``bench/timing.py``; the trainer through the ``trainer_for``
factory ``run_federated`` takes), so the runtime code is unchanged. Each run has 3 rounds (quick:
2); round 1 (start-up, Keras tracing, no aggregate to download) is dropped and the median of the
later rounds is kept. Encrypted and plaintext runs alternate (the order
flips every repeat); the ratio encrypted/plaintext is taken per repeat, then the median.

The encrypted runs mask their uploads as a deployment does by default (pairwise masks inside
the ciphertexts, ``common.crypto.masking``); ``bench/masking.py`` sets masked against unmasked.

Models: the demo's Diabetes-130 MLP (Dense 128 -> Dense 1, 41,473 parameters) and a
~1M-parameter MLP (Dense 3100 -> Dense 1 over the same 322 features, 1,004,401 parameters),
4 hospitals, Dirichlet label skew (alpha 0.5), seed 42, the demo's training settings.

    .venv/bin/python -m bench.round_overhead [--quick] [--models mlp,1m] [--patients 0]

Writes bench/results/round_overhead.{json,md}.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import report
from bench.data import dataset
from bench.timing import (
    PHASES,
    PhaseClock,
    TimedAggregator,
    TimedCipher,
    TimedStore,
    TimedTrainer,
    crypto_ratio,
)
from common.crypto import (
    HEConfig,
    open_aggregator,
    open_cipher,
    plain_aggregator,
    plain_cipher,
    run_key_ceremony,
)
from common.model import ModelConfig, parameter_count
from common.store import LocalStore
from hefl.simulation import Cohort, SimulationConfig, load_cohort, run_federated
from hospital_node.training import LocalTrainer

NAME = "round_overhead"
TITLE = "Round overhead: encrypted (CKKS) round against the plaintext cipher"
MODELS = {
    "mlp": ("Diabetes-130 MLP (Dense 128)", (128,)),
    "1m": ("~1M-parameter MLP (Dense 3100)", (3100,)),
}
#: Full-mode (rounds, repeats) per model: a 1M-model round takes about 15 s on 2 cores, so it
#: gets two repeats instead of three. Quick mode: (2, 1) for both.
FULL_PLAN = {"mlp": (3, 3), "1m": (3, 2)}
QUICK_PLAN = (2, 1)
ENCRYPTED, PLAINTEXT = "encrypted (CKKS)", "plaintext"
HOSPITALS = 4


def run_once(
    config: SimulationConfig,
    cohort: Cohort,
    keys: Path,
    *,
    encrypted: bool,
    run: str,
    masking: bool | None = None,
) -> dict[str, Any]:
    """One embedded run with every seam timed; ``masking`` None is ``run_federated``'s default
    (masked when encrypted)."""
    clock = PhaseClock()
    if encrypted:
        cipher = TimedCipher(open_cipher(keys / "hospital"), clock)
        aggregator = TimedAggregator(open_aggregator(keys / "coordinator"), clock)
    else:
        cipher = TimedCipher(plain_cipher(), clock)
        aggregator = TimedAggregator(plain_aggregator(), clock)
    store = TimedStore(LocalStore(config.out / "store"), clock)

    def trainer(model: ModelConfig, n_features: int) -> TimedTrainer:
        return TimedTrainer(LocalTrainer(model, n_features), clock)

    result = run_federated(
        config,
        cohort,
        run=run,
        cipher_for=lambda _name: cipher,
        aggregator=aggregator,
        store=store,
        trainer_for=trainer,
        masking=masking,
    )
    rounds = clock.segments[1:]  # round 1: start-up and Keras tracing, nothing to download
    first = result.rounds[0]
    return {
        "rounds": rounds,
        "details": clock.details[1:],
        "uploads": [
            {"bytes": r.bytes_uploaded, "contributors": len(r.accepted), "attempts": r.attempts}
            for r in result.rounds
        ],
        "median": {
            key: report.median(r[key] for r in rounds) for key in (*PHASES, "other", "wall")
        },
        "bytes_per_hospital": first.bytes_uploaded / max(1, len(first.accepted)),
    }


def median_round(rounds: list[dict[str, float]]) -> dict[str, float]:
    """The round with the median wall time (lower middle), so its phases add up to its wall."""
    return sorted(rounds, key=lambda r: r["wall"])[(len(rounds) - 1) // 2]


def bench_model(
    key: str, cohort: Cohort, base: SimulationConfig, keys: Path, rounds: int, repeats: int
) -> dict[str, Any]:
    label, hidden = MODELS[key]
    model = ModelConfig(hidden_units=hidden)
    config = dataclasses.replace(base, model=model, rounds=rounds)
    runs: dict[str, list[dict[str, Any]]] = {ENCRYPTED: [], PLAINTEXT: []}
    for repeat in range(repeats):
        order = (True, False) if repeat % 2 == 0 else (False, True)
        for encrypted in order:
            name = ENCRYPTED if encrypted else PLAINTEXT
            run = f"{key}-{'enc' if encrypted else 'plain'}-{repeat}"
            print(f"round_overhead: {label}, {name}, repeat {repeat + 1}/{repeats}", flush=True)
            runs[name].append(run_once(config, cohort, keys, encrypted=encrypted, run=run))
    ratios = [
        e["median"]["wall"] / p["median"]["wall"]
        for e, p in zip(runs[ENCRYPTED], runs[PLAINTEXT], strict=True)
    ]
    phases = {
        name: median_round([r for run in rs for r in run["rounds"]]) for name, rs in runs.items()
    }
    return {
        "model": key,
        "label": label,
        "hidden_units": list(hidden),
        "parameters": parameter_count(model, cohort.n_features),
        "rounds": rounds,
        "repeats": repeats,
        "ratio": report.median(ratios),
        "ratios": ratios,
        "crypto_ratio": crypto_ratio(phases[ENCRYPTED], phases[PLAINTEXT]),
        "phases": phases,
        "bytes_per_hospital": {n: rs[0]["bytes_per_hospital"] for n, rs in runs.items()},
        "runs": runs,
    }


def render(models: list[dict[str, Any]], patients: int) -> str:
    data = "full Diabetes-130" if patients <= 0 else f"a sample of {patients} patients"
    headers = ["model", "cipher", "round (s)", *PHASES, "other", "upload/hospital (kB)"]
    rows = []
    for m in models:
        for name, phases in m["phases"].items():
            rows.append(
                [
                    f"{m['label']}, {m['parameters']:,} params",
                    name,
                    report.fmt(phases["wall"], ".3f"),
                    *(report.fmt(phases[p], ".3f") for p in (*PHASES, "other")),
                    report.fmt(m["bytes_per_hospital"][name] / 1e3, ".1f"),
                ]
            )
    ratio_rows = [
        [
            m["label"],
            m["rounds"],
            m["repeats"],
            report.fmt(m["ratio"], ".3f"),
            ", ".join(f"{r:.3f}" for r in m["ratios"]),
            report.fmt(crypto_ratio(m["phases"][ENCRYPTED], m["phases"][PLAINTEXT]), ".3f"),
        ]
        for m in models
    ]
    return "\n".join(
        [
            f"{HOSPITALS} hospitals, {data}; the ratio is the median over "
            "repeats of (median encrypted round / median plaintext round), rounds 2.. of each run "
            "(round 1 dropped). The phase table shows the round with the median wall time, in "
            "seconds; its phases add up to it; "
            '"other" is messages, signatures and glue. "Crypto phases only" is 1 + the extra '
            "seconds of encrypt, upload, aggregate, download and decrypt over the plaintext "
            "round's wall time: training time varies by several percent between identical rounds "
            "here, and this estimate leaves that noise out.",
            "",
            report.md_table(
                [
                    "model",
                    "rounds",
                    "repeats",
                    "encrypted / plaintext (median)",
                    "per repeat",
                    "crypto phases only",
                ],
                ratio_rows,
            ),
            "",
            report.md_table(headers, rows),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = report.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="comma-separated: mlp,1m")
    parser.add_argument("--patients", type=int, default=None, help="sample size; 0 = full data")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    mode = report.QUICK if args.quick else report.FULL
    keys_wanted = (args.models or "mlp,1m").split(",")
    patients = args.patients if args.patients is not None else (4000 if args.quick else 0)
    with tempfile.TemporaryDirectory(prefix="hefl-bench-round-") as tmp:
        root = Path(tmp)
        csv = dataset(root, patients)
        base = SimulationConfig(dataset=csv, hospitals=HOSPITALS, out=root / "out")
        cohort = load_cohort(base)
        keys = root / "keys"
        run_key_ceremony(HEConfig(), keys / "hospital", keys / "coordinator")
        models = []
        for key in keys_wanted:
            rounds, repeats = QUICK_PLAN if args.quick else FULL_PLAN[key]
            rounds, repeats = args.rounds or rounds, args.repeats or repeats
            models.append(bench_model(key, cohort, base, keys, rounds, repeats))
    figures = {
        "config": {
            "hospitals": HOSPITALS,
            "partition": base.partition,
            "alpha": base.alpha,
            "seed": base.seed,
            "patients": patients,
            "training": {k: v for k, v in ModelConfig().to_dict().items() if k != "hidden_units"},
            "store": "local folder (as the demo)",
            "masking": "encrypted runs masked (the default); plaintext runs have nothing to mask",
        },
        "models": models,
    }
    return report.publish(
        NAME,
        out=args.out,
        mode=mode,
        title=TITLE,
        figures=figures,
        markdown=render(models, patients),
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
