"""Split one dataset into simulated hospitals, and a hospital's data into train and test.

Every split is by patient: all encounters of a patient go to the same hospital (and the same side
of a train/test split), otherwise a model would be scored on patients it has seen. A patient
counts as positive if any of their encounters is. Everything is a pure function of the frame and
the seed, except :func:`write_partitions`, which reads one CSV and writes the hospital files.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from common.data.reader import parse_frame, read_raw
from common.data.schema import Schema
from common.errors import ConfigError, DataError
from common.logs import log_event

Method = Literal["dirichlet", "iid", "column"]
METHODS: tuple[Method, ...] = ("dirichlet", "iid", "column")
DEFAULT_ALPHA = 0.5
DEFAULT_TEST_FRACTION = 0.2
MISSING_VALUE = "<missing>"
MANIFEST_NAME = "partition.json"

_LOG = logging.getLogger(__name__)


def partition(
    df: pd.DataFrame,
    schema: Schema,
    n_hospitals: int,
    *,
    method: Method = "dirichlet",
    alpha: float = DEFAULT_ALPHA,
    column: str | None = None,
    seed: int = 0,
) -> list[pd.DataFrame]:
    """Split ``df`` (a frame from ``read_csv``) into ``n_hospitals`` frames by patient.

    ``iid`` deals patients at random, stratified by label; ``dirichlet`` gives each hospital a
    Dirichlet(alpha) share of each class (small alpha, strong label skew); ``column`` makes
    natural silos from the values of ``column``: each patient goes with the value of their first
    encounter, and values go, largest first, to the hospital with the fewest rows so far. Each
    hospital keeps the original index (CSV lines) and row order. Under ``iid`` and ``dirichlet``
    every hospital gets a patient of each class, and DataError says so when the data has too few.
    """
    _check_hospitals(n_hospitals)
    ids = df[schema.patient_id].astype(str)
    patients, labels = _patient_labels(ids, df[schema.target.column])
    rng = np.random.default_rng(seed)
    if method == "iid":
        assignment = _iid(labels, n_hospitals, rng)
    elif method == "dirichlet":
        if not alpha > 0:
            raise ConfigError(f"alpha must be positive, got {alpha}")
        assignment = _dirichlet(labels, n_hospitals, alpha, rng)
    elif method == "column":
        assignment = _by_column(df, schema, patients, n_hospitals, column)
    else:
        raise ConfigError(f"unknown partition method {method!r}; expected one of {METHODS}")
    row_hospital = assignment[patients.get_indexer(pd.Index(ids))]
    parts = [df.loc[row_hospital == hospital] for hospital in range(n_hospitals)]
    _warn_single_class(parts, schema, method)
    return parts


def split_by_patient(
    df: pd.DataFrame,
    schema: Schema,
    *,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split into (train, test) with no patient on both sides, stratified by patient label.

    About ``test_fraction`` of each class's patients go to test; a class with two or more
    patients has at least one on each side.
    """
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    ids = df[schema.patient_id].astype(str)
    patients, labels = _patient_labels(ids, df[schema.target.column])
    if len(patients) < 2:
        raise DataError("a train/test split needs at least two patients")
    rng = np.random.default_rng(seed)
    in_test = np.zeros(len(patients), dtype=bool)
    for members in _shuffled_classes(labels, rng):
        count = round(test_fraction * len(members))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        in_test[members[:count]] = True
    row_in_test = in_test[patients.get_indexer(pd.Index(ids))]
    return df.loc[~row_in_test], df.loc[row_in_test]


def write_partitions(
    csv_path: str | os.PathLike[str],
    schema: Schema,
    out_dir: str | os.PathLike[str],
    n_hospitals: int,
    *,
    method: Method = "dirichlet",
    alpha: float = DEFAULT_ALPHA,
    column: str | None = None,
    seed: int = 0,
) -> list[Path]:
    """Split a CSV into ``hospital-1.csv`` ... ``hospital-N.csv`` plus ``partition.json``.

    Hospital files keep the original columns and raw values, so each reads back with the same
    schema. The manifest records method, seed, alpha or column, and per hospital its rows,
    patients and positive rate. Returns the hospital file paths in order.
    """
    file = os.fspath(csv_path)
    raw = read_raw(file)
    parts = partition(
        parse_frame(raw, schema, file=file),
        schema,
        n_hospitals,
        method=method,
        alpha=alpha,
        column=column,
        seed=seed,
    )
    folder = Path(out_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for number, part in enumerate(parts, start=1):
            path = folder / f"hospital-{number}.csv"
            raw.loc[part.index].to_csv(path, index=False, lineterminator="\n")
            paths.append(path)
        manifest = _manifest(Path(file).name, schema, parts, method, alpha, column, seed)
        (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
    except OSError as exc:
        raise DataError(f"cannot write partitions: {exc}", file=str(folder)) from exc
    stale = sorted(
        path.name
        for path in folder.glob("hospital-*.csv")
        if path.stem.removeprefix("hospital-").isdigit() and path not in paths
    )
    if stale:  # left by an earlier run with more hospitals; not ours to delete
        log_event(_LOG, "partition_stale_files", level=logging.WARNING, files=",".join(stale))
    log_event(_LOG, "partitions_written", out_dir=str(folder), hospitals=n_hospitals, method=method)
    return paths


def _check_hospitals(n_hospitals: int) -> None:
    if isinstance(n_hospitals, bool) or not isinstance(n_hospitals, int) or n_hospitals < 1:
        raise ConfigError(f"n_hospitals must be a positive integer, got {n_hospitals!r}")


def _patient_labels(ids: pd.Series, target: pd.Series) -> tuple[pd.Index, np.ndarray]:
    """Patients sorted by id, each labelled 1 if any of their encounters is positive."""
    labels = target.astype("int64").groupby(ids.to_numpy(), sort=True).max()
    return pd.Index(labels.index), labels.to_numpy()


def _shuffled_classes(labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Patient positions of each class (positive first), each in a seeded random order."""
    return [rng.permutation(np.flatnonzero(labels == cls)) for cls in (1, 0)]


def _require_each_class(labels: np.ndarray, n_hospitals: int) -> None:
    for cls, name in ((1, "positive"), (0, "negative")):
        count = int((labels == cls).sum())
        if count < n_hospitals:
            raise DataError(
                f"only {count} {name} patient(s) for {n_hospitals} hospitals; every hospital "
                "needs a patient of each class, so use fewer hospitals"
            )


def _iid(labels: np.ndarray, n_hospitals: int, rng: np.random.Generator) -> np.ndarray:
    """Deal each class round-robin after shuffling: equal patient counts and class mix."""
    _require_each_class(labels, n_hospitals)
    assignment = np.empty(len(labels), dtype=np.int64)
    dealt = 0
    for members in _shuffled_classes(labels, rng):
        assignment[members] = (np.arange(len(members)) + dealt) % n_hospitals
        dealt += len(members)
    return assignment


def _dirichlet(
    labels: np.ndarray, n_hospitals: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """One patient of each class per hospital, the rest of each class by Dirichlet shares."""
    _require_each_class(labels, n_hospitals)
    assignment = np.empty(len(labels), dtype=np.int64)
    for members in _shuffled_classes(labels, rng):
        assignment[members[:n_hospitals]] = np.arange(n_hospitals)
        rest = members[n_hospitals:]
        shares = rng.dirichlet(np.full(n_hospitals, alpha))
        cuts = np.round(np.cumsum(shares)[:-1] * len(rest)).astype(np.int64)
        for hospital, chunk in enumerate(np.split(rest, cuts)):
            assignment[chunk] = hospital
    return assignment


def home_values(df: pd.DataFrame, schema: Schema, column: str) -> pd.Series:
    """Each patient's value of ``column`` at their first encounter (missing -> ``<missing>``)."""
    if column not in df.columns:
        raise ConfigError(f"partition column {column!r} is not in the data")
    values = df[column]
    text = values.astype(str).where(values.notna(), MISSING_VALUE)
    return text.groupby(df[schema.patient_id].astype(str).to_numpy(), sort=True).first()


def _by_column(
    df: pd.DataFrame,
    schema: Schema,
    patients: pd.Index,
    n_hospitals: int,
    column: str | None,
) -> np.ndarray:
    """Greedy largest-first: each value, biggest first, to the hospital with fewest rows."""
    if column is None:
        raise ConfigError("method 'column' needs a column name")
    home = home_values(df, schema, column).reindex(patients)
    rows_per_patient = df[schema.patient_id].astype(str).value_counts().reindex(patients)
    sizes = pd.Series(rows_per_patient.to_numpy(), index=home.to_numpy()).groupby(level=0).sum()
    if len(sizes) < n_hospitals:
        raise DataError(
            f"column {column!r} has only {len(sizes)} distinct value(s) for {n_hospitals} "
            "hospitals",
            column=column,
        )
    order = sorted(sizes.items(), key=lambda item: (-int(item[1]), str(item[0])))
    loads = np.zeros(n_hospitals, dtype=np.int64)
    hospital_of: dict[str, int] = {}
    for value, size in order:
        target = int(np.argmin(loads))
        hospital_of[str(value)] = target
        loads[target] += int(size)
    return home.map(hospital_of).to_numpy(dtype=np.int64)


def _warn_single_class(parts: list[pd.DataFrame], schema: Schema, method: str) -> None:
    """Column silos cannot always hold both classes; say so instead of bending the silos."""
    for number, part in enumerate(parts, start=1):
        if part[schema.target.column].nunique() < 2:
            log_event(
                _LOG,
                "partition_single_class",
                level=logging.WARNING,
                hospital=number,
                method=method,
                rows=len(part),
            )


def _manifest(
    source: str,
    schema: Schema,
    parts: list[pd.DataFrame],
    method: str,
    alpha: float,
    column: str | None,
    seed: int,
) -> dict[str, Any]:
    """What was split how, and what each hospital got (the simulation's own record)."""
    hospitals = []
    for number, part in enumerate(parts, start=1):
        labels = part[schema.target.column]
        entry: dict[str, Any] = {
            "hospital": number,
            "file": f"hospital-{number}.csv",
            "rows": len(part),
            "patients": int(part[schema.patient_id].nunique()),
            "positives": int(labels.sum()),
            "positive_rate": round(float(labels.mean()), 6),
        }
        if method == "column" and column is not None:
            values = home_values(part, schema, column).unique().tolist()
            entry["values"] = sorted(values, key=lambda v: (not v.isdigit(), len(v), v))
        hospitals.append(entry)
    return {
        "source": source,
        "schema": schema.name,
        "method": method,
        "seed": seed,
        "alpha": alpha if method == "dirichlet" else None,
        "column": column if method == "column" else None,
        "n_hospitals": len(parts),
        "rows": sum(len(part) for part in parts),
        "hospitals": hospitals,
    }
