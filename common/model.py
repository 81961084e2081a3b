"""The shared model: its configuration, architecture, initial weights and flat-vector form.

Every hospital must build the same network and start round 1 from the same weights, and the
coordinator must be able to check that everyone agrees on the configuration without loading
TensorFlow. So the configuration, weight shapes, initial weights and flattening here are plain
Python and numpy; Keras is imported only inside :func:`build_model`.

The default reproduces the original project's network: ``Dense(128, relu) -> Dense(1, sigmoid)``,
binary cross-entropy, SGD with learning rate 0.01, batch size 32.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from common import quiet_tensorflow
from common.errors import ConfigError
from common.server_optimizer import DEFAULT_SERVER_CONFIG, ServerOptimizerConfig

if TYPE_CHECKING:
    import keras

DEFAULT_HIDDEN_UNITS: tuple[int, ...] = (128,)
DEFAULT_ACTIVATION = "relu"
DEFAULT_OPTIMIZER = "sgd"
DEFAULT_LEARNING_RATE = 0.01
DEFAULT_BATCH_SIZE = 32
# Two local epochs per round: with one, FedAvg on skewed hospitals lags centralized training by
# about 0.02 AUC after 10 rounds of SGD (measured; see README), with two by about 0.01.
DEFAULT_LOCAL_EPOCHS = 2

SUPPORTED_OPTIMIZERS = frozenset({"sgd", "adam"})
SUPPORTED_ACTIVATIONS = frozenset({"relu", "tanh", "sigmoid", "elu", "selu", "gelu", "silu"})

OUTPUT_UNITS = 1
OUTPUT_ACTIVATION = "sigmoid"
LOSS = "binary_crossentropy"
# Batches run per call into the compiled train step. Numerically the same as 1 (the batches and
# their order do not change) but several times faster for a small MLP, whose steps are
# dominated by Python overhead. Callbacks, if anyone adds them, fire once per group.
STEPS_PER_EXECUTION = 64

Shapes = Sequence[tuple[int, ...]]


def _require_int(name: str, value: object, minimum: int) -> int:
    # bool is an int subclass; True as a batch size is a mistake, not a 1.
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"model.{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"model.{name} must be >= {minimum}, got {value}")
    return int(value)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Architecture and local-training settings that every hospital in a run must share.

    ``hidden_units`` lists the widths of the hidden ``Dense`` layers; an empty tuple gives
    logistic regression. The output layer is always one sigmoid unit. ``server_optimizer`` is
    what every hospital applies to each round's decrypted average (``common.server_optimizer``;
    a mapping, e.g. from YAML, is read with ``ServerOptimizerConfig.from_dict``).
    """

    hidden_units: tuple[int, ...] = field(default=DEFAULT_HIDDEN_UNITS)
    activation: str = DEFAULT_ACTIVATION
    optimizer: str = DEFAULT_OPTIMIZER
    learning_rate: float = DEFAULT_LEARNING_RATE
    batch_size: int = DEFAULT_BATCH_SIZE
    local_epochs: int = DEFAULT_LOCAL_EPOCHS
    server_optimizer: ServerOptimizerConfig = DEFAULT_SERVER_CONFIG

    def __post_init__(self) -> None:
        units = self.hidden_units
        if isinstance(units, str | bytes) or not isinstance(units, Sequence):
            raise ConfigError(f"model.hidden_units must be a list of integers, got {units!r}")
        normalized = tuple(_require_int("hidden_units[]", unit, 1) for unit in units)
        # Frozen: normalize a list (e.g. from YAML) to a tuple so the config stays hashable.
        object.__setattr__(self, "hidden_units", normalized)

        if self.activation not in SUPPORTED_ACTIVATIONS:
            raise ConfigError(
                f"model.activation must be one of {sorted(SUPPORTED_ACTIVATIONS)}, "
                f"got {self.activation!r}"
            )
        if self.optimizer not in SUPPORTED_OPTIMIZERS:
            raise ConfigError(
                f"model.optimizer must be one of {sorted(SUPPORTED_OPTIMIZERS)}, "
                f"got {self.optimizer!r}"
            )
        rate = self.learning_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float):
            raise ConfigError(f"model.learning_rate must be a number, got {rate!r}")
        if not math.isfinite(rate) or rate <= 0:
            raise ConfigError(f"model.learning_rate must be finite and > 0, got {rate!r}")
        object.__setattr__(self, "learning_rate", float(rate))
        object.__setattr__(self, "batch_size", _require_int("batch_size", self.batch_size, 1))
        object.__setattr__(self, "local_epochs", _require_int("local_epochs", self.local_epochs, 1))
        server = self.server_optimizer
        if isinstance(server, Mapping):
            object.__setattr__(self, "server_optimizer", ServerOptimizerConfig.from_dict(server))
        elif not isinstance(server, ServerOptimizerConfig):
            raise ConfigError(f"model.server_optimizer must be a mapping, got {server!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Build from a mapping such as a YAML section; missing keys take their defaults."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"model config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model config keys: {', '.join(map(str, unknown))}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form; ``from_dict(to_dict())`` gives an equal config.

        ``server_optimizer`` is left out when it is the default (plain FedAvg), so that a
        configuration from before server optimizers keeps its form and its digest."""
        data = asdict(self)
        data["hidden_units"] = list(self.hidden_units)
        if self.server_optimizer == DEFAULT_SERVER_CONFIG:
            del data["server_optimizer"]
        return data

    def digest(self) -> str:
        """SHA-256 hex of the canonical JSON form, carried as ``config_digest`` in messages.

        Two configs have the same digest exactly when they are equal, on every machine.
        """
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _require_features(n_features: int) -> int:
    return _require_int("n_features", n_features, 1)


def weight_shapes(config: ModelConfig, n_features: int) -> list[tuple[int, ...]]:
    """Shapes of the model's weights in Keras order: kernel then bias, layer by layer."""
    widths = [_require_features(n_features), *config.hidden_units, OUTPUT_UNITS]
    shapes: list[tuple[int, ...]] = []
    for fan_in, fan_out in itertools.pairwise(widths):
        shapes.extend([(fan_in, fan_out), (fan_out,)])
    return shapes


def parameter_count(config: ModelConfig, n_features: int) -> int:
    """Number of scalars in the flat weight vector (what gets encrypted each round)."""
    return sum(math.prod(shape) for shape in weight_shapes(config, n_features))


def initial_weights(config: ModelConfig, n_features: int, seed: int) -> np.ndarray:
    """Round-1 weights as a flat float32 vector, a pure function of the run seed.

    Glorot-uniform kernels and zero biases, as Keras would initialize them, but drawn from
    ``numpy.random.default_rng(seed)`` so that every hospital, in any process and on any
    machine, starts from bitwise the same model regardless of TensorFlow's RNG state.
    """
    rng = np.random.default_rng(_require_int("seed", seed, 0))
    parts: list[np.ndarray] = []
    for shape in weight_shapes(config, n_features):
        if len(shape) == 2:
            limit = math.sqrt(6.0 / (shape[0] + shape[1]))
            parts.append(rng.uniform(-limit, limit, size=shape).astype(np.float32))
        else:
            parts.append(np.zeros(shape, dtype=np.float32))
    return flatten(parts)


def flatten(weights: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate weight arrays (Keras order) into one new flat float32 vector."""
    if not weights:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([np.asarray(w, dtype=np.float32).ravel() for w in weights])


def unflatten(vector: np.ndarray, model_or_shapes: keras.Model | Shapes) -> list[np.ndarray]:
    """Split a flat vector into arrays shaped like a model's weights (or the given shapes).

    Raises :class:`ConfigError` when the vector's length does not match, which means the
    vector belongs to a different architecture or feature set.
    """
    if hasattr(model_or_shapes, "weights"):
        shapes = [tuple(int(d) for d in w.shape) for w in model_or_shapes.weights]
    else:
        shapes = [tuple(int(d) for d in shape) for shape in model_or_shapes]
    flat = np.asarray(vector, dtype=np.float32)
    if flat.ndim != 1:
        raise ConfigError(f"weight vector must be one-dimensional, got shape {flat.shape}")
    expected = sum(math.prod(shape) for shape in shapes)
    if flat.size != expected:
        raise ConfigError(
            f"weight vector has {flat.size} values but the model needs {expected}: "
            "it was made for a different architecture or number of features"
        )
    arrays: list[np.ndarray] = []
    offset = 0
    for shape in shapes:
        size = math.prod(shape)
        arrays.append(flat[offset : offset + size].reshape(shape).copy())
        offset += size
    return arrays


def build_model(config: ModelConfig, n_features: int) -> keras.Model:
    """Build and compile the Keras MLP for ``config`` with a fresh optimizer.

    XLA is switched off so that a hospital with a GPU runs the same kernels as one without.
    """
    n_features = _require_features(n_features)
    quiet_tensorflow.load()
    import keras

    layers: list[Any] = [keras.Input(shape=(n_features,), name="features")]
    layers.extend(
        keras.layers.Dense(units, activation=config.activation, name=f"hidden_{index}")
        for index, units in enumerate(config.hidden_units, start=1)
    )
    layers.append(keras.layers.Dense(OUTPUT_UNITS, activation=OUTPUT_ACTIVATION, name="output"))
    model = keras.Sequential(layers, name="readmission_mlp")
    model.compile(
        optimizer=make_optimizer(config),
        loss=LOSS,
        jit_compile=False,
        steps_per_execution=STEPS_PER_EXECUTION,
    )
    return model


def make_optimizer(config: ModelConfig) -> keras.optimizers.Optimizer:
    """A new, unbuilt Keras optimizer as configured."""
    quiet_tensorflow.load()
    import keras

    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=config.learning_rate)
    return keras.optimizers.SGD(learning_rate=config.learning_rate)
