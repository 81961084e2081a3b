"""The server optimizers against the formulas written out by hand, and their configuration.

The references below use Reddi et al.'s form (pseudo-gradient ``delta = average - global``,
``beta * m + (1 - beta) * delta``), not the TFF form the module implements, so an error in the
sign convention, the bias correction or where epsilon goes shows up as a difference.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from common.errors import ConfigError
from common.protocol.history import EMPTY_CHAIN, aggregate_chain, extend_chain
from common.server_optimizer import (
    DEFAULT_SERVER_CONFIG,
    YOGI_INITIAL_PRECONDITIONER,
    ServerOptimizerConfig,
    global_models,
    initial_state,
    step,
)

RNG = np.random.default_rng(7)
N = 12
INITIAL = RNG.normal(size=N)
# Round averages drifting away from the initial model, with weights that change sign.
AVERAGES = [INITIAL + 0.05 * (r + 1) * RNG.normal(size=N) for r in range(5)]


def run(config: ServerOptimizerConfig) -> list[np.ndarray]:
    return global_models(INITIAL, AVERAGES, config)


def reference_sgd(lr: float, momentum: float) -> list[np.ndarray]:
    x, v, out = INITIAL.copy(), np.zeros(N), []
    for average in AVERAGES:
        v = momentum * v + (x - average)
        x = x - lr * v
        out.append(x)
    return out


def reference_adaptive(
    lr: float, beta_1: float, beta_2: float, epsilon: float, *, yogi: bool
) -> list[np.ndarray]:
    x, m, out = INITIAL.copy(), np.zeros(N), []
    v = np.full(N, YOGI_INITIAL_PRECONDITIONER) if yogi else np.zeros(N)
    for t, average in enumerate(AVERAGES, start=1):
        delta = average - x  # Reddi's pseudo-gradient
        m = beta_1 * m + (1 - beta_1) * delta
        if yogi:
            v = v - (1 - beta_2) * delta**2 * np.sign(v - delta**2)
        else:
            v = beta_2 * v + (1 - beta_2) * delta**2
        rate = lr * math.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        x = x + rate * m / (np.sqrt(v) + epsilon)
        out.append(x)
    return out


def assert_models(ours: list[np.ndarray], reference: list[np.ndarray]) -> None:
    assert len(ours) == len(reference) == len(AVERAGES)
    for round_, (a, b) in enumerate(zip(ours, reference, strict=True), start=1):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=f"round {round_}")


def test_plain_fedavg_takes_each_round_average_exactly() -> None:
    for model, average in zip(run(DEFAULT_SERVER_CONFIG), AVERAGES, strict=True):
        assert np.array_equal(model, average)
        assert model.dtype == np.float64


def test_fedavg_with_a_server_learning_rate_steps_towards_the_average() -> None:
    assert_models(run(ServerOptimizerConfig(learning_rate=0.5)), reference_sgd(0.5, 0.0))


@pytest.mark.parametrize(("lr", "momentum"), [(1.0, 0.9), (0.7, 0.5), (1.0, 0.0)])
def test_fedavgm_is_server_sgd_with_momentum(lr: float, momentum: float) -> None:
    config = ServerOptimizerConfig(name="fedavgm", learning_rate=lr, momentum=momentum)
    assert_models(run(config), reference_sgd(lr, momentum))


@pytest.mark.parametrize(
    ("lr", "beta_1", "beta_2", "epsilon"),
    [(0.01, 0.9, 0.99, 1e-3), (0.1, 0.5, 0.999, 1e-7), (0.05, 0.0, 0.9, 1e-2)],
)
def test_fedadam_matches_the_adam_formulas(
    lr: float, beta_1: float, beta_2: float, epsilon: float
) -> None:
    config = ServerOptimizerConfig(
        name="fedadam", learning_rate=lr, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon
    )
    assert_models(run(config), reference_adaptive(lr, beta_1, beta_2, epsilon, yogi=False))


def test_fedyogi_matches_the_yogi_formulas() -> None:
    config = ServerOptimizerConfig(name="fedyogi", learning_rate=0.02, beta_2=0.9)
    assert_models(run(config), reference_adaptive(0.02, 0.9, 0.9, 1e-3, yogi=True))


def test_the_first_adam_step_moves_each_weight_by_about_the_learning_rate() -> None:
    # Bias correction: after one round m/(sqrt(v)) is the sign of the pseudo-gradient.
    config = ServerOptimizerConfig(name="fedadam", learning_rate=0.01, epsilon=1e-12)
    new, state = step(INITIAL, AVERAGES[0], initial_state(config, N))
    np.testing.assert_allclose(new - INITIAL, 0.01 * np.sign(AVERAGES[0] - INITIAL), rtol=1e-6)
    assert state.step == 1


def test_step_changes_none_of_its_arguments() -> None:
    config = ServerOptimizerConfig(name="fedadam")
    global_, average = INITIAL.copy(), AVERAGES[0].copy()
    state = initial_state(config, N)
    first, second = state.first.copy(), state.second.copy()
    _, after = step(global_, average, state)
    _, again = step(global_, average, after)
    assert np.array_equal(global_, INITIAL) and np.array_equal(average, AVERAGES[0])
    assert np.array_equal(state.first, first) and np.array_equal(state.second, second)
    assert (state.step, after.step, again.step) == (0, 1, 2)
    assert not np.array_equal(after.first, again.first)


def test_a_replay_gives_bit_identical_models() -> None:
    config = ServerOptimizerConfig(name="fedyogi")
    first, second = run(config), run(config)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_a_step_refuses_vectors_of_different_lengths() -> None:
    state = initial_state(ServerOptimizerConfig(name="fedadam"), N)
    with pytest.raises(ConfigError, match="one vector each"):
        step(INITIAL, AVERAGES[0][:-1], state)
    with pytest.raises(ConfigError, match="one vector each"):
        step(INITIAL[:-1], AVERAGES[0][:-1], state)


# -- configuration ------------------------------------------------------------------------------


def test_each_optimizer_gets_its_defaults_and_only_its_parameters() -> None:
    assert repr(DEFAULT_SERVER_CONFIG) == "ServerOptimizerConfig(name='fedavg', learning_rate=1.0)"
    assert DEFAULT_SERVER_CONFIG.is_plain_fedavg
    assert not ServerOptimizerConfig(learning_rate=0.5).is_plain_fedavg
    momentum = ServerOptimizerConfig(name="fedavgm")
    assert (momentum.learning_rate, momentum.momentum, momentum.beta_1) == (1.0, 0.9, None)
    adam = ServerOptimizerConfig(name="fedadam", learning_rate=1)
    assert (adam.learning_rate, adam.beta_1, adam.beta_2, adam.epsilon) == (1.0, 0.9, 0.99, 1e-3)
    assert isinstance(adam.learning_rate, float) and adam.momentum is None
    assert ServerOptimizerConfig.from_dict(adam.to_dict()) == adam
    assert ServerOptimizerConfig(name="fedyogi").learning_rate == 0.01


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"name": "fedsgd"}, "--server-optimizer) must be one of fedavg, fedavgm, fedadam"),
        ({"name": "fedadam", "momentum": 0.9}, "--server-momentum applies to fedavgm only"),
        ({"name": "fedavg", "beta_1": 0.9}, "--server-beta1 applies to fedadam and fedyogi"),
        ({"name": "fedavgm", "epsilon": 1e-3}, "--server-epsilon applies to fedadam"),
        ({"learning_rate": 0.0}, "--server-lr) must be > 0"),
        ({"learning_rate": -1.0}, "--server-lr) must be > 0"),
        ({"learning_rate": math.inf}, "--server-lr) must be finite"),
        ({"learning_rate": "1"}, "--server-lr) must be a number"),
        ({"learning_rate": True}, "--server-lr) must be a number"),
        ({"name": "fedavgm", "momentum": 1.0}, "--server-momentum) must be in [0, 1)"),
        ({"name": "fedavgm", "momentum": -0.1}, "--server-momentum) must be in [0, 1)"),
        ({"name": "fedadam", "beta_1": 1.0}, "--server-beta1) must be in [0, 1)"),
        ({"name": "fedyogi", "beta_2": 1.5}, "--server-beta2) must be in [0, 1)"),
        ({"name": "fedadam", "epsilon": 0.0}, "--server-epsilon) must be > 0"),
        ({"name": "fedadam", "epsilon": math.nan}, "--server-epsilon) must be finite"),
    ],
    ids=lambda value: repr(value)[:40] if isinstance(value, dict) else None,
)
def test_bad_settings_are_refused_naming_their_flag(values: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        ServerOptimizerConfig(**values)


def test_from_dict_refuses_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="unknown server_optimizer keys: lr"):
        ServerOptimizerConfig.from_dict({"name": "fedadam", "lr": 0.1})


# -- the history chain --------------------------------------------------------------------------


def test_the_history_chain_commits_to_every_aggregate_in_order() -> None:
    a, b, c = ("a" * 64, "b" * 64, "c" * 64)
    assert aggregate_chain([]) == EMPTY_CHAIN
    assert aggregate_chain([a, b, c]) == extend_chain(extend_chain(extend_chain("", a), b), c)
    chains = {aggregate_chain(order) for order in ([a, b, c], [b, a, c], [a, b], [a, c, c])}
    assert len(chains) == 4
    assert re.fullmatch("[0-9a-f]{64}", aggregate_chain([a]))
