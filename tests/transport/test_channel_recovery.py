"""Channel recovery (issue 12 point 1) frame by frame against the fake broker.

The broker closes one channel; with ``recover_channels`` on (the default) the
same Channel object is reopened on the same number and link with its qos and
consumers, acks of the closed channel's tags are dropped, and the
channel-recovered callback runs. Codes that a retry cannot cure end the channel.
"""

from __future__ import annotations

from typing import Any

import gevent
import pytest
from fakebroker import WAIT, FakeBroker, close_channel
from pamqp import commands as C
from peer_helpers import Signals, outcome, round_trip, spawn_catching

import geamqp

pytestmark = pytest.mark.timeout(15)

ACK_TIMEOUT = ("PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. "
               "Timeout value used: 3000 ms. This timeout value can be configured, see "
               "consumers doc guide to learn more")


def _consumer(ch: Any, signals: Signals, queue: str = "q") -> str:
    ch.add_on_channel_recovered_callback(signals.callback("channel_recovered"))
    ch.add_on_close_callback(signals.callback("channel_closed"))
    return str(ch.basic_consume(queue, lambda c, m, p, b: signals.add("msg", m.delivery_tag, b)))


def test_ack_timeout_reopens_the_channel_with_qos_and_consumer(
        broker: FakeBroker, connect: Any) -> None:
    conn, signals = connect(broker)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=7)
    tag = _consumer(ch, signals)
    peer = broker.peer(0)
    peer.deliver(1, tag, 1, b"held too long")
    assert signals.wait("msg") == (1, b"held too long")
    mark = broker.mark()
    peer.close_channel(1, 406, ACK_TIMEOUT)
    signals.wait("channel_recovered")
    assert ch.is_open and ch.channel_number == 1
    assert signals.count("channel_closed") == 0
    after = dict(after=mark, conn=0, channel=1)
    names = [r.name for r in broker.frames(**after)]
    assert names[:4] == ["Channel.CloseOk", "Channel.Open", "Basic.Qos", "Basic.Consume"], names
    assert broker.frames(C.Basic.Qos, **after)[0].method.prefetch_count == 7
    assert broker.frames(C.Basic.Consume, **after)[0].method.consumer_tag == tag
    assert broker.frames(C.Channel.Open, conn=1) == [], "a channel close reconnected"
    # The old delivery's ack is dropped (the broker redelivers it); a new one goes out.
    ch.basic_ack(1)
    peer.deliver(1, tag, 1, b"again", redelivered=True)
    user_tag = signals.wait("msg", 2)[0]
    assert user_tag == 2, "tags of the reopened channel continue after the old ones"
    ch.basic_ack(user_tag)
    ack = broker.wait_for(C.Basic.Ack, conn=0, channel=1, after=mark)
    assert ack.method.delivery_tag == 1
    assert len(broker.frames(C.Basic.Ack, **after)) == 1, "the stale ack reached the broker"
    round_trip(conn)


def test_requests_in_flight_get_the_close_and_later_ones_wait_for_the_reopen(
        broker: FakeBroker, connect: Any) -> None:
    conn, signals = connect(broker)
    ch = conn.channel()
    _consumer(ch, signals)
    broker.on(C.Queue.Declare, lambda peer, rec: peer.close_channel(1, 406, ACK_TIMEOUT),
              conn=0, channel=1, times=1)
    with pytest.raises(geamqp.ChannelClosedByBroker) as info, gevent.Timeout(WAIT):
        ch.queue_declare("in-flight")
    assert info.value.reply_code == 406
    with gevent.Timeout(WAIT):
        assert ch.queue_declare("after").queue == "after"
    assert ch.is_open


def test_consume_refused_404_keeps_the_channel_and_its_other_consumers(
        broker: FakeBroker, connect: Any) -> None:
    conn, signals = connect(broker)
    ch = conn.channel()
    tag = _consumer(ch, signals, "present")
    broker.on(C.Basic.Consume, close_channel(404, "NOT_FOUND - no queue 'absent'"),
              conn=0, channel=1, where=lambda m: m.queue == "absent", times=1)
    with pytest.raises(geamqp.ChannelClosedByBroker), gevent.Timeout(WAIT):
        ch.basic_consume("absent", lambda *a: None)
    signals.wait("channel_recovered")
    assert ch.consumer_tags == [tag]
    broker.peer(0).deliver(1, tag, 1, b"still here")
    assert signals.wait("msg")[1] == b"still here"


@pytest.mark.parametrize(("code", "text"), [
    (403, "ACCESS_REFUSED - fake"),
    (406, "PRECONDITION_FAILED - inequivalent arg 'durable'"),
    (406, "PRECONDITION_FAILED - unknown delivery tag 9"),
])
def test_closes_a_retry_cannot_cure_end_the_channel(
        broker: FakeBroker, connect: Any, code: int, text: str) -> None:
    conn, signals = connect(broker)
    ch = conn.channel()
    _consumer(ch, signals)
    broker.peer(0).close_channel(1, code, text)
    _, error = signals.wait("channel_closed")
    assert isinstance(error, geamqp.ChannelClosedByBroker) and error.reply_code == code
    assert ch.is_closed and signals.count("channel_recovered") == 0
    close_ok = broker.wait_for(C.Channel.CloseOk, conn=0, channel=1)
    round_trip(conn)  # its own channel takes the free number 1: one open, no more
    assert len(broker.frames(C.Channel.Open, conn=0, channel=1, after=close_ok.seq)) == 1
    assert ch.is_closed


def test_recover_channels_off_tells_the_user(broker: FakeBroker, connect: Any) -> None:
    conn, signals = connect(broker, recover_channels=False)
    ch = conn.channel()
    _consumer(ch, signals)
    consuming = spawn_catching(ch.start_consuming)
    broker.peer(0).close_channel(1, 406, ACK_TIMEOUT)
    signals.wait("channel_closed")
    raised = outcome(consuming)
    assert isinstance(raised, geamqp.ChannelClosedByBroker) and raised.reply_code == 406
    assert ch.is_closed


def test_parameters_carry_the_choice(broker: FakeBroker, connect: Any) -> None:
    conn, signals = connect(broker, params={"recover_channels": False})
    ch = conn.channel()
    _consumer(ch, signals)
    broker.peer(0).close_channel(1, 406, ACK_TIMEOUT)
    signals.wait("channel_closed")
    assert ch.is_closed


def test_retried_with_a_limit_then_the_channel_ends(broker: FakeBroker, connect: Any) -> None:
    conn, signals = connect(broker, recovery_delay_min=0.01, recovery_delay_max=0.02)
    ch = conn.channel()
    _consumer(ch, signals)
    # the exclusive owner never goes away: every re-consume is refused with 405
    broker.on(C.Basic.Consume, close_channel(405, "RESOURCE_LOCKED - fake"), conn=0,
              channel=1)
    broker.peer(0).close_channel(1, 406, ACK_TIMEOUT)
    _, error = signals.wait("channel_closed", timeout=WAIT * 2)
    assert ch.is_closed and "not recovered after 5 attempts" in str(error)
    assert len(broker.frames(C.Basic.Consume, conn=0, channel=1)) == 1 + 5
    round_trip(conn)


def test_link_lost_during_a_channel_recovery_hands_it_to_the_connection_recovery(
        broker: FakeBroker, connect: Any) -> None:
    conn, signals = connect(broker)
    ch = conn.channel()
    tag = _consumer(ch, signals)
    broker.on(C.Channel.Open, lambda peer, rec: peer.drop(), conn=0, channel=1)
    broker.peer(0).close_channel(1, 406, ACK_TIMEOUT)
    signals.wait("recovered")
    signals.wait("channel_recovered")
    assert ch.is_open
    assert broker.frames(C.Basic.Consume, conn=1, channel=1)[0].method.consumer_tag == tag


# ---------------------------------------------------------------- streams (point 6)


def _stream_delivery(peer: Any, tag: str, dtag: int, offset: int) -> None:
    props = C.Basic.Properties(headers={"x-stream-offset": offset})
    peer.deliver(1, tag, dtag, str(offset).encode(), properties=props)


@pytest.mark.parametrize("how", ["connection", "channel"])
def test_a_stream_consumer_resumes_after_the_last_offset_delivered(
        broker: FakeBroker, connect: Any, how: str) -> None:
    conn, signals = connect(broker)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=10)
    ch.add_on_channel_recovered_callback(signals.callback("channel_recovered"))
    tag = ch.basic_consume("stream", lambda c, m, p, b: signals.add("msg", int(b)),
                           arguments={"x-stream-offset": "first"})
    peer = broker.peer(0)
    for dtag, offset in enumerate(range(100, 105), start=1):
        _stream_delivery(peer, tag, dtag, offset)
    signals.wait("msg", 5)
    if how == "connection":
        peer.drop()
        signals.wait("recovered")
    else:
        peer.close_channel(1, 406, ACK_TIMEOUT)
    signals.wait("channel_recovered")
    conn_index = 1 if how == "connection" else 0
    consumes = broker.frames(C.Basic.Consume, conn=conn_index, channel=1)
    assert consumes[-1].method.arguments == {"x-stream-offset": 105}
    assert [a[0] for a in signals.args("msg")] == list(range(100, 105))


def test_a_resumed_stream_replaying_its_chunk_start_is_not_handed_over_twice(
        broker: FakeBroker, connect: Any) -> None:
    conn, signals = connect(broker)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=10)
    ch.add_on_channel_recovered_callback(signals.callback("channel_recovered"))
    tag = ch.basic_consume("stream", lambda c, m, p, b: signals.add("msg", int(b)),
                           arguments={"x-stream-offset": "first"})
    peer = broker.peer(0)
    for dtag, offset in enumerate(range(3), start=1):
        _stream_delivery(peer, tag, dtag, offset)
    signals.wait("msg", 3)
    mark = broker.mark()
    peer.close_channel(1, 406, ACK_TIMEOUT)
    signals.wait("channel_recovered")
    for dtag, offset in enumerate(range(1, 5), start=1):  # the chunk starts at offset 1
        _stream_delivery(peer, tag, dtag, offset)
    signals.wait("msg", 5)
    assert [a[0] for a in signals.args("msg")] == [0, 1, 2, 3, 4]
    acks = broker.wait_for_all(C.Basic.Ack, conn=0, channel=1, after=mark, count=2)
    assert [r.method.delivery_tag for r in acks] == [1, 2], "replayed ones are acked (credit)"


def test_the_number_stays_taken_while_the_channel_recovers(
        broker: FakeBroker, connect: Any) -> None:
    conn, signals = connect(broker, recovery_delay_min=0.3, recovery_delay_max=0.3)
    ch = conn.channel()
    _consumer(ch, signals)
    mark = broker.mark()
    broker.peer(0).close_channel(1, 406, ACK_TIMEOUT)
    broker.wait_for(C.Channel.CloseOk, conn=0, channel=1, after=mark)
    other = conn.channel()  # during the back-off: number 1 is the recovering channel's
    assert other.channel_number == 2
    signals.wait("channel_recovered")
    assert ch.is_open and ch.channel_number == 1 and other.is_open
