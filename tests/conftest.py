"""Fixtures shared by the tests that need a live RabbitMQ broker."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest

from testkit import broker as broker_module


@pytest.fixture
def broker() -> ModuleType:
    """The local broker (started if needed), with ``restart()``, ``stop_app()``, ...

    A broker that cannot be started fails the test with the reason; it never skips.
    """
    try:
        broker_module.ensure_running()
    except broker_module.BrokerError as exc:
        pytest.fail(str(exc), pytrace=False)
    return broker_module


@pytest.fixture
def broker_url(broker: ModuleType) -> Iterator[str]:
    """An AMQP URL to a throw-away virtual host, deleted after the test."""
    with broker.temporary_vhost() as vhost:
        yield vhost.url
