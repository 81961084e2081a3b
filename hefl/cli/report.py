"""Handler of ``report``, and the report ``simulate`` writes at the end of its run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hefl.cli.options import ReportOptions


def report(options: ReportOptions) -> int:
    """Write the HTML report of a run folder and say where."""
    from hefl.report import write_report

    print(f"wrote report: {write_report(options.run_dir, options.out)}")
    return 0


def report_after_run(run_dir: Path, emit: Callable[[str], None]) -> None:
    """The report of a finished ``simulate`` run; without the report extra the run still
    succeeds, and says how to get the report."""
    from hefl.report import ReportUnavailable, write_report

    try:
        emit(f"wrote report: {write_report(run_dir)}")
    except ReportUnavailable as exc:
        emit(f"no report: {exc}; then hefl report {run_dir}")
