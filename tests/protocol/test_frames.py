"""Frame reader and content assembly: any split of the byte stream gives the same
frames and events; bodies are split by frame_max and reassemble exactly."""

from __future__ import annotations

import itertools

import pytest
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
from hypothesis import given, settings
from hypothesis import strategies as st

from geamqp.protocol import events as ev
from geamqp.protocol.connection import AMQPConnection
from geamqp.protocol.frames import (
    FRAME_BODY,
    FRAME_HEADER,
    FRAME_METHOD,
    HEARTBEAT_FRAME,
    LARGE_PART,
    FrameReader,
    encode_content,
    encode_publish,
)
from geamqp.protocol.properties import BasicProperties
from geamqp.protocol.spec import Basic, Channel, Connection, Queue

PROPS = BasicProperties(content_type="text/plain", delivery_mode=2, headers={"k": "v"},
                        message_id="m-1", timestamp=1_700_000_000)


def _session_stream() -> bytes:
    """After the handshake: a channel opens, methods, messages of every shape,
    heartbeats, flow, a blocked notice and a broker channel close."""
    return b"".join((
        frame(1, Channel.OpenOk()),
        frame(1, Queue.DeclareOk("q", 0, 0)),
        HEARTBEAT_FRAME,
        deliver(1, b"", delivery_tag=1),
        deliver(1, b"small", delivery_tag=2, properties=PROPS),
        deliver(1, bytes(range(256)) * 40, delivery_tag=3, frame_max=4096),  # many frames
        frame(0, Connection.Blocked("disk")),
        frame(1, Channel.Flow(False)),
        encode_content(1, Basic.Return(312, "NO_ROUTE", "ex", "rk"), PROPS, b"ret", 4096),
        encode_content(1, Basic.GetOk(4, True, "", "q", 9), None, b"got", 4096),
        frame(1, Basic.Ack(7, True)),
        frame(0, Connection.Unblocked()),
        frame(1, Channel.Close(404, "NOT_FOUND", 50, 10)),
    ))


def _opened_with_channel_pending() -> AMQPConnection:
    conn = opened()
    conn.open_channel()
    conn.data_to_send()
    return conn


def _run(chunks: list[bytes]) -> tuple[list[ev.Event], bytes]:
    conn = _opened_with_channel_pending()
    events: list[ev.Event] = []
    for chunk in chunks:
        events += conn.receive_data(chunk)
    return events, conn.data_to_send()


STREAM = _session_stream()
EXPECTED_EVENTS, EXPECTED_OUT = _run([STREAM])


def test_the_reference_run_sees_everything() -> None:
    kinds = [type(e).__name__ for e in EXPECTED_EVENTS]
    assert kinds == ["ChannelOpened", "MethodReceived", "ContentReceived", "ContentReceived",
                     "ContentReceived", "ConnectionBlocked", "MethodReceived", "ContentReceived",
                     "ContentReceived", "MethodReceived", "ConnectionUnblocked", "ChannelClosed"]
    bodies = [e.body for e in EXPECTED_EVENTS if isinstance(e, ev.ContentReceived)]
    assert bodies == [b"", b"small", bytes(range(256)) * 40, b"ret", b"got"]
    assert EXPECTED_EVENTS[3].properties == PROPS  # type: ignore[attr-defined]
    assert [(f.channel, f.method) for f in parse(EXPECTED_OUT)] == [
        (1, Channel.FlowOk(False)), (1, Channel.CloseOk())]


def test_split_at_every_position() -> None:
    for cut in range(1, len(STREAM)):
        events, out = _run([STREAM[:cut], STREAM[cut:]])
        assert events == EXPECTED_EVENTS, cut
        assert out == EXPECTED_OUT, cut


def test_one_byte_at_a_time() -> None:
    events, out = _run([STREAM[i : i + 1] for i in range(len(STREAM))])
    assert events == EXPECTED_EVENTS
    assert out == EXPECTED_OUT


def test_handshake_split_at_every_position_and_bytewise() -> None:
    stream = handshake_stream()
    for cut in range(1, len(stream)):
        conn = new_connection()
        events = conn.receive_data(stream[:cut]) + conn.receive_data(stream[cut:])
        assert [type(e) for e in events] == [ev.ConnectionOpened], cut
    conn = new_connection()
    events = []
    for i in range(len(stream)):
        events += conn.receive_data(stream[i : i + 1])
    assert [type(e) for e in events] == [ev.ConnectionOpened]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=30))
def test_random_splits(cuts: list[int]) -> None:
    points = sorted(set(cuts) | {0, len(STREAM)})
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(points)]
    events, out = _run(chunks)
    assert events == EXPECTED_EVENTS
    assert out == EXPECTED_OUT


def test_frame_reader_buffers_partial_frames_only() -> None:
    reader = FrameReader(4096)
    whole = frame(3, Basic.Ack(1))
    assert reader.feed(whole[:5]) == []
    assert reader.buffered == 5
    assert reader.feed(whole[5:] + HEARTBEAT_FRAME[:3]) == [(FRAME_METHOD, 3, whole[7:-1])]
    assert reader.buffered == 3
    assert reader.feed(HEARTBEAT_FRAME[3:]) == [(8, 0, b"")]
    assert reader.buffered == 0
    assert reader.error is None


def test_frame_of_exactly_frame_max_is_accepted() -> None:
    reader = FrameReader(4096)
    payload = b"x" * (4096 - 8)
    assert reader.feed(body_frame(1, payload)) == [(FRAME_BODY, 1, payload)]
    assert reader.error is None


# --------------------------------------------------------------------------- content assembly


def test_zero_length_body_completes_on_the_header() -> None:
    conn = opened()
    open_channel(conn)
    assert conn.receive_data(frame(1, Basic.Deliver("c", 1, False, "", "q"))) == []
    [event] = conn.receive_data(content_header(1, 0))
    assert isinstance(event, ev.ContentReceived)
    assert event.body == b""
    assert event.properties == BasicProperties()


def test_body_split_over_many_frames() -> None:
    conn = opened()
    open_channel(conn)
    body = bytes(range(256)) * 100
    parts = [body[i : i + 97] for i in range(0, len(body), 97)]
    stream = (frame(1, Basic.Deliver("c", 1, False, "", "q")) + content_header(1, len(body))
              + b"".join(body_frame(1, part) for part in parts))
    events = []
    for i in range(0, len(stream), 1000):
        events += conn.receive_data(stream[i : i + 1000])
    [event] = events
    assert isinstance(event, ev.ContentReceived)
    assert event.body == body
    assert conn.channel(1).parts == []  # nothing left behind


def test_interleaved_content_on_two_channels() -> None:
    conn = opened()
    open_channel(conn)
    open_channel(conn)
    stream = (frame(1, Basic.Deliver("a", 1, False, "", "q"))
              + frame(2, Basic.Deliver("b", 1, False, "", "q"))
              + content_header(2, 4) + content_header(1, 4)
              + body_frame(1, b"on") + body_frame(2, b"tw") + body_frame(2, b"o!")
              + body_frame(1, b"e!"))
    events = conn.receive_data(stream)
    assert [(e.channel, e.body) for e in events] == [  # type: ignore[attr-defined]
        (2, b"two!"), (1, b"one!")]


@pytest.mark.parametrize("frame_max", [4096, 4097, 5000, 131072])
@pytest.mark.parametrize("size", [0, 1, 4087, 4088, 4089, 8176, 8177, 100_000])
def test_encoder_splits_bodies_by_frame_max(frame_max: int, size: int) -> None:
    body = bytes(i % 251 for i in range(size))
    for data in (encode_content(5, Basic.Publish(0, "ex", "rk", True), PROPS, body, frame_max),
                 encode_publish(5, "ex", "rk", body, PROPS, frame_max, True)):
        frames = FrameReader(frame_max).feed(data)  # raises nothing: every frame fits
        reader = FrameReader(frame_max)
        assert reader.feed(data) == frames and reader.error is None and reader.buffered == 0
        assert all(len(payload) + 8 <= frame_max for _, _, payload in frames)
        assert [t for t, _, _ in frames[:2]] == [FRAME_METHOD, FRAME_HEADER]
        bodies = [payload for t, _, payload in frames[2:]]
        assert all(t == FRAME_BODY for t, _, _ in frames[2:])
        assert b"".join(bodies) == body
        assert all(bodies)  # no empty body frames
        assert len(bodies) == -(-size // (frame_max - 8))
        [header] = [f for f in parse(data) if f.type == FRAME_HEADER]
        assert header.body_size == size
        assert header.properties == PROPS


@settings(max_examples=150, deadline=None)
@given(body=st.binary(max_size=20_000), frame_max=st.integers(min_value=4096, max_value=12_000))
def test_published_bodies_reassemble_through_the_engine(body: bytes, frame_max: int) -> None:
    """What the client encodes, the engine (as a server would) reassembles exactly."""
    conn = opened(tune_args={"frame_max": frame_max})
    open_channel(conn)
    data = encode_content(1, Basic.Deliver("c", 1, False, "", "q"), PROPS, body, frame_max)
    [event] = conn.receive_data(data)
    assert isinstance(event, ev.ContentReceived)
    assert event.body == body
    assert event.properties == PROPS


def test_client_publish_frames_respect_negotiated_frame_max() -> None:
    conn = opened(tune_args={"frame_max": 4096})
    open_channel(conn)
    conn.publish(1, "", "q", b"z" * 10_000)
    sent = parse(conn.data_to_send(), frame_max=4096)
    assert [len(f.payload) for f in sent if f.type == FRAME_BODY] == [4088, 4088, 1824]


@pytest.mark.parametrize("size", [64 * 1024, 300_000, 1 << 20])
def test_large_publish_is_sent_from_the_body_itself(size: int) -> None:
    """Large bodies leave as views of the publisher's bytes (no joined copy), and
    the bytes on the wire are the same as the joined encoding's."""
    conn = opened()  # frame_max 131072
    open_channel(conn)
    conn.data_to_send()
    body = bytes(range(256)) * (size // 256)
    conn.publish(1, "", "q", b"small")
    conn.publish(1, "ex", "rk", body, PROPS)
    conn.publish(1, "", "q", b"small again")
    buffers = conn.buffers_to_send()
    views = [b for b in buffers if b is body or (isinstance(b, memoryview) and b.obj is body)]
    # not copies: only a tail shorter than LARGE_PART is joined with the small frames
    assert size - sum(len(v) for v in views) < LARGE_PART
    assert len(buffers) <= 2 * len(views) + 1  # the small frames between are joined
    expected = (encode_publish(1, "", "q", b"small", None, 131072)
                + encode_publish(1, "ex", "rk", body, PROPS, 131072)
                + encode_publish(1, "", "q", b"small again", None, 131072))
    assert b"".join(buffers) == expected
    assert conn.buffers_to_send() == [] and conn.pending_bytes == 0


def test_small_publishes_leave_as_one_buffer() -> None:
    conn = opened()
    open_channel(conn)
    conn.data_to_send()
    for i in range(100):
        conn.publish(1, "", "q", b"m%d" % i)
    [joined] = conn.buffers_to_send()
    assert isinstance(joined, bytes) and joined.count(b"\xce") >= 300
