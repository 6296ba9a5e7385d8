"""Frames: AMQP 0-9-1 section 4.2.3 (general frame format) and 2.3.5 (frame details).

    type:octet  channel:short  size:long  payload:size octets  frame-end:0xCE

Rules enforced by `FrameReader`, from the header alone and before any
allocation: the type is method (1), header (2), body (3) or heartbeat (8);
the whole frame fits the negotiated frame_max. When the frame is complete its
last byte must be 0xCE — otherwise the stream is corrupt and the spec says to
close without sending anything more (`BadFrameEnd.fatal`).

Encoders build whole frames as one bytes object, so a publish's method,
header and body frames reach the writer together and never interleave with
another greenlet's. Bodies are split by frame_max. `encode_publish`,
`encode_ack` and `decode_deliver` are the hand-tuned hot paths; the tests
check them against the generic codec of `spec.py`.
"""

from __future__ import annotations

import struct

from ..exceptions import BadFrameEnd, FrameError, FrameTooLarge, UnknownFrameType
from ._codegen import pack_shortstr
from .properties import BasicProperties, encode_properties
from .spec import Basic, Method

__all__ = [
    "FRAME_BODY",
    "FRAME_END",
    "FRAME_HEADER",
    "FRAME_HEARTBEAT",
    "FRAME_METHOD",
    "FRAME_MIN_SIZE",
    "HEARTBEAT_FRAME",
    "PROTOCOL_HEADER",
    "FrameReader",
    "decode_deliver",
    "deliver_at",
    "encode_ack",
    "encode_content",
    "encode_method",
    "encode_publish",
]

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
FRAME_OVERHEAD = 8  # 7-byte header + frame-end
FRAME_MIN_SIZE = 4096  # spec 4.2.3: every peer accepts frames this large before tune
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"

_HEADER = struct.Struct(">BHI")
_METHOD_HEAD = struct.Struct(">BHIHH")  # frame header + class id + method id
_CONTENT_HEAD = struct.Struct(">BHIHHQ")  # frame header + class, weight, body size
_END = b"\xce"
_KNOWN_TYPES = frozenset((FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT))

Frame = tuple[int, int, bytes]  # (type, channel, payload)
Span = tuple[int, int, int, int]  # (type, channel, payload start, payload end) in a buffer


class FrameReader:
    """Incremental frame splitter: feed it any split of the byte stream.

    `max_frame_size` is the negotiated frame_max (whole frame, overhead
    included); the connection lowers it after tune.
    """

    __slots__ = ("_rest", "error", "max_frame_size")

    def __init__(self, max_frame_size: int) -> None:
        self._rest = b""  # the start of a frame not complete yet
        self.max_frame_size = max_frame_size
        # Set when the stream broke: the frames before the fault are still
        # returned, and the caller raises this after handling them.
        self.error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._rest)

    def take(self, data: bytes) -> bytes:
        """The bytes to parse now: what was left over, then `data` (b"" once broken)."""
        if self.error is not None:
            return b""
        rest = self._rest
        if rest:
            self._rest = b""
            return rest + data
        return data

    def keep(self, buf: bytes, pos: int) -> None:
        """Keep buf[pos:] — the start of a frame not complete yet — for the next call."""
        self._rest = buf[pos:] if pos < len(buf) else b""

    def next_span(self, buf: bytes, pos: int) -> Span | None:
        """The frame starting at `pos`, validated; None when it is not complete yet.

        Raises the `FrameError` that describes a malformed frame, from its
        header alone where it can (no allocation for an oversized frame).
        """
        if len(buf) - pos < 7:
            return None
        ftype, channel, size = _HEADER.unpack_from(buf, pos)
        if ftype not in _KNOWN_TYPES:
            raise UnknownFrameType(f"unknown frame type {ftype} on channel {channel}")
        if size > self.max_frame_size - FRAME_OVERHEAD:
            raise FrameTooLarge(f"frame of {size + FRAME_OVERHEAD} bytes exceeds frame_max "
                                f"{self.max_frame_size}")
        end = pos + 7 + size
        if end >= len(buf):
            return None
        if buf[end] != FRAME_END:
            raise BadFrameEnd(f"frame-end is {buf[end]:#04x}, not 0xce (type {ftype}, "
                              f"channel {channel}, size {size})")
        return ftype, channel, pos + 7, end

    def feed(self, data: bytes) -> list[Frame]:
        """Append `data`; return every frame now complete, in order, payloads copied out.

        On a malformed frame, `error` is set, the frames before it are returned,
        and everything after it is discarded (now and on later calls). The
        connection walks the buffer itself with `take` / `next_span` / `keep`.
        """
        buf = self.take(data)
        frames: list[Frame] = []
        pos = 0
        try:
            while (span := self.next_span(buf, pos)) is not None:
                ftype, channel, start, end = span
                frames.append((ftype, channel, buf[start:end]))
                pos = end + 1
        except FrameError as exc:
            self.error = exc
            return frames
        self.keep(buf, pos)
        return frames


# --------------------------------------------------------------------------- encoding


def encode_method(channel: int, method: Method) -> bytes:
    """One complete method frame."""
    args = method.encode()
    return b"".join(
        (
            _METHOD_HEAD.pack(FRAME_METHOD, channel, 4 + len(args), method.CLASS_ID,
                              method.METHOD_ID),
            args,
            _END,
        )
    )


def _content_frames(
    channel: int, class_id: int, props: bytes, body: bytes, frame_max: int, out: list[bytes]
) -> None:
    body_size = len(body)
    out.append(_CONTENT_HEAD.pack(FRAME_HEADER, channel, 12 + len(props), class_id, 0, body_size))
    out.append(props)
    out.append(_END)
    if not body_size:
        return
    chunk = frame_max - FRAME_OVERHEAD
    if body_size <= chunk:
        out.append(_HEADER.pack(FRAME_BODY, channel, body_size))
        out.append(body)
        out.append(_END)
        return
    view = memoryview(body).cast("B")  # any bytes-like body: parts count bytes
    for start in range(0, body_size, chunk):
        part = view[start : start + chunk]
        out.append(_HEADER.pack(FRAME_BODY, channel, len(part)))
        out.append(part)  # type: ignore[arg-type]  # joined by the caller
        out.append(_END)


def encode_content(
    channel: int,
    method: Method,
    properties: BasicProperties | None,
    body: bytes,
    frame_max: int,
) -> bytes:
    """A content-bearing method frame, its header frame and its body frames."""
    out = [encode_method(channel, method)]
    _content_frames(channel, method.CLASS_ID, encode_properties(properties), body, frame_max, out)
    return b"".join(out)


_PUBLISH_HEAD = struct.Struct(">BHIHHH")  # frame header, class 60, method 40, ticket 0
_EMPTY_PROPS = b"\x00\x00"
_PUBLISH_BITS = (b"\x00", b"\x01", b"\x02", b"\x03")
_END_BODY_HEAD = struct.Struct(">BBHI")  # header frame's end + body frame header
# Publishers send to a handful of (channel, exchange, routing key) combinations:
# their method frames are built once. Bounded, so odd traffic cannot grow it.
_METHOD_FRAMES: dict[tuple[int, str, str, int], bytes] = {}
_METHOD_FRAMES_MAX = 4096


def _publish_method_frame(channel: int, exchange: str, routing_key: str, bits: int) -> bytes:
    ex = pack_shortstr(exchange, "exchange")
    rk = pack_shortstr(routing_key, "routing_key")
    frame = b"".join((_PUBLISH_HEAD.pack(FRAME_METHOD, channel, 7 + len(ex) + len(rk), 60, 40,
                                         0), ex, rk, _PUBLISH_BITS[bits], _END))
    if len(_METHOD_FRAMES) < _METHOD_FRAMES_MAX:
        _METHOD_FRAMES[(channel, exchange, routing_key, bits)] = frame
    return frame


def encode_publish(
    channel: int,
    exchange: str,
    routing_key: str,
    body: bytes,
    properties: BasicProperties | None,
    frame_max: int,
    mandatory: bool = False,
    immediate: bool = False,
) -> bytes:
    """basic.publish with its content, every frame in one bytes object (hot path)."""
    bits = (2 if immediate else 0) | (1 if mandatory else 0)
    method = _METHOD_FRAMES.get((channel, exchange, routing_key, bits))
    if method is None:
        method = _publish_method_frame(channel, exchange, routing_key, bits)
    props = _EMPTY_PROPS if properties is None else encode_properties(properties)
    body_size = len(body)
    if 0 < body_size <= frame_max - FRAME_OVERHEAD:  # the common case: one body frame
        return b"".join((
            method,
            _CONTENT_HEAD.pack(FRAME_HEADER, channel, 12 + len(props), 60, 0, body_size),
            props,
            _END_BODY_HEAD.pack(FRAME_END, FRAME_BODY, channel, body_size),
            body,
            _END,
        ))
    out = [method]
    _content_frames(channel, 60, props, body, frame_max, out)
    return b"".join(out)


# A body part at least this long is sent from the publisher's own bytes (a view),
# not copied into a joined buffer first.
LARGE_PART = 64 * 1024


def publish_parts(
    channel: int,
    exchange: str,
    routing_key: str,
    body: bytes,
    properties: BasicProperties | None,
    frame_max: int,
    mandatory: bool = False,
    immediate: bool = False,
) -> list[bytes | memoryview]:
    """basic.publish with its content as a list of buffers: the frames' heads and
    views of `body` (for large bodies: nothing of the body is copied)."""
    bits = (2 if immediate else 0) | (1 if mandatory else 0)
    method = _METHOD_FRAMES.get((channel, exchange, routing_key, bits))
    if method is None:
        method = _publish_method_frame(channel, exchange, routing_key, bits)
    props = _EMPTY_PROPS if properties is None else encode_properties(properties)
    out: list[bytes | memoryview] = [method]
    _content_frames(channel, 60, props, body, frame_max, out)  # type: ignore[arg-type]
    return out


def coalesce(parts: list[bytes | memoryview]) -> list[bytes | memoryview]:
    """`parts` for one vectored send: each run of small parts joined into one
    buffer, each part of LARGE_PART bytes or more passed on as it is (not copied)."""
    buffers: list[bytes | memoryview] = []
    small: list[bytes | memoryview] = []
    for part in parts:
        if len(part) >= LARGE_PART:
            if small:
                buffers.append(small[0] if len(small) == 1 else b"".join(small))
                small = []
            buffers.append(part)
        else:
            small.append(part)
    if small:
        buffers.append(small[0] if len(small) == 1 else b"".join(small))
    return buffers


_ACK = struct.Struct(">BHIHHQB")


def encode_ack(channel: int, delivery_tag: int, multiple: bool = False) -> bytes:
    """A basic.ack frame (hot path)."""
    return _ACK.pack(FRAME_METHOD, channel, 13, 60, 80, delivery_tag, multiple) + _END


_DELIVER_TAG = struct.Struct(">QB")


# Consumer tags, exchanges and routing keys repeat from one delivery to the next:
# their decoded strings are kept (bounded: cleared when full, so a peer sending
# ever-new names costs a re-decode, never unbounded memory).
_NAMES: dict[bytes, str] = {}
_NAMES_MAX = 4096


def _name(raw: bytes) -> str:
    text = _NAMES.get(raw)
    if text is None:
        text = str(raw, "utf-8", "surrogateescape")
        if len(_NAMES) >= _NAMES_MAX:
            _NAMES.clear()
        _NAMES[raw] = text
    return text


def decode_deliver(buf: bytes, start: int = 0, end: int | None = None) -> Basic.Deliver:
    """basic.deliver's arguments (hot path) from the method payload at buf[start:end],
    which begins with the class id. Raises IndexError when they overrun the payload."""
    return deliver_at(buf, start, len(buf) if end is None else end)


def deliver_at(buf: bytes, start: int, end: int) -> Basic.Deliver:
    """`decode_deliver` with every offset given (the receive loop's call)."""
    names = _NAMES
    stop = start + 5 + buf[start + 4]
    raw = buf[start + 5 : stop]
    consumer_tag = names.get(raw)
    if consumer_tag is None:
        consumer_tag = _name(raw)
    delivery_tag, bits = _DELIVER_TAG.unpack_from(buf, stop)
    pos = stop + 10
    stop = pos + buf[pos - 1]
    raw = buf[pos:stop]
    exchange = names.get(raw)
    if exchange is None:
        exchange = _name(raw)
    pos = stop + 1
    stop = pos + buf[stop]
    if stop > end:
        raise IndexError("basic.deliver truncated")
    raw = buf[pos:stop]
    routing_key = names.get(raw)
    if routing_key is None:
        routing_key = _name(raw)
    return Basic.Deliver(consumer_tag, delivery_tag, bits & 1 == 1, exchange, routing_key)
