"""Flags of the distributed commands: ``keygen``, ``coordinator`` and ``hospital``.

Every flag has an environment variable (shown in ``--help``), so containers are configured by
environment alone.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from common.errors import ConfigError
from hefl.flags import add_model_flags, model_from_args, positive_float, positive_int

ENV = {
    "keys": "HEFL_KEYS",
    "store": "HEFL_STORE",
    "broker": "HEFL_BROKER_URL",
    "run": "HEFL_RUN",
    "name": "HEFL_HOSPITAL",
    "csv": "HEFL_CSV",
}


def _env(key: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV[key], default)


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", default=_env("run", "run-1"), help="run id ($HEFL_RUN)")
    parser.add_argument(
        "--keys",
        type=Path,
        default=_env("keys", "keys"),
        help="key ceremony folder ($HEFL_KEYS; default %(default)s)",
    )
    parser.add_argument(
        "--store",
        default=_env("store", "store"),
        help="store URL: folder, file:///path or gdrive://ID ($HEFL_STORE)",
    )
    parser.add_argument(
        "--broker",
        default=_env("broker", "amqp://guest:guest@localhost:5672/%2F"),
        help="RabbitMQ URL, amqp:// or amqps:// ($HEFL_BROKER_URL)",
    )
    parser.add_argument(
        "--prefix",
        default=os.environ.get("HEFL_PREFIX", "hefl"),
        help="exchange and queue name prefix ($HEFL_PREFIX)",
    )
    parser.add_argument("--rounds", type=positive_int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--schema", default=os.environ.get("HEFL_SCHEMA", "diabetes130"))
    add_model_flags(parser)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keygen = sub.add_parser("keygen", help="key ceremony: HE bundles and signing identities")
    keygen.add_argument("--out", type=Path, required=True, help="folder for all key material")
    keygen.add_argument(
        "--hospitals",
        type=positive_int,
        default=4,
        help="number of hospital identities (hospital-1 ... hospital-N)",
    )
    keygen.add_argument("--scheme", choices=("ckks", "bfv"), default="ckks")
    keygen.add_argument(
        "--max-hospitals",
        type=positive_int,
        default=None,
        help="most updates one aggregate may sum (default 100)",
    )
    keygen.add_argument("--overwrite", action="store_true")

    coord = sub.add_parser("coordinator", help="run the coordinator over RabbitMQ (resumes)")
    _add_run_flags(coord)
    coord.add_argument("--hospitals", help="comma-separated hospital names (default: all in trust)")
    coord.add_argument(
        "--min-hospitals",
        type=positive_int,
        default=None,
        help="quorum to close a round at its deadline (default: all)",
    )
    coord.add_argument(
        "--expect-hospitals",
        type=positive_int,
        default=None,
        help="round 1 waits for this many hospitals before closing early; later rounds wait "
        "for the hospitals present (default: all)",
    )
    coord.add_argument(
        "--round-timeout",
        type=positive_float,
        default=600.0,
        help="seconds a round stays open (default %(default)s)",
    )
    coord.add_argument(
        "--final-timeout",
        type=positive_float,
        default=120.0,
        help="seconds to wait for final reports (default %(default)s)",
    )

    hosp = sub.add_parser("hospital", help="run one hospital node over RabbitMQ")
    _add_run_flags(hosp)
    hosp.add_argument("--name", default=_env("name"), help="hospital identity ($HEFL_HOSPITAL)")
    hosp.add_argument(
        "--csv", type=Path, default=_env("csv"), help="this hospital's CSV ($HEFL_CSV)"
    )
    hosp.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the final model goes to OUT/<name>/final_model.keras (default: out)",
    )


def run_command(args: argparse.Namespace) -> int:
    from common.crypto import HEConfig
    from hefl import deploy
    from hefl.deploy import Endpoints, RunSettings

    if args.command == "keygen":
        he = HEConfig.from_dict(
            {"scheme": args.scheme}
            | ({"max_hospitals": args.max_hospitals} if args.max_hospitals else {})
        )
        names = [f"hospital-{i}" for i in range(1, args.hospitals + 1)]
        layout = deploy.key_ceremony(args.out, he, names, overwrite=args.overwrite)
        print(f"hospitals' HE bundle (secret key; hospitals only): {layout.he_hospital}")
        print(f"coordinator's HE bundle (public material only): {layout.he_coordinator}")
        print(f"signing identities and trust.json: {layout.trust.parent}")
        return 0
    settings = RunSettings(
        run=args.run,
        rounds=args.rounds,
        seed=args.seed,
        schema=args.schema,
        model=model_from_args(args),
    )
    endpoints = Endpoints(keys=args.keys, store=args.store, broker=args.broker, prefix=args.prefix)
    if args.command == "coordinator":
        hospitals = tuple(h for h in (args.hospitals or "").split(",") if h) or None
        return deploy.run_coordinator(
            settings,
            endpoints,
            hospitals=hospitals,
            min_hospitals=args.min_hospitals,
            expect_hospitals=args.expect_hospitals,
            round_timeout=args.round_timeout,
            final_timeout=args.final_timeout,
        )
    if not args.name or args.csv is None:
        raise ConfigError("hospital needs --name ($HEFL_HOSPITAL) and --csv ($HEFL_CSV)")
    out = args.out or Path("out")
    return deploy.run_hospital(settings, endpoints, name=args.name, csv=args.csv, out=out)
