"""A peer that breaks the protocol (RELIABILITY.md items 1-13 at the engine level).

Each case asserts the ProtocolError subclass and its reply code, and what the
engine does about it: CLOSING with exactly one connection.close carrying that
code queued, or — for a corrupt frame boundary — CLOSED with nothing sent.
"""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Callable

import pytest
from amqp_script import (
    body_frame,
    content_header,
    deliver,
    frame,
    method_payload,
    new_connection,
    open_channel,
    opened,
    parse,
    raw_frame,
    sent_methods,
    start,
    tune,
)

from geamqp.exceptions import (
    AMQPHeartbeatTimeout,
    BadFrameEnd,
    BadHeartbeat,
    CommandInvalid,
    ContentTooLarge,
    FrameTooLarge,
    IncompatibleProtocolError,
    InvalidFieldError,
    InvalidTuneError,
    ProbableAccessDeniedError,
    ProbableAuthenticationError,
    ProtocolError,
    StreamLostError,
    UnexpectedFrame,
    UnknownChannel,
    UnknownFrameType,
    UnknownMethod,
)
from geamqp.protocol import events as ev
from geamqp.protocol.connection import AMQPConnection
from geamqp.protocol.fields import decode_table
from geamqp.protocol.frames import FRAME_BODY, FRAME_HEARTBEAT, FRAME_METHOD, HEARTBEAT_FRAME
from geamqp.protocol.spec import Basic, Connection
from geamqp.protocol.state import ConnState

GIB = 1 << 30


def _raises(conn: AMQPConnection, data: bytes, error: type[ProtocolError],
            code: int) -> ProtocolError:
    with pytest.raises(error) as info:
        conn.receive_data(data)
    assert info.value.reply_code == code
    return info.value


def _assert_closing_with(conn: AMQPConnection, code: int) -> None:
    """CLOSING, with exactly one connection.close (and nothing else) queued."""
    assert conn.state is ConnState.CLOSING
    methods = sent_methods(conn)
    assert len(methods) == 1, methods
    channel, close = methods[0]
    assert channel == 0 and isinstance(close, Connection.Close)
    assert close.reply_code == code


def _assert_closed_silently(conn: AMQPConnection) -> None:
    assert conn.state is ConnState.CLOSED
    assert conn.data_to_send() == b""
    assert conn.receive_data(HEARTBEAT_FRAME) == []


# --------------------------------------------------------------------------- frame sizes


def test_frame_larger_than_frame_max_is_rejected_from_its_header() -> None:
    conn = opened(tune_args={"frame_max": 8192})
    open_channel(conn)
    header = struct.pack(">BHI", FRAME_BODY, 1, 8192 - 8 + 1)  # frame_max + 1 in all
    _raises(conn, header, FrameTooLarge, 501)  # the 7-byte header alone
    _assert_closing_with(conn, 501)
    assert conn._reader.buffered == 0  # nothing kept for the payload


def test_frame_of_exactly_frame_max_is_fine() -> None:
    conn = opened(tune_args={"frame_max": 8192})
    open_channel(conn)
    body = b"x" * (8192 - 8)
    events = conn.receive_data(frame(1, Basic.Deliver("c", 1, False, "", "q"))
                               + content_header(1, len(body)) + body_frame(1, body))
    assert [e.body for e in events] == [body]  # type: ignore[attr-defined]


def test_gigabyte_frame_before_start_closes_silently() -> None:
    conn = new_connection()
    conn.data_to_send()
    _raises(conn, struct.pack(">BHI", FRAME_METHOD, 0, GIB), FrameTooLarge, 501)
    _assert_closed_silently(conn)


def test_gigabyte_frame_before_tune_is_rejected_from_its_header() -> None:
    conn = new_connection()
    conn.receive_data(start())
    conn.data_to_send()
    tracemalloc.start()
    try:
        _raises(conn, struct.pack(">BHI", FRAME_METHOD, 0, GIB), FrameTooLarge, 501)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    _assert_closing_with(conn, 501)


# --------------------------------------------------------------------------- fatal frames


def test_frame_type_zero_closes_without_sending_anything() -> None:
    conn = opened()
    open_channel(conn)
    conn.publish(1, "", "q", b"unsent")  # even what was queued is dropped
    err = _raises(conn, raw_frame(0, 0, b""), UnknownFrameType, 501)
    assert err.fatal
    _assert_closed_silently(conn)


def test_frame_type_zero_is_rejected_from_its_header() -> None:
    conn = opened()
    _raises(conn, struct.pack(">BHI", 0, 0, 10), UnknownFrameType, 501)
    _assert_closed_silently(conn)


def test_bad_frame_end_is_fatal() -> None:
    conn = opened()
    open_channel(conn)
    good = frame(1, Basic.Ack(1))
    bad = raw_frame(FRAME_METHOD, 1, method_payload(Basic.Ack(2)), end=0x00)
    err = _raises(conn, good + bad + frame(1, Basic.Ack(3)), BadFrameEnd, 501)
    assert err.fatal
    assert err.events == [ev.MethodReceived(1, Basic.Ack(1))]  # what came before survives
    _assert_closed_silently(conn)


# --------------------------------------------------------------------------- methods


@pytest.mark.parametrize("ids", [(99, 10), (60, 999), (0, 0), (10, 12)])
def test_unknown_class_or_method_is_540(ids: tuple[int, int]) -> None:
    conn = opened()
    open_channel(conn)
    _raises(conn, raw_frame(FRAME_METHOD, 1, struct.pack(">HH", *ids)), UnknownMethod, 540)
    _assert_closing_with(conn, 540)


def test_client_only_method_from_the_server_is_503() -> None:
    conn = opened()
    open_channel(conn)
    _raises(conn, frame(1, Basic.Qos(0, 10, False)), CommandInvalid, 503)
    _assert_closing_with(conn, 503)


def test_method_in_the_wrong_state_is_503() -> None:
    conn = opened()
    _raises(conn, frame(0, Connection.Tune(0, 0, 0)), CommandInvalid, 503)
    _assert_closing_with(conn, 503)


def test_method_frame_too_short_for_its_ids_is_502() -> None:
    conn = opened()
    open_channel(conn)
    _raises(conn, raw_frame(FRAME_METHOD, 1, b"\x00<"), InvalidFieldError, 502)
    _assert_closing_with(conn, 502)


def test_truncated_method_arguments_are_502() -> None:
    conn = opened()
    open_channel(conn)
    payload = method_payload(Basic.Deliver("ctag", 1, False, "ex", "rk"))
    for cut in range(4, len(payload)):
        conn = opened()
        open_channel(conn)
        _raises(conn, raw_frame(FRAME_METHOD, 1, payload[:cut]), InvalidFieldError, 502)
        _assert_closing_with(conn, 502)


# --------------------------------------------------------------------------- content


def test_body_overrunning_body_size_is_505_and_nothing_is_delivered() -> None:
    conn = opened()
    open_channel(conn)
    stream = (frame(1, Basic.Deliver("c", 1, False, "", "q")) + content_header(1, 5)
              + body_frame(1, b"abc") + body_frame(1, b"def"))
    err = _raises(conn, stream, UnexpectedFrame, 505)
    assert err.events == []
    _assert_closing_with(conn, 505)


def test_body_without_header_and_header_without_method_are_505() -> None:
    conn = opened()
    open_channel(conn)
    _raises(conn, body_frame(1, b"x"), UnexpectedFrame, 505)
    _assert_closing_with(conn, 505)
    conn = opened()
    open_channel(conn)
    _raises(conn, content_header(1, 1), UnexpectedFrame, 505)
    _assert_closing_with(conn, 505)


def test_method_interrupting_content_is_505() -> None:
    conn = opened()
    open_channel(conn)
    stream = (frame(1, Basic.Deliver("c", 1, False, "", "q")) + content_header(1, 5)
              + frame(1, Basic.Ack(1)))
    _raises(conn, stream, UnexpectedFrame, 505)
    _assert_closing_with(conn, 505)


@pytest.mark.parametrize("body_size", [1 << 63, (1 << 64) - 1])
def test_body_size_of_2_63_or_more_is_rejected_from_the_header(body_size: int) -> None:
    conn = opened(max_message_size=1 << 64)  # only the 2^63 limit applies
    open_channel(conn)
    conn.receive_data(frame(1, Basic.Deliver("c", 1, False, "", "q")))
    _raises(conn, content_header(1, body_size), ContentTooLarge, 501)
    _assert_closing_with(conn, 501)


def test_body_above_max_message_size_is_rejected_from_the_header() -> None:
    conn = opened(max_message_size=1000)
    open_channel(conn)
    [ok] = conn.receive_data(deliver(1, b"x" * 1000))  # exactly the limit is fine
    assert ok.body == b"x" * 1000  # type: ignore[attr-defined]
    stream = frame(1, Basic.Deliver("c", 2, False, "", "q")) + content_header(1, 1001)
    _raises(conn, stream, ContentTooLarge, 501)
    _assert_closing_with(conn, 501)


def test_content_header_for_another_class_is_505() -> None:
    conn = opened()
    open_channel(conn)
    stream = frame(1, Basic.Deliver("c", 1, False, "", "q")) + content_header(1, 0, class_id=50)
    _raises(conn, stream, UnexpectedFrame, 505)
    _assert_closing_with(conn, 505)


# --------------------------------------------------------------------------- channels


@pytest.mark.parametrize("channel", [9999, 2, 65535])
def test_delivery_on_an_unopened_channel_is_504(channel: int) -> None:
    conn = opened(tune_args={"channel_max": 2047})
    open_channel(conn)
    err = _raises(conn, deliver(channel, b"x"), UnknownChannel, 504)
    assert err.events == []
    _assert_closing_with(conn, 504)


@pytest.mark.parametrize("make", [
    lambda ch: frame(ch, Basic.Ack(1)),
    lambda ch: content_header(ch, 1),
    lambda ch: body_frame(ch, b"x"),
])
def test_any_frame_on_an_unopened_channel_is_504(make: Callable[[int], bytes]) -> None:
    conn = opened()
    _raises(conn, make(3), UnknownChannel, 504)
    _assert_closing_with(conn, 504)


def _memory_growth(conn: AMQPConnection, chunk: bytes, rounds: int) -> int:
    """Bytes still allocated after feeding `chunk` `rounds` times, past a warm-up
    that fills the interpreter's free lists."""
    tracemalloc.start()
    try:
        for _ in range(3):
            conn.receive_data(chunk)
            conn.data_to_send()
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(rounds):
            conn.receive_data(chunk)
            conn.data_to_send()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return after - before


def test_memory_flat_over_100k_frames_on_channel_9999() -> None:
    conn = opened()
    open_channel(conn)
    one = deliver(9999, b"payload" * 10)
    _raises(conn, one, UnknownChannel, 504)
    _assert_closing_with(conn, 504)
    growth = _memory_growth(conn, one * 1000, rounds=34)  # 3 frames each: 10^5 frames
    assert growth < 64 * 1024, growth
    assert conn._channels.keys() == {1}
    assert conn._reader.buffered == 0
    assert conn.data_to_send() == b""


def test_memory_flat_over_100k_frames_on_a_closing_channel() -> None:
    conn = opened()
    open_channel(conn)
    conn.close_channel(1)
    conn.data_to_send()
    growth = _memory_growth(conn, deliver(1, b"payload" * 10) * 1000, rounds=34)
    assert growth < 64 * 1024, growth
    record = conn.channel(1)
    assert record.parts == [] and record.method is None
    assert conn.is_open


def test_heartbeat_on_channel_1_is_501() -> None:
    conn = opened()
    open_channel(conn)
    _raises(conn, raw_frame(FRAME_HEARTBEAT, 1, b""), BadHeartbeat, 501)
    _assert_closing_with(conn, 501)


# --------------------------------------------------------------------------- tables


def _table(body: bytes, length: int | None = None) -> bytes:
    return struct.pack(">I", len(body) if length is None else length) + body


def _nested_tables(levels: int) -> bytes:
    table = _table(b"")
    for _ in range(levels - 1):
        table = _table(b"\x01dF" + table)
    return table


BAD_TABLES = {
    "unknown tag": _table(b"\x01kZ\x00"),
    "truncated value": _table(b"\x01kI\x00\x00"),
    "truncated key": _table(b"\x05ab"),
    "length past the end": _table(b"\x01kt\x01", length=10),
    "length 0xFFFFFFFF": _table(b"\x01kt\x01", length=0xFFFFFFFF),
    "long string length 0xFFFFFFFF": _table(b"\x01kS\xff\xff\xff\xff"),
    "array length 0xFFFFFFFF": _table(b"\x01kA\xff\xff\xff\xff"),
    "depth 33": _nested_tables(33),
    "key not utf-8": _table(b"\x01\xffV"),
    "timestamp out of range": _table(b"\x01kT" + b"\xff" * 8),
    "value past its table": _table(b"\x01kI\x00\x00", length=5) + b"\x00\x00",
}


@pytest.mark.parametrize("name", sorted(BAD_TABLES))
def test_bad_table_raises_invalid_field_error(name: str) -> None:
    with pytest.raises(InvalidFieldError) as info:
        decode_table(BAD_TABLES[name])
    assert info.value.reply_code == 502


def test_depth_32_is_accepted() -> None:
    decode_table(_nested_tables(32))


@pytest.mark.parametrize("name", sorted(BAD_TABLES))
def test_bad_table_in_message_headers_closes_with_502(name: str) -> None:
    conn = opened()
    open_channel(conn)
    props = b"\x20\x00" + BAD_TABLES[name]  # the headers flag, then the table
    stream = frame(1, Basic.Deliver("c", 1, False, "", "q")) + content_header(1, 0, props)
    err = _raises(conn, stream, InvalidFieldError, 502)
    assert err.events == []
    _assert_closing_with(conn, 502)


def test_bad_table_in_connection_start_closes_with_502() -> None:
    conn = new_connection()
    conn.data_to_send()
    payload = struct.pack(">HHBB", 10, 10, 0, 9) + BAD_TABLES["unknown tag"]
    payload += _table(b"PLAIN") + _table(b"en_US")
    _raises(conn, raw_frame(FRAME_METHOD, 0, payload), InvalidFieldError, 502)
    _assert_closed_silently(conn)  # nothing may be sent before start was understood


def test_close_reply_text_fits_a_short_string_whatever_the_error_says() -> None:
    """An error message quoting 250 bytes of non-ASCII key still yields a valid close."""
    key = ("\u00e9" * 127).encode()
    body = bytes((len(key),)) + key + b"I\x00\x00"
    bad = struct.pack(">I", len(body)) + body + b"\x00\x00\x00\x00"  # value runs past the table
    conn = opened()
    open_channel(conn)
    props = b"\x20\x00" + bad
    stream = frame(1, Basic.Deliver("c", 1, False, "", "q")) + content_header(1, 0, props)
    _raises(conn, stream, InvalidFieldError, 502)
    [(_, close)] = sent_methods(conn)
    assert isinstance(close, Connection.Close)
    assert close.reply_code == 502
    assert len(close.reply_text.encode()) <= 255


# --------------------------------------------------------------------------- tune


@pytest.mark.parametrize("frame_max", [1, 8, 4095])
def test_tune_frame_max_below_4096_is_rejected(frame_max: int) -> None:
    conn = new_connection()
    conn.receive_data(start())
    conn.data_to_send()
    _raises(conn, tune(frame_max=frame_max), InvalidTuneError, 502)
    _assert_closing_with(conn, 502)  # and no tune-ok / open


@pytest.mark.parametrize("server", [0, 1 << 31, 0xFFFFFFFF])
def test_tune_frame_max_0_or_huge_is_clamped_to_the_client(server: int) -> None:
    conn = opened(tune_args={"frame_max": server}, frame_max=65536)
    assert conn.frame_max == 65536
    assert conn._reader.max_frame_size == 65536


def test_tune_channel_max_0_takes_the_clients() -> None:
    conn = opened(tune_args={"channel_max": 0}, channel_max=100)
    assert conn.channel_max == 100


# --------------------------------------------------------------------------- EOF


def test_eof_after_protocol_header() -> None:
    conn = new_connection()
    conn.data_to_send()
    [closed] = conn.receive_data(b"")
    assert isinstance(closed, ev.ConnectionClosed)
    assert type(closed.error) is IncompatibleProtocolError
    assert conn.state is ConnState.CLOSED


def test_eof_after_start_ok() -> None:
    conn = new_connection()
    conn.receive_data(start())
    [closed] = conn.receive_data(b"")
    assert isinstance(closed, ev.ConnectionClosed)
    assert type(closed.error) is ProbableAuthenticationError


def test_eof_after_open() -> None:
    conn = new_connection(virtual_host="missing")
    conn.receive_data(start() + tune())
    [closed] = conn.receive_data(b"")
    assert isinstance(closed, ev.ConnectionClosed)
    assert type(closed.error) is ProbableAccessDeniedError
    assert "missing" in str(closed.error)


def test_eof_when_open_is_a_lost_stream() -> None:
    conn = opened()
    [closed] = conn.receive_data(b"")
    assert isinstance(closed, ev.ConnectionClosed)
    assert type(closed.error) is StreamLostError
    assert closed.by_peer
    assert conn.receive_data(b"") == []


def test_eof_while_closing_after_a_protocol_error_reports_that_error() -> None:
    conn = opened()
    _raises(conn, frame(0, Connection.Tune(0, 0, 0)), CommandInvalid, 503)
    [closed] = conn.receive_data(b"")
    assert isinstance(closed, ev.ConnectionClosed)
    assert isinstance(closed.error, CommandInvalid)


# --------------------------------------------------------------------------- other protocols


@pytest.mark.parametrize("header", [
    b"AMQP\x00\x00\x09\x01",  # our own header echoed: the server wants another version
    b"AMQP\x01\x01\x00\x09",  # AMQP 0-9 (old style)
    b"AMQP\x01\x01\x08\x00",  # AMQP 0-8
    b"AMQP\x00\x01\x00\x00",  # AMQP 1.0
    b"AMQP\x03\x01\x00\x00",  # AMQP 1.0 SASL layer
])
@pytest.mark.parametrize("bytewise", [False, True])
def test_server_answering_with_a_protocol_header(header: bytes, bytewise: bool) -> None:
    conn = new_connection()
    conn.data_to_send()
    chunks = [header[i : i + 1] for i in range(8)] if bytewise else [header]
    events = []
    for chunk in chunks:
        events += conn.receive_data(chunk)
    [closed] = events
    assert isinstance(closed, ev.ConnectionClosed)
    assert type(closed.error) is IncompatibleProtocolError
    assert closed.by_peer
    assert conn.state is ConnState.CLOSED
    assert conn.data_to_send() == b""


# --------------------------------------------------------------------------- heartbeats


def _heartbeating(interval: int = 10) -> AMQPConnection:
    conn = opened(tune_args={"heartbeat": interval}, heartbeat=interval)
    assert conn.heartbeat == interval
    assert conn.tick(1000.0) == []  # the clock starts here
    conn.data_to_send()
    return conn


def test_heartbeat_sent_after_half_an_interval_of_send_silence() -> None:
    conn = _heartbeating(10)
    conn.receive_data(HEARTBEAT_FRAME)
    assert conn.tick(1004.9) == []
    assert conn.data_to_send() == b""
    assert conn.tick(1005.0) == []
    assert conn.data_to_send() == HEARTBEAT_FRAME


def test_no_heartbeat_while_the_client_is_sending() -> None:
    conn = _heartbeating(10)
    for t in range(1001, 1030):
        conn.receive_data(HEARTBEAT_FRAME)
        conn.update_secret(b"s", "keep busy")
        assert conn.tick(float(t)) == []
        assert HEARTBEAT_FRAME not in conn.data_to_send()


def test_heartbeat_timeout_after_two_silent_intervals_not_before() -> None:
    conn = _heartbeating(10)
    for t in (1005.0, 1010.0, 1015.0, 1019.9):
        assert conn.tick(t) == []
        conn.data_to_send()
    events = conn.tick(1020.0)
    assert [type(e) for e in events] == [ev.HeartbeatTimeout, ev.ConnectionClosed]
    assert events[0].silent_for == pytest.approx(20.0)  # type: ignore[attr-defined]
    closed = events[1]
    assert isinstance(closed, ev.ConnectionClosed)
    assert isinstance(closed.error, AMQPHeartbeatTimeout)
    assert closed.by_peer
    assert conn.state is ConnState.CLOSED
    assert conn.data_to_send() == b""
    assert conn.tick(1030.0) == []


def test_any_received_byte_resets_the_receive_clock() -> None:
    conn = _heartbeating(10)
    for t in range(1001, 1100):
        if t % 15 == 0:
            conn.receive_data(HEARTBEAT_FRAME)
        assert conn.tick(float(t)) == [], t
        conn.data_to_send()


def test_heartbeats_off_when_negotiated_zero() -> None:
    conn = opened(tune_args={"heartbeat": 0}, heartbeat=0)
    assert conn.tick(0.0) == []
    assert conn.tick(1e9) == []
    assert conn.data_to_send() == b""


def test_heartbeat_frame_from_the_server_is_silent() -> None:
    conn = opened()
    assert conn.receive_data(HEARTBEAT_FRAME * 3) == []
    assert parse(conn.data_to_send()) == []


@pytest.mark.parametrize("method", [Connection.Close(320, "forced", 0, 0), Connection.Blocked("x"),
                                    Connection.Start()])
def test_connection_method_on_a_channel_is_503(method: Connection.Close) -> None:
    conn = opened()
    open_channel(conn)
    err = _raises(conn, frame(1, method), CommandInvalid, 503)
    assert err.events == []
    _assert_closing_with(conn, 503)


def test_channel_method_on_channel_0_is_503() -> None:
    conn = opened()
    _raises(conn, frame(0, Basic.Ack(1)), CommandInvalid, 503)
    _assert_closing_with(conn, 503)


def test_close_ok_after_a_protocol_error_reports_that_error() -> None:
    conn = opened()
    open_channel(conn)
    err = _raises(conn, raw_frame(FRAME_METHOD, 1, struct.pack(">HH", 99, 1)), UnknownMethod, 540)
    _assert_closing_with(conn, 540)
    assert conn.receive_data(deliver(1, b"late")) == []  # dropped while closing
    [closed] = conn.receive_data(frame(0, Connection.CloseOk()))
    assert isinstance(closed, ev.ConnectionClosed)
    assert closed.error is err
    assert closed.reply_code == 540
    assert closed.by_peer is False
    assert conn.state is ConnState.CLOSED
