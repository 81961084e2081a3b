"""The server-optimizer and early-stopping flags: parsed into the run's configuration, and bad
values refused by the flag's (or its variable's) name before anything runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from common.errors import ConfigError
from common.server_optimizer import ServerOptimizerConfig
from hefl.cli import build_parser, main
from hefl.cli.flags import MODEL_FLAGS


def options(argv: list[str], environ: dict[str, str] | None = None) -> Any:
    """The typed options the command's handler would receive."""
    args = build_parser(environ or {}).parse_args(argv)
    fields = dataclasses.fields(args._command.options)
    return args._command.options(**{f.name: getattr(args, f.name) for f in fields})


def test_the_server_flags_build_the_run_configuration_every_party_agrees_on() -> None:
    argv = ["--server-optimizer", "fedavgm", "--server-momentum", "0.5", "--server-lr", "0.8"]
    for command in (["simulate"], ["coordinator"], ["hospital", "--hospital", "h", "--csv", "c"]):
        model = options([*command, *argv]).model()
        expected = ServerOptimizerConfig(name="fedavgm", learning_rate=0.8, momentum=0.5)
        assert model.server_optimizer == expected, command
    default = options(["simulate"]).model().server_optimizer
    assert default == ServerOptimizerConfig() and default.is_plain_fedavg
    assert {"server_optimizer", "server_lr", "server_momentum"} <= set(MODEL_FLAGS)


def test_the_adaptive_optimizers_take_betas_and_epsilon_also_from_the_environment() -> None:
    environ = {"HEFL_SERVER_OPTIMIZER": "fedyogi", "HEFL_SERVER_BETA2": "0.9"}
    server = options(["simulate", "--server-epsilon", "1e-4"], environ).model().server_optimizer
    assert (server.name, server.beta_1, server.beta_2, server.epsilon) == (
        "fedyogi",
        0.9,
        0.9,
        1e-4,
    )


def test_patience_and_min_delta_reach_the_simulation_and_the_coordinator() -> None:
    simulate = options(["simulate", "--patience", "3", "--min-delta", "0.001"])
    assert (simulate.patience, simulate.min_delta) == (3, 0.001)
    coordinator = options(["coordinator"], {"HEFL_PATIENCE": "2"})
    assert (coordinator.patience, coordinator.min_delta) == (2, 0.0)
    assert options(["simulate"]).patience == 0  # off unless asked for


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--server-optimizer", "adamw"], "--server-optimizer"),
        (["--server-lr", "0"], "--server-lr"),
        (["--server-lr", "fast"], "--server-lr"),
        (["--server-momentum", "1"], "--server-momentum"),
        (["--server-momentum", "-0.5"], "--server-momentum"),
        (["--server-beta1", "1.0"], "--server-beta1"),
        (["--server-beta2", "2"], "--server-beta2"),
        (["--server-epsilon", "0"], "--server-epsilon"),
        (["--patience", "-1"], "--patience"),
        (["--patience", "2.5"], "--patience"),
        (["--min-delta", "-0.1"], "--min-delta"),
    ],
)
def test_a_bad_value_is_refused_naming_its_flag(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser({}).parse_args(["simulate", *argv])
    assert exit_.value.code == 2
    assert named in capsys.readouterr().err


def test_a_bad_variable_is_refused_naming_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser({"HEFL_SERVER_MOMENTUM": "1.5"}).parse_args(["coordinator"])
    assert "HEFL_SERVER_MOMENTUM='1.5'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--server-optimizer", "fedadam", "--server-momentum", "0.9"],
            "--server-momentum applies to fedavgm only, not to --server-optimizer fedadam",
        ),
        (["--server-beta1", "0.8"], "--server-beta1 applies to fedadam and fedyogi only"),
    ],
)
def test_a_server_flag_for_another_optimizer_is_refused_before_anything_runs(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["simulate", *argv, "--out", str(tmp_path / "out")])
    assert code == ConfigError.exit_code
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
