"""Scenarios A-H of issue 11, each against a real Connection and a scripted fake broker.

Connection 0 is the first connection, connection 1 the supervisor's first
reconnect. Every wait is bounded (WAIT seconds), so a hang fails fast.
"""

from __future__ import annotations

from typing import Any

import gevent
import pytest
from fakebroker import WAIT, FakeBroker, close_channel, reply_after
from gevent.event import Event
from pamqp import commands as C
from peer_helpers import Signals, finished, round_trip

import geamqp

pytestmark = pytest.mark.timeout(15)


def _closed_in_time(ch: Any, timeout: float = WAIT) -> None:
    with gevent.Timeout(timeout, AssertionError(f"{ch!r}.close() did not return")):
        ch.close()


def _assert_wrong_state(ch: Any) -> None:
    with pytest.raises(geamqp.ChannelWrongStateError), gevent.Timeout(WAIT):
        ch.queue_declare("after-close")


# ---------------------------------------------------------------- A


def test_a_close_while_waiting_to_reconnect_keeps_the_channel_closed(
        broker: FakeBroker, connect: Any) -> None:
    conn, signals = connect(broker)
    ch = conn.channel()
    release = broker.hold(1)  # the reconnect is accepted but gets no answer yet
    broker.peer(0).drop()
    signals.wait("lost")
    broker.peer(1)
    _closed_in_time(ch)
    assert ch.is_closed and not ch.is_open
    release.set()
    signals.wait("recovered")
    assert broker.frames(C.Channel.Open, conn=1) == [], "recovery reopened a closed channel"
    assert not ch.is_open
    _assert_wrong_state(ch)
    round_trip(conn)


# ---------------------------------------------------------------- B


def test_b_close_of_a_channel_recovery_has_not_reopened_yet(
        broker: FakeBroker, connect: Any) -> None:
    conn, signals = connect(broker)
    ch1, ch2 = conn.channel(), conn.channel()
    open_ok_1 = Event()
    broker.on(C.Channel.Open, reply_after(open_ok_1), conn=1, channel=1)
    broker.peer(0).drop()
    broker.wait_for(C.Channel.Open, conn=1, channel=1)  # the restore is under way
    _closed_in_time(ch2)
    assert ch2.is_closed
    open_ok_1.set()
    signals.wait("recovered")
    assert ch1.is_open and not ch2.is_open and ch2.is_closed
    opens = broker.frames(C.Channel.Open, conn=1, channel=2)
    if opens:  # reopened before close() ran: it must then have been closed again
        closes = broker.frames(C.Channel.Close, conn=1, channel=2, after=opens[-1].seq)
        assert closes, "channel 2 was reopened by recovery and left open"
    _assert_wrong_state(ch2)
    round_trip(conn)


# ---------------------------------------------------------------- C


def test_c_close_in_the_middle_of_the_channels_restore(
        broker: FakeBroker, connect: Any) -> None:
    conn, signals = connect(broker)
    ch1 = conn.channel()
    ch1.basic_qos(prefetch_count=10)
    ch2 = conn.channel()
    qos_ok = Event()
    broker.on(C.Basic.Qos, reply_after(qos_ok), conn=1, channel=1)
    broker.peer(0).drop()
    broker.wait_for(C.Basic.Qos, conn=1, channel=1)  # after its open-ok, before its qos-ok
    closer = gevent.spawn(ch1.close)
    broker.wait_for(C.Channel.Close, conn=1, channel=1)
    qos_ok.set()  # the broker answers in order: qos-ok, then close-ok
    finished(closer)
    assert ch1.is_closed
    signals.wait("recovered")
    assert ch2.is_open
    assert ch2.queue_declare("c-after").queue == "c-after"
    _assert_wrong_state(ch1)
    round_trip(conn)


# ---------------------------------------------------------------- D


def test_d_reconnect_with_a_lower_channel_max_closes_only_the_channels_above_it(
        broker: FakeBroker, connect: Any) -> None:
    conn, signals = connect(broker)
    channels = [conn.channel() for _ in range(3)]
    assert [c.channel_number for c in channels] == [1, 2, 3]
    broker.tune[1] = {"channel_max": 2}
    broker.peer(0).drop()
    signals.wait("recovered")
    ch1, ch2, ch3 = channels
    assert ch1.is_open and ch2.is_open
    assert not ch3.is_open
    with pytest.raises(geamqp.AMQPChannelError), gevent.Timeout(WAIT):
        ch3.queue_declare("d3")
    assert sorted(r.channel for r in broker.frames(C.Channel.Open, conn=1)) == [1, 2]
    assert ch2.queue_declare("d2").queue == "d2"


@pytest.mark.parametrize("fault", ["bad-frame-end", "close-320", "close-541"])
def test_d_a_fault_during_the_reconnect_handshake_is_retried(
        broker: FakeBroker, connect: Any, fault: str) -> None:
    conn, signals = connect(broker)
    ch = conn.channel()

    def faulty(peer: Any) -> None:
        peer.handshake(until="open")  # connection.open received, open-ok not sent
        if fault == "bad-frame-end":
            peer.send_raw(b"\x01\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x29\x00")
        else:
            peer.close_connection(int(fault[-3:]), "fake close during the handshake")
        peer.serve()

    broker.script(1, faulty)
    broker.peer(0).drop()
    signals.wait("recovered")
    assert len(broker.peers) == 3
    assert ch.is_open
    assert ch.queue_declare("d-retry").queue == "d-retry"
    assert signals.count("recovery_failed") == 0


# ---------------------------------------------------------------- E


def _interrupted(call: Any, how: str, broker: FakeBroker, sent: type) -> None:
    """Run `call` and interrupt it as a user would: a 0.2 s gevent.Timeout around it,
    or greenlet.kill() once the broker has its request."""
    if how == "timeout":
        with pytest.raises(gevent.Timeout), gevent.Timeout(0.2):
            call()
        return
    victim = gevent.spawn(call)
    broker.wait_for(sent, conn=0)
    victim.kill(block=True, timeout=WAIT)
    assert victim.dead


@pytest.mark.parametrize("how", ["timeout", "kill"])
def test_e_timeout_around_channel_while_open_ok_is_late(
        broker: FakeBroker, connect: Any, how: str) -> None:
    conn, _ = connect(broker)
    open_ok = Event()
    broker.on(C.Channel.Open, reply_after(open_ok), conn=0, channel=1, times=1)
    _interrupted(conn.channel, how, broker, C.Channel.Open)
    open_ok.set()
    broker.wait_for(C.Channel.OpenOk, direction="out", conn=0, channel=1)
    broker.wait_for(C.Channel.Close, conn=0, channel=1)  # the half-made channel is closed
    round_trip(conn, "e-after")
    close_ok = broker.wait_for(C.Channel.CloseOk, direction="out", conn=0, channel=1)
    for reopen in broker.frames(C.Channel.Open, conn=0, channel=1)[1:]:
        assert reopen.seq > close_ok.seq, "channel 1 reused before its close-ok"


@pytest.mark.parametrize("how", ["timeout", "kill"])
def test_e_timeout_around_basic_consume_while_consume_ok_is_late(
        broker: FakeBroker, connect: Any, how: str) -> None:
    conn, _ = connect(broker)
    ch = conn.channel()
    consume_ok = Event()
    broker.on(C.Basic.Consume, reply_after(consume_ok), conn=0, channel=1)
    called: list[Any] = []
    _interrupted(lambda: ch.basic_consume("q", lambda *a: called.append(a),
                                          consumer_tag="orphan"), how, broker, C.Basic.Consume)
    consume_ok.set()
    broker.wait_for(C.Basic.ConsumeOk, direction="out", conn=0, channel=1)
    peer = broker.peer(0)
    peer.deliver(1, "orphan", 1, b"lost?")
    broker.wait_for(C.Basic.Cancel, conn=0, channel=1,
                    where=lambda m: m.consumer_tag == "orphan")
    reject = broker.wait_for(C.Basic.Reject, conn=0, channel=1)
    assert (reject.method.delivery_tag, reject.method.requeue) == (1, True)
    assert called == []
    assert ch.queue_declare("e-consume").queue == "e-consume"


# ---------------------------------------------------------------- F


@pytest.mark.parametrize("auto_ack", [False, True], ids=["manual-ack", "auto-ack"])
def test_f_deliveries_during_the_restore_are_dispatched(
        broker: FakeBroker, connect: Any, auto_ack: bool) -> None:
    conn, signals = connect(broker)
    ch1, ch2 = conn.channel(), conn.channel()
    got: list[bytes] = []
    delivered = Event()

    def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
        got.append(body)
        if len(got) == 2:
            delivered.set()
        if not auto_ack:
            channel.basic_ack(method.delivery_tag)

    ch1.basic_consume("q1", on_message, auto_ack=auto_ack, consumer_tag="c1")
    ch2.basic_consume("q2", lambda *a: None, consumer_tag="c2")
    consume_ok_2 = Event()
    broker.on(C.Basic.Consume, reply_after(consume_ok_2), conn=1,
              where=lambda m: m.consumer_tag == "c2")
    broker.peer(0).drop()
    broker.wait_for(C.Basic.ConsumeOk, direction="out", conn=1,
                    where=lambda m: m.consumer_tag == "c1")
    broker.wait_for(C.Basic.Consume, conn=1, where=lambda m: m.consumer_tag == "c2")
    peer = broker.peer(1)
    peer.deliver(1, "c1", 1, b"f1")
    peer.deliver(1, "c1", 2, b"f2")
    assert delivered.wait(WAIT), f"deliveries during the restore not dispatched: {got}"
    assert signals.count("recovered") == 0  # the restore was still held
    consume_ok_2.set()
    signals.wait("recovered")
    assert got == [b"f1", b"f2"]
    if not auto_ack:
        acks = broker.wait_for_all(C.Basic.Ack, count=2, conn=1, channel=1)
        assert [a.method.delivery_tag for a in acks] == [1, 2]


# ---------------------------------------------------------------- G


def test_g_broker_close_during_the_restore_ends_the_channel_closed_once(
        broker: FakeBroker, connect: Any) -> None:
    conn, signals = connect(broker)
    ch1, ch2 = conn.channel(), conn.channel()
    closes = Signals()
    ch1.add_on_close_callback(closes.callback("closed"))
    ch1.basic_consume("qg", lambda *a: None, exclusive=True, consumer_tag="g1")
    broker.on(C.Basic.Consume, close_channel(403, "ACCESS_REFUSED - exclusive"), conn=1,
              where=lambda m: m.consumer_tag == "g1")
    broker.peer(0).drop()
    signals.wait("recovered")
    channel, error = closes.wait("closed")
    assert channel is ch1
    assert isinstance(error, geamqp.ChannelClosedByBroker) and error.reply_code == 403
    assert ch2.queue_declare("g-after").queue == "g-after"  # a round trip after recovery
    assert ch1.is_closed and not ch1.is_open
    assert closes.count("closed") == 1
    broker.wait_for(C.Channel.CloseOk, conn=1, channel=1)
    _assert_wrong_state(ch1)


# ---------------------------------------------------------------- H


def test_h_concurrent_update_secret_calls_each_return_after_their_own_ok(
        broker: FakeBroker, connect: Any) -> None:
    conn, _ = connect(broker)
    first_ok = Event()
    broker.on(C.Connection.UpdateSecret, reply_after(first_ok), conn=0, times=1)
    g1 = gevent.spawn(conn.update_secret, "s1", "rotate 1")
    g2 = gevent.spawn(conn.update_secret, "s2", "rotate 2")
    broker.wait_for(C.Connection.UpdateSecret, conn=0)
    round_trip(conn, "h-meanwhile")  # time passes on the wire; the first ok is still held
    assert not g1.ready() and not g2.ready()
    first_ok.set()
    finished(g1)
    finished(g2)
    secrets = [_as_bytes(r.method.new_secret)
               for r in broker.frames(C.Connection.UpdateSecret, conn=0)]
    assert secrets == [b"s1", b"s2"]


def test_h_the_newest_secret_is_used_by_the_next_reconnect(
        broker: FakeBroker, connect: Any) -> None:
    conn, signals = connect(broker)
    conn.update_secret("s1", "rotate 1")
    conn.update_secret("s2", "rotate 2")
    broker.peer(0).drop()
    signals.wait("recovered")
    start_ok = broker.frames(C.Connection.StartOk, conn=1)[0].method
    assert _as_bytes(start_ok.response) == b"\0guest\0s2"


def test_h_update_secret_with_a_wrong_type_raises_type_error(
        broker: FakeBroker, connect: Any) -> None:
    conn, _ = connect(broker)
    with pytest.raises(TypeError), gevent.Timeout(WAIT):
        conn.update_secret(1, "x")
    round_trip(conn)
    assert broker.frames(C.Connection.UpdateSecret) == []


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")
