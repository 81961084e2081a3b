"""The issue's targets, checked against the benchmarks' JSON results.

Every row says the target, the measured value(s), whether it is met, and, where it is not, what
limits it (derived from the same results, so the explanation cannot drift from the figures).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.anchors import TENSEAL_FLARE
from bench.schemes import OURS_CKKS
from bench.timing import crypto_ratio

Results = dict[str, dict[str, Any]]

#: CKKS ciphertext at n=4096 after the level switch: 2 polynomials x 4096 coefficients x 7 bytes
#: for 4096 values.
CKKS_SLOTS = 4096
CKKS_BYTES_PER_SLOT = 14


@dataclass(frozen=True)
class Target:
    target: str
    measured: str
    met: str
    limit: str = ""


def _sizes(results: Results) -> list[dict[str, Any]]:
    return results.get("he_codec", {}).get("sizes", [])


def _per_size(
    results: Results, value: Callable[[dict[str, Any]], float], spec: str
) -> list[tuple[int, float, str]]:
    return [(s["parameters"], value(s), format(value(s), spec)) for s in _sizes(results)]


def _verdict(items: list[tuple[int, float, str]], ok: Callable[[float], bool]) -> tuple[str, str]:
    measured = "; ".join(f"{p:,}: {text}" for p, _, text in items)
    failed = [p for p, v, _ in items if not (math.isfinite(v) and ok(v))]
    if not items:
        return "not measured", "-"
    if not failed:
        return measured, "yes"
    return measured, "no at " + ", ".join(f"{p:,}" for p in failed)


def upload_size(results: Results) -> list[Target]:
    items = _per_size(results, lambda s: s["codecs"][OURS_CKKS]["bytes_per_parameter"], ".2f")
    measured, met = _verdict(items, lambda v: v <= 16)
    limit = ""
    if met.startswith("no"):
        notes = []
        for p, v, _ in items:
            if v > 16:
                chunks = math.ceil(p / CKKS_SLOTS)
                notes.append(
                    f"{p:,} values fill {chunks} ciphertexts of {CKKS_SLOTS:,} "
                    f"({chunks * CKKS_SLOTS - p:,} padded slots): {CKKS_BYTES_PER_SLOT} bytes per "
                    f"slot is {CKKS_BYTES_PER_SLOT * chunks * CKKS_SLOTS / p:.2f} per parameter"
                )
        limit = (
            "padding of the last ciphertext: "
            + "; ".join(notes)
            + " (plus the blob header). 14 bytes per value (two "
            "56-bit polynomials, 7 bytes per coefficient, two reals per slot) is the floor at "
            "n=4096; small models pay for the unused slots of their last ciphertext."
        )
    rows = [Target("Upload <= 16 bytes per parameter (ours CKKS)", measured, met, limit)]
    items = _per_size(results, lambda s: s["vs_tenseal"][OURS_CKKS]["upload_smaller"], ".2f")
    measured, met = _verdict(items, lambda v: v >= 3.5)
    limit = ""
    if met.startswith("no"):
        largest = max(_sizes(results), key=lambda s: s["parameters"])
        theirs = largest["codecs"][TENSEAL_FLARE]["bytes_per_parameter"]
        ours = largest["codecs"][OURS_CKKS]["bytes_per_parameter"]
        limit = (
            f"at {largest['parameters']:,} parameters TenSEAL/FLARE needs {theirs:.1f} bytes per "
            f"value against our {ours:.1f}; where the ratio is lower, padding (of our last "
            "ciphertext, or the lack of it in TenSEAL's per-layer vectors) decides it."
        )
    rows.append(Target("Upload >= 3.5x smaller than TenSEAL/FLARE", measured, met, limit))
    return rows


def throughput(results: Results) -> list[Target]:
    rows = []
    for key, name, goal in (
        ("encrypt", "Client encrypt+serialize >= 1.5x TenSEAL", 1.5),
        ("add", "Coordinator deserialize+add per hospital >= 3x TenSEAL", 3.0),
    ):
        ratios = [(s["parameters"], s["vs_tenseal"][OURS_CKKS][key]) for s in _sizes(results)]
        items = [(p, v, f"{v:.2f}") for p, v in ratios]
        measured, met = _verdict(items, functools.partial(operator.le, goal))  # goal <= v
        limit = ""
        if met.startswith("no"):
            limit = LIMITS[key]
        rows.append(Target(name, measured, met, limit))
    scaling = results.get("coordinator_scaling", {}).get("cells", [])
    big = [c for c in scaling if c["codec"] == "ours CKKS" and c["speedup_vs_tenseal"]]
    if big:
        top = max(c["hospitals"] for c in big)
        items = [
            (c["parameters"], c["speedup_vs_tenseal"], f"{c['speedup_vs_tenseal']:.2f}")
            for c in big
            if c["hospitals"] == top
        ]
        measured, met = _verdict(items, lambda v: v >= 3.0)
        rows.append(
            Target(
                f"Coordinator aggregation of {top} hospitals >= 3x TenSEAL (wall time)",
                measured,
                met,
                LIMITS["add"] if met.startswith("no") else "",
            )
        )
    return rows


LIMITS = {
    "encrypt": (
        "per value, our public-key encryption at n=4096 plus the complex packing, the level "
        "switch and trimming SEAL's serialized bytes, all driven from Python per ciphertext, "
        "against TenSEAL's symmetric encryption at n=8192 and zstd serialization in C++."
    ),
    "add": (
        "per ciphertext, our own check of every coefficient and the re-expansion to SEAL's layout "
        "before SEAL loads (and checks) it again; the addition itself is SEAL's in both."
    ),
}


def round_overhead(results: Results) -> list[Target]:
    models = results.get("round_overhead", {}).get("models", [])
    if not models:
        return [Target("Round overhead <= 1.15x plaintext (Diabetes-130 MLP)", "not measured", "-")]
    rows = []
    for m in models:
        ratio = m["ratio"]
        enc = m["phases"]["encrypted (CKKS)"]
        plain = m["phases"]["plaintext"]
        met = "yes" if ratio <= 1.15 else "no"
        limit = ""
        if met == "no":
            extra = {
                p: enc[p] - plain[p]
                for p in ("encrypt", "decrypt", "aggregate", "upload", "download")
            }
            worst = sorted(extra.items(), key=lambda kv: -kv[1])[:3]
            limit = "extra seconds per round in " + ", ".join(f"{k} {v:.2f}" for k, v in worst)
        target = "Round overhead <= 1.15x plaintext" + (
            " (Diabetes-130 MLP)" if m["model"] == "mlp" else f" ({m['label']}; reported only)"
        )
        if m["model"] != "mlp":
            met = f"{met} (no target)"
        spread = ", ".join(f"{r:.3f}" for r in m["ratios"])
        measured = (
            f"{ratio:.3f}x (median of {len(m['ratios'])} repeat(s): {spread}; crypto phases "
            f"only: {crypto_ratio(enc, plain):.3f}x)"
        )
        rows.append(Target(target, measured, met, limit))
    return rows


def coordinator_rss(results: Results) -> list[Target]:
    cells = results.get("coordinator_scaling", {}).get("cells", [])
    ours = [c for c in cells if c["codec"] == "ours CKKS"]
    if not ours:
        return [Target("Coordinator peak RSS at 200 hospitals <= 1.2x at 10", "not measured", "-")]
    top, low = max(c["hospitals"] for c in ours), min(c["hospitals"] for c in ours)
    items = [
        (c["parameters"], c["rss_vs_smallest"], f"{c['rss_vs_smallest']:.3f}")
        for c in ours
        if c["hospitals"] == top
    ]
    measured, met = _verdict(items, lambda v: v <= 1.2)
    limit = ""
    if met.startswith("no"):
        limit = (
            "the process's peak grows with hospitals: something holds submissions beyond their "
            "addition (see RSS before adds against peak in the scaling table)"
        )
    return [
        Target(f"Coordinator peak RSS at {top} hospitals <= 1.2x at {low}", measured, met, limit)
    ]


def ckks_error(results: Results) -> list[Target]:
    items = _per_size(results, lambda s: s["codecs"][OURS_CKKS]["max_abs_error"]["100"], ".2e")
    measured, met = _verdict(items, lambda v: v <= 1e-6)
    limit = ""
    if met.startswith("no"):
        limit = "CKKS encryption noise grows with every summand at scale 2**40"
    return [Target("CKKS max abs error <= 1e-6 after 100 sums", measured, met, limit)]


def quality(results: Results) -> list[Target]:
    cells = results.get("model_quality", {}).get("cells", [])
    if not cells:
        return [Target("Encrypted AUC = plaintext within 0.001", "not measured", "-")]
    items = [
        (0, c["auc_difference"], f"{c['hospitals']} {c['partition']}: {c['auc_difference']:.1e}")
        for c in cells
    ]
    measured = "; ".join(text for _, _, text in items)
    met = "yes" if all(v <= 1e-3 for _, v, _ in items) else "no"
    limit = ""
    if met != "yes":
        limit = (
            "CKKS noise (about 1e-8 per weight per round) changes float32 training slightly; "
            "see the max weight difference per cell"
        )
    return [
        Target("Encrypted FedAvg AUC = plaintext within 0.001, every cell", measured, met, limit)
    ]


def evaluate(results: Results) -> list[Target]:
    rows: list[Target] = []
    for check in (upload_size, throughput, round_overhead, coordinator_rss, ckks_error, quality):
        rows.extend(check(results))
    return rows
