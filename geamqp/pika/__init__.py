"""A drop-in for pika 1.3's blocking API: ``import geamqp.pika as pika``.

Legacy code written for ``pika.BlockingConnection`` runs unchanged on geamqp: the
reader greenlet answers heartbeats while callbacks run, the connection and its
channels may be shared by greenlets and threads, and recovery is there when asked for
(``pika.BlockingConnection(params, recover=True)``; off by default, as pika never
recovers). What differs from pika on purpose is listed in docs/migrating-from-pika.md.

Imported only when the application imports it: ``import geamqp`` never loads it.
"""

from . import adapters, connection, credentials, exceptions, exchange_type, frame, spec
from .adapters.blocking_connection import BlockingChannel, BlockingConnection
from .connection import ConnectionParameters, SSLOptions, URLParameters
from .credentials import PlainCredentials
from .delivery_mode import DeliveryMode
from .exchange_type import ExchangeType
from .spec import BasicProperties

__version__ = "1.3.2"  # the pika API this module follows

_ASYNC_ADAPTERS = ("SelectConnection", "AsyncioConnection", "TornadoConnection",
                   "TwistedProtocolConnection", "GeventConnection")


def __getattr__(name: str) -> object:
    if name in _ASYNC_ADAPTERS:
        raise AttributeError(
            f"geamqp.pika has no {name}: only pika's blocking adapter is provided; callback "
            f"code moves to geamqp's native API (see docs/migrating-from-pika.md)")
    raise AttributeError(f"module 'geamqp.pika' has no attribute {name!r}")

__all__ = [
    "BasicProperties",
    "BlockingChannel",
    "BlockingConnection",
    "ConnectionParameters",
    "DeliveryMode",
    "ExchangeType",
    "PlainCredentials",
    "SSLOptions",
    "URLParameters",
    "adapters",
    "connection",
    "credentials",
    "exceptions",
    "exchange_type",
    "frame",
    "spec",
]
