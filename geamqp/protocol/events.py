"""What the protocol core reports: small frozen records, one per happening.

`AMQPConnection.receive_data()` and `tick()` return lists of these, in the
order the bytes said them. Replies nobody asked for (heartbeats, close-ok,
flow-ok) are already queued in `data_to_send()` when an event is returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..exceptions import AMQPError
from .properties import BasicProperties
from .spec import Method

__all__ = [
    "ChannelClosed",
    "ChannelOpened",
    "ConnectionBlocked",
    "ConnectionClosed",
    "ConnectionOpened",
    "ConnectionUnblocked",
    "ContentReceived",
    "Event",
    "HeartbeatTimeout",
    "MethodReceived",
]


class Event:
    """Base of every event."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class ConnectionOpened(Event):
    """connection.open-ok arrived: the connection is usable."""

    server_properties: dict[str, Any]  # connection.start's table (product, version, capabilities)
    channel_max: int  # negotiated: highest channel number usable
    frame_max: int  # negotiated: largest frame, overhead included
    heartbeat: int  # negotiated interval in seconds; 0 = off


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The connection is closed; nothing more will be received or sent."""

    reply_code: int  # the code of the close (ours or the peer's); 0 when the stream ended
    reply_text: str
    by_peer: bool  # True when the server closed it or the stream ended
    error: AMQPError  # the exception to raise in everything still waiting on it


@dataclass(frozen=True, slots=True)
class ConnectionBlocked(Event):
    """connection.blocked: the broker stopped reading publishes (memory or disk alarm)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionUnblocked(Event):
    """connection.unblocked: publishes flow again."""


@dataclass(frozen=True, slots=True)
class ChannelOpened(Event):
    """channel.open-ok arrived for `channel`."""

    channel: int


@dataclass(frozen=True, slots=True)
class ChannelClosed(Event):
    """The channel is closed and its number free again."""

    channel: int
    reply_code: int
    reply_text: str
    class_id: int  # the method that failed, when the broker closed it
    method_id: int
    by_peer: bool  # True when the broker sent channel.close


@dataclass(frozen=True, slots=True)
class MethodReceived(Event):
    """A method without content on an open channel (replies, acks, nacks, cancels, flow)."""

    channel: int
    method: Method


@dataclass(slots=True)
class ContentReceived(Event):
    """A whole message: basic.deliver, basic.return or basic.get-ok with its content.

    The one event made per message, so it is not frozen (a frozen dataclass pays an
    `object.__setattr__` per field); treat it as read-only all the same.
    """

    channel: int
    method: Method
    properties: BasicProperties
    body: bytes


@dataclass(frozen=True, slots=True)
class HeartbeatTimeout(Event):
    """Nothing arrived for two heartbeat intervals: the peer is presumed dead."""

    silent_for: float  # seconds since the last byte arrived
