"""The benchmarks' data: the real Diabetes-130 file, or a seeded sample of whole patients."""

from __future__ import annotations

from pathlib import Path

from common.data.sources import DEFAULT_DATASET


def dataset(workdir: Path, patients: int, *, seed: int = 7, source: Path = DEFAULT_DATASET) -> Path:
    """``source`` itself when ``patients`` is 0, else a CSV of that many random patients' rows
    (whole patients, so the patient-grouped splits still mean something)."""
    if not source.exists():
        raise SystemExit(
            f"dataset not found: {source} (set HEFL_SHARED_DATA to the folder holding diabetes130/)"
        )
    if patients <= 0:
        return source
    import pandas as pd

    frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    chosen = frame["patient_nbr"].drop_duplicates().sample(n=patients, random_state=seed)
    path = workdir / f"sample-{patients}.csv"
    frame[frame["patient_nbr"].isin(chosen)].to_csv(path, index=False)
    return path
