"""Tests of the shared model definition: config, shapes, initial weights, flat vectors."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import keras
import numpy as np
import pytest

from common.errors import ConfigError
from common.model import (
    ModelConfig,
    build_model,
    flatten,
    initial_weights,
    parameter_count,
    unflatten,
    weight_shapes,
)
from common.server_optimizer import ServerOptimizerConfig

N_FEATURES = 200
DEFAULT_PARAMETERS = 200 * 128 + 128 + 128 * 1 + 1  # 25,857


def test_default_config_reproduces_original_mlp_settings() -> None:
    config = ModelConfig()
    assert config.hidden_units == (128,)
    assert config.activation == "relu"
    assert config.optimizer == "sgd"
    assert config.learning_rate == 0.01
    assert config.batch_size == 32
    assert config.local_epochs == 2


def test_config_repr_is_readable() -> None:
    assert repr(ModelConfig()) == (
        "ModelConfig(hidden_units=(128,), activation='relu', optimizer='sgd', "
        "learning_rate=0.01, batch_size=32, local_epochs=2, "
        "server_optimizer=ServerOptimizerConfig(name='fedavg', learning_rate=1.0))"
    )


def test_config_is_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        ModelConfig((64,))  # type: ignore[call-arg]
    config = ModelConfig()
    with pytest.raises(AttributeError):
        config.batch_size = 64  # type: ignore[misc]


@pytest.mark.parametrize(
    "overrides",
    [
        {"hidden_units": (0,)},
        {"hidden_units": (128, -4)},
        {"hidden_units": "128"},
        {"hidden_units": (True,)},
        {"activation": "softmax"},
        {"optimizer": "rmsprop"},
        {"learning_rate": 0.0},
        {"learning_rate": -0.1},
        {"learning_rate": math.nan},
        {"learning_rate": math.inf},
        {"learning_rate": "0.01"},
        {"batch_size": 0},
        {"batch_size": 32.0},
        {"batch_size": True},
        {"local_epochs": 0},
    ],
)
def test_config_rejects_invalid_values(overrides: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        ModelConfig(**overrides)


def test_config_normalizes_list_hidden_units_and_integer_learning_rate() -> None:
    config = ModelConfig(hidden_units=[64, 32], learning_rate=1)  # type: ignore[arg-type]
    assert config.hidden_units == (64, 32)
    assert isinstance(config.learning_rate, float)
    assert hash(config) == hash(ModelConfig(hidden_units=(64, 32), learning_rate=1.0))


def test_config_dict_round_trip() -> None:
    config = ModelConfig(hidden_units=(64, 16), optimizer="adam", learning_rate=0.001)
    data = config.to_dict()
    assert data["hidden_units"] == [64, 16]
    assert ModelConfig.from_dict(data) == config
    assert ModelConfig.from_dict({}) == ModelConfig()


def test_a_server_optimizer_round_trips_and_plain_fedavg_keeps_the_old_form() -> None:
    assert "server_optimizer" not in ModelConfig().to_dict()  # as before server optimizers
    config = ModelConfig(server_optimizer=ServerOptimizerConfig(name="fedyogi", beta_2=0.9))
    data = config.to_dict()
    assert data["server_optimizer"] == {
        "name": "fedyogi",
        "learning_rate": 0.01,
        "momentum": None,
        "beta_1": 0.9,
        "beta_2": 0.9,
        "epsilon": 1e-3,
    }
    assert ModelConfig.from_dict(data) == config
    assert ModelConfig.from_dict({"server_optimizer": {"name": "fedyogi", "beta_2": 0.9}}) == config
    with pytest.raises(ConfigError, match="unknown server_optimizer keys: beta1"):
        ModelConfig.from_dict({"server_optimizer": {"name": "fedadam", "beta1": 0.8}})
    with pytest.raises(ConfigError, match="server_optimizer must be a mapping"):
        ModelConfig(server_optimizer="fedadam")  # type: ignore[arg-type]


def test_config_from_dict_rejects_unknown_keys_and_non_mappings() -> None:
    with pytest.raises(ConfigError, match="hidden_unit"):
        ModelConfig.from_dict({"hidden_unit": [64]})
    with pytest.raises(ConfigError):
        ModelConfig.from_dict([("batch_size", 8)])  # type: ignore[arg-type]


def test_config_digest_is_stable_and_tracks_every_field() -> None:
    digest = ModelConfig().digest()
    # Pinned: hospitals and coordinator on different versions must compute the same digest.
    assert digest == "92ab4856aa33ce7c916e8682a8f30e8df6de21c1c55201bfa11a68441de9291b"
    assert ModelConfig.from_dict(ModelConfig().to_dict()).digest() == digest
    changed = [
        ModelConfig(hidden_units=(64,)),
        ModelConfig(activation="tanh"),
        ModelConfig(optimizer="adam"),
        ModelConfig(learning_rate=0.02),
        ModelConfig(batch_size=64),
        ModelConfig(local_epochs=1),
        ModelConfig(server_optimizer=ServerOptimizerConfig(name="fedavgm")),
        ModelConfig(server_optimizer=ServerOptimizerConfig(name="fedavgm", momentum=0.5)),
        ModelConfig(server_optimizer=ServerOptimizerConfig(name="fedadam")),
        ModelConfig(server_optimizer=ServerOptimizerConfig(name="fedadam", epsilon=1e-4)),
        ModelConfig(server_optimizer=ServerOptimizerConfig(learning_rate=0.5)),
    ]
    digests = {config.digest() for config in changed}
    assert len(digests) == len(changed)
    assert digest not in digests


def test_default_model_has_expected_shapes_and_parameter_count() -> None:
    config = ModelConfig()
    assert weight_shapes(config, N_FEATURES) == [(200, 128), (128,), (128, 1), (1,)]
    assert parameter_count(config, N_FEATURES) == DEFAULT_PARAMETERS
    model = build_model(config, N_FEATURES)
    assert [tuple(w.shape) for w in model.weights] == [(200, 128), (128,), (128, 1), (1,)]
    assert model.count_params() == DEFAULT_PARAMETERS
    assert model.layers[0].activation.__name__ == "relu"
    assert model.layers[-1].activation.__name__ == "sigmoid"
    assert model.loss == "binary_crossentropy"
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.01)


@pytest.mark.parametrize("hidden_units", [(), (16,), (32, 8, 4)])
def test_weight_shapes_match_keras_for_other_architectures(hidden_units: tuple[int, ...]) -> None:
    config = ModelConfig(hidden_units=hidden_units, optimizer="adam")
    model = build_model(config, 7)
    assert [tuple(w.shape) for w in model.weights] == weight_shapes(config, 7)
    assert model.count_params() == parameter_count(config, 7)
    assert isinstance(model.optimizer, keras.optimizers.Adam)


def test_build_model_rejects_bad_feature_count() -> None:
    with pytest.raises(ConfigError):
        build_model(ModelConfig(), 0)


def test_initial_weights_depend_only_on_seed() -> None:
    config = ModelConfig()
    first = initial_weights(config, N_FEATURES, seed=42)
    # Touch the global RNGs and build models in between: the result must not change.
    keras.utils.set_random_seed(999)
    np.random.seed(5)
    build_model(config, N_FEATURES)
    second = initial_weights(config, N_FEATURES, seed=42)
    assert first.dtype == np.float32
    assert first.shape == (DEFAULT_PARAMETERS,)
    assert first.tobytes() == second.tobytes()
    assert not np.array_equal(first, initial_weights(config, N_FEATURES, seed=43))


def test_initial_weights_are_pinned_across_machines() -> None:
    # Every hospital starts round 1 from these exact bytes; a change here (e.g. a numpy
    # release that alters the generator stream) would split a run, so it must be noticed.
    weights = initial_weights(ModelConfig(), 10, seed=0)
    digest = hashlib.sha256(weights.tobytes()).hexdigest()
    assert digest == "a52781d08e2d89c489fde94710a8baa585bd4f9a6f09a8d0b02b1315f7b68314"


def test_initial_weights_are_glorot_uniform_kernels_and_zero_biases() -> None:
    config = ModelConfig()
    kernel, bias, out_kernel, out_bias = unflatten(
        initial_weights(config, N_FEATURES, seed=1), weight_shapes(config, N_FEATURES)
    )
    limit = math.sqrt(6 / (200 + 128))
    assert np.abs(kernel).max() <= limit
    assert np.abs(kernel).max() > 0.95 * limit
    # Uniform on [-limit, limit] has standard deviation limit / sqrt(3).
    assert kernel.std() == pytest.approx(limit / math.sqrt(3), rel=0.02)
    assert np.abs(out_kernel).max() <= math.sqrt(6 / (128 + 1))
    assert not bias.any()
    assert not out_bias.any()


def test_initial_weights_load_into_keras_model() -> None:
    config = ModelConfig()
    vector = initial_weights(config, N_FEATURES, seed=3)
    model = build_model(config, N_FEATURES)
    model.set_weights(unflatten(vector, model))
    assert flatten(model.get_weights()).tobytes() == vector.tobytes()


def test_flatten_unflatten_round_trip() -> None:
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (4,), (4, 1), (1,)]
    arrays = [rng.normal(size=shape).astype(np.float32) for shape in shapes]
    vector = flatten(arrays)
    assert vector.shape == (3 * 4 + 4 + 4 + 1,)
    restored = unflatten(vector, shapes)
    assert [a.shape for a in restored] == shapes
    for original, back in zip(arrays, restored, strict=True):
        assert np.array_equal(original, back)
    restored[0][0, 0] = 123.0  # the pieces are copies, not views into the caller's vector
    assert vector[0] != 123.0


def test_unflatten_rejects_size_mismatch_with_clear_message() -> None:
    config = ModelConfig()
    model = build_model(config, N_FEATURES)
    vector = initial_weights(config, N_FEATURES, seed=0)
    with pytest.raises(ConfigError, match=f"{DEFAULT_PARAMETERS - 1} values.*{DEFAULT_PARAMETERS}"):
        unflatten(vector[:-1], model)
    with pytest.raises(ConfigError):
        unflatten(np.zeros(5, dtype=np.float32), [(2, 2)])
    with pytest.raises(ConfigError, match="one-dimensional"):
        unflatten(np.zeros((2, 2), dtype=np.float32), [(2, 2)])
