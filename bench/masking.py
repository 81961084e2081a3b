"""Pairwise masking: a masked encrypted round against the unmasked encrypted round.

Rounds: the embedded deployment (``hefl.simulation.run_federated``) on Diabetes-130 with the
demo's MLP and CKKS, timed through ``bench/timing.py`` as ``bench.round_overhead`` does, for 4
and 10 hospitals. Masked and unmasked runs alternate in one process (the order flips every
repeat); round 1 (start-up, Keras tracing) is dropped and each run keeps the median of its later
rounds; the ratio masked/unmasked is taken per repeat, then the median, for the round's wall
time (the target's measure) and for the process's CPU time over the round (steadier when other
jobs share the machine). The embedded run is one thread, so a round's encrypt time adds up
every hospital's: each draws one ChaCha20 stream per peer, n(n-1) streams a round, where a
deployment's hospitals draw their n-1 in parallel.

Mask cost: one hospital's ``PairwiseMasks.for_cohort(cohort).words(count, q)`` for the MLP's
update (``count`` = its ciphertexts' coefficients, ``q`` their prime, read off a real encrypt)
against one unmasked and one masked ``Cipher.encrypt`` of the same update, in rotating order.

    .venv/bin/python -m bench.masking [--quick] [--hospital-counts 4,10] [--patients 0]

Writes bench/results/masking.{json,md}. The issue's target: masked round <= 1.10x unmasked.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import report
from bench.data import dataset
from bench.round_overhead import run_once
from common.crypto import Cipher, HEConfig, open_cipher, run_key_ceremony
from common.crypto.masking import Cohort as MaskCohort
from common.crypto.masking import Masker
from common.fedavg import payload_size
from common.model import ModelConfig, parameter_count
from common.protocol.runconfig import hospital_names
from common.protocol.signing import MessageCodec, generate_identities
from hefl.simulation import SimulationConfig, load_cohort

NAME = "masking"
TITLE = "Pairwise masking: masked against unmasked encrypted (CKKS) rounds"
TARGET = 1.10
MASKED, UNMASKED = "masked", "unmasked"
#: (hospital counts, rounds, repeats, mask-cost repeats, patients; 0 = the full data)
FULL_PLAN = ((4, 10), 4, 8, 9, 0)
QUICK_PLAN = ((3,), 2, 1, 3, 300)
#: Phases only training and evaluation noise moves; the rest is what masking may change.
TRAINING = ("train", "evaluate")


class _Probe:
    """A masker that remembers what the cipher asked of it (the count and the prime)."""

    def __init__(self, inner: Masker) -> None:
        self._inner = inner
        self.count, self.modulus = 0, 0

    def words(self, count: int, modulus: int) -> np.ndarray:
        self.count, self.modulus = count, modulus
        return self._inner.words(count, modulus)


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def mask_cost(hospitals: int, cipher: Cipher, values: np.ndarray, repeats: int) -> dict[str, Any]:
    """One hospital's mask words against one encrypt of ``values``, with and without the mask."""
    names = sorted(hospital_names(hospitals))
    identities, trust = generate_identities(names)
    masks = MessageCodec(identities[names[0]], trust).pairwise_masks()
    cohort = MaskCohort(run="bench-masking", round=1, attempt=1, participants=tuple(names))
    probe = _Probe(masks.for_cohort(cohort))
    cipher.encrypt(values, mask=probe)
    count, modulus = probe.count, probe.modulus
    steps: dict[str, Callable[[], Any]] = {
        "words": lambda: masks.for_cohort(cohort).words(count, modulus),
        "encrypt": lambda: cipher.encrypt(values),
        "encrypt_masked": lambda: cipher.encrypt(values, mask=masks.for_cohort(cohort)),
    }
    seconds: dict[str, list[float]] = {key: [] for key in steps}
    for repeat in range(repeats):
        order = list(steps)[repeat % 3 :] + list(steps)[: repeat % 3]
        for key in order:
            seconds[key].append(timed(steps[key]))
    med = {key: report.median(s) for key, s in seconds.items()}
    return {
        "hospitals": hospitals,
        "peers": hospitals - 1,
        "mask_words": count,
        "modulus_bits": modulus.bit_length(),
        "repeats": repeats,
        "seconds": med,
        "samples": seconds,
        "words_over_encrypt": med["words"] / med["encrypt"],
        "masked_over_unmasked_encrypt": med["encrypt_masked"] / med["encrypt"],
    }


def bytes_per_parameter(runs: list[dict[str, Any]], parameters: int) -> float:
    """Upload bytes per contributor and parameter, median over every round of ``runs``."""
    return report.median(
        u["bytes"] / u["contributors"] / parameters
        for run in runs
        for u in run["uploads"]
        if u["contributors"]
    )


def bench_hospitals(
    hospitals: int, base: SimulationConfig, keys: Path, rounds: int, repeats: int
) -> dict[str, Any]:
    config = dataclasses.replace(base, hospitals=hospitals, rounds=rounds)
    cohort = load_cohort(config)
    parameters = parameter_count(config.model, cohort.n_features)
    runs: dict[str, list[dict[str, Any]]] = {MASKED: [], UNMASKED: []}
    for repeat in range(repeats):
        for masking in (True, False) if repeat % 2 == 0 else (False, True):
            name = MASKED if masking else UNMASKED
            print(
                f"masking: {hospitals} hospitals, {name}, repeat {repeat + 1}/{repeats}", flush=True
            )
            run = f"mask-{hospitals}-{name}-{repeat}"
            runs[name].append(
                run_once(config, cohort, keys, encrypted=True, run=run, masking=masking)
            )
    pairs = list(zip(runs[MASKED], runs[UNMASKED], strict=True))
    ratios = [m["median"]["wall"] / u["median"]["wall"] for m, u in pairs]
    # Training time drifts by several percent between identical rounds: this estimate counts
    # only the phases masking can change (crypto, store, messages) over the unmasked wall.
    crypto_ratios = [
        1.0
        + sum(m["median"][k] - u["median"][k] for k in u["median"] if k not in (*TRAINING, "wall"))
        / u["median"]["wall"]
        for m, u in pairs
    ]

    def cpu(run: dict[str, Any]) -> float:
        return report.median(d["cpu"] for d in run["details"])

    def phase(name: str, key: str) -> float:
        return report.median(r[key] for run in runs[name] for r in run["rounds"])

    return {
        "hospitals": hospitals,
        "parameters": parameters,
        "rounds": rounds,
        "repeats": repeats,
        "round_s": {name: phase(name, "wall") for name in runs},
        "train_s": {name: phase(name, "train") for name in runs},
        "cpu_s": {
            name: report.median(d["cpu"] for run in rs for d in run["details"])
            for name, rs in runs.items()
        },
        "encrypt_s": {name: phase(name, "encrypt") for name in runs},
        "mask_words_s": report.median(d["mask"] for run in runs[MASKED] for d in run["details"]),
        "bytes_per_parameter": {
            name: bytes_per_parameter(rs, parameters) for name, rs in runs.items()
        },
        "attempts": sorted({u["attempts"] for run in runs[MASKED] for u in run["uploads"]}),
        "ratio": report.median(ratios),
        "ratios": ratios,
        "crypto_ratio": report.median(crypto_ratios),
        "cpu_ratio": report.median(cpu(m) / cpu(u) for m, u in pairs),
        "cpu_ratios": [cpu(m) / cpu(u) for m, u in pairs],
        "runs": runs,
    }


def _f(value: float, spec: str = ".3f") -> str:
    return report.fmt(value, spec)


def render(cells: list[dict[str, Any]], costs: list[dict[str, Any]], patients: int) -> str:
    data = "full Diabetes-130" if patients <= 0 else f"a sample of {patients} patients"
    ratio_rows = [
        [
            c["hospitals"],
            f"{c['rounds']} x {c['repeats']}",
            f"**{_f(c['ratio'])}**",
            ", ".join(f"{r:.2f}" for r in c["ratios"]),
            f"**{_f(c['cpu_ratio'])}**",
            ", ".join(f"{r:.2f}" for r in c["cpu_ratios"]),
            _f(c["crypto_ratio"]),
            "met" if c["ratio"] <= TARGET else "not met",
        ]
        for c in cells
    ]
    rows = [
        [
            c["hospitals"],
            *(_f(c["round_s"][name]) for name in (MASKED, UNMASKED)),
            *(_f(c["cpu_s"][name]) for name in (MASKED, UNMASKED)),
            _f(c["encrypt_s"][MASKED]),
            _f(c["mask_words_s"]),
            _f(c["encrypt_s"][UNMASKED]),
            *(_f(c["bytes_per_parameter"][name], ".2f") for name in (MASKED, UNMASKED)),
        ]
        for c in cells
    ]
    cost_rows = [
        [
            c["hospitals"],
            c["peers"],
            f"{c['mask_words']:,}",
            c["modulus_bits"],
            *(_f(c["seconds"][k] * 1e3, ".1f") for k in ("words", "encrypt", "encrypt_masked")),
            _f(c["words_over_encrypt"], ".2f"),
            _f(c["masked_over_unmasked_encrypt"], ".2f"),
        ]
        for c in costs
    ]
    params = f"{cells[0]['parameters']:,}" if cells else "-"
    repeats = costs[0]["repeats"] if costs else 0
    return "\n".join(
        [
            f"CKKS (the default HEConfig), the demo's MLP ({params} parameters), {data}, "
            "Dirichlet label skew (alpha 0.5), seed 42. Per hospital count, masked and unmasked "
            "embedded runs alternate (the order flips every repeat); each run keeps the median "
            "of its rounds 2.. (round 1, with Keras tracing, dropped); a ratio is the median over "
            "repeats of (masked / unmasked) in the same repeat. The target "
            f"(masked round <= {TARGET:.2f}x unmasked) is judged on the wall-time ratio. Wall "
            "time swings by 2x between identical rounds when other jobs share the machine; the "
            "process's CPU time per round (every thread) is far steadier, and \"crypto + "
            "messages only\" is 1 + the masked run's extra wall seconds outside training and "
            "evaluation over the unmasked round, which leaves training noise out.",
            "",
            report.md_table(
                [
                    "hospitals",
                    "rounds x repeats",
                    "masked / unmasked (wall)",
                    "per repeat",
                    "masked / unmasked (CPU)",
                    "per repeat",
                    "crypto + messages only",
                    f"target <= {TARGET:.2f}",
                ],
                ratio_rows,
            ),
            "",
            "Medians over every kept round, in seconds. Encrypt adds up all hospitals of a "
            "round (the embedded run is one thread, so a round draws n(n-1) mask streams where "
            'a deployment\'s hospitals draw their n-1 each, in parallel); "mask words" is the '
            "part of it spent drawing masks. Upload is bytes_uploaded / contributors / "
            "parameters: masks are added inside the ciphertexts, so it should not change.",
            "",
            report.md_table(
                [
                    "hospitals",
                    "masked round",
                    "unmasked round",
                    "masked CPU",
                    "unmasked CPU",
                    "encrypt masked",
                    "of which mask words",
                    "encrypt unmasked",
                    "upload B/param masked",
                    "upload B/param unmasked",
                ],
                rows,
            ),
            "",
            "Mask cost for one hospital and one update of the MLP, in milliseconds (median of "
            f"{repeats} rotating repeats): its mask words alone (HKDF and one ChaCha20 stream "
            "per peer), one unmasked encrypt, one masked encrypt (the words plus adding them to "
            "each ciphertext's first polynomial).",
            "",
            report.md_table(
                [
                    "hospitals",
                    "peers",
                    "mask words",
                    "q bits",
                    "mask words (ms)",
                    "encrypt (ms)",
                    "masked encrypt (ms)",
                    "words / encrypt",
                    "masked / unmasked encrypt",
                ],
                cost_rows,
            ),
        ]
    )


def counts(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def main(argv: Sequence[str] | None = None) -> int:
    parser = report.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--hospital-counts", type=counts, default=None, help="e.g. 4,10")
    parser.add_argument("--patients", type=int, default=None, help="sample size; 0 = full data")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--mask-repeats", type=int, default=None)
    args = parser.parse_args(argv)
    plan_counts, rounds, repeats, mask_repeats, patients = QUICK_PLAN if args.quick else FULL_PLAN
    plan_counts = args.hospital_counts or plan_counts
    rounds, repeats = args.rounds or rounds, args.repeats or repeats
    mask_repeats = args.mask_repeats or mask_repeats
    patients = patients if args.patients is None else args.patients
    model = ModelConfig()
    with tempfile.TemporaryDirectory(prefix="hefl-bench-masking-") as tmp:
        root = Path(tmp)
        base = SimulationConfig(dataset=dataset(root, patients), model=model, out=root / "out")
        keys = root / "keys"
        run_key_ceremony(HEConfig(), keys / "hospital", keys / "coordinator")
        cells = [bench_hospitals(n, base, keys, rounds, repeats) for n in plan_counts]
        cipher = open_cipher(keys / "hospital")
        rng = np.random.default_rng(base.seed)
        update = rng.uniform(-1.0, 1.0, payload_size(cells[0]["parameters"]))
        costs = [mask_cost(n, cipher, update, mask_repeats) for n in plan_counts]
    figures = {
        "config": {
            "hospital_counts": list(plan_counts),
            "partition": base.partition,
            "alpha": base.alpha,
            "seed": base.seed,
            "patients": patients,
            "model": model.to_dict(),
            "he": HEConfig().to_dict(),
            "store": "local folder (as the demo)",
            "target": TARGET,
        },
        "cells": cells,
        "mask_cost": costs,
    }
    return report.publish(
        NAME,
        out=args.out,
        mode=report.QUICK if args.quick else report.FULL,
        title=TITLE,
        figures=figures,
        markdown=render(cells, costs, patients),
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
