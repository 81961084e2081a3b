"""Every flag of the ``hefl`` command, with its environment variable, in one table.

A flag has one meaning in every subcommand that takes it, and one environment variable
(``HEFL_<NAME>``), so containers are configured by environment alone and ``docs/configuration.md``
lists each setting once. A subcommand picks flags from this table by name (``hefl.cli.commands``);
it may give a flag its own default, never its own meaning. ``hefl.cli.parser`` turns the table
into argparse flags whose defaults come from the environment.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from common.clinical import DEFAULT_TOP_FRACTION
from common.crypto.config import CKKS_PRIME_BITS, DEFAULT_CKKS_PRIME_BITS, DEFAULT_MAX_HOSPITALS
from common.crypto.masking import DEFAULT_MASK_TIMEOUT
from common.data.partition import DEFAULT_ALPHA, DEFAULT_TEST_FRACTION
from common.data.sources import DEFAULT_DATASET
from common.fedavg import DEFAULT_SANITY
from common.model import ModelConfig
from common.observe.http import DEFAULT_HOST as DEFAULT_HTTP_HOST
from common.server_optimizer import (
    DEFAULT_SERVER_BETA_1,
    DEFAULT_SERVER_BETA_2,
    DEFAULT_SERVER_EPSILON,
    DEFAULT_SERVER_LEARNING_RATES,
    DEFAULT_SERVER_MOMENTUM,
    DEFAULT_SERVER_OPTIMIZER,
    SERVER_OPTIMIZERS,
)
from common.store.url import STORE_ENV
from common.transport.settings import BROKER_URL_ENV, DEFAULT_BROKER_URL, DEFAULT_PREFIX
from hefl.cli.types import (
    decay,
    fraction,
    names,
    non_negative_float,
    non_negative_int,
    port,
    positive_float,
    positive_int,
    run_id,
    units,
)

#: Simulated hospitals, shards and issued identities when ``--hospitals`` is not given.
DEFAULT_HOSPITALS: Final = 4
DEFAULT_ROUNDS: Final = 10
#: Early stopping's patience when ``--patience`` is not given (0: off).
DEFAULT_PATIENCE: Final = 0
DEFAULT_SEED: Final = 42
DEFAULT_SCHEMA: Final = "diabetes130"
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
KEY_ROLES: Final = ("coordinator", "hospital", "hospitals")  # hefl.keylayout.ROLES
IDENTITY_MODES: Final = ("claim", "ordinal")  # hefl.identity.MODES
DEFAULT_CLAIM_TTL: Final = 90.0


@dataclass(frozen=True, kw_only=True)
class Flag:
    """One command-line flag: its meaning (help), type, default and environment variable."""

    name: str  # the attribute name; the flag is --name-with-dashes
    help: str
    type: Callable[[str], Any] = str
    default: Any = None
    choices: tuple[Any, ...] | None = None
    switch: bool = False  # a boolean flag without a value (its variable: 1/true/yes)
    positional: bool = False  # an argument without a dash: NAME, not --name
    env: str | None = None  # HEFL_<NAME> unless named here

    @property
    def option(self) -> str:
        return self.name.upper() if self.positional else "--" + self.name.replace("_", "-")

    @property
    def variable(self) -> str:
        return self.env or "HEFL_" + self.name.upper()


_MODEL = ModelConfig()

FLAGS: Final[Mapping[str, Flag]] = {
    flag.name: flag
    for flag in (
        Flag(
            name="log_level",
            help="log level of the hefl loggers; DEBUG also shows TensorFlow's start-up lines",
            default="WARNING",
            choices=LOG_LEVELS,
            type=str.upper,
        ),
        # -- data -------------------------------------------------------------------------------
        Flag(
            name="dataset",
            help="a whole CSV (.csv or .csv.gz) that simulate and partition split into hospitals",
            type=Path,
            default=DEFAULT_DATASET,
        ),
        Flag(
            name="csv",
            help="this hospital's own CSV (.csv or .csv.gz): its training rows (hospital), the "
            "rows to score (predict)",
            type=Path,
        ),
        Flag(
            name="schema",
            help="bundled schema (diabetes130, johns_hospital) or a schema YAML file",
            default=DEFAULT_SCHEMA,
        ),
        Flag(
            name="hospitals",
            help="number of hospitals: simulated (simulate), shards (partition), identities "
            "issued (keygen, keys-cluster, keys-k8s-secrets): the most hospital replicas a "
            "cluster can run",
            type=positive_int,
            default=DEFAULT_HOSPITALS,
        ),
        Flag(
            name="partition",
            help="how one CSV is split into hospitals: Dirichlet label skew, IID, or by a column",
            choices=("dirichlet", "iid", "column"),
            default="dirichlet",
        ),
        Flag(
            name="alpha",
            help="Dirichlet concentration of --partition dirichlet; smaller is more skewed",
            type=positive_float,
            default=DEFAULT_ALPHA,
        ),
        Flag(name="column", help="the column whose values make the silos (--partition column)"),
        Flag(
            name="test_fraction",
            help="share of each hospital's patients held out for evaluation",
            type=fraction,
            default=DEFAULT_TEST_FRACTION,
        ),
        Flag(
            name="seed",
            help="run seed: initial weights, splits and batch order derive from it",
            type=int,
            default=DEFAULT_SEED,
        ),
        # -- the run ----------------------------------------------------------------------------
        Flag(
            name="run",
            help="run id (default: the coordinator resumes the one unfinished run in --state-dir "
            "or starts a new random one, e.g. run-20261202-134500-a1b2c3, and prints it; a "
            "hospital follows the run its coordinator announces)",
            type=run_id,
        ),
        Flag(
            name="rounds",
            help="federated rounds (with --patience: the most rounds run)",
            type=positive_int,
            default=DEFAULT_ROUNDS,
        ),
        Flag(
            name="patience",
            help="early stopping: end the run once this many rounds' models in a row did not "
            "lower the hospitals' mean hold-out loss by more than --min-delta; the final model "
            "is then the best round's (0: off, run every round)",
            type=non_negative_int,
            default=DEFAULT_PATIENCE,
        ),
        Flag(
            name="min_delta",
            help="early stopping: the least drop of the mean hold-out loss that counts as an "
            "improvement (--patience)",
            type=non_negative_float,
            default=0.0,
        ),
        Flag(
            name="min_hospitals",
            help="quorum to close a round at its deadline (default: every hospital)",
            type=positive_int,
        ),
        Flag(
            name="expect_hospitals",
            help="round 1 waits for this many hospitals before closing early; later rounds wait "
            "for the hospitals present (default: every hospital)",
            type=positive_int,
        ),
        Flag(
            name="participants",
            help="comma-separated hospital names taking part (default: every hospital in "
            "trust.json)",
            type=names,
        ),
        Flag(
            name="round_timeout",
            help="seconds a round stays open",
            type=positive_float,
            default=600.0,
        ),
        Flag(
            name="no_masking",
            help="upload updates encrypted but without pairwise masks (for comparison): then a "
            "hospital holding the HE secret key can decrypt another's update from the store",
            switch=True,
        ),
        Flag(
            name="mask_timeout",
            help="seconds the participants fixed for a masked round have to upload; a missing "
            f"one is dropped and the others mask afresh (default: {DEFAULT_MASK_TIMEOUT:g}, or "
            "--round-timeout if shorter)",
            type=positive_float,
        ),
        Flag(
            name="max_rows",
            help="a hospital refuses a global update whose contributors claim more training "
            "rows than this each on average",
            type=positive_int,
            default=DEFAULT_SANITY.max_rows,
        ),
        Flag(
            name="max_update_ratio",
            help="a hospital refuses a global update that moves the model by more than this "
            "times its norm (honest rounds: a few percent)",
            type=positive_float,
            default=DEFAULT_SANITY.max_update_ratio,
        ),
        Flag(
            name="state_dir",
            help="the coordinator's private folder for its signed run state and the operator's "
            "summary (per-hospital metrics); never the shared store",
            type=Path,
            default=Path("coordinator-state"),
        ),
        Flag(
            name="keep_updates",
            help="keep each hospital's update blob after its round's aggregate is written "
            "(default: deleted)",
            switch=True,
        ),
        Flag(
            name="final_timeout",
            help="seconds the coordinator waits for the hospitals' final reports",
            type=positive_float,
            default=120.0,
        ),
        # -- encryption and keys ----------------------------------------------------------------
        Flag(name="scheme", help="homomorphic scheme", choices=("ckks", "bfv"), default="ckks"),
        Flag(
            name="max_hospitals",
            help="most hospital updates one encrypted sum may hold (sets the value bound)",
            type=positive_int,
            default=DEFAULT_MAX_HOSPITALS,
        ),
        Flag(
            name="ckks_prime_bits",
            help="CKKS last prime in bits, scale 16 bits below it: the upload is about "
            "bits/8 + 0.02 bytes per value, the error halves per extra bit "
            "(bench/results/precision.md; 56 is the pre-seeding precision, about 1e-9)",
            type=int,
            choices=CKKS_PRIME_BITS,
            default=DEFAULT_CKKS_PRIME_BITS,
        ),
        Flag(
            name="keys",
            help="key folder: keygen writes a whole ceremony there, coordinator and hospital "
            "read their keys from it, keys-install, keys-unpack and keys-cluster write a role's "
            "share into it",
            type=Path,
            default=Path("keys"),
        ),
        Flag(
            name="ceremony",
            help="a whole key ceremony folder (written by keygen --keys) to take a role's share "
            "from (keys-install)",
            type=Path,
        ),
        Flag(
            name="coordinator_keys",
            help="the coordinator's key folder, which keys-cluster writes the coordinator's "
            "share into (no secret key)",
            type=Path,
        ),
        Flag(
            name="role",
            help="whose key share: the coordinator, one hospital (--hospital or --identity), or "
            "every hospital (one folder shared by co-located hospital containers)",
            choices=KEY_ROLES,
        ),
        Flag(
            name="secret_dir",
            help="folder where a key Secret of flat keys (keys-k8s-secrets) is mounted",
            type=Path,
        ),
        Flag(
            name="format",
            help="how keys-k8s-secrets prints the Secret manifests (both for kubectl apply -f -)",
            choices=("yaml", "json"),
            default="yaml",
        ),
        Flag(
            name="overwrite",
            help="replace what the command would otherwise keep or refuse to replace: key "
            "material, a partition",
            switch=True,
        ),
        # -- where things go --------------------------------------------------------------------
        Flag(
            name="store",
            help="store URL: a folder, file:///path or gdrive://FOLDER_ID "
            "(simulate: default a folder under --out)",
            env=STORE_ENV,
        ),
        Flag(
            name="accounts",
            help="comma-separated SITE=GOOGLE_ACCOUNT pairs: each hospital's Drive account "
            "(drive-share)",
            type=names,
        ),
        Flag(
            name="broker",
            help="RabbitMQ URL, amqp:// or amqps://; for a broker cluster, one URL per node, "
            "comma-separated (same user and vhost): the process moves to another node when it "
            "loses its own",
            default=DEFAULT_BROKER_URL,
            env=BROKER_URL_ENV,
        ),
        Flag(
            name="broker_ca",
            help="the deployment's broker CA certificate (PEM, made at the key ceremony): an "
            "amqps:// broker must present a certificate it signed; the system CAs are not used",
            type=Path,
        ),
        Flag(
            name="broker_password_file",
            help="file holding this participant's broker password, or a folder of such files "
            "named after the participants; put into the --broker URL, which must hold no "
            "password (a URL without a user gets the participant's name as user)",
            type=Path,
        ),
        Flag(name="prefix", help="RabbitMQ exchange and queue name prefix", default=DEFAULT_PREFIX),
        # -- watching a process -----------------------------------------------------------------
        Flag(
            name="http_port",
            help="serve read-only HTTP on this port (default: none): the coordinator its status "
            "page (/), /api/status and /metrics, a hospital its own /metrics; 0 picks a free port",
            type=port,
        ),
        Flag(
            name="http_host",
            help="address the --http-port endpoint binds; the status page names hospitals and "
            "is for the operator: keep it local unless hospitals cannot reach the address",
            default=DEFAULT_HTTP_HOST,
        ),
        Flag(
            name="http_linger",
            help="seconds the coordinator keeps serving --http-port after its run ended, so the "
            "last scrape and a last look at the page see the end",
            type=non_negative_float,
            default=0.0,
        ),
        Flag(name="hospital", help="this hospital's identity, e.g. hospital-3"),
        Flag(
            name="identity",
            help="how a hospital container finds its identity without --hospital: claim the "
            "first free one in --claims, or from its StatefulSet pod ordinal (name-K is "
            "hospital-(K+1))",
            choices=IDENTITY_MODES,
        ),
        Flag(
            name="claims",
            help="folder shared by a service's hospital replicas to claim identities in "
            "(--identity claim)",
            type=Path,
        ),
        Flag(
            name="claim_ttl",
            help="seconds without a heartbeat after which another replica takes a claim over",
            type=positive_float,
            default=DEFAULT_CLAIM_TTL,
        ),
        Flag(
            name="shards",
            help="folder of per-hospital CSVs named <hospital>.csv (partition --out); a hospital "
            "without --csv reads its own from there",
            type=Path,
        ),
        Flag(
            name="out",
            help="where the command writes: its output folder; predict: the scores CSV "
            "(default: standard output); report: the HTML file (default: RUN_DIR/report.html)",
            type=Path,
        ),
        Flag(
            name="run_dir",
            help="a run folder written by simulate (its --out) to report on",
            type=Path,
            positional=True,
        ),
        # -- results ----------------------------------------------------------------------------
        Flag(
            name="top_fraction",
            help="share of patients flagged as highest risk, for sensitivity and PPV and for a "
            "model bundle's decision threshold (0.1: the top 10%)",
            type=fraction,
            default=DEFAULT_TOP_FRACTION,
        ),
        Flag(
            name="model",
            help="a model bundle folder, <out>/<hospital>/bundle as a hospital writes it, to "
            "score with (predict)",
            type=Path,
        ),
        # -- simulate only ----------------------------------------------------------------------
        Flag(
            name="engine",
            help="hefl: encrypted FedAvg and its baselines; tff: TensorFlow Federated's "
            "plaintext FedAvg as a reference, run in .venv-tff (make tff-env)",
            choices=("hefl", "tff"),
            default="hefl",
        ),
        Flag(
            name="no_baselines",
            help="only the encrypted run (skip plaintext, local-only and centralized)",
            switch=True,
        ),
        # -- the model (every participant of a run must agree) ----------------------------------
        Flag(
            name="hidden",
            help="hidden layer widths, e.g. 128,64; empty for logistic regression",
            type=units,
            default=_MODEL.hidden_units,
        ),
        Flag(
            name="optimizer",
            help="local optimizer",
            choices=("sgd", "adam"),
            default=_MODEL.optimizer,
        ),
        Flag(
            name="learning_rate",
            help="local learning rate",
            type=positive_float,
            default=_MODEL.learning_rate,
        ),
        Flag(
            name="batch_size",
            help="local batch size",
            type=positive_int,
            default=_MODEL.batch_size,
        ),
        Flag(
            name="local_epochs",
            help="local epochs per round",
            type=positive_int,
            default=_MODEL.local_epochs,
        ),
        Flag(
            name="server_optimizer",
            help="what every hospital applies to each round's decrypted average to get the next "
            "global model (docs/configuration.md#server-optimizers): fedavg takes a step of "
            "--server-lr towards it (1: the average itself), fedavgm adds server momentum, "
            "fedadam and fedyogi scale the step per weight",
            choices=SERVER_OPTIMIZERS,
            default=DEFAULT_SERVER_OPTIMIZER,
        ),
        Flag(
            name="server_lr",
            help="server learning rate (default: "
            + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_SERVER_LEARNING_RATES.items())
            + ")",
            type=positive_float,
        ),
        Flag(
            name="server_momentum",
            help=f"server momentum of fedavgm, 0 to below 1 (default: {DEFAULT_SERVER_MOMENTUM:g})",
            type=decay,
        ),
        Flag(
            name="server_beta1",
            help="decay of fedadam's and fedyogi's first moment, 0 to below 1 "
            f"(default: {DEFAULT_SERVER_BETA_1:g})",
            type=decay,
        ),
        Flag(
            name="server_beta2",
            help="decay of fedadam's and fedyogi's second moment, 0 to below 1 "
            f"(default: {DEFAULT_SERVER_BETA_2:g})",
            type=decay,
        ),
        Flag(
            name="server_epsilon",
            help="fedadam's and fedyogi's epsilon, added to the root of the second moment "
            f"(default: {DEFAULT_SERVER_EPSILON:g})",
            type=positive_float,
        ),
    )
}

#: The flags that shape the model; the digest every participant checks covers them.
MODEL_FLAGS: Final = (
    "hidden",
    "optimizer",
    "learning_rate",
    "batch_size",
    "local_epochs",
    "server_optimizer",
    "server_lr",
    "server_momentum",
    "server_beta1",
    "server_beta2",
    "server_epsilon",
)
