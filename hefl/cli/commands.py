"""The ``hefl`` subcommands: each one's options class, handler, defaults and required flags.

``COMMANDS`` pairs each typed options class (``hefl.cli.options``, ``hefl.cli.keys``) with the
handler that receives it, fully parsed and validated; handlers import the heavy parts
(TensorFlow, Pyfhel, pika) only when they run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from hefl.cli import keys, local, options, processes, report

Opts = TypeVar("Opts")


@dataclass(frozen=True, kw_only=True)
class Command(Generic[Opts]):
    """A subcommand: its options class, its handler, and per-command defaults and requirements."""

    name: str
    help: str
    options: type[Opts]
    run: Callable[[Opts], int]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()


COMMANDS: tuple[Command[Any], ...] = (
    Command(
        name="simulate",
        help="embedded run: coordinator and hospitals in one process, with baselines",
        options=options.SimulateOptions,
        run=local.simulate,
        defaults={"out": Path("out/demo")},
    ),
    Command(
        name="report",
        help="one self-contained HTML page of a simulate run folder: the results table, AUC "
        "and loss per round, ROC, precision-recall and calibration plots, per-hospital AUC "
        "and data",
        options=options.ReportOptions,
        run=report.report,
        required=("run_dir",),
    ),
    Command(
        name="partition",
        help="split one CSV into per-hospital CSV files",
        options=options.PartitionOptions,
        run=local.partition,
        required=("out",),
    ),
    Command(
        name="keygen",
        help="key ceremony: HE bundles and signing identities",
        options=options.KeygenOptions,
        run=local.keygen,
    ),
    Command(
        name="coordinator",
        help="run the coordinator over RabbitMQ (resumes a run it finds in --state-dir)",
        options=options.CoordinatorOptions,
        run=processes.coordinator,
        defaults={"store": "store"},
    ),
    Command(
        name="hospital",
        help="run one hospital node over RabbitMQ",
        options=options.HospitalOptions,
        run=processes.hospital,
        defaults={"store": "store", "out": Path("out")},
        required=("hospital", "csv"),
    ),
    Command(
        name="hospital-replica",
        help="one replica of a scaled hospital service (containers): its identity from "
        "--hospital, the pod ordinal or a claim, its CSV from --csv or --shards, then hospital",
        options=options.ReplicaOptions,
        run=processes.hospital_replica,
        defaults={"store": "store", "out": Path("out")},
    ),
    Command(
        name="predict",
        help="score a CSV with a hospital's model bundle: each row's risk and whether it is "
        "flagged, as CSV to --out or standard output",
        options=options.PredictOptions,
        run=local.predict,
        required=("model", "csv"),
    ),
    Command(
        name="broker-users",
        help="one RabbitMQ user per participant for a broker you run: a password file each "
        "and definitions.json to import (rabbitmqctl import_definitions); kept when present",
        options=options.BrokerUsersOptions,
        run=local.broker_users,
        required=("out",),
    ),
    Command(
        name="drive-share",
        help="make a run's per-site Drive folders, share each with its hospital's account "
        "(writer on its own updates, reader on the aggregates) and print each site's store URL",
        options=options.DriveShareOptions,
        run=local.drive_share,
        required=("store", "run", "accounts"),
    ),
    Command(
        name="keys-install",
        help="copy one role's share of a key ceremony folder into that role's key folder",
        options=keys.KeysInstallOptions,
        run=keys.keys_install,
        required=("ceremony", "role", "keys"),
    ),
    Command(
        name="keys-cluster",
        help="one-shot ceremony of a compose cluster: every hospital's share into --keys, the "
        "coordinator's into --coordinator-keys; kept when both exist",
        options=keys.KeysClusterOptions,
        run=keys.keys_cluster,
        required=("keys", "coordinator_keys"),
    ),
    Command(
        name="keys-k8s-secrets",
        help="a fresh ceremony printed as Kubernetes Secrets (for kubectl apply -f -): the "
        "coordinator's keys, each site's own keys and broker login, the broker's users; "
        "nothing is written to disk",
        options=keys.KeysSecretsOptions,
        run=keys.keys_k8s_secrets,
    ),
    Command(
        name="keys-unpack",
        help="Kubernetes init container: a mounted key Secret into a role's key folder (a "
        "hospital gets only its own signing key)",
        options=keys.KeysUnpackOptions,
        run=keys.keys_unpack,
        required=("secret_dir", "role", "keys"),
    ),
)
