"""Container roles live in hefl: the shell around the images dispatches, it decides nothing.

The key shares and identities themselves are tested in test_keylayout.py and test_identity.py;
this checks that the scripts and manifests leave those decisions to hefl, and that the one-shot
partition of a cluster keeps its shards.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from hefl.cli import FLAGS, main
from hefl.cli.flags import DEFAULT_HOSPITALS, IDENTITY_MODES, KEY_ROLES
from hefl.identity import MODES
from hefl.keylayout import ROLES
from testkit.cluster import sample_csv

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ("docker/entrypoint.sh", "k8s/make-secrets.sh")
#: What deciding which key file goes where looks like in shell.
FILE_SELECTION = {
    "copies or moves files": r"(?<![\w-])(cp|mv|install|ln|rsync|tar)\s",  # not keys-install
    "loops": r"\b(for|while)\b",
    "kubectl's --from-file": r"--from-file",
    "names of key files": r"he-hospital|he-coordinator|signing_key|trust\.json|identity\.",
    "the HE secret key": r"secret_key",
    "file permissions": r"\bchmod\b.*keys|umask",
    "a default number of hospitals": r"HOSPITALS:-|MAX_HOSPITALS",
}


def code_lines(path: str) -> str:
    """The script without its comments (they may explain what hefl decides)."""
    lines = (ROOT / path).read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_scripts_hold_no_file_selection_logic(script: str) -> None:
    code = code_lines(script)
    found = {what: re.findall(rx, code) for what, rx in FILE_SELECTION.items()}
    assert {what: hits for what, hits in found.items() if hits} == {}


def test_the_file_selection_check_would_catch_the_former_scripts() -> None:
    former = 'for d in "$work"/identities/hospital-*; do cp -a "$d" /keys/identities/; done'
    caught = [what for what, rx in FILE_SELECTION.items() if re.search(rx, former)]
    assert caught == ["copies or moves files", "loops"]
    assert re.search(FILE_SELECTION["copies or moves files"], "install -m 600 key /keys/")
    assert not re.search(FILE_SELECTION["copies or moves files"], "exec hefl keys-install ")


@pytest.mark.parametrize(
    "script", [*SCRIPTS, "tools/container_cluster.sh", "docker/healthcheck.sh"]
)
def test_the_scripts_parse(script: str) -> None:
    shell = "sh" if (ROOT / script).read_text().startswith("#!/bin/sh") else "bash"
    done = subprocess.run([shell, "-n", str(ROOT / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_entrypoint_role_runs_a_hefl_subcommand_that_exists() -> None:
    roles = dict(
        re.findall(r"^\s*([a-z-]+)\) exec hefl ([a-z0-9-]+)", code_lines(SCRIPTS[0]), re.M)
    )
    assert roles == {
        "keygen": "keys-cluster",
        "install-keys": "keys-install",
        "partition": "partition",
        "coordinator": "coordinator",
        "hospital": "hospital-replica",
        "unpack-keys": "keys-unpack",
    }
    from hefl.cli import COMMANDS

    assert set(roles.values()) <= {c.name for c in COMMANDS}


def test_the_flag_choices_are_the_modules_own() -> None:
    assert KEY_ROLES == ROLES
    assert IDENTITY_MODES == MODES


def test_one_default_number_of_hospital_identities_for_compose_and_kubernetes() -> None:
    assert FLAGS["hospitals"].default == DEFAULT_HOSPITALS
    compose = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
    assert compose["x-hefl-env"]["HEFL_HOSPITALS"] == "${HEFL_HOSPITALS:-}"
    config = next(
        doc
        for doc in yaml.safe_load_all((ROOT / "k8s/configmap.yaml").read_text())
        if doc["metadata"]["name"] == "hefl-config"
    )
    assert config["data"]["HEFL_HOSPITALS"] == ""  # empty: hefl's default
    for path in [
        *ROOT.glob("k8s/*"),
        *ROOT.glob("docker/*.*"),
        ROOT / "tools/container_cluster.sh",
    ]:
        if not path.is_file():  # e.g. docker/.secrets, made by `make up`
            continue
        text = path.read_text()
        assert "HEFL_MAX_HOSPITALS" not in text, path
        assert "HEFL_SOURCE_CSV" not in text, path


def test_the_containers_name_their_folders_through_hefl_variables() -> None:
    from hefl.sites.compose import override

    base = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
    sites = override(base, sites=2, issued=3)["services"]
    known = {flag.variable for flag in FLAGS.values()} | {"HEFL_ARGS"}
    for name, service in [*base["services"].items(), *sites.items()]:
        for variable in service.get("environment", {}):
            assert not variable.startswith("HEFL_") or variable in known, (name, variable)


def test_the_cluster_script_leaves_the_sites_to_hefl() -> None:
    """No site is named, counted or scaled in shell: hefl.sites writes the sites' services."""
    code = code_lines("tools/container_cluster.sh")
    assert re.findall(r"hospital-[0-9$]|--scale|claims", code) == []
    assert "-m hefl.sites compose" in code


# -- the cluster's one-shot partition ------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sample_csv(tmp_path_factory.mktemp("data") / "sample.csv", patients=300)


def split(dataset: Path, out: Path, *extra: str) -> int:
    return main(
        ["partition", "--dataset", str(dataset), "--out", str(out), "--partition", "iid", *extra]
    )


def test_partition_again_with_the_same_split_keeps_the_shards(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert split(dataset, tmp_path, "--hospitals", "3") == 0
    shards = sorted(p.name for p in tmp_path.iterdir())
    assert shards == ["hospital-1.csv", "hospital-2.csv", "hospital-3.csv", "partition.json"]
    stamp = (tmp_path / "hospital-1.csv").stat().st_mtime_ns
    capsys.readouterr()
    assert split(dataset, tmp_path, "--hospitals", "3") == 0
    assert "kept" in capsys.readouterr().out
    assert (tmp_path / "hospital-1.csv").stat().st_mtime_ns == stamp


def test_partition_into_another_split_needs_overwrite(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert split(dataset, tmp_path, "--hospitals", "3") == 0
    assert split(dataset, tmp_path, "--hospitals", "4") == 2
    assert "n_hospitals 3 (now 4)" in capsys.readouterr().err
    assert split(dataset, tmp_path, "--hospitals", "4", "--overwrite") == 0
    assert json.loads((tmp_path / "partition.json").read_text())["n_hospitals"] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
