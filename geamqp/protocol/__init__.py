"""geamqp's sans-I/O AMQP 0-9-1 core: no gevent, no sockets, no threads, no clock.

Bytes in, events and bytes out; see `connection.AMQPConnection`.
"""

from . import events, spec
from .connection import AMQPConnection, ClientSettings, negotiate_heartbeat, negotiate_limit
from .fields import decode_table, encode_table
from .properties import BasicProperties
from .sasl import Credentials, ExternalCredentials, PlainCredentials
from .state import ChanState, ConnState

__all__ = [
    "AMQPConnection",
    "BasicProperties",
    "ChanState",
    "ClientSettings",
    "ConnState",
    "Credentials",
    "ExternalCredentials",
    "PlainCredentials",
    "decode_table",
    "encode_table",
    "events",
    "negotiate_heartbeat",
    "negotiate_limit",
    "spec",
]
