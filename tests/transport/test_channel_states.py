"""What public calls do in each channel state (the per-state table of issue 11).

OPEN proceeds; CLOSING/CLOSED raise ChannelWrongStateError (cause: the close
reason) and release waiters with the closing exception; SUSPENDED/RESTORING
wait for the recovery, except acks of the lost connection's deliveries, which
are dropped at once. After a recovery, manual-ack deliveries of the lost
connection not yet dispatched are discarded; auto-ack ones are dispatched.
"""

from __future__ import annotations

from typing import Any

import gevent
import pytest
from fakebroker import WAIT, FakeBroker, no_reply, reply_after
from gevent.event import Event
from pamqp import commands as C
from peer_helpers import Signals, finished, outcome, round_trip, spawn_catching, turns

import geamqp

pytestmark = pytest.mark.timeout(15)


# ---------------------------------------------------------------- CLOSING / CLOSED


def test_broker_close_releases_waiters_and_later_calls_raise_wrong_state(
        broker: FakeBroker, connect: Any) -> None:
    conn, _ = connect(broker)
    ch = conn.channel()
    broker.on(C.Queue.Declare, no_reply, conn=0, channel=1, times=1)
    waiter = spawn_catching(ch.queue_declare, "never-answered")
    broker.wait_for(C.Queue.Declare, conn=0, channel=1)
    broker.peer(0).close_channel(1, 404, "NOT_FOUND - fake")
    waited = outcome(waiter)
    assert isinstance(waited, geamqp.ChannelClosedByBroker) and waited.reply_code == 404
    broker.wait_for(C.Channel.CloseOk, conn=0, channel=1)
    assert ch.is_closed
    for call in (lambda: ch.queue_declare("x"), lambda: ch.basic_qos(prefetch_count=1),
                 lambda: ch.basic_publish("", "q", b"x"),
                 lambda: ch.basic_consume("q", lambda *a: None), lambda: ch.basic_get("q")):
        with pytest.raises(geamqp.ChannelWrongStateError) as raised, gevent.Timeout(WAIT):
            call()
        cause = raised.value.__cause__
        assert isinstance(cause, geamqp.ChannelClosedByBroker) and cause.reply_code == 404
    with gevent.Timeout(WAIT):
        ch.close()  # already closed: returns quietly
    round_trip(conn)


def test_client_close_releases_a_waiter_with_channel_closed_by_client(
        broker: FakeBroker, connect: Any) -> None:
    conn, _ = connect(broker)
    ch = conn.channel()
    broker.on(C.Queue.Declare, no_reply, conn=0, channel=1, times=1)
    waiter = spawn_catching(ch.queue_declare, "never-answered")
    broker.wait_for(C.Queue.Declare, conn=0, channel=1)
    with gevent.Timeout(WAIT):
        ch.close()
    assert isinstance(outcome(waiter), geamqp.ChannelClosedByClient)
    round_trip(conn)


def test_client_close_then_calls_raise_wrong_state_caused_by_the_client_close(
        broker: FakeBroker, connect: Any) -> None:
    conn, _ = connect(broker)
    ch = conn.channel()
    ch.close()
    with pytest.raises(geamqp.ChannelWrongStateError) as raised, gevent.Timeout(WAIT):
        ch.queue_declare("x")
    assert isinstance(raised.value.__cause__, geamqp.ChannelClosedByClient)
    with pytest.raises(geamqp.ChannelWrongStateError), gevent.Timeout(WAIT):
        ch.basic_ack(1)
    ch.close()


def test_calls_while_closing_raise_wrong_state(broker: FakeBroker, connect: Any) -> None:
    conn, _ = connect(broker)
    ch = conn.channel()
    close_ok = Event()
    broker.on(C.Channel.Close, reply_after(close_ok), conn=0, channel=1)
    closer = gevent.spawn(ch.close)
    broker.wait_for(C.Channel.Close, conn=0, channel=1)
    assert ch.is_closing
    with pytest.raises(geamqp.ChannelWrongStateError), gevent.Timeout(WAIT):
        ch.queue_declare("while-closing")
    close_ok.set()
    finished(closer)
    assert ch.is_closed
    assert broker.frames(C.Queue.Declare, conn=0, channel=1) == []


# ---------------------------------------------------------------- SUSPENDED / RESTORING


def test_a_call_while_suspended_waits_for_the_recovery_and_runs_on_the_new_link(
        broker: FakeBroker, connect: Any) -> None:
    conn, signals = connect(broker)
    ch = conn.channel()
    release = broker.hold(1)
    broker.peer(0).drop()
    signals.wait("lost")
    call = gevent.spawn(ch.queue_declare, "suspended-q")
    turns(5)
    assert not call.ready()
    release.set()
    assert finished(call).queue == "suspended-q"
    assert broker.frames(C.Queue.Declare, conn=1, channel=1)


def test_a_call_while_suspended_is_bounded_by_recovery_wait_timeout(
        broker: FakeBroker, connect: Any) -> None:
    conn, signals = connect(broker, recovery_wait_timeout=0.3)
    ch = conn.channel()
    release = broker.hold(1)
    broker.peer(0).drop()
    signals.wait("lost")
    started = gevent.get_hub().loop.now()
    with pytest.raises(geamqp.AMQPError), gevent.Timeout(WAIT):
        ch.queue_declare("too-late")
    assert gevent.get_hub().loop.now() - started < 1.5
    release.set()
    signals.wait("recovered")
    assert ch.queue_declare("later").queue == "later"


def _consume_one_unacked(broker: FakeBroker, conn: Any) -> tuple[Any, list[int]]:
    ch = conn.channel()
    got = Signals()
    ch.basic_consume("q", lambda c, m, p, b: got.add("tag", m.delivery_tag), consumer_tag="k")
    broker.peer(0).deliver(1, "k", 1)
    return ch, [got.wait("tag")[0]]


@pytest.mark.parametrize("settle", ["ack", "nack", "reject"])
@pytest.mark.parametrize("state", ["suspended", "restoring"])
def test_settling_a_delivery_of_the_lost_connection_is_dropped_at_once(
        broker: FakeBroker, connect: Any, settle: str, state: str) -> None:
    conn, signals = connect(broker)
    ch, tags = _consume_one_unacked(broker, conn)
    if state == "suspended":
        release = broker.hold(1)
    else:
        release = Event()
        broker.on(C.Basic.Consume, reply_after(release), conn=1, channel=1)
    broker.peer(0).drop()
    signals.wait("lost")
    if state == "restoring":
        broker.wait_for(C.Basic.Consume, conn=1, channel=1)
    with gevent.Timeout(0.5, AssertionError(f"basic_{settle} waited for the recovery")):
        getattr(ch, f"basic_{settle}")(tags[0])
    release.set()
    signals.wait("recovered")
    round_trip(conn)
    settled = broker.frames((C.Basic.Ack, C.Basic.Nack, C.Basic.Reject), conn=1)
    assert settled == [], f"a stale delivery tag was sent on the new connection: {settled}"


def test_close_while_suspended_is_immediate_and_recovery_skips_the_channel(
        broker: FakeBroker, connect: Any) -> None:
    conn, signals = connect(broker)
    keep, gone = conn.channel(), conn.channel()
    release = broker.hold(1)
    broker.peer(0).drop()
    signals.wait("lost")
    with gevent.Timeout(0.5, AssertionError("close() while suspended waited")):
        gone.close()
    assert gone.is_closed
    release.set()
    signals.wait("recovered")
    assert [r.channel for r in broker.frames(C.Channel.Open, conn=1)] == [keep.channel_number]
    assert broker.frames(C.Channel.Close, conn=1) == []
    assert keep.is_open


def test_close_while_restoring_closes_on_the_new_link_and_recovery_completes(
        broker: FakeBroker, connect: Any) -> None:
    conn, signals = connect(broker)
    restoring, other = conn.channel(), conn.channel()
    restoring.confirm_delivery()
    select_ok = Event()
    broker.on(C.Confirm.Select, reply_after(select_ok), conn=1, channel=1)
    broker.peer(0).drop()
    broker.wait_for(C.Confirm.Select, conn=1, channel=1)
    closer = gevent.spawn(restoring.close)
    broker.wait_for(C.Channel.Close, conn=1, channel=1)
    select_ok.set()
    finished(closer)
    assert restoring.is_closed
    broker.wait_for(C.Channel.CloseOk, direction="out", conn=1, channel=1)
    signals.wait("recovered")
    assert other.is_open and other.queue_declare("other").queue == "other"


# ---------------------------------------------------------------- point 7: no wasted redeliveries


@pytest.mark.parametrize("auto_ack", [False, True], ids=["manual-ack", "auto-ack"])
def test_undispatched_deliveries_of_the_lost_connection(
        broker: FakeBroker, connect: Any, auto_ack: bool) -> None:
    conn, signals = connect(broker)
    ch = conn.channel()
    calls = Signals()
    busy = Event()

    def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
        calls.add("got", body)
        if body == b"m1":
            busy.wait(WAIT)  # the first delivery keeps the dispatcher busy
        if not auto_ack:
            channel.basic_ack(method.delivery_tag)
        calls.add("done", body)

    ch.basic_consume("q", on_message, auto_ack=auto_ack, consumer_tag="p7")
    peer = broker.peer(0)
    for tag in (1, 2, 3):
        peer.deliver(1, "p7", tag, f"m{tag}".encode())
    assert calls.wait("got") == (b"m1",)
    peer.drop()
    signals.wait("recovered")
    busy.set()
    calls.wait("done")
    mark = broker.mark()
    broker.peer(1).deliver(1, "p7", 1, b"n1")  # FIFO: once n1 is in, the rest ran
    got = [body for (body,) in calls.args("got")]
    while b"n1" not in got:
        got.append(calls.wait("got", count=len(got) + 1)[0])
    if auto_ack:
        assert got == [b"m1", b"m2", b"m3", b"n1"]
    else:
        assert got == [b"m1", b"n1"], "deliveries of the lost connection were dispatched"
        stale = broker.frames((C.Basic.Ack, C.Basic.Nack, C.Basic.Reject), conn=1, after=-1)
        assert [r for r in stale if r.seq <= mark] == [], "an ack of the lost connection was sent"


def test_auto_ack_deliveries_still_run_while_the_connection_is_suspended(
        broker: FakeBroker, connect: Any) -> None:
    """Auto-ack deliveries are the application's once received: if the callback ahead
    of them finishes while the connection is still down, they run then, not never."""
    conn, signals = connect(broker)
    ch = conn.channel()
    calls = Signals()
    busy = Event()

    def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
        calls.add("got", body)
        if body == b"m1":
            busy.wait(WAIT)

    ch.basic_consume("q", on_message, auto_ack=True, consumer_tag="aa")
    reconnect = broker.hold(1)  # the supervisor's reconnect stays unanswered
    peer = broker.peer(0)
    for tag in (1, 2, 3):
        peer.deliver(1, "aa", tag, f"m{tag}".encode())
    assert calls.wait("got") == (b"m1",)
    peer.drop()
    signals.wait("lost")
    busy.set()  # m1's callback returns while the channel is SUSPENDED
    assert calls.wait("got", count=3) == (b"m3",)
    assert ch.state.value == "suspended"
    reconnect.set()
    signals.wait("recovered")
