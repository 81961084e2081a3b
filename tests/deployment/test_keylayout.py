"""Key shares: which files each role receives, written safely, never a secret key for the
coordinator, and never another site's signing key for a site. Real keys from a real (small,
default-parameter) ceremony."""

from __future__ import annotations

import base64
import json
import shutil
import stat
import tempfile
from pathlib import Path, PurePosixPath

import pytest
import yaml

from common.crypto import HEConfig, load_coordinator_bundle, load_hospital_bundle
from common.errors import KeyBundleError
from hefl.cli import main
from hefl.keylayout import KeyLayout, Share, flat_key, key_ceremony, path_of
from hefl.keyshare import (
    COORDINATOR_SECRET,
    cluster_secrets,
    hospital_secret,
    install,
    issue_cluster_keys,
    key_files,
    read_secret,
    read_share,
    render,
    secret_data,
    verify,
)

HOSPITALS = ["hospital-1", "hospital-2", "hospital-3"]
HE = HEConfig(scheme="ckks", max_hospitals=8)
HE_HOSPITAL = ["context.seal", "manifest.json", "public_key.seal", "secret_key.seal"]
HE_COORDINATOR = ["context.seal", "manifest.json", "public_key.seal"]


def files(bundle: str, names: list[str], signers: list[str]) -> set[str]:
    return {
        *(f"{bundle}/{n}" for n in names),
        *(f"identities/{s}/signing_key.pem" for s in signers),
        "identities/trust.json",
    }


EXPECTED = {
    Share("coordinator"): files("he-coordinator", HE_COORDINATOR, ["coordinator"]),
    **{Share("hospital", h): files("he-hospital", HE_HOSPITAL, [h]) for h in HOSPITALS},
    Share("hospitals"): files("he-hospital", HE_HOSPITAL, HOSPITALS),
}


@pytest.fixture(scope="module")
def ceremony(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ceremony") / "keys"
    return key_ceremony(root, HE, HOSPITALS, overwrite=False).root


@pytest.fixture(scope="module")
def secrets() -> dict[str, dict[str, bytes]]:
    """The key Secrets of a fresh ceremony (the coordinator's, one per site), name -> flat key
    -> bytes."""
    return {
        m["metadata"]["name"]: {k: base64.b64decode(v) for k, v in m["data"].items()}
        for m in cluster_secrets(HE, HOSPITALS)
    }


def listing(folder: Path) -> set[str]:
    return {str(p) for p in key_files(folder)}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def mount(folder: Path, data: dict[str, bytes]) -> Path:
    """A Secret volume as the kubelet lays it out: ``..data/<key>`` and a symlink per key."""
    timestamped = folder / "..2026_01_01_00_00_00.000000001"
    timestamped.mkdir(parents=True)
    for key, value in data.items():
        (timestamped / key).write_bytes(value)
    (folder / "..data").symlink_to(timestamped.name)
    for key in data:
        (folder / key).symlink_to(f"..data/{key}")
    return folder


@pytest.mark.parametrize("share", list(EXPECTED), ids=str)
def test_each_role_share_holds_exactly_its_files(
    ceremony: Path, tmp_path: Path, share: Share
) -> None:
    dest = tmp_path / "role"
    assert install(read_share(ceremony, share), dest, share) is True
    assert listing(dest) == EXPECTED[share]
    for path in key_files(dest):
        assert (dest / path).read_bytes() == (ceremony / path).read_bytes()


def test_share_files_are_0600_in_0700_folders_with_trust_json_last(
    ceremony: Path, tmp_path: Path
) -> None:
    share = Share("hospital", "hospital-1")
    assert share.paths(HOSPITALS)[-1] == PurePosixPath("identities/trust.json")
    dest = tmp_path / "role"
    install(read_share(ceremony, share), dest, share)
    for path in dest.rglob("*"):
        assert mode(path) == (0o700 if path.is_dir() else 0o600), path
    assert mode(dest) == 0o700
    assert not [p for p in dest.rglob(".*")]  # no temporary file left behind


def test_installed_shares_load_as_their_role(ceremony: Path, tmp_path: Path) -> None:
    for share, name in ((Share("coordinator"), "coordinator"), (Share("hospitals"), "hospital-3")):
        dest = tmp_path / share.role
        install(read_share(ceremony, share), dest, share)
        assert KeyLayout(dest).codec(name).identity.name == name
    load_coordinator_bundle(KeyLayout(tmp_path / "coordinator").he_coordinator)
    load_hospital_bundle(KeyLayout(tmp_path / "hospitals").he_hospital)


def test_the_coordinator_share_holds_no_secret_key(ceremony: Path, tmp_path: Path) -> None:
    dest = tmp_path / "coordinator"
    install(read_share(ceremony, Share("coordinator")), dest, Share("coordinator"))
    assert not list(dest.rglob("secret_key*"))
    assert not (dest / "he-hospital").exists()


def test_a_coordinator_share_with_secret_material_is_refused_before_writing(
    ceremony: Path, tmp_path: Path
) -> None:
    hospital_files = read_share(ceremony, Share("hospitals"))
    dest = tmp_path / "coordinator"
    with pytest.raises(KeyBundleError, match="coordinator"):
        install(hospital_files, dest, Share("coordinator"))
    assert not dest.exists()
    with pytest.raises(KeyBundleError, match="secret"):
        secret_data(hospital_files, Share("coordinator"))


def test_a_ceremony_whose_coordinator_bundle_holds_a_secret_key_is_refused(
    ceremony: Path, tmp_path: Path
) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(ceremony, tampered)
    shutil.copy(tampered / "he-hospital/secret_key.seal", tampered / "he-coordinator")
    with pytest.raises(KeyBundleError, match="secret key"):
        read_share(tampered, Share("coordinator"))


def test_a_secret_key_found_in_the_coordinator_folder_after_writing_fails_verification(
    ceremony: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "coordinator"
    install(read_share(ceremony, Share("coordinator")), dest, Share("coordinator"))
    shutil.copy(ceremony / "he-hospital/secret_key.seal", dest / "secret_key.seal")
    with pytest.raises(KeyBundleError, match="secret"):
        verify(dest, Share("coordinator"))


def test_a_site_share_holds_exactly_its_own_signing_key_and_refuses_anothers(
    ceremony: Path, tmp_path: Path
) -> None:
    share = Share("hospital", "hospital-2")
    files = read_share(ceremony, share)
    signing = [p for p in files if p.name == "signing_key.pem"]
    assert signing == [PurePosixPath("identities/hospital-2/signing_key.pem")]
    foreign = PurePosixPath("identities/hospital-1/signing_key.pem")
    smuggled = {**files, foreign: (ceremony / foreign).read_bytes()}
    dest = tmp_path / "site"
    with pytest.raises(
        KeyBundleError, match=r"hospital-2 would hold the signing key of hospital-1"
    ):
        install(smuggled, dest, share)
    assert not dest.exists()  # refused before anything is written
    with pytest.raises(KeyBundleError, match="hospital-1"):
        secret_data(smuggled, share)
    coordinator_key = PurePosixPath("identities/coordinator/signing_key.pem")
    with pytest.raises(KeyBundleError, match="coordinator"):
        install({**files, coordinator_key: b"x"}, dest, share)
    hospital_key = read_share(ceremony, Share("hospitals"))[foreign]
    coordinator = read_share(ceremony, Share("coordinator"))
    with pytest.raises(KeyBundleError, match="hospital-1"):
        install({**coordinator, foreign: hospital_key}, dest, Share("coordinator"))


def test_another_sites_signing_key_found_in_a_site_folder_after_writing_fails_verification(
    ceremony: Path, tmp_path: Path
) -> None:
    share = Share("hospital", "hospital-2")
    dest = tmp_path / "site"
    install(read_share(ceremony, share), dest, share)
    verify(dest, share)
    stray = dest / "identities/hospital-3/signing_key.pem"
    stray.parent.mkdir()
    shutil.copy(ceremony / "identities/hospital-3/signing_key.pem", stray)
    with pytest.raises(KeyBundleError, match="hospital-3"):
        verify(dest, share)


def test_each_site_installs_only_its_own_share_from_every_sites_share(
    ceremony: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The compose cluster's one-shot key steps: keygen wrote every site's share (hospital-keys),
    keys-hospital-K copies hospital-K's into that site's own volume; again, it changes nothing."""
    everyone = tmp_path / "hospital-keys"
    install(read_share(ceremony, Share("hospitals")), everyone, Share("hospitals"))
    for site in HOSPITALS:
        dest = tmp_path / f"keys-{site}"
        args = ["keys-install", "--ceremony", str(everyone), "--role", "hospital"]
        assert main([*args, "--hospital", site, "--keys", str(dest), "--overwrite"]) == 0
        assert listing(dest) == EXPECTED[Share("hospital", site)]
        assert [p.name for p in (dest / "identities").iterdir() if p.is_dir()] == [site]
        assert KeyLayout(dest).codec(site).identity.name == site
        assert main([*args, "--hospital", site, "--keys", str(dest), "--overwrite"]) == 0
        assert "already in place" in capsys.readouterr().out


def test_installing_the_same_share_again_changes_nothing_and_another_needs_overwrite(
    ceremony: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "role"
    one, two = Share("hospital", "hospital-1"), Share("hospital", "hospital-2")
    install(read_share(ceremony, one), dest, one)
    (dest / "drive.json").write_text("{}")  # not key material: never touched
    assert install(read_share(ceremony, one), dest, one) is False
    with pytest.raises(KeyBundleError, match="--overwrite"):
        install(read_share(ceremony, two), dest, two)
    assert install(read_share(ceremony, two), dest, two, overwrite=True) is True
    assert listing(dest) == EXPECTED[two]
    assert (dest / "drive.json").exists()


def test_a_hospital_the_ceremony_did_not_issue_has_no_share(ceremony: Path) -> None:
    with pytest.raises(KeyBundleError, match=r"no identity 'hospital-9'.*--hospitals"):
        read_share(ceremony, Share("hospital", "hospital-9"))


def test_shares_are_named_consistently() -> None:
    with pytest.raises(KeyBundleError):
        Share("hospital")  # which one?
    with pytest.raises(KeyBundleError):
        Share("coordinator", "hospital-1")
    with pytest.raises(KeyBundleError):
        Share("hospital", "coordinator")
    with pytest.raises(KeyBundleError):
        Share("hospital", "../hospital-1")
    with pytest.raises(KeyBundleError):
        Share("admin")


def test_flat_secret_keys_round_trip_and_unknown_keys_are_refused() -> None:
    for share, expected in EXPECTED.items():
        for text in expected:
            path = PurePosixPath(text)
            assert path_of(flat_key(path)) == path, share
    assert flat_key(PurePosixPath("identities/hospital-2/signing_key.pem")) == (
        "identity.hospital-2.pem"
    )
    assert flat_key(PurePosixPath("he-hospital/secret_key.seal")) == "he-hospital.secret_key.seal"
    for key in ("he-coordinator.secret_key.seal", "notes.txt", "identity..pem"):
        with pytest.raises(KeyBundleError):
            path_of(key)


def test_kubernetes_secrets_hold_each_site_only_its_own_signing_key_and_the_coordinator_none(
    secrets: dict[str, dict[str, bytes]],
) -> None:
    assert set(secrets) == {COORDINATOR_SECRET, *(hospital_secret(h) for h in HOSPITALS)}
    assert hospital_secret("hospital-2") == "hefl-hospital-2-keys"
    coordinator = set(secrets[COORDINATOR_SECRET])
    assert coordinator == {flat_key(PurePosixPath(p)) for p in EXPECTED[Share("coordinator")]}
    assert not [k for k in coordinator if "secret" in k or k.startswith("he-hospital")]
    for hospital in HOSPITALS:
        site = set(secrets[hospital_secret(hospital)])
        expected = EXPECTED[Share("hospital", hospital)]
        assert site == {flat_key(PurePosixPath(p)) for p in expected}
        assert [k for k in site if k.startswith("identity.")] == [f"identity.{hospital}.pem"]
        assert "he-hospital.secret_key.seal" in site


def test_unpack_gives_a_hospital_only_its_own_signing_key_and_it_loads(
    secrets: dict[str, dict[str, bytes]], tmp_path: Path
) -> None:
    mounted = mount(tmp_path / "secret", secrets[hospital_secret("hospital-2")])
    share = Share("hospital", "hospital-2")
    dest = tmp_path / "keys"
    install(read_secret(mounted, share), dest, share)
    assert listing(dest) == EXPECTED[share]
    codec = KeyLayout(dest).codec("hospital-2")
    assert codec.trust.hospitals == tuple(HOSPITALS)
    load_hospital_bundle(KeyLayout(dest).he_hospital)


def test_unpack_gives_the_coordinator_its_public_share_and_it_loads(
    secrets: dict[str, dict[str, bytes]], tmp_path: Path
) -> None:
    mounted = mount(tmp_path / "secret", secrets[COORDINATOR_SECRET])
    dest = tmp_path / "keys"
    install(read_secret(mounted, Share("coordinator")), dest, Share("coordinator"))
    assert listing(dest) == EXPECTED[Share("coordinator")]
    KeyLayout(dest).codec("coordinator")
    load_coordinator_bundle(KeyLayout(dest).he_coordinator)


def test_unpacking_a_site_secret_as_the_coordinator_is_refused(
    secrets: dict[str, dict[str, bytes]], tmp_path: Path
) -> None:
    mounted = mount(tmp_path / "secret", secrets[hospital_secret("hospital-1")])
    with pytest.raises(KeyBundleError, match="secret"):
        read_secret(mounted, Share("coordinator"))


def test_unpacking_another_sites_secret_or_one_holding_every_site_key_is_refused(
    secrets: dict[str, dict[str, bytes]], tmp_path: Path
) -> None:
    share = Share("hospital", "hospital-2")
    other = mount(tmp_path / "other", secrets[hospital_secret("hospital-1")])
    with pytest.raises(KeyBundleError, match=r"hospital-2.*signing key of hospital-1"):
        read_secret(other, share)
    everyone = {k: v for name in HOSPITALS for k, v in secrets[hospital_secret(name)].items()}
    combined = mount(tmp_path / "combined", everyone)  # the former all-hospitals Secret
    with pytest.raises(KeyBundleError, match=r"signing key of hospital-1, hospital-3"):
        read_secret(combined, share)
    assert not (tmp_path / "keys").exists()


def test_secret_manifests_render_as_yaml_and_json_with_the_same_content(
    secrets: dict[str, dict[str, bytes]],
) -> None:
    manifests = cluster_secrets(HE, ["hospital-1"])
    as_yaml = [d for d in yaml.safe_load_all(render(manifests, "yaml")) if d]
    as_json = json.loads(render(manifests, "json"))
    assert as_json["kind"] == "List" and as_json["items"] == as_yaml == manifests
    for manifest in as_yaml:
        assert (manifest["apiVersion"], manifest["kind"], manifest["type"]) == (
            "v1",
            "Secret",
            "Opaque",
        )


def test_cluster_keys_are_issued_once_in_a_private_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    hospitals, coordinator = tmp_path / "hospital-keys", tmp_path / "coordinator-keys"
    assert issue_cluster_keys(hospitals, coordinator, HE, HOSPITALS) is True
    assert list(scratch.iterdir()) == []  # the whole ceremony is gone
    assert listing(hospitals) == EXPECTED[Share("hospitals")]
    assert listing(coordinator) == EXPECTED[Share("coordinator")]
    before = (coordinator / "identities/trust.json").read_bytes()
    assert issue_cluster_keys(hospitals, coordinator, HE, HOSPITALS) is False
    assert (coordinator / "identities/trust.json").read_bytes() == before

    shutil.rmtree(coordinator)
    with pytest.raises(KeyBundleError, match="only one"):
        issue_cluster_keys(hospitals, coordinator, HE, HOSPITALS)
    assert issue_cluster_keys(hospitals, coordinator, HE, HOSPITALS, overwrite=True) is True
    assert (coordinator / "identities/trust.json").read_bytes() != before
    assert (hospitals / "identities/trust.json").read_bytes() == (
        coordinator / "identities/trust.json"
    ).read_bytes()


# -- the subcommands ---------------------------------------------------------------------------


def test_keys_install_copies_a_share_and_reports_errors_with_exit_codes(
    ceremony: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "hospital-1"
    args = ["keys-install", "--ceremony", str(ceremony), "--keys", str(dest)]
    assert main([*args, "--role", "hospital", "--hospital", "hospital-1"]) == 0
    assert listing(dest) == EXPECTED[Share("hospital", "hospital-1")]
    assert main([*args, "--role", "hospital"]) == 2  # which hospital?
    assert "--hospital" in capsys.readouterr().err
    assert main([*args, "--role", "hospital", "--hospital", "hospital-2"]) == 4  # not empty
    same = ["keys-install", "--ceremony", str(ceremony), "--keys", str(ceremony)]
    assert main([*same, "--role", "coordinator"]) == 2


def test_keys_unpack_takes_the_hospital_named_or_from_the_pod_ordinal(
    secrets: dict[str, dict[str, bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOSTNAME", "hefl-hospital-2")  # as in a StatefulSet pod
    mounted = mount(tmp_path / "secret", secrets[hospital_secret("hospital-3")])
    dest = tmp_path / "keys"
    common = ["keys-unpack", "--secret-dir", str(mounted), "--keys", str(dest), "--role"]
    assert main([*common, "hospital", "--identity", "claim"]) == 2  # a Secret is not claimed
    assert main([*common, "hospital", "--identity", "ordinal"]) == 0
    assert listing(dest) == EXPECTED[Share("hospital", "hospital-3")]
    named = ["keys-unpack", "--secret-dir", str(mounted), "--role", "hospital"]
    assert main([*named, "--hospital", "hospital-3", "--keys", str(tmp_path / "named")]) == 0
    assert listing(tmp_path / "named") == EXPECTED[Share("hospital", "hospital-3")]
    # a site's pod given another site's Secret: refused (exit 4), nothing written
    assert main([*named, "--hospital", "hospital-1", "--keys", str(tmp_path / "other")]) == 4
    assert not (tmp_path / "other").exists()


def test_keys_k8s_secrets_prints_manifests_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["keys-k8s-secrets", "--hospitals", "2", "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    names = {item["metadata"]["name"]: set(item["data"]) for item in printed["items"]}
    for site in ("hospital-1", "hospital-2"):
        keys = [k for k in names[hospital_secret(site)] if k.startswith("identity.")]
        assert keys == [f"identity.{site}.pem"]
        assert names[f"hefl-{site}-broker"] == {"password"}  # its own broker login only
    assert names["hefl-broker-credentials"] == {"coordinator-password", "admin-password"}
    assert names["hefl-broker-definitions"] == {"definitions.json"}
    assert list(tmp_path.iterdir()) == []
    assert main(["keys-k8s-secrets", "--hospitals", "9", "--max-hospitals", "8"]) == 2
