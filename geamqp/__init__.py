"""geamqp: a gevent-native AMQP 0-9-1 client for RabbitMQ."""

import importlib
import logging
from typing import TYPE_CHECKING

from . import exceptions
from .exceptions import *  # noqa: F403
from .parameters import ConnectionParameters, SSLOptions, URLParameters
from .protocol.properties import BasicProperties
from .protocol.sasl import ExternalCredentials, PlainCredentials

if TYPE_CHECKING:
    from ._ack_guard import ConsumerTimeoutGuard
    from ._hub import ForkedConnectionError
    from .channel import Channel
    from .connection import Connection, connect
    from .consumer import Confirmation, ReturnedMessage
    from .fleet import ConsumerFleet
    from .publisher import Publisher, PublisherClosed

__version__ = "0.1.0"

logging.getLogger("geamqp").addHandler(logging.NullHandler())

# The client pulls in gevent; it is imported on first use so that
# geamqp.protocol (sans-I/O) and geamqp.exceptions stay importable without it.
_LAZY = {
    "connect": ".connection",
    "Connection": ".connection",
    "Channel": ".channel",
    "Confirmation": ".consumer",
    "ReturnedMessage": ".consumer",
    "Publisher": ".publisher",
    "ConsumerFleet": ".fleet",
    "ConsumerTimeoutGuard": "._ack_guard",
    "ForkedConnectionError": "._hub",
    "PublisherClosed": ".publisher",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'geamqp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "BasicProperties",
    "Channel",
    "Confirmation",
    "Connection",
    "ConnectionParameters",
    "ConsumerFleet",
    "ConsumerTimeoutGuard",
    "ExternalCredentials",
    "ForkedConnectionError",
    "PlainCredentials",
    "Publisher",
    "PublisherClosed",
    "ReturnedMessage",
    "SSLOptions",
    "URLParameters",
    "__version__",
    "connect",
    "exceptions",
    *exceptions.__all__,
]
