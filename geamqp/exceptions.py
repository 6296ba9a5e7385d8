"""Every exception geamqp raises.

Names and parents follow pika's so that code written for pika ports by
changing its imports. Protocol-level failures (a peer that breaks AMQP 0-9-1)
are `ProtocolError` subclasses carrying the reply code the client sends in its
connection.close. No exception here ever holds a credential.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AMQPChannelError",
    "AMQPConnectionError",
    "AMQPError",
    "AMQPHeartbeatTimeout",
    "BadFrameEnd",
    "BadHeartbeat",
    "ChannelClosed",
    "ChannelClosedByBroker",
    "ChannelClosedByClient",
    "ChannelWrongStateError",
    "CommandInvalid",
    "ConnectionBlockedTimeout",
    "ConnectionClosed",
    "ConnectionClosedByBroker",
    "ConnectionClosedByClient",
    "ConnectionOpenAborted",
    "ConnectionWrongStateError",
    "ConsumerCancelled",
    "ContentTooLarge",
    "DuplicateConsumerTag",
    "FrameError",
    "FrameTooLarge",
    "IncompatibleProtocolError",
    "InvalidFieldError",
    "InvalidTuneError",
    "NackError",
    "NoFreeChannels",
    "ProbableAccessDeniedError",
    "ProbableAuthenticationError",
    "ProtocolError",
    "PublishOutcomeUnknown",
    "StreamLostError",
    "UnexpectedFrame",
    "UnknownChannel",
    "UnknownFrameType",
    "UnknownMethod",
    "UnroutableError",
]

# Reply codes of AMQP 0-9-1 section 1.9 that the client itself sends.
FRAME_ERROR = 501
SYNTAX_ERROR = 502
COMMAND_INVALID = 503
CHANNEL_ERROR = 504
UNEXPECTED_FRAME = 505
NOT_IMPLEMENTED = 540
INTERNAL_ERROR = 541


class AMQPError(Exception):
    """Root of every geamqp exception."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}: {self}"


class AMQPConnectionError(AMQPError):
    """The connection could not be opened, or it is gone."""


class ConnectionOpenAborted(AMQPConnectionError):
    """The connection was closed while it was still opening."""


class StreamLostError(AMQPConnectionError):
    """The socket failed or was closed under us."""


class AMQPHeartbeatTimeout(AMQPConnectionError):
    """The peer sent nothing for two heartbeat intervals."""


class ConnectionWrongStateError(AMQPConnectionError):
    """The operation needs the connection in another state (usually open)."""


class NoFreeChannels(AMQPConnectionError):
    """Every channel number up to the negotiated channel_max is in use."""


class ConnectionBlockedTimeout(AMQPConnectionError):
    """The broker kept the connection blocked longer than blocked_connection_timeout."""


class IncompatibleProtocolError(AMQPConnectionError):
    """The server does not speak AMQP 0-9-1 (it answered with another protocol header)."""


class PublishOutcomeUnknown(AMQPConnectionError):
    """The connection died while this publish waited for its confirm: it may or may not
    have reached the queue."""


class _Closed(AMQPConnectionError):
    def __init__(self, reply_code: int, reply_text: str) -> None:
        super().__init__(reply_code, reply_text)
        self.reply_code = reply_code
        self.reply_text = reply_text

    def __str__(self) -> str:
        return f"({self.reply_code}) {self.reply_text!r}"


class ConnectionClosed(_Closed):
    """The connection was closed; `reply_code` and `reply_text` say why."""


class ConnectionClosedByBroker(ConnectionClosed):
    """The broker closed the connection (connection.close from the server)."""


class ConnectionClosedByClient(ConnectionClosed):
    """This client closed the connection."""


class ProbableAuthenticationError(ConnectionClosedByBroker):
    """The broker refused the credentials (403 ACCESS_REFUSED, or a bare close
    right after start-ok)."""


class ProbableAccessDeniedError(ConnectionClosedByBroker):
    """The broker refused the virtual host (530 NOT_ALLOWED, or a close right after open)."""


class AMQPChannelError(AMQPError):
    """A channel-level failure; the connection is unaffected."""


class ChannelWrongStateError(AMQPChannelError):
    """The operation needs the channel in another state (usually open)."""


class DuplicateConsumerTag(AMQPChannelError):
    """A consumer with this tag already exists on the channel."""


class ConsumerCancelled(AMQPChannelError):
    """The broker cancelled the consumer (queue deleted, node down)."""


class ChannelClosed(AMQPChannelError):
    """The channel was closed; `reply_code` and `reply_text` say why."""

    def __init__(self, reply_code: int, reply_text: str) -> None:
        super().__init__(reply_code, reply_text)
        self.reply_code = reply_code
        self.reply_text = reply_text

    def __str__(self) -> str:
        return f"({self.reply_code}) {self.reply_text!r}"


class ChannelClosedByBroker(ChannelClosed):
    """The broker closed the channel (channel.close from the server, e.g. 404, 406)."""


class ChannelClosedByClient(ChannelClosed):
    """This client closed the channel."""


class UnroutableError(AMQPChannelError):
    """A mandatory publish was returned by the broker; `messages` holds it."""

    def __init__(self, messages: list[Any]) -> None:
        super().__init__(f"{len(messages)} unroutable message(s) returned")
        self.messages = messages


class NackError(AMQPChannelError):
    """The broker nacked a publish in confirm mode; `messages` holds it."""

    def __init__(self, messages: list[Any]) -> None:
        super().__init__(f"{len(messages)} message(s) nacked by the broker")
        self.messages = messages


class ProtocolError(AMQPError):
    """The peer broke AMQP 0-9-1.

    `reply_code` is the code sent in the client's connection.close. When `fatal`
    is true the connection is closed without sending anything more on it (the
    spec's rule for a corrupt frame boundary).
    """

    reply_code = INTERNAL_ERROR
    fatal = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.events: list[Any] = []  # events decoded before the fault, in order


class FrameError(ProtocolError):
    """A malformed frame (501 FRAME_ERROR)."""

    reply_code = FRAME_ERROR


class BadHeartbeat(FrameError):
    """A heartbeat frame on a channel other than 0 (spec 4.2.7)."""


class FrameTooLarge(FrameError):
    """A frame header announced more than the negotiated frame_max."""


class ContentTooLarge(FrameError):
    """A content header announced a body above the maximum message size."""


class BadFrameEnd(FrameError):
    """A frame did not end with 0xCE: the stream is corrupt, nothing more is sent."""

    fatal = True


class UnknownFrameType(FrameError):
    """A frame type other than method, header, body or heartbeat: nothing more is sent."""

    fatal = True


class InvalidFieldError(ProtocolError):
    """A field, table or array that cannot be decoded (502 SYNTAX_ERROR)."""

    reply_code = SYNTAX_ERROR


class InvalidTuneError(InvalidFieldError):
    """connection.tune offered values no client can work with."""


class CommandInvalid(ProtocolError):
    """A method the server may not send, or not in this state (503 COMMAND_INVALID)."""

    reply_code = COMMAND_INVALID


class UnknownChannel(ProtocolError):
    """A frame for a channel that is not open or above channel_max (504 CHANNEL_ERROR)."""

    reply_code = CHANNEL_ERROR


class UnexpectedFrame(ProtocolError):
    """A frame out of order: a body past body_size, a header with no method
    (505 UNEXPECTED_FRAME)."""

    reply_code = UNEXPECTED_FRAME


class UnknownMethod(ProtocolError):
    """A class or method id not in AMQP 0-9-1 (540 NOT_IMPLEMENTED)."""

    reply_code = NOT_IMPLEMENTED
