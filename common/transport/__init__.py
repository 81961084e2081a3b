"""Message transports: the protocol and its implementations."""

from common.transport.base import ANNOUNCE, SUBMIT, TOPICS, Handler, Transport
from common.transport.inmemory import InMemoryTransport

__all__ = ["ANNOUNCE", "SUBMIT", "TOPICS", "Handler", "InMemoryTransport", "Transport"]
