"""The 14 basic properties of a content header (spec 4.2.6.1, class "basic").

A property is on the wire only when its flag bit is set; flags are numbered
from bit 15 down, in the order below. ``timestamp`` is an int of seconds since
the epoch, as in pika; ``headers`` is a field table.
"""

from __future__ import annotations

import struct
from typing import Any

from ..exceptions import InvalidFieldError
from ._codegen import pack_shortstr
from .fields import decode_table_at, encode_table

__all__ = ["BasicProperties", "decode_properties", "encode_properties"]

# (name, domain) in flag order: the first has flag 0x8000.
PROPERTIES: tuple[tuple[str, str], ...] = (
    ("content_type", "shortstr"),
    ("content_encoding", "shortstr"),
    ("headers", "table"),
    ("delivery_mode", "octet"),
    ("priority", "octet"),
    ("correlation_id", "shortstr"),
    ("reply_to", "shortstr"),
    ("expiration", "shortstr"),
    ("message_id", "shortstr"),
    ("timestamp", "timestamp"),
    ("type", "shortstr"),
    ("user_id", "shortstr"),
    ("app_id", "shortstr"),
    ("cluster_id", "shortstr"),
)
_NAMES = tuple(name for name, _ in PROPERTIES)
_FLAGS = tuple((name, domain, 1 << (15 - i)) for i, (name, domain) in enumerate(PROPERTIES))
_Q = struct.Struct(">Q")


class BasicProperties:
    """Message properties; every one is optional and defaults to None."""

    __slots__ = _NAMES

    content_type: str | None
    content_encoding: str | None
    headers: dict[str, Any] | None
    delivery_mode: int | None
    priority: int | None
    correlation_id: str | None
    reply_to: str | None
    expiration: str | None
    message_id: str | None
    timestamp: int | None
    type: str | None
    user_id: str | None
    app_id: str | None
    cluster_id: str | None

    def __init__(
        self,
        content_type: str | None = None,
        content_encoding: str | None = None,
        headers: dict[str, Any] | None = None,
        delivery_mode: int | None = None,
        priority: int | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        expiration: str | None = None,
        message_id: str | None = None,
        timestamp: int | None = None,
        type: str | None = None,
        user_id: str | None = None,
        app_id: str | None = None,
        cluster_id: str | None = None,
    ) -> None:
        self.content_type = content_type
        self.content_encoding = content_encoding
        self.headers = headers
        self.delivery_mode = delivery_mode
        self.priority = priority
        self.correlation_id = correlation_id
        self.reply_to = reply_to
        self.expiration = expiration
        self.message_id = message_id
        self.timestamp = timestamp
        self.type = type
        self.user_id = user_id
        self.app_id = app_id
        self.cluster_id = cluster_id

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BasicProperties):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in _NAMES)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        given = [f"{n}={getattr(self, n)!r}" for n in _NAMES if getattr(self, n) is not None]
        return f"BasicProperties({', '.join(given)})"


def encode_properties(props: BasicProperties | None) -> bytes:
    """Property flags followed by the set properties."""
    if props is None:
        return b"\x00\x00"
    flags = 0
    parts = [b""]
    for name, domain, flag in _FLAGS:
        value = getattr(props, name)
        if value is None:
            continue
        flags |= flag
        if domain == "shortstr":
            parts.append(pack_shortstr(value, name))
        elif domain == "octet":
            if not 0 <= value <= 255:
                raise ValueError(f"{name} must be 0..255, not {value}")
            parts.append(bytes((value,)))
        elif domain == "timestamp":
            parts.append(_Q.pack(int(value)))
        else:
            parts.append(encode_table(value))
    parts[0] = flags.to_bytes(2, "big")
    return b"".join(parts)


def decode_properties(buf: bytes, pos: int) -> tuple[BasicProperties, int]:
    """Decode flags and properties at `pos`; returns them and the offset after."""
    flags = int.from_bytes(buf[pos : pos + 2], "big")
    pos += 2
    props = BasicProperties()
    if not flags:
        return props, pos
    if flags & 1:
        # Continuation flag: basic defines 14 properties, so no more flag words
        # carry anything we know; skip them (the spec allows longer flag lists).
        while int.from_bytes(buf[pos : pos + 2], "big") & 1:
            pos += 2
        pos += 2
    for name, domain, flag in _FLAGS:
        if not flags & flag:
            continue
        if domain == "shortstr":
            end = pos + 1 + buf[pos]
            value: Any = bytes(buf[pos + 1 : end]).decode("utf-8", "surrogateescape")
            pos = end
        elif domain == "octet":
            value = buf[pos]
            pos += 1
        elif domain == "timestamp":
            (value,) = _Q.unpack_from(buf, pos)
            pos += 8
        else:
            value, pos = decode_table_at(buf, pos)
        setattr(props, name, value)
    if pos > len(buf):
        raise InvalidFieldError("content header properties truncated")
    return props, pos
