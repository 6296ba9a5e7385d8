"""geamqp: a gevent-native AMQP 0-9-1 client for RabbitMQ."""

from . import exceptions
from .exceptions import *  # noqa: F403
from .protocol.properties import BasicProperties
from .protocol.sasl import ExternalCredentials, PlainCredentials

__version__ = "0.1.0"

__all__ = [
    "BasicProperties",
    "ExternalCredentials",
    "PlainCredentials",
    "__version__",
    "exceptions",
    *exceptions.__all__,
]
