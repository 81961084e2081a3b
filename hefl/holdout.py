"""The pooled hold-out's labels and every method's scores, kept beside ``summary.json``.

``summary.json`` holds each method's figures; the report's curves (ROC, precision-recall,
calibration) and its per-hospital AUCs need the scores themselves. ``scores.npz`` (numpy,
compressed, readable without pickle) holds:

- ``labels``: int8, one 0/1 label per encounter of the pooled hold-out;
- ``methods``: the result rows that have scores (every row of ``results[]`` but the mean of the
  hospitals alone), in the table's order;
- ``scores``: float32, one row per method, one column per encounter: the predicted probability
  of readmission;
- ``hospitals`` and ``test_rows``: the pooled hold-out is the hospitals' test splits one after
  the other, ``test_rows[i]`` encounters of ``hospitals[i]``.

No features and no identifiers: a label and a score per encounter.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from common.errors import ConfigError

SCORES_FILE: Final = "scores.npz"
_KEYS: Final = ("labels", "methods", "scores", "hospitals", "test_rows")


@dataclass(frozen=True, eq=False)
class HoldoutScores:
    """What ``scores.npz`` holds, checked for consistency (see the module docstring)."""

    labels: np.ndarray
    methods: tuple[str, ...]
    scores: np.ndarray
    hospitals: tuple[str, ...]
    test_rows: tuple[int, ...]

    def of(self, method: str) -> np.ndarray:
        """The scores of one method (its row of ``scores``)."""
        return self.scores[self.methods.index(method)]

    def slices(self) -> dict[str, slice]:
        """Each hospital's encounters within the pooled hold-out."""
        ends = np.cumsum(self.test_rows)
        starts = ends - np.asarray(self.test_rows)
        return {
            name: slice(int(start), int(end))
            for name, start, end in zip(self.hospitals, starts, ends, strict=True)
        }


def write_scores(
    out: Path,
    labels: np.ndarray,
    scores: Mapping[str, np.ndarray],
    *,
    hospitals: Sequence[str],
    test_rows: Sequence[int],
) -> Path:
    """``scores.npz`` under ``out``: ``scores`` maps each method to its hold-out scores."""
    path = out / SCORES_FILE
    np.savez_compressed(
        path,
        labels=np.asarray(labels).astype(np.int8),
        methods=np.asarray(list(scores), dtype=str),
        scores=np.stack([np.asarray(s, dtype=np.float32).reshape(-1) for s in scores.values()]),
        hospitals=np.asarray(list(hospitals), dtype=str),
        test_rows=np.asarray(list(test_rows), dtype=np.int64),
    )
    return path


def read_scores(path: Path) -> HoldoutScores:
    """Read and check ``scores.npz``; a :class:`ConfigError` naming the file when it is unusable."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ConfigError(f"{path}: not a hefl scores file (one array, not an .npz archive)")
        with data:
            missing = [key for key in _KEYS if key not in data.files]
            if missing:
                raise ConfigError(f"{path}: not a hefl scores file, it lacks {', '.join(missing)}")
            arrays = {key: data[key] for key in _KEYS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ConfigError(f"{path}: cannot read the hold-out scores: {exc}") from exc
    labels, scores, rows = arrays["labels"], arrays["scores"], arrays["test_rows"]
    methods = tuple(str(m) for m in arrays["methods"].reshape(-1))
    if labels.ndim != 1 or not np.isin(labels, (0, 1)).all():
        raise ConfigError(f"{path}: labels must be one 0/1 label per encounter")
    if scores.shape != (len(methods), labels.size):
        raise ConfigError(
            f"{path}: scores has shape {scores.shape}, expected {len(methods)} methods x "
            f"{labels.size} encounters"
        )
    if not (np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()):
        raise ConfigError(f"{path}: scores must be probabilities within [0, 1]")
    hospitals = tuple(str(h) for h in arrays["hospitals"].reshape(-1))
    if rows.shape != (len(hospitals),) or (rows < 0).any() or int(rows.sum()) != labels.size:
        raise ConfigError(
            f"{path}: test_rows {rows.tolist()} must give each of the {len(hospitals)} "
            f"hospitals' test rows, {labels.size} in all"
        )
    return HoldoutScores(
        labels=labels.astype(np.int64),
        methods=methods,
        scores=scores.astype(np.float64),
        hospitals=hospitals,
        test_rows=tuple(int(r) for r in rows),
    )
