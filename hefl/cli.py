"""The ``hefl`` command: key ceremony, partitioning, and the embedded simulation.

Flags are parsed and validated here, once; everything below receives typed config values.
Errors of this project become one ``error: ...`` line and the error's exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from common.errors import ConfigError, HeflError
from common.logs import configure
from common.store.url import STORE_ENV
from hefl.deploy_cli import add_commands, run_command
from hefl.flags import add_model_flags, model_from_args, positive_int

DEFAULT_CSV = Path("../shared/data/diabetes130/diabetic_data.csv.gz")


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--csv",
        type=Path,
        default=Path(os.environ.get("HEFL_CSV", DEFAULT_CSV)),
        help="dataset CSV (.csv or .csv.gz); default $HEFL_CSV or %(default)s",
    )
    parser.add_argument(
        "--schema",
        default="diabetes130",
        help="bundled schema name (diabetes130, johns_hospital) or a YAML path",
    )
    parser.add_argument("--hospitals", type=positive_int, default=4)
    parser.add_argument(
        "--partition",
        choices=("dirichlet", "iid", "column"),
        default="dirichlet",
        help="how to split the CSV into hospitals (default: Dirichlet label skew)",
    )
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="Dirichlet concentration; smaller is more skewed"
    )
    parser.add_argument(
        "--column", help="column whose values make natural silos (--partition column)"
    )
    parser.add_argument("--seed", type=int, default=42)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hefl", description="Federated learning for hospitals with encrypted model updates."
    )
    parser.add_argument("--log-level", default=os.environ.get("HEFL_LOG_LEVEL", "WARNING"))
    sub = parser.add_subparsers(dest="command", required=True)

    add_commands(sub)

    part = sub.add_parser("partition", help="split one CSV into per-hospital CSV files")
    _add_data_flags(part)
    part.add_argument("--out", type=Path, required=True)

    sim = sub.add_parser("simulate", help="embedded run: coordinator and hospitals in one process")
    _add_data_flags(sim)
    sim.add_argument("--rounds", type=positive_int, default=10)
    sim.add_argument("--scheme", choices=("ckks", "bfv"), default="ckks")
    add_model_flags(sim)
    sim.add_argument("--min-hospitals", type=positive_int, default=None)
    sim.add_argument(
        "--no-baselines",
        action="store_true",
        help="only the encrypted run (skip plaintext, local-only and centralized)",
    )
    sim.add_argument(
        "--engine",
        choices=("hefl", "tff"),
        default="hefl",
        help="hefl: our encrypted FedAvg and baselines; tff: TensorFlow Federated's plaintext "
        "FedAvg as a reference, run in .venv-tff (make tff-env)",
    )
    sim.add_argument("--out", type=Path, default=Path("out/demo"))
    sim.add_argument(
        "--store",
        default=os.environ.get(STORE_ENV) or None,
        help=(
            "store URL: a folder, file:///path or gdrive://FOLDER_ID (credentials from "
            "$HEFL_GDRIVE_CREDENTIALS); default $HEFL_STORE, else a folder under --out"
        ),
    )
    return parser


def _he_config(scheme: str, max_hospitals: int | None) -> object:
    from common.crypto import HEConfig

    kwargs: dict[str, object] = {"scheme": scheme}
    if max_hospitals is not None:
        kwargs["max_hospitals"] = max_hospitals
    return HEConfig.from_dict(kwargs)


def _run(args: argparse.Namespace) -> int:
    if args.command in ("keygen", "coordinator", "hospital"):
        return run_command(args)
    if args.command == "partition":
        from common.data import load_schema, write_partitions

        paths = write_partitions(
            args.csv,
            load_schema(args.schema),
            args.out,
            args.hospitals,
            method=args.partition,
            alpha=args.alpha,
            column=args.column,
            seed=args.seed,
        )
        for path in paths:
            print(path)
        return 0
    if args.command == "simulate":
        from hefl.compare import run_comparison
        from hefl.simulation import SimulationConfig

        if args.min_hospitals is not None and args.min_hospitals > args.hospitals:
            raise ConfigError(
                f"--min-hospitals {args.min_hospitals} > --hospitals {args.hospitals}"
            )
        config = SimulationConfig(
            csv=args.csv,
            schema=args.schema,
            hospitals=args.hospitals,
            partition=args.partition,
            alpha=args.alpha,
            column=args.column,
            rounds=args.rounds,
            seed=args.seed,
            min_hospitals=args.min_hospitals,
            model=model_from_args(args),
            he=_he_config(args.scheme, max(args.hospitals, 100)),  # type: ignore[arg-type]
            out=args.out,
            store=args.store,
        )
        if args.engine == "tff":
            from hefl.tff import run_tff_engine

            run_tff_engine(config, emit=lambda line: print(line, flush=True))
            return 0
        run_comparison(
            config, emit=lambda line: print(line, flush=True), baselines=not args.no_baselines
        )
        return 0
    raise ConfigError(f"unknown command {args.command}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure(args.log_level)
    try:
        return _run(args)
    except HeflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
