"""Observability against the real broker: trace headers survive the wire.

The core will call the collector's hooks itself once wired (issue 16); until
then this test calls them where the core will, around a real publish and
consume, so the injected headers are encoded and decoded by the client.
"""

from __future__ import annotations

from typing import Any

import gevent.event
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import geamqp
from geamqp.metrics import ConnectionInfo
from geamqp.otel import OtelCollector


def test_trace_context_round_trip_through_the_broker(broker: Any, unique_name: str) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    collector = OtelCollector(tracer_provider=provider)
    info = ConnectionInfo(unique_name, "/", "127.0.0.1", 5672)
    got: gevent.event.AsyncResult = gevent.event.AsyncResult()
    with geamqp.connect(broker.url(), name=unique_name) as conn:
        ch = conn.channel()
        ch.queue_declare(unique_name, exclusive=True)
        ch.confirm_delivery()
        on_message = collector.wrap_consumer(info, 1, unique_name,
                                             lambda ch_, method, props, body: got.set(props))
        ch.basic_consume(unique_name, on_message, auto_ack=True)
        props = collector.before_publish(info, 1, "", unique_name, None)
        assert props is not None and props.headers is not None
        ch.basic_publish("", unique_name, b"traced", props)
        received = got.get(timeout=10)
    provider.shutdown()
    assert received.headers["traceparent"] == props.headers["traceparent"]
    publish, process = spans.get_finished_spans()
    assert process.context.trace_id == publish.context.trace_id
    assert process.parent is not None and process.parent.span_id == publish.context.span_id
    attributes = dict(process.attributes or {})
    assert attributes["messaging.rabbitmq.destination.routing_key"] == unique_name
    assert attributes["messaging.destination.name"] == ""
