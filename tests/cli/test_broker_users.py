"""``hefl broker-users``: per-participant broker logins for a broker the operator runs."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from hefl.cli import main

NAMES = {"admin", "coordinator", "hospital-1", "hospital-2", "hospital-3"}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_one_private_password_file_per_participant_and_the_definitions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "broker"
    assert main(["broker-users", "--hospitals", "3", "--out", str(out)]) == 0
    folder = out / "passwords"
    assert {p.name for p in folder.iterdir()} == NAMES
    assert mode(folder) == 0o700
    assert all(mode(p) == 0o600 for p in folder.iterdir())
    assert mode(out / "definitions.json") == 0o644  # salted hashes, read by the broker's user
    rendered = json.loads((out / "definitions.json").read_text())
    assert {u["name"] for u in rendered["users"]} == NAMES
    assert "import_definitions" in capsys.readouterr().out
    text = (out / "definitions.json").read_text()
    for name in NAMES:  # only salted hashes, never a password
        assert (folder / name).read_text().strip() not in text


def test_a_second_run_keeps_the_passwords_and_adds_new_sites(tmp_path: Path) -> None:
    out = tmp_path / "broker"
    assert main(["broker-users", "--hospitals", "3", "--out", str(out)]) == 0
    before = {p.name: p.read_text() for p in (out / "passwords").iterdir()}
    assert main(["broker-users", "--hospitals", "4", "--out", str(out)]) == 0
    after = {p.name: p.read_text() for p in (out / "passwords").iterdir()}
    assert set(after) == set(before) | {"hospital-4"}
    assert all(after[name] == before[name] for name in before)
