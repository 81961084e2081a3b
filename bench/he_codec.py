"""HE codec: upload size, throughput and error of our encodings against the anchors, side by side.

For each model size, in one process and in turn (the order rotates every repeat): our CKKS
default (seeded uploads), our CKKS as it was before seeding (56-bit prime, public-key
encryption, full ciphertexts: the baseline of "throughput not below today's"), our BFV, TenSEAL
CKKS as NVIDIA FLARE configures it (n=8192, moduli [60, 40, 40], scale 2**40, one ckks_vector
per layer), Pyfhel CKKS with one real per slot and no level switch (the same chain), and
plaintext float32. Per repeat and codec: two hospitals encrypt+serialize, the coordinator
deserializes+adds both (the second add is "per hospital"), serializes the sum, and a hospital
deserializes+decrypts it. Ratios against TenSEAL are taken per repeat, then the median. The
maximum absolute error after 10 and 100 sums of values uniform in [-1, 1] is measured on the
whole vector up to ``--error-values`` values, and on its first ``--error-values`` beyond that.

    .venv/bin/python -m bench.he_codec [--quick] [--sizes 10000,1000000] [--repeats 5]

Writes bench/results/he_codec.{json,md}.
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import report
from bench.anchors import (
    PYFHEL_PLAIN,
    TENSEAL_FLARE,
    PyfhelKeys,
    PyfhelPlainCodec,
    TensealFlareCodec,
    TensealKeys,
)
from bench.schemes import (
    FLOAT32,
    FULL_CKKS,
    OURS_BFV,
    OURS_CKKS,
    OURS_CKKS_FULL,
    Codec,
    Float32Codec,
    HeflCodec,
    mlp_layers,
)
from common.crypto import BFV, HEConfig

NAME = "he_codec"
TITLE = "HE codec: upload bytes, throughput and error (ours against TenSEAL/FLARE and others)"
QUICK_SIZES = (10_000, 0, 100_000)  # 0 stands for the Diabetes-130 MLP
FULL_SIZES = (10_000, 0, 1_000_000, 10_000_000)
QUICK_REPEATS, FULL_REPEATS = 3, 5
#: Sizes at or above this get at most LARGE_REPEATS repeats (10M parameters is minutes per codec).
LARGE_SIZE, LARGE_REPEATS = 5_000_000, 2
ERROR_VALUES = 32_768
SUMS = (10, 100)
SEED = 20261129
#: Any blob kind but an update is encrypted with the public key into full ciphertexts.
FULL_KIND = "full-update"


def diabetes_layers() -> tuple[int, ...]:
    """The demo's MLP (Dense 128 -> Dense 1) over Diabetes-130's encoded features."""
    from common.data import FeatureEncoder, load_schema
    from common.model import ModelConfig, weight_shapes

    n_features = FeatureEncoder(load_schema("diabetes130")).n_features
    return tuple(int(np.prod(s)) for s in weight_shapes(ModelConfig(), n_features))


def uniform(rng: np.random.Generator, n: int) -> np.ndarray:
    """Values uniform in [-1, 1] that float32 represents exactly (so every codec gets the same)."""
    return rng.uniform(-1.0, 1.0, n).astype(np.float32).astype(np.float64)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def measure_once(codec: Codec, x1: np.ndarray, x2: np.ndarray) -> dict[str, float]:
    """Two hospitals' uploads through one coordinator sum and one decryption."""
    blob1, enc1 = timed(lambda: codec.encrypt(x1))
    blob2, enc2 = timed(lambda: codec.encrypt(x2))
    total = codec.new_sum()
    _, first_add = timed(lambda: total.add(blob1))
    _, add = timed(lambda: total.add(blob2))
    aggregate, to_blob = timed(total.to_blob)
    decrypted, decrypt = timed(lambda: codec.decrypt(aggregate))
    return {
        "bytes": float(len(blob1)),
        "encrypt_s": (enc1 + enc2) / 2,
        "first_add_s": first_add,
        "add_s": add,
        "to_blob_s": to_blob,
        "decrypt_s": decrypt,
        "pair_error": float(np.max(np.abs(decrypted - (x1 + x2)))),
    }


def sum_errors(codec: Codec, n: int, rng: np.random.Generator) -> dict[str, float]:
    """Max |decrypted - exact| after each count in SUMS of fresh uploads (exact in float64)."""
    total, exact, errors = codec.new_sum(), np.zeros(n), {}
    for k in range(1, max(SUMS) + 1):
        values = uniform(rng, n)
        total.add(codec.encrypt(values))
        exact += values
        if k in SUMS:
            errors[str(k)] = float(np.max(np.abs(codec.decrypt(total.to_blob()) - exact)))
    return errors


def bench_size(
    parameters: int,
    layers: Sequence[int],
    make: Callable[[Sequence[int]], list[Codec]],
    repeats: int,
    error_values: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    codecs = make(layers)
    samples: dict[str, list[dict[str, float]]] = {c.label: [] for c in codecs}
    for repeat in range(repeats):
        x1, x2 = uniform(rng, parameters), uniform(rng, parameters)
        shift = repeat % len(codecs)
        for codec in codecs[shift:] + codecs[:shift]:
            samples[codec.label].append(measure_once(codec, x1, x2))
            gc.collect()
    n_err = min(parameters, error_values)
    err_codecs = codecs if n_err == parameters else make((n_err,))
    errors = {c.label: sum_errors(c, n_err, rng) for c in err_codecs}
    figures: dict[str, Any] = {}
    for label, rows in samples.items():
        figures[label] = {
            "bytes": rows[0]["bytes"],
            "bytes_per_parameter": rows[0]["bytes"] / parameters,
            "encrypt_params_per_s": report.median(parameters / r["encrypt_s"] for r in rows),
            "add_params_per_s": report.median(parameters / r["add_s"] for r in rows),
            "decrypt_params_per_s": report.median(parameters / r["decrypt_s"] for r in rows),
            "sum_serialize_s": report.median(r["to_blob_s"] for r in rows),
            "pair_error": max(r["pair_error"] for r in rows),
            "max_abs_error": errors[label],
            "samples": rows,
        }
    base = samples[TENSEAL_FLARE]
    ratios = {
        label: {
            "encrypt": report.median(
                b["encrypt_s"] / r["encrypt_s"] for r, b in zip(rows, base, strict=True)
            ),
            "add": report.median(b["add_s"] / r["add_s"] for r, b in zip(rows, base, strict=True)),
            "decrypt": report.median(
                b["decrypt_s"] / r["decrypt_s"] for r, b in zip(rows, base, strict=True)
            ),
            "upload_smaller": base[0]["bytes"] / rows[0]["bytes"],
        }
        for label, rows in samples.items()
    }
    return {
        "parameters": parameters,
        "layers": list(layers),
        "repeats": repeats,
        "error_values": n_err,
        "codecs": figures,
        "vs_tenseal": ratios,
    }


def render(sizes: list[dict[str, Any]]) -> str:
    parts = [
        'Throughput in parameters per second (median over repeats); "x TenSEAL" is the median '
        'of per-repeat ratios (higher is better for throughput, and for "smaller"). '
        "Error: max |decrypted - exact| after 10 and 100 sums of values uniform in [-1, 1].",
        "",
    ]
    for entry in sizes:
        p, layers = entry["parameters"], entry["layers"]
        shown = ", ".join(f"{n:,}" for n in layers) if len(layers) <= 4 else "..."
        parts += [
            f"### {p:,} parameters (layers {shown}"
            f"; {entry['repeats']} repeats; error on {entry['error_values']:,} values)",
            "",
        ]
        rows = []
        for label, f in entry["codecs"].items():
            r = entry["vs_tenseal"][label]
            rows.append(
                [
                    label,
                    report.fmt(f["bytes_per_parameter"], ".2f"),
                    report.fmt(r["upload_smaller"], ".2f"),
                    report.fmt(f["encrypt_params_per_s"], ".3g"),
                    report.fmt(r["encrypt"], ".2f"),
                    report.fmt(f["add_params_per_s"], ".3g"),
                    report.fmt(r["add"], ".2f"),
                    report.fmt(f["decrypt_params_per_s"], ".3g"),
                    report.fmt(r["decrypt"], ".2f"),
                    report.fmt(f["max_abs_error"]["10"], ".2e"),
                    report.fmt(f["max_abs_error"]["100"], ".2e"),
                ]
            )
        headers = [
            "codec",
            "bytes/param",
            "x smaller than TenSEAL",
            "encrypt+serialize /s",
            "x TenSEAL",
            "deserialize+add /s per hospital",
            "x TenSEAL",
            "decrypt /s",
            "x TenSEAL",
            "err 10 sums",
            "err 100 sums",
        ]
        parts += [report.md_table(headers, rows), ""]
    return "\n".join(parts)


def parse_sizes(text: str) -> list[int]:
    return [int(s) for s in text.replace("_", "").split(",") if s.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = report.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=parse_sizes, help="parameter counts; 0 = Diabetes MLP")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--error-values", type=int, default=ERROR_VALUES)
    args = parser.parse_args(argv)
    mode = report.QUICK if args.quick else report.FULL
    sizes = args.sizes or list(QUICK_SIZES if args.quick else FULL_SIZES)
    repeats = args.repeats or (QUICK_REPEATS if args.quick else FULL_REPEATS)
    rng = np.random.default_rng(SEED)
    diabetes = diabetes_layers()
    with tempfile.TemporaryDirectory(prefix="hefl-bench-codec-") as tmp:
        ckks = HeflCodec(OURS_CKKS, HEConfig(), Path(tmp) / "ckks")
        full = HeflCodec(OURS_CKKS_FULL, FULL_CKKS, Path(tmp) / "full", kind=FULL_KIND)
        bfv = HeflCodec(OURS_BFV, HEConfig(scheme=BFV), Path(tmp) / "bfv")
        tenseal_keys, pyfhel_keys = TensealKeys(), PyfhelKeys()

        def make(layers: Sequence[int]) -> list[Codec]:
            return [
                ckks,
                full,
                bfv,
                TensealFlareCodec(tenseal_keys, layers),
                PyfhelPlainCodec(pyfhel_keys, layers),
                Float32Codec(),
            ]

        results = []
        for size in sizes:
            layers = diabetes if size == 0 else mlp_layers(size)
            count = sum(layers)
            reps = min(repeats, LARGE_REPEATS) if count >= LARGE_SIZE else repeats
            print(f"he_codec: {count:,} parameters, {reps} repeats", flush=True)
            results.append(bench_size(count, layers, make, reps, args.error_values, rng))
    figures = {
        "config": {
            "sizes": [r["parameters"] for r in results],
            "error_values": args.error_values,
            "sums": list(SUMS),
            "codecs": [OURS_CKKS, OURS_CKKS_FULL, OURS_BFV, TENSEAL_FLARE, PYFHEL_PLAIN, FLOAT32],
            "ours_ckks": ckks.config.to_dict(),
            "ours_ckks_full": full.config.to_dict(),
            "ours_bfv": bfv.config.to_dict(),
            "diabetes_layers": list(diabetes),
        },
        "sizes": results,
    }
    return report.publish(
        NAME,
        out=args.out,
        mode=mode,
        title=TITLE,
        figures=figures,
        markdown=render(results),
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
