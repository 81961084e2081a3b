"""``hefl predict``: a hospital's model bundle scores new rows, such as today's discharges.

The rows are read and checked against the schema the bundle carries, exactly as training reads
a hospital's CSV (a bad value is refused naming the file, CSV line and column), except that the
target column may be absent: the outcome of a new discharge is not known yet. They are encoded
with the bundle's feature layout and scored by the same code that evaluated the model in
training (``hospital_node.training.LocalTrainer.predict``), so a row scores the same here as
it did there.

The output is a CSV with one line per input row, in input order:

- ``line``: the row's line in the input CSV (the line errors name);
- the schema's patient id, then every ignored column named ``*_id`` that the input has (for
  Diabetes-130: ``patient_nbr``, ``encounter_id``), so that a flag can be acted on;
- ``risk``: the predicted probability of readmission;
- ``flagged``: 1 when ``risk`` is at or above the bundle's threshold, the score that flagged the
  bundle's top fraction (by default the riskiest 10 %) of the hospital's own hold-out.

TensorFlow is imported only once the bundle and the CSV have been checked.
"""

from __future__ import annotations

import io
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

import numpy as np
import pandas as pd

from common.atomic import write_atomic
from common.bundle import Bundle, read_bundle
from common.data import FeatureEncoder, Schema, read_csv
from common.logs import log_event
from common.progress import Progress, is_terminal, progress_for

logger = logging.getLogger("hefl.predict")

LINE_COLUMN: Final = "line"
RISK_COLUMN: Final = "risk"
FLAGGED_COLUMN: Final = "flagged"
ID_SUFFIX: Final = "_id"
#: Nine significant digits write every float32 probability exactly.
FLOAT_FORMAT: Final = "%.9g"


@dataclass(frozen=True, eq=False)
class Scores:
    """One scored CSV: the output table and the bundle that scored it."""

    table: pd.DataFrame
    bundle: Bundle

    @property
    def flagged(self) -> int:
        return int(self.table[FLAGGED_COLUMN].sum())

    def summary(self, csv: Path, out: Path | None) -> str:
        """One line for the operator: rows, flags, the threshold and where it comes from."""
        manifest = self.bundle.manifest
        return (
            f"scored {len(self.table)} rows of {csv}: {self.flagged} flagged (risk >= "
            f"{manifest.threshold:.4f}, the top {manifest.top_fraction * 100:g}% of "
            f"{manifest.hospital}'s hold-out in run {manifest.run}) -> "
            f"{out if out is not None else 'standard output'}"
        )


def id_columns(schema: Schema, columns: pd.Index) -> list[str]:
    """The patient id, then the ignored columns named ``*_id`` among ``columns``."""
    named = [
        spec.name
        for spec in schema.columns
        if spec.kind == "ignore" and spec.name.lower().endswith(ID_SUFFIX)
    ]
    return [name for name in (schema.patient_id, *named) if name in columns]


def score_csv(bundle_path: Path, csv: Path, *, progress: Progress | None = None) -> Scores:
    """Score every row of ``csv`` with the bundle in ``bundle_path``.

    Raises BundleError for a bundle that is missing, incomplete, changed or inconsistent,
    DataError (file, line, column) for a CSV that does not fit its schema, TrainingError when
    the model cannot be read.
    """
    bundle = read_bundle(bundle_path)
    frame = read_csv(csv, bundle.schema, labelled=False)
    risk = _predict(bundle, frame, progress)
    table = frame[id_columns(bundle.schema, frame.columns)].reset_index(drop=True)
    table.insert(0, LINE_COLUMN, frame.index.to_numpy())
    table[RISK_COLUMN] = risk.astype(np.float64)
    table[FLAGGED_COLUMN] = (table[RISK_COLUMN] >= bundle.threshold).astype(np.int8)
    scores = Scores(table=table, bundle=bundle)
    log_event(
        logger,
        "rows_scored",
        hospital=bundle.manifest.hospital,
        run=bundle.manifest.run,
        rows=len(table),
        flagged=scores.flagged,
    )
    return scores


def _predict(bundle: Bundle, frame: pd.DataFrame, progress: Progress | None) -> np.ndarray:
    """The bundle's model on the rows of ``frame``, encoded and scored chunk by chunk (the
    chunks of training's predict, so the scores are the same), with a bar of rows scored."""
    from hospital_node.training import PREDICT_CHUNK_ROWS, LocalTrainer

    encoder = FeatureEncoder(bundle.schema)
    trainer = LocalTrainer(bundle.model, bundle.manifest.n_features)
    weights = trainer.saved_weights(bundle.model_file)
    bar = (progress or progress_for(None)).bar("rows", len(frame))
    parts = [np.zeros(0, dtype=np.float32)]
    try:
        for start in range(0, len(frame), PREDICT_CHUNK_ROWS):
            features = encoder.features(frame.iloc[start : start + PREDICT_CHUNK_ROWS])
            parts.append(trainer.predict(weights, features))
            bar.update(start + len(features))
    finally:
        bar.close()
    return np.concatenate(parts)


def write_scores(scores: Scores, out: Path | None, stdout: TextIO = sys.stdout) -> None:
    """The scores CSV to ``out`` (replaced in one rename), or to ``stdout`` when None."""
    buffer = io.StringIO()
    scores.table.to_csv(buffer, index=False, float_format=FLOAT_FORMAT)
    if out is None:
        stdout.write(buffer.getvalue())
        stdout.flush()
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, buffer.getvalue().encode("utf-8"))


def terminal_progress(stream: TextIO = sys.stderr) -> Progress:
    """A bar on ``stream`` when it is a terminal; nothing otherwise (a log stays clean)."""
    return progress_for(stream, enabled=is_terminal(stream))
