"""Key ceremony and bundles: roles, file modes, digests, and refusal of secret keys."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
from pathlib import Path

import pytest

from common.crypto import (
    CkksCipher,
    HeAggregator,
    HEConfig,
    load_coordinator_bundle,
    load_hospital_bundle,
    open_aggregator,
    open_cipher,
    run_key_ceremony,
)
from common.crypto.keys import CONTEXT, MANIFEST, PUBLIC_KEY, SECRET_KEY
from common.errors import KeyBundleError


@pytest.fixture(params=["ckks", "bfv"])
def bundles(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path]:
    hospital, coordinator = tmp_path / "hospital", tmp_path / "coordinator"
    run_key_ceremony(HEConfig(scheme=request.param), hospital, coordinator)
    return hospital, coordinator


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_bundle_files_are_0600_in_0700_directories(bundles: tuple[Path, Path]) -> None:
    for directory in bundles:
        assert mode(directory) == 0o700
        files = sorted(path.name for path in directory.iterdir())
        assert files, directory
        for path in directory.iterdir():
            assert mode(path) == 0o600, path


def test_hospital_has_the_secret_key_and_the_coordinator_does_not(
    bundles: tuple[Path, Path],
) -> None:
    hospital, coordinator = bundles
    assert sorted(p.name for p in hospital.iterdir()) == [CONTEXT, MANIFEST, PUBLIC_KEY, SECRET_KEY]
    assert sorted(p.name for p in coordinator.iterdir()) == [CONTEXT, MANIFEST, PUBLIC_KEY]


def test_manifests_record_role_scheme_config_and_digests(bundles: tuple[Path, Path]) -> None:
    hospital, coordinator = bundles
    h = json.loads((hospital / MANIFEST).read_text())
    c = json.loads((coordinator / MANIFEST).read_text())
    assert (h["role"], c["role"]) == ("hospital", "coordinator")
    assert h["scheme"] == c["scheme"] == h["config"]["scheme"]
    context = (coordinator / CONTEXT).read_bytes()
    public_key = (coordinator / PUBLIC_KEY).read_bytes()
    assert h["param_digest"] == c["param_digest"] == hashlib.sha256(context).hexdigest()
    assert h["key_id"] == c["key_id"] == hashlib.sha256(public_key).hexdigest()
    assert (hospital / CONTEXT).read_bytes() == context
    assert SECRET_KEY in h["files"] and SECRET_KEY not in c["files"]
    assert h["created"]


def test_both_bundles_load_and_agree(bundles: tuple[Path, Path]) -> None:
    hospital = load_hospital_bundle(bundles[0])
    coordinator = load_coordinator_bundle(bundles[1])
    assert hospital.manifest.key_id == coordinator.manifest.key_id
    assert hospital.manifest.config == coordinator.manifest.config
    assert not hasattr(coordinator, "secret_key")
    assert "secret_key=" not in repr(hospital)  # key bytes never end up in logs
    assert repr(hospital.secret_key[:24])[2:-1] not in repr(hospital)


def test_loading_a_hospital_bundle_as_coordinator_is_refused(bundles: tuple[Path, Path]) -> None:
    with pytest.raises(KeyBundleError, match="secret key"):
        load_coordinator_bundle(bundles[0])
    with pytest.raises(KeyBundleError, match="secret key"):
        open_aggregator(bundles[0])


def test_a_coordinator_bundle_with_a_secret_key_dropped_in_is_refused(
    bundles: tuple[Path, Path],
) -> None:
    hospital, coordinator = bundles
    shutil.copy(hospital / SECRET_KEY, coordinator / SECRET_KEY)
    with pytest.raises(KeyBundleError, match="must never hold one"):
        load_coordinator_bundle(coordinator)


def test_a_manifest_claiming_role_hospital_is_refused_as_coordinator(
    bundles: tuple[Path, Path], tmp_path: Path
) -> None:
    hospital, _ = bundles
    copy = tmp_path / "copy"
    shutil.copytree(hospital, copy)
    (copy / SECRET_KEY).unlink()
    with pytest.raises(KeyBundleError, match="role is 'hospital'"):
        load_coordinator_bundle(copy)


def test_a_coordinator_bundle_cannot_open_a_cipher(bundles: tuple[Path, Path]) -> None:
    with pytest.raises(KeyBundleError, match="role is 'coordinator'"):
        open_cipher(bundles[1])


def test_bundle_objects_of_the_wrong_role_are_refused(bundles: tuple[Path, Path]) -> None:
    hospital = load_hospital_bundle(bundles[0])
    with pytest.raises(KeyBundleError, match="coordinator bundle"):
        HeAggregator(hospital)  # type: ignore[arg-type]
    if hospital.manifest.config.scheme == "bfv":
        with pytest.raises(KeyBundleError, match="needs a ckks bundle"):
            CkksCipher.from_bundle(hospital)


@pytest.mark.parametrize("name", [CONTEXT, PUBLIC_KEY, SECRET_KEY])
def test_a_tampered_file_is_named(bundles: tuple[Path, Path], name: str) -> None:
    path = bundles[0] / name
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(KeyBundleError, match=f"{name}: SHA-256 does not match"):
        load_hospital_bundle(bundles[0])


@pytest.mark.parametrize("name", [CONTEXT, PUBLIC_KEY])
def test_a_missing_file_is_named(bundles: tuple[Path, Path], name: str) -> None:
    (bundles[1] / name).unlink()
    with pytest.raises(KeyBundleError, match=name):
        load_coordinator_bundle(bundles[1])


def test_a_missing_or_broken_manifest_is_reported(bundles: tuple[Path, Path]) -> None:
    hospital, coordinator = bundles
    (hospital / MANIFEST).write_text("{broken")
    with pytest.raises(KeyBundleError, match="not valid JSON"):
        load_hospital_bundle(hospital)
    (coordinator / MANIFEST).unlink()
    with pytest.raises(KeyBundleError, match=MANIFEST):
        load_coordinator_bundle(coordinator)


def test_a_manifest_whose_config_contradicts_the_context_is_refused(
    bundles: tuple[Path, Path],
) -> None:
    coordinator = bundles[1]
    manifest = json.loads((coordinator / MANIFEST).read_text())
    manifest["config"]["poly_modulus_degree"] = 8192
    (coordinator / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(KeyBundleError, match="context declares"):
        load_coordinator_bundle(coordinator)


def test_existing_bundles_are_not_overwritten_unless_asked(
    bundles: tuple[Path, Path],
) -> None:
    hospital, coordinator = bundles
    before = load_hospital_bundle(hospital).manifest.key_id
    with pytest.raises(KeyBundleError, match="overwrite=True"):
        run_key_ceremony(HEConfig(), hospital, coordinator)
    assert load_hospital_bundle(hospital).manifest.key_id == before
    ceremony = run_key_ceremony(HEConfig(), hospital, coordinator, overwrite=True)
    assert ceremony.hospital.key_id != before
    assert load_coordinator_bundle(coordinator).manifest.key_id == ceremony.coordinator.key_id
    assert mode(hospital / SECRET_KEY) == 0o600


def test_one_directory_cannot_hold_both_roles(tmp_path: Path) -> None:
    with pytest.raises(KeyBundleError, match="different directories"):
        run_key_ceremony(HEConfig(), tmp_path / "same", tmp_path / "same")
    assert not (tmp_path / "same").exists()


def test_a_context_below_128_bit_security_is_refused(bundles: tuple[Path, Path]) -> None:
    """Even with consistent digests, a context declaring sec=0 never reaches SEAL."""
    coordinator = bundles[1]
    context = bytearray((coordinator / CONTEXT).read_bytes())
    context[0:4] = (0).to_bytes(4, "little")  # Pyfhel's leading i32 security level
    (coordinator / CONTEXT).write_bytes(bytes(context))
    manifest = json.loads((coordinator / MANIFEST).read_text())
    digest = hashlib.sha256(bytes(context)).hexdigest()
    manifest["files"][CONTEXT] = manifest["param_digest"] = digest
    (coordinator / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(KeyBundleError, match="0-bit security, not 128"):
        load_coordinator_bundle(coordinator)
