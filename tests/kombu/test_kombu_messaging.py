"""kombu's producer/consumer behaviour on the geamqp transport, against the real broker."""

from __future__ import annotations

import contextlib
import datetime
import socket
import subprocess
import sys
import time
from decimal import Decimal
from typing import Any

import gevent
import kombu
import pytest
from kombu import Consumer, Exchange, Producer, Queue
from support.broker import wait_until

import geamqp
import geamqp.kombu

pytestmark = pytest.mark.timeout(30)


def _drain_until(conn: kombu.Connection, done: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("messages did not arrive")
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=left)


def test_import_geamqp_never_imports_kombu_or_celery() -> None:
    code = ("import sys, geamqp\n"
            "for name in geamqp.__all__: getattr(geamqp, name)\n"
            "bad = sorted(m for m in sys.modules\n"
            "             if m.split('.')[0] in ('kombu', 'celery', 'amqp'))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=20)


def test_url_schemes_select_the_transport(kombu_url: str) -> None:
    assert isinstance(kombu.Connection(kombu_url).transport, geamqp.kombu.Transport)
    tls = kombu.Connection("geamqps://guest:guest@broker.example//")
    assert isinstance(tls.transport, geamqp.kombu.SSLTransport)
    assert tls.transport.default_connection_params["port"] == 5671
    # Without the alias: the transport named by its import path.
    plain = kombu.Connection("amqp://guest:guest@127.0.0.1:5672//",
                             transport="geamqp.kombu:Transport")
    with plain:
        plain.connect()
        assert plain.transport.driver_type == "amqp"
        assert plain.connection.geamqp_connection.is_open


def test_round_trip_every_property_and_header_type(kconn: kombu.Connection,
                                                   unique_name: str) -> None:
    headers = {"str": "text", "int": 7, "neg": -3, "big": 2**40, "float": 1.5, "true": True,
               "false": False, "none": None, "bytes": b"\x00\xff", "decimal": Decimal("3.14"),
               "when": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
               "list": [1, "two", [3.0]], "table": {"nested": {"deep": 1}}}
    properties = {"priority": 5, "correlation_id": "corr-1", "reply_to": "replies",
                  "message_id": "msg-1", "timestamp": 1767225600,
                  "type": "kind", "user_id": "guest", "app_id": "tests", "cluster_id": "c1"}
    queue = Queue(unique_name, exclusive=True)
    got: list[kombu.Message] = []
    with Consumer(kconn, [queue], callbacks=[lambda body, msg: got.append(msg)]):
        Producer(kconn).publish({"body": [1, 2]}, routing_key=unique_name, serializer="json",
                                headers=headers, delivery_mode=2, expiration=60,
                                **properties)
        _drain_until(kconn, lambda: got)
    message = got[0]
    assert message.payload == {"body": [1, 2]}
    assert message.content_type == "application/json"
    assert message.content_encoding == "utf-8"
    assert message.headers == headers
    assert type(message.headers["float"]) is float and message.headers["true"] is True
    for name, value in properties.items():
        assert message.properties[name] == value, name
    assert message.properties["delivery_mode"] == 2
    assert message.properties["expiration"] == "60000"
    assert message.delivery_info["routing_key"] == unique_name
    assert message.delivery_info["redelivered"] is False
    message.ack()


def test_simple_queue(kconn: kombu.Connection, unique_name: str) -> None:
    queue = kconn.SimpleQueue(unique_name, queue_opts={"auto_delete": True},
                              exchange_opts={"auto_delete": True})
    try:
        for i in range(3):
            queue.put({"gone": i})
        wait_until(lambda: queue.qsize() == 3, what="3 messages in the queue")
        assert queue.clear() == 3
        for i in range(5):
            queue.put({"i": i})
        got = [queue.get(timeout=5) for _ in range(5)]
        assert [m.payload["i"] for m in got] == [0, 1, 2, 3, 4]
        for m in got:
            m.ack()
        started = time.monotonic()
        with pytest.raises(queue.Empty):
            queue.get(timeout=0.3)
        assert 0.25 <= time.monotonic() - started < 3
        queue.put("again")
        again = queue.get(timeout=5)
        assert again.payload == "again"
        again.ack()
    finally:
        queue.close()


@pytest.mark.parametrize("kind", ["direct", "fanout", "topic", "headers"])
def test_exchange_types_route(kconn: kombu.Connection, unique_name: str, kind: str) -> None:
    exchange = Exchange(unique_name, type=kind, auto_delete=True)
    binding = {"direct": {"routing_key": "a"}, "fanout": {}, "topic": {"routing_key": "a.*"},
               "headers": {"binding_arguments": {"x-match": "all", "colour": "red"}}}[kind]
    matching = Queue(f"{unique_name}-in", exchange, exclusive=True, **binding)
    ch = kconn.channel()
    try:
        matching(ch).declare()
        producer = Producer(ch, exchange)
        routed = {"direct": ("a", {}), "fanout": ("x", {}), "topic": ("a.b", {}),
                  "headers": ("", {"colour": "red"})}[kind]
        unrouted = {"direct": ("b", {}), "topic": ("b.a", {}),
                    "headers": ("", {"colour": "blue"})}.get(kind)
        if unrouted:
            producer.publish("no", routing_key=unrouted[0], headers=unrouted[1])
        producer.publish("yes", routing_key=routed[0], headers=routed[1])
        bound = matching(ch)
        message = wait_until(lambda: bound.get(no_ack=True), what="the routed message")
        assert message.payload == "yes"
        assert bound.get(no_ack=True) is None
    finally:
        ch.close()


def test_ttl_and_priority_queue_arguments(kconn: kombu.Connection, unique_name: str) -> None:
    ch = kconn.channel()
    try:
        ttl = Queue(f"{unique_name}-ttl", message_ttl=0.2, exclusive=True)(ch)
        ttl.declare()
        Producer(ch).publish("expires", routing_key=ttl.name)
        wait_until(lambda: ch.queue_declare(ttl.name, passive=True).message_count == 0,
                   timeout=5, interval=0.05, what="the message to expire")
        prio = Queue(f"{unique_name}-prio", max_priority=10, exclusive=True)(ch)
        prio.declare()
        producer = Producer(ch)
        for priority in (1, 9, 5):
            producer.publish(f"p{priority}", routing_key=prio.name, priority=priority)
        wait_until(lambda: ch.queue_declare(prio.name, passive=True).message_count == 3,
                   what="3 messages")
        order = [prio.get(no_ack=True).payload for _ in range(3)]
        assert order == ["p9", "p5", "p1"]
        # Same name, other arguments: the broker refuses, as a channel error kombu knows.
        with pytest.raises(kconn.channel_errors) as refused:
            Queue(prio.name, max_priority=3, exclusive=True)(ch).declare()
        assert refused.value.reply_code == 406
        assert ch.connection is None  # closed channel is falsy for kombu
    finally:
        ch.close()


def test_drain_events_timeout_and_dispatches_everything_buffered(
        kconn: kombu.Connection, unique_name: str) -> None:
    started = time.monotonic()
    with pytest.raises(socket.timeout):
        kconn.drain_events(timeout=0.2)
    assert 0.18 <= time.monotonic() - started < 2
    with pytest.raises(socket.timeout):
        kconn.drain_events(timeout=0)
    got: list[Any] = []
    queue = Queue(unique_name, exclusive=True)
    with Consumer(kconn, [queue], callbacks=[lambda body, msg: got.append(msg)],
                  prefetch_count=100):
        producer = Producer(kconn)
        for i in range(50):
            producer.publish(i, routing_key=unique_name)
        wait_until(lambda: kconn.connection.pending == 50, interval=0.01,
                   what="50 deliveries buffered")
        kconn.drain_events(timeout=1)
        assert [m.payload for m in got] == list(range(50))  # one call, every message
        got[-1].ack(multiple=True)


def test_confirm_publish_and_a_nack(kombu_url: str, unique_name: str) -> None:
    with kombu.Connection(kombu_url, transport_options={"confirm_publish": True}) as conn:
        ch = conn.channel()
        ok = Queue(f"{unique_name}-ok", exclusive=True)(ch)
        ok.declare()
        Producer(ch).publish("confirmed", routing_key=ok.name, confirm_timeout=5)
        assert ch.queue_declare(ok.name, passive=True).message_count == 1
        full = Queue(f"{unique_name}-full", exclusive=True,
                     queue_arguments={"x-overflow": "reject-publish", "x-max-length": 0})(ch)
        full.declare()
        with pytest.raises(geamqp.NackError):
            Producer(ch).publish("refused", routing_key=full.name)
        assert isinstance(geamqp.NackError([]), conn.channel_errors)
        Producer(ch).publish("still usable", routing_key=ok.name)
        ch.close()


@pytest.mark.parametrize("confirm", [False, True])
def test_mandatory_returns_reach_on_return(kombu_url: str, unique_name: str,
                                           confirm: bool) -> None:
    with kombu.Connection(kombu_url, transport_options={"confirm_publish": confirm}) as conn:
        returned: list[tuple[Any, ...]] = []
        producer = Producer(conn, on_return=lambda *args: returned.append(args))
        producer.publish("lost", routing_key=f"{unique_name}-nowhere", mandatory=True)
        if not confirm:  # without confirms the return is handled in drain_events
            _drain_until(conn, lambda: returned)
        exc, exchange, routing_key, message = returned[0]
        assert isinstance(exc, conn.channel_errors)
        assert (exchange, routing_key) == ("", f"{unique_name}-nowhere")
        assert message.body == b"lost" and message.delivery_info["reply_code"] == 312


def test_messages_arriving_during_cancel_reach_the_callback(kconn: kombu.Connection,
                                                            unique_name: str) -> None:
    got: list[Any] = []
    queue = Queue(unique_name, durable=False, auto_delete=False)
    consuming = kconn.channel()
    consumer = Consumer(consuming, [queue], callbacks=[lambda body, msg: got.append(msg)],
                        prefetch_count=100)
    consumer.consume()
    producer = Producer(kconn)
    for i in range(20):
        producer.publish(i, routing_key=unique_name)
    wait_until(lambda: kconn.connection.pending == 20, interval=0.01, what="20 deliveries")
    consumer.cancel()
    _drain_until(kconn, lambda: len(got) == 20)
    assert [m.payload for m in got] == list(range(20))
    for message in got:
        message.ack()
    consuming.close()  # would requeue anything not acked
    ch = kconn.channel()
    assert ch.queue_delete(unique_name) == 0
    ch.close()


def test_broker_cancel(kconn: kombu.Connection, unique_name: str) -> None:
    ch = kconn.channel()
    cancelled: list[str] = []
    bound = Queue(f"{unique_name}-a")(ch)
    bound.declare()
    tag = bound.consume(callback=lambda m: None, on_cancel=cancelled.append)
    bound.delete()
    _drain_until(kconn, lambda: cancelled)
    assert cancelled == [tag]
    # No on_cancel (kombu's Consumer, Celery): a recoverable connection error, as py-amqp.
    other = Queue(f"{unique_name}-b")
    with Consumer(kconn, [other], callbacks=[lambda body, msg: None]):
        other(ch).delete()
        with pytest.raises(geamqp.kombu.ConsumerCancelled) as exc_info:
            _drain_until(kconn, lambda: False, timeout=5)
    assert isinstance(exc_info.value, kconn.recoverable_connection_errors)
    ch.close()


def test_many_greenlets_publish_and_ack_while_another_drains(kconn: kombu.Connection,
                                                            unique_name: str) -> None:
    publishers, each = 50, 40
    total = publishers * each
    queue = Queue(unique_name, durable=False, auto_delete=False)
    consuming = kconn.channel()
    seen: dict[int, int] = {}
    ackers = gevent.pool.Group()

    def on_message(body: Any, message: Any) -> None:
        seen[body] = seen.get(body, 0) + 1
        ackers.spawn(message.ack)  # acked from other greenlets, as Celery's tasks do

    def publish(start: int) -> None:
        producer = Producer(kconn)  # the connection's default channel, shared
        for i in range(start, start + each):
            producer.publish(i, routing_key=unique_name)
            if i % 7 == 0:
                gevent.sleep(0)

    with Consumer(consuming, [queue], callbacks=[on_message], prefetch_count=200):
        group = gevent.pool.Group()
        for p in range(publishers):
            group.spawn(publish, p * each)
        _drain_until(kconn, lambda: len(seen) == total, timeout=20)
        group.join(raise_error=True)
        ackers.join(raise_error=True)
    assert set(seen) == set(range(total)) and set(seen.values()) == {1}
    consuming.close()  # would requeue anything not acked
    ch = kconn.channel()
    assert ch.queue_delete(unique_name) == 0  # every ack went to the right channel and tag
    ch.close()
