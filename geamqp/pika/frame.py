"""`pika.frame`: the frame objects pika hands to callbacks and returns from RPCs.

geamqp decodes frames in its sans-I/O core and never builds these on the wire; the
compat layer wraps a decoded method in a `Method` frame where pika's API returns one
(``channel.queue_declare(...).method.queue``, the on-cancel callback's argument).
"""

from __future__ import annotations

from typing import Any

from . import spec

__all__ = ["Body", "Frame", "Header", "Heartbeat", "Method", "ProtocolHeader"]


class Frame:
    """Base of every frame: its type and the channel it belongs to."""

    def __init__(self, frame_type: int, channel_number: int) -> None:
        self.frame_type = frame_type
        self.channel_number = channel_number

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"<{type(self).__name__}({fields})>"


class Method(Frame):
    """A method frame: ``frame.method`` is the decoded AMQP method."""

    def __init__(self, channel_number: int, method: Any) -> None:
        super().__init__(spec.FRAME_METHOD, channel_number)
        self.method = method


class Header(Frame):
    """A content header: body size and `BasicProperties`."""

    def __init__(self, channel_number: int, body_size: int, props: Any) -> None:
        super().__init__(spec.FRAME_HEADER, channel_number)
        self.body_size = body_size
        self.properties = props


class Body(Frame):
    """A content body frame: ``fragment`` holds its bytes."""

    def __init__(self, channel_number: int, fragment: bytes) -> None:
        super().__init__(spec.FRAME_BODY, channel_number)
        self.fragment = fragment


class Heartbeat(Frame):
    def __init__(self) -> None:
        super().__init__(spec.FRAME_HEARTBEAT, 0)


class ProtocolHeader:
    """The protocol header the client opens with (AMQP 0-9-1)."""

    def __init__(self, major: int | None = None, minor: int | None = None,
                 revision: int | None = None) -> None:
        self.frame_type = -1
        self.major = major or spec.PROTOCOL_VERSION[0]
        self.minor = minor or spec.PROTOCOL_VERSION[1]
        self.revision = revision or spec.PROTOCOL_VERSION[2]
