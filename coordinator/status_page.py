"""The coordinator's status page: one HTML document rendered from ``coordinator.status.status``.

No script and nothing fetched: inline styles and SVG charts, and the page reloads itself every
few seconds, so it works behind the strictest content policy and in any browser.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

REFRESH_SECONDS = 5
_W, _H, _PAD = 360, 150, 34


def render(status: dict[str, Any]) -> str:
    history = status["history"]
    auc = [(r["round"], r["auc"]) for r in history if r["auc"] is not None]
    loss = [(r["round"], r["loss"]) for r in history if r["loss"] is not None]
    seconds = [(r["round"], r["seconds"]) for r in history]
    charts = "".join(
        (
            _line_chart("Mean hold-out AUC per round", auc, "#1b6ac9"),
            _line_chart("Mean hold-out loss per round", loss, "#c0392b"),
            _line_chart("Round duration (s)", seconds, "#2e8b57"),
        )
    )
    deadline = status["deadline_seconds"]
    facts = [
        ("Phase", status["activity"]),
        (
            "Round",
            f'<span id="round" data-round="{status["round"]}">{status["round"]}</span>'
            f" of {status['rounds']} ({status['rounds_closed']} closed)",
        ),
        ("Deadline", "-" if deadline is None else f"in {deadline:.0f} s"),
        ("Pairwise masking", "on" if status["masking"] else "off"),
        (
            "Bytes received / sent",
            f"{_size(status['bytes_received'])} / {_size(status['bytes_sent'])}",
        ),
        ("Aggregation time", f"{status['aggregation_seconds']:.2f} s"),
    ]
    outcome = outcome_text(status)
    if outcome is not None:
        facts.append(("Outcome", outcome))
    if status["error"]:
        facts.append(("Error", f'<span class="bad">{escape(status["error"])}</span>'))
    return _PAGE.format(
        refresh=REFRESH_SECONDS,
        run=escape(status["run"]),
        phase=escape(status["phase"]),
        facts="".join(f"<tr><th>{k}</th><td>{_cell(k, v)}</td></tr>" for k, v in facts),
        charts=charts,
        roster=_table(
            ("Hospital", "Present", "Last seen", "This round"),
            [
                (
                    h["hospital"],
                    "yes" if h["present"] else "no",
                    "never"
                    if h["last_seen_seconds"] is None
                    else f"{h['last_seen_seconds']:.0f} s ago",
                    h["this_round"],
                )
                for h in status["roster"]
            ],
        ),
        rounds=_table(
            ("Round", "Contributors", "Failed", "Attempts", "Seconds", "Uploaded", "AUC", "Loss"),
            [
                (
                    r["round"],
                    r["contributors"],
                    r["failed"],
                    r["attempts"],
                    f"{r['seconds']:.1f}",
                    _size(r["bytes_uploaded"]),
                    "-" if r["auc"] is None else f"{r['auc']:.4f}",
                    "-" if r["loss"] is None else f"{r['loss']:.4f}",
                )
                for r in reversed(history)
            ],
        ),
        rejected=_table(("Reason", "Count"), list(status["rejected"].items()))
        if status["rejected"]
        else "<p>None.</p>",
    )


def outcome_text(status: dict[str, Any]) -> str | None:
    """How the run's rounds ended and which round's model is final (None while rounds run),
    e.g. ``stopped early after round 7: no better mean hold-out loss for 3 rounds; final
    model: round 4``."""
    final, closed = status["final_round"], status["rounds_closed"]
    if status["stop_reason"] == "early-stopping":
        delta = status["min_delta"]
        loss = (
            "better mean hold-out loss"
            if not delta
            else f"mean hold-out loss better by more than {delta:g}"
        )
        return (
            f"stopped early after round {closed}: no {loss} for {status['patience']} rounds; "
            f"final model: round {final}"
        )
    if status["stop_reason"] == "max-rounds":
        return f"ran all {closed} rounds; final model: round {final}"
    return None


def _cell(key: str, value: str) -> str:
    # Round, Error: markup built above from escaped values; the rest is plain text.
    return value if key in ("Round", "Error") else escape(value)


def _table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def _line_chart(title: str, points: Sequence[tuple[int, float]], color: str) -> str:
    """An SVG line chart of ``points`` (round, value); a note when there is nothing yet."""
    head = f"<figure><figcaption>{escape(title)}</figcaption>"
    if not points:
        return head + '<p class="empty">No round has this yet.</p></figure>'
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5 * (abs(y0) or 1), y1 + 0.5 * (abs(y1) or 1)

    def at(x: float, y: float) -> str:
        px = _PAD + (x - x0) / (x1 - x0) * (_W - 2 * _PAD)
        py = _H - _PAD + (y - y0) / (y1 - y0) * (2 * _PAD - _H)
        return f"{px:.1f},{py:.1f}"

    line = " ".join(at(x, y) for x, y in points)
    dots = "".join(
        f'<circle cx="{at(x, y).split(",")[0]}" cy="{at(x, y).split(",")[1]}" r="3"/>'
        for x, y in points
    )
    return (
        head + f'<svg class="chart" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img" '
        f'aria-label="{escape(title)}"><g fill="{color}" stroke="{color}">'
        f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" stroke="#999"/>'
        f'<line x1="{_PAD}" y1="{_PAD}" x2="{_PAD}" y2="{_H - _PAD}" stroke="#999"/>'
        f'<polyline points="{line}" fill="none" stroke-width="2"/>{dots}</g>'
        f'<g font-size="11" fill="#333"><text x="2" y="{_PAD + 4}">{y1:.3g}</text>'
        f'<text x="2" y="{_H - _PAD}">{y0:.3g}</text>'
        f'<text x="{_PAD}" y="{_H - 10}">round {x0}</text>'
        + (f'<text x="{_W - _PAD - 50}" y="{_H - 10}">round {x1}</text>' if x1 in xs else "")
        + "</g></svg></figure>"
    )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{refresh}">
<title>hefl {run}: {phase}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; background: #fafafa; }}
h1 {{ font-size: 1.4em; margin-bottom: .2em; }} h2 {{ font-size: 1.1em; margin-top: 1.4em; }}
table {{ border-collapse: collapse; margin: .4em 0; background: #fff; }}
th, td {{ border: 1px solid #ddd; padding: .25em .6em; text-align: left; font-size: .92em; }}
thead th {{ background: #eef2f7; }} .bad {{ color: #b00020; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; background: #fff; border: 1px solid #ddd; padding: .5em; }}
figcaption {{ font-size: .9em; margin-bottom: .3em; }} .empty {{ width: 360px; color: #777; }}
.note {{ color: #666; font-size: .85em; }}
</style></head><body>
<h1>Federated run <code>{run}</code></h1>
<p class="note">The coordinator's view for its operator: hospitals' names and timings, never
their data. The page reloads every {refresh} s.</p>
<table>{facts}</table>
<div class="charts">{charts}</div>
<h2>Hospitals</h2>{roster}
<h2>Rounds</h2>{rounds}
<h2>Messages refused</h2>{rejected}
</body></html>
"""
