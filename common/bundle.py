"""A hospital's final model as a self-contained folder: what ``hefl predict`` scores new rows with.

Training needs the schema, the run's settings and the Keras model together; so does scoring a
new discharge, months later, on a machine that never saw the run. A bundle keeps them together::

    <models>/<hospital>/bundle/
        model.keras   the Keras model holding the run's final global weights
        schema.yaml   the schema's YAML text as the run read it (self-contained for any schema)
        bundle.json   the manifest: see :class:`Manifest`

The manifest records the format version; the run (id, rounds run, the round whose global model
is final, seed, configuration digest, model configuration, HE scheme); the schema's name, its
feature-layout digest and feature count; the hold-out metrics of the final model on this
hospital's own test split (``holdout``: AUC, accuracy, loss; ``clinical``:
:class:`common.clinical.ClinicalMetrics`); the decision ``threshold`` that flags the
``top_fraction`` riskiest patients of that split; and the SHA-256 of the two other files.

:func:`write_bundle` builds the folder under a temporary name beside it and renames it into
place, so a crash leaves the previous bundle or the new one, never a part of one.
:func:`read_bundle` refuses a bundle with a file missing or changed since it was written, or
whose schema no longer gives the feature layout its model was trained on (a :class:`BundleError`
naming the file). The hashes detect damage and edits of one file, not a forger who rewrites the
manifest too: a bundle is as trustworthy as the folder it is kept in.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import ConfigDict, Field, Strict, TypeAdapter, ValidationError, with_config

from common.atomic import write_atomic
from common.clinical import DEFAULT_TOP_FRACTION, ClinicalMetrics, checked_top_fraction
from common.data import FeatureEncoder, Schema, parse_schema
from common.errors import BundleError, ConfigError, DataError
from common.fedavg import finite
from common.metrics import Metrics
from common.model import ModelConfig, parameter_count
from common.validation import dotted_path, explain

FORMAT_VERSION: Final = 1
BUNDLE_DIR: Final = "bundle"
MODEL_FILE: Final = "model.keras"
SCHEMA_FILE: Final = "schema.yaml"
MANIFEST_FILE: Final = "bundle.json"
#: A manifest is a few kilobytes; anything much larger is not one.
MAX_MANIFEST_BYTES: Final = 1 << 20

_Text = Annotated[str, Strict(), Field(min_length=1)]
_Count = Annotated[int, Strict(), Field(ge=0)]
_Score = Annotated[float, Field(ge=0.0, le=1.0)]
_Share = Annotated[float, Field(gt=0.0, lt=1.0)]
_Numbers = dict[str, float | int | None]


@with_config(ConfigDict(extra="forbid", allow_inf_nan=False))
@dataclass(frozen=True, kw_only=True)
class Manifest:
    """``bundle.json``: what the model is, how it was trained, how good it is, and the files."""

    format_version: Annotated[int, Strict()]
    hospital: _Text
    run: _Text
    rounds: _Count  # rounds the run closed
    # The round whose global model this is: ``rounds``, or an earlier round's after early
    # stopping. A bundle written before early stopping has none: read as ``rounds``.
    final_round: _Count
    seed: _Count
    config_digest: _Text
    model: dict[str, Any]  # common.model.ModelConfig.to_dict()
    he: dict[str, Any]  # the run's HE configuration ({"scheme": "plain"} for the comparison)
    schema: _Text  # the schema's name
    layout_digest: _Text
    n_features: _Count
    top_fraction: _Share
    threshold: _Score  # a row whose risk is at or above it is flagged
    holdout: _Numbers  # common.metrics.Metrics.to_dict()
    clinical: _Numbers  # common.clinical.ClinicalMetrics.to_dict()
    files: dict[str, str]  # file name -> SHA-256 hex


_MANIFEST: Final = TypeAdapter(Manifest)


@dataclass(frozen=True, kw_only=True)
class BundleSettings:
    """What a hospital needs, beyond what it trains with, to keep its final model as a bundle:
    the schema's YAML text, the run's model and HE configuration, and the share of its
    hold-out to flag as highest risk (which sets the bundle's decision threshold)."""

    schema_text: str = field(repr=False)
    model: ModelConfig
    he: Mapping[str, Any]
    top_fraction: float = DEFAULT_TOP_FRACTION

    def __post_init__(self) -> None:
        object.__setattr__(self, "top_fraction", checked_top_fraction(self.top_fraction))

    def manifest(
        self,
        *,
        hospital: str,
        run: str,
        rounds: int,
        seed: int,
        config_digest: str,
        parameters: int,
        holdout: Metrics,
        clinical: ClinicalMetrics,
        final_round: int | None = None,
    ) -> Manifest:
        """The manifest of a final model of ``parameters`` weights (its ``files`` still empty);
        ``final_round``: the round whose model it is (``RunFinished.model_round``; None: the
        last of ``rounds``).

        Raises ConfigError when the schema does not give the features such a model takes, the
        metrics were computed for another top fraction, or ``final_round`` is not a round run."""
        final = rounds if final_round is None else final_round
        if not 1 <= final <= rounds:
            raise ConfigError(f"final round {final} is not one of the {rounds} rounds run")
        schema = parse_schema(self.schema_text, file=SCHEMA_FILE)
        encoder = FeatureEncoder(schema)
        expected = parameter_count(self.model, encoder.n_features)
        if parameters != expected:
            raise ConfigError(
                f"the schema {schema.name} gives {encoder.n_features} features, for which the "
                f"model has {expected} weights, not the {parameters} trained: was the schema "
                "file changed during the run?"
            )
        if clinical.top_fraction != self.top_fraction:
            raise ConfigError(
                f"clinical metrics of the top {clinical.top_fraction}, not {self.top_fraction}"
            )
        return Manifest(
            format_version=FORMAT_VERSION,
            hospital=hospital,
            run=run,
            rounds=rounds,
            final_round=final,
            seed=seed,
            config_digest=config_digest,
            model=self.model.to_dict(),
            he=dict(self.he),
            schema=schema.name,
            layout_digest=encoder.layout_digest,
            n_features=encoder.n_features,
            top_fraction=self.top_fraction,
            threshold=clinical.threshold,
            holdout=holdout.to_dict(),
            clinical=clinical.to_dict(),
            files={},
        )


@dataclass(frozen=True, eq=False)
class Bundle:
    """A bundle read and checked by :func:`read_bundle`."""

    path: Path
    manifest: Manifest
    schema: Schema
    model: ModelConfig

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def threshold(self) -> float:
        return self.manifest.threshold


def write_bundle(
    folder: Path, manifest: Manifest, schema_text: str, write_model: Callable[[Path], None]
) -> Path:
    """Write a bundle to ``folder`` in one rename; ``write_model(path)`` saves the Keras model.

    The files go to a temporary folder beside ``folder``, are flushed to disk and hashed into
    the manifest; then the temporary folder takes ``folder``'s name (an older bundle there is
    moved aside first and removed after). On any failure the temporary folder is removed and
    the error propagates.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.{secrets.token_hex(6)}.tmp")
    staging.mkdir()  # permissions as the umask says, like the files in it
    try:
        write_model(staging / MODEL_FILE)
        write_atomic(staging / SCHEMA_FILE, schema_text.encode("utf-8"))
        files = {name: _sha256(staging / name) for name in (MODEL_FILE, SCHEMA_FILE)}
        body = {**asdict(manifest), "files": files}
        text = json.dumps(finite(body), indent=1, sort_keys=True, allow_nan=False) + "\n"
        write_atomic(staging / MANIFEST_FILE, text.encode("utf-8"))
        _sync(staging)
        _replace_folder(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def read_bundle(folder: Path) -> Bundle:
    """Read and check the bundle in ``folder``; a BundleError names what is wrong."""
    where = str(folder)
    if not folder.is_dir():
        raise BundleError(
            "no model bundle here: a hospital writes one to <out>/<hospital>/bundle", file=where
        )
    manifest = _manifest(folder / MANIFEST_FILE)
    if set(manifest.files) != {MODEL_FILE, SCHEMA_FILE}:
        raise BundleError(
            f"{MANIFEST_FILE} lists {sorted(manifest.files)}, not {MODEL_FILE} and {SCHEMA_FILE}",
            file=where,
        )
    for name, digest in sorted(manifest.files.items()):
        path = folder / name
        if not path.is_file():
            raise BundleError(f"{name} is missing from the bundle", file=where)
        if _sha256(path) != digest:
            raise BundleError(
                f"{name} was changed after the bundle was written (its SHA-256 differs from "
                f"the one in {MANIFEST_FILE})",
                file=where,
            )
    try:
        schema = parse_schema(
            (folder / SCHEMA_FILE).read_text(encoding="utf-8"), file=str(folder / SCHEMA_FILE)
        )
        model = ModelConfig.from_dict(manifest.model)
    except (DataError, ConfigError, OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"unusable bundle: {exc}", file=where) from exc
    encoder = FeatureEncoder(schema)
    if (schema.name, encoder.layout_digest, encoder.n_features) != (
        manifest.schema,
        manifest.layout_digest,
        manifest.n_features,
    ):
        raise BundleError(
            f"{SCHEMA_FILE} ({schema.name}) gives {encoder.n_features} features with layout "
            f"{encoder.layout_digest[:12]}, but the model was trained on {manifest.n_features} "
            f"features of {manifest.schema} with layout {manifest.layout_digest[:12]}: the "
            "schema or this release's feature encoding changed since training",
            file=where,
        )
    return Bundle(path=folder, manifest=manifest, schema=schema, model=model)


def _manifest(path: Path) -> Manifest:
    where = str(path.parent)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise BundleError(f"{MANIFEST_FILE} is missing from the bundle", file=where) from None
    except OSError as exc:
        raise BundleError(f"cannot read {MANIFEST_FILE}: {exc}", file=where) from exc
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{MANIFEST_FILE} exceeds {MAX_MANIFEST_BYTES} bytes", file=where)
    try:
        body = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{MANIFEST_FILE} is not JSON: {exc}", file=where) from exc
    version = body.get("format_version") if isinstance(body, dict) else None
    if type(version) is int and version != FORMAT_VERSION:
        raise BundleError(
            f"bundle format {version}; this release reads format {FORMAT_VERSION}", file=where
        )
    if isinstance(body, dict) and "final_round" not in body and "rounds" in body:
        body = {**body, "final_round": body["rounds"]}  # written before early stopping
    try:
        manifest = _MANIFEST.validate_python(body)
    except ValidationError as exc:
        raise BundleError(f"{MANIFEST_FILE}: {explain(exc, dotted_path)}", file=where) from exc
    if not 1 <= manifest.final_round <= manifest.rounds:
        raise BundleError(
            f"{MANIFEST_FILE}: final_round {manifest.final_round} is not one of the "
            f"{manifest.rounds} rounds run",
            file=where,
        )
    return manifest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sync(folder: Path) -> None:
    """Flush a folder's entries (names and renames) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_folder(staging: Path, folder: Path) -> None:
    """Give ``staging`` the name ``folder``: a folder cannot be renamed over a non-empty one, so
    an existing ``folder`` is renamed aside first (between the renames there is no bundle, never
    a part of one) and removed once the new one is in place."""
    aside = None
    if folder.exists():
        aside = folder.with_name(f".{folder.name}.old.{secrets.token_hex(6)}")
        os.rename(folder, aside)
    os.rename(staging, folder)
    _sync(folder.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
