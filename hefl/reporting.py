"""The one reporting path of ``hefl simulate``, whichever engine ran (ours or TFF).

The data header, one progress line per round, the results table and ``summary.json`` are built
here, so the comparison and the TFF reference run print and write the same format.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from common.clinical import DEFAULT_TOP_FRACTION, clinical_metrics
from common.errors import ConfigError
from common.fedavg import finite
from common.metrics import Metrics, compute_metrics
from common.server_optimizer import DEFAULT_SERVER_OPTIMIZER, DISPLAY_NAMES

if TYPE_CHECKING:
    from hefl.simulation import Cohort, SimulationConfig

Emit = Callable[[str], None]
OUTPUT_MARKER: Final = ".hefl-output"
SUMMARY_FILE: Final = "summary.json"
#: Result rows the report looks up by name.
CENTRALIZED: Final = "centralized (pooled data)"
MEAN_ALONE: Final = "mean of hospitals alone"


def alone(hospital: str) -> str:
    """The result row of the model ``hospital`` trained on its own rows only."""
    return f"{hospital} alone"


def federated_method(
    run: str, server_optimizer: str = DEFAULT_SERVER_OPTIMIZER, *, scheme: str | None = None
) -> str:
    """The result row of a federated run (``summary.json``'s ``runs`` key ``run``), named by
    the server optimizer it used: ``encrypted FedAvg (CKKS)``, ``plaintext FedAdam``,
    ``TFF FedYogi (plaintext)``. Another run name is returned as it is."""
    name = DISPLAY_NAMES.get(server_optimizer, server_optimizer)
    if run == "encrypted":
        return f"encrypted {name}" + (f" ({scheme.upper()})" if scheme else "")
    if run == "plaintext":
        return f"plaintext {name}"
    if run == "tff":
        return f"TFF {name} (plaintext)"
    return run


@dataclass(frozen=True, kw_only=True)
class Row:
    """One method's final model, scored on the pooled hold-out.

    ``clinical``: ``common.clinical.ClinicalMetrics.to_dict()`` of its scores (AUC with its 95 %
    bootstrap interval, average precision, Brier, calibration, sensitivity and PPV at the top
    ``top_fraction`` of risk); None for a row that is a mean of other rows.
    """

    method: str
    auc: float
    accuracy: float
    loss: float
    seconds: float
    bytes_uploaded: int | None
    clinical: dict[str, Any] | None = None

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

    @classmethod
    def scored(
        cls,
        method: str,
        y_true: np.ndarray,
        scores: np.ndarray,
        seconds: float,
        uploaded: int | None,
        *,
        top_fraction: float = DEFAULT_TOP_FRACTION,
    ) -> Row:
        """A row from a model's predicted probabilities on the pooled hold-out."""
        metrics = compute_metrics(y_true, scores)
        clinical = clinical_metrics(y_true, scores, top_fraction=top_fraction)
        return replace(cls.of(method, metrics, seconds, uploaded), clinical=clinical.to_dict())


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


def data_summary(cohort: Cohort) -> dict[str, Any]:
    """Each hospital's rows and positive rates, and the pooled hold-out's (``summary.json``'s
    ``data``; the report's data table)."""
    _, y_test = cohort.pooled_test
    return {
        "per_hospital": {
            name: {
                "train_rows": len(d.y_train),
                "test_rows": len(d.y_test),
                "train_positive_rate": float(np.mean(d.y_train)) if len(d.y_train) else None,
                "test_positive_rate": float(np.mean(d.y_test)) if len(d.y_test) else None,
            }
            for name, d in zip(cohort.names, cohort.data, strict=True)
        },
        "pooled_test": {"rows": len(y_test), "positive_rate": float(np.mean(y_test))},
    }


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


def _cell(row: Row, key: str, spec: str) -> str:
    value = (row.clinical or {}).get(key)
    return "-" if value is None else format(value, spec)


def top_label(fraction: float) -> str:
    """``top10%`` for 0.1, ``top12.5%`` for 0.125: the flagged share, as the table names it."""
    return f"top{round(fraction * 100, 2):g}%"


def render_table(rows: list[Row]) -> str:
    """The headline table: discrimination, calibration and what flagging the riskiest rows
    catches; accuracy is in ``summary.json`` only (with 11 % positives it says nothing)."""
    top = next((r.clinical["top_fraction"] for r in rows if r.clinical), DEFAULT_TOP_FRACTION)
    flagged = top_label(top)
    header = (
        f"{'method':<34} {'AUC (95% CI)':>22} {'AP':>6} {'Brier':>6} {'slope':>6} "
        f"{'sens@' + flagged:>13} {'PPV@' + flagged:>12} {'seconds':>8} {'uploaded':>10}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        interval = (
            f"[{_cell(r, 'auc_low', '.4f')}, {_cell(r, 'auc_high', '.4f')}]" if r.clinical else ""
        )
        auc = f"{r.auc:.4f} {interval}"
        lines.append(
            f"{r.method:<34} {auc:>22} {_cell(r, 'average_precision', '.3f'):>6} "
            f"{_cell(r, 'brier', '.4f'):>6} {_cell(r, 'calibration_slope', '.2f'):>6} "
            f"{_cell(r, 'sensitivity', '.3f'):>13} {_cell(r, 'ppv', '.3f'):>12} "
            f"{r.seconds:>8.1f} {format_mb(r.bytes_uploaded):>10}"
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
