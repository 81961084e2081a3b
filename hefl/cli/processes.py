"""Handlers of the distributed processes: ``coordinator``, ``hospital``, ``hospital-replica``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from common.errors import ConfigError, DataError
from common.logs import format_event
from common.transport.names import COORDINATOR
from common.transport.settings import read_password_file, with_password
from hefl.cli.options import CoordinatorOptions, HospitalOptions, ReplicaOptions, RunOptions


def _run_settings(options: RunOptions, identity: str, test_fraction: float | None = None) -> Any:
    from hefl.deploy import Endpoints, RunSettings

    extra = {} if test_fraction is None else {"test_fraction": test_fraction}
    settings = RunSettings(
        run=options.run,
        rounds=options.rounds,
        seed=options.seed,
        schema=options.schema,
        model=options.model(),
        masking=not options.no_masking,
        **extra,
    )
    ca = {} if options.broker_ca is None else {"broker_ca": _readable(options.broker_ca)}
    endpoints = Endpoints(
        keys=options.keys,
        store=options.store,
        broker=_broker_url(options, identity),
        prefix=options.prefix,
        http_host=options.http_host,
        http_port=options.http_port,
        **ca,
    )
    return settings, endpoints


def _broker_url(options: RunOptions, identity: str) -> str:
    """The broker URL with the password from ``--broker-password-file``: a file, or a folder of
    one file per participant (a replica learns its identity only when it starts). A URL that
    names no user gets the participant's identity, its broker user's name."""
    path = options.broker_password_file
    if path is None:
        return options.broker
    if path.is_dir():
        path = path / identity
    return with_password(options.broker, read_password_file(path), user=identity)


def _readable(path: Path) -> Path:
    if not path.is_file():
        raise ConfigError(f"no broker CA certificate at {path} (--broker-ca, $HEFL_BROKER_CA)")
    return path


def coordinator(options: CoordinatorOptions) -> int:
    from hefl import deploy

    settings, endpoints = _run_settings(options, COORDINATOR)
    return deploy.run_coordinator(
        settings,
        endpoints,
        participants=options.participants or None,
        min_hospitals=options.min_hospitals,
        expect_hospitals=options.expect_hospitals,
        round_timeout=options.round_timeout,
        final_timeout=options.final_timeout,
        mask_timeout=options.mask_timeout,
        state_dir=options.state_dir,
        keep_updates=options.keep_updates,
        http_linger=options.http_linger,
        patience=options.patience,
        min_delta=options.min_delta,
    )


def hospital(options: HospitalOptions) -> int:
    from common.fedavg import Sanity
    from hefl import deploy

    settings, endpoints = _run_settings(options, options.hospital, options.test_fraction)
    return deploy.run_hospital(
        settings,
        endpoints,
        name=options.hospital,
        csv=options.csv,
        out=options.out,
        sanity=Sanity(max_rows=options.max_rows, max_update_ratio=options.max_update_ratio),
        top_fraction=options.top_fraction,
    )


def hospital_replica(options: ReplicaOptions) -> int:
    from hefl.identity import hospital_identity, this_host
    from hefl.keylayout import KeyLayout

    with hospital_identity(
        hospital=options.hospital,
        mode=options.identity,
        claims=options.claims,
        claim_ttl=options.claim_ttl,
        issued=KeyLayout(options.keys).hospitals,
        hostname=this_host(),
    ) as name:
        csv = options.csv or (options.shards / f"{name}.csv" if options.shards else None)
        if csv is None:
            raise ConfigError("name the CSV: --csv FILE, or --shards DIR holding <hospital>.csv")
        if not csv.is_file():
            raise DataError(f"no CSV for {name} (a shard of hefl partition?)", file=str(csv))
        # `make status` and the container test read this line from the replica's log.
        how = "named" if options.hospital else options.identity
        line = format_event("event=identity_claimed", hospital=name, how=how, csv=csv)
        print(line, file=sys.stderr, flush=True)
        fields = {f: getattr(options, f) for f in HospitalOptions.__dataclass_fields__}
        return hospital(HospitalOptions(**{**fields, "hospital": name, "csv": csv}))
