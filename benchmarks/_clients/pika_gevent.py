"""pika's GeventConnection, driven as well as it can be.

pika's asynchronous API runs its callbacks in the gevent hub (I/O watchers on
the hub's loop), so nothing needs `ioloop.start()`: the main greenlet blocks
on gevent primitives and the hub runs pika meanwhile. Publishing goes in
batches with a `gevent.sleep(0)` between them so pika's write watcher can
flush; consuming, RPC replies and declare round trips are chained in pika's
own callbacks (no greenlet switch per message). Confirms are counted by the
highest tag acked: RabbitMQ confirms a single-queue route in order.
"""

from __future__ import annotations

import time
from typing import Any

import gevent
import pika
from gevent.event import AsyncResult, Event
from pika.adapters.gevent_connection import GeventConnection

from . import POLL_INTERVAL, Meter, percentiles

BATCH = 1000  # publishes between two yields to the hub


def _call(function: Any, *args: Any, **kwargs: Any) -> Any:
    """A pika asynchronous method with callback=, made blocking for this greenlet."""
    result = AsyncResult()
    function(*args, callback=result.set, **kwargs)
    return result.get(timeout=30)


def _open(url: str) -> tuple[Any, Any]:
    opened = AsyncResult()
    conn = GeventConnection(pika.URLParameters(url),
                            on_open_callback=opened.set,
                            on_open_error_callback=lambda _c, exc: opened.set_exception(exc))
    opened.get(timeout=30)
    channel = AsyncResult()
    conn.channel(on_open_callback=channel.set)
    return conn, channel.get(timeout=30)


def _close(conn: Any) -> None:
    closed = Event()
    conn.add_on_close_callback(lambda *_: closed.set())
    conn.close()
    closed.wait(5)


def _message_count(channel: Any, queue: str) -> int:
    return int(_call(channel.queue_declare, queue, passive=True).method.message_count)


def publish(url: str, meter: Meter, queue: str, n: int, body: bytes) -> dict[str, float]:
    conn, ch = _open(url)
    basic_publish = ch.basic_publish
    meter.start()
    for i in range(n):
        basic_publish("", queue, body)
        if not i % BATCH:
            gevent.sleep(0)
    while _message_count(ch, queue) < n:
        gevent.sleep(POLL_INTERVAL)
    meter.stop()
    _close(conn)
    return {}


def confirm(url: str, meter: Meter, queue: str, n: int, body: bytes,
            window: int) -> dict[str, float]:
    conn, ch = _open(url)
    confirmed = 0
    progress = Event()

    def on_confirm(frame: Any) -> None:
        nonlocal confirmed
        if not isinstance(frame.method, pika.spec.Basic.Ack):
            raise RuntimeError(f"nacked: {frame.method}")
        confirmed = max(confirmed, frame.method.delivery_tag)
        progress.set()

    _call(ch.confirm_delivery, on_confirm)
    basic_publish = ch.basic_publish
    meter.start()
    sent = 0
    while sent < n:
        while sent - confirmed >= window:
            progress.clear()
            progress.wait()
        basic_publish("", queue, body)
        sent += 1
    while confirmed < n:
        progress.clear()
        progress.wait()
    meter.stop()
    _close(conn)
    return {}


def consume(url: str, meter: Meter, queue: str, n: int, prefetch: int,
            ack_every: int) -> dict[str, float]:
    conn, ch = _open(url)
    _call(ch.basic_qos, prefetch_count=prefetch)
    done = Event()
    count = 0

    def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
        nonlocal count
        count += 1
        if ack_every == 1:
            channel.basic_ack(method.delivery_tag)
        elif not count % ack_every or count == n:
            channel.basic_ack(method.delivery_tag, multiple=True)
        if count == n:
            done.set()

    meter.start()
    _call(ch.basic_consume, queue, on_message)
    done.wait()
    _message_count(ch, queue)  # a round trip: the broker has read every ack
    meter.stop()
    _close(conn)
    return {}


def rpc(url: str, meter: Meter, queue: str, n: int, body: bytes) -> dict[str, float]:
    conn, server = _open(url)
    client = AsyncResult()
    conn.channel(on_open_callback=client.set)
    client = client.get(timeout=30)
    clock = time.perf_counter
    times: list[float] = []
    done = Event()
    started = [0.0]

    def on_request(channel: Any, method: Any, properties: Any, request: bytes) -> None:
        channel.basic_publish("", properties.reply_to, request, pika.BasicProperties(
            correlation_id=properties.correlation_id))

    def send(i: int) -> None:
        started[0] = clock()
        client.basic_publish("", queue, body, pika.BasicProperties(
            correlation_id=str(i), reply_to="amq.rabbitmq.reply-to"))

    def on_reply(channel: Any, method: Any, properties: Any, reply: bytes) -> None:
        times.append(clock() - started[0])
        if len(times) == n:
            done.set()
        else:
            send(len(times))

    _call(server.basic_consume, queue, on_request, auto_ack=True)
    _call(client.basic_consume, "amq.rabbitmq.reply-to", on_reply, auto_ack=True)
    meter.start()
    send(0)
    done.wait()
    meter.stop()
    _close(conn)
    return percentiles(times)


def declare(url: str, meter: Meter, queue: str, n: int) -> dict[str, float]:
    conn, ch = _open(url)
    done = Event()
    count = 0

    def on_declare_ok(frame: Any) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()
        else:
            ch.queue_declare(queue, passive=True, callback=on_declare_ok)

    meter.start()
    ch.queue_declare(queue, passive=True, callback=on_declare_ok)
    done.wait()
    meter.stop()
    _close(conn)
    return {}
