"""The one reporting path of ``hefl simulate``, whichever engine ran (ours or TFF).

The data header, one progress line per round, the results table and ``summary.json`` are built
here, so the comparison and the TFF reference run print and write the same format.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from common.errors import ConfigError
from common.fedavg import finite
from common.metrics import Metrics

if TYPE_CHECKING:
    from hefl.simulation import Cohort, SimulationConfig

Emit = Callable[[str], None]
OUTPUT_MARKER: Final = ".hefl-output"
SUMMARY_FILE: Final = "summary.json"


@dataclass(frozen=True, kw_only=True)
class Row:
    """One method's final model, scored on the pooled hold-out."""

    method: str
    auc: float
    accuracy: float
    loss: float
    seconds: float
    bytes_uploaded: int | None

    @classmethod
    def of(cls, method: str, metrics: Metrics, seconds: float, uploaded: int | None) -> Row:
        return cls(
            method=method,
            auc=metrics.auc,
            accuracy=metrics.accuracy,
            loss=metrics.loss,
            seconds=seconds,
            bytes_uploaded=uploaded,
        )


def format_mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} MB"


def prepare_output(out: Path) -> Path:
    """Start from an empty output folder, but never delete a folder this tool did not make."""
    if out.exists() and any(out.iterdir()):
        if not (out / OUTPUT_MARKER).exists():
            raise ConfigError(
                f"output folder {out} is not empty and was not written by hefl; "
                "choose another --out (it is replaced on every run)"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / OUTPUT_MARKER).write_text("written by hefl simulate; replaced on every run\n")
    return out


def data_header(config: SimulationConfig, cohort: Cohort) -> list[str]:
    """What was split how, and each hospital's rows and positive rate."""
    lines = [
        f"data: {config.dataset} ({config.schema}), {config.hospitals} hospitals, "
        f"partition {config.partition}, {config.rounds} rounds, seed {config.seed}",
        "encrypted uploads carry pairwise masks (each one alone decrypts to noise)"
        if config.masking
        else "encrypted uploads without pairwise masks (--no-masking)",
    ]
    for name, d in zip(cohort.names, cohort.data, strict=True):
        lines.append(
            f"  {name}: {len(d.y_train)} train / {len(d.y_test)} test rows, "
            f"positive rate {float(np.mean(d.y_train)):.3f}"
        )
    return lines


def progress_line(
    *,
    round_: int,
    rounds: int,
    contributed: int,
    hospitals: int,
    metrics: Mapping[str, float] | None,
    seconds: float,
    uploaded: int | None,
) -> str:
    """One closed round: contributors, mean hold-out AUC and loss, wall time, bytes uploaded."""
    m = metrics or {}
    return (
        f"  round {round_:>3}/{rounds}  hospitals {contributed}/{hospitals}  "
        f"auc {m.get('auc', math.nan):.4f}  loss {m.get('loss', math.nan):.4f}  "
        f"{seconds:6.1f} s  uploaded {format_mb(uploaded)}"
    )


def render_table(rows: list[Row]) -> str:
    header = (
        f"{'method':<28} {'test AUC':>9} {'accuracy':>9} {'loss':>8} {'seconds':>8} "
        f"{'uploaded':>11}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.method:<28} {r.auc:>9.4f} {r.accuracy:>9.4f} {r.loss:>8.4f} "
            f"{r.seconds:>8.1f} {format_mb(r.bytes_uploaded):>11}"
        )
    return "\n".join(lines)


def results(rows: list[Row], y_test: np.ndarray) -> list[str]:
    """The pooled hold-out line and the table, after a blank line."""
    return [
        "",
        f"pooled hold-out: {len(y_test)} encounters, positive rate {float(np.mean(y_test)):.3f}",
        render_table(rows),
    ]


def write_summary(out: Path, summary: Mapping[str, Any]) -> Path:
    """``summary.json`` under ``out``; undefined metrics (NaN) are written as null."""
    path = out / SUMMARY_FILE
    path.write_text(json.dumps(finite(dict(summary)), indent=1, allow_nan=False, default=str))
    return path
