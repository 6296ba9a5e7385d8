"""OpenTelemetry for geamqp: metrics through a Meter, and traces (``geamqp[otel]``).

    from geamqp.otel import GeamqpInstrumentor
    GeamqpInstrumentor().instrument()            # global providers and propagator
    conn = geamqp.connect(url)                   # made after instrument(): traced

`instrument()` adds a process-wide collector (`geamqp.metrics`), so it affects
connections made after it; `uninstrument()` removes it, and the collector of
connections made before turns into a pass-through.

Tracing follows OpenTelemetry's messaging semantic conventions for RabbitMQ:

- each publish gets a PRODUCER span, ``publish <exchange>``, and its context
  is injected into the message's headers with the configured propagator (the
  global one by default: W3C ``traceparent``/``tracestate``), so any consumer
  that reads W3C headers — geamqp, pika's or Java's instrumentation —
  continues the trace. When the caller's headers already carry a context (a
  message being forwarded), that context is the span's parent, so the trace
  is kept; the caller's properties object is never modified.
- each consumer callback runs inside a CONSUMER span, ``process <exchange>``,
  whose parent is the context extracted from the message headers (a root
  span when there is none: messages from uninstrumented publishers consume
  as before). An exception from the callback is recorded on the span and
  re-raised.

Attributes: ``messaging.system`` (rabbitmq), ``messaging.operation.type``
(send / process), ``messaging.operation.name`` (publish / process),
``messaging.destination.name`` (the exchange; "" is the default exchange),
``messaging.rabbitmq.destination.routing_key`` (when not empty),
``messaging.rabbitmq.message.delivery_tag`` (consume), ``messaging.message.id``
and ``messaging.message.conversation_id`` (message_id / correlation_id, when
set), ``messaging.message.body.size``,
``messaging.destination.subscription.name`` (the queue, consume),
``server.address`` and ``server.port``.

Metrics (instrument names): ``messaging.client.sent.messages``,
``messaging.client.consumed.messages``, ``messaging.process.duration`` (callback
time, s), ``geamqp.publish.confirm.duration`` (s, attribute
``geamqp.confirm.outcome``), ``geamqp.publish.returned``, ``geamqp.connections``,
``geamqp.channels``, ``geamqp.consumers`` (up-down counters),
``geamqp.connection.recoveries``, ``geamqp.connection.recovery.duration``,
``geamqp.connection.blocked.duration``, ``geamqp.settlements`` (attribute
``messaging.operation.name``: ack / nack / reject), ``geamqp.thread_callbacks.pending``.
Attributes on metrics are bounded: ``messaging.system``,
``geamqp.connection.name`` and ``geamqp.vhost`` (no queue or routing key).
Counters and up-down counters are observable instruments reading plain
numbers the collector keeps, so a publish or delivery costs an addition, not
an SDK call; histograms are recorded as events happen.

Without an SDK (the API's no-op tracer) a publish's properties are returned
untouched unless the message already carries a context, which is passed on.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

try:
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import propagate
    from opentelemetry import trace as otel_trace
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.propagators.textmap import Getter, TextMapPropagator
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("geamqp.otel needs opentelemetry-api: pip install 'geamqp[otel]'") from exc

from . import __version__
from .metrics import (
    Collector,
    ConnectionInfo,
    OnMessage,
    add_default_collector,
    remove_default_collector,
)
from .protocol.properties import BasicProperties

__all__ = ["GeamqpInstrumentor", "OtelCollector"]

_SYSTEM = "rabbitmq"
_SCOPE = "geamqp"


class _HeaderGetter(Getter[Mapping[str, Any]]):
    """Reads propagation fields from an AMQP header table (str or bytes values)."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("utf-8", "replace")
        elif not isinstance(value, str):
            return None  # not something a propagator wrote
        return [value]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()


def _destination(exchange: str) -> str:
    return exchange or "amq.default"


# (instrument, unit, description, ((_Series field, attribute variant or None), ...), up-down)
_OBSERVED: tuple[tuple[str, str, str, tuple[tuple[str, str | None], ...], bool], ...] = (
    ("messaging.client.sent.messages", "{message}", "Messages published.",
     (("sent", None),), False),
    ("messaging.client.consumed.messages", "{message}", "Messages delivered to the client.",
     (("consumed", None),), False),
    ("geamqp.publish.returned", "{message}", "Messages returned as unroutable.",
     (("returned", None),), False),
    ("geamqp.settlements", "{frame}", "ack / nack / reject frames sent.",
     (("acks", "ack"), ("nacks", "nack"), ("rejects", "reject")), False),
    ("geamqp.connection.recoveries", "{recovery}", "Connections recovered or given up.",
     (("recovered", "recovered"), ("recovery_failed", "failed")), False),
    ("geamqp.connection.blocked.duration", "s", "Time blocked by the broker.",
     (("blocked_seconds", None),), False),
    ("geamqp.connections", "{connection}", "Connections open (not lost).",
     (("connections", None),), True),
    ("geamqp.channels", "{channel}", "Channels open.", (("channels", None),), True),
    ("geamqp.consumers", "{consumer}", "Consumers registered.", (("consumers", None),), True),
)


class _Series:
    """Counts for one (connection name, vhost) pair, and its metric attributes."""

    __slots__ = ("acks", "attrs", "blocked_seconds", "channels", "connections", "consumed",
                 "consumers", "nacks", "recovered", "recovery_failed", "rejects", "returned",
                 "sent", "variants")

    def __init__(self, name: str, vhost: str) -> None:
        self.attrs: dict[str, Any] = {"messaging.system": _SYSTEM,
                                      "geamqp.connection.name": name, "geamqp.vhost": vhost}
        self.variants: dict[str, dict[str, Any]] = {
            "confirm_ack": {**self.attrs, "geamqp.confirm.outcome": "ack"},
            "confirm_nack": {**self.attrs, "geamqp.confirm.outcome": "nack"},
            "ack": {**self.attrs, "messaging.operation.name": "ack"},
            "nack": {**self.attrs, "messaging.operation.name": "nack"},
            "reject": {**self.attrs, "messaging.operation.name": "reject"},
            "recovered": {**self.attrs, "geamqp.recovery.outcome": "recovered"},
            "failed": {**self.attrs, "geamqp.recovery.outcome": "failed"},
        }
        self.sent = self.consumed = self.returned = 0
        self.acks = self.nacks = self.rejects = 0
        self.recovered = self.recovery_failed = 0
        self.connections = self.channels = self.consumers = 0
        self.blocked_seconds = 0.0



class OtelCollector(Collector):
    """The collector `GeamqpInstrumentor` installs; usable on its own with
    ``connect(..., metrics=OtelCollector(tracer_provider, meter_provider))``.

    ``propagator``: the TextMapPropagator for headers (default: the global one,
    looked up at each use, so ``propagate.set_global_textmap`` applies).
    """

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None,
                 propagator: TextMapPropagator | None = None) -> None:
        self.enabled = True
        self._tracer = otel_trace.get_tracer(_SCOPE, __version__,
                                             tracer_provider=tracer_provider)
        self._propagator = propagator
        self._by_labels: dict[tuple[str, str], _Series] = {}
        self._by_conn: dict[ConnectionInfo, _Series] = {}
        self._lost: set[ConnectionInfo] = set()
        self._lock = threading.Lock()
        meter = otel_metrics.get_meter(_SCOPE, __version__, meter_provider=meter_provider)
        self._process = meter.create_histogram("messaging.process.duration", "s",
                                               "Time a consumer callback took.")
        self._confirm = meter.create_histogram("geamqp.publish.confirm.duration", "s",
                                               "Time from publish to the broker's ack or nack.")
        self._recovery_time = meter.create_histogram("geamqp.connection.recovery.duration", "s",
                                                     "Time from a loss to its recovery.")
        self._thread_pending = meter.create_histogram("geamqp.thread_callbacks.pending",
                                                      "{callback}",
                                                      "Thread-callback batch sizes.")
        # Counts are plain numbers read by observable instruments at collection
        # time: a publish or delivery costs an addition, not an SDK call.
        for name, unit, doc, fields, up_down in _OBSERVED:
            create = (meter.create_observable_up_down_counter if up_down
                      else meter.create_observable_counter)
            create(name, [self._observer(fields)], unit, doc)

    def _observer(self, fields: tuple[tuple[str, str | None], ...]) -> Any:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                series = list(self._by_labels.values())
            for s in series:
                for field, variant in fields:
                    attrs = s.attrs if variant is None else s.variants[variant]
                    yield Observation(getattr(s, field), attrs)
        return observe

    # ---------------------------------------------------------------- attributes

    def _series(self, conn: ConnectionInfo) -> _Series:
        """The series of a connection not seen before (hot paths try `_by_conn` first)."""
        with self._lock:
            series = self._by_conn.get(conn)
            if series is None:
                labels = (conn.name, conn.vhost)
                series = self._by_labels.get(labels)
                if series is None:
                    series = self._by_labels[labels] = _Series(*labels)
                self._by_conn[conn] = series
            return series

    def _propagator_now(self) -> TextMapPropagator:
        return self._propagator or propagate.get_global_textmap()

    # ---------------------------------------------------------------- connections

    def connection_opened(self, conn: ConnectionInfo) -> None:
        if self.enabled:
            (self._by_conn.get(conn) or self._series(conn)).connections += 1

    def connection_lost(self, conn: ConnectionInfo, error: BaseException) -> None:
        if self.enabled and conn not in self._lost:
            self._lost.add(conn)
            (self._by_conn.get(conn) or self._series(conn)).connections -= 1

    def connection_recovered(self, conn: ConnectionInfo, downtime: float) -> None:
        if not self.enabled:
            return
        series = self._by_conn.get(conn) or self._series(conn)
        series.recovered += 1
        self._recovery_time.record(downtime, series.attrs)
        if conn in self._lost:
            self._lost.discard(conn)
            series.connections += 1

    def connection_recovery_failed(self, conn: ConnectionInfo, error: BaseException) -> None:
        if self.enabled:
            (self._by_conn.get(conn) or self._series(conn)).recovery_failed += 1

    def connection_closed(self, conn: ConnectionInfo, error: BaseException | None) -> None:
        if self.enabled:
            if conn in self._lost:
                self._lost.discard(conn)
            else:
                (self._by_conn.get(conn) or self._series(conn)).connections -= 1
        with self._lock:
            self._by_conn.pop(conn, None)

    def connection_unblocked(self, conn: ConnectionInfo, duration: float) -> None:
        if self.enabled:
            (self._by_conn.get(conn) or self._series(conn)).blocked_seconds += duration

    def thread_callbacks_pending(self, conn: ConnectionInfo, depth: int) -> None:
        if self.enabled:
            self._thread_pending.record(depth, (self._by_conn.get(conn)
                                                or self._series(conn)).attrs)

    # ---------------------------------------------------------------- channels, consumers

    def channel_opened(self, conn: ConnectionInfo, channel: int) -> None:
        if self.enabled:
            (self._by_conn.get(conn) or self._series(conn)).channels += 1

    def channel_closed(self, conn: ConnectionInfo, channel: int,
                       error: BaseException | None) -> None:
        if self.enabled:
            (self._by_conn.get(conn) or self._series(conn)).channels -= 1

    def consumer_added(self, conn: ConnectionInfo, channel: int, queue: str,
                       consumer_tag: str) -> None:
        if self.enabled:
            (self._by_conn.get(conn) or self._series(conn)).consumers += 1

    def consumer_cancelled(self, conn: ConnectionInfo, channel: int, queue: str,
                           consumer_tag: str, by_broker: bool) -> None:
        if self.enabled:
            (self._by_conn.get(conn) or self._series(conn)).consumers -= 1

    # ---------------------------------------------------------------- messages

    def message_published(self, conn: ConnectionInfo, channel: int, exchange: str,
                          routing_key: str, size: int) -> None:
        if self.enabled:
            (self._by_conn.get(conn) or self._series(conn)).sent += 1

    def publish_acked(self, conn: ConnectionInfo, channel: int, latency: float) -> None:
        if self.enabled:
            series = self._by_conn.get(conn) or self._series(conn)
            self._confirm.record(latency, series.variants["confirm_ack"])

    def publish_nacked(self, conn: ConnectionInfo, channel: int, latency: float) -> None:
        if self.enabled:
            series = self._by_conn.get(conn) or self._series(conn)
            self._confirm.record(latency, series.variants["confirm_nack"])

    def publish_returned(self, conn: ConnectionInfo, channel: int, exchange: str,
                         routing_key: str, reply_code: int) -> None:
        if self.enabled:
            (self._by_conn.get(conn) or self._series(conn)).returned += 1

    def message_delivered(self, conn: ConnectionInfo, channel: int, size: int,
                          redelivered: bool) -> None:
        if self.enabled:
            (self._by_conn.get(conn) or self._series(conn)).consumed += 1

    def delivery_acked(self, conn: ConnectionInfo, channel: int, delivery_tag: int,
                       multiple: bool) -> None:
        if self.enabled:
            (self._by_conn.get(conn) or self._series(conn)).acks += 1

    def delivery_nacked(self, conn: ConnectionInfo, channel: int, delivery_tag: int,
                        multiple: bool, requeue: bool) -> None:
        if self.enabled:
            (self._by_conn.get(conn) or self._series(conn)).nacks += 1

    def delivery_rejected(self, conn: ConnectionInfo, channel: int, delivery_tag: int,
                          requeue: bool) -> None:
        if self.enabled:
            (self._by_conn.get(conn) or self._series(conn)).rejects += 1

    # ---------------------------------------------------------------- tracing hooks

    def before_publish(self, conn: ConnectionInfo, channel: int, exchange: str,
                       routing_key: str,
                       properties: BasicProperties | None) -> BasicProperties | None:
        if not self.enabled:
            return properties
        headers = dict(properties.headers) if properties and properties.headers else {}
        propagator = self._propagator_now()
        parent = propagator.extract(headers, getter=_GETTER) if headers else None
        attributes = _message_attributes(conn, exchange, routing_key, properties, "send",
                                         "publish")
        span = self._tracer.start_span(f"publish {_destination(exchange)}",
                                       context=parent, kind=SpanKind.PRODUCER,
                                       attributes=attributes)
        try:
            if not span.get_span_context().is_valid:
                return properties  # no SDK, no parent: nothing to propagate
            propagator.inject(headers, context=otel_trace.set_span_in_context(span))
        finally:
            span.end()
        sent = copy.copy(properties) if properties is not None else BasicProperties()
        sent.headers = headers
        return sent

    def wrap_consumer(self, conn: ConnectionInfo, channel: int, queue: str,
                      callback: OnMessage) -> OnMessage:
        collector = self

        def traced(ch: Any, method: Any, properties: Any, body: bytes) -> Any:
            if not collector.enabled:
                return callback(ch, method, properties, body)
            return collector._process_traced(conn, queue, callback, ch, method, properties,
                                             body)

        traced.__wrapped__ = callback  # type: ignore[attr-defined]
        traced.__qualname__ = getattr(callback, "__qualname__", "callback")
        return traced

    def _process_traced(self, conn: ConnectionInfo, queue: str, callback: OnMessage, ch: Any,
                        method: Any, properties: Any, body: bytes) -> Any:
        headers = getattr(properties, "headers", None)
        parent = (self._propagator_now().extract(headers, getter=_GETTER)
                  if isinstance(headers, Mapping) else None)
        exchange = getattr(method, "exchange", "")
        attributes = _message_attributes(conn, exchange, getattr(method, "routing_key", ""),
                                         properties, "process", "process")
        attributes["messaging.message.body.size"] = len(body)
        tag = getattr(method, "delivery_tag", None)
        if tag is not None:
            attributes["messaging.rabbitmq.message.delivery_tag"] = tag
        if queue:
            attributes["messaging.destination.subscription.name"] = queue
        start = time.perf_counter()
        with self._tracer.start_as_current_span(
                f"process {_destination(exchange)}", context=parent, kind=SpanKind.CONSUMER,
                attributes=attributes, record_exception=False,
                set_status_on_exception=False) as span:
            try:
                return callback(ch, method, properties, body)
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.set_attribute("error.type", type(exc).__qualname__)
                raise
            finally:
                self._process.record(time.perf_counter() - start,
                                     (self._by_conn.get(conn) or self._series(conn)).attrs)


def _message_attributes(conn: ConnectionInfo, exchange: str, routing_key: str,
                        properties: Any, operation_type: str,
                        operation_name: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": _SYSTEM,
        "messaging.operation.type": operation_type,
        "messaging.operation.name": operation_name,
        "messaging.destination.name": exchange,
    }
    if routing_key:
        attributes["messaging.rabbitmq.destination.routing_key"] = routing_key
    if properties is not None:
        if properties.message_id:
            attributes["messaging.message.id"] = properties.message_id
        if properties.correlation_id:
            attributes["messaging.message.conversation_id"] = properties.correlation_id
    if conn.host:
        attributes["server.address"] = conn.host
        attributes["server.port"] = conn.port
    return attributes


class GeamqpInstrumentor:
    """OpenTelemetry's instrumentor shape: ``instrument()`` / ``uninstrument()``.

    One instance is shared process-wide (as OpenTelemetry's instrumentors are);
    calling `instrument` again while instrumented does nothing.
    """

    _instance: GeamqpInstrumentor | None = None
    _collector: OtelCollector | None

    def __new__(cls) -> GeamqpInstrumentor:
        if cls._instance is None:
            instance = super().__new__(cls)
            instance._collector = None
            cls._instance = instance
        return cls._instance

    @property
    def is_instrumented_by_opentelemetry(self) -> bool:
        return self._collector is not None

    @property
    def collector(self) -> OtelCollector | None:
        """The collector new connections get while instrumented."""
        return self._collector

    def instrumentation_dependencies(self) -> Iterable[str]:
        return ("geamqp >= 0.1",)

    def instrument(self, tracer_provider: Any = None, meter_provider: Any = None,
                   propagator: TextMapPropagator | None = None, **_: Any) -> None:
        """Trace and measure connections made from now on. Providers default to
        the global ones; ``propagator`` to the global text-map propagator."""
        if self._collector is not None:
            return
        self._collector = OtelCollector(tracer_provider, meter_provider, propagator)
        add_default_collector(self._collector)

    def uninstrument(self, **_: Any) -> None:
        """Stop: new connections get no OpenTelemetry collector, and the one of
        connections made before passes everything through untouched."""
        collector, self._collector = self._collector, None
        if collector is not None:
            collector.enabled = False
            remove_default_collector(collector)
