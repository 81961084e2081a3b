"""Prometheus's text exposition of :class:`~common.observe.families.Family` values.

The only module that imports ``prometheus_client``. Each endpoint has its own registry (the
embedded simulation runs many nodes in one process), holding the families a callback computes at
scrape time and the process's own figures (resident memory, CPU seconds, open files).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from common.observe.families import Family

#: The classic text format, which every Prometheus server reads (Debian's 2.42 too).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


class _Families(Collector):
    def __init__(self, collect: Callable[[], Iterable[Family]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        for family in self._collect():
            yield _metric(family)


def _metric(family: Family) -> Metric:
    labels = list(family.label_names)
    if family.kind == "histogram":
        values = sorted(s.value for s in family.samples)
        bounds = [*family.buckets, float("inf")]
        hist = HistogramMetricFamily(family.name, family.help)
        hist.add_metric(
            [],
            [(_bound(b), float(sum(v <= b for v in values))) for b in bounds],
            sum_value=float(sum(values)),
        )
        return hist
    kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
    metric = kind(family.name, family.help, labels=labels)
    for sample in family.samples:
        metric.add_metric([sample.labels[name] for name in labels], sample.value)
    return metric


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else f"{bound:g}"


class Exposition:
    """Renders the families of one process (plus its process figures) for a scrape."""

    def __init__(self, collect: Callable[[], Iterable[Family]], *, process: bool = True) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Families(collect))
        if process:
            ProcessCollector(registry=self._registry)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self._registry), CONTENT_TYPE
