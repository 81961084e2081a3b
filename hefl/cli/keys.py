"""The ``keys-*`` subcommands: hand each role its share of a key ceremony.

Containers and Kubernetes call these instead of deciding in shell which key file goes where
(``docker/entrypoint.sh``, ``k8s/make-secrets.sh``): ``hefl.keylayout`` decides, ``hefl.keyshare``
reads and writes the files. Registered in ``hefl.cli.commands.COMMANDS``; every field of an
options class is a flag of ``hefl.cli.flags.FLAGS``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import ConfigError

# -- options -------------------------------------------------------------------------------------


def he_config(scheme: str, max_hospitals: int, ckks_prime_bits: int) -> Any:
    """The key ceremony's ``HEConfig`` from the flags (``--ckks-prime-bits``: CKKS only)."""
    from common.crypto import CKKS, HEConfig, ckks_parameters

    chain = ckks_parameters(ckks_prime_bits) if scheme == CKKS else {}
    return HEConfig(scheme=scheme, max_hospitals=max_hospitals, **chain)


@dataclass(frozen=True, kw_only=True)
class CeremonyOptions:
    """A fresh key ceremony: how many hospital identities, which scheme, which sum bound."""

    hospitals: int
    scheme: str
    max_hospitals: int
    ckks_prime_bits: int

    def he(self) -> Any:
        if self.max_hospitals < self.hospitals:
            raise ConfigError(
                f"--max-hospitals {self.max_hospitals} < --hospitals {self.hospitals}: the "
                "encrypted sum must have room for every hospital identity"
            )
        return he_config(self.scheme, self.max_hospitals, self.ckks_prime_bits)

    def names(self) -> list[str]:
        from common.protocol.runconfig import hospital_names

        return list(hospital_names(self.hospitals))


@dataclass(frozen=True, kw_only=True)
class KeysInstallOptions:
    ceremony: Path
    role: str
    hospital: str | None
    keys: Path
    overwrite: bool


@dataclass(frozen=True, kw_only=True)
class KeysClusterOptions(CeremonyOptions):
    keys: Path
    coordinator_keys: Path
    overwrite: bool


@dataclass(frozen=True, kw_only=True)
class KeysSecretsOptions(CeremonyOptions):
    format: str


@dataclass(frozen=True, kw_only=True)
class KeysUnpackOptions:
    secret_dir: Path
    role: str
    hospital: str | None
    identity: str | None
    keys: Path
    overwrite: bool


# -- handlers ------------------------------------------------------------------------------------


def keys_install(options: KeysInstallOptions) -> int:
    from hefl.keyshare import install, read_share

    if _same_folder(options.ceremony, options.keys):
        raise ConfigError(f"--keys {options.keys} is the ceremony folder itself: name another")
    share = _share(options.role, options.hospital, None)
    changed = install(
        read_share(options.ceremony, share), options.keys, share, overwrite=options.overwrite
    )
    _report(changed, share, options.keys)
    return 0


def keys_cluster(options: KeysClusterOptions) -> int:
    from hefl.keyshare import issue_cluster_keys

    if _same_folder(options.keys, options.coordinator_keys):
        raise ConfigError("--keys and --coordinator-keys must be different folders")
    issued = issue_cluster_keys(
        options.keys,
        options.coordinator_keys,
        options.he(),
        options.names(),
        overwrite=options.overwrite,
    )
    if issued:
        print(f"issued {options.hospitals} hospital identities")
        print(f"every hospital's share (with the HE secret key): {options.keys}")
        print(f"the coordinator's share (public HE material): {options.coordinator_keys}")
    else:
        print(f"kept the keys in {options.keys} and {options.coordinator_keys}")
    return 0


def keys_k8s_secrets(options: KeysSecretsOptions) -> int:
    from hefl.keyshare import cluster_secrets, render
    from hefl.sites import broker

    names = options.names()
    manifests = cluster_secrets(options.he(), names)
    passwords = broker.issue_passwords([*broker.participants(names), broker.ADMIN], {})
    admin = passwords.pop(broker.ADMIN)
    manifests += broker.k8s_secrets(names, passwords, admin, broker.issue_tls())
    sys.stdout.write(render(manifests, options.format) + "\n")
    listed = ", ".join(m["metadata"]["name"] for m in manifests)
    print(f"Secrets {listed}: {options.hospitals} hospital identities", file=sys.stderr)
    return 0


def keys_unpack(options: KeysUnpackOptions) -> int:
    from hefl.keyshare import install, read_secret

    share = _share(options.role, options.hospital, options.identity)
    changed = install(
        read_secret(options.secret_dir, share), options.keys, share, overwrite=options.overwrite
    )
    _report(changed, share, options.keys)
    return 0


# -- helpers -------------------------------------------------------------------------------------


def _share(role: str, hospital: str | None, identity: str | None) -> Any:
    from hefl.identity import CLAIM, ordinal_identity, this_host
    from hefl.keylayout import HOSPITAL_ROLE, Share

    if role != HOSPITAL_ROLE:
        return Share(role)
    if hospital:
        return Share(role, hospital)
    if identity == CLAIM:
        raise ConfigError("a key share cannot be claimed: --hospital NAME or --identity ordinal")
    if identity is None:
        raise ConfigError("--role hospital needs --hospital NAME (or --identity ordinal)")
    return Share(role, ordinal_identity(this_host()))


def _report(changed: bool, share: Any, folder: Path) -> None:
    done = "installed" if changed else "already in place:"
    print(f"{done} the key share of {share} in {folder}")


def _same_folder(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()
