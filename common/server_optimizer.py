"""Server optimizers of adaptive federated optimization (Reddi et al. 2021), in plain numpy.

The coordinator only adds ciphertexts; every hospital decrypts the round's weighted average and
applies the run's server optimizer to it, identically, so all of them hold the same global model
while the coordinator stays keyless and blind. The optimizer's state (momentum, moments, step
count) lives in each hospital's memory and is rebuilt by replaying the round averages in order.

Semantics are TensorFlow Federated's (``tff.learning.algorithms.build_weighted_fed_avg`` with
``server_optimizer_fn`` = ``tff.learning.optimizers.build_sgdm``, ``build_adam`` or
``build_yogi``; tensorflow-federated 0.87): the server optimizer is applied to the model delta
as a gradient, ``g_r = x_{r-1} - avg_r`` (the negative of Reddi's pseudo-gradient), and

- ``fedavg`` (SGD): ``x_r = x_{r-1} - lr * g_r``; with ``lr = 1`` that is ``avg_r``, plain FedAvg;
- ``fedavgm`` (SGD with momentum): ``v_r = momentum * v_{r-1} + g_r``, ``x_r = x_{r-1} - lr * v_r``;
- ``fedadam``: ``m_r = m_{r-1} + (g_r - m_{r-1}) * (1 - beta_1)``,
  ``v_r = v_{r-1} + (g_r**2 - v_{r-1}) * (1 - beta_2)``,
  ``lr_r = lr * sqrt(1 - beta_2**r) / (1 - beta_1**r)``,
  ``x_r = x_{r-1} - lr_r * m_r / (sqrt(v_r) + epsilon)`` (bias correction folded into the
  learning rate; epsilon added to the uncorrected ``sqrt(v_r)``), with ``m_0 = v_0 = 0``;
- ``fedyogi``: as ``fedadam`` but
  ``v_r = v_{r-1} + (1 - beta_2) * sign(g_r**2 - v_{r-1}) * g_r**2``,
  starting from ``v_0 = YOGI_INITIAL_PRECONDITIONER``.

Everything is float64 and elementwise (IEEE-exact operations only: the powers of the betas are
repeated products, not ``pow``), so hospitals on different machines compute bit-identical models.
Pure functions over frozen values; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Final

import numpy as np

from common.errors import ConfigError

FEDAVG: Final = "fedavg"
FEDAVGM: Final = "fedavgm"
FEDADAM: Final = "fedadam"
FEDYOGI: Final = "fedyogi"
SERVER_OPTIMIZERS: Final = (FEDAVG, FEDAVGM, FEDADAM, FEDYOGI)
#: How results name a run by its server optimizer ("encrypted FedAdam (CKKS)", "plaintext FedAvgM").
DISPLAY_NAMES: Final[Mapping[str, str]] = {
    FEDAVG: "FedAvg",
    FEDAVGM: "FedAvgM",
    FEDADAM: "FedAdam",
    FEDYOGI: "FedYogi",
}
_ADAPTIVE: Final = (FEDADAM, FEDYOGI)

#: Plain FedAvg until a benchmark picks otherwise (the other defaults are Reddi et al.'s).
DEFAULT_SERVER_OPTIMIZER: Final = FEDAVG
#: Server learning rate when none is given: 1 makes fedavg plain FedAvg.
DEFAULT_SERVER_LEARNING_RATES: Final[Mapping[str, float]] = {
    FEDAVG: 1.0,
    FEDAVGM: 1.0,
    FEDADAM: 0.01,
    FEDYOGI: 0.01,
}
DEFAULT_SERVER_MOMENTUM: Final = 0.9
DEFAULT_SERVER_BETA_1: Final = 0.9
DEFAULT_SERVER_BETA_2: Final = 0.99
DEFAULT_SERVER_EPSILON: Final = 1e-3
#: Yogi's initial second moment (TFF's ``initial_preconditioner_value`` default; epsilon**2).
YOGI_INITIAL_PRECONDITIONER: Final = 1e-6

# The flag that sets each parameter, named in errors (the CLI validates through this class).
_FLAGS: Final = {
    "name": "--server-optimizer",
    "learning_rate": "--server-lr",
    "momentum": "--server-momentum",
    "beta_1": "--server-beta1",
    "beta_2": "--server-beta2",
    "epsilon": "--server-epsilon",
}


def _number(name: str, value: object) -> float:
    where = f"server_optimizer.{name} ({_FLAGS[name]})"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{where} must be finite, got {value}")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class ServerOptimizerConfig:
    """Which server optimizer a run uses, and its hyper-parameters; part of the run digest.

    A parameter left None takes its default for ``name``; one that ``name`` does not use must
    stay None (a momentum given to FedAdam is a mistake, not a no-op). After construction
    every used parameter holds a number, so equal configs have equal digests.
    """

    name: str = DEFAULT_SERVER_OPTIMIZER
    learning_rate: float | None = None
    momentum: float | None = None  # fedavgm
    beta_1: float | None = None  # fedadam, fedyogi
    beta_2: float | None = None  # fedadam, fedyogi
    epsilon: float | None = None  # fedadam, fedyogi

    def __post_init__(self) -> None:
        if self.name not in SERVER_OPTIMIZERS:
            raise ConfigError(
                f"server_optimizer.name ({_FLAGS['name']}) must be one of "
                f"{', '.join(SERVER_OPTIMIZERS)}, got {self.name!r}"
            )
        defaults: dict[str, float] = {"learning_rate": DEFAULT_SERVER_LEARNING_RATES[self.name]}
        if self.name == FEDAVGM:
            defaults["momentum"] = DEFAULT_SERVER_MOMENTUM
        if self.name in _ADAPTIVE:
            defaults["beta_1"] = DEFAULT_SERVER_BETA_1
            defaults["beta_2"] = DEFAULT_SERVER_BETA_2
            defaults["epsilon"] = DEFAULT_SERVER_EPSILON
        for name in ("learning_rate", "momentum", "beta_1", "beta_2", "epsilon"):
            value = getattr(self, name)
            if name not in defaults:
                if value is not None:
                    users = "fedavgm" if name == "momentum" else "fedadam and fedyogi"
                    raise ConfigError(
                        f"{_FLAGS[name]} applies to {users} only, not to "
                        f"{_FLAGS['name']} {self.name}"
                    )
                continue
            number = defaults[name] if value is None else _number(name, value)
            object.__setattr__(self, name, number)
        self._check_ranges()

    def _check_ranges(self) -> None:
        checks = {
            "learning_rate": (self.learning_rate, "> 0", lambda v: v > 0),
            "momentum": (self.momentum, "in [0, 1)", lambda v: 0 <= v < 1),
            "beta_1": (self.beta_1, "in [0, 1)", lambda v: 0 <= v < 1),
            "beta_2": (self.beta_2, "in [0, 1)", lambda v: 0 <= v < 1),
            "epsilon": (self.epsilon, "> 0", lambda v: v > 0),
        }
        for name, (value, expected, ok) in checks.items():
            if value is not None and not ok(value):
                raise ConfigError(
                    f"server_optimizer.{name} ({_FLAGS[name]}) must be {expected}, got {value}"
                )

    def __repr__(self) -> str:
        used = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)]
        return f"ServerOptimizerConfig({', '.join(u for u in used if not u.endswith('=None'))})"

    @property
    def is_plain_fedavg(self) -> bool:
        """True when the global model is the round's average itself (no server state)."""
        return self.name == FEDAVG and self.learning_rate == 1.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServerOptimizerConfig:
        """Build from a mapping (YAML, a bundle's manifest); missing keys take their defaults."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"server_optimizer must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown server_optimizer keys: {', '.join(map(str, unknown))}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form; ``from_dict(to_dict())`` gives an equal config."""
        return asdict(self)


#: Plain FedAvg: the global model is each round's average.
DEFAULT_SERVER_CONFIG: Final = ServerOptimizerConfig()


@dataclass(frozen=True, eq=False)
class ServerState:
    """The server optimizer's state after ``step`` rounds: ``first`` is the momentum (fedavgm)
    or first moment (fedadam, fedyogi), ``second`` the second moment; empty where unused.

    Compared by identity (``eq=False``): compare the arrays explicitly."""

    config: ServerOptimizerConfig
    step: int
    first: np.ndarray
    second: np.ndarray


def initial_state(config: ServerOptimizerConfig, n_params: int) -> ServerState:
    """The state before round 1 (TFF's ``initialize``)."""
    zeros = np.zeros(n_params, dtype=np.float64)
    unused = np.zeros(0, dtype=np.float64)
    if config.name == FEDAVGM:
        return ServerState(config, 0, zeros, unused)
    if config.name == FEDADAM:
        return ServerState(config, 0, zeros, zeros.copy())
    if config.name == FEDYOGI:
        return ServerState(config, 0, zeros, np.full(n_params, YOGI_INITIAL_PRECONDITIONER))
    return ServerState(config, 0, unused, unused)


def _hyper(config: ServerOptimizerConfig, name: str) -> float:
    value = getattr(config, name)
    if value is None:  # ServerOptimizerConfig sets every parameter its optimizer uses
        raise ConfigError(f"server optimizer {config.name} has no {name}")
    return float(value)


def _power(base: float, exponent: int) -> float:
    # Repeated products, exactly rounded each: the same bits on every machine (pow may differ).
    result = 1.0
    for _ in range(exponent):
        result *= base
    return result


def step(
    global_: np.ndarray, average: np.ndarray, state: ServerState
) -> tuple[np.ndarray, ServerState]:
    """One server round: the new global model and state from the previous global model and the
    round's decrypted weighted average. Pure: the arguments are not changed."""
    x = np.asarray(global_, dtype=np.float64)
    avg = np.asarray(average, dtype=np.float64)
    used = [a for a in (state.first, state.second) if a.size]
    if x.ndim != 1 or any(a.shape != x.shape for a in (avg, *used)):
        raise ConfigError(
            f"server optimizer step over a model of {x.shape}, an average of {avg.shape} and "
            f"a state of {[a.shape for a in used]}: they must be one vector each, of one length"
        )
    config = state.config
    lr = _hyper(config, "learning_rate")
    g = x - avg  # TFF's "gradient": the weighted mean of (global - client model)
    t = state.step + 1
    if config.name == FEDAVG:
        new = avg.copy() if config.is_plain_fedavg else x - lr * g
        return new, ServerState(config, t, state.first, state.second)
    if config.name == FEDAVGM:
        v = _hyper(config, "momentum") * state.first + g
        return x - lr * v, ServerState(config, t, v, state.second)
    beta_1, beta_2 = _hyper(config, "beta_1"), _hyper(config, "beta_2")
    m = state.first + (g - state.first) * (1.0 - beta_1)
    g2 = np.square(g)
    if config.name == FEDADAM:
        v = state.second + (g2 - state.second) * (1.0 - beta_2)
    else:
        v = state.second + (1.0 - beta_2) * np.sign(g2 - state.second) * g2
    rate = lr * math.sqrt(1.0 - _power(beta_2, t)) / (1.0 - _power(beta_1, t))
    new = x - rate * m / (np.sqrt(v) + _hyper(config, "epsilon"))
    return new, ServerState(config, t, m, v)


def global_models(
    initial: np.ndarray, averages: Iterable[np.ndarray], config: ServerOptimizerConfig
) -> list[np.ndarray]:
    """The global model after each round, from the initial model and the rounds' averages:
    what every hospital holds (the TFF cross-check reads a run's models this way)."""
    x = np.asarray(initial, dtype=np.float64)
    state = initial_state(config, x.shape[0])
    models = []
    for average in averages:
        x, state = step(x, average, state)
        models.append(x)
    return models
