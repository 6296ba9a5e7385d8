"""A `Collector` that keeps Prometheus metrics (``pip install geamqp[prometheus]``).

    from prometheus_client import start_http_server
    from geamqp.metrics.prometheus import PrometheusCollector

    conn = geamqp.connect(url, name="billing", metrics=PrometheusCollector())
    start_http_server(9100)

Every series is labelled with ``connection`` (the ``name=`` given to
``connect()``, "unnamed" without one) and ``vhost``, and nothing else by
default: no queue, exchange or routing-key labels, whose number has no bound.
The number of distinct (connection, vhost) pairs is bounded too
(``max_connection_labels``, 100): past it, further connections are counted
under ``connection="other"``, so a program that names each connection
uniquely cannot make the registry grow without end.

Metric names (with the default ``namespace="geamqp"``; counters get
``_total`` in the exposition):

=================================================  =========  ==========================
name                                               type       what
=================================================  =========  ==========================
geamqp_connections                                 gauge      connections open (not lost)
geamqp_connections_opened / _closed                counter    connections opened / closed
geamqp_connection_losses / _recoveries             counter    links lost / recovered
geamqp_connection_recovery_failures                counter    recoveries given up
geamqp_connection_recovery_seconds                 histogram  downtime of each recovery
geamqp_connection_blocked                          gauge      1 while the broker blocks it
geamqp_connection_blocked_seconds                  counter    total time blocked
geamqp_thread_callbacks_pending                    gauge      last thread-callback batch size
geamqp_channels                                    gauge      channels open
geamqp_channels_opened / _closed                   counter    channels opened / closed
geamqp_published_messages / _published_bytes       counter    publishes and body bytes
geamqp_confirmed_messages{outcome=ack|nack}        counter    confirm outcomes
geamqp_confirm_latency_seconds                     histogram  publish to ack/nack
geamqp_returned_messages                           counter    basic.return (unroutable)
geamqp_consumers                                   gauge      consumers registered
geamqp_delivered_messages / _delivered_bytes       counter    deliveries and body bytes
geamqp_redelivered_messages                        counter    deliveries flagged redelivered
geamqp_acks / _nacks / _rejects                    counter    settlement frames sent
=================================================  =========  ==========================
"""

from __future__ import annotations

import threading
from typing import Any

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("geamqp.metrics.prometheus needs prometheus-client: "
                      "pip install 'geamqp[prometheus]'") from exc

from . import Collector, ConnectionInfo

__all__ = ["PrometheusCollector"]

_LABELS = ("connection", "vhost")
_OVERFLOW = "other"
_UNNAMED = "unnamed"
# Confirm round trips on a LAN run from ~0.2 ms to seconds under an alarm.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0)
_RECOVERY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _Series:
    """The children of every metric for one (connection, vhost) pair."""

    __slots__ = ("acks", "blocked", "blocked_seconds", "bytes_in", "bytes_out", "channels",
                 "channels_closed", "channels_opened", "closed", "confirm_latency",
                 "confirmed_ack", "confirmed_nack", "connections", "consumers", "delivered",
                 "losses", "nacks", "opened",
                 "published", "recoveries", "recovery_failures", "recovery_seconds", "redelivered",
                 "rejects", "returned", "thread_pending")

    acks: Any
    blocked: Any
    blocked_seconds: Any
    bytes_in: Any
    bytes_out: Any
    channels: Any
    channels_closed: Any
    channels_opened: Any
    closed: Any
    confirm_latency: Any
    confirmed_ack: Any
    confirmed_nack: Any
    connections: Any
    consumers: Any
    delivered: Any
    losses: Any
    nacks: Any
    opened: Any
    published: Any
    recoveries: Any
    recovery_failures: Any
    recovery_seconds: Any
    redelivered: Any
    rejects: Any
    returned: Any
    thread_pending: Any

    def __init__(self, metrics: dict[str, Any], labels: tuple[str, str]) -> None:
        for slot in self.__slots__:
            if slot not in ("confirmed_ack", "confirmed_nack"):
                setattr(self, slot, metrics[slot].labels(*labels))
        self.confirmed_ack = metrics["confirmed"].labels(*labels, "ack")
        self.confirmed_nack = metrics["confirmed"].labels(*labels, "nack")


class PrometheusCollector(Collector):
    """Counters, gauges and histograms in a prometheus-client registry.

    ``registry``: where the metrics are registered (default: prometheus-client's
    global ``REGISTRY``; one registry takes one collector per namespace).
    ``namespace``: the metric name prefix. ``max_connection_labels``: how many
    distinct (connection, vhost) label pairs are kept before further ones go
    to ``connection="other"``.
    """

    def __init__(self, registry: CollectorRegistry | None = None, namespace: str = "geamqp",
                 *, max_connection_labels: int = 100) -> None:
        if max_connection_labels < 1:
            raise ValueError(f"max_connection_labels must be at least 1, "
                             f"not {max_connection_labels}")
        self._registry = REGISTRY if registry is None else registry
        self._max_labels = max_connection_labels
        self._metrics = self._define(namespace)
        self._by_labels: dict[tuple[str, str], _Series] = {}
        self._by_conn: dict[ConnectionInfo, _Series] = {}
        self._lost: set[ConnectionInfo] = set()  # lost and not (yet) recovered
        self._lock = threading.Lock()

    def _define(self, ns: str) -> dict[str, Any]:
        reg = self._registry

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, (*_LABELS, *extra), namespace=ns, registry=reg)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, _LABELS, namespace=ns, registry=reg)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, _LABELS, namespace=ns, registry=reg, buckets=buckets)

        return {
            "connections": gauge("connections", "Connections open (not lost or closed)."),
            "opened": counter("connections_opened", "Connections opened."),
            "closed": counter("connections_closed", "Connections closed for good."),
            "losses": counter("connection_losses", "Links lost without close()."),
            "recoveries": counter("connection_recoveries", "Connections recovered."),
            "recovery_failures": counter("connection_recovery_failures",
                                         "Recoveries that gave up."),
            "recovery_seconds": histogram("connection_recovery_seconds",
                                          "Time from a loss to its recovery.",
                                          _RECOVERY_BUCKETS),
            "blocked": gauge("connection_blocked", "1 while the broker blocks the connection."),
            "blocked_seconds": counter("connection_blocked_seconds",
                                       "Time spent blocked by the broker."),
            "thread_pending": gauge("thread_callbacks_pending",
                                    "Callbacks from other threads in the last batch."),
            "channels": gauge("channels", "Channels open."),
            "channels_opened": counter("channels_opened", "Channels opened."),
            "channels_closed": counter("channels_closed", "Channels closed."),
            "published": counter("published_messages", "Messages published."),
            "bytes_out": counter("published_bytes", "Body bytes published."),
            "confirmed": counter("confirmed_messages", "Publisher confirms by outcome.",
                                 ("outcome",)),
            "confirm_latency": histogram("confirm_latency_seconds",
                                         "Time from publish to the broker's ack or nack.",
                                         _LATENCY_BUCKETS),
            "returned": counter("returned_messages", "Messages returned as unroutable."),
            "consumers": gauge("consumers", "Consumers registered."),
            "delivered": counter("delivered_messages", "Messages delivered to the client."),
            "bytes_in": counter("delivered_bytes", "Body bytes delivered."),
            "redelivered": counter("redelivered_messages",
                                   "Deliveries flagged redelivered by the broker."),
            "acks": counter("acks", "basic.ack frames sent."),
            "nacks": counter("nacks", "basic.nack frames sent."),
            "rejects": counter("rejects", "basic.reject frames sent."),
        }

    def _series(self, conn: ConnectionInfo) -> _Series:
        series = self._by_conn.get(conn)
        if series is not None:
            return series
        with self._lock:
            labels = (conn.name or _UNNAMED, conn.vhost)
            series = self._by_labels.get(labels)
            if series is None:
                if len(self._by_labels) >= self._max_labels:
                    labels = (_OVERFLOW, conn.vhost)  # vhosts are few; names may not be
                    series = self._by_labels.get(labels)
                if series is None:
                    series = _Series(self._metrics, labels)
                    self._by_labels[labels] = series
            self._by_conn[conn] = series
            return series

    # ---------------------------------------------------------------- connections

    def connection_opened(self, conn: ConnectionInfo) -> None:
        series = self._series(conn)
        series.opened.inc()
        series.connections.inc()

    def connection_lost(self, conn: ConnectionInfo, error: BaseException) -> None:
        series = self._series(conn)
        series.losses.inc()
        if conn not in self._lost:
            self._lost.add(conn)
            series.connections.dec()

    def connection_recovered(self, conn: ConnectionInfo, downtime: float) -> None:
        series = self._series(conn)
        series.recoveries.inc()
        series.recovery_seconds.observe(downtime)
        if conn in self._lost:
            self._lost.discard(conn)
            series.connections.inc()

    def connection_recovery_failed(self, conn: ConnectionInfo, error: BaseException) -> None:
        self._series(conn).recovery_failures.inc()

    def connection_closed(self, conn: ConnectionInfo, error: BaseException | None) -> None:
        series = self._series(conn)
        series.closed.inc()
        if conn in self._lost:  # already off the gauge since connection_lost
            self._lost.discard(conn)
        else:
            series.connections.dec()
        with self._lock:
            self._by_conn.pop(conn, None)

    def connection_blocked(self, conn: ConnectionInfo, reason: str) -> None:
        self._series(conn).blocked.set(1)

    def connection_unblocked(self, conn: ConnectionInfo, duration: float) -> None:
        series = self._series(conn)
        series.blocked.set(0)
        series.blocked_seconds.inc(duration)

    def thread_callbacks_pending(self, conn: ConnectionInfo, depth: int) -> None:
        self._series(conn).thread_pending.set(depth)

    # ---------------------------------------------------------------- channels

    def channel_opened(self, conn: ConnectionInfo, channel: int) -> None:
        series = self._series(conn)
        series.channels_opened.inc()
        series.channels.inc()

    def channel_closed(self, conn: ConnectionInfo, channel: int,
                       error: BaseException | None) -> None:
        series = self._series(conn)
        series.channels_closed.inc()
        series.channels.dec()

    # ---------------------------------------------------------------- publishing

    def message_published(self, conn: ConnectionInfo, channel: int, exchange: str,
                          routing_key: str, size: int) -> None:
        series = self._series(conn)
        series.published.inc()
        series.bytes_out.inc(size)

    def publish_acked(self, conn: ConnectionInfo, channel: int, latency: float) -> None:
        series = self._series(conn)
        series.confirmed_ack.inc()
        series.confirm_latency.observe(latency)

    def publish_nacked(self, conn: ConnectionInfo, channel: int, latency: float) -> None:
        series = self._series(conn)
        series.confirmed_nack.inc()
        series.confirm_latency.observe(latency)

    def publish_returned(self, conn: ConnectionInfo, channel: int, exchange: str,
                         routing_key: str, reply_code: int) -> None:
        self._series(conn).returned.inc()

    # ---------------------------------------------------------------- consuming

    def consumer_added(self, conn: ConnectionInfo, channel: int, queue: str,
                       consumer_tag: str) -> None:
        self._series(conn).consumers.inc()

    def consumer_cancelled(self, conn: ConnectionInfo, channel: int, queue: str,
                           consumer_tag: str, by_broker: bool) -> None:
        self._series(conn).consumers.dec()

    def message_delivered(self, conn: ConnectionInfo, channel: int, size: int,
                          redelivered: bool) -> None:
        series = self._series(conn)
        series.delivered.inc()
        series.bytes_in.inc(size)
        if redelivered:
            series.redelivered.inc()

    def delivery_acked(self, conn: ConnectionInfo, channel: int, delivery_tag: int,
                       multiple: bool) -> None:
        self._series(conn).acks.inc()

    def delivery_nacked(self, conn: ConnectionInfo, channel: int, delivery_tag: int,
                        multiple: bool, requeue: bool) -> None:
        self._series(conn).nacks.inc()

    def delivery_rejected(self, conn: ConnectionInfo, channel: int, delivery_tag: int,
                          requeue: bool) -> None:
        self._series(conn).rejects.inc()
