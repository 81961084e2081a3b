"""What a hospital node reports while it works, for whoever watches it: its ``/metrics`` and
its progress bars. Observers are called on the node's own thread and must return quickly."""

from __future__ import annotations

from typing import Literal, Protocol

#: The timed parts of a hospital's round.
Phase = Literal["training", "encryption", "upload"]


class HospitalObserver(Protocol):
    """Receives a hospital's progress; every method is optional in spirit (no-ops are fine)."""

    def round_started(self, round_: int) -> None:
        """The node began answering ``round_`` (it trains next)."""

    def phase_done(self, phase: Phase, seconds: float) -> None:
        """One timed part of the current round ended after ``seconds``."""

    def round_done(self, round_: int) -> None:
        """The node's update for ``round_`` is uploaded and announced."""
