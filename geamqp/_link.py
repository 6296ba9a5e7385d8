"""A link: one connection attempt — socket, protocol engine, transport, channel routes.

A `Connection` lives across many links: the first connect makes one, each
recovery attempt makes a new one, and the supervisor swaps the whole link at
once. Nothing of a dead link leaks into the next: its events reach the
connection tagged with the link they came from, and a handler drops those of
a link that is no longer current.

Rules:
- Every operation that queues frames also wakes the writer (`kick`) or
  writes at once (`write_now`, the latency path): no caller has to remember
  to flush. Queuing never yields, so a caller can register what a reply will
  resolve (a Confirmation, a waiter) after queuing and before anything can
  arrive.
- The reader routes channel events to the `ChannelEndpoint` attached to the
  channel number. Events for a number with no endpoint are handled here: a
  late open-ok is answered with channel.close (politely ending a channel
  nobody waits for), methods and content are dropped with a debug line —
  never a KeyError in the reader.
- Connection-level happenings go to the `LinkHandler`, each at most once per
  link for the loss.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import gevent
from gevent.event import AsyncResult

from ._transport import Transport, open_socket
from .exceptions import AMQPConnectionError, AMQPError
from .parameters import ConnectionParameters
from .protocol import AMQPConnection, ClientSettings
from .protocol import events as ev
from .protocol.properties import BasicProperties
from .protocol.spec import Method

__all__ = ["ChannelEndpoint", "Link", "LinkHandler"]

log = logging.getLogger("geamqp.link")


def _not_open() -> None:
    raise AMQPConnectionError("the link is not open yet")


class ChannelEndpoint(Protocol):
    """What a link delivers a channel's events to (implemented by `Channel`)."""

    def on_link_opened(self) -> None: ...
    def on_link_method(self, method: Method) -> None: ...
    def on_link_content(self, method: Method, properties: BasicProperties,
                        body: bytes) -> None: ...
    def on_link_closed(self, reply_code: int, reply_text: str, by_peer: bool) -> None: ...


class LinkHandler(Protocol):
    """What a link reports to its connection (each call names the link)."""

    def link_lost(self, link: Link, error: AMQPError) -> None: ...
    def link_blocked(self, link: Link, reason: str) -> None: ...
    def link_unblocked(self, link: Link) -> None: ...


class Link:
    """One connection attempt. `open()` connects it."""

    def __init__(self, params: ConnectionParameters, settings: ClientSettings,
                 handler: LinkHandler) -> None:
        self.params = params
        self.engine = AMQPConnection(settings)
        self._handler = handler
        self._routes: dict[int, ChannelEndpoint] = {}
        self._opened: AsyncResult = AsyncResult()
        self._secret_waiters: deque[AsyncResult] = deque()
        self._lost = False
        self.blocked = False  # connection.blocked (resource alarm) until unblocked
        self.error: AMQPError | None = None  # why the link ended
        self.server_properties: dict[str, Any] = {}
        self.transport: Transport | None = None
        # The publish hot path, bound straight to the engine and the transport (no
        # layer of calls of its own): `publish(channel, exchange, routing_key, body,
        # properties, mandatory)` queues basic.publish without yielding and returns
        # the seqno in confirm mode (else 0); `push()` must follow, once whatever
        # the seqno resolves is registered: back-pressure, then the write
        # (Transport.write_now does both).
        self.publish: Callable[..., int] = self.engine.publish
        self.push: Callable[[], None] = _not_open

    def __repr__(self) -> str:
        state = "lost" if self._lost else self.engine.state.value
        return f"<Link {self.params.host}:{self.params.port} {state}>"

    # ------------------------------------------------------------------ opening

    def open(self) -> None:
        """Connect, run the handshake, return once open; raise why not.

        Bounded by `params.stack_timeout` as a whole. On any failure the link's
        socket and greenlets are gone before this raises.
        """
        params = self.params
        timeout = gevent.Timeout(params.stack_timeout)
        timeout.start()
        try:
            limit = params.stack_timeout
            sock = open_socket(params, None if limit is None else time.monotonic() + limit)
            self.transport = Transport(sock, self.engine, self._on_events, self._on_lost,
                                        write_timeout=params.socket_timeout)
            self.transport.kick()
            self.push = self.transport.write_now  # back-pressure included
            self._opened.get()
        except gevent.Timeout as exc:
            self.abort()
            if exc is not timeout:
                raise
            raise AMQPConnectionError(
                f"connection handshake with {params.host}:{params.port} did not finish "
                f"within {params.stack_timeout} s") from None
        except BaseException:
            self.abort()
            raise
        finally:
            timeout.close()
        engine = self.engine
        log.info("connected to %s (heartbeat %ss, frame_max %s, channel_max %s)", params,
                 engine.heartbeat, engine.frame_max, engine.channel_max)

    # ------------------------------------------------------------------ state

    @property
    def is_open(self) -> bool:
        return not self._lost and self.engine.is_open

    @property
    def channel_max(self) -> int:
        return self.engine.channel_max

    # ------------------------------------------------------------------ channels

    def attach(self, number: int, endpoint: ChannelEndpoint) -> None:
        self._routes[number] = endpoint

    def detach(self, number: int, endpoint: ChannelEndpoint) -> None:
        if self._routes.get(number) is endpoint:
            del self._routes[number]

    def open_channel(self, number: int | None, endpoint: ChannelEndpoint) -> int:
        """Queue channel.open (the lowest free number unless given) and route its
        events to `endpoint`; open-ok reaches `endpoint.on_link_opened`."""
        number = self.engine.open_channel(number)
        self._routes[number] = endpoint
        self.kick()
        return number

    def close_channel(self, number: int, reply_code: int, reply_text: str) -> bool:
        """Queue channel.close; False when the link can no longer send it."""
        if not self.engine.is_open:
            return False
        self.engine.close_channel(number, reply_code, reply_text)
        self.kick()
        return True

    # ------------------------------------------------------------------ sending

    def kick(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.kick()

    def send(self, channel: int, method: Method) -> None:
        """Queue a method without content (no reply expected); the writer sends it."""
        self.engine.send_method(channel, method)
        self.transport.kick()  # type: ignore[union-attr]

    def request(self, channel: int, method: Method) -> None:
        """Queue a request whose reply someone waits for (never yields, so the
        caller registers its waiter next); `request_flush()` then writes it now
        if this hub turn has not written yet (a lone request costs no hub turn)."""
        self.engine.send_method(channel, method)
        self.transport.kick()  # type: ignore[union-attr]

    def ack(self, channel: int, delivery_tag: int, multiple: bool) -> None:
        """Queue basic.ack and write it now if this hub turn has not written yet
        (saves the writer's wake-up per turn of acks; later acks coalesce)."""
        self.engine.ack(channel, delivery_tag, multiple)
        self.transport.write_now()  # type: ignore[union-attr]

    def update_secret(self, secret: bytes, reason: str) -> AsyncResult:
        """Queue connection.update-secret; the result resolves on its -ok (FIFO)."""
        waiter: AsyncResult = AsyncResult()
        self.engine.update_secret(secret, reason)
        self._secret_waiters.append(waiter)
        self.request_flush()
        return waiter

    def request_flush(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.write_now()

    def close(self, reply_code: int, reply_text: str) -> bool:
        """Queue connection.close; False when one was sent already or cannot be."""
        if self._lost:
            return False
        sent = self.engine.close(reply_code, reply_text)
        if sent:
            self.kick()
        return sent

    @property
    def closing(self) -> bool:
        return self.engine.state.value == "closing"

    # ------------------------------------------------------------------ ending

    def abort(self) -> None:
        """Close the socket now and stop the link's greenlets (not from one of them)."""
        self._lost = True
        transport = self.transport
        if transport is not None:
            transport.abort()

    def shut_down(self) -> None:
        """Flush what is queued (close-ok), close the socket, stop the greenlets later
        (this may run in the reader itself)."""
        transport = self.transport
        if transport is not None:
            transport.close_after_flush()
            gevent.spawn(transport.stop_greenlets)

    def _on_lost(self, error: AMQPError) -> None:
        if self._lost and self.error is not None:
            return
        self._lost = True
        self.error = error
        waiters, self._secret_waiters = self._secret_waiters, deque()
        for waiter in waiters:
            waiter.set_exception(error)
        if not self._opened.ready():  # the handshake failed: open_link reports it
            self._opened.set_exception(error)
            if self.transport is not None:
                self.transport.close_after_flush()
            return
        self._handler.link_lost(self, error)

    # ------------------------------------------------------------------ events (reader)

    def _on_events(self, events: list[ev.Event]) -> None:
        routes = self._routes
        for event in events:
            kind = type(event)
            if kind is ev.ContentReceived:
                route = routes.get(event.channel)  # type: ignore[attr-defined]
                if route is not None:
                    route.on_link_content(event.method, event.properties,  # type: ignore[attr-defined]
                                          event.body)  # type: ignore[attr-defined]
                else:
                    self._unrouted(event)
            elif kind is ev.MethodReceived:
                number = event.channel  # type: ignore[attr-defined]
                route = routes.get(number)
                if route is not None:
                    route.on_link_method(event.method)  # type: ignore[attr-defined]
                elif number == 0:
                    self._on_secret_ok()
                else:
                    self._unrouted(event)
            else:
                self._on_other_event(event)

    def _on_other_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.ChannelOpened):
            route = self._routes.get(event.channel)
            if route is not None:
                route.on_link_opened()
            else:
                self._unrouted(event)
        elif isinstance(event, ev.ChannelClosed):
            route = self._routes.pop(event.channel, None)
            if route is not None:
                route.on_link_closed(event.reply_code, event.reply_text, event.by_peer)
        elif isinstance(event, ev.ConnectionOpened):
            self.server_properties = event.server_properties
            assert self.transport is not None
            self.transport.start_heartbeat(event.heartbeat)
            self._opened.set(None)
        elif isinstance(event, ev.ConnectionClosed):
            self._on_lost(event.error)
        elif isinstance(event, ev.ConnectionBlocked):
            self.blocked = True
            self._handler.link_blocked(self, event.reason)
        elif isinstance(event, ev.ConnectionUnblocked):
            self.blocked = False
            self._handler.link_unblocked(self)
        elif isinstance(event, ev.HeartbeatTimeout):
            log.warning("no heartbeat from the broker for %.1f s; dropping the connection",
                        event.silent_for)

    def _on_secret_ok(self) -> None:
        if self._secret_waiters:
            self._secret_waiters.popleft().set(None)

    def _unrouted(self, event: ev.Event) -> None:
        """An event for a channel number nobody listens on any more."""
        number: int = event.channel  # type: ignore[attr-defined]
        if isinstance(event, ev.ChannelOpened):
            log.debug("late open-ok on channel %s nobody waits for: closing it", number)
            self.close_channel(number, 200, "Nobody waits for this channel")
        else:
            log.debug("%s on channel %s with no channel object: dropped",
                      type(event).__name__, number)
