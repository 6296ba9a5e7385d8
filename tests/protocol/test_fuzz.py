"""Random and mutated byte streams: nothing but ProtocolError ever escapes
receive_data, what the client queues is always whole frames, and memory stays
bounded by the negotiated limits."""

from __future__ import annotations

import itertools
import struct
from typing import Any

from amqp_script import (
    body_frame,
    content_header,
    deliver,
    frame,
    handshake_stream,
    new_connection,
    open_channel,
    opened,
    parse,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geamqp.exceptions import ProtocolError
from geamqp.protocol import events as ev
from geamqp.protocol.connection import AMQPConnection
from geamqp.protocol.frames import HEARTBEAT_FRAME, encode_content
from geamqp.protocol.properties import BasicProperties
from geamqp.protocol.spec import Basic, Channel, Connection, Queue
from geamqp.protocol.state import ConnState

FRAME_MAX = 4096
MAX_MESSAGE = 20_000
PROPS = BasicProperties(content_type="a/b", headers={"n": 1, "l": [1.5, "x", {"d": None}]},
                        timestamp=5, priority=3)


def _valid_stream() -> bytes:
    body = bytes(range(200))
    return b"".join((
        frame(1, Queue.DeclareOk("q", 1, 2)),
        deliver(1, b"hello", properties=PROPS, frame_max=FRAME_MAX),
        frame(1, Basic.Deliver("c", 2, True, "ex", "rk")),
        content_header(1, len(body)),
        *(body_frame(1, body[i : i + 50]) for i in range(0, len(body), 50)),
        HEARTBEAT_FRAME,
        frame(0, Connection.Blocked("mem")),
        frame(2, Channel.OpenOk()),
        frame(1, Channel.Flow(False)),
        encode_content(1, Basic.Return(312, "NO_ROUTE", "", "q"), PROPS, b"r", FRAME_MAX),
        frame(1, Basic.Ack(9, True)),
        frame(0, Connection.Unblocked()),
        frame(1, Channel.Close(406, "PRECONDITION_FAILED", 60, 80)),
        frame(0, Connection.Close(320, "CONNECTION_FORCED", 0, 0)),
    ))


VALID = _valid_stream()


def _connection() -> AMQPConnection:
    conn = opened(tune_args={"frame_max": FRAME_MAX}, max_message_size=MAX_MESSAGE)
    open_channel(conn)
    conn.open_channel()  # channel 2 stays opening
    conn.data_to_send()
    return conn


def _check_bounded(conn: AMQPConnection) -> None:
    assert conn._reader.buffered < FRAME_MAX
    for number in conn.open_channels:
        record = conn.channel(number)
        assert record.body_size <= MAX_MESSAGE
        assert sum(map(len, record.parts)) <= record.body_size


def _feed(conn: AMQPConnection, chunks: list[bytes]) -> None:
    """Feed every chunk; only ProtocolError may escape, output is always whole frames."""
    total_in = 0
    for chunk in chunks:
        total_in += len(chunk)
        try:
            events = conn.receive_data(chunk)
        except ProtocolError as exc:
            assert conn.state in (ConnState.CLOSING, ConnState.CLOSED)
            events = exc.events
        assert all(isinstance(e, ev.Event) for e in events)
        out = conn.data_to_send()
        parse(out)  # whole, decodable frames, never half of one
        assert len(out) <= 1024 + 2 * total_in  # replies are bounded by the input
        _check_bounded(conn)
    try:
        conn.receive_data(b"")
    except ProtocolError:  # pragma: no cover - EOF is never a protocol error
        raise AssertionError("EOF raised") from None
    assert conn.state is ConnState.CLOSED


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@st.composite
def mutated(draw: Any) -> bytes:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "dup"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0xCE, 0x01, 0x08, 0x7F, 0x80]))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif kind == "dup":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 64))]
    return bytes(data)


FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_the_unmutated_stream_is_clean() -> None:
    conn = _connection()
    events = conn.receive_data(VALID)
    assert isinstance(events[-1], ev.ConnectionClosed)
    assert len([e for e in events if isinstance(e, ev.ContentReceived)]) == 3


@FUZZ
@given(data=mutated(), cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_mutated_streams_raise_only_protocol_errors(data: bytes, cuts: list[int]) -> None:
    _feed(_connection(), _split(data, cuts))


@FUZZ
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=8))
def test_random_bytes_after_open(data: bytes, cuts: list[int]) -> None:
    _feed(_connection(), _split(data, cuts))


@FUZZ
@given(prefix=st.integers(0, 3), junk=st.binary(max_size=300),
       cuts=st.lists(st.integers(0, 1000), max_size=8))
def test_random_bytes_during_the_handshake(prefix: int, junk: bytes, cuts: list[int]) -> None:
    """Junk after 0..3 handshake frames (none, start, start+tune, all three)."""
    stream = handshake_stream(frame_max=FRAME_MAX)
    frames = parse(stream)
    offset = 0
    for f in frames[:prefix]:
        offset += 7 + len(f.payload) + 1
    valid = stream[:offset]
    _feed(new_connection(), _split(valid + junk, cuts))


@FUZZ
@given(frames=st.lists(st.tuples(st.sampled_from([1, 2, 3, 8, 0, 4, 0x41]),
                                 st.sampled_from([0, 1, 2, 3, 9999]),
                                 st.binary(max_size=40)), max_size=12),
       cuts=st.lists(st.integers(0, 800), max_size=6))
def test_well_framed_garbage(frames: list[tuple[int, int, bytes]], cuts: list[int]) -> None:
    """Correct frame boundaries around random payloads reach the decoders."""
    data = b"".join(struct.pack(">BHI", t, c, len(p)) + p + b"\xce" for t, c, p in frames)
    _feed(_connection(), _split(data, cuts))
