"""Metrics and tracing hooks: the `Collector` interface the client reports to.

A collector is told about events as they happen: connections opened, lost,
recovered and closed; channels; every publish and its confirm outcome; every
delivery and the client's acks; consumers; blocked periods; the depth of the
thread-callback queue. `Collector` is a base class whose methods all do
nothing: override the ones you need. Two real ones ship as optional extras,
each imported only when used: `geamqp.metrics.prometheus.PrometheusCollector`
(``geamqp[prometheus]``) and `geamqp.otel.GeamqpInstrumentor` (``geamqp[otel]``).

Which collector a connection uses is fixed when it is made:
``geamqp.connect(..., metrics=collector)``, or else the process-wide default
set here (`set_default_collector`, `add_default_collector`). With neither,
the connection has no collector and its hot paths pay one ``is None`` test.

Rules for implementers (the client relies on them):

- Methods run in the hub's OS thread, inline on the client's own greenlets
  (the reader, a dispatcher, the publishing greenlet). They must be quick and
  must not block, not even cooperatively; they must not raise (the client
  calls them unguarded on hot paths, so an exception escapes to the caller).
- Arguments are what the client already holds: the connection's
  `ConnectionInfo` (the same object for the connection's whole life, across
  recoveries, so it can key a cache), the channel number, names, sizes in
  bytes, durations in seconds (floats). Nothing is built per message for a
  collector's sake.
- Labels should stay bounded: a queue or routing-key label per message is the
  collector's choice, never the default.

Two hooks serve tracing, and are called only when a collector overrides them
(`traces_publish()` / `wraps_consumers()` tell the client so, once, at
connect): `before_publish` may return new properties (e.g. with a
``traceparent`` header), and `wrap_consumer` may wrap a consumer's callback
once, when it is registered.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..protocol.properties import BasicProperties

__all__ = [
    "Collector",
    "ConnectionInfo",
    "MultiCollector",
    "OnMessage",
    "add_default_collector",
    "event_handler",
    "get_default_collector",
    "remove_default_collector",
    "set_default_collector",
]

# (channel, method, properties, body): a consumer callback's signature.
OnMessage = Callable[[Any, Any, Any, bytes], Any]


class ConnectionInfo:
    """Who a collector call is about: one per `Connection`, for its whole life.

    ``name`` is the ``name=`` given to ``connect()`` ("" when none), ``vhost``
    the virtual host. ``host`` and ``port`` are those of the broker the current
    link is attached to; the client updates them before it reports
    `Collector.connection_opened` / `Collector.connection_recovered` (with a
    list of brokers, a recovery may land on another one). Identity (not
    equality) tells connections apart: two connections with one name are two
    objects.
    """

    __slots__ = ("__weakref__", "host", "name", "port", "vhost")

    def __init__(self, name: str, vhost: str, host: str = "", port: int = 0) -> None:
        self.name = name
        self.vhost = vhost
        self.host = host
        self.port = port

    def __repr__(self) -> str:
        return (f"ConnectionInfo(name={self.name!r}, vhost={self.vhost!r}, "
                f"host={self.host!r}, port={self.port})")


class Collector:
    """Receives the client's events; every method does nothing until overridden.

    Durations are seconds (float), sizes bytes (int), ``channel`` the channel
    number. ``error`` arguments are the exception that ended something, or
    None for an orderly end.
    """

    # ---------------------------------------------------------------- connections

    def connection_opened(self, conn: ConnectionInfo) -> None:
        """The first link of a connection is open (after the handshake)."""

    def connection_lost(self, conn: ConnectionInfo, error: BaseException) -> None:
        """The link was lost without ``close()``; recovery starts (only with
        ``recover=True``; otherwise `connection_closed` follows at once)."""

    def connection_recovered(self, conn: ConnectionInfo, downtime: float) -> None:
        """Recovery finished (link, channels, topology and consumers restored);
        ``downtime`` is the time since `connection_lost`."""

    def connection_recovery_failed(self, conn: ConnectionInfo, error: BaseException) -> None:
        """Recovery gave up (attempts or deadline exhausted, or a refusal that is
        not retried); `connection_closed` follows."""

    def connection_closed(self, conn: ConnectionInfo, error: BaseException | None) -> None:
        """The connection is closed for good: by ``close()`` (error None or
        `ConnectionClosedByClient`), or after a loss that is not recovered.
        Called once per connection, last; a collector may drop what it keeps
        for ``conn``."""

    def connection_blocked(self, conn: ConnectionInfo, reason: str) -> None:
        """The broker sent connection.blocked (a resource alarm): publishes wait."""

    def connection_unblocked(self, conn: ConnectionInfo, duration: float) -> None:
        """connection.unblocked, or the end of a blocked link (loss or close):
        ``duration`` is how long the connection was blocked."""

    def thread_callbacks_pending(self, conn: ConnectionInfo, depth: int) -> None:
        """The hub is about to run ``depth`` callbacks queued by other OS threads
        (``add_callback_threadsafe`` and calls marshalled from threads). Called
        once per batch, not per callback, and only when ``depth > 0``."""

    # ---------------------------------------------------------------- channels

    def channel_opened(self, conn: ConnectionInfo, channel: int) -> None:
        """A channel is open (by ``connection.channel()``; not again on recovery)."""

    def channel_closed(self, conn: ConnectionInfo, channel: int,
                       error: BaseException | None) -> None:
        """A channel is closed for good: by ``close()`` (None), by the broker
        (`ChannelClosedByBroker`), or with its connection."""

    # ---------------------------------------------------------------- publishing

    def message_published(self, conn: ConnectionInfo, channel: int, exchange: str,
                          routing_key: str, size: int) -> None:
        """One basic.publish was queued for the wire; ``size`` is the body's length."""

    def publish_acked(self, conn: ConnectionInfo, channel: int, latency: float) -> None:
        """The broker acked one publish (confirm mode); called once per message,
        also for each message a ``multiple`` ack covers. ``latency`` runs from
        `message_published` to the ack's arrival."""

    def publish_nacked(self, conn: ConnectionInfo, channel: int, latency: float) -> None:
        """The broker nacked one publish (confirm mode); as `publish_acked`."""

    def publish_returned(self, conn: ConnectionInfo, channel: int, exchange: str,
                         routing_key: str, reply_code: int) -> None:
        """basic.return: a mandatory publish could not be routed (312 NO_ROUTE).
        In confirm mode `publish_acked` follows for the same message."""

    # ---------------------------------------------------------------- consuming

    def consumer_added(self, conn: ConnectionInfo, channel: int, queue: str,
                       consumer_tag: str) -> None:
        """basic.consume-ok: a consumer started (not again on recovery)."""

    def consumer_cancelled(self, conn: ConnectionInfo, channel: int, queue: str,
                           consumer_tag: str, by_broker: bool) -> None:
        """A consumer ended, once per `consumer_added`: by ``basic_cancel`` or
        with its channel or connection (by_broker False), or by a basic.cancel
        from the broker, e.g. its queue was deleted (True). Not called when a
        consumer is only suspended by a connection loss and then recovered."""

    def message_delivered(self, conn: ConnectionInfo, channel: int, size: int,
                          redelivered: bool) -> None:
        """A message arrived for a consumer or a ``basic_get`` (before the
        callback runs); ``size`` is the body's length."""

    def delivery_acked(self, conn: ConnectionInfo, channel: int, delivery_tag: int,
                       multiple: bool) -> None:
        """The client sent basic.ack (one frame: with ``multiple`` it settles
        every delivery up to ``delivery_tag``)."""

    def delivery_nacked(self, conn: ConnectionInfo, channel: int, delivery_tag: int,
                        multiple: bool, requeue: bool) -> None:
        """The client sent basic.nack."""

    def delivery_rejected(self, conn: ConnectionInfo, channel: int, delivery_tag: int,
                          requeue: bool) -> None:
        """The client sent basic.reject."""

    # ---------------------------------------------------------------- tracing hooks

    def before_publish(self, conn: ConnectionInfo, channel: int, exchange: str,
                       routing_key: str,
                       properties: BasicProperties | None) -> BasicProperties | None:
        """Called just before a publish is encoded, only when overridden
        (`traces_publish`); returns the properties to send. It must not
        mutate ``properties`` (the caller may reuse the object for every
        message): return a copy instead."""
        return properties

    def wrap_consumer(self, conn: ConnectionInfo, channel: int, queue: str,
                      callback: OnMessage) -> OnMessage:
        """Called once when a consumer is registered, only when overridden
        (`wraps_consumers`); returns the callable the dispatcher runs for each
        delivery, with the callback's signature ``(channel, method, properties,
        body)``. The wrapper keeps working across recoveries."""
        return callback

    def traces_publish(self) -> bool:
        """Whether `before_publish` is overridden: the client asks once, at connect."""
        return type(self).before_publish is not Collector.before_publish

    def wraps_consumers(self) -> bool:
        """Whether `wrap_consumer` is overridden: the client asks once, at connect."""
        return type(self).wrap_consumer is not Collector.wrap_consumer


def _fan_out(name: str) -> Callable[..., None]:
    def method(self: MultiCollector, *args: Any) -> None:
        for collector in self._collectors:
            getattr(collector, name)(*args)

    method.__name__ = name
    method.__doc__ = f"Calls ``{name}`` on every collector, in order."
    return method


class MultiCollector(Collector):
    """Several collectors behind one: each event goes to each, in order.

    ``before_publish`` threads the properties through every collector that
    traces; ``wrap_consumer`` nests the wrappers (the first collector's
    wrapper outermost).
    """

    def __init__(self, collectors: Iterable[Collector]) -> None:
        flat: list[Collector] = []
        for collector in collectors:
            if not isinstance(collector, Collector):
                raise TypeError(f"expected a geamqp.metrics.Collector, "
                                f"not {type(collector).__name__}")
            flat.extend(collector.collectors if isinstance(collector, MultiCollector)
                        else (collector,))
        self._collectors = tuple(flat)
        self._publish_tracers = tuple(c for c in flat if c.traces_publish())
        self._consumer_wrappers = tuple(c for c in flat if c.wraps_consumers())

    @property
    def collectors(self) -> tuple[Collector, ...]:
        return self._collectors

    def __repr__(self) -> str:
        return f"MultiCollector({list(self._collectors)!r})"

    def before_publish(self, conn: ConnectionInfo, channel: int, exchange: str,
                       routing_key: str,
                       properties: BasicProperties | None) -> BasicProperties | None:
        for collector in self._publish_tracers:
            properties = collector.before_publish(conn, channel, exchange, routing_key,
                                                  properties)
        return properties

    def wrap_consumer(self, conn: ConnectionInfo, channel: int, queue: str,
                      callback: OnMessage) -> OnMessage:
        for collector in reversed(self._consumer_wrappers):
            callback = collector.wrap_consumer(conn, channel, queue, callback)
        return callback

    def traces_publish(self) -> bool:
        return bool(self._publish_tracers)

    def wraps_consumers(self) -> bool:
        return bool(self._consumer_wrappers)


_EVENTS = tuple(name for name, value in vars(Collector).items()
                if callable(value) and not name.startswith("_")
                and name not in ("before_publish", "wrap_consumer", "traces_publish",
                                 "wraps_consumers"))
for _name in _EVENTS:
    setattr(MultiCollector, _name, _fan_out(_name))
del _name



def _overrides(collector: Collector, event: str) -> bool:
    return getattr(type(collector), event) is not getattr(Collector, event)


def event_handler(collector: Collector | None, event: str) -> Callable[..., Any] | None:
    """The bound method the client should call for ``event`` (a `Collector`
    method name), or None when no collector would do anything with it.

    For the client's hot paths: look the handlers up once per connection and
    test them for None per message, so that a collector that only counts
    connections costs a publish nothing, and no collector costs one test."""
    if not callable(getattr(Collector, event, None)) or event.startswith("_"):
        raise ValueError(f"{event!r} is not a geamqp.metrics.Collector event")
    if collector is None:
        return None
    members = collector.collectors if isinstance(collector, MultiCollector) else (collector,)
    if not any(_overrides(c, event) for c in members):
        return None
    handler: Callable[..., Any] = getattr(collector, event)
    return handler


# ---------------------------------------------------------------- process-wide default

_lock = threading.Lock()
_defaults: tuple[Collector, ...] = ()
_default: Collector | None = None


def _publish(collectors: tuple[Collector, ...]) -> None:
    global _defaults, _default
    _defaults = collectors
    if not collectors:
        _default = None
    elif len(collectors) == 1:
        _default = collectors[0]
    else:
        _default = MultiCollector(collectors)


def _checked(collector: object) -> Collector:
    if not isinstance(collector, Collector):
        raise TypeError(f"expected a geamqp.metrics.Collector, not {type(collector).__name__}")
    return collector


def set_default_collector(collector: Collector | None) -> None:
    """Make ``collector`` the only process-wide default (None: no default).

    Connections made afterwards without ``metrics=`` use it; connections
    already open keep the collector they had."""
    with _lock:
        _publish(() if collector is None else (_checked(collector),))


def add_default_collector(collector: Collector) -> None:
    """Add ``collector`` to the process-wide defaults (no-op if already there)."""
    with _lock:
        if not any(c is collector for c in _defaults):
            _publish((*_defaults, _checked(collector)))


def remove_default_collector(collector: Collector) -> None:
    """Remove ``collector`` from the process-wide defaults (no-op if absent)."""
    with _lock:
        _publish(tuple(c for c in _defaults if c is not collector))


def get_default_collector() -> Collector | None:
    """The collector a new connection gets when ``connect()`` has no ``metrics=``:
    None, the one default, or a `MultiCollector` of all of them."""
    return _default
