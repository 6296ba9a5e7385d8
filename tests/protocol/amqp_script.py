"""A scripted AMQP 0-9-1 server for protocol tests: server frames built with the
library's own encoders, and a parser for what the client queued.

No sockets and no clock: bytes go straight into `AMQPConnection.receive_data`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from geamqp.protocol import events as ev
from geamqp.protocol.connection import AMQPConnection, ClientSettings
from geamqp.protocol.frames import (
    FRAME_BODY,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    PROTOCOL_HEADER,
    FrameReader,
    encode_content,
    encode_method,
)
from geamqp.protocol.properties import BasicProperties, decode_properties
from geamqp.protocol.sasl import Credentials, PlainCredentials
from geamqp.protocol.spec import METHODS, Basic, Channel, Connection, Method

GUEST = PlainCredentials("guest", "guest")
SERVER_PROPERTIES = {
    "product": "RabbitMQ",
    "version": "3.10.8",
    "capabilities": {"publisher_confirms": True, "basic.nack": True},
}


# --------------------------------------------------------------------------- server frames


def frame(channel: int, method: Method) -> bytes:
    return encode_method(channel, method)


def start(mechanisms: bytes = b"AMQPLAIN PLAIN", version: tuple[int, int] = (0, 9),
          server_properties: dict[str, Any] | None = None) -> bytes:
    props = SERVER_PROPERTIES if server_properties is None else server_properties
    return frame(0, Connection.Start(version[0], version[1], props, mechanisms, b"en_US"))


def tune(channel_max: int = 2047, frame_max: int = 131072, heartbeat: int = 60) -> bytes:
    return frame(0, Connection.Tune(channel_max, frame_max, heartbeat))


def open_ok() -> bytes:
    return frame(0, Connection.OpenOk())


def handshake_stream(**tune_args: int) -> bytes:
    """Everything a well-behaved server sends up to open-ok."""
    return start() + tune(**tune_args) + open_ok()


def deliver(channel: int, body: bytes, delivery_tag: int = 1,
            properties: BasicProperties | None = None, frame_max: int = 131072,
            consumer_tag: str = "ctag", exchange: str = "ex", routing_key: str = "rk") -> bytes:
    method = Basic.Deliver(consumer_tag, delivery_tag, False, exchange, routing_key)
    return encode_content(channel, method, properties, body, frame_max)


def raw_frame(ftype: int, channel: int, payload: bytes, end: int = 0xCE) -> bytes:
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + bytes((end,))


def content_header(channel: int, body_size: int, props: bytes = b"\x00\x00",
                   class_id: int = 60) -> bytes:
    return raw_frame(FRAME_HEADER, channel, struct.pack(">HHQ", class_id, 0, body_size) + props)


def body_frame(channel: int, body: bytes) -> bytes:
    return raw_frame(FRAME_BODY, channel, body)


def method_payload(method: Method) -> bytes:
    """class id, method id and arguments: a method frame's payload."""
    return struct.pack(">HH", method.CLASS_ID, method.METHOD_ID) + method.encode()


# --------------------------------------------------------------------------- client output


@dataclass
class Sent:
    """One frame the client queued, decoded."""

    type: int
    channel: int
    method: Method | None = None
    body_size: int = 0
    properties: BasicProperties | None = None
    payload: bytes = b""


def parse(data: bytes, frame_max: int = 1 << 31) -> list[Sent]:
    """Decode the client's output (the protocol header, if present, is skipped)."""
    if data.startswith(PROTOCOL_HEADER):
        data = data[len(PROTOCOL_HEADER):]
    reader = FrameReader(frame_max)
    frames = reader.feed(data)
    assert reader.error is None, reader.error
    assert reader.buffered == 0, "client output ends mid-frame"
    out = []
    for ftype, channel, payload in frames:
        if ftype == FRAME_METHOD:
            cls = METHODS[struct.unpack_from(">I", payload)[0]]
            method, end = cls.decode(payload, 4)
            assert end == len(payload)
            out.append(Sent(ftype, channel, method=method, payload=payload))
        elif ftype == FRAME_HEADER:
            _, _, size = struct.unpack_from(">HHQ", payload)
            props, end = decode_properties(payload, 12)
            assert end == len(payload)
            out.append(Sent(ftype, channel, body_size=size, properties=props, payload=payload))
        else:
            assert ftype in (FRAME_BODY, FRAME_HEARTBEAT)
            out.append(Sent(ftype, channel, payload=payload))
    return out


def sent_methods(conn: AMQPConnection) -> list[tuple[int, Method]]:
    """Drain the client's output; (channel, method) of every method frame in it."""
    return [(f.channel, f.method) for f in parse(conn.data_to_send()) if f.method is not None]


# --------------------------------------------------------------------------- connections


def make_settings(credentials: Credentials = GUEST, **kwargs: Any) -> ClientSettings:
    return ClientSettings(credentials, **kwargs)


def new_connection(**kwargs: Any) -> AMQPConnection:
    return AMQPConnection(make_settings(**kwargs))


def opened(tune_args: dict[str, int] | None = None, **kwargs: Any) -> AMQPConnection:
    """A connection after a full handshake, its output drained."""
    conn = new_connection(**kwargs)
    events = conn.receive_data(handshake_stream(**(tune_args or {})))
    assert isinstance(events[-1], ev.ConnectionOpened), events
    conn.data_to_send()
    return conn


def open_channel(conn: AMQPConnection, number: int | None = None) -> int:
    """Open a channel on an open connection (the server answers open-ok); output drained."""
    number = conn.open_channel(number)
    conn.data_to_send()
    assert conn.receive_data(frame(number, Channel.OpenOk())) == [ev.ChannelOpened(number)]
    return number


def feed_all(conn: AMQPConnection, chunks: Iterable[bytes]) -> list[ev.Event]:
    events: list[ev.Event] = []
    for chunk in chunks:
        events += conn.receive_data(chunk)
    return events


def close_frames(conn: AMQPConnection) -> list[Connection.Close]:
    """Drain the output; the connection.close frames in it."""
    return [m for ch, m in sent_methods(conn) if ch == 0 and isinstance(m, Connection.Close)]
