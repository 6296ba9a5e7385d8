"""`pika.spec`: the AMQP 0-9-1 method classes and `BasicProperties`, as geamqp has them.

The classes are geamqp's own (``isinstance(method, pika.spec.Basic.Deliver)`` holds for
what a consumer callback receives) and carry pika's field names (``delivery_tag``,
``consumer_tag``, ``message_count``...). Constants are pika's.
"""

from __future__ import annotations

from ..protocol.properties import BasicProperties
from ..protocol.spec import Basic, Channel, Confirm, Connection, Exchange, Queue, Tx

__all__ = [
    "ACCESS_REFUSED", "CHANNEL_ERROR", "COMMAND_INVALID", "CONNECTION_FORCED",
    "CONTENT_TOO_LARGE", "FRAME_BODY", "FRAME_END", "FRAME_END_SIZE", "FRAME_ERROR",
    "FRAME_HEADER", "FRAME_HEADER_SIZE", "FRAME_HEARTBEAT", "FRAME_MAX_SIZE", "FRAME_METHOD",
    "FRAME_MIN_SIZE", "INTERNAL_ERROR", "INVALID_PATH", "NOT_ALLOWED", "NOT_FOUND",
    "NOT_IMPLEMENTED", "NO_CONSUMERS", "NO_ROUTE", "PERSISTENT_DELIVERY_MODE", "PORT",
    "PRECONDITION_FAILED", "PROTOCOL_VERSION", "REPLY_SUCCESS", "RESOURCE_ERROR",
    "RESOURCE_LOCKED", "SYNTAX_ERROR", "TRANSIENT_DELIVERY_MODE", "UNEXPECTED_FRAME",
    "Basic", "BasicProperties", "Channel", "Confirm", "Connection", "Exchange", "Queue", "Tx",
]

PROTOCOL_VERSION = (0, 9, 1)
PORT = 5672

ACCESS_REFUSED = 403
CHANNEL_ERROR = 504
COMMAND_INVALID = 503
CONNECTION_FORCED = 320
CONTENT_TOO_LARGE = 311
FRAME_BODY = 3
FRAME_END = 206
FRAME_END_SIZE = 1
FRAME_ERROR = 501
FRAME_HEADER = 2
FRAME_HEADER_SIZE = 7
FRAME_HEARTBEAT = 8
FRAME_MAX_SIZE = 131072
FRAME_METHOD = 1
FRAME_MIN_SIZE = 4096
INTERNAL_ERROR = 541
INVALID_PATH = 402
NOT_ALLOWED = 530
NOT_FOUND = 404
NOT_IMPLEMENTED = 540
NO_CONSUMERS = 313
NO_ROUTE = 312
PERSISTENT_DELIVERY_MODE = 2
PRECONDITION_FAILED = 406
REPLY_SUCCESS = 200
RESOURCE_ERROR = 506
RESOURCE_LOCKED = 405
SYNTAX_ERROR = 502
TRANSIENT_DELIVERY_MODE = 1
UNEXPECTED_FRAME = 505
