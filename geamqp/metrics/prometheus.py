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

Cost: the client's events only add to plain integers kept per (connection,
vhost) pair; prometheus-client reads them when scraped (a custom collector in
the registry), so a publish or delivery costs about as much as a dictionary
look-up and two additions, not a lock per metric. A scrape taken while the hub
updates may see a histogram's sum one observation ahead of its buckets.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.utils import floatToGoString
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("geamqp.metrics.prometheus needs prometheus-client: "
                      "pip install 'geamqp[prometheus]'") from exc

from . import Collector, ConnectionInfo

__all__ = ["PrometheusCollector"]

_LABELS = ["connection", "vhost"]
_OVERFLOW = "other"
_UNNAMED = "unnamed"
# Confirm round trips on a LAN run from ~0.2 ms to seconds under an alarm.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0)
_RECOVERY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# (attribute of _Series, metric name without namespace, help)
_COUNTERS = (
    ("opened", "connections_opened", "Connections opened."),
    ("closed", "connections_closed", "Connections closed for good."),
    ("losses", "connection_losses", "Links lost without close()."),
    ("recoveries", "connection_recoveries", "Connections recovered."),
    ("recovery_failures", "connection_recovery_failures", "Recoveries that gave up."),
    ("blocked_seconds", "connection_blocked_seconds", "Time spent blocked by the broker."),
    ("channels_opened", "channels_opened", "Channels opened."),
    ("channels_closed", "channels_closed", "Channels closed."),
    ("published", "published_messages", "Messages published."),
    ("bytes_out", "published_bytes", "Body bytes published."),
    ("returned", "returned_messages", "Messages returned as unroutable."),
    ("delivered", "delivered_messages", "Messages delivered to the client."),
    ("bytes_in", "delivered_bytes", "Body bytes delivered."),
    ("redelivered", "redelivered_messages", "Deliveries flagged redelivered by the broker."),
    ("acks", "acks", "basic.ack frames sent."),
    ("nacks", "nacks", "basic.nack frames sent."),
    ("rejects", "rejects", "basic.reject frames sent."),
)
_GAUGES = (
    ("connections", "connections", "Connections open (not lost or closed)."),
    ("blocked", "connection_blocked", "1 while the broker blocks the connection."),
    ("thread_pending", "thread_callbacks_pending",
     "Callbacks from other threads in the last batch."),
    ("channels", "channels", "Channels open."),
    ("consumers", "consumers", "Consumers registered."),
)
_HISTOGRAMS = (
    ("recovery_seconds", "connection_recovery_seconds", "Time from a loss to its recovery.",
     _RECOVERY_BUCKETS),
    ("confirm_latency", "confirm_latency_seconds",
     "Time from publish to the broker's ack or nack.", _LATENCY_BUCKETS),
)


class _Histogram:
    """Bucket counts (non-cumulative), sum and count of one series."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        buckets: list[tuple[str, float]] = []
        seen = 0
        for bound, n in zip((*map(floatToGoString, self.bounds), "+Inf"), self.counts,
                            strict=True):
            seen += n
            buckets.append((bound, seen))
        return buckets


class _Series:
    """Every value kept for one (connection, vhost) label pair: plain numbers."""

    __slots__ = (*(a for a, _, _ in _COUNTERS), *(a for a, _, _ in _GAUGES),
                 *(a for a, _, _, _ in _HISTOGRAMS), "confirmed_ack", "confirmed_nack")

    opened: int
    closed: int
    losses: int
    recoveries: int
    recovery_failures: int
    blocked_seconds: float
    channels_opened: int
    channels_closed: int
    published: int
    bytes_out: int
    returned: int
    delivered: int
    bytes_in: int
    redelivered: int
    acks: int
    nacks: int
    rejects: int
    connections: int
    blocked: int
    thread_pending: int
    channels: int
    consumers: int
    confirmed_ack: int
    confirmed_nack: int
    recovery_seconds: _Histogram
    confirm_latency: _Histogram

    def __init__(self) -> None:
        for attribute, _, _ in (*_COUNTERS, *_GAUGES):
            setattr(self, attribute, 0)
        self.confirmed_ack = self.confirmed_nack = 0
        for attribute, _, _, bounds in _HISTOGRAMS:
            setattr(self, attribute, _Histogram(bounds))


class _Exposition:
    """The custom collector prometheus-client scrapes: families built from `_Series`."""

    def __init__(self, owner: PrometheusCollector, namespace: str) -> None:
        self._owner = owner
        self._prefix = f"{namespace}_" if namespace else ""

    def describe(self) -> list[Metric]:
        return list(self._families({}))

    def collect(self) -> list[Metric]:
        return list(self._families(self._owner._snapshot()))

    def _families(self, series: dict[tuple[str, str], _Series]) -> Iterator[Metric]:
        p = self._prefix
        for attribute, name, doc in _COUNTERS:
            counter = CounterMetricFamily(p + name, doc, labels=_LABELS)
            for labels, s in series.items():
                counter.add_metric(labels, getattr(s, attribute))
            yield counter
        confirmed = CounterMetricFamily(p + "confirmed_messages", "Publisher confirms by "
                                        "outcome.", labels=[*_LABELS, "outcome"])
        for labels, s in series.items():
            confirmed.add_metric([*labels, "ack"], s.confirmed_ack)
            confirmed.add_metric([*labels, "nack"], s.confirmed_nack)
        yield confirmed
        for attribute, name, doc in _GAUGES:
            gauge = GaugeMetricFamily(p + name, doc, labels=_LABELS)
            for labels, s in series.items():
                gauge.add_metric(labels, getattr(s, attribute))
            yield gauge
        for attribute, name, doc, _ in _HISTOGRAMS:
            family = HistogramMetricFamily(p + name, doc, labels=_LABELS)
            for labels, s in series.items():
                histogram: _Histogram = getattr(s, attribute)
                family.add_metric(list(labels), histogram.cumulative(), histogram.total)
            yield family


class PrometheusCollector(Collector):
    """Counters, gauges and histograms, exposed through a prometheus-client registry.

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
        self._max_labels = max_connection_labels
        self._by_labels: dict[tuple[str, str], _Series] = {}
        self._by_conn: dict[ConnectionInfo, _Series] = {}
        self._lost: set[ConnectionInfo] = set()  # lost and not (yet) recovered
        self._lock = threading.Lock()
        self.registry = REGISTRY if registry is None else registry
        self.registry.register(_Exposition(self, namespace))

    def _snapshot(self) -> dict[tuple[str, str], _Series]:
        with self._lock:
            return dict(self._by_labels)

    def _series(self, conn: ConnectionInfo) -> _Series:
        """The series of a connection not seen before (hot paths try `_by_conn` first)."""
        with self._lock:
            series = self._by_conn.get(conn)
            if series is not None:
                return series
            labels = (conn.name or _UNNAMED, conn.vhost)
            if labels not in self._by_labels and len(self._by_labels) >= self._max_labels:
                labels = (_OVERFLOW, conn.vhost)  # vhosts are few; names may not be
            series = self._by_labels.get(labels)
            if series is None:
                series = self._by_labels[labels] = _Series()
            self._by_conn[conn] = series
            return series

    # ---------------------------------------------------------------- connections

    def connection_opened(self, conn: ConnectionInfo) -> None:
        series = self._by_conn.get(conn) or self._series(conn)
        series.opened += 1
        series.connections += 1

    def connection_lost(self, conn: ConnectionInfo, error: BaseException) -> None:
        series = self._by_conn.get(conn) or self._series(conn)
        series.losses += 1
        if conn not in self._lost:
            self._lost.add(conn)
            series.connections -= 1

    def connection_recovered(self, conn: ConnectionInfo, downtime: float) -> None:
        series = self._by_conn.get(conn) or self._series(conn)
        series.recoveries += 1
        series.recovery_seconds.observe(downtime)
        if conn in self._lost:
            self._lost.discard(conn)
            series.connections += 1

    def connection_recovery_failed(self, conn: ConnectionInfo, error: BaseException) -> None:
        (self._by_conn.get(conn) or self._series(conn)).recovery_failures += 1

    def connection_closed(self, conn: ConnectionInfo, error: BaseException | None) -> None:
        series = self._by_conn.get(conn) or self._series(conn)
        series.closed += 1
        if conn in self._lost:  # already off the gauge since connection_lost
            self._lost.discard(conn)
        else:
            series.connections -= 1
        with self._lock:
            self._by_conn.pop(conn, None)

    def connection_blocked(self, conn: ConnectionInfo, reason: str) -> None:
        (self._by_conn.get(conn) or self._series(conn)).blocked = 1

    def connection_unblocked(self, conn: ConnectionInfo, duration: float) -> None:
        series = self._by_conn.get(conn) or self._series(conn)
        series.blocked = 0
        series.blocked_seconds += duration

    def thread_callbacks_pending(self, conn: ConnectionInfo, depth: int) -> None:
        (self._by_conn.get(conn) or self._series(conn)).thread_pending = depth

    # ---------------------------------------------------------------- channels

    def channel_opened(self, conn: ConnectionInfo, channel: int) -> None:
        series = self._by_conn.get(conn) or self._series(conn)
        series.channels_opened += 1
        series.channels += 1

    def channel_closed(self, conn: ConnectionInfo, channel: int,
                       error: BaseException | None) -> None:
        series = self._by_conn.get(conn) or self._series(conn)
        series.channels_closed += 1
        series.channels -= 1

    # ---------------------------------------------------------------- publishing

    def message_published(self, conn: ConnectionInfo, channel: int, exchange: str,
                          routing_key: str, size: int) -> None:
        series = self._by_conn.get(conn) or self._series(conn)
        series.published += 1
        series.bytes_out += size

    def publish_acked(self, conn: ConnectionInfo, channel: int, latency: float) -> None:
        series = self._by_conn.get(conn) or self._series(conn)
        series.confirmed_ack += 1
        series.confirm_latency.observe(latency)

    def publish_nacked(self, conn: ConnectionInfo, channel: int, latency: float) -> None:
        series = self._by_conn.get(conn) or self._series(conn)
        series.confirmed_nack += 1
        series.confirm_latency.observe(latency)

    def publish_returned(self, conn: ConnectionInfo, channel: int, exchange: str,
                         routing_key: str, reply_code: int) -> None:
        (self._by_conn.get(conn) or self._series(conn)).returned += 1

    # ---------------------------------------------------------------- consuming

    def consumer_added(self, conn: ConnectionInfo, channel: int, queue: str,
                       consumer_tag: str) -> None:
        (self._by_conn.get(conn) or self._series(conn)).consumers += 1

    def consumer_cancelled(self, conn: ConnectionInfo, channel: int, queue: str,
                           consumer_tag: str, by_broker: bool) -> None:
        (self._by_conn.get(conn) or self._series(conn)).consumers -= 1

    def message_delivered(self, conn: ConnectionInfo, channel: int, size: int,
                          redelivered: bool) -> None:
        series = self._by_conn.get(conn) or self._series(conn)
        series.delivered += 1
        series.bytes_in += size
        if redelivered:
            series.redelivered += 1

    def delivery_acked(self, conn: ConnectionInfo, channel: int, delivery_tag: int,
                       multiple: bool) -> None:
        (self._by_conn.get(conn) or self._series(conn)).acks += 1

    def delivery_nacked(self, conn: ConnectionInfo, channel: int, delivery_tag: int,
                        multiple: bool, requeue: bool) -> None:
        (self._by_conn.get(conn) or self._series(conn)).nacks += 1

    def delivery_rejected(self, conn: ConnectionInfo, channel: int, delivery_tag: int,
                          requeue: bool) -> None:
        (self._by_conn.get(conn) or self._series(conn)).rejects += 1
