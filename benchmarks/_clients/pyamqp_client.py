"""py-amqp (`amqp`, the transport under Celery/kombu), blocking, driven by drain_events().

Confirmed publishes: `confirm_select()` and an `events['basic_ack']` callback
(py-amqp's own `confirm_publish=True` waits for each ack in turn: no window).
Confirms are counted by the highest tag acked: RabbitMQ confirms a
single-queue route in order.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import unquote, urlparse

import amqp

from . import POLL_INTERVAL, Meter, percentiles


def _connect(url: str) -> Any:
    parts = urlparse(url)
    conn = amqp.Connection(host=f"{parts.hostname or '127.0.0.1'}:{parts.port or 5672}",
                           userid=unquote(parts.username or "guest"),
                           password=unquote(parts.password or "guest"),
                           virtual_host=unquote(parts.path[1:]) if len(parts.path) > 1 else "/")
    conn.connect()
    return conn


def _open(url: str) -> tuple[Any, Any]:
    conn = _connect(url)
    return conn, conn.channel()


def publish(url: str, meter: Meter, queue: str, n: int, body: bytes) -> dict[str, float]:
    conn, ch = _open(url)
    basic_publish = ch.basic_publish
    Message = amqp.Message
    meter.start()
    for _ in range(n):
        basic_publish(Message(body), "", queue)
    while ch.queue_declare(queue, passive=True).message_count < n:
        time.sleep(POLL_INTERVAL)
    meter.stop()
    conn.close()
    return {}


def confirm(url: str, meter: Meter, queue: str, n: int, body: bytes,
            window: int) -> dict[str, float]:
    conn, ch = _open(url)
    ch.confirm_select()
    confirmed = 0

    def on_ack(delivery_tag: int, multiple: bool) -> None:
        nonlocal confirmed
        confirmed = max(confirmed, delivery_tag)

    def on_nack(delivery_tag: int, multiple: bool) -> None:
        raise RuntimeError(f"nacked {delivery_tag}")

    ch.events["basic_ack"].add(on_ack)
    ch.events["basic_nack"].add(on_nack)
    basic_publish = ch.basic_publish
    drain = conn.drain_events
    Message = amqp.Message
    meter.start()
    sent = 0
    while sent < n:
        while sent - confirmed >= window:
            drain()
        basic_publish(Message(body), "", queue)
        sent += 1
    while confirmed < n:
        drain()
    meter.stop()
    conn.close()
    return {}


def consume(url: str, meter: Meter, queue: str, n: int, prefetch: int,
            ack_every: int) -> dict[str, float]:
    conn, ch = _open(url)
    ch.basic_qos(0, prefetch, False)
    count = 0
    basic_ack = ch.basic_ack

    def on_message(message: Any) -> None:
        nonlocal count
        count += 1
        if ack_every == 1:
            basic_ack(message.delivery_tag)
        elif not count % ack_every or count == n:
            basic_ack(message.delivery_tag, multiple=True)

    drain = conn.drain_events
    meter.start()
    ch.basic_consume(queue, callback=on_message)
    while count < n:
        drain()
    ch.queue_declare(queue, passive=True)  # a round trip: the broker has read every ack
    meter.stop()
    conn.close()
    return {}


def rpc(url: str, meter: Meter, queue: str, n: int, body: bytes) -> dict[str, float]:
    conn = _connect(url)
    server = conn.channel()
    client = conn.channel()
    Message = amqp.Message
    replied = False

    def on_request(message: Any) -> None:
        server.basic_publish(Message(message.body,
                                     correlation_id=message.properties["correlation_id"]),
                             "", message.properties["reply_to"])

    def on_reply(message: Any) -> None:
        nonlocal replied
        replied = True

    server.basic_consume(queue, callback=on_request, no_ack=True)
    client.basic_consume("amq.rabbitmq.reply-to", callback=on_reply, no_ack=True)
    drain = conn.drain_events
    clock = time.perf_counter
    times = []
    meter.start()
    for i in range(n):
        t0 = clock()
        replied = False
        client.basic_publish(Message(body, correlation_id=str(i),
                                     reply_to="amq.rabbitmq.reply-to"), "", queue)
        while not replied:
            drain()
        times.append(clock() - t0)
    meter.stop()
    conn.close()
    return percentiles(times)


def declare(url: str, meter: Meter, queue: str, n: int) -> dict[str, float]:
    conn, ch = _open(url)
    queue_declare = ch.queue_declare
    meter.start()
    for _ in range(n):
        queue_declare(queue, passive=True)
    meter.stop()
    conn.close()
    return {}
