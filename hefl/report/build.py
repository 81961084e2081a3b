"""The report of one run folder: which plots and tables, in which order, with which words.

``render`` turns a :class:`~hefl.report.run.RunRecord` into the page; what it lacks (the
scores of an older run or of ``--engine tff``, the data summary of an older run) is said in
place of the plots that would need it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from hefl.holdout import SCORES_FILE, HoldoutScores
from hefl.report import curves, figures
from hefl.report.page import (
    Plot,
    data_table,
    figure,
    number,
    page,
    paragraph,
    results_table,
)
from hefl.report.run import RunRecord
from hefl.reporting import CENTRALIZED, alone

TITLES = {
    "auc": "Mean hold-out AUC per round",
    "loss": "Mean hold-out loss per round",
    "roc": "ROC curves",
    "pr": "Precision-recall curves",
    "calibration": "Calibration (reliability diagram by deciles of predicted risk)",
    "hospital_auc": "AUC on each hospital's own test patients",
    "data": "Data per hospital",
}


def render(run: RunRecord) -> str:
    body = [*_introduction(run), "<h2>Results on the pooled hold-out</h2>"]
    body.append(results_table(run.results))
    body.append(_plot_section(run))
    per_hospital = _per_hospital_data(run)
    body.append("<h2>Hospitals</h2>")
    if run.scores is not None:
        body.append(figure(_hospital_auc_plot(run.scores, run)))
    if per_hospital:
        body.append(data_table(per_hospital, run.final_by_hospital))
        body.append(
            figure(
                Plot(
                    alt=f"Plot: {TITLES['data']}, rows and positive rate of train and test",
                    png=figures.data_plot(per_hospital),
                    caption="Each hospital's encounters in its training and test split (split "
                    "by patient) and the share of them with the positive label.",
                )
            )
        )
    else:
        body.append(paragraph("This run recorded no per-hospital data summary.", note=True))
    return page(f"hefl report: {run.folder.resolve().name}", body)


def _introduction(run: RunRecord) -> list[str]:
    c = run.config
    lines = []
    if c:
        split = str(c.get("partition", "?"))
        if split == "dirichlet":
            split += f" (alpha {c.get('alpha')})"
        elif split == "column":
            split += f" ({c.get('column')})"
        he = c.get("he")
        scheme = str(he.get("scheme", "?")).upper() if isinstance(he, dict) else "none"
        lines.append(
            f"Data {c.get('dataset')} (schema {c.get('schema')}), {c.get('hospitals')} "
            f"hospitals split {split}, {c.get('rounds')} rounds, seed {c.get('seed')}; "
            f"encryption {scheme}, pairwise masks {'on' if c.get('masking') else 'off'}."
        )
    pooled = run.data.get("pooled_test")
    if isinstance(pooled, dict):
        lines.append(
            f"Pooled hold-out: {pooled.get('rows')} encounters, positive rate "
            f"{number(pooled.get('positive_rate'), '.3f')}; every method is scored on it."
        )
    upload = run.summary.get("upload")
    if isinstance(upload, dict) and isinstance(upload.get("bytes_per_parameter"), int | float):
        lines.append(
            f"Encrypted upload: {upload['bytes_per_hospital_per_round'] / 1e3:.1f} kB per "
            f"hospital per round, {upload['bytes_per_parameter']:.2f} bytes per parameter."
        )
    return [paragraph(line) for line in lines]


def _plot_section(run: RunRecord) -> str:
    parts = []
    if run.rounds:
        parts.append("<h2>Federated training per round</h2>")
        for metric, name in (("auc", "AUC"), ("loss", "loss")):
            parts.append(
                figure(
                    Plot(
                        alt=f"Plot: {TITLES[metric]} of each federated run",
                        png=figures.rounds_plot(run.rounds, metric, name),
                        caption=f"Each round's model scored by every hospital on its own test "
                        f"patients; the {name} averaged over hospitals without weights (the "
                        "coordinator never learns dataset sizes).",
                    )
                )
            )
    parts.append("<h2>Discrimination and calibration</h2>")
    if run.scores is None:
        parts.append(
            paragraph(
                f"{run.folder / SCORES_FILE} is missing (a run before the report, or "
                "--engine tff): no ROC, precision-recall or calibration plots.",
                note=True,
            )
        )
        return "\n".join(parts)
    holdout = run.scores
    rows = {str(r["method"]): r.get("clinical") or {} for r in run.results}
    aucs = {m: _float(rows.get(m, {}).get("auc")) for m in holdout.methods}
    aps = {m: _float(rows.get(m, {}).get("average_precision")) for m in holdout.methods}
    prevalence = float(np.mean(holdout.labels))
    plots = [
        Plot(
            alt=f"Plot: {TITLES['roc']} of every method on the pooled hold-out",
            png=figures.roc_plot(curves.roc_curves(holdout), aucs),
            caption="Sensitivity against false positive rate as the risk threshold falls; "
            "the area under each curve is its AUC.",
        ),
        Plot(
            alt=f"Plot: {TITLES['pr']} of every method on the pooled hold-out",
            png=figures.precision_recall_plot(
                curves.precision_recall_curves(holdout), aps, prevalence
            ),
            caption="Share of flagged encounters readmitted (precision, PPV) against share of "
            "readmissions flagged (recall); a model that guesses stays at the positive rate.",
        ),
        Plot(
            alt=f"Plot: {TITLES['calibration']} of every method",
            png=figures.calibration_plot(
                curves.reliability_curves(holdout), curves.CALIBRATION_BINS
            ),
            caption=f"The pooled hold-out sorted by each method's predicted risk and cut into "
            f"{curves.CALIBRATION_BINS} equal groups: each point is a group's mean predicted "
            "risk and its observed rate. A calibrated model lies on the diagonal.",
        ),
    ]
    parts.extend(figure(p) for p in plots)
    return "\n".join(parts)


def _hospital_auc_plot(holdout: HoldoutScores, run: RunRecord) -> Plot:
    hospitals = holdout.hospitals
    wanted = [holdout.methods[0], *(alone(h) for h in hospitals), CENTRALIZED]
    aucs = curves.hospital_aucs(holdout, [m for m in wanted if m in holdout.methods])
    table: dict[str, dict[str, float]] = {holdout.methods[0]: aucs[holdout.methods[0]]}
    own = {h: aucs[alone(h)][h] for h in hospitals if alone(h) in aucs}
    if own:
        table["the hospital alone (its own model)"] = own
    if CENTRALIZED in aucs:
        table[CENTRALIZED] = aucs[CENTRALIZED]
    return Plot(
        alt=f"Plot: {TITLES['hospital_auc']}, per method",
        png=figures.hospital_auc_plot(table, hospitals),
        caption="Each hospital's test patients scored by the federated model, by the model "
        "the hospital trained alone and by the centralized model; n/a where a hospital's test "
        "patients hold one class only.",
    )


def _per_hospital_data(run: RunRecord) -> dict[str, Mapping[str, Any]]:
    """``summary.json``'s per-hospital rows, or what ``scores.npz`` says of the test splits."""
    recorded = run.data.get("per_hospital")
    if isinstance(recorded, dict) and all(isinstance(v, dict) for v in recorded.values()):
        return dict(recorded)
    if run.scores is None:
        return {}
    holdout = run.scores
    return {
        name: {
            "test_rows": rows.stop - rows.start,
            "test_positive_rate": float(np.mean(holdout.labels[rows]))
            if rows.stop > rows.start
            else None,
        }
        for name, rows in holdout.slices().items()
    }


def _float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan
