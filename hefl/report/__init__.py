"""``hefl report``: one self-contained HTML page of a ``hefl simulate`` run folder.

The page holds the results table, the federated runs' AUC and loss per round, ROC,
precision-recall and calibration plots of every method on the pooled hold-out, each method's
AUC on each hospital's own test patients and each hospital's data; its images are embedded, so
the file opens offline. It reads ``summary.json`` and ``scores.npz`` (``hefl.holdout``) only.

Drawing needs matplotlib, an optional extra (``pip install -e '.[report]'``; ``make install``
installs it): without it, :func:`write_report` raises :class:`ReportUnavailable`. The runtime
images do not carry it, and nothing else in ``hefl`` imports this package's drawing modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from common.atomic import write_atomic
from common.errors import ConfigError
from hefl.report.run import RunRecord, load_run

__all__ = ["REPORT_FILE", "ReportUnavailable", "RunRecord", "load_run", "write_report"]

#: The report's file name in the run folder when no other is given.
REPORT_FILE: Final = "report.html"
INSTALL_HINT: Final = "pip install -e '.[report]' (make install does)"


class ReportUnavailable(ConfigError):
    """The report's optional extra (matplotlib) is not installed."""


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``run_dir/report.html``)."""
    run = load_run(run_dir)  # a bad folder is reported before a missing extra
    try:
        from hefl.report.build import render
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "matplotlib":
            raise
        raise ReportUnavailable(f"hefl report needs matplotlib: {INSTALL_HINT}") from exc
    target = out if out is not None else run_dir / REPORT_FILE
    if target.is_dir():
        raise ConfigError(f"--out {target} is a folder: name the HTML file to write")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, render(run).encode("utf-8"), mode=0o644)
    except OSError as exc:
        raise ConfigError(f"cannot write the report to {target}: {exc}") from exc
    return target
