"""Faults around a recovery: blocked state across it, broker closes and protocol
errors in the middle of a restore, and giving up cleanly."""

from __future__ import annotations

from typing import Any

import gevent
import pytest
from fakebroker import WAIT, FakeBroker, close_connection, send_bytes
from gevent.event import Event
from pamqp import commands as C
from peer_helpers import finished, outcome, round_trip, spawn_catching, turns

import geamqp

pytestmark = pytest.mark.timeout(15)

BAD_FRAME_END = b"\x01\x00\x01\x00\x00\x00\x04\x00\x3c\x00\x0b\x00"  # basic.qos-ok, end 0x00


def test_a_publisher_parked_while_blocked_publishes_after_the_recovery(
        broker: FakeBroker, connect: Any) -> None:
    conn, signals = connect(broker, params={"blocked_connection_timeout": 0.5})
    ch = conn.channel()
    broker.peer(0).blocked("memory alarm")
    signals.wait("blocked")
    publisher = gevent.spawn(ch.basic_publish, "", "q", b"parked")
    turns(5)
    assert not publisher.ready()
    assert broker.frames(C.Basic.Publish) == []
    broker.peer(0).drop()
    signals.wait("recovered")
    finished(publisher)
    published = broker.wait_for(C.Basic.Publish, conn=1, channel=1)
    assert published.body == b"parked"
    assert not conn.is_blocked
    # The old blocked timer must not fire on the new link: wait past its deadline.
    gevent.sleep(0.7)  # the assertion is that nothing happens within the timeout
    assert conn.is_open and signals.count("closed") == 0
    round_trip(conn)


@pytest.mark.parametrize("code", [320, 541])
def test_a_broker_close_in_the_middle_of_a_restore_is_retried(
        broker: FakeBroker, connect: Any, code: int) -> None:
    conn, signals = connect(broker)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=5)
    broker.on(C.Basic.Qos, close_connection(code, "fake close mid-restore"), conn=1)
    broker.peer(0).drop()
    signals.wait("recovered")
    assert ch.is_open
    qos = broker.wait_for(C.Basic.Qos, conn=2, channel=1)
    assert qos.method.prefetch_count == 5
    assert ch.queue_declare("after").queue == "after"
    assert signals.count("lost") == 1 and signals.count("recovery_failed") == 0
    broker.wait_for(C.Connection.CloseOk, conn=1)  # the client answered the close


@pytest.mark.parametrize("recover", [True, False], ids=["recovering", "not-recovering"])
def test_a_broker_connection_close_is_answered_with_close_ok(
        broker: FakeBroker, connect: Any, recover: bool) -> None:
    conn, signals = connect(broker, recover=recover)
    conn.channel()
    broker.peer(0).close_connection(320, "CONNECTION_FORCED - fake")
    signals.wait("recovered" if recover else "closed")
    broker.wait_for(C.Connection.CloseOk, conn=0)


def test_a_protocol_error_in_the_middle_of_a_restore_is_retried(
        broker: FakeBroker, connect: Any) -> None:
    conn, signals = connect(broker)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=5)
    broker.on(C.Basic.Qos, send_bytes(BAD_FRAME_END), conn=1)
    broker.peer(0).drop()
    signals.wait("recovered")
    assert ch.is_open
    broker.wait_for(C.Basic.Qos, conn=2, channel=1)
    assert ch.queue_declare("after").queue == "after"


def test_recovery_gives_up_cleanly_after_max_attempts(
        broker: FakeBroker, connect: Any) -> None:
    conn, signals = connect(broker, recovery_max_attempts=3, recovery_wait_timeout=30.0)
    ch = conn.channel()
    release = Event()

    def refused_later(peer: Any) -> None:
        release.wait()  # the first attempt hangs until the waiters are parked
        peer.drop()

    broker.script(1, refused_later)
    for index in range(2, 10):
        broker.refuse(index)
    broker.peer(0).drop()
    signals.wait("lost")
    waiters = [spawn_catching(ch.queue_declare, "w"), spawn_catching(conn.channel),
               spawn_catching(ch.basic_publish, "", "q", b"x")]
    turns(5)
    assert not any(w.ready() for w in waiters)
    release.set()
    (_, error) = signals.wait("recovery_failed", timeout=WAIT * 2)
    assert isinstance(error, geamqp.AMQPConnectionError)
    signals.wait("closed")
    for waiter in waiters:
        assert isinstance(outcome(waiter), geamqp.AMQPError), "a waiter was not released"
    assert conn.is_closed and not ch.is_open
    assert len(broker.peers) == 4  # the first connection and three attempts
