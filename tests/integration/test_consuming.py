"""Consuming against the real RabbitMQ: basic_consume callbacks and where they
run, start/stop_consuming, the consume() generator, broker-side cancels
(RELIABILITY 25), failing callbacks (RELIABILITY 32), concurrency.

Tests wait on events set by the callbacks, or on the broker's counters; the
only sleeps are inside callbacks, as the cooperative blocking under test.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import gevent
import pytest
from channel_helpers import Names, wait_for
from gevent.event import AsyncResult, Event
from support import broker as broker_ctl

import geamqp
from geamqp.consumer import _Runner
from geamqp.exceptions import (
    ChannelClosedByBroker,
    ConnectionClosedByBroker,
    ConnectionClosedByClient,
    ConsumerCancelled,
    DuplicateConsumerTag,
)


@pytest.fixture
def names(broker) -> Iterator[Names]:
    made = Names(broker.url(), "consume")
    yield made
    made.cleanup()


@pytest.fixture
def conn_name() -> str:
    return f"test-consume-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def conn(broker, conn_name) -> Iterator[geamqp.Connection]:
    connection = geamqp.connect(broker.url(), name=conn_name, recover=False)
    yield connection
    connection.close()


@pytest.fixture
def ch(conn: geamqp.Connection) -> geamqp.Channel:
    return conn.channel()


@pytest.fixture
def pub(conn: geamqp.Connection) -> geamqp.Channel:
    """A separate confirm-mode channel for publishing and broker-side checks."""
    channel = conn.channel()
    channel.confirm_delivery()
    return channel


def declare(pub: geamqp.Channel, names: Names, messages: int = 0) -> str:
    queue = names.queue()
    pub.queue_declare(queue)
    for i in range(messages):
        pub.basic_publish("", queue, str(i))
    return queue


def spawn_catching(fn) -> gevent.Greenlet:
    """Run `fn` in a greenlet whose value is what it raised (None if it returned)."""

    def run():
        try:
            fn()
        except Exception as exc:
            return exc
        return None

    return gevent.spawn(run)


def consumers_on(pub: geamqp.Channel, queue: str) -> int:
    return pub.queue_declare(queue, passive=True).consumer_count


class Collector:
    """An on_message callback that records deliveries and signals after `expected`."""

    def __init__(self, expected: int, ack: bool = False) -> None:
        self.expected = expected
        self.ack = ack
        self.calls: list[tuple] = []
        self.greenlets: set = set()
        self.done = Event()

    def __call__(self, channel, method, properties, body) -> None:
        self.calls.append((channel, method, properties, body))
        self.greenlets.add(gevent.getcurrent())
        if self.ack:
            channel.basic_ack(method.delivery_tag)
        if len(self.calls) >= self.expected:
            self.done.set()

    @property
    def bodies(self) -> list[bytes]:
        return [call[3] for call in self.calls]


# ---------------------------------------------------------------- callbacks


def test_callbacks_run_in_the_dispatcher_in_delivery_order(conn, ch, pub, names):
    queue = declare(pub, names, messages=20)  # ready before the consumer starts
    collect = Collector(50)
    tag = ch.basic_consume(queue, collect, auto_ack=True)
    for i in range(20, 50):  # and more while it runs
        pub.basic_publish("", queue, str(i))
    assert collect.done.wait(10)  # no start_consuming: deliveries flow on their own
    assert collect.bodies == [str(i).encode() for i in range(50)]
    channel, method, properties, _ = collect.calls[0]
    assert channel is ch
    assert method.consumer_tag == tag and method.routing_key == queue
    assert isinstance(properties, geamqp.BasicProperties)
    assert [c[1].delivery_tag for c in collect.calls] == list(range(1, 51))
    # in the channel's dispatcher: one of the shared runner greenlets (an idle
    # dispatcher keeps none), never the reader's or the caller's
    assert all(isinstance(where, _Runner) for where in collect.greenlets)
    assert ch._dispatcher._greenlet is None  # idle again
    [where, *_] = collect.greenlets
    assert where is not gevent.getcurrent()
    assert where is not conn._link.transport._reader
    assert tag in ch.consumer_tags


def test_manual_ack_from_callback_and_auto_ack(conn, ch, pub, names):
    manual, auto = declare(pub, names, 5), declare(pub, names, 5)
    acked = Collector(5, ack=True)
    unacked = Collector(5)
    ch.basic_consume(manual, acked)  # auto_ack=False by default, as in pika
    other = conn.channel()
    other.basic_consume(auto, unacked, auto_ack=True)
    assert acked.done.wait(5) and unacked.done.wait(5)
    ch.close()
    other.close()
    assert pub.queue_declare(manual, passive=True).message_count == 0
    assert pub.queue_declare(auto, passive=True).message_count == 0


def test_unacked_deliveries_return_when_the_channel_closes(ch, pub, names):
    queue = declare(pub, names, 3)
    collect = Collector(3)
    ch.basic_consume(queue, collect)
    assert collect.done.wait(5)
    ch.close()
    method, _, body = pub.basic_get(queue, auto_ack=True)
    assert body == b"0" and method.redelivered


def test_callback_that_raises_is_logged_and_consuming_goes_on(conn, ch, pub, names, caplog):
    queue = declare(pub, names)
    collect = Collector(3)

    def on_message(channel, method, properties, body):
        collect(channel, method, properties, body)
        if body == b"bad":
            raise ValueError("callback failure under test")
        channel.basic_ack(method.delivery_tag)

    caplog.set_level(logging.ERROR, logger="geamqp")
    ch.basic_consume(queue, on_message)
    for body in (b"good", b"bad", b"after"):
        pub.basic_publish("", queue, body)
    assert collect.done.wait(5)
    assert collect.bodies == [b"good", b"bad", b"after"]
    failures = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ValueError]
    assert len(failures) == 1
    assert "callback failure under test" in caplog.text
    assert conn.is_open and ch.is_open
    collect.expected, collect.done = 4, Event()
    pub.basic_publish("", queue, b"later")
    assert collect.done.wait(5)
    assert collect.bodies[-1] == b"later"


# ---------------------------------------------------------------- start / stop


def test_start_consuming_blocks_only_its_caller_until_stop_from_a_callback(ch, pub, names):
    queue = declare(pub, names)
    seen = []

    def on_message(channel, method, properties, body):
        seen.append(body)
        channel.basic_ack(method.delivery_tag)
        if body == b"stop":
            channel.stop_consuming()

    tag = ch.basic_consume(queue, on_message)
    consuming = gevent.spawn(ch.start_consuming)
    gevent.sleep(0)  # let it start blocking
    # this greenlet keeps working, on the same channel too
    assert ch.queue_declare(queue, passive=True).consumer_count == 1
    pub.basic_publish("", queue, b"one")
    assert not consuming.dead
    pub.basic_publish("", queue, b"stop")
    consuming.join(5)
    assert consuming.successful()
    assert seen == [b"one", b"stop"]
    assert tag not in ch.consumer_tags
    assert consumers_on(pub, queue) == 0
    assert ch.is_open


def test_stop_consuming_from_another_greenlet(ch, pub, names):
    first, second = declare(pub, names), declare(pub, names)
    ch.basic_consume(first, lambda *a: None)
    ch.basic_consume(second, lambda *a: None)
    consuming = gevent.spawn(ch.start_consuming)
    gevent.sleep(0)
    stopper = gevent.spawn(ch.stop_consuming)
    consuming.join(5)
    stopper.join(5)
    assert consuming.successful() and stopper.successful()
    assert ch.consumer_tags == []
    assert consumers_on(pub, first) == consumers_on(pub, second) == 0


def test_start_consuming_returns_when_every_consumer_is_cancelled(ch, pub, names):
    first, second = declare(pub, names), declare(pub, names)
    tag1 = ch.basic_consume(first, lambda *a: None)
    tag2 = ch.basic_consume(second, lambda *a: None)
    consuming = gevent.spawn(ch.start_consuming)
    gevent.sleep(0)
    ch.basic_cancel(tag1)
    assert not consuming.dead  # one consumer left
    ch.basic_cancel(tag2)
    consuming.join(5)
    assert consuming.successful()


def test_start_consuming_without_consumers_returns_at_once(ch):
    with gevent.Timeout(2):
        ch.start_consuming()


def test_start_consuming_raises_when_the_broker_closes_the_channel(conn, ch, pub, names):
    queue = declare(pub, names)
    ch.basic_consume(queue, lambda *a: None)
    consuming = spawn_catching(ch.start_consuming)
    gevent.sleep(0)
    with pytest.raises(ChannelClosedByBroker):
        ch.queue_declare(names.queue(), passive=True)  # 404 closes the channel
    consuming.join(5)
    assert isinstance(consuming.value, ChannelClosedByBroker)
    assert consuming.value.reply_code == 404
    assert conn.is_open


def test_start_consuming_raises_when_the_connection_is_closed(conn, ch, pub, names):
    ch.basic_consume(declare(pub, names), lambda *a: None)
    consuming = spawn_catching(ch.start_consuming)
    gevent.sleep(0)
    conn.close()
    consuming.join(5)
    assert isinstance(consuming.value, ConnectionClosedByClient)


def test_start_consuming_raises_when_the_broker_closes_the_connection(
        conn, conn_name, ch, pub, names):
    ch.basic_consume(declare(pub, names), lambda *a: None)
    consuming = spawn_catching(ch.start_consuming)
    gevent.sleep(0)
    broker_ctl.close_connection(conn_name, "closed by test_consuming")
    consuming.join(10)
    assert isinstance(consuming.value, ConnectionClosedByBroker)
    assert consuming.value.reply_code == 320
    assert conn.is_closed


# ---------------------------------------------------------------- consume()


def test_consume_generator_inactivity_timeout_and_close_cancels(ch, pub, names):
    queue = declare(pub, names, 2)
    stream = ch.consume(queue, inactivity_timeout=0.2)
    got = [next(stream) for _ in range(2)]
    assert [body for _, _, body in got] == [b"0", b"1"]
    for method, _, _ in got:
        ch.basic_ack(method.delivery_tag)
    assert next(stream) == (None, None, None)  # nothing for 0.2 s
    pub.basic_publish("", queue, b"2")
    method, properties, body = next(stream)
    assert body == b"2" and isinstance(properties, geamqp.BasicProperties)
    ch.basic_ack(method.delivery_tag)
    assert consumers_on(pub, queue) == 1
    stream.close()
    assert ch.consumer_tags == []
    assert consumers_on(pub, queue) == 0
    pub.basic_publish("", queue, b"kept")
    assert pub.queue_declare(queue, passive=True).message_count == 1


def test_consume_generator_raises_when_the_broker_cancels(broker, ch, pub, names):
    queue = declare(pub, names)
    stream = ch.consume(queue, auto_ack=True, inactivity_timeout=5)
    pub.basic_publish("", queue, b"before")
    assert next(stream)[2] == b"before"
    with geamqp.connect(broker.url(), recover=False) as other:
        other.channel().queue_delete(queue)
    with pytest.raises(ConsumerCancelled):
        next(stream)
    assert ch.consumer_tags == [] and ch.is_open


# ---------------------------------------------------------------- cancels


def test_broker_cancel_when_the_queue_is_deleted_reaches_the_callback(broker, ch, pub, names):
    doomed, survivor = declare(pub, names), declare(pub, names)
    cancelled = AsyncResult()
    ch.add_on_cancel_callback(cancelled.set)
    doomed_tag = ch.basic_consume(doomed, lambda *a: None)
    collect = Collector(1)
    ch.basic_consume(survivor, collect, auto_ack=True)
    consuming = gevent.spawn(ch.start_consuming)
    gevent.sleep(0)
    with geamqp.connect(broker.url(), recover=False) as other:
        other.channel().queue_delete(doomed)
    method = cancelled.get(timeout=5)
    assert method.consumer_tag == doomed_tag
    assert doomed_tag not in ch.consumer_tags
    assert ch.is_open and not consuming.dead  # the other consumer keeps it going
    pub.basic_publish("", survivor, b"still here")
    assert collect.done.wait(5)
    ch.stop_consuming()
    consuming.join(5)
    assert consuming.successful()


def test_broker_cancel_of_the_last_consumer_ends_start_consuming(broker, ch, pub, names):
    queue = declare(pub, names)
    ch.basic_consume(queue, lambda *a: None)
    consuming = gevent.spawn(ch.start_consuming)
    gevent.sleep(0)
    with geamqp.connect(broker.url(), recover=False) as other:
        other.channel().queue_delete(queue)
    consuming.join(5)
    assert consuming.successful()
    assert ch.consumer_tags == []


def test_duplicate_consumer_tag_is_refused(ch, pub, names):
    queue = declare(pub, names)
    collect = Collector(1)
    assert ch.basic_consume(queue, collect, consumer_tag="mine", auto_ack=True) == "mine"
    with pytest.raises(DuplicateConsumerTag):
        ch.basic_consume(queue, lambda *a: None, consumer_tag="mine")
    assert ch.is_open and ch.consumer_tags == ["mine"]
    pub.basic_publish("", queue, b"x")
    assert collect.done.wait(5)


def test_basic_cancel_stops_deliveries(ch, pub, names):
    queue = declare(pub, names)
    collect = Collector(1)
    tag = ch.basic_consume(queue, collect, auto_ack=True)
    pub.basic_publish("", queue, b"delivered")
    assert collect.done.wait(5)
    ch.basic_cancel(tag)
    assert tag not in ch.consumer_tags
    assert consumers_on(pub, queue) == 0
    pub.basic_publish("", queue, b"stays")
    assert pub.queue_declare(queue, passive=True).message_count == 1
    assert collect.bodies == [b"delivered"]
    ch.basic_cancel(tag)  # cancelling again is harmless
    ch.basic_cancel("never-existed")


def test_exclusive_consumer_refuses_a_second_and_arguments_reach_the_broker(
        conn, ch, pub, names):
    queue = declare(pub, names)
    tag = ch.basic_consume(queue, lambda *a: None, exclusive=True,
                           arguments={"x-priority": 7})
    rows = broker_ctl.rabbitmqctl_json("list_consumers", "queue_name", "consumer_tag",
                                       "ack_required", "arguments")
    [row] = [r for r in rows if r["consumer_tag"] == tag]
    assert row["queue_name"] == queue
    assert row["ack_required"] is True  # auto_ack=False
    assert "x-priority" in str(row["arguments"]) and "7" in str(row["arguments"])
    other = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as info:
        other.basic_consume(queue, lambda *a: None)
    assert info.value.reply_code == 403
    assert other.consumer_tags == []


# ---------------------------------------------------------------- concurrency


def _overlap_recorder(total: int):
    state = {"active": 0, "max": 0, "bodies": []}
    done = Event()

    def on_message(channel, method, properties, body):
        state["active"] += 1
        state["max"] = max(state["max"], state["active"])
        gevent.sleep(0.02)  # cooperative blocking inside the callback
        state["bodies"].append(body)
        state["active"] -= 1
        channel.basic_ack(method.delivery_tag)
        if len(state["bodies"]) == total:
            done.set()

    return on_message, state, done


def test_concurrency_runs_up_to_n_callbacks_at_once(ch, pub, names):
    queue = declare(pub, names, 24)
    on_message, state, done = _overlap_recorder(24)
    ch.basic_consume(queue, on_message, concurrency=4)
    assert done.wait(10)
    assert state["max"] == 4
    assert sorted(state["bodies"]) == sorted(str(i).encode() for i in range(24))


def test_default_concurrency_runs_one_at_a_time_in_order(ch, pub, names):
    queue = declare(pub, names, 12)
    on_message, state, done = _overlap_recorder(12)
    ch.basic_consume(queue, on_message)
    assert done.wait(10)
    assert state["max"] == 1
    assert state["bodies"] == [str(i).encode() for i in range(12)]


def test_concurrency_must_be_positive(ch, pub, names):
    with pytest.raises(ValueError):
        ch.basic_consume(declare(pub, names), lambda *a: None, concurrency=0)
    assert ch.consumer_tags == []


def test_blocking_callback_does_not_stall_other_channels(conn, ch, pub, names):
    slow_queue, fast_queue = declare(pub, names), declare(pub, names)
    fast_done = Event()
    results = AsyncResult()
    fast_seen = []

    def slow(channel, method, properties, body):
        # blocks cooperatively until the other channel's consumer ran
        assert fast_done.wait(5), "the other channel stalled"
        channel.confirm_delivery()
        channel.basic_publish("", fast_queue, b"from slow callback")  # confirmed
        declared = channel.queue_declare(fast_queue, passive=True)
        channel.basic_ack(method.delivery_tag)
        results.set(declared)

    def fast(channel, method, properties, body):
        fast_seen.append(body)
        fast_done.set()

    ch.basic_consume(slow_queue, slow)
    other = conn.channel()
    other.basic_consume(fast_queue, fast, auto_ack=True)
    pub.basic_publish("", slow_queue, b"slow")
    pub.basic_publish("", fast_queue, b"fast")
    declared = results.get(timeout=10)
    assert declared.queue == fast_queue and declared.consumer_count == 1
    wait_for(lambda: len(fast_seen) == 2, 5, "the publish from inside the callback")
    assert fast_seen == [b"fast", b"from slow callback"]
    assert ch.is_open and other.is_open


def test_cancel_lets_in_flight_concurrent_callbacks_finish(ch, pub, names):
    """basic_cancel: deliveries already received are still dispatched, and callbacks
    running in the consumer's pool are not killed half-way."""
    queue = declare(pub, names, 8)
    started, finished = [], []
    four_started, all_finished = Event(), Event()

    def on_message(channel, method, properties, body):
        started.append(body)
        if len(started) == 4:
            four_started.set()
        gevent.sleep(0.05)
        channel.basic_ack(method.delivery_tag)
        finished.append(body)
        if len(finished) == 8:
            all_finished.set()

    tag = ch.basic_consume(queue, on_message, concurrency=4)
    assert four_started.wait(5)
    ch.basic_cancel(tag)
    assert all_finished.wait(5), f"only {len(finished)} of 8 callbacks finished"
    assert sorted(finished) == sorted(str(i).encode() for i in range(8))
    assert ch.is_open
    assert pub.queue_declare(queue, passive=True).message_count == 0


# ---------------------------------------------------------------- failures around consumers


def test_basic_consume_on_a_missing_queue_leaves_no_consumer(conn, ch, names):
    with pytest.raises(ChannelClosedByBroker) as info:
        ch.basic_consume(names.queue(), lambda *a: None)
    assert info.value.reply_code == 404
    assert ch.consumer_tags == [] and conn.is_open


def test_callback_may_close_its_own_channel(conn, ch, pub, names):
    queue = declare(pub, names, 3)
    closed = AsyncResult()
    seen = []

    def on_message(channel, method, properties, body):
        seen.append(body)
        channel.close()  # blocks this callback until close-ok; must not deadlock
        closed.set(channel.is_closed)

    ch.basic_consume(queue, on_message)
    assert closed.get(timeout=5) is True
    assert seen == [b"0"]  # what was delivered behind it is not dispatched
    assert conn.is_open
    wait_for(lambda: pub.queue_declare(queue, passive=True).message_count == 3, 5,
             "the unacked deliveries to be requeued")


def test_consume_generator_raises_when_the_connection_closes(conn, ch, pub, names):
    queue = declare(pub, names)
    stream = ch.consume(queue, inactivity_timeout=5)
    pub.basic_publish("", queue, b"m")
    assert next(stream)[2] == b"m"
    gevent.spawn(conn.close)
    with pytest.raises(ConnectionClosedByClient):
        next(stream)


def test_large_message_to_a_consumer(ch, pub, names):
    queue = declare(pub, names)
    body = b"\x00\xff" * (600 * 1024)  # 1.2 MB, ten frames of 128 KiB
    got = AsyncResult()
    ch.basic_consume(queue, lambda c, m, p, b: got.set(b), auto_ack=True)
    pub.basic_publish("", queue, body)
    assert got.get(timeout=10) == body
