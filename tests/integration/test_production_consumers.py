"""Consumers that keep consuming (issue 12) against the real broker: channel recovery
after a refused consume, broker cancels, refreshed credentials, streams resuming at
the right offset, quorum delivery counts and dead-lettering.

Not broker-disruptive: every test uses its own queues, user and connection names
(the consumer_timeout ones, which change a broker-wide setting, are in
test_consumer_timeout.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from channel_helpers import wait_for
from gevent.event import Event
from support import broker as broker_ctl
from support.broker import BrokerEndpoint

import geamqp
from geamqp import ConnectionParameters, PlainCredentials

pytestmark = pytest.mark.timeout(60)

FAST = {"recovery_delay_min": 0.05, "recovery_delay_max": 0.5, "recovery_max_attempts": 40}


@pytest.fixture
def admin(broker: BrokerEndpoint, unique_name: str) -> Iterator[Any]:
    """A channel on its own connection, for declaring and inspecting."""
    conn = geamqp.connect(broker.url(), name=f"{unique_name}-admin", recover=False)
    try:
        yield conn.channel()
    finally:
        conn.close()


def _delete_queues(admin: Any, *queues: str) -> None:
    for queue in queues:
        with contextlib.suppress(geamqp.AMQPError):
            if admin.is_closed:
                admin = admin.connection.channel()
            admin.queue_delete(queue)


# ---------------------------------------------------------------- channel recovery (point 1)


def test_a_refused_consume_keeps_the_channels_other_consumers(
        broker: BrokerEndpoint, unique_name: str, admin: Any) -> None:
    conn = geamqp.connect(broker.url(), name=unique_name, **FAST)
    try:
        ch = conn.channel()
        # auto-delete: it goes with the channel's close; channel recovery declares it again
        exchange = f"{unique_name}-x"
        ch.exchange_declare(exchange, "fanout", auto_delete=True)
        queue = ch.queue_declare(unique_name, auto_delete=True).queue
        ch.queue_bind(queue, exchange)
        got: list[bytes] = []
        arrived = Event()
        recovered = Event()
        ch.add_on_channel_recovered_callback(lambda c: recovered.set())

        def on_message(channel: Any, method: Any, _props: Any, body: bytes) -> None:
            got.append(body)
            channel.basic_ack(method.delivery_tag)
            arrived.set()

        tag = ch.basic_consume(queue, on_message)
        with pytest.raises(geamqp.ChannelClosedByBroker) as info:
            ch.basic_consume(f"{unique_name}-missing", on_message)
        assert info.value.reply_code == 404
        assert recovered.wait(10), "the channel was not recovered"
        assert ch.is_open and ch.consumer_tags == [tag]
        admin.basic_publish(exchange, "", b"after the 404")
        assert arrived.wait(10) and got == [b"after the 404"]
    finally:
        conn.close()


# ---------------------------------------------------------------- broker cancels (point 2)


@pytest.mark.parametrize("reconsume", [False, True])
def test_queue_deleted_and_declared_again(broker: BrokerEndpoint, unique_name: str,
                                          admin: Any, reconsume: bool) -> None:
    queue = unique_name
    admin.queue_declare(queue)
    conn = geamqp.connect(broker.url(), name=unique_name, **FAST)
    try:
        ch = conn.channel()
        got: list[bytes] = []
        arrived = Event()
        cancelled = Event()
        broker_cancel = Event()
        ch.add_on_cancel_callback(lambda frame: broker_cancel.set())

        def on_message(channel: Any, method: Any, _props: Any, body: bytes) -> None:
            got.append(body)
            channel.basic_ack(method.delivery_tag)
            arrived.set()

        tag = ch.basic_consume(queue, on_message, on_cancel=lambda c, t: cancelled.set(),
                               reconsume_on_cancel=reconsume)
        admin.queue_delete(queue)
        assert broker_cancel.wait(10), "the broker's basic.cancel was not heard"
        admin.queue_declare(queue)
        admin.basic_publish("", queue, b"to the new queue")
        if reconsume:
            assert arrived.wait(30), "not consuming again after the queue came back"
            assert got == [b"to the new queue"] and ch.consumer_tags == [tag]
            assert not cancelled.is_set()
        else:
            assert cancelled.wait(10), "on_cancel was not called"
            assert ch.consumer_tags == [] and ch.is_open
            wait_for(lambda: admin.queue_declare(queue, passive=True).message_count == 1, 10,
                     "the message to stay in the queue")
            assert got == []
    finally:
        conn.close()
        _delete_queues(admin, queue)


# ---------------------------------------------------------------- credentials (point 5)


def test_recovery_logs_in_with_the_providers_new_password(
        broker: BrokerEndpoint, unique_name: str) -> None:
    user = f"geamqp-creds-{unique_name[-12:]}"  # unique: the test name's uuid part
    secret = {"password": "first-" + unique_name[-12:]}
    conn = None
    try:
        broker_ctl.rabbitmqctl("add_user", user, secret["password"])
        broker_ctl.rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        asked: list[str] = []

        def provider() -> PlainCredentials:
            asked.append(secret["password"])
            return PlainCredentials(user, secret["password"])

        params = ConnectionParameters(broker.host, broker.port, credentials=provider)
        conn = geamqp.connect(params, name=unique_name, **FAST)
        recovered = Event()
        conn.add_on_recovered_callback(lambda c: recovered.set())
        ch = conn.channel()
        ch.queue_declare(unique_name, exclusive=True)
        secret["password"] = "second-" + unique_name[-12:]
        broker_ctl.rabbitmqctl("change_password", user, secret["password"])
        broker_ctl.close_connection(unique_name, "credentials test forces a reconnect")
        assert recovered.wait(30), "recovery did not log in with the new password"
        assert ch.queue_declare(unique_name, passive=True).queue == unique_name
        assert asked[-1] == secret["password"] and len(asked) >= 2
        assert {c.user for c in broker_ctl.find_connections(unique_name)} == {user}
    finally:
        if conn is not None:
            conn.close()
        with contextlib.suppress(broker_ctl.BrokerCommandError):  # add_user may have failed
            broker_ctl.rabbitmqctl("delete_user", user)


# ---------------------------------------------------------------- streams (point 6)


def test_stream_consumer_sees_each_offset_once_across_a_reset(
        broker: BrokerEndpoint, unique_name: str, admin: Any) -> None:
    n = 10_000
    stream = unique_name
    admin.queue_declare(stream, durable=True, arguments={"x-queue-type": "stream"})
    conn = None
    try:
        admin.confirm_delivery()
        for i in range(n):
            admin.basic_publish("", stream, str(i).encode(), wait=False)
        assert admin.wait_for_confirms(30)
        conn = geamqp.connect(broker.url(), name=unique_name, **FAST)
        ch = conn.channel()
        ch.basic_qos(prefetch_count=200)  # a stream consumer needs a prefetch limit
        offsets: list[int] = []
        bodies: list[int] = []
        halfway = Event()
        done = Event()

        def on_message(channel: Any, method: Any, props: Any, body: bytes) -> None:
            offsets.append(props.headers["x-stream-offset"])
            bodies.append(int(body))
            channel.basic_ack(method.delivery_tag)
            if len(offsets) == n // 2:
                halfway.set()
                gevent.sleep(0.2)  # hold a delivery while the reset happens
            if len(offsets) >= n:
                done.set()

        ch.basic_consume(stream, on_message, arguments={"x-stream-offset": "first"})
        assert halfway.wait(30)
        broker_ctl.close_connection(unique_name, "stream test resets the connection")
        assert done.wait(45), f"only {len(offsets)} of {n} deliveries"
        gevent.sleep(0.3)  # anything replayed twice would arrive now
        assert len(offsets) == n, f"{len(offsets) - n} deliveries beyond the {n} published"
        assert offsets == sorted(set(offsets)) and bodies == list(range(n))
    finally:
        if conn is not None:
            conn.close()
        _delete_queues(admin, stream)


# ---------------------------------------------------------------- quorum queues (point 7)


def test_quorum_poison_message_ends_in_the_dead_letter_queue(
        broker: BrokerEndpoint, unique_name: str, admin: Any) -> None:
    limit = 2
    dlx, dlq, queue = f"{unique_name}-dlx", f"{unique_name}-dlq", f"{unique_name}-work"
    admin.exchange_declare(dlx, "fanout", auto_delete=True)
    admin.queue_declare(dlq)
    admin.queue_bind(dlq, dlx)
    admin.queue_declare(queue, durable=True, arguments={
        "x-queue-type": "quorum", "x-delivery-limit": limit, "x-dead-letter-exchange": dlx})
    conn = geamqp.connect(broker.url(), name=unique_name, **FAST)
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1)
        counts: list[Any] = []

        def on_message(channel: Any, method: Any, props: Any, _body: bytes) -> None:
            counts.append((props.headers or {}).get("x-delivery-count"))
            channel.basic_reject(method.delivery_tag, requeue=True)  # always fails

        ch.basic_consume(queue, on_message)
        admin.basic_publish("", queue, b"poison")
        wait_for(lambda: admin.queue_declare(dlq, passive=True).message_count == 1, 20,
                 "the poison message to be dead-lettered")
        _method, props, body = admin.basic_get(dlq, auto_ack=True)
        assert body == b"poison"
        assert len(counts) == limit + 1, counts
        assert counts[1:] == list(range(1, limit + 1)), counts
        assert props.headers["x-death"][0]["queue"] == queue
    finally:
        conn.close()
        _delete_queues(admin, queue, dlq)


@pytest.mark.parametrize("start", ["first", "last", "next", 7, "timestamp"])
def test_stream_offset_specifications(broker: BrokerEndpoint, unique_name: str, admin: Any,
                                      start: Any) -> None:
    import datetime

    stream = unique_name
    admin.queue_declare(stream, durable=True, arguments={"x-queue-type": "stream"})
    conn = geamqp.connect(broker.url(), name=unique_name, **FAST)
    try:
        admin.confirm_delivery()
        for i in range(10):
            admin.basic_publish("", stream, str(i).encode())
        if start == "timestamp":  # a moment before anything was published
            start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
        ch = conn.channel()
        ch.basic_qos(prefetch_count=50)
        seen: list[int] = []
        changed = Event()

        def on_message(channel: Any, method: Any, props: Any, body: bytes) -> None:
            seen.append(props.headers["x-stream-offset"])
            channel.basic_ack(method.delivery_tag)
            changed.set()

        ch.basic_consume(stream, on_message, arguments={"x-stream-offset": start})
        admin.basic_publish("", stream, b"10")
        expected = {"first": list(range(11)), "last": None, "next": [10],
                    7: [7, 8, 9, 10]}.get(start, list(range(11)))
        wait_for(lambda: seen and seen[-1] == 10, 10, "the newest message")
        if expected is None:  # "last": from the last chunk, which holds at least offset 10
            assert seen == sorted(set(seen)) and seen[-1] == 10
        else:
            assert seen == expected
    finally:
        conn.close()
        _delete_queues(admin, stream)
