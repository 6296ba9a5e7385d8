"""Faults on the link (RELIABILITY 20-22) and the coalescing writer (DESIGN 3, RELIABILITY 33).

Every fault is injected by the FaultProxy between the client and the real
broker: a RST in the middle of a frame, a half-open link (blackhole), a link
that stops moving (throttle 0), a write that stalls; or by the broker itself
(`rabbitmqctl close_connection`). In each case every greenlet waiting on the
connection is released promptly with a typed error, and no greenlet of the
connection is left behind. Waiting is done on events and greenlet joins.
"""

from __future__ import annotations

import time
from typing import Any

import gevent
import pytest
from channel_helpers import wait_for
from gevent.event import Event
from support import broker as broker_ctl
from transport_helpers import (
    FRAME_BODY,
    FRAME_HEADER,
    Closed,
    catching,
    count_method,
    first,
    frames,
    geamqp_greenlets,
    joined,
    spy_sockets,
    wait_no_geamqp_greenlets,
)

import geamqp
from geamqp.exceptions import (
    AMQPConnectionError,
    AMQPHeartbeatTimeout,
    ChannelWrongStateError,
    ConnectionClosedByBroker,
    ConnectionClosedByClient,
    ConnectionWrongStateError,
    StreamLostError,
)

BASIC_PUBLISH = (60, 40)
CONNECTION_CLOSE = (10, 50)


def _consumer_ready(ch: geamqp.Channel) -> bool:
    """A consume() generator has its consume-ok: a tag and no RPC outstanding."""
    return bool(ch.consumer_tags) and not ch._requests


# ---------------------------------------------------------------- resets (RELIABILITY 20)


def test_reset_mid_frame_releases_every_waiter(proxy):
    before = geamqp_greenlets()
    conn = geamqp.connect(proxy.url(), recover=False)
    closed = Closed(conn)
    consuming, generating, confirming, rpc = (conn.channel() for _ in range(4))
    queue = consuming.queue_declare("", exclusive=True).queue
    consuming.basic_consume(queue, lambda *args: None)
    confirming.confirm_delivery()
    waiters = {
        "start_consuming": gevent.spawn(catching, consuming.start_consuming),
        "consume": gevent.spawn(catching, first, lambda: generating.consume(queue)),
    }
    wait_for(lambda: _consumer_ready(generating), 5, "the consume() generator")
    fired = proxy.reset_after(3, "to_client")  # 3 bytes of the next frame, then RST
    waiters["publish"] = gevent.spawn(catching, confirming.basic_publish, "", queue, b"x")
    waiters["rpc"] = gevent.spawn(catching, rpc.queue_declare, "", exclusive=True)
    assert fired.wait(5)
    outcomes = dict(zip(waiters, joined(list(waiters.values()), 5), strict=True))
    for name, outcome in outcomes.items():
        assert isinstance(outcome, StreamLostError), (name, outcome)
    assert isinstance(closed.wait(1), StreamLostError)
    assert conn.is_closed and not conn.is_open
    with pytest.raises(ConnectionWrongStateError) as refused:
        conn.channel()
    assert isinstance(refused.value.__cause__, StreamLostError)
    conn.close()  # closing a lost connection is a no-op, not an error
    wait_no_geamqp_greenlets(before)


def test_reset_while_a_large_publish_is_on_the_wire(proxy):
    """RST after the first 20 KB of a 1 MB publish reached the proxy."""
    conn = geamqp.connect(proxy.url(), recover=False)
    closed = Closed(conn)
    ch = conn.channel()
    ch.confirm_delivery()
    queue = ch.queue_declare("", exclusive=True).queue
    fired = proxy.reset_after(20_000, "to_broker")
    publisher = gevent.spawn(catching, ch.basic_publish, "", queue, b"x" * 1_000_000)
    assert fired.wait(5)
    [outcome] = joined([publisher], 5)
    assert isinstance(outcome, AMQPConnectionError), outcome
    assert isinstance(closed.wait(1), StreamLostError)


def test_unacked_deliveries_come_back_redelivered_after_a_reset(broker, proxy, unique_name):
    queue = unique_name
    with geamqp.connect(broker.url(), recover=False) as direct:
        dch = direct.channel()
        dch.confirm_delivery()
        dch.queue_declare(queue)
        try:
            sent = [f"m{i}".encode() for i in range(5)]
            for body in sent:
                dch.basic_publish("", queue, body)

            conn = geamqp.connect(proxy.url(), recover=False)
            closed = Closed(conn)
            ch = conn.channel()
            got: list[Any] = []
            all_in = Event()

            def on_message(channel, method, properties, body):
                got.append(method)
                if len(got) == len(sent):
                    all_in.set()

            ch.basic_consume(queue, on_message)  # manual acks: none given
            assert all_in.wait(5)
            assert not any(m.redelivered for m in got)
            proxy.reset_all()
            assert isinstance(closed.wait(5), StreamLostError)
            # a delivery tag of the dead connection is never sent on (no stale-tag 406)
            with pytest.raises(ChannelWrongStateError) as refused:
                ch.basic_ack(got[0].delivery_tag)
            assert isinstance(refused.value.__cause__, StreamLostError)

            again = []
            generator = dch.consume(queue, inactivity_timeout=5)
            for method, _props, body in generator:
                assert method is not None, "the broker did not redeliver"
                again.append((method.redelivered, body))
                dch.basic_ack(method.delivery_tag)
                if len(again) == len(sent):
                    break
            generator.close()
            assert sorted(again) == [(True, body) for body in sent]
        finally:
            dch.queue_delete(queue)


# ---------------------------------------------------------------- half-open links (21, 22)


def test_blackhole_is_detected_by_heartbeats_and_releases_every_waiter(proxy):
    before = geamqp_greenlets()
    conn = geamqp.connect(f"{proxy.url()}?heartbeat=2", recover=False)
    assert conn._link.engine.heartbeat == 2
    closed = Closed(conn)
    consuming, confirming, rpc = (conn.channel() for _ in range(3))
    queue = consuming.queue_declare("", exclusive=True).queue
    consuming.basic_consume(queue, lambda *args: None)
    confirming.confirm_delivery()
    waiters = [gevent.spawn(catching, consuming.start_consuming)]
    proxy.blackhole(True)
    started = time.monotonic()
    waiters.append(gevent.spawn(catching, confirming.basic_publish, "", queue, b"x"))
    waiters.append(gevent.spawn(catching, rpc.queue_declare, "", exclusive=True))
    error = closed.wait(10)
    detected_after = time.monotonic() - started
    assert isinstance(error, AMQPHeartbeatTimeout)
    # two silent heartbeat intervals (4 s) after the last byte received, which came
    # at most one interval before the blackhole; checked every interval/4
    assert 3.0 <= detected_after <= 6.0, detected_after
    for outcome in joined(waiters, 1):
        assert isinstance(outcome, AMQPHeartbeatTimeout), outcome
    wait_no_geamqp_greenlets(before)


def test_throttled_to_zero_publish_rpc_and_close_end_by_heartbeat(proxy):
    before = geamqp_greenlets()
    conn = geamqp.connect(f"{proxy.url()}?heartbeat=2", recover=False)
    confirming, rpc = conn.channel(), conn.channel()
    confirming.confirm_delivery()
    proxy.throttle(0)
    started = time.monotonic()
    waiters = [
        gevent.spawn(catching, confirming.basic_publish, "", "anywhere", b"x"),
        gevent.spawn(catching, rpc.queue_declare, "", exclusive=True),
    ]
    conn.close()
    assert time.monotonic() - started < 7
    assert conn.is_closed
    for outcome in joined(waiters, 1):
        assert isinstance(outcome, AMQPConnectionError), outcome
    wait_no_geamqp_greenlets(before)


def test_throttled_to_zero_close_is_bounded_by_its_timeout(proxy):
    before = geamqp_greenlets()
    conn = geamqp.connect(f"{proxy.url()}?heartbeat=60", recover=False)
    closed = Closed(conn)
    confirming, rpc = conn.channel(), conn.channel()
    confirming.confirm_delivery()
    proxy.throttle(0)
    waiters = [
        gevent.spawn(catching, confirming.basic_publish, "", "anywhere", b"x"),
        gevent.spawn(catching, rpc.queue_declare, "", exclusive=True),
    ]
    started = time.monotonic()
    conn.close()  # the broker never answers close-ok: bounded by the close timeout
    assert time.monotonic() - started < 7
    assert isinstance(closed.wait(1), ConnectionClosedByClient)
    for outcome in joined(waiters, 1):
        assert isinstance(outcome, ConnectionClosedByClient), outcome
    wait_no_geamqp_greenlets(before)


def test_write_stall_fails_the_connection_and_releases_a_parked_publisher(proxy):
    """The proxy stops reading from us: once kernel buffers are full, a write that
    makes no progress for socket_timeout seconds ends the connection, and a
    publisher parked by back-pressure is released rather than left hanging."""
    before = geamqp_greenlets()
    conn = geamqp.connect(f"{proxy.url()}?socket_timeout=1", recover=False)
    closed = Closed(conn)
    ch = conn.channel()
    proxy.throttle(0, "to_broker")
    body = b"x" * 16_384

    def publish_until_it_fails() -> Exception:
        for _ in range(100_000):  # 1.6 GB: far more than any socket buffer
            ch.basic_publish("", "nowhere", body)
        raise AssertionError("100,000 publishes into a stalled link all succeeded")

    publisher = gevent.spawn(catching, publish_until_it_fails)
    error = closed.wait(10)
    assert isinstance(error, StreamLostError) and "stalled" in str(error)
    [outcome] = joined([publisher], 5)
    assert isinstance(outcome, AMQPConnectionError), outcome
    wait_no_geamqp_greenlets(before)


# ---------------------------------------------------------------- broker closes (320)


def test_rabbitmqctl_close_connection_reaches_waiters_and_callback(broker, unique_name):
    conn = geamqp.connect(broker.url(), name=unique_name, recover=False)
    closed = Closed(conn)
    consuming, generating = conn.channel(), conn.channel()
    queue = consuming.queue_declare("", exclusive=True).queue
    consuming.basic_consume(queue, lambda *args: None)
    waiters = [
        gevent.spawn(catching, consuming.start_consuming),
        gevent.spawn(catching, first, lambda: generating.consume(queue)),
    ]
    wait_for(lambda: _consumer_ready(generating), 5, "the consume() generator")
    broker_ctl.close_connection(unique_name, "kicked by the test")
    error = closed.wait(10)
    assert isinstance(error, ConnectionClosedByBroker)
    assert error.reply_code == 320 and "kicked by the test" in error.reply_text
    for outcome in joined(waiters, 2):
        assert isinstance(outcome, ConnectionClosedByBroker), outcome
        assert outcome.reply_code == 320
    with pytest.raises(ConnectionWrongStateError) as refused:
        conn.channel()
    assert isinstance(refused.value.__cause__, ConnectionClosedByBroker)
    assert closed.calls == 1


# ---------------------------------------------------------------- the coalescing writer


def test_100_greenlets_publishing_in_one_turn_make_one_sendall(broker, monkeypatch):
    spies = spy_sockets(monkeypatch)
    with geamqp.connect(broker.url(), recover=False) as conn:
        [spy] = spies
        ch = conn.channel()
        ch.confirm_delivery()
        queue = ch.queue_declare("", exclusive=True).queue
        sends_before = len(spy.sends)
        publishers = [gevent.spawn(ch.basic_publish, "", queue, f"m{i}".encode(), wait=False)
                      for i in range(100)]
        gevent.joinall(publishers, raise_error=True)
        assert conn._link.transport.flush(5)
        batches = [count_method(data, *BASIC_PUBLISH) for data in spy.sends[sends_before:]]
        assert sum(batches) == 100
        assert len([n for n in batches if n]) <= 2, batches  # one, or two at a turn's edge
        assert ch.wait_for_confirms(timeout=5)
        assert ch.queue_declare(queue, passive=True).message_count == 100


def test_multi_frame_publishes_never_interleave(broker, monkeypatch):
    spies = spy_sockets(monkeypatch)
    with geamqp.connect(f"{broker.url()}?frame_max=4096", recover=False) as conn:
        assert conn._link.engine.frame_max == 4096
        [spy] = spies
        channels = [conn.channel() for _ in range(4)]
        for ch in channels:
            ch.confirm_delivery()
        queue = channels[0].queue_declare("", exclusive=True).queue
        bodies = [bytes([i]) * (20_000 + i) for i in range(60)]  # 5+ body frames each
        publishers = [gevent.spawn(channels[i % 4].basic_publish, "", queue, body)
                      for i, body in enumerate(bodies)]
        gevent.joinall(publishers, timeout=20, raise_error=True)
        assert all(p.successful() for p in publishers)
        assert conn.is_open  # a 505 UNEXPECTED_FRAME would have closed it

        wire = frames(spy.wire())
        for i, frame in enumerate(wire):
            if frame.method_ids != BASIC_PUBLISH:
                continue
            header = wire[i + 1]
            assert (header.type, header.channel) == (FRAME_HEADER, frame.channel)
            size = int.from_bytes(header.payload[4:12], "big")
            j, received = i + 2, 0
            while received < size:  # every body frame follows, on the same channel
                assert (wire[j].type, wire[j].channel) == (FRAME_BODY, frame.channel)
                received += len(wire[j].payload)
                j += 1

        got = []
        for _ in bodies:
            method, _props, body = channels[0].basic_get(queue, auto_ack=True)
            assert method is not None
            got.append(body)
        assert sorted(got) == sorted(bodies)


def test_concurrent_close_sends_exactly_one_close_frame(broker, monkeypatch):
    before = geamqp_greenlets()
    spies = spy_sockets(monkeypatch)
    conn = geamqp.connect(broker.url(), recover=False)
    closed = Closed(conn)
    for _ in range(3):
        conn.channel()
    started = time.monotonic()
    closers = [gevent.spawn(conn.close) for _ in range(20)]
    gevent.joinall(closers, timeout=10, raise_error=True)
    assert all(c.successful() for c in closers)
    assert time.monotonic() - started < 3
    assert count_method(spies[0].wire(), *CONNECTION_CLOSE) == 1
    assert isinstance(closed.wait(1), ConnectionClosedByClient)
    assert closed.calls == 1
    wait_no_geamqp_greenlets(before)
