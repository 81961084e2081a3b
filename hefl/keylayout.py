"""Where the key ceremony puts each role's key material, and which files each role receives.

One ceremony folder (``hefl keygen --keys DIR``) holds everything:

- ``he-hospital/``: the HE context, public and **secret** key (hospitals only);
- ``he-coordinator/``: the HE context and public key (public material);
- ``identities/<name>/signing_key.pem``: one Ed25519 signing key per participant;
- ``identities/trust.json``: every participant's verification key and role (public).

A deployed role gets a folder of the same layout holding only what it may hold: its ``Share``.
One site (``Share("hospital", "hospital-2")``) holds the hospital HE bundle, ``trust.json`` and
its own signing key, never another participant's. This module is the only place that decides
which files those are, and how they are named as the flat keys of a Kubernetes Secret. It is
pure; ``hefl.keyshare`` reads and writes the files.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

from common.crypto import HEConfig, run_key_ceremony
from common.crypto.keys import CONTEXT, MANIFEST, PUBLIC_KEY, SECRET_KEY
from common.errors import KeyBundleError
from common.protocol.signing import (
    COORDINATOR,
    SIGNING_KEY_FILE,
    TRUST_FILE,
    MessageCodec,
    issue_identities,
    load_identity,
    load_trust,
)

HE_HOSPITAL: Final = "he-hospital"
HE_COORDINATOR: Final = "he-coordinator"
IDENTITIES: Final = "identities"
#: The files of each HE bundle (``common.crypto.keys`` writes them).
HE_HOSPITAL_FILES: Final = (MANIFEST, CONTEXT, PUBLIC_KEY, SECRET_KEY)
HE_COORDINATOR_FILES: Final = (MANIFEST, CONTEXT, PUBLIC_KEY)

#: Whose share: the coordinator, one hospital (a site), or every hospital (the source the compose
#: cluster's one-shot steps install each site's share from; no running hospital mounts it).
COORDINATOR_ROLE: Final = "coordinator"
HOSPITAL_ROLE: Final = "hospital"
HOSPITALS_ROLE: Final = "hospitals"
ROLES: Final = (COORDINATOR_ROLE, HOSPITAL_ROLE, HOSPITALS_ROLE)

_NAME: Final = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # also a Secret key part
_IDENTITY_KEY: Final = re.compile(r"^identity\.(?P<name>[^.]+)\.pem$")


@dataclass(frozen=True)
class KeyLayout:
    """The paths of one key folder (a whole ceremony, or one role's share of it)."""

    root: Path

    @property
    def he_hospital(self) -> Path:
        return self.root / HE_HOSPITAL

    @property
    def he_coordinator(self) -> Path:
        return self.root / HE_COORDINATOR

    @property
    def identities(self) -> Path:
        return self.root / IDENTITIES

    @property
    def trust(self) -> Path:
        return self.identities / TRUST_FILE

    def signing_key(self, name: str) -> Path:
        return self.identities / name / SIGNING_KEY_FILE

    def codec(self, name: str) -> MessageCodec:
        """``name``'s signing identity with everyone's verification keys."""
        return MessageCodec(load_identity(self.signing_key(name), name), load_trust(self.trust))

    def hospitals(self) -> tuple[str, ...]:
        """The hospital identities the ceremony issued (from trust.json), hospital-2 before -10."""
        return tuple(sorted(load_trust(self.trust).hospitals, key=_natural))


def key_ceremony(root: Path, he: HEConfig, hospitals: list[str], *, overwrite: bool) -> KeyLayout:
    """Issue the HE bundles and every participant's signing identity under ``root``."""
    layout = KeyLayout(root)
    run_key_ceremony(he, layout.he_hospital, layout.he_coordinator, overwrite=overwrite)
    issue_identities(layout.identities, hospitals)
    return layout


def check_name(name: str) -> str:
    """A participant name usable as a folder and in a Secret key (``hospital-3``)."""
    if not _NAME.match(name):
        raise KeyBundleError(
            f"invalid participant name {name!r}: lowercase letters, digits and '-' only"
        )
    return name


@dataclass(frozen=True)
class Share:
    """One role's part of a ceremony, e.g. ``Share("hospital", "hospital-2")``."""

    role: str
    hospital: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise KeyBundleError(f"unknown role {self.role!r}; choose from {', '.join(ROLES)}")
        if (self.role == HOSPITAL_ROLE) != (self.hospital is not None):
            raise KeyBundleError("a hospital's share names its hospital, and only that share does")
        if self.hospital is not None and check_name(self.hospital) == COORDINATOR:
            raise KeyBundleError(f"{COORDINATOR!r} is not a hospital")

    @property
    def holds_secret_key(self) -> bool:
        return self.role != COORDINATOR_ROLE

    def may_sign_as(self, name: str) -> bool:
        """Whether this share may hold ``name``'s signing key: a site only its own."""
        if self.role == COORDINATOR_ROLE:
            return name == COORDINATOR
        if self.hospital is not None:
            return name == self.hospital
        return name != COORDINATOR

    def signers(self, hospitals: Sequence[str]) -> tuple[str, ...]:
        """Whose signing keys the share holds, given the hospitals the ceremony issued."""
        if self.role == COORDINATOR_ROLE:
            return (COORDINATOR,)
        if self.hospital is None:
            return tuple(sorted(hospitals, key=_natural))
        if self.hospital not in hospitals:
            raise KeyBundleError(
                f"the ceremony issued no identity {self.hospital!r} (it has "
                f"{', '.join(sorted(hospitals, key=_natural)) or 'no hospitals'}); issue more "
                "identities with --hospitals N"
            )
        return (self.hospital,)

    def paths(self, hospitals: Sequence[str]) -> tuple[PurePosixPath, ...]:
        """The share's files relative to a key folder; ``trust.json`` last: it marks "complete"."""
        if self.holds_secret_key:
            bundle = [PurePosixPath(HE_HOSPITAL, name) for name in HE_HOSPITAL_FILES]
        else:
            bundle = [PurePosixPath(HE_COORDINATOR, name) for name in HE_COORDINATOR_FILES]
        keys = [PurePosixPath(IDENTITIES, n, SIGNING_KEY_FILE) for n in self.signers(hospitals)]
        paths = (*bundle, *keys, TRUST_PATH)
        refuse_foreign(self, paths)
        return paths

    def __str__(self) -> str:
        if self.role == HOSPITALS_ROLE:
            return "every hospital"
        return self.hospital or COORDINATOR


TRUST_PATH: Final = PurePosixPath(IDENTITIES, TRUST_FILE)


def is_secret(path: PurePosixPath) -> bool:
    """A file only hospitals may hold: the HE secret key, or anything of the hospital bundle."""
    return path.name.startswith(SECRET_KEY.split(".")[0]) or path.parts[0] == HE_HOSPITAL


def refuse_secret(share: Share, paths: Sequence[PurePosixPath]) -> None:
    """The coordinator's share must never hold a secret key: refuse to build one that does."""
    found = [str(p) for p in paths if is_secret(p)]
    if found and not share.holds_secret_key:
        raise KeyBundleError(
            f"refused: the coordinator's key share would hold secret material ({', '.join(found)})"
        )


def signer_of(path: PurePosixPath) -> str | None:
    """Whose signing key ``path`` is (``identities/<name>/signing_key.pem``), else None."""
    parts = path.parts
    if len(parts) == 3 and parts[0] == IDENTITIES and parts[2] == SIGNING_KEY_FILE:
        return parts[1]
    return None


def refuse_foreign(share: Share, paths: Sequence[PurePosixPath]) -> None:
    """What a share may never hold: a secret key (the coordinator's), another participant's
    signing key (a site holds only its own, the coordinator only its own)."""
    refuse_secret(share, paths)
    foreign = sorted(
        {name for p in paths if (name := signer_of(p)) and not share.may_sign_as(name)},
        key=_natural,
    )
    if foreign:
        raise KeyBundleError(
            f"refused: the key share of {share} would hold the signing key of "
            f"{', '.join(foreign)}; each site receives only its own"
        )


# -- Kubernetes Secrets are flat: one key per file ---------------------------------------------


def flat_key(path: PurePosixPath) -> str:
    """``he-hospital/context.seal`` -> ``he-hospital.context.seal``; ``identities/trust.json`` ->
    ``trust.json``; ``identities/hospital-2/signing_key.pem`` -> ``identity.hospital-2.pem``."""
    parts = path.parts
    if len(parts) == 2 and parts[0] in (HE_HOSPITAL, HE_COORDINATOR):
        return f"{parts[0]}.{parts[1]}"
    if path == TRUST_PATH:
        return TRUST_FILE
    name = signer_of(path)
    if name is not None:
        return f"identity.{check_name(name)}.pem"
    raise KeyBundleError(f"{path} is not key material of a share")


def path_of(key: str) -> PurePosixPath:
    """The inverse of ``flat_key``: where a Secret key's file goes in a key folder."""
    bundle, _, name = key.partition(".")
    if bundle == HE_HOSPITAL and name in HE_HOSPITAL_FILES:
        return PurePosixPath(HE_HOSPITAL, name)
    if bundle == HE_COORDINATOR and name in HE_COORDINATOR_FILES:
        return PurePosixPath(HE_COORDINATOR, name)
    if key == TRUST_FILE:
        return TRUST_PATH
    found = _IDENTITY_KEY.match(key)
    if found:
        return PurePosixPath(IDENTITIES, check_name(found["name"]), SIGNING_KEY_FILE)
    raise KeyBundleError(f"unknown key {key!r} in a key Secret (not written by hefl keys)")


def _natural(name: str) -> tuple[str, int]:
    """Sort ``hospital-2`` before ``hospital-10``."""
    stem, _, number = name.rpartition("-")
    return (stem, int(number)) if number.isdigit() else (name, -1)
