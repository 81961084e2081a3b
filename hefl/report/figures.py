"""The report's plots, drawn with matplotlib's Agg canvas into PNG bytes (no display needed).

The one module that imports matplotlib (an optional extra: ``pip install -e '.[report]'``).
Each function draws one figure with a title, axis labels and a legend, and returns its PNG.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hefl.report.curves import Curve
from hefl.report.run import RoundPoint

SIZE: Final = (8.0, 5.0)  # inches; at DPI, 800 x 500 pixels
DPI: Final = 100
_COLORS: Final = [f"C{i}" for i in range(10)]


def _style(method: str, index: int) -> dict[str, Any]:
    """Federated runs solid (plaintext dashed: it lies under the encrypted one), hospitals alone
    dotted, models trained on the pooled data dash-dotted."""
    style: dict[str, Any] = {"color": _COLORS[index % len(_COLORS)], "linewidth": 1.5}
    if method.startswith("plaintext"):
        style["linestyle"] = "--"
    elif method.endswith(" alone"):
        style["linestyle"] = ":"
    elif "pooled" in method:
        style["linestyle"] = "-."
    else:
        style["linewidth"] = 2.5
    return style


def _figure(size: tuple[float, float] = SIZE) -> tuple[Figure, Axes]:
    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def rounds_plot(series: Mapping[str, Sequence[RoundPoint]], metric: str, label: str) -> bytes:
    """``metric`` (``auc`` or ``loss``) per round of each federated run."""
    figure, axes = _figure()
    for index, (run, points) in enumerate(series.items()):
        x = [p.round for p in points]
        y = [getattr(p, metric) for p in points]
        axes.plot(x, y, marker="o", label=run, **_style(run, index))
    axes.set_title(f"Mean hold-out {label} per round")
    axes.set_xlabel("round")
    axes.set_ylabel(f"{label} (mean over hospitals)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend()
    return _png(figure)


def roc_plot(curves: Sequence[Curve], aucs: Mapping[str, float]) -> bytes:
    figure, axes = _figure((8.0, 6.5))
    for index, curve in enumerate(curves):
        label = f"{curve.method} (AUC {aucs.get(curve.method, math.nan):.3f})"
        axes.plot(curve.x, curve.y, label=label, **_style(curve.method, index))
    axes.plot([0, 1], [0, 1], color="grey", linewidth=1, linestyle="--", label="chance")
    _unit_square(
        axes,
        "ROC curves on the pooled hold-out",
        "false positive rate (1 - specificity)",
        "true positive rate (sensitivity)",
        legend="lower right",
    )
    return _png(figure)


def precision_recall_plot(
    curves: Sequence[Curve], average_precision: Mapping[str, float], prevalence: float
) -> bytes:
    figure, axes = _figure((8.0, 6.5))
    for index, curve in enumerate(curves):
        label = f"{curve.method} (AP {average_precision.get(curve.method, math.nan):.3f})"
        axes.plot(curve.x, curve.y, label=label, **_style(curve.method, index))
    axes.axhline(
        prevalence,
        color="grey",
        linewidth=1,
        linestyle="--",
        label=f"positive rate {prevalence:.3f}",
    )
    _unit_square(
        axes,
        "Precision-recall curves on the pooled hold-out",
        "recall (sensitivity)",
        "precision (PPV)",
        legend="upper right",
    )
    return _png(figure)


def _unit_square(axes: Any, title: str, xlabel: str, ylabel: str, *, legend: str) -> None:
    """Title, labels, [0, 1] on both axes, a light grid and the legend at ``legend``."""
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(loc=legend, fontsize="small")


def calibration_plot(curves: Sequence[Curve], bins: int) -> bytes:
    figure, axes = _figure((8.0, 6.5))
    top = 0.0
    for index, curve in enumerate(curves):
        axes.plot(
            curve.x,
            curve.y,
            marker="o",
            markersize=4,
            label=curve.method,
            **_style(curve.method, index),
        )
        top = max(top, float(np.max(curve.x, initial=0)), float(np.max(curve.y, initial=0)))
    top = min(1.0, top * 1.05) or 1.0
    axes.plot([0, top], [0, top], color="grey", linewidth=1, linestyle="--", label="calibrated")
    axes.set_title(f"Calibration: observed against predicted risk, {bins} groups by predicted risk")
    axes.set_xlabel("mean predicted risk of the group")
    axes.set_ylabel("observed readmission rate of the group")
    axes.set_xlim(0, top)
    axes.set_ylim(0, top)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize="small")
    return _png(figure)


def grouped_bars(
    axes: Axes, groups: Sequence[str], bars: Mapping[str, Sequence[float]], fmt: str
) -> None:
    """One group of bars per entry of ``groups``, one bar per entry of ``bars``; a missing
    (NaN) value is marked n/a instead of a bar."""
    width = 0.8 / max(1, len(bars))
    x = np.arange(len(groups))
    for index, (name, values) in enumerate(bars.items()):
        at = x - 0.4 + width * (index + 0.5)
        heights = np.array(values, dtype=float)
        shown = np.nan_to_num(heights, nan=0.0)
        drawn = axes.bar(at, shown, width, label=name, color=_COLORS[index % len(_COLORS)])
        labels = ["n/a" if math.isnan(v) else format(v, fmt) for v in heights]
        axes.bar_label(drawn, labels=labels, fontsize="x-small", padding=2)
    axes.set_xticks(x, list(groups))


def hospital_auc_plot(table: Mapping[str, Mapping[str, float]], hospitals: Sequence[str]) -> bytes:
    """Per hospital, each method's AUC on that hospital's own test rows."""
    figure, axes = _figure()
    bars = {m: [by.get(h, math.nan) for h in hospitals] for m, by in table.items()}
    grouped_bars(axes, hospitals, bars, ".3f")
    axes.axhline(0.5, color="grey", linewidth=1, linestyle="--", label="chance (0.5)")
    axes.set_title("AUC on each hospital's own test patients")
    axes.set_xlabel("hospital")
    axes.set_ylabel("AUC")
    axes.set_ylim(0, 1.25)
    axes.legend(loc="upper center", ncols=2, fontsize="small")
    return _png(figure)


def data_plot(per_hospital: Mapping[str, Mapping[str, float]]) -> bytes:
    """Each hospital's train and test rows, and their positive rates."""
    figure = Figure(figsize=(10.0, 4.5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    rows_axes, rate_axes = figure.subplots(1, 2)
    names = list(per_hospital)
    for axes, key, fmt, title, ylabel in (
        (rows_axes, "rows", ",.0f", "Rows per hospital", "encounters"),
        (
            rate_axes,
            "positive_rate",
            ".3f",
            "Positive rate per hospital",
            "share positive (label 1)",
        ),
    ):
        bars = {
            split: [_value(per_hospital[n].get(f"{split}_{key}")) for n in names]
            for split in ("train", "test")
        }
        grouped_bars(axes, names, bars, fmt)
        axes.set_title(title)
        axes.set_xlabel("hospital")
        axes.set_ylabel(ylabel)
        axes.margins(y=0.15)
        axes.legend(fontsize="small")
    figure.suptitle("Data per hospital")
    return _png(figure)


def _value(value: object) -> float:
    return float(value) if isinstance(value, int | float) else math.nan
