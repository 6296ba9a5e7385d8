"""The Connection API and `connect()`.

A Connection owns one protocol engine, one `Transport` (reader, writer and
heartbeat greenlets) and its Channels; it routes the engine's events to
them. Everything here runs in the hub's OS thread; callbacks the user
registers on the connection run in the connection's own dispatcher greenlet.

Rules:
- `connect()` returns an open connection or raises. Authentication (403) and
  vhost (530) refusals and protocol mismatches are never retried;
  other failures are retried `connection_attempts` times over the list of
  parameters, `retry_delay` apart.
- Every way a connection ends funnels into `_on_closed(error)`: it runs once,
  releases every waiter with `error`, closes every channel and socket and
  stops every greenlet the connection owns.
- `close()` sends exactly one connection.close however many greenlets call
  it, and is bounded even when the broker no longer reads (memory alarm).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import gevent
from gevent.event import AsyncResult, Event

from ._hub import HubBridge, make_threadsafe
from ._topology import Topology
from ._transport import Transport, open_socket
from .channel import Channel
from .consumer import Dispatcher
from .exceptions import (
    AMQPConnectionError,
    AMQPError,
    ConnectionBlockedTimeout,
    ConnectionClosedByClient,
    ConnectionWrongStateError,
    IncompatibleProtocolError,
    ProbableAccessDeniedError,
    ProbableAuthenticationError,
)
from .parameters import ConnectionParameters, URLParameters
from .protocol import AMQPConnection, ClientSettings
from .protocol import events as ev
from .protocol.spec import Channel as ChannelSpec
from .recovery import RecoverySettings, Supervisor

__all__ = ["Connection", "connect"]

log = logging.getLogger("geamqp.connection")

_CLOSE_TIMEOUT = 5.0
_NOT_RETRIED = (ProbableAuthenticationError, ProbableAccessDeniedError, IncompatibleProtocolError)

ParamsLike = str | ConnectionParameters


def _as_params(value: ParamsLike) -> ConnectionParameters:
    if isinstance(value, ConnectionParameters):
        return value
    if isinstance(value, str):
        return URLParameters(value)
    raise TypeError(f"expected an AMQP URL or ConnectionParameters, not {type(value).__name__}")


def connect(parameters: ParamsLike | Sequence[ParamsLike] | None = None, *,
            name: str | None = None, recover: bool = True,
            recovery_delay_min: float = 0.5, recovery_delay_max: float = 30.0,
            recovery_max_attempts: int | None = None, recovery_deadline: float | None = None,
            republish_unconfirmed: bool = False,
            recovery_wait_timeout: float = 60.0) -> Connection:
    """Open a connection: to a URL, a `ConnectionParameters`, or the first of a list that
    answers. `name` is shown in the management UI (connection_name).

    With ``recover=True`` (the default) a lost connection is re-established by
    the supervisor (see recovery.py): back-off between `recovery_delay_min` and
    `recovery_delay_max` seconds with full jitter, giving up after
    `recovery_max_attempts` attempts or `recovery_deadline` seconds (None: never);
    requests made meanwhile wait up to `recovery_wait_timeout` seconds. Unconfirmed
    publishes fail with `PublishOutcomeUnknown` unless `republish_unconfirmed`."""
    settings = RecoverySettings(recovery_delay_min, recovery_delay_max, recovery_max_attempts,
                                recovery_deadline, republish_unconfirmed,
                                recovery_wait_timeout)
    if parameters is None:
        candidates = [ConnectionParameters()]
    elif isinstance(parameters, (str, ConnectionParameters)):
        candidates = [_as_params(parameters)]
    else:
        candidates = [_as_params(p) for p in parameters]
        if not candidates:
            raise ValueError("connect() needs at least one URL or ConnectionParameters")
    return Connection(candidates, name=name, recover=recover, recovery=settings)


class Connection:
    """An open AMQP connection. Create it with `geamqp.connect()`."""

    def __init__(self, candidates: list[ConnectionParameters], name: str | None = None,
                 recover: bool = True, recovery: RecoverySettings | None = None) -> None:
        self._candidates = candidates
        self.name = name
        self.recover = recover
        self.params = candidates[0]
        self._channels: dict[int, Channel] = {}
        self._dispatcher = Dispatcher("geamqp-connection")
        self._close_callbacks: list[Callable[..., Any]] = []
        self._blocked_callbacks: list[Callable[..., Any]] = []
        self._unblocked_callbacks: list[Callable[..., Any]] = []
        self._blocked = False
        self._unblocked = Event()
        self._unblocked.set()
        self._blocked_timer: gevent.Greenlet | None = None
        self._closed = Event()
        self._error: AMQPError | None = None
        self._secret_waiter: AsyncResult | None = None
        self.server_properties: dict[str, Any] = {}
        self._bridge = HubBridge(self)
        self._topology = Topology()
        self._supervisor = Supervisor(self, recovery or RecoverySettings()) if recover else None
        self._private: Channel | None = None  # the supervisor's channel for replaying topology
        self._app_closing = False
        self._lost_callbacks: list[Callable[..., Any]] = []
        self._recovered_callbacks: list[Callable[..., Any]] = []
        self._recovery_failed_callbacks: list[Callable[..., Any]] = []
        self._renamed_callbacks: list[Callable[..., Any]] = []
        self._open()

    def __repr__(self) -> str:
        state = "open" if self.is_open else ("closed" if self.is_closed else "opening")
        return f"<Connection {self.name or ''} {state} {self.params!r}>"

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if not self.is_closed:
            self.close()

    # ------------------------------------------------------------------ opening

    def _open(self) -> None:
        attempts = max(p.connection_attempts for p in self._candidates)
        last: AMQPError | None = None
        for attempt in range(attempts):
            for params in self._candidates:
                if attempt >= params.connection_attempts:
                    continue
                try:
                    self._open_one(params)
                    return
                except AMQPConnectionError as exc:
                    if isinstance(exc, _NOT_RETRIED) and self._refused_for_good(exc):
                        self._finish(exc)
                        raise
                    log.info("connecting to %s failed: %s", params, exc)
                    last = exc
            if attempt + 1 < attempts:
                gevent.sleep(max(p.retry_delay for p in self._candidates))
        assert last is not None
        self._finish(last)
        raise last

    def _refused_for_good(self, exc: AMQPConnectionError) -> bool:
        """A server that closed before sending a byte (a load balancer without a
        backend, a broker starting up) did not answer with another protocol: the
        core reports that EOF as IncompatibleProtocolError, but it is retried."""
        if isinstance(exc, IncompatibleProtocolError):
            return bool(self._engine._prelude)
        return True

    def _open_one(self, params: ConnectionParameters) -> None:
        self.params = params
        self._closed.clear()
        self._error = None
        self._opened: AsyncResult = AsyncResult()
        deadline = time.monotonic() + params.stack_timeout
        settings = ClientSettings(
            credentials=params.credentials, virtual_host=params.virtual_host,
            heartbeat=params.heartbeat, frame_max=params.frame_max,
            channel_max=params.channel_max, max_message_size=params.max_message_size,
            connection_name=self.name or params.connection_name,
            client_properties=params.client_properties, locale=params.locale)
        timeout = gevent.Timeout(params.stack_timeout)
        timeout.start()
        try:
            sock = open_socket(params, deadline)
            self._engine = AMQPConnection(settings)
            self._transport = Transport(sock, self._engine, self._on_events, self._on_lost,
                                        write_timeout=params.socket_timeout)
            self._transport.kick()
            self._opened.get()
        except gevent.Timeout as exc:
            if exc is not timeout:
                raise
            if hasattr(self, "_transport"):
                self._transport.abort()
            raise AMQPConnectionError(
                f"connection handshake with {params.host}:{params.port} did not finish within "
                f"{params.stack_timeout} s") from None
        except BaseException:
            if hasattr(self, "_transport"):
                self._transport.abort()
            raise
        finally:
            timeout.close()
        log.info("connected to %s (heartbeat %ss, frame_max %s, channel_max %s)", params,
                 self._engine.heartbeat, self._engine.frame_max, self._engine.channel_max)

    # ------------------------------------------------------------------ state

    @property
    def is_open(self) -> bool:
        return bool(not self._closed.is_set() and self._engine.is_open)

    @property
    def is_closed(self) -> bool:
        return bool(self._closed.is_set())

    @property
    def is_blocked(self) -> bool:
        return self._blocked

    def _kick(self) -> None:
        self._transport.kick()

    def add_on_close_callback(self, callback: Callable[[Connection, AMQPError], Any]) -> None:
        """`callback(connection, exception)` once the connection has closed, for any reason."""
        self._close_callbacks.append(callback)

    def add_on_connection_lost_callback(self, callback: Callable[..., Any]) -> None:
        """`callback(connection, exception)` when the link is lost and recovery starts."""
        self._lost_callbacks.append(callback)

    def add_on_recovered_callback(self, callback: Callable[..., Any]) -> None:
        """`callback(connection)` once channels, topology and consumers are restored."""
        self._recovered_callbacks.append(callback)

    def add_on_recovery_failed_callback(self, callback: Callable[..., Any]) -> None:
        """`callback(connection, exception)` when recovery gives up (then the close
        callbacks run too)."""
        self._recovery_failed_callbacks.append(callback)

    def add_on_queue_renamed_callback(self, callback: Callable[..., Any]) -> None:
        """`callback(old_name, new_name)` when a server-named queue comes back renamed."""
        self._renamed_callbacks.append(callback)

    @property
    def is_recovering(self) -> bool:
        return self._supervisor is not None and self._supervisor.recovering

    def add_on_connection_blocked_callback(self, callback: Callable[..., Any]) -> None:
        """`callback(connection, method)` when the broker blocks publishing (resource alarm)."""
        self._blocked_callbacks.append(callback)

    def add_on_connection_unblocked_callback(self, callback: Callable[..., Any]) -> None:
        """`callback(connection, method)` when the broker unblocks the connection."""
        self._unblocked_callbacks.append(callback)

    # ------------------------------------------------------------------ channels

    def channel(self, channel_number: int | None = None) -> Channel:
        """Open a channel (the lowest free number unless given); blocks until open-ok."""
        if self._supervisor is not None and self._supervisor.recovering:
            self._wait_recovered()
        if not self.is_open:
            raise self._error or ConnectionWrongStateError("connection is not open")
        return self._open_channel(channel_number)

    def _open_channel(self, channel_number: int | None) -> Channel:
        number = self._engine.open_channel(channel_number)
        channel = Channel(self, number)
        self._channels[number] = channel
        waiter = AsyncResult()
        channel._waiters.append(((ChannelSpec.OpenOk,), waiter))
        self._kick()
        try:
            waiter.get()
        except BaseException:
            if self._channels.get(number) is channel:
                del self._channels[number]
            raise
        return channel

    # ------------------------------------------------------------------ events (reader)

    def _on_events(self, events: list[ev.Event]) -> None:
        channels = self._channels
        for event in events:
            kind = type(event)
            if kind is ev.ContentReceived:
                channels[event.channel]._on_content(  # type: ignore[attr-defined]
                    event.method, event.properties, event.body)  # type: ignore[attr-defined]
            elif kind is ev.MethodReceived:
                if event.channel:  # type: ignore[attr-defined]
                    channels[event.channel]._on_method(event.method)  # type: ignore[attr-defined]
                elif self._secret_waiter is not None:
                    self._secret_waiter.set(event.method)  # type: ignore[attr-defined]
            else:
                self._on_other_event(event)

    def _on_other_event(self, event: ev.Event) -> None:
        log.debug("%s: %s", self.name or "connection", type(event).__name__)
        if isinstance(event, ev.ChannelOpened):
            self._channels[event.channel]._on_opened()
        elif isinstance(event, ev.ChannelClosed):
            self._on_channel_closed(event)
        elif isinstance(event, ev.ConnectionOpened):
            self.server_properties = event.server_properties
            self._transport.start_heartbeat(event.heartbeat)
            self._opened.set(None)
        elif isinstance(event, ev.ConnectionClosed):
            self._on_closed(event.error)
        elif isinstance(event, ev.ConnectionBlocked):
            self._on_blocked(event.reason)
        elif isinstance(event, ev.ConnectionUnblocked):
            self._on_unblocked()
        elif isinstance(event, ev.HeartbeatTimeout):
            log.warning("no heartbeat from the broker for %.1f s; dropping the connection",
                        event.silent_for)

    def _on_channel_closed(self, event: ev.ChannelClosed) -> None:
        from .exceptions import ChannelClosedByBroker, ChannelClosedByClient

        channel = self._channels.pop(event.channel, None)
        if channel is None:
            return
        error: AMQPError
        if event.by_peer:
            error = ChannelClosedByBroker(event.reply_code, event.reply_text)
        else:
            error = channel._error or ChannelClosedByClient(event.reply_code, event.reply_text)
        channel._on_closed(error)

    def _on_blocked(self, reason: str) -> None:
        log.warning("broker blocked the connection: %s", reason)
        self._blocked = True
        self._unblocked.clear()
        timeout = self.params.blocked_connection_timeout
        if timeout and self._blocked_timer is None:
            self._blocked_timer = gevent.spawn_later(timeout, self._blocked_too_long, timeout)
        for callback in self._blocked_callbacks:
            self._dispatcher.submit(callback, self, reason)

    def _on_unblocked(self) -> None:
        log.info("broker unblocked the connection")
        self._clear_blocked()
        for callback in self._unblocked_callbacks:
            self._dispatcher.submit(callback, self, None)

    def _clear_blocked(self) -> None:
        """Not blocked any more (unblocked, or the link is gone): release waiting
        publishers and stop the blocked-connection timer."""
        self._blocked = False
        self._unblocked.set()
        self._cancel_blocked_timer()

    def _cancel_blocked_timer(self) -> None:
        timer, self._blocked_timer = self._blocked_timer, None
        if timer is not None and timer is not gevent.getcurrent():
            timer.kill(block=False)

    def _blocked_too_long(self, timeout: float) -> None:
        self._blocked_timer = None
        self._abort(ConnectionBlockedTimeout(
            f"the broker kept the connection blocked for more than {timeout} s"))

    def _wait_unblocked(self) -> None:
        self._unblocked.wait()
        if self._error is not None:
            raise self._error

    def _on_lost(self, error: AMQPError) -> None:
        self._on_closed(error)

    def _on_closed(self, error: AMQPError) -> None:
        """The single end of every connection: runs once, releases everything."""
        if self._closed.is_set():
            return
        if not self._opened.ready():  # the handshake failed: _open() reports it
            self._opened.set_exception(error)
            self._transport.close_after_flush()
            return
        supervisor = self._supervisor
        if supervisor is not None and not self._app_closing and supervisor.should_recover(error):
            self._on_lost_for_recovery(supervisor, error)
            return
        self._final_close(error)

    def _on_lost_for_recovery(self, supervisor: Supervisor, error: AMQPError) -> None:
        """The link died under a recovering connection: suspend, let the supervisor work."""
        self._drop_transport()
        private, self._private = self._private, None
        if private is not None:
            self._channels.pop(private.channel_number, None)
            private._on_closed(error)
        republish = supervisor.settings.republish_unconfirmed
        for number, channel in list(self._channels.items()):
            if channel._state in ("opening", "closing"):
                del self._channels[number]
                channel._on_closed(error)
            else:
                channel._suspend(error, republish)
        if self._secret_waiter is not None:
            self._secret_waiter.set_exception(error)
        if supervisor.recovering:
            return  # lost again while restoring: the supervisor's loop carries on
        self._clear_blocked()
        for callback in self._lost_callbacks:
            self._dispatcher.submit(callback, self, error)
        supervisor.start(error)

    def _drop_transport(self) -> None:
        transport = getattr(self, "_transport", None)
        if transport is not None:
            transport.abort()

    def _wait_recovered(self) -> None:
        if self._supervisor is not None:
            self._supervisor.wait()
        if self._closed.is_set() and self._error is not None:
            raise self._error

    def _recovery_channel(self) -> Channel:
        """The supervisor's own channel: a failed replay step closes it, not a user's."""
        if self._private is None or not self._private.is_open:
            if self._private is not None:
                self._channels.pop(self._private.channel_number, None)
            self._private = self._open_channel(None)
        return self._private

    def _on_recovered(self) -> None:
        private, self._private = self._private, None
        if private is not None and private.is_open:
            private.close()
        for callback in self._recovered_callbacks:
            self._dispatcher.submit(callback, self)

    def _on_recovery_failed(self, error: AMQPError) -> None:
        for callback in self._recovery_failed_callbacks:
            self._dispatcher.submit(callback, self, error)
        self._supervisor = None
        self._final_close(error)

    def _on_queue_renamed(self, old: str, new: str) -> None:
        log.info("server-named queue %r came back as %r", old, new)
        for callback in self._renamed_callbacks:
            self._dispatcher.submit(callback, old, new)

    def _final_close(self, error: AMQPError) -> None:
        self._error = error
        level = logging.INFO if isinstance(error, ConnectionClosedByClient) else logging.WARNING
        log.log(level, "connection to %s closed: %r", self.params, error)
        self._transport.close_after_flush()
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            channel._on_closed(error)
        if self._secret_waiter is not None:
            self._secret_waiter.set_exception(error)
        self._clear_blocked()
        self._closed.set()
        for callback in self._close_callbacks:
            self._dispatcher.submit(callback, self, error)
        self._finish(error)
        gevent.spawn(self._transport.stop_greenlets)

    def _finish(self, error: AMQPError) -> None:
        self._error = error
        self._closed.set()
        self._dispatcher.stop(drain=True)
        self._bridge.close(error)

    def _abort(self, error: AMQPError) -> None:
        self._transport.abort()
        self._on_closed(error)

    # ------------------------------------------------------------------ public actions

    def close(self, reply_code: int = 200, reply_text: str = "Normal shutdown") -> None:
        """Close the connection and every channel on it. Safe to call more than once,
        from any number of greenlets; blocks until the broker confirms or 5 s pass."""
        if self._closed.is_set():
            return
        self._app_closing = True
        supervisor = self._supervisor
        if supervisor is not None and supervisor.recovering:
            supervisor.stop()
            self._drop_transport()
            self._final_close(ConnectionClosedByClient(reply_code, reply_text))
            return
        if self._engine.close(reply_code, reply_text):
            self._kick()
        elif self._engine.state.value != "closing":
            self._abort(ConnectionClosedByClient(reply_code, reply_text))
            return
        if not self._closed.wait(_CLOSE_TIMEOUT):
            log.warning("broker did not answer connection.close within %s s; dropping the "
                        "socket", _CLOSE_TIMEOUT)
            self._abort(ConnectionClosedByClient(reply_code, reply_text))

    def update_secret(self, new_secret: str | bytes, reason: str) -> None:
        """Replace the connection's credential secret (e.g. a refreshed OAuth 2 token)."""
        if not self.is_open:
            raise self._error or ConnectionWrongStateError("connection is not open")
        secret = new_secret.encode("utf-8") if isinstance(new_secret, str) else new_secret
        self._secret_waiter = AsyncResult()
        try:
            self._engine.update_secret(secret, reason)
            self._kick()
            self._secret_waiter.get()
        finally:
            self._secret_waiter = None

    def add_callback_threadsafe(self, callback: Callable[[], Any]) -> None:
        """Run `callback()` in the hub, in a greenlet; callable from any OS thread."""
        self._bridge.add_callback_threadsafe(callback)

    def call_later(self, delay: float, callback: Callable[[], Any]) -> gevent.Greenlet:
        """Run `callback()` in a new greenlet after `delay` seconds; kill it to cancel."""
        return gevent.spawn_later(delay, callback)

    def sleep(self, seconds: float) -> None:
        """Sleep this greenlet; the connection keeps working meanwhile."""
        gevent.sleep(seconds)

    def process_data_events(self, time_limit: float = 0) -> None:
        """pika compatibility: events are always processed; this just yields for time_limit."""
        gevent.sleep(time_limit)


make_threadsafe(Connection, skip=("add_callback_threadsafe",))
