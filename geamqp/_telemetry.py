"""A connection's view of its metrics collector (`geamqp.metrics`).

The collector is fixed at connect: ``connect(..., metrics=collector)``, else the
process-wide default. Every handler is looked up once here, with
`metrics.event_handler`: an event that no collector overrides is None, so the
client's hot paths pay one ``is None`` test for it, and a connection without a
collector pays that and nothing else (benchmarks/metrics_overhead.py).

`NO_TELEMETRY` stands in where nothing is to be reported: the supervisor's
private channel, connections without a collector.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .metrics import Collector, ConnectionInfo, event_handler, get_default_collector

__all__ = ["NO_TELEMETRY", "Telemetry", "telemetry_for"]

Handler = Callable[..., Any] | None

_EVENTS = {
    "opened": "connection_opened", "lost": "connection_lost",
    "recovered": "connection_recovered", "recovery_failed": "connection_recovery_failed",
    "closed": "connection_closed", "blocked": "connection_blocked",
    "unblocked": "connection_unblocked", "thread_pending": "thread_callbacks_pending",
    "channel_opened": "channel_opened", "channel_closed": "channel_closed",
    "published": "message_published", "acked": "publish_acked", "nacked": "publish_nacked",
    "returned": "publish_returned", "consumer_added": "consumer_added",
    "consumer_cancelled": "consumer_cancelled", "delivered": "message_delivered",
    "delivery_acked": "delivery_acked", "delivery_nacked": "delivery_nacked",
    "delivery_rejected": "delivery_rejected",
}


class Telemetry:
    """Handlers of one connection's collector; each None when nobody listens."""

    __slots__ = ("acked", "before_publish", "blocked", "channel_closed", "channel_opened",
                 "closed", "consumer_added", "consumer_cancelled", "delivered",
                 "delivery_acked", "delivery_nacked", "delivery_rejected", "info", "lost",
                 "nacked", "opened", "published", "recovered", "recovery_failed", "returned",
                 "thread_pending", "times_confirms", "unblocked", "wrap_consumer")

    opened: Handler
    lost: Handler
    recovered: Handler
    recovery_failed: Handler
    closed: Handler
    blocked: Handler
    unblocked: Handler
    thread_pending: Handler
    channel_opened: Handler
    channel_closed: Handler
    published: Handler
    acked: Handler
    nacked: Handler
    returned: Handler
    consumer_added: Handler
    consumer_cancelled: Handler
    delivered: Handler
    delivery_acked: Handler
    delivery_nacked: Handler
    delivery_rejected: Handler
    before_publish: Handler
    wrap_consumer: Handler
    times_confirms: bool
    info: ConnectionInfo

    def __init__(self, collector: Collector | None, info: ConnectionInfo) -> None:
        self.info = info
        for slot, event in _EVENTS.items():
            setattr(self, slot, event_handler(collector, event))
        self.before_publish = (
            collector.before_publish if collector is not None and collector.traces_publish()
            else None)
        self.wrap_consumer = (
            collector.wrap_consumer if collector is not None and collector.wraps_consumers()
            else None)
        # A publish is stamped with its send time only when its confirm is timed.
        self.times_confirms = self.acked is not None or self.nacked is not None


def telemetry_for(metrics: Collector | None, name: str | None, vhost: str) -> Telemetry:
    """The telemetry of a new connection (`metrics` given to connect, or the default)."""
    if metrics is not None and not isinstance(metrics, Collector):
        raise TypeError(f"metrics must be a geamqp.metrics.Collector, not "
                        f"{type(metrics).__name__}")
    collector = metrics if metrics is not None else get_default_collector()
    return Telemetry(collector, ConnectionInfo(name or "", vhost))


NO_TELEMETRY = Telemetry(None, ConnectionInfo("", ""))
