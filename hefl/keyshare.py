"""Hand each role its share of a key ceremony: into a folder, or as a flat Kubernetes Secret.

``hefl.keylayout`` decides which files a role receives; this module reads them from a ceremony
folder or a mounted Secret and writes them into a role's key folder (0700 folders, 0600 files,
each file written under a temporary name and renamed, ``trust.json`` last so that a folder with
it is complete), then loads the result to prove it works. A share or Secret that
would hold what its role may not (the coordinator: a secret key; a site: another participant's
signing key) is refused before anything is written, and checked again afterwards.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Final

from common.atomic import write_atomic
from common.crypto import HEConfig, load_coordinator_bundle, load_hospital_bundle
from common.errors import KeyBundleError
from common.logs import log_event
from common.protocol.signing import COORDINATOR, load_identity, load_trust
from hefl.keylayout import (
    HE_COORDINATOR,
    HE_HOSPITAL,
    IDENTITIES,
    TRUST_PATH,
    KeyLayout,
    Share,
    check_name,
    flat_key,
    is_secret,
    key_ceremony,
    path_of,
    refuse_foreign,
    signer_of,
)

logger = logging.getLogger("hefl.keyshare")

COORDINATOR_SECRET: Final = "hefl-coordinator-keys"
DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600
Files = Mapping[PurePosixPath, bytes]


def read_share(ceremony: Path, share: Share) -> dict[PurePosixPath, bytes]:
    """``share``'s files from a whole ceremony folder (``hefl keygen --keys DIR``)."""
    layout = KeyLayout(ceremony)
    if not share.holds_secret_key:
        load_coordinator_bundle(layout.he_coordinator)  # refuses a bundle with a secret key
    paths = share.paths(_hospitals(layout.trust))
    return {path: _read(ceremony, str(path)) for path in paths}


def read_secret(folder: Path, share: Share) -> dict[PurePosixPath, bytes]:
    """``share``'s files from a mounted flat Secret, which must hold nothing its role may not.

    A site's Secret (``hospital_secret``) holds only its own signing key; one that holds another
    participant's is refused whole, as is a coordinator Secret with a secret key: the pod was
    handed keys it must not hold, which no unpacking can undo.
    """
    try:
        keys = sorted(e.name for e in folder.iterdir() if not e.name.startswith("."))
    except OSError as exc:
        raise KeyBundleError(f"{folder}: cannot list the mounted key Secret: {exc}") from exc
    available = [path_of(key) for key in keys]  # Kubernetes adds only dot-names (..data)
    refuse_foreign(share, available)
    paths = share.paths(_hospitals(folder / flat_key(TRUST_PATH)))
    return {path: _read(folder, flat_key(path)) for path in paths}


def install(files: Files, dest: Path, share: Share, *, overwrite: bool = False) -> bool:
    """Write ``files`` as ``share``'s key folder ``dest``; False when it already holds exactly them.

    Key material of another share or ceremony in ``dest`` is refused unless ``overwrite``, which
    replaces it (files of ``dest`` outside its key folders are never touched).
    """
    refuse_foreign(share, list(files))
    existing = key_files(dest)
    if existing:
        if set(existing) == set(files) and all(
            (dest / p).read_bytes() == data for p, data in files.items()
        ):
            verify(dest, share)
            return False
        if not overwrite:
            raise KeyBundleError(
                f"{dest} already holds other key material ({len(existing)} files); "
                "--overwrite replaces it"
            )
    _private_dir(dest, best_effort=True)  # a mount point may belong to someone else
    (dest / TRUST_PATH).unlink(missing_ok=True)  # "incomplete" until trust.json is back
    for path in set(existing) - set(files):
        (dest / path).unlink()
    for path, data in files.items():  # trust.json comes last
        _write_private(dest / path, data)
    _remove_empty_dirs(dest)
    verify(dest, share)
    log_event(logger, "key_share_installed", share=str(share), folder=str(dest), files=len(files))
    return True


def verify(dest: Path, share: Share) -> None:
    """Load what a role will load; prove the folder holds no signing key but the role's own, and
    for the coordinator, no secret key."""
    layout = KeyLayout(dest)
    refuse_foreign(share, [p for p in key_files(dest) if signer_of(p)])
    if not share.holds_secret_key:
        found = [str(p) for p in key_files(dest) if is_secret(p)]
        found += [str(p.relative_to(dest)) for p in dest.rglob("secret_key*")]
        if found:
            raise KeyBundleError(f"{dest}: the coordinator's keys hold secret material: {found}")
        load_coordinator_bundle(layout.he_coordinator)
        layout.codec(COORDINATOR)
        return
    load_hospital_bundle(layout.he_hospital)
    for name in share.signers(_hospitals(layout.trust)):
        load_identity(layout.signing_key(name), name)


def key_files(folder: Path) -> list[PurePosixPath]:
    """The files under a key folder's three key subfolders, relative to it."""
    return sorted(
        PurePosixPath(path.relative_to(folder).as_posix())
        for sub in (HE_HOSPITAL, HE_COORDINATOR, IDENTITIES)
        for path in (folder / sub).rglob("*")
        if path.is_file()
    )


def is_complete(folder: Path) -> bool:
    return (folder / TRUST_PATH).is_file()


def issue_cluster_keys(
    hospital_keys: Path,
    coordinator_keys: Path,
    he: HEConfig,
    hospitals: list[str],
    *,
    overwrite: bool = False,
) -> bool:
    """One-shot ceremony of a compose cluster; False when both folders already hold keys.

    The ceremony happens in a private temporary folder that is removed afterwards: every
    hospital's share goes into ``hospital_keys``, the coordinator's into ``coordinator_keys``.
    """
    done = (is_complete(hospital_keys), is_complete(coordinator_keys))
    if all(done) and not overwrite:
        log_event(logger, "keygen_skipped", reason="keys-exist")
        return False
    if any(done) and not overwrite:
        raise KeyBundleError(
            f"only one of {hospital_keys} and {coordinator_keys} holds keys; re-issuing both "
            "breaks a run in progress: --overwrite does it"
        )
    with tempfile.TemporaryDirectory(prefix="hefl-ceremony-") as work:  # mode 0700
        ceremony = key_ceremony(Path(work) / "keys", he, hospitals, overwrite=False).root
        for share, dest in (
            (Share("hospitals"), hospital_keys),
            (Share("coordinator"), coordinator_keys),
        ):
            install(read_share(ceremony, share), dest, share, overwrite=True)
    log_event(logger, "keygen_done", hospitals=len(hospitals))
    return True


# -- Kubernetes ----------------------------------------------------------------------------------


def secret_data(files: Files, share: Share) -> dict[str, bytes]:
    """A role's Secret data: ``he-hospital.<file>``, ``trust.json``, ``identity.<name>.pem``..."""
    refuse_foreign(share, list(files))
    data = {flat_key(path): content for path, content in files.items()}
    refuse_foreign(share, [path_of(key) for key in data])  # checked on what is handed out, too
    return data


def hospital_secret(hospital: str) -> str:
    """The key Secret of one site, ``hefl-hospital-2-keys``: its pod alone mounts it."""
    return f"hefl-{check_name(hospital)}-keys"


def secret_manifest(name: str, data: Mapping[str, bytes], share: Share) -> dict[str, Any]:
    """A ``v1/Secret`` holding ``data``, for ``kubectl apply -f -``."""
    labels = {"app.kubernetes.io/part-of": "hefl", "hefl.io/keys-for": share.role}
    if share.hospital is not None:
        labels["hefl.io/site"] = share.hospital
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": labels},
        "type": "Opaque",
        "data": {key: base64.b64encode(value).decode("ascii") for key, value in data.items()},
    }


def cluster_secrets(he: HEConfig, hospitals: list[str]) -> list[dict[str, Any]]:
    """A fresh ceremony (in a private temporary folder, removed) as key Secrets: the
    coordinator's, and one per site holding only that site's signing key."""
    shares = [(COORDINATOR_SECRET, Share("coordinator"))]
    shares += [(hospital_secret(h), Share("hospital", h)) for h in hospitals]
    with tempfile.TemporaryDirectory(prefix="hefl-ceremony-") as work:
        ceremony = key_ceremony(Path(work) / "keys", he, hospitals, overwrite=False).root
        return [
            secret_manifest(name, secret_data(read_share(ceremony, share), share), share)
            for name, share in shares
        ]


def render(manifests: Sequence[Mapping[str, Any]], fmt: str) -> str:
    """JSON (a ``v1/List``) or YAML documents; both are what ``kubectl apply -f -`` reads."""
    if fmt == "json":
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(manifests)}, indent=2)
    return "".join("---\n" + _yaml(manifest, 0) for manifest in manifests)


def _yaml(value: Mapping[str, Any], indent: int) -> str:
    """Block YAML of nested mappings of strings; scalars are JSON strings (valid YAML)."""
    lines = []
    for key, item in value.items():
        pad = " " * indent + json.dumps(key) + ":"
        if isinstance(item, Mapping):
            lines.append(pad + "\n" + _yaml(item, indent + 2))
        else:
            lines.append(f"{pad} {json.dumps(str(item))}\n")
    return "".join(lines)


# -- files ---------------------------------------------------------------------------------------


def _hospitals(trust: Path) -> tuple[str, ...]:
    return load_trust(trust).hospitals


def _read(source: Path, name: str) -> bytes:
    try:
        return (source / name).read_bytes()
    except OSError as exc:
        raise KeyBundleError(f"{source} lacks {name}, part of the share: {exc}") from exc


def _private_dir(path: Path, *, best_effort: bool = False) -> None:
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    try:
        os.chmod(path, DIR_MODE)
    except PermissionError:
        if not best_effort:
            raise


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` 0600 from the first byte under a temporary name, then rename into place."""
    _private_dir(path.parent)
    write_atomic(path, data, mode=FILE_MODE)


def _remove_empty_dirs(folder: Path) -> None:
    for sub in (HE_HOSPITAL, HE_COORDINATOR, IDENTITIES):
        root = folder / sub
        for path in [*sorted(root.rglob("*"), reverse=True), root]:
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
