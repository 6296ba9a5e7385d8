"""OpenTelemetry: spans and metrics through the collector's hook points.

The core calls `before_publish` for each publish and `wrap_consumer` once per
consumer; these tests call the hook points directly (the in-memory exporters
of the SDK collect what they produce). The round-trip test goes through the
real broker, so the injected headers are encoded and decoded on the wire.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import geamqp
from geamqp.metrics import ConnectionInfo, get_default_collector, set_default_collector
from geamqp.otel import GeamqpInstrumentor, OtelCollector
from geamqp.protocol.spec import Basic

CONN = ConnectionInfo("orders-service", "/", "127.0.0.1", 5672)
FOREIGN_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
FOREIGN_PARENT = "00f067aa0ba902b7"
FOREIGN_TRACEPARENT = f"00-{FOREIGN_TRACE}-{FOREIGN_PARENT}-01"


class Telemetry:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.collector = OtelCollector(self.tracer_provider, self.meter_provider)

    def metric(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return [point for rm in data.resource_metrics for sm in rm.scope_metrics
                for m in sm.metrics if m.name == name for point in m.data.data_points]


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    t = Telemetry()
    yield t
    t.tracer_provider.shutdown()
    t.meter_provider.shutdown()


def deliver(exchange: str, routing_key: str, tag: int = 7) -> Basic.Deliver:
    return Basic.Deliver("ctag", tag, False, exchange, routing_key)


def test_publish_and_consume_spans_form_one_trace(telemetry: Telemetry) -> None:
    c = telemetry.collector
    caller_props = geamqp.BasicProperties(message_id="m-1", correlation_id="c-1",
                                          headers={"app": "x"})
    sent = c.before_publish(CONN, 1, "orders", "eu.new", caller_props)
    assert sent is not None and sent is not caller_props
    assert caller_props.headers == {"app": "x"}, "the caller's properties were modified"
    assert sent.headers is not None and sent.headers["app"] == "x"
    assert sent.headers["traceparent"].startswith("00-")
    assert sent.message_id == "m-1"

    seen: list[Any] = []
    wrapped = c.wrap_consumer(CONN, 2, "orders-eu", lambda *args: seen.append(args))
    wrapped("channel", deliver("orders", "eu.new"), sent, b"hello")
    assert len(seen) == 1 and seen[0][3] == b"hello"

    publish, process = telemetry.spans.get_finished_spans()
    assert publish.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert publish.name == "publish orders" and process.name == "process orders"
    assert process.context.trace_id == publish.context.trace_id
    assert process.parent is not None and process.parent.span_id == publish.context.span_id
    assert sent.headers["traceparent"].startswith(
        f"00-{publish.context.trace_id:032x}-{publish.context.span_id:016x}-")
    assert dict(publish.attributes or {}) == {
        "messaging.system": "rabbitmq", "messaging.operation.type": "send",
        "messaging.operation.name": "publish", "messaging.destination.name": "orders",
        "messaging.rabbitmq.destination.routing_key": "eu.new",
        "messaging.message.id": "m-1", "messaging.message.conversation_id": "c-1",
        "server.address": "127.0.0.1", "server.port": 5672}
    attrs = dict(process.attributes or {})
    assert attrs["messaging.operation.type"] == "process"
    assert attrs["messaging.destination.name"] == "orders"
    assert attrs["messaging.rabbitmq.message.delivery_tag"] == 7
    assert attrs["messaging.destination.subscription.name"] == "orders-eu"
    assert attrs["messaging.message.body.size"] == 5
    assert attrs["messaging.message.id"] == "m-1"


def test_message_without_headers_consumes_in_a_root_span(telemetry: Telemetry) -> None:
    seen: list[bytes] = []
    wrapped = telemetry.collector.wrap_consumer(CONN, 1, "q", lambda ch, m, p, b: seen.append(b))
    wrapped(None, deliver("", "q"), geamqp.BasicProperties(), b"plain")
    wrapped(None, deliver("", "q", 8), geamqp.BasicProperties(headers={"traceparent": 42}), b"x")
    wrapped(None, deliver("", "q", 9), geamqp.BasicProperties(headers={"traceparent": "junk"}),
            b"y")
    assert seen == [b"plain", b"x", b"y"]
    spans = telemetry.spans.get_finished_spans()
    assert [s.name for s in spans] == ["process amq.default"] * 3
    assert all(s.parent is None for s in spans)
    assert len({s.context.trace_id for s in spans}) == 3


def test_existing_traceparent_is_respected(telemetry: Telemetry) -> None:
    c = telemetry.collector
    # Consume: a message published by another client's instrumentation.
    wrapped = c.wrap_consumer(CONN, 1, "q", lambda *args: None)
    props = geamqp.BasicProperties(headers={"traceparent": FOREIGN_TRACEPARENT.encode()})
    wrapped(None, deliver("", "q"), props, b"")
    # Publish: a message forwarded with its trace context kept.
    forwarded = geamqp.BasicProperties(headers={"traceparent": FOREIGN_TRACEPARENT})
    sent = c.before_publish(CONN, 1, "", "next", forwarded)
    process, publish = telemetry.spans.get_finished_spans()
    for span in (process, publish):
        assert f"{span.context.trace_id:032x}" == FOREIGN_TRACE
        assert span.parent is not None and f"{span.parent.span_id:016x}" == FOREIGN_PARENT
    assert sent is not None and sent.headers is not None
    assert sent.headers["traceparent"].startswith(
        f"00-{FOREIGN_TRACE}-{publish.context.span_id:016x}-")
    assert forwarded.headers == {"traceparent": FOREIGN_TRACEPARENT}


def test_callback_error_is_recorded_and_raised(telemetry: Telemetry) -> None:
    def failing(*args: Any) -> None:
        raise ValueError("bad order")

    wrapped = telemetry.collector.wrap_consumer(CONN, 1, "q", failing)
    with pytest.raises(ValueError, match="bad order"):
        wrapped(None, deliver("", "q"), geamqp.BasicProperties(), b"")
    (span,) = telemetry.spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["error.type"] == "ValueError"
    assert [e.name for e in span.events] == ["exception"]


def test_metrics_through_the_meter(telemetry: Telemetry) -> None:
    c = telemetry.collector
    c.connection_opened(CONN)
    c.channel_opened(CONN, 1)
    for _ in range(3):
        c.message_published(CONN, 1, "", "q", 10)
    c.publish_acked(CONN, 1, 0.01)
    c.publish_nacked(CONN, 1, 0.02)
    c.message_delivered(CONN, 1, 10, False)
    c.delivery_acked(CONN, 1, 1, False)
    c.connection_lost(CONN, ConnectionResetError())
    c.connection_recovered(CONN, 0.5)
    (sent,) = telemetry.metric("messaging.client.sent.messages")
    assert sent.value == 3
    assert dict(sent.attributes) == {"messaging.system": "rabbitmq",
                                     "geamqp.connection.name": "orders-service",
                                     "geamqp.vhost": "/"}
    (consumed,) = telemetry.metric("messaging.client.consumed.messages")
    assert consumed.value == 1
    confirms = {p.attributes["geamqp.confirm.outcome"]: p for p in
                telemetry.metric("geamqp.publish.confirm.duration")}
    assert confirms["ack"].count == 1 and confirms["ack"].sum == pytest.approx(0.01)
    assert confirms["nack"].count == 1
    (connections,) = telemetry.metric("geamqp.connections")
    assert connections.value == 1
    (recovery,) = telemetry.metric("geamqp.connection.recovery.duration")
    assert recovery.sum == 0.5
    settlements = {p.attributes["messaging.operation.name"]: p.value
                   for p in telemetry.metric("geamqp.settlements")}
    assert settlements == {"ack": 1, "nack": 0, "reject": 0}


def test_without_an_sdk_publish_leaves_the_properties_alone() -> None:
    from opentelemetry.trace import NoOpTracerProvider

    collector = OtelCollector(NoOpTracerProvider())
    props = geamqp.BasicProperties(headers={"a": 1})
    assert collector.before_publish(CONN, 1, "", "q", props) is props
    # ... but a context that came in with the message still travels on.
    forwarded = geamqp.BasicProperties(headers={"traceparent": FOREIGN_TRACEPARENT})
    sent = collector.before_publish(CONN, 1, "", "q", forwarded)
    assert sent is not None and sent.headers is not None
    assert sent.headers["traceparent"].startswith(f"00-{FOREIGN_TRACE}-{FOREIGN_PARENT}-")


def test_instrumentor_sets_and_removes_the_default_collector(telemetry: Telemetry) -> None:
    set_default_collector(None)
    instrumentor = GeamqpInstrumentor()
    assert instrumentor is GeamqpInstrumentor()
    try:
        instrumentor.instrument(tracer_provider=telemetry.tracer_provider,
                                meter_provider=telemetry.meter_provider)
        collector = instrumentor.collector
        assert collector is not None and get_default_collector() is collector
        instrumentor.instrument()  # idempotent
        assert instrumentor.collector is collector
        wrapped = collector.wrap_consumer(CONN, 1, "q", lambda *args: "done")
    finally:
        instrumentor.uninstrument()
    assert get_default_collector() is None and instrumentor.collector is None
    # A connection made before keeps its collector, which now passes through.
    props = geamqp.BasicProperties()
    assert collector.before_publish(CONN, 1, "", "q", props) is props
    assert wrapped(None, deliver("", "q"), props, b"") == "done"
    assert telemetry.spans.get_finished_spans() == ()
