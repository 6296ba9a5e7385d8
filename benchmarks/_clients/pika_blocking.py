"""pika.BlockingConnection, used the way its documentation shows."""

from __future__ import annotations

import time
from typing import Any

import pika

from . import POLL_INTERVAL, Meter, Unsupported, percentiles


def _open(url: str) -> tuple[Any, Any]:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    return conn, conn.channel()


def _wait_for_count(channel: Any, queue: str, n: int) -> None:
    while channel.queue_declare(queue, passive=True).method.message_count < n:
        time.sleep(POLL_INTERVAL)


def publish(url: str, meter: Meter, queue: str, n: int, body: bytes) -> dict[str, float]:
    conn, ch = _open(url)
    basic_publish = ch.basic_publish
    meter.start()
    for _ in range(n):
        basic_publish("", queue, body)
    _wait_for_count(ch, queue, n)
    meter.stop()
    conn.close()
    return {}


def confirm(url: str, meter: Meter, queue: str, n: int, body: bytes,
            window: int) -> dict[str, float]:
    raise Unsupported("BlockingChannel.confirm_delivery() makes every basic_publish wait for "
                      "its own ack: no window of outstanding confirms")


def consume(url: str, meter: Meter, queue: str, n: int, prefetch: int,
            ack_every: int) -> dict[str, float]:
    conn, ch = _open(url)
    ch.basic_qos(prefetch_count=prefetch)
    count = 0

    def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
        nonlocal count
        count += 1
        if ack_every == 1:
            channel.basic_ack(method.delivery_tag)
        elif not count % ack_every or count == n:
            channel.basic_ack(method.delivery_tag, multiple=True)
        if count == n:
            channel.stop_consuming()

    meter.start()
    ch.basic_consume(queue, on_message)
    ch.start_consuming()
    ch.queue_declare(queue, passive=True)  # a round trip: the broker has read every ack
    meter.stop()
    conn.close()
    return {}


def rpc(url: str, meter: Meter, queue: str, n: int, body: bytes) -> dict[str, float]:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    server = conn.channel()
    client = conn.channel()
    replied = False

    def on_request(channel: Any, method: Any, properties: Any, request: bytes) -> None:
        channel.basic_publish("", properties.reply_to, request, pika.BasicProperties(
            correlation_id=properties.correlation_id))

    def on_reply(channel: Any, method: Any, properties: Any, reply: bytes) -> None:
        nonlocal replied
        replied = True

    server.basic_consume(queue, on_request, auto_ack=True)
    client.basic_consume("amq.rabbitmq.reply-to", on_reply, auto_ack=True)
    clock = time.perf_counter
    process = conn.process_data_events
    times = []
    meter.start()
    for i in range(n):
        t0 = clock()
        replied = False
        client.basic_publish("", queue, body, pika.BasicProperties(
            correlation_id=str(i), reply_to="amq.rabbitmq.reply-to"))
        while not replied:
            process(time_limit=None)
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
