"""Key ceremony and key bundles: roles are fixed when the keys are issued.

A hospital bundle holds the HE context, the public key and the secret key; a coordinator bundle
holds the context and the public key only. Each bundle has a ``manifest.json`` naming its role,
scheme, parameters, the SHA-256 of every file, the parameter digest (SHA-256 of the context) and
the key id (SHA-256 of the public key). Files are written 0600 in 0700 directories.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.atomic import write_atomic
from common.crypto import seal_layout
from common.crypto.config import SECURITY_LEVEL, HEConfig
from common.crypto.seal import generate_keys
from common.errors import ConfigError, CryptoError, KeyBundleError
from common.logs import log_event

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CONTEXT = "context.seal"
PUBLIC_KEY = "public_key.seal"
SECRET_KEY = "secret_key.seal"
HOSPITAL = "hospital"
COORDINATOR = "coordinator"
BUNDLE_FORMAT = 1
FILE_MODE = 0o600
DIR_MODE = 0o700
_ROLE_FILES = {
    HOSPITAL: (CONTEXT, PUBLIC_KEY, SECRET_KEY),
    COORDINATOR: (CONTEXT, PUBLIC_KEY),
}


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """The description of one bundle, as stored in its ``manifest.json``."""

    role: str
    config: HEConfig
    param_digest: str
    key_id: str
    created: str
    files: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle_format": BUNDLE_FORMAT,
            "role": self.role,
            "scheme": self.config.scheme,
            "config": self.config.to_dict(),
            "param_digest": self.param_digest,
            "key_id": self.key_id,
            "created": self.created,
            "files": dict(self.files),
        }


@dataclass(frozen=True, kw_only=True)
class HospitalBundle:
    """Everything a hospital needs to encrypt and decrypt."""

    manifest: Manifest
    context: bytes = field(repr=False)
    public_key: bytes = field(repr=False)
    secret_key: bytes = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class CoordinatorBundle:
    """Public material only: there is deliberately no place for a secret key."""

    manifest: Manifest
    context: bytes = field(repr=False)
    public_key: bytes = field(repr=False)


@dataclass(frozen=True)
class Ceremony:
    """Manifests of the two bundles one key ceremony wrote."""

    hospital: Manifest
    coordinator: Manifest


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_key_ceremony(
    config: HEConfig,
    hospital_dir: str | os.PathLike[str],
    coordinator_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> Ceremony:
    """Generate keys for ``config`` and write the hospital and the coordinator bundle."""
    hospital, coordinator = Path(hospital_dir), Path(coordinator_dir)
    if hospital.resolve() == coordinator.resolve():
        raise KeyBundleError("hospital and coordinator bundles must live in different directories")
    for directory in (hospital, coordinator):
        existing = [
            name for name in (MANIFEST, *_ROLE_FILES[HOSPITAL]) if (directory / name).exists()
        ]
        if existing and not overwrite:
            raise KeyBundleError(
                f"{directory} already holds a key bundle ({', '.join(existing)}); "
                "replace it with `hefl keygen --overwrite` (overwrite=True)"
            )
    keys = generate_keys(config)
    contents = {CONTEXT: keys.context, PUBLIC_KEY: keys.public_key, SECRET_KEY: keys.secret_key}
    created = datetime.now(UTC).isoformat(timespec="seconds")
    manifests = []
    for role, directory in ((HOSPITAL, hospital), (COORDINATOR, coordinator)):
        files = {name: contents[name] for name in _ROLE_FILES[role]}
        manifest = Manifest(
            role=role,
            config=config,
            param_digest=sha256_hex(keys.context),
            key_id=sha256_hex(keys.public_key),
            created=created,
            files={name: sha256_hex(data) for name, data in files.items()},
        )
        _write_bundle(directory, files, manifest)
        manifests.append(manifest)
    log_event(
        logger,
        "key_ceremony_done",
        scheme=config.scheme,
        key_id=manifests[0].key_id[:16],
        hospital_dir=str(hospital),
        coordinator_dir=str(coordinator),
    )
    return Ceremony(hospital=manifests[0], coordinator=manifests[1])


def load_hospital_bundle(directory: str | os.PathLike[str]) -> HospitalBundle:
    """Read and verify a hospital bundle."""
    manifest, files = _read_bundle(Path(directory), HOSPITAL)
    return HospitalBundle(
        manifest=manifest,
        context=files[CONTEXT],
        public_key=files[PUBLIC_KEY],
        secret_key=files[SECRET_KEY],
    )


def load_coordinator_bundle(directory: str | os.PathLike[str]) -> CoordinatorBundle:
    """Read and verify a coordinator bundle; refuse any trace of a secret key."""
    path = Path(directory)
    if (path / SECRET_KEY).exists():
        raise KeyBundleError(
            f"{path} holds a secret key ({SECRET_KEY}): the coordinator must never hold one; "
            "use the coordinator bundle from the key ceremony"
        )
    manifest, files = _read_bundle(path, COORDINATOR)
    return CoordinatorBundle(
        manifest=manifest, context=files[CONTEXT], public_key=files[PUBLIC_KEY]
    )


def _write_bundle(directory: Path, files: dict[str, bytes], manifest: Manifest) -> None:
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(directory, DIR_MODE)
    stale = directory / SECRET_KEY
    if SECRET_KEY not in files and stale.exists():
        stale.unlink()
    (directory / MANIFEST).unlink(missing_ok=True)  # no manifest until the files are complete
    for name, data in files.items():
        _write_private(directory / name, data)
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n"
    _write_private(directory / MANIFEST, text.encode("utf-8"))


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 from the first byte, then rename into place."""
    write_atomic(path, data, mode=FILE_MODE)


def _read_bundle(directory: Path, role: str) -> tuple[Manifest, dict[str, bytes]]:
    manifest = _read_manifest(directory, role)
    files: dict[str, bytes] = {}
    for name in _ROLE_FILES[role]:
        path = directory / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KeyBundleError(f"{path}: cannot read {role} bundle file: {exc}") from exc
        if sha256_hex(data) != manifest.files[name]:
            raise KeyBundleError(f"{path}: SHA-256 does not match the manifest (tampered?)")
        files[name] = data
    if manifest.param_digest != sha256_hex(files[CONTEXT]):
        raise KeyBundleError(f"{directory / CONTEXT}: does not match the manifest's param_digest")
    if manifest.key_id != sha256_hex(files[PUBLIC_KEY]):
        raise KeyBundleError(f"{directory / PUBLIC_KEY}: does not match the manifest's key_id")
    _check_context(directory / CONTEXT, files[CONTEXT], manifest.config)
    return manifest, files


def _read_manifest(directory: Path, role: str) -> Manifest:
    path = directory / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyBundleError(f"{path}: cannot read the bundle manifest: {exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeyBundleError(f"{path}: manifest is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("bundle_format") != BUNDLE_FORMAT:
        raise KeyBundleError(f"{path}: not a bundle manifest of format {BUNDLE_FORMAT}")
    found = data.get("role")
    if found != role:
        hint = " (a coordinator must never hold a secret key)" if found == HOSPITAL else ""
        raise KeyBundleError(f"{path}: bundle role is {found!r}, expected {role!r}{hint}")
    try:
        config = HEConfig.from_dict(data.get("config"))
    except ConfigError as exc:
        raise KeyBundleError(f"{path}: invalid HE config: {exc}") from exc
    files = data.get("files")
    expected = set(_ROLE_FILES[role])
    if not isinstance(files, dict) or set(files) != expected:
        raise KeyBundleError(f"{path}: manifest must list exactly the files {sorted(expected)}")
    if data.get("scheme") != config.scheme:
        raise KeyBundleError(f"{path}: scheme {data.get('scheme')!r} contradicts its config")
    texts = {name: data.get(name) for name in ("param_digest", "key_id", "created")}
    if not all(isinstance(v, str) for v in (*texts.values(), *files.values())):
        raise KeyBundleError(f"{path}: param_digest, key_id, created and digests must be strings")
    return Manifest(
        role=role,
        config=config,
        param_digest=str(texts["param_digest"]),
        key_id=str(texts["key_id"]),
        created=str(texts["created"]),
        files={str(name): str(digest) for name, digest in files.items()},
    )


def _check_context(path: Path, context: bytes, config: HEConfig) -> None:
    """The context file must declare exactly the parameters the manifest's config names."""
    try:
        info = seal_layout.parse_context(context)
    except CryptoError as exc:
        raise KeyBundleError(f"{path}: {exc}") from exc
    declared = (info.scheme, info.degree, tuple(q.bit_length() for q in info.moduli))
    wanted = (config.scheme, config.poly_modulus_degree, config.coeff_modulus_bits)
    if info.sec != SECURITY_LEVEL:
        raise KeyBundleError(
            f"{path}: context declares {info.sec}-bit security, not {SECURITY_LEVEL}"
        )
    if declared != wanted:
        raise KeyBundleError(f"{path}: context declares {declared}, manifest config says {wanted}")
    if config.scheme == "ckks" and info.scale != 2.0**config.scale_bits:
        raise KeyBundleError(f"{path}: context scale {info.scale} is not 2**{config.scale_bits}")
    if config.scheme == "bfv" and info.plain_modulus.bit_length() != config.plain_modulus_bits:
        raise KeyBundleError(
            f"{path}: plain modulus does not have {config.plain_modulus_bits} bits"
        )
