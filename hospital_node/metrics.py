"""A hospital's own Prometheus metrics: time spent training, encrypting and uploading, rounds
done. Its totals come from the node as a :class:`~hospital_node.observer.HospitalObserver`.

They describe this site only, for this site's IT: served on the hospital's own ``/metrics``
when asked for (``--http-port``), never sent to the coordinator. No row count is among them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.observe import Route
from common.observe.families import Family, counter, gauge
from common.observe.prometheus import Exposition
from hospital_node.observer import Phase


@dataclass
class HospitalMeter:
    """Running totals of one hospital node (a :class:`HospitalObserver`)."""

    seconds: dict[Phase, float] = field(
        default_factory=lambda: {"training": 0.0, "encryption": 0.0, "upload": 0.0}
    )
    rounds_done: int = 0
    last_round: int = 0

    def round_started(self, round_: int) -> None:
        self.last_round = round_

    def phase_done(self, phase: Phase, seconds: float) -> None:
        self.seconds[phase] += seconds

    def round_done(self, round_: int) -> None:
        self.rounds_done += 1

    def metric_families(self) -> list[Family]:
        return [
            counter(
                "hefl_hospital_training_seconds",
                "Seconds of local training",
                self.seconds["training"],
            ),
            counter(
                "hefl_hospital_encryption_seconds",
                "Seconds of masking and encrypting updates",
                self.seconds["encryption"],
            ),
            counter(
                "hefl_hospital_upload_seconds",
                "Seconds of putting encrypted updates in the store",
                self.seconds["upload"],
            ),
            counter(
                "hefl_hospital_rounds_done",
                "Rounds this hospital's update was uploaded for",
                self.rounds_done,
            ),
            gauge(
                "hefl_hospital_round", "The last round this hospital trained for", self.last_round
            ),
        ]


def metrics_routes(meter: HospitalMeter) -> dict[str, Route]:
    """A hospital's HTTP endpoint serves ``/metrics`` alone."""
    return {"/metrics": Exposition(meter.metric_families).render}
