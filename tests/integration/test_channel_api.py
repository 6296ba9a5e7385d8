"""The Channel API against the real RabbitMQ: every pika-named method with pika's
parameter names and defaults, channel lifecycle and limits, greenlet safety,
and the connection's close paths.

Absence of a message is checked after a *confirmed* publish (the broker has
routed it when it acks) or from the broker's own counters, never after a sleep.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator

import gevent
import pytest
from channel_helpers import Names, drain_queue, wait_for
from gevent.event import Event
from support import broker as broker_ctl

import geamqp
from geamqp.exceptions import (
    ChannelClosedByBroker,
    ChannelClosedByClient,
    ChannelWrongStateError,
    ConnectionClosedByClient,
    ConnectionWrongStateError,
    NoFreeChannels,
    UnroutableError,
)


@pytest.fixture
def names(broker) -> Iterator[Names]:
    made = Names(broker.url(), "api")
    yield made
    made.cleanup()


@pytest.fixture
def conn(broker) -> Iterator[geamqp.Connection]:
    connection = geamqp.connect(
        broker.url(), name=f"test-api-{uuid.uuid4().hex[:8]}", recover=False
    )
    yield connection
    connection.close()


@pytest.fixture
def ch(conn: geamqp.Connection) -> geamqp.Channel:
    return conn.channel()


@pytest.fixture
def cch(conn: geamqp.Connection) -> geamqp.Channel:
    """A channel in confirm mode: after a publish returns, the broker has routed it."""
    channel = conn.channel()
    channel.confirm_delivery()
    return channel


# ---------------------------------------------------------------- exchanges


def test_exchange_declare_defaults_and_flags(cch, names):
    plain, flagged = names.exchange(), names.exchange()
    assert type(cch.exchange_declare(plain)).__name__ == "DeclareOk"
    cch.exchange_declare(
        flagged,
        exchange_type="topic",
        durable=True,
        auto_delete=True,
        internal=True,
        arguments={"alternate-exchange": "amq.fanout"},
    )
    rows = {
        row["name"]: row
        for row in broker_ctl.rabbitmqctl_json(
            "list_exchanges", "name", "type", "durable", "auto_delete", "internal", "arguments"
        )
    }
    assert rows[plain]["type"] == "direct"  # pika's default exchange_type
    assert (rows[plain]["durable"], rows[plain]["auto_delete"], rows[plain]["internal"]) == (
        False,
        False,
        False,
    )
    assert rows[flagged]["type"] == "topic"
    assert (rows[flagged]["durable"], rows[flagged]["auto_delete"], rows[flagged]["internal"]) == (
        True,
        True,
        True,
    )
    assert "alternate-exchange" in str(rows[flagged]["arguments"])

    cch.exchange_declare(plain, passive=True)  # exists: fine whatever the type given
    cch.exchange_delete(plain)
    cch.exchange_delete(flagged, if_unused=True)
    with pytest.raises(ChannelClosedByBroker) as info:
        cch.exchange_declare(plain, passive=True)
    assert info.value.reply_code == 404


def test_exchange_redeclare_with_other_type_is_refused(conn, ch, names):
    exchange = names.exchange()
    ch.exchange_declare(exchange, "fanout")
    with pytest.raises(ChannelClosedByBroker) as info:
        ch.exchange_declare(exchange, "direct")
    assert info.value.reply_code == 406
    assert conn.is_open


def test_exchange_bind_routes_between_exchanges_and_unbind_stops_it(cch, names):
    source, destination, queue = names.exchange(), names.exchange(), names.queue()
    cch.exchange_declare(source, "topic")
    cch.exchange_declare(destination, "fanout")
    cch.queue_declare(queue)
    cch.queue_bind(queue, destination)
    cch.exchange_bind(destination, source, routing_key="a.*")

    cch.basic_publish(source, "a.b", b"routed", mandatory=True)
    with pytest.raises(UnroutableError):
        cch.basic_publish(source, "b.c", b"not matching", mandatory=True)
    assert drain_queue(cch, queue) == [b"routed"]

    cch.exchange_unbind(destination, source, routing_key="a.*")
    with pytest.raises(UnroutableError):
        cch.basic_publish(source, "a.b", b"after unbind", mandatory=True)
    assert drain_queue(cch, queue) == []


def test_exchange_delete_if_unused_refuses_a_bound_exchange(ch, names):
    exchange, queue = names.exchange(), names.queue()
    ch.exchange_declare(exchange, "fanout")
    ch.queue_declare(queue)
    ch.queue_bind(queue, exchange)
    with pytest.raises(ChannelClosedByBroker) as info:
        ch.exchange_delete(exchange, if_unused=True)
    assert info.value.reply_code == 406


# ---------------------------------------------------------------- queues


def test_queue_declare_returns_declare_ok_with_counts(conn, cch, names):
    queue = names.queue()
    ok = cch.queue_declare(queue)
    assert (ok.queue, ok.message_count, ok.consumer_count) == (queue, 0, 0)
    for body in (b"1", b"2", b"3"):
        cch.basic_publish("", queue, body)
    ok = cch.queue_declare(queue, passive=True)
    assert (ok.queue, ok.message_count, ok.consumer_count) == (queue, 3, 0)

    other = conn.channel()
    other.basic_qos(prefetch_count=1)
    got = Event()
    other.basic_consume(queue, lambda *args: got.set())
    assert got.wait(5)
    ok = cch.queue_declare(queue, passive=True)
    assert (ok.message_count, ok.consumer_count) == (2, 1)  # one unacked, two ready


def test_queue_declare_server_named_and_flags(ch, names):
    ok = ch.queue_declare("", exclusive=True)
    assert ok.queue.startswith("amq.gen-")
    flagged = names.queue()
    ch.queue_declare(
        flagged,
        durable=True,
        auto_delete=True,
        arguments={"x-max-length": 7, "x-message-ttl": 60000},
    )
    rows = {
        row["name"]: row
        for row in broker_ctl.rabbitmqctl_json(
            "list_queues", "name", "durable", "exclusive", "auto_delete", "arguments"
        )
    }
    assert rows[ok.queue]["exclusive"] is True
    assert (rows[flagged]["durable"], rows[flagged]["exclusive"], rows[flagged]["auto_delete"]) == (
        True,
        False,
        True,
    )
    arguments = str(rows[flagged]["arguments"])
    assert "x-max-length" in arguments and "x-message-ttl" in arguments


def test_passive_declare_of_missing_queue_closes_only_the_channel(conn, ch, names):
    closed = []
    ch.add_on_close_callback(lambda channel, exc: closed.append((channel, exc)))
    with pytest.raises(ChannelClosedByBroker) as info:
        ch.queue_declare(names.queue(), passive=True)
    error = info.value
    assert error.reply_code == 404
    assert "NOT_FOUND" in error.reply_text
    assert ch.is_closed and not ch.is_open

    # Later calls: the channel is in the wrong state, and says why it closed.
    with pytest.raises(ChannelWrongStateError) as again:
        ch.queue_declare(names.queue())
    assert again.value.__cause__ is error
    with pytest.raises(ChannelWrongStateError) as publish:
        ch.basic_publish("", "anything", b"x")
    assert publish.value.__cause__ is error
    with pytest.raises(ChannelWrongStateError):
        ch.basic_get("anything")
    wait_for(lambda: closed, 5, "the channel close callback")
    assert closed == [(ch, error)]

    assert conn.is_open
    fresh = conn.channel()
    assert fresh.queue_declare("", exclusive=True).queue.startswith("amq.gen-")
    ch.close()  # closing a closed channel is a no-op


def test_queue_bind_defaults_routing_key_to_queue_name_and_unbind(cch, names):
    exchange, queue = names.exchange(), names.queue()
    cch.exchange_declare(exchange, "direct")
    cch.queue_declare(queue)
    cch.queue_bind(queue, exchange)  # routing_key=None: the queue's name, as in pika
    cch.queue_bind(queue, exchange, routing_key="extra")
    cch.basic_publish(exchange, queue, b"by name", mandatory=True)
    cch.basic_publish(exchange, "extra", b"by key", mandatory=True)
    assert drain_queue(cch, queue) == [b"by name", b"by key"]

    cch.queue_unbind(queue, exchange, routing_key="extra")
    with pytest.raises(UnroutableError):
        cch.basic_publish(exchange, "extra", b"x", mandatory=True)
    cch.queue_unbind(queue, exchange)
    with pytest.raises(UnroutableError):
        cch.basic_publish(exchange, queue, b"x", mandatory=True)


def test_queue_purge_and_delete(conn, cch, names):
    queue = names.queue()
    cch.queue_declare(queue)
    for i in range(3):
        cch.basic_publish("", queue, str(i))
    assert cch.queue_purge(queue).message_count == 3
    assert cch.basic_get(queue) == (None, None, None)

    cch.basic_publish("", queue, b"left")
    with pytest.raises(ChannelClosedByBroker) as info:
        cch.queue_delete(queue, if_empty=True)
    assert info.value.reply_code == 406
    ch = conn.channel()
    consumer = conn.channel()
    consumer.basic_consume(queue, lambda *args: None, auto_ack=False)
    with pytest.raises(ChannelClosedByBroker) as info:
        ch.queue_delete(queue, if_unused=True)
    assert info.value.reply_code == 406
    consumer.close()
    ch = conn.channel()
    assert ch.queue_delete(queue).message_count == 1
    with pytest.raises(ChannelClosedByBroker):
        ch.queue_declare(queue, passive=True)


# ---------------------------------------------------------------- basic


def test_basic_get_empty_and_with_properties(cch, names):
    queue = names.queue()
    cch.queue_declare(queue)
    assert cch.basic_get(queue) == (None, None, None)
    properties = geamqp.BasicProperties(
        content_type="text/plain", delivery_mode=2, headers={"k": "v", "n": 7}, message_id="m-1"
    )
    cch.basic_publish("", queue, b"one", properties=properties)
    cch.basic_publish("", queue, b"two")
    method, props, body = cch.basic_get(queue)
    assert body == b"one"
    assert (method.redelivered, method.exchange, method.routing_key, method.message_count) == (
        False,
        "",
        queue,
        1,
    )
    assert (props.content_type, props.delivery_mode, props.message_id) == ("text/plain", 2, "m-1")
    assert props.headers == {"k": "v", "n": 7}
    cch.basic_ack(method.delivery_tag)
    method, _, body = cch.basic_get(queue, auto_ack=True)
    assert body == b"two" and method.message_count == 0
    assert cch.basic_get(queue) == (None, None, None)


def test_basic_qos_prefetch_bounds_unacked_deliveries(conn, cch, names):
    queue = names.queue()
    cch.queue_declare(queue)
    for i in range(10):
        cch.basic_publish("", queue, str(i))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=3)
    received = []
    ch.basic_consume(queue, lambda channel, method, props, body: received.append(method))
    wait_for(lambda: len(received) >= 3, 5, "three deliveries")
    # The broker's own count: had it sent a fourth, only six would be ready.
    ok = cch.queue_declare(queue, passive=True)
    assert ok.message_count == 7
    assert len(received) == 3
    ch.basic_ack(received[0].delivery_tag)
    wait_for(lambda: len(received) >= 4, 5, "a fourth delivery after one ack")
    assert cch.queue_declare(queue, passive=True).message_count == 6
    assert len(received) == 4


def test_basic_nack_and_reject_requeue_redelivers(cch, names):
    queue = names.queue()
    cch.queue_declare(queue)
    cch.basic_publish("", queue, b"m")
    method, _, _ = cch.basic_get(queue)
    assert not method.redelivered
    cch.basic_nack(method.delivery_tag)  # requeue=True by default, as in pika
    method, _, body = cch.basic_get(queue)
    assert body == b"m" and method.redelivered
    cch.basic_reject(method.delivery_tag)  # requeue=True by default
    method, _, body = cch.basic_get(queue)
    assert body == b"m" and method.redelivered
    cch.basic_reject(method.delivery_tag, requeue=False)
    assert cch.basic_get(queue) == (None, None, None)


def test_basic_nack_multiple_and_ack_multiple(conn, cch, names):
    queue = names.queue()
    cch.queue_declare(queue)
    for i in range(6):
        cch.basic_publish("", queue, str(i))
    tags = [cch.basic_get(queue)[0].delivery_tag for _ in range(3)]
    cch.basic_nack(tags[-1], multiple=True, requeue=False)  # drops 0..2
    tags = [cch.basic_get(queue)[0].delivery_tag for _ in range(3)]
    cch.basic_ack(tags[-1], multiple=True)  # acks 3..5
    cch.close()  # anything unacked would be requeued now
    ch = conn.channel()
    assert ch.basic_get(queue) == (None, None, None)


def test_basic_ack_removes_message_for_good(conn, cch, names):
    queue = names.queue()
    cch.queue_declare(queue)
    cch.basic_publish("", queue, b"acked")
    cch.basic_publish("", queue, b"unacked")
    first, _, _ = cch.basic_get(queue)
    cch.basic_get(queue)
    cch.basic_ack(first.delivery_tag)
    cch.close()
    ch = conn.channel()
    method, _, body = ch.basic_get(queue, auto_ack=True)
    assert body == b"unacked" and method.redelivered
    assert ch.basic_get(queue) == (None, None, None)


def test_basic_recover_requeue_redelivers_unacked(cch, names):
    queue = names.queue()
    cch.queue_declare(queue)
    cch.basic_publish("", queue, b"a")
    cch.basic_publish("", queue, b"b")
    assert cch.basic_get(queue)[2] == b"a"
    assert cch.basic_get(queue)[2] == b"b"
    assert cch.basic_get(queue) == (None, None, None)
    assert type(cch.basic_recover(requeue=True)).__name__ == "RecoverOk"
    again = [cch.basic_get(queue, auto_ack=True) for _ in range(2)]
    assert sorted(body for _, _, body in again) == [b"a", b"b"]
    assert all(method.redelivered for method, _, _ in again)


def test_tx_rollback_discards_and_commit_delivers(conn, ch, names):
    queue = names.queue()
    ch.queue_declare(queue)
    assert type(ch.tx_select()).__name__ == "SelectOk"
    ch.basic_publish("", queue, b"rolled back")
    ch.tx_rollback()
    ch.basic_publish("", queue, b"committed")
    observer = conn.channel()
    assert observer.queue_declare(queue, passive=True).message_count == 0
    ch.tx_commit()
    assert drain_queue(observer, queue) == [b"committed"]


# ---------------------------------------------------------------- greenlet safety


def test_200_greenlets_share_one_channel(conn, names):
    ch = conn.channel()
    ch.confirm_delivery()
    prefix = names.queue()
    errors = []

    def worker(i: int) -> None:
        queue = f"{prefix}-{i}"
        names.queues.append(queue)
        try:
            ok = ch.queue_declare(queue, auto_delete=False)
            assert ok.queue == queue
            assert ok.message_count == 0
            ch.basic_publish("", queue, f"id-{i}")
            gevent.sleep(0)
            method, _, body = ch.basic_get(queue)
            assert body == f"id-{i}".encode()
            assert method.routing_key == queue
            ch.basic_ack(method.delivery_tag)
            assert ch.basic_get(queue) == (None, None, None)
            assert ch.queue_delete(queue).message_count == 0
        except Exception as exc:
            errors.append((i, exc))

    workers = [gevent.spawn(worker, i) for i in range(200)]
    gevent.joinall(workers, timeout=30, raise_error=True)
    assert all(w.dead for w in workers)
    assert errors == []
    assert ch.is_open and not ch._requests and not ch._confirms


# ---------------------------------------------------------------- channels


def test_more_than_channel_max_channels_raises_no_free_channels(broker):
    params = geamqp.ConnectionParameters(broker.host, broker.port, channel_max=16)
    with geamqp.connect(params, recover=False) as conn:
        channels = [conn.channel() for _ in range(16)]
        assert sorted(c.channel_number for c in channels) == list(range(1, 17))
        with pytest.raises(NoFreeChannels):
            conn.channel()
        assert conn.is_open
        channels[4].close()
        again = conn.channel()
        assert again.channel_number == 5 and again.is_open
        with pytest.raises(NoFreeChannels):
            conn.channel()


def test_10k_channel_open_close_cycles_leave_no_records(conn):
    started = time.monotonic()
    numbers = set()
    for _ in range(10_000):
        channel = conn.channel()
        numbers.add(channel.channel_number)
        channel.close()
        assert channel.is_closed
    elapsed = time.monotonic() - started
    assert numbers == {1}  # the number is free again once close-ok arrived
    assert conn._channels == {}
    assert conn._link.engine.open_channels == []
    assert elapsed < 30, f"10,000 cycles took {elapsed:.1f} s"
    assert conn.channel().queue_declare("", exclusive=True).queue


def test_channel_number_is_reused_only_after_close_ok(proxy):
    conn = geamqp.connect(proxy.url(), recover=False)
    try:
        first = conn.channel()
        assert first.channel_number == 1
        proxy.throttle(0, "to_client")  # hold the broker's close-ok
        closing = gevent.spawn(first.close)
        opening = gevent.spawn(conn.channel)
        wait_for(lambda: 2 in conn._channels and first.is_closing, 5,
                 "the close sent and the new channel requested")
        assert sorted(conn._channels) == [1, 2]  # number 1 still awaits its close-ok
        proxy.throttle(None)
        gevent.joinall([closing, opening], timeout=10, raise_error=True)
        assert opening.value.channel_number == 2 and first.is_closed
        assert conn.channel().channel_number == 1  # free again after close-ok
    finally:
        conn.close()


def test_channel_close_callback_and_state(conn):
    ch = conn.channel()
    closed = []
    ch.add_on_close_callback(lambda channel, exc: closed.append((channel, exc)))
    assert ch.is_open and ch.channel_number == 1
    ch.close()
    assert ch.is_closed and not ch.is_open
    wait_for(lambda: closed, 5, "the close callback")
    [(channel, exc)] = closed
    assert channel is ch and isinstance(exc, ChannelClosedByClient)
    with pytest.raises(ChannelWrongStateError) as later:
        ch.queue_declare("")
    assert later.value.__cause__ is exc


def test_channel_close_from_many_greenlets(conn):
    ch = conn.channel()
    closers = [gevent.spawn(ch.close) for _ in range(5)]
    gevent.joinall(closers, timeout=10, raise_error=True)
    assert all(g.successful() for g in closers)
    assert ch.is_closed and conn._channels == {}


# ---------------------------------------------------------------- connection


def test_close_from_several_greenlets_completes_everywhere(broker):
    conn = geamqp.connect(broker.url(), recover=False)
    channel = conn.channel()
    calls = []
    conn.add_on_close_callback(lambda c, exc: calls.append(exc))
    closers = [gevent.spawn(conn.close) for _ in range(8)]
    gevent.joinall(closers, timeout=10, raise_error=True)
    assert all(g.successful() for g in closers)
    assert conn.is_closed and not conn.is_open
    assert channel.is_closed
    wait_for(lambda: calls, 5, "the close callback")
    assert len(calls) == 1
    conn.close()  # and once more, afterwards


def test_with_block_closes_the_connection(broker):
    with geamqp.connect(broker.url(), recover=False) as conn:
        ch = conn.channel()
        assert conn.is_open
    assert conn.is_closed and ch.is_closed


def test_with_block_closes_on_error(broker):
    with pytest.raises(KeyError), geamqp.connect(broker.url(), recover=False) as conn:
        raise KeyError("boom")
    assert conn.is_closed


def test_on_close_callback_gets_connection_and_client_close(broker):
    conn = geamqp.connect(broker.url(), recover=False)
    got = []
    done = Event()

    def on_close(connection, exc):
        got.append((connection, exc))
        done.set()

    conn.add_on_close_callback(on_close)
    conn.close()
    assert done.wait(5)
    [(connection, exc)] = got
    assert connection is conn
    assert isinstance(exc, ConnectionClosedByClient)
    assert (exc.reply_code, exc.reply_text) == (200, "Normal shutdown")


def test_update_secret_with_the_same_password(conn, ch):
    conn.update_secret("guest", "rotation test")
    assert conn.is_open
    assert ch.queue_declare("", exclusive=True).queue.startswith("amq.gen-")
    assert conn.server_properties["product"] in (b"RabbitMQ", "RabbitMQ")


# ---------------------------------------------------------------- pipelining and closes


def test_pipelined_calls_behind_a_failing_one_get_its_error(conn, cch, names):
    queue = names.queue()
    cch.queue_declare(queue)
    cch.basic_publish("", queue, b"a")
    cch.basic_publish("", queue, b"b")
    missing = names.queue()
    calls = [lambda: cch.basic_get(queue, auto_ack=True),
             lambda: cch.basic_get(queue, auto_ack=True),
             lambda: cch.queue_declare(missing, passive=True),
             lambda: cch.basic_get(queue, auto_ack=True),
             lambda: cch.queue_declare("", exclusive=True)]

    def run(call):
        try:
            return call()
        except ChannelClosedByBroker as exc:
            return exc

    # spawned in order, each sends its request before the next runs: one pipeline
    workers = [gevent.spawn(run, call) for call in calls]
    gevent.joinall(workers, timeout=10, raise_error=True)
    results = [w.value for w in workers]
    assert [r[2] for r in results[:2]] == [b"a", b"b"]
    error = results[2]
    assert isinstance(error, ChannelClosedByBroker) and error.reply_code == 404
    assert results[3] is error and results[4] is error
    assert cch.is_closed and conn.is_open


def test_close_with_requests_in_flight_releases_every_waiter(conn, names):
    ch = conn.channel()
    queue = names.queue()
    ch.queue_declare(queue)

    def get():
        try:
            return ch.basic_get(queue)
        except ChannelClosedByClient as exc:
            return exc

    getters = [gevent.spawn(get) for _ in range(20)]
    gevent.sleep(0)  # all twenty requests are queued
    ch.close()
    gevent.joinall(getters, timeout=10, raise_error=True)
    for getter in getters:
        assert getter.value == (None, None, None) or isinstance(getter.value,
                                                                ChannelClosedByClient)
    assert ch.is_closed and not ch._requests and conn._channels == {}


def test_close_with_confirms_outstanding_resolves_each(conn, names):
    ch = conn.channel()
    ch.confirm_delivery()
    queue = names.queue()
    ch.queue_declare(queue)
    confirmations = [ch.basic_publish("", queue, str(i), wait=False) for i in range(200)]
    ch.close()
    outcomes = []
    for confirmation in confirmations:
        assert confirmation.done()
        try:
            outcomes.append(confirmation.wait(0))
        except ChannelClosedByClient:
            outcomes.append("closed")
    assert set(outcomes) <= {True, "closed"}
    acked = outcomes.count(True)
    assert conn.channel().queue_declare(queue, passive=True).message_count >= acked


def test_connection_close_fails_outstanding_confirms_and_waiters(broker, names):
    conn = geamqp.connect(broker.url(), recover=False)
    ch = conn.channel()
    ch.confirm_delivery()
    queue = names.queue()
    ch.queue_declare(queue)
    confirmations = [ch.basic_publish("", queue, b"x", wait=False) for _ in range(100)]
    conn.close()
    for confirmation in confirmations:
        assert confirmation.done()
        with contextlib.suppress(ConnectionClosedByClient):
            assert confirmation.wait(0) is True
    with pytest.raises(ChannelWrongStateError) as later:
        ch.basic_publish("", queue, b"after close")
    assert isinstance(later.value.__cause__, ConnectionClosedByClient)
    with pytest.raises(ConnectionWrongStateError) as refused:
        conn.channel()
    assert isinstance(refused.value.__cause__, ConnectionClosedByClient)


def test_large_message_spanning_many_frames(cch, names):
    queue = names.queue()
    cch.queue_declare(queue)
    body = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4: many 128 KiB frames
    cch.basic_publish("", queue, body)
    cch.basic_publish("", queue, b"")  # and an empty body
    assert cch.basic_get(queue, auto_ack=True)[2] == body
    assert cch.basic_get(queue, auto_ack=True)[2] == b""
