"""Watching a running process: metric families, their Prometheus exposition, a read-only HTTP
endpoint. The coordinator and the hospitals describe what they measure as plain
:class:`Family` values; only ``common.observe.prometheus`` knows Prometheus's library."""

from common.observe.families import Family, Sample, counter, gauge, histogram
from common.observe.http import HttpEndpoint, Route

__all__ = ["Family", "HttpEndpoint", "Route", "Sample", "counter", "gauge", "histogram"]
