"""The broker's CA and password file at the command line: checked before anything else runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from hefl.cli import main
from hefl.cli.flags import FLAGS


def hospital(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "hospital",
        "--hospital",
        "hospital-1",
        "--csv",
        str(tmp_path / "unused.csv"),
        "--keys",
        str(tmp_path / "keys"),
        *extra,
    ]


def test_the_broker_flags_have_their_environment_variables() -> None:
    assert FLAGS["broker_ca"].variable == "HEFL_BROKER_CA"
    assert FLAGS["broker_password_file"].variable == "HEFL_BROKER_PASSWORD_FILE"


@pytest.mark.parametrize("command", ["hospital", "coordinator"])
def test_a_url_with_a_password_and_a_password_file_is_refused_without_showing_either(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret-from-file\n")
    url = "amqps://hospital-1:s3cret-in-url@rabbitmq:5671/hefl"
    args = hospital(tmp_path) if command == "hospital" else ["coordinator"]
    code = main([*args, "--broker", url, "--broker-password-file", str(secret)])
    err = capsys.readouterr().err
    assert code == 2
    assert "remove the password from the URL" in err
    assert "s3cret" not in err


def test_the_password_file_may_come_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEFL_BROKER_PASSWORD_FILE", str(tmp_path / "missing"))
    assert main(hospital(tmp_path, "--broker", "amqps://hospital-1@rabbitmq/hefl")) == 2
    assert "cannot read the broker password file" in capsys.readouterr().err


def test_a_missing_broker_ca_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(hospital(tmp_path, "--broker-ca", str(tmp_path / "ca.pem")))
    assert code == 2
    assert f"no broker CA certificate at {tmp_path / 'ca.pem'}" in capsys.readouterr().err


def test_a_password_folder_holds_one_file_per_participant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "passwords"
    folder.mkdir()
    (folder / "hospital-2").write_text("theirs\n")
    code = main(
        hospital(
            tmp_path, "--broker", "amqps://rabbitmq/hefl", "--broker-password-file", str(folder)
        )
    )
    assert code == 2
    assert (
        f"cannot read the broker password file {folder / 'hospital-1'}" in capsys.readouterr().err
    )
