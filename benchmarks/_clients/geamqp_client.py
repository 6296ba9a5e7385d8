"""geamqp, used as its README shows: blocking calls in greenlets, callbacks for consumers."""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Any

import gevent
from gevent.event import Event

import geamqp

from . import POLL_INTERVAL, Meter, percentiles


def _collector() -> Any:
    """GEAMQP_BENCH_METRICS=prometheus | otel: the run reports to that collector
    (for the overhead table in RESULTS.md); unset: no collector."""
    kind = os.environ.get("GEAMQP_BENCH_METRICS", "")
    if kind == "prometheus":
        from prometheus_client import CollectorRegistry

        from geamqp.metrics.prometheus import PrometheusCollector

        return PrometheusCollector(registry=CollectorRegistry())
    if kind == "otel":  # tracing with the SDK: spans made and ended, not exported
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider

        from geamqp.otel import GeamqpInstrumentor

        GeamqpInstrumentor().instrument(tracer_provider=TracerProvider(),
                                        meter_provider=MeterProvider())
        return None  # the instrumentor installs a process-wide default collector
    return None


def _open(url: str) -> tuple[Any, Any]:
    conn = geamqp.connect(url, name="bench-geamqp", recover=False, metrics=_collector())
    return conn, conn.channel()


def _wait_for_count(channel: Any, queue: str, n: int) -> None:
    while channel.queue_declare(queue, passive=True).message_count < n:
        gevent.sleep(POLL_INTERVAL)


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
    conn, ch = _open(url)
    ch.confirm_delivery()
    basic_publish = ch.basic_publish
    pending: deque[Any] = deque()
    meter.start()
    for _ in range(n):
        pending.append(basic_publish("", queue, body, wait=False))
        if len(pending) >= window:
            pending.popleft().wait()
    while pending:
        pending.popleft().wait()
    meter.stop()
    conn.close()
    return {}


def consume(url: str, meter: Meter, queue: str, n: int, prefetch: int,
            ack_every: int) -> dict[str, float]:
    conn, ch = _open(url)
    ch.basic_qos(prefetch_count=prefetch)
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
    ch.basic_consume(queue, on_message)
    done.wait()
    ch.queue_declare(queue, passive=True)  # a round trip: the broker has read every ack
    meter.stop()
    conn.close()
    return {}


def rpc(url: str, meter: Meter, queue: str, n: int, body: bytes) -> dict[str, float]:
    conn = geamqp.connect(url, name="bench-geamqp-rpc", recover=False)
    server = conn.channel()
    client = conn.channel()

    def on_request(channel: Any, method: Any, properties: Any, request: bytes) -> None:
        channel.basic_publish("", properties.reply_to, request, geamqp.BasicProperties(
            correlation_id=properties.correlation_id))

    replied = Event()

    def on_reply(channel: Any, method: Any, properties: Any, reply: bytes) -> None:
        replied.set()

    server.basic_consume(queue, on_request, auto_ack=True)
    client.basic_consume("amq.rabbitmq.reply-to", on_reply, auto_ack=True)
    clock = time.perf_counter
    times = []
    meter.start()
    for i in range(n):
        t0 = clock()
        replied.clear()
        client.basic_publish("", queue, body, geamqp.BasicProperties(
            correlation_id=str(i), reply_to="amq.rabbitmq.reply-to"))
        replied.wait()
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
