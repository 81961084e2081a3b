"""The flag table: one meaning and one environment variable per flag, typed options per command."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from hefl.cli import COMMANDS, FLAGS, build_parser, flag_reference, main
from hefl.cli.options import HospitalOptions, SimulateOptions

ROOT = Path(__file__).resolve().parents[2]


def parse(argv: list[str], environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return build_parser(environ or {}).parse_args(argv)


def test_every_option_of_every_command_is_a_flag_of_the_table() -> None:
    for command in COMMANDS:
        for item in dataclasses.fields(command.options):
            assert item.name in FLAGS, f"{command.name}: {item.name} is not in the flag table"


def test_every_flag_of_the_table_is_taken_by_a_command() -> None:
    used = {item.name for c in COMMANDS for item in dataclasses.fields(c.options)}
    assert set(FLAGS) - used == {"log_level"}  # the one global flag


def test_environment_variables_are_unique_and_named_after_the_project() -> None:
    variables = [flag.variable for flag in FLAGS.values()]
    assert len(set(variables)) == len(variables)
    assert all(v.startswith("HEFL_") for v in variables)


def test_hospitals_is_a_count_in_every_command_that_takes_it() -> None:
    for command in ("simulate", "partition --out o", "keygen"):
        assert parse([*command.split(), "--hospitals", "7"]).hospitals == 7
    with pytest.raises(SystemExit):
        parse(["simulate", "--hospitals", "hospital-1,hospital-2"])


def test_the_environment_gives_defaults_and_the_command_line_wins() -> None:
    environ = {"HEFL_ROUNDS": "3", "HEFL_HIDDEN": "16,8", "HEFL_NO_BASELINES": "yes"}
    args = parse(["simulate"], environ)
    assert (args.rounds, args.hidden, args.no_baselines) == (3, (16, 8), True)
    assert parse(["simulate", "--rounds", "5"], environ).rounds == 5


def test_an_empty_variable_counts_as_unset() -> None:
    assert parse(["simulate"], {"HEFL_ROUNDS": "", "HEFL_STORE": ""}).rounds == 10
    assert parse(["simulate"], {"HEFL_STORE": ""}).store is None


def test_a_bad_variable_is_refused_naming_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(["simulate"], {"HEFL_ROUNDS": "ten"})
    assert exit_.value.code == 2
    assert "HEFL_ROUNDS='ten'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["simulate"], {"HEFL_SCHEME": "rsa"})
    assert "HEFL_SCHEME" in capsys.readouterr().err


def test_required_flags_are_satisfied_by_their_variables(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse(["hospital"])
    assert "--hospital" in capsys.readouterr().err
    args = parse(["hospital"], {"HEFL_HOSPITAL": "hospital-2", "HEFL_CSV": "/data/h2.csv"})
    assert (args.hospital, args.csv) == ("hospital-2", Path("/data/h2.csv"))


def test_per_command_defaults_keep_one_meaning() -> None:
    assert parse(["simulate"]).out == Path("out/demo")
    assert parse(["hospital", "--hospital", "h", "--csv", "c"]).out == Path("out")
    assert parse(["simulate"]).store is None
    assert parse(["coordinator"]).store == "store"


def test_handlers_receive_typed_options() -> None:
    args = parse(["hospital", "--hospital", "hospital-1", "--csv", "x.csv", "--rounds", "2"])
    command = args._command
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(command.options)}
    options = command.options(**values)
    assert isinstance(options, HospitalOptions)
    assert options.model().hidden_units == (128,)
    assert options.rounds == 2
    assert SimulateOptions in {c.options for c in COMMANDS}


def test_simulate_refuses_more_hospitals_than_the_encrypted_sum_holds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["simulate", "--hospitals", "5", "--max-hospitals", "4", "--out", "unused"])
    assert code == 2
    assert "--max-hospitals 4 < --hospitals 5" in capsys.readouterr().err


def test_partition_by_column_needs_the_column(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["partition", "--partition", "column", "--out", "unused"]) == 2
    assert "--column" in capsys.readouterr().err


def test_the_configuration_reference_is_the_flag_table() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    stale = "docs/configuration.md is stale: paste the output of hefl.cli.flag_reference()"
    assert flag_reference() in text, stale


def test_one_default_broker_url_and_data_path() -> None:
    from common.data.sources import DEFAULT_DATASET
    from common.transport.settings import DEFAULT_BROKER_URL

    assert FLAGS["broker"].default == DEFAULT_BROKER_URL
    assert FLAGS["dataset"].default == DEFAULT_DATASET
    assert os.path.isabs(DEFAULT_DATASET)


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_every_subcommand_prints_its_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: hefl {command}" in text and "$HEFL_" in text
