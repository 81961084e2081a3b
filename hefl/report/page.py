"""The report's HTML: tables and embedded images in one page that needs nothing else.

Images are base64 PNG data URIs and the style sheet is inline, so the file opens offline and
can be mailed as it is. Every text from the run folder is escaped.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any, Final

from hefl.reporting import format_mb, top_label

_STYLE: Final = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
td { white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.9em; color: #555; max-width: 900px; }
.note { color: #855; }
"""


@dataclass(frozen=True)
class Plot:
    """One embedded image: its alt text names the plot; the caption says how to read it."""

    alt: str
    png: bytes
    caption: str


def figure(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{escape(plot.alt)}">'
        f"<figcaption>{escape(plot.caption)}</figcaption></figure>"
    )


def paragraph(text: str, *, note: bool = False) -> str:
    return f'<p class="note">{escape(text)}</p>' if note else f"<p>{escape(text)}</p>"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def number(value: Any, spec: str) -> str:
    """``value`` formatted, or ``-`` when it is missing or undefined."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return "-"
    return format(value, spec)


def results_table(results: Sequence[Mapping[str, Any]]) -> str:
    """The comparison table of ``hefl simulate``, with the same figures and formats."""
    top = next((r["clinical"].get("top_fraction") for r in results if r.get("clinical")), None)
    flagged = top_label(top) if isinstance(top, int | float) else "top fraction"
    header = [
        "method",
        "AUC [95% CI]",
        "AP",
        "Brier",
        "calibration slope",
        f"sensitivity@{flagged}",
        f"PPV@{flagged}",
        "seconds",
        "uploaded",
    ]
    rows = []
    for r in results:
        c = r.get("clinical") or {}
        interval = (
            f" [{number(c.get('auc_low'), '.4f')}, {number(c.get('auc_high'), '.4f')}]" if c else ""
        )
        uploaded = r.get("bytes_uploaded")
        rows.append(
            [
                str(r["method"]),
                number(r.get("auc"), ".4f") + interval,
                number(c.get("average_precision"), ".3f"),
                number(c.get("brier"), ".4f"),
                number(c.get("calibration_slope"), ".2f"),
                number(c.get("sensitivity"), ".3f"),
                number(c.get("ppv"), ".3f"),
                number(r.get("seconds"), ".1f"),
                format_mb(uploaded if isinstance(uploaded, int) else None),
            ]
        )
    return table(header, rows)


def data_table(
    per_hospital: Mapping[str, Mapping[str, Any]], finals: Mapping[str, Mapping[str, float]]
) -> str:
    """Each hospital's rows and positive rates, and each federated run's final AUC on its test
    rows as the hospital reported it."""
    header = ["hospital", "train rows", "test rows", "train positive rate", "test positive rate"]
    header += [f"final AUC, {run} (reported)" for run in finals]
    rows = [
        [
            name,
            number(d.get("train_rows"), ",d"),
            number(d.get("test_rows"), ",d"),
            number(d.get("train_positive_rate"), ".3f"),
            number(d.get("test_positive_rate"), ".3f"),
            *(number(by.get(name), ".4f") for by in finals.values()),
        ]
        for name, d in per_hospital.items()
    ]
    return table(header, rows)


def page(title: str, body: Sequence[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>\n" + "\n".join(body) + "\n</body></html>\n"
    )
