"""Typed options of the ``hefl`` subcommands: one frozen dataclass per subcommand.

Every field is named after a flag of ``hefl.cli.flags.FLAGS`` (a test checks it), so a field's
meaning, type and environment variable come from that one table; the parser fills these classes
and the handlers receive them fully parsed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError
from common.model import ModelConfig
from common.server_optimizer import ServerOptimizerConfig

# -- option groups -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """The model and local training; every participant of a run must agree on them."""

    hidden: tuple[int, ...]
    optimizer: str
    learning_rate: float
    batch_size: int
    local_epochs: int
    server_optimizer: str
    server_lr: float | None
    server_momentum: float | None
    server_beta1: float | None
    server_beta2: float | None
    server_epsilon: float | None

    def model(self) -> ModelConfig:
        """The model configuration; a ConfigError names a server flag that does not apply to
        --server-optimizer (e.g. --server-momentum with fedadam)."""
        return ModelConfig(
            hidden_units=self.hidden,
            optimizer=self.optimizer,
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
            local_epochs=self.local_epochs,
            server_optimizer=ServerOptimizerConfig(
                name=self.server_optimizer,
                learning_rate=self.server_lr,
                momentum=self.server_momentum,
                beta_1=self.server_beta1,
                beta_2=self.server_beta2,
                epsilon=self.server_epsilon,
            ),
        )


@dataclass(frozen=True, kw_only=True)
class SplitOptions:
    """One whole CSV split into simulated hospitals."""

    dataset: Path
    schema: str
    hospitals: int
    partition: str
    alpha: float
    column: str | None
    seed: int

    def check(self) -> None:
        if self.partition == "column" and not self.column:
            raise ConfigError("--partition column needs --column NAME ($HEFL_COLUMN)")


@dataclass(frozen=True, kw_only=True)
class RunOptions(ModelOptions):
    """What coordinator and hospitals of one run share; their digest is checked every round."""

    run: str | None
    rounds: int
    seed: int
    schema: str
    keys: Path
    store: str
    broker: str
    broker_ca: Path | None
    broker_password_file: Path | None
    prefix: str
    no_masking: bool
    http_host: str
    http_port: int | None


# -- the subcommands' options --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SimulateOptions(SplitOptions, ModelOptions):
    test_fraction: float
    rounds: int
    patience: int
    min_delta: float
    scheme: str
    max_hospitals: int
    ckks_prime_bits: int
    min_hospitals: int | None
    engine: str
    no_baselines: bool
    no_masking: bool
    store: str | None
    out: Path
    top_fraction: float


@dataclass(frozen=True, kw_only=True)
class PartitionOptions(SplitOptions):
    out: Path
    overwrite: bool


@dataclass(frozen=True, kw_only=True)
class KeygenOptions:
    keys: Path
    hospitals: int
    scheme: str
    max_hospitals: int
    ckks_prime_bits: int
    overwrite: bool


@dataclass(frozen=True, kw_only=True)
class BrokerUsersOptions:
    hospitals: int
    out: Path


@dataclass(frozen=True, kw_only=True)
class DriveShareOptions:
    store: str
    run: str
    accounts: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class CoordinatorOptions(RunOptions):
    patience: int
    min_delta: float
    participants: tuple[str, ...] | None
    min_hospitals: int | None
    expect_hospitals: int | None
    round_timeout: float
    final_timeout: float
    mask_timeout: float | None
    state_dir: Path
    keep_updates: bool
    http_linger: float


@dataclass(frozen=True, kw_only=True)
class HospitalOptions(RunOptions):
    hospital: str
    csv: Path
    test_fraction: float
    out: Path
    max_rows: int
    max_update_ratio: float
    top_fraction: float


@dataclass(frozen=True, kw_only=True)
class ReplicaOptions(RunOptions):
    """``hospital`` for a replica of a scaled service: it finds its identity and its CSV."""

    hospital: str | None
    identity: str | None
    claims: Path | None
    claim_ttl: float
    csv: Path | None
    shards: Path | None
    test_fraction: float
    out: Path
    max_rows: int
    max_update_ratio: float
    top_fraction: float


@dataclass(frozen=True, kw_only=True)
class PredictOptions:
    model: Path
    csv: Path
    out: Path | None


@dataclass(frozen=True, kw_only=True)
class ReportOptions:
    run_dir: Path
    out: Path | None
