"""Metric families as plain values: what a process measures, without Prometheus's library.

A family is computed when it is scraped, from the state the process already keeps (the
coordinator's signed run state, a hospital's running totals): nothing is counted twice, and a
restarted coordinator reports the rounds of its run, not of its process.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]

#: Round durations in seconds: a tiny model closes rounds in a second, a large one in minutes.
DURATION_BUCKETS: tuple[float, ...] = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)


@dataclass(frozen=True)
class Sample:
    """One value of a family, with its labels (a histogram's value is one observation)."""

    value: float
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    """A named metric: ``name`` without the ``_total`` suffix a counter gets on exposition."""

    name: str
    kind: Kind
    help: str
    samples: tuple[Sample, ...]
    label_names: tuple[str, ...] = ()
    buckets: tuple[float, ...] = DURATION_BUCKETS  # histograms only

    def __post_init__(self) -> None:
        if self.name.endswith("_total"):
            raise ValueError(f"{self.name}: a counter's _total suffix is added on exposition")
        for sample in self.samples:
            if set(sample.labels) != set(self.label_names):
                raise ValueError(f"{self.name}: labels {sorted(sample.labels)} of a sample")
            if not math.isfinite(sample.value) or (self.kind != "gauge" and sample.value < 0):
                raise ValueError(f"{self.name}: value {sample.value}")


def counter(name: str, help: str, value: float) -> Family:
    return Family(name=name, kind="counter", help=help, samples=(Sample(value),))


def gauge(name: str, help: str, value: float) -> Family:
    return Family(name=name, kind="gauge", help=help, samples=(Sample(value),))


def labelled_counter(name: str, help: str, label: str, values: Mapping[str, float]) -> Family:
    """A counter per label value, e.g. rejections per reason."""
    samples = tuple(Sample(v, {label: key}) for key, v in sorted(values.items()))
    return Family(name=name, kind="counter", help=help, samples=samples, label_names=(label,))


def histogram(
    name: str,
    help: str,
    observations: Iterable[float],
    buckets: tuple[float, ...] = DURATION_BUCKETS,
) -> Family:
    samples = tuple(Sample(v) for v in observations)
    return Family(name=name, kind="histogram", help=help, samples=samples, buckets=buckets)
