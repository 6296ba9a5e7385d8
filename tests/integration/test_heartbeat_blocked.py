"""Heartbeats on an idle or busy connection, and the broker's resource alarms
(connection.blocked / unblocked, RELIABILITY 26).

The alarm tests raise RabbitMQ's memory alarm for the whole broker, so they are
marked ``broker_disruptive``; ``support.broker.memory_alarm()`` always restores
the watermark and waits for the alarm to clear, whatever the test did.
"""

from __future__ import annotations

import time

import gevent
import pytest
from channel_helpers import wait_for
from gevent.event import AsyncResult, Event
from support import broker as broker_ctl
from transport_helpers import (
    HEARTBEAT_FRAME,
    Closed,
    catching,
    geamqp_greenlets,
    joined,
    spy_sockets,
    wait_no_geamqp_greenlets,
)

import geamqp
from geamqp.exceptions import ConnectionBlockedTimeout, ConnectionClosedByClient

# ---------------------------------------------------------------- heartbeats


def _heartbeats_sent(spy) -> int:
    return sum(data.count(HEARTBEAT_FRAME) for data in spy.sends)


def test_idle_connection_sends_heartbeats_and_the_broker_keeps_it(broker, monkeypatch,
                                                                 unique_name):
    spies = spy_sockets(monkeypatch)
    with geamqp.connect(f"{broker.url()}?heartbeat=1", name=unique_name,
                        recover=False) as conn:
        assert conn._link.engine.heartbeat == 1
        closed = Closed(conn)
        [spy] = spies
        started = time.monotonic()
        # idle for three intervals, more than the two silent intervals after which
        # the broker would drop a client that sends no heartbeats
        wait_for(lambda: time.monotonic() - started >= 3.0 and _heartbeats_sent(spy) >= 3,
                 6, "three idle heartbeat intervals")
        assert not closed.result.ready()
        assert conn.is_open
        conn.channel().queue_declare("", exclusive=True)  # the broker still answers
        assert broker_ctl.find_connections(unique_name)


def test_blocking_callback_keeps_the_connection_alive(broker, monkeypatch):
    """A consumer callback that sleeps cooperatively for three heartbeat intervals:
    heartbeats go on meanwhile, the connection survives and the ack lands."""
    spies = spy_sockets(monkeypatch)
    with geamqp.connect(f"{broker.url()}?heartbeat=2", recover=False) as conn:
        closed = Closed(conn)
        ch, other = conn.channel(), conn.channel()
        other.confirm_delivery()
        queue = ch.queue_declare("", exclusive=True).queue
        acked = Event()
        heartbeats_during: list[int] = []

        def slow(channel, method, properties, body):
            before = _heartbeats_sent(spies[0])
            gevent.sleep(6)
            heartbeats_during.append(_heartbeats_sent(spies[0]) - before)
            channel.basic_ack(method.delivery_tag)
            acked.set()

        ch.basic_consume(queue, slow)
        other.basic_publish("", queue, b"slow work")
        assert acked.wait(10)
        assert heartbeats_during[0] >= 3  # at least one per interval while it slept
        assert conn.is_open and not closed.result.ready()
        ch.close()  # an unacked message would now go back to the queue
        assert other.queue_declare(queue, passive=True).message_count == 0


# ---------------------------------------------------------------- blocked (RELIABILITY 26)


class Blocking:
    """Records the blocked / unblocked callbacks of a connection."""

    def __init__(self, conn: geamqp.Connection) -> None:
        self.blocked: AsyncResult = AsyncResult()
        self.unblocked = Event()
        conn.add_on_connection_blocked_callback(lambda _c, reason: self.blocked.set(reason))
        conn.add_on_connection_unblocked_callback(lambda _c, _m: self.unblocked.set())


def _provoke_block(ch: geamqp.Channel, queue: str, blocking: Blocking) -> None:
    """Under the alarm RabbitMQ blocks a connection when it publishes."""
    ch.basic_publish("", queue, b"trigger", wait=False)
    reason = blocking.blocked.get(timeout=10)
    assert "memory" in reason.lower()


@pytest.mark.broker_disruptive
def test_memory_alarm_blocks_publishers_cooperatively_until_it_clears(broker):
    conn = geamqp.connect(broker.url(), recover=False)
    try:
        blocking = Blocking(conn)
        ch = conn.channel()
        ch.confirm_delivery()
        queue = ch.queue_declare("", exclusive=True).queue
        with broker_ctl.memory_alarm():
            _provoke_block(ch, queue, blocking)
            assert conn.is_blocked
            ticks = []
            ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(20)])
            publisher = gevent.spawn(ch.basic_publish, "", queue, b"while blocked")
            ticker.join(5)
            assert len(ticks) == 20  # the hub kept running other greenlets
            assert not publisher.ready()  # the publish waits for the alarm to clear
            assert not blocking.unblocked.is_set()
        assert blocking.unblocked.wait(10)
        assert not conn.is_blocked
        publisher.join(10)
        assert publisher.successful(), publisher.exception
        bodies = []
        for _ in range(2):
            method, _props, body = ch.basic_get(queue, auto_ack=True)
            assert method is not None
            bodies.append(body)
        assert bodies == [b"trigger", b"while blocked"]
    finally:
        conn.close()


@pytest.mark.broker_disruptive
def test_blocked_connection_timeout_closes_the_connection(broker):
    before = geamqp_greenlets()
    conn = geamqp.connect(f"{broker.url()}?blocked_connection_timeout=2", recover=False)
    closed = Closed(conn)
    blocking = Blocking(conn)
    ch = conn.channel()
    queue = ch.queue_declare("", exclusive=True).queue
    with broker_ctl.memory_alarm():
        _provoke_block(ch, queue, blocking)
        blocked_at = time.monotonic()
        waiter = gevent.spawn(catching, ch.basic_publish, "", queue, b"never")
        error = closed.wait(6)
        assert isinstance(error, ConnectionBlockedTimeout)
        assert 1.5 <= time.monotonic() - blocked_at <= 3.5
        [outcome] = joined([waiter], 2)
        assert isinstance(outcome, ConnectionBlockedTimeout), outcome
        assert conn.is_closed and not conn.is_blocked
    wait_no_geamqp_greenlets(before)


@pytest.mark.broker_disruptive
def test_close_while_blocked_is_bounded_and_leaks_nothing(broker, unique_name):
    before = geamqp_greenlets()
    conn = geamqp.connect(broker.url(), name=unique_name, recover=False)
    closed = Closed(conn)
    blocking = Blocking(conn)
    channels = [conn.channel() for _ in range(3)]
    queue = channels[0].queue_declare("", exclusive=True).queue
    with broker_ctl.memory_alarm():
        _provoke_block(channels[0], queue, blocking)
        started = time.monotonic()
        conn.close()  # the blocked broker reads nothing more: close-ok never comes
        assert time.monotonic() - started < 7
        assert isinstance(closed.wait(1), ConnectionClosedByClient)
        assert conn._channels == {}
        assert all(ch.is_closed for ch in channels)
    # once the alarm is gone the broker notices the closed socket: nothing left there
    broker_ctl.wait_until(lambda: not broker_ctl.find_connections(unique_name), 15,
                          what="the broker to drop the connection")
    wait_no_geamqp_greenlets(before)
