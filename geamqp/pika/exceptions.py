"""pika's exception names, as `pika.exceptions` has them.

Every name geamqp also has is geamqp's own class (so ``except
pika.exceptions.AMQPConnectionError`` catches what the geamqp connection underneath
raises); the few names only pika has are defined here under the parent pika gives them.
One parent differs on purpose: geamqp's `ProbableAuthenticationError` and
`ProbableAccessDeniedError` are `ConnectionClosedByBroker`s (the broker did close the
connection), so a reconnect loop that stops on `ConnectionClosedByBroker` also stops on
a wrong password instead of retrying it forever.
"""

from __future__ import annotations

from ..exceptions import *  # noqa: F403
from ..exceptions import AMQPConnectionError, AMQPError, ProtocolError
from ..exceptions import __all__ as _GEAMQP_NAMES


class AuthenticationError(AMQPConnectionError):
    """The broker offered no SASL mechanism the credentials support."""


class InvalidChannelNumber(AMQPError):
    """A channel number outside 1..channel_max was asked for."""


class ProtocolSyntaxError(ProtocolError):
    """pika's name for a frame or field the peer got wrong."""


class UnexpectedFrameError(ProtocolSyntaxError):
    pass


class ProtocolVersionMismatch(ProtocolSyntaxError):
    pass


class BodyTooLongError(ProtocolSyntaxError):
    pass


class InvalidFrameError(ProtocolSyntaxError):
    pass


class InvalidFieldTypeException(ProtocolSyntaxError):
    pass


class UnsupportedAMQPFieldException(ProtocolSyntaxError):
    pass


class MethodNotImplemented(AMQPError):
    pass


class ChannelError(Exception):
    pass


class ReentrancyError(Exception):
    """A blocking dispatch method (start_consuming) was called from inside a callback."""


class ShortStringTooLong(AMQPError):
    pass


class DuplicateGetOkCallback(ChannelError):
    pass


__all__ = [
    *_GEAMQP_NAMES,
    "AuthenticationError",
    "BodyTooLongError",
    "ChannelError",
    "DuplicateGetOkCallback",
    "InvalidChannelNumber",
    "InvalidFieldTypeException",
    "InvalidFrameError",
    "MethodNotImplemented",
    "ProtocolSyntaxError",
    "ProtocolVersionMismatch",
    "ReentrancyError",
    "ShortStringTooLong",
    "UnexpectedFrameError",
    "UnsupportedAMQPFieldException",
]
