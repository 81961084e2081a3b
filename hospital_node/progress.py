"""A hospital's progress bars: the run's rounds, and the local epochs of the current fit.

:class:`ProgressBars` is a :class:`~hospital_node.observer.HospitalObserver` (it moves the
rounds bar when a round's update is uploaded) and an epoch callback for the trainer (it moves
the epochs bar). :func:`hospital_progress` wires both to a stream: bars on a terminal, one
``round N/M`` line per round otherwise (see ``common.progress``). The embedded simulation
reuses :class:`EpochBar` for its hospitals and baselines.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple, TextIO

from common.progress import Bar, Progress, progress_for
from hospital_node.observer import Phase
from hospital_node.trainer import TrainerFactory, keras_trainer_with

ROUNDS_LABEL = "round"
EPOCHS_LABEL = "local epoch"


class EpochBar:
    """An epoch callback (:data:`~hospital_node.trainer.EpochCallback`) drawing the inner bar:
    started over at each fit's first epoch, with the epoch's training loss beside it."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._bar: Bar | None = None

    def __call__(self, epoch: int, epochs: int, loss: float) -> None:
        if self._bar is None:
            self._bar = self._progress.bar(EPOCHS_LABEL, epochs, inner=True)
        elif epoch == 0:
            self._bar.restart(epochs)
        self._bar.update(epoch + 1, {"loss": loss})

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class ProgressBars:
    """A hospital's rounds bar (an observer) and epochs bar (``on_epoch``), on one progress.

    The rounds bar opens at the first round the node answers (a node joining late starts
    part-way) and counts rounds whose update is uploaded.
    """

    def __init__(self, progress: Progress, *, rounds: int) -> None:
        self._progress = progress
        self._rounds = rounds
        self._bar: Bar | None = None
        self.on_epoch = EpochBar(progress)

    def round_started(self, round_: int) -> None:
        if self._bar is None:
            self._bar = self._progress.bar(ROUNDS_LABEL, self._rounds, done=round_ - 1)

    def phase_done(self, phase: Phase, seconds: float) -> None:
        """Phases are not shown (``/metrics`` has their timings)."""

    def round_done(self, round_: int) -> None:
        if self._bar is None:
            self._bar = self._progress.bar(ROUNDS_LABEL, self._rounds)
        self._bar.update(round_)
        if round_ >= self._rounds:
            self.close()

    def close(self) -> None:
        """Erase the epochs bar and leave the rounds bar as it stands; safe to call twice."""
        self.on_epoch.close()
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class HospitalProgress(NamedTuple):
    """What :func:`hospital_progress` gives ``run_hospital``: the observer to pass to
    ``Hospital(observers=...)`` and the Keras trainer factory that reports local epochs."""

    observer: ProgressBars
    trainer_for: TrainerFactory


@contextmanager
def hospital_progress(
    *, rounds: int, stream: TextIO | None, enabled: bool = True
) -> Iterator[HospitalProgress]:
    """A hospital's bars on ``stream`` for a run of ``rounds`` rounds, while the block runs.

    Inside the block console log lines are printed above the bars; on leaving it the bars are
    closed (the rounds bar stays on screen as it stood, the epochs bar is erased).
    """
    progress = progress_for(stream, enabled=enabled)
    bars = ProgressBars(progress, rounds=rounds)
    try:
        with progress.logs_above_bars():
            yield HospitalProgress(bars, keras_trainer_with(on_epoch=bars.on_epoch))
    finally:
        bars.close()
