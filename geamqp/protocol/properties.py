"""The 14 basic properties of a content header (spec 4.2.6.1, class "basic").

A property is on the wire only when its flag bit is set; flags are numbered
from bit 15 down, in the order below. ``timestamp`` is an int of seconds since
the epoch, as in pika; ``headers`` is a field table.

Speed: every message carries a property list, so, as in `_codegen`, the
encoder is straight-line source generated from `PROPERTIES` at import, and
each distinct flag word gets a decoder generated for exactly the properties it
announces, on first sight (brokers send a handful of distinct flag words; past
`_MAX_DECODERS` the generic loop takes over, so a hostile peer cannot make the
cache grow without bound).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from ..exceptions import InvalidFieldError
from .fields import decode_table_at, encode_table_into

__all__ = ["BasicProperties", "decode_properties", "encode_properties", "new_properties"]

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
_KNOWN_FLAGS = sum(flag for _, _, flag in _FLAGS)  # 0xFFFC
_Q = struct.Struct(">Q")
_OCTETS = tuple(bytes((i,)) for i in range(256))
_MAX_DECODERS = 256


class BasicProperties:
    """Message properties; every one is optional and defaults to None.

    Not slotted on purpose: unset properties are the class's None defaults,
    so a received message pays only for the properties it carries.
    """

    content_type: str | None = None
    content_encoding: str | None = None
    headers: dict[str, Any] | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: int | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None
    cluster_id: str | None = None

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


# --------------------------------------------------------------------------- generated code

_NAMESPACE: dict[str, Any] = {
    "BasicProperties": BasicProperties,
    "new": object.__new__,
    "InvalidFieldError": InvalidFieldError,
    "decode_table_at": decode_table_at,
    "encode_table_into": encode_table_into,
    "OCTETS": _OCTETS,
    "Q": _Q,
}


def _compile(lines: list[str], name: str) -> Any:
    namespace = dict(_NAMESPACE)
    exec("\n".join(lines), namespace)
    return namespace[name]


def _encoder_source() -> list[str]:
    lines = [
        "def encode_properties(props):",
        "    if props is None:",
        "        return b'\\x00\\x00'",
        "    flags = 0",
        "    out = bytearray(2)",
    ]
    for name, domain, flag in _FLAGS:
        lines += [f"    value = props.{name}", "    if value is not None:",
                  f"        flags |= {flag:#06x}"]
        if domain == "shortstr":
            lines += [
                "        raw = value.encode('utf-8', 'surrogateescape')",
                "        if len(raw) > 255:",
                f"            raise ValueError(f'{name} is {{len(raw)}} bytes long; "
                "a short string holds 255')",
                "        out += OCTETS[len(raw)]",
                "        out += raw",
            ]
        elif domain == "octet":
            lines += [
                "        if not 0 <= value <= 255:",
                f"            raise ValueError(f'{name} must be 0..255, not {{value}}')",
                "        out += OCTETS[value]",
            ]
        elif domain == "timestamp":
            lines.append("        out += Q.pack(int(value))")
        else:
            lines.append("        encode_table_into(value, out)")
    # The bytearray itself is returned: callers join it into a frame, so a bytes()
    # copy here would only cost time.
    lines += ["    out[0] = flags >> 8", "    out[1] = flags & 0xFF", "    return out"]
    return lines


def _decoder_source(flags: int) -> list[str]:
    """Source of a decoder for the properties `flags` announces, and only those."""
    lines = ["def decode(buf, pos):"]
    for name, domain, flag in _FLAGS:
        if not flags & flag:
            continue
        if domain == "shortstr":
            lines += ["    end = pos + 1 + buf[pos]",
                      f"    {name} = str(buf[pos + 1:end], 'utf-8', 'surrogateescape')",
                      "    pos = end"]
        elif domain == "octet":
            lines += [f"    {name} = buf[pos]", "    pos += 1"]
        elif domain == "timestamp":
            lines += [f"    {name}, = Q.unpack_from(buf, pos)", "    pos += 8"]
        else:
            lines.append(f"    {name}, pos = decode_table_at(buf, pos)")
    lines += ["    if pos > len(buf):",
              "        raise InvalidFieldError('content header properties truncated')",
              "    props = new(BasicProperties)"]
    lines += [f"    props.{name} = {name}" for name, _, flag in _FLAGS if flags & flag]
    lines.append("    return props, pos")
    return lines


encode_properties: Callable[[BasicProperties | None], bytes] = _compile(
    _encoder_source(), "encode_properties")
encode_properties.__doc__ = "Property flags followed by the set properties."

_Decoder = Callable[[bytes, int], "tuple[BasicProperties, int]"]
_DECODERS: dict[int, _Decoder] = {}


def _decoder_for(flags: int) -> _Decoder:
    if len(_DECODERS) >= _MAX_DECODERS:
        return lambda buf, pos: _decode_generic(flags, buf, pos)
    decoder: _Decoder = _compile(_decoder_source(flags), "decode")
    _DECODERS[flags] = decoder
    return decoder


def new_properties() -> BasicProperties:
    """Empty properties, without running __init__ (every message without properties)."""
    return object.__new__(BasicProperties)


def _decode_generic(flags: int, buf: bytes, pos: int) -> tuple[BasicProperties, int]:
    props = new_properties()
    for name, domain, flag in _FLAGS:
        if not flags & flag:
            continue
        if domain == "shortstr":
            end = pos + 1 + buf[pos]
            value: Any = str(buf[pos + 1 : end], "utf-8", "surrogateescape")
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


def decode_properties(buf: bytes, pos: int) -> tuple[BasicProperties, int]:
    """Decode flags and properties at `pos`; returns them and the offset after.

    Anything malformed or truncated raises `InvalidFieldError`.
    """
    try:
        flags = (buf[pos] << 8) | buf[pos + 1]
        pos += 2
        if flags & 1:
            # Continuation flag: basic defines 14 properties, so no more flag words
            # carry anything we know; skip them (the spec allows longer flag lists).
            while buf[pos + 1] & 1:
                pos += 2
            pos += 2
        flags &= _KNOWN_FLAGS
        decoder = _DECODERS.get(flags)
        if decoder is None:
            decoder = _decoder_for(flags)
        return decoder(buf, pos)
    except (IndexError, struct.error):
        raise InvalidFieldError("content header properties truncated") from None
