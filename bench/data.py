"""The benchmarks' data: the real Diabetes-130 file, or a seeded sample of whole patients."""

from __future__ import annotations

from pathlib import Path

from common.data.sources import DEFAULT_DATASET
from testkit.cluster import sample_csv


def dataset(workdir: Path, patients: int, *, seed: int = 7, source: Path = DEFAULT_DATASET) -> Path:
    """``source`` itself when ``patients`` is 0, else a CSV of that many random patients' rows
    (whole patients, so the patient-grouped splits still mean something)."""
    if not source.exists():
        raise SystemExit(
            f"dataset not found: {source} (set HEFL_SHARED_DATA to the folder holding diabetes130/)"
        )
    if patients <= 0:
        return source
    return sample_csv(workdir / f"sample-{patients}.csv", patients, seed, source=source)
