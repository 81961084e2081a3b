"""Progress of long work: tqdm bars on a terminal, plain lines elsewhere, or nothing at all.

The one module that imports tqdm. :func:`progress_for` picks an implementation from the
stream the progress goes to: a terminal gets bars that redraw in place; a file, pipe or
container log gets one line per completed step (``round 3/10  auc 0.6612``) and never a
carriage return; :class:`NullProgress` shows nothing (libraries and tests).

A progress has an outer bar (rounds) and inner bars below it (a fit's local epochs). Inner
bars are transient: reset for every fit and erased when closed. In plain-line mode they print
nothing, on purpose: one line per epoch of every hospital's fit would bury the round lines.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Final, Protocol, TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

#: Values shown beside a bar, such as ``{"auc": 0.66, "loss": 0.59}``.
Info = Mapping[str, float]
#: Size assumed for a terminal that reports none (a pseudo-terminal nobody sized, as under
#: ``script``): tqdm would draw nothing there.
UNSIZED: Final = {"ncols": 80, "nrows": 24}


class Bar(Protocol):
    """One bar: ``total`` steps, of which some are done."""

    def update(self, done: int, info: Info | None = None) -> None:
        """``done`` steps are complete (never fewer than before); ``info`` is shown with them."""

    def restart(self, total: int) -> None:
        """Start over from zero steps of ``total`` (an inner bar at the next fit)."""

    def close(self) -> None:
        """Finish: an outer bar stays on screen, an inner one is erased."""


class Progress(Protocol):
    """Makes bars and writes lines that do not break them."""

    def bar(self, label: str, total: int, *, inner: bool = False, done: int = 0) -> Bar:
        """A new bar, ``done`` steps already complete (not shown as progress made here); an
        ``inner`` one sits below the outer bar and is transient."""

    def write(self, line: str, file: TextIO) -> None:
        """Print ``line`` to ``file`` (with a newline) above any bar."""

    def logs_above_bars(self) -> AbstractContextManager[None]:
        """While entered, console log lines are printed above the bars instead of through them."""


def _describe(info: Info | None) -> str:
    return "".join(f"  {key} {value:.4f}" for key, value in (info or {}).items())


class _NullBar:
    def update(self, done: int, info: Info | None = None) -> None:
        pass

    def restart(self, total: int) -> None:
        pass

    def close(self) -> None:
        pass


class NullProgress:
    """Shows nothing; lines written through it are still printed."""

    def bar(self, label: str, total: int, *, inner: bool = False, done: int = 0) -> Bar:
        return _NullBar()

    def write(self, line: str, file: TextIO) -> None:
        print(line, file=file, flush=True)

    def logs_above_bars(self) -> AbstractContextManager[None]:
        return nullcontext()


class _LineBar:
    def __init__(self, stream: TextIO, label: str, total: int, done: int) -> None:
        self._stream, self._label, self._total, self._done = stream, label, total, done

    def update(self, done: int, info: Info | None = None) -> None:
        if done > self._done:
            self._done = done
            line = f"{self._label} {done}/{self._total}{_describe(info)}"
            print(line, file=self._stream, flush=True)

    def restart(self, total: int) -> None:
        self._total, self._done = total, 0

    def close(self) -> None:
        pass


class LineProgress(NullProgress):
    """One plain line per completed step of an outer bar; inner bars print nothing."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def bar(self, label: str, total: int, *, inner: bool = False, done: int = 0) -> Bar:
        return _NullBar() if inner else _LineBar(self._stream, label, total, done)


class _TqdmBar:
    def __init__(self, bar: tqdm) -> None:
        self._bar = bar

    def update(self, done: int, info: Info | None = None) -> None:
        if info:
            shown = {key: f"{value:.4f}" for key, value in info.items()}
            self._bar.set_postfix(shown, refresh=False)
        self._bar.update(max(0, done - self._bar.n))

    def restart(self, total: int) -> None:
        self._bar.set_postfix({}, refresh=False)
        self._bar.reset(total=total)

    def close(self) -> None:
        self._bar.close()


class TerminalProgress:
    """tqdm bars on ``stream`` (a terminal): the outer bar on the first line, inner ones below."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def bar(self, label: str, total: int, *, inner: bool = False, done: int = 0) -> Bar:
        size = UNSIZED if _columns(self._stream) == 0 else {}
        bar = tqdm(
            total=total,
            initial=done,
            desc=label,
            unit=label.split()[-1],  # "local epoch": "s/epoch"
            file=self._stream,
            leave=not inner,
            position=int(inner),
            **size,
        )
        return _TqdmBar(bar)

    def write(self, line: str, file: TextIO) -> None:
        tqdm.write(line, file=file)
        file.flush()

    def logs_above_bars(self) -> AbstractContextManager[None]:
        return logging_redirect_tqdm()


def _columns(stream: TextIO) -> int | None:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return None


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an open terminal (a closed or detached stream is not)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def progress_for(stream: TextIO | None, *, enabled: bool = True) -> Progress:
    """Bars if ``stream`` is a terminal, plain lines if it is not, nothing if it is None or
    ``enabled`` is false."""
    if stream is None or not enabled:
        return NullProgress()
    return TerminalProgress(stream) if is_terminal(stream) else LineProgress(stream)
