"""The Connection API and `connect()`.

A Connection lives across links (`_link.py`: one per connection attempt) and
owns its Channels; it routes what a link reports to them. Everything here
runs in the hub's OS thread; callbacks the user registers on the connection
run in the connection's own dispatcher greenlet.

Rules:
- `connect()` returns an open connection or raises. Authentication (403) and
  vhost (530) refusals and protocol mismatches are never retried;
  other failures are retried `connection_attempts` times over the list of
  parameters, `retry_delay` apart.
- A link's loss reaches `_on_link_lost` once, and only while that link is the
  current one. With recovery on and no application close, channels are
  suspended and the supervisor (recovery.py) takes over; otherwise every way
  a connection ends funnels into `_final_close(error)`: it runs once,
  releases every waiter with `error`, closes every channel and stops every
  greenlet the connection owns.
- `close()` sends exactly one connection.close however many greenlets call
  it, and is bounded even when the broker no longer reads (memory alarm).
- Channels and the supervisor reach the connection only through the two
  named interfaces at the end of this module (`_Host`, `_RecoveryPort`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import gevent
from gevent.event import Event

from . import channel as channel_control
from ._ack_guard import ConsumerTimeoutGuard
from ._channel_recovery import retriable
from ._credentials import DEFAULT_REFRESH_LEAD, CredentialsSource, is_provider
from ._hub import HubBridge, make_threadsafe
from ._link import Link
from ._telemetry import NO_TELEMETRY, Telemetry, telemetry_for
from ._topology import Topology
from .channel import Channel
from .consumer import Dispatcher
from .exceptions import (
    AMQPConnectionError,
    AMQPError,
    ChannelClosedByBroker,
    ConnectionBlockedTimeout,
    ConnectionClosedByClient,
    ConnectionWrongStateError,
    IncompatibleProtocolError,
    ProbableAccessDeniedError,
    ProbableAuthenticationError,
)
from .metrics import Collector
from .parameters import ConnectionParameters, URLParameters
from .protocol import ClientSettings
from .protocol.sasl import PlainCredentials
from .protocol.spec import Method
from .recovery import RecoverySettings, Supervisor

__all__ = ["Connection", "connect"]

log = logging.getLogger("geamqp.connection")

_CLOSE_TIMEOUT = 5.0
_NOT_RETRIED = (ProbableAuthenticationError, ProbableAccessDeniedError, IncompatibleProtocolError)

ParamsLike = str | ConnectionParameters
HostSelector = Callable[[list[ConnectionParameters]], Sequence[ConnectionParameters]]


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
            recovery_wait_timeout: float = 60.0,
            metrics: Collector | None = None, shuffle_hosts: bool = True,
            host_selector: HostSelector | None = None,
            recover_channels: bool | None = None,
            credentials_refresh_lead: float = DEFAULT_REFRESH_LEAD,
            consumer_timeout_guard: ConsumerTimeoutGuard | None = None) -> Connection:
    """Open a connection: to a URL, a `ConnectionParameters`, or the first of a list that
    answers. `name` is shown in the management UI (connection_name).

    With ``recover=True`` (the default) a lost connection is re-established by
    the supervisor (see recovery.py): back-off between `recovery_delay_min` and
    `recovery_delay_max` seconds with full jitter, giving up after
    `recovery_max_attempts` attempts or `recovery_deadline` seconds (None: never);
    requests made meanwhile wait up to `recovery_wait_timeout` seconds. Unconfirmed
    publishes fail with `PublishOutcomeUnknown` unless `republish_unconfirmed`.

    `recover_channels` (default: the parameters', True) also reopens a channel the
    broker closed with a code a retry cures (406 delivery-ack timeout; 404/405
    answering basic.consume), with its modes and consumers; see
    _channel_recovery.py for the choice. It needs ``recover=True``.

    Credentials may be a zero-argument callable returning `PlainCredentials`: it is
    called for each connection attempt and `credentials_refresh_lead` seconds before
    their ``expires_at`` (then the new secret is sent with update-secret); see
    _credentials.py. `consumer_timeout_guard` warns about deliveries held close to the
    broker's consumer_timeout (see _ack_guard.py).

    `metrics` is a `geamqp.metrics.Collector` to report to (default: the
    process-wide one, `geamqp.metrics.set_default_collector`, or none).

    With a list of hosts, every connection attempt (the first connect and each
    reconnect) tries them in a fresh random order, so the connections of many
    processes spread over a cluster's nodes; a reconnect tries the node it just
    lost last. `shuffle_hosts=False` keeps the given order. `host_selector`, a
    callable given the candidates and returning the order to try (a subset is
    fine), chooses instead — e.g. the node holding a queue's leader."""
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
    if recover_channels is not None:
        settings.recover_channels = bool(recover_channels)
    if consumer_timeout_guard is not None and not isinstance(consumer_timeout_guard,
                                                             ConsumerTimeoutGuard):
        raise TypeError(f"consumer_timeout_guard must be a ConsumerTimeoutGuard, not "
                        f"{type(consumer_timeout_guard).__name__}")
    return Connection(candidates, name=name, recover=recover, recovery=settings,
                      metrics=metrics, shuffle_hosts=shuffle_hosts, host_selector=host_selector,
                      credentials_refresh_lead=credentials_refresh_lead,
                      consumer_timeout_guard=consumer_timeout_guard)


class Connection:
    """An open AMQP connection. Create it with `geamqp.connect()`."""

    def __init__(self, candidates: list[ConnectionParameters], name: str | None = None,
                 recover: bool = True, recovery: RecoverySettings | None = None,
                 metrics: Collector | None = None, shuffle_hosts: bool = True,
                 host_selector: HostSelector | None = None,
                 credentials_refresh_lead: float = DEFAULT_REFRESH_LEAD,
                 consumer_timeout_guard: ConsumerTimeoutGuard | None = None) -> None:
        self._candidates = candidates
        self._shuffle_hosts = shuffle_hosts
        self._host_selector = host_selector
        self._telemetry = telemetry_for(metrics, name, candidates[0].virtual_host)
        self._lost_at = self._blocked_at = 0.0
        self.name = name
        self.recover = recover
        self.params = candidates[0]
        self._link: Link | None = None
        self._channels: dict[int, Channel] = {}
        self._dispatcher = Dispatcher("geamqp-connection")
        self._close_callbacks: list[Callable[..., Any]] = []
        self._blocked_callbacks: list[Callable[..., Any]] = []
        self._unblocked_callbacks: list[Callable[..., Any]] = []
        self._unblocked = Event()
        self._unblocked.set()
        self._blocked_timer: gevent.Greenlet | None = None
        self._closed = Event()
        self._error: AMQPError | None = None
        self._secret: str | None = None  # the newest update_secret(), for later links
        self._credentials = CredentialsSource(self._refresh_secret, credentials_refresh_lead)
        self._guard = consumer_timeout_guard
        self.server_properties: dict[str, Any] = {}
        self._bridge = HubBridge(self)
        self._topology = Topology()
        self._host = _Host(self)
        self._supervisor = (Supervisor(_RecoveryPort(self), recovery or RecoverySettings())
                            if recover else None)
        self._private: Channel | None = None  # the supervisor's channel for replaying topology
        self._app_closing = False
        self._lost_callbacks: list[Callable[..., Any]] = []
        self._recovered_callbacks: list[Callable[..., Any]] = []
        self._recovery_failed_callbacks: list[Callable[..., Any]] = []
        self._renamed_callbacks: list[Callable[..., Any]] = []
        self._recover_channels = bool(
            recover and (candidates[0].recover_channels if recovery is None
                         or recovery.recover_channels is None else recovery.recover_channels))
        self._open()
        tm = self._telemetry
        if tm.thread_pending is not None:
            report = tm.thread_pending
            self._bridge.report_depth = lambda depth: report(tm.info, depth)
        if tm.opened is not None:
            tm.opened(tm.info)

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
            for params in self._attempt_order():
                if attempt >= params.connection_attempts:
                    continue
                try:
                    self._connect_link(params)
                    return
                except AMQPConnectionError as exc:
                    if isinstance(exc, _NOT_RETRIED) and getattr(exc, "answered", True):
                        self._finish(exc)
                        raise
                    log.info("connecting to %s failed: %s", params, exc)
                    last = exc
            if attempt + 1 < attempts:
                gevent.sleep(max(p.retry_delay for p in self._candidates))
        assert last is not None
        self._finish(last)
        raise last

    def _attempt_order(self, lost: ConnectionParameters | None = None,
                       ) -> list[ConnectionParameters]:
        """The candidates in the order one connection attempt tries them."""
        candidates = list(self._candidates)
        if self._host_selector is not None:
            chosen = list(self._host_selector(candidates))
            if not chosen or any(c not in candidates for c in chosen):
                raise ValueError("host_selector must return some of the candidates it was "
                                 f"given, not {chosen!r}")
            return chosen
        if self._shuffle_hosts:
            random.shuffle(candidates)
        if lost is not None and len(candidates) > 1 and lost in candidates:
            candidates.remove(lost)  # the node just lost is tried last
            candidates.append(lost)
        return candidates

    def _connect_link(self, params: ConnectionParameters) -> Link:
        """Open a link to `params` and make it the current one; raise why not."""
        link = Link(params, self._client_settings(params), self._host)
        try:
            link.open()
        except IncompatibleProtocolError as exc:
            # A server that closed before sending a byte (a load balancer without a
            # backend, a broker starting up) did not answer with another protocol:
            # that is retried like any refused connect.
            exc.answered = link.engine.peer_spoke  # type: ignore[attr-defined]
            raise
        self._link = link
        self.params = params
        self.server_properties = link.server_properties
        self._telemetry.info.host, self._telemetry.info.port = params.host, params.port
        return link

    def _client_settings(self, params: ConnectionParameters) -> ClientSettings:
        credentials = self._credentials.resolve(params.credentials)
        if (self._secret is not None and isinstance(credentials, PlainCredentials)
                and not is_provider(params.credentials)):
            credentials = PlainCredentials(credentials.username, self._secret)
        return ClientSettings(
            credentials=credentials, virtual_host=params.virtual_host,
            heartbeat=params.heartbeat, frame_max=params.frame_max,
            channel_max=params.channel_max, max_message_size=params.max_message_size,
            connection_name=self.name or params.connection_name,
            client_properties=params.client_properties, locale=params.locale,
            zero_heartbeat_disables=params.zero_heartbeat_disables)

    # ------------------------------------------------------------------ state

    @property
    def is_open(self) -> bool:
        link = self._link
        return bool(not self._closed.is_set() and link is not None and link.is_open)

    @property
    def is_closed(self) -> bool:
        return bool(self._closed.is_set())

    @property
    def is_blocked(self) -> bool:
        return not self._unblocked.is_set()

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
            raise self._wrong_state()
        return self._open_channel(channel_number, register=True)

    def _wrong_state(self) -> ConnectionWrongStateError:
        state = "closed" if self._closed.is_set() else "not open"
        error = ConnectionWrongStateError(f"connection is {state}")
        error.__cause__ = self._error
        return error

    def _open_channel(self, channel_number: int | None, register: bool) -> Channel:
        assert self._link is not None
        channel = Channel(self._host, self._link, None if register else NO_TELEMETRY)
        channel_control.set_guard(channel, self._guard)
        request = channel_control.start_open(channel, channel_number)
        if register:
            self._channels[channel.channel_number] = channel
        channel_control.await_open(channel, request)
        return channel

    # ------------------------------------------------------------------ the link's reports

    def _on_blocked(self, reason: str) -> None:
        log.warning("broker blocked the connection: %s", reason)
        if self._unblocked.is_set():
            self._blocked_at = time.monotonic()
            if self._telemetry.blocked is not None:
                self._telemetry.blocked(self._telemetry.info, reason)
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
        tm = self._telemetry
        if not self._unblocked.is_set() and tm.unblocked is not None:
            tm.unblocked(tm.info, time.monotonic() - self._blocked_at)
        self._unblocked.set()
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

    def _on_link_lost(self, error: AMQPError) -> None:
        """The current link ended: recover, or close for good."""
        if self._closed.is_set():
            return
        supervisor = self._supervisor
        if supervisor is not None and not self._app_closing and supervisor.should_recover(error):
            self._suspend(supervisor, error)
            return
        self._final_close(error)

    def _suspend(self, supervisor: Supervisor, error: AMQPError) -> None:
        """The link died under a recovering connection: suspend, let the supervisor work."""
        self._end_private(error)
        republish = supervisor.settings.republish_unconfirmed
        for channel in list(self._channels.values()):
            channel_control.suspend(channel, error, republish)
        self._clear_blocked()
        link = self._link
        if link is not None:  # a close-ok the broker's close asked for still goes out
            link.shut_down()
        if supervisor.recovering:
            return  # lost again while restoring: the supervisor's loop carries on
        for callback in self._lost_callbacks:
            self._dispatcher.submit(callback, self, error)
        self._lost_at = time.monotonic()
        if self._telemetry.lost is not None:
            self._telemetry.lost(self._telemetry.info, error)
        supervisor.start(error)

    def _end_private(self, error: AMQPError) -> None:
        private, self._private = self._private, None
        if private is not None:
            channel_control.end(private, error)

    def _drop_link(self) -> None:
        link = self._link
        if link is not None:
            link.abort()

    def _wait_recovered(self) -> None:
        if self._supervisor is not None:
            self._supervisor.wait()
        if self._closed.is_set() and self._error is not None:
            raise self._error

    def _final_close(self, error: AMQPError) -> None:
        if self._closed.is_set():
            return
        self._error = error
        level = logging.INFO if isinstance(error, ConnectionClosedByClient) else logging.WARNING
        log.log(level, "connection to %s closed: %r", self.params, error)
        self._end_private(error)
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            channel_control.end(channel, error)
        self._clear_blocked()
        self._closed.set()
        for callback in self._close_callbacks:
            self._dispatcher.submit(callback, self, error)
        tm = self._telemetry
        if tm.closed is not None:
            tm.closed(tm.info, None if isinstance(error, ConnectionClosedByClient) else error)
        self._finish(error)
        link = self._link
        if link is not None:  # last: this may be the link's reader, which it stops
            link.shut_down()

    def _finish(self, error: AMQPError) -> None:
        self._credentials.stop()
        self._error = error
        self._closed.set()
        self._dispatcher.stop(drain=True)
        self._bridge.close(error)

    def _abort(self, error: AMQPError) -> None:
        self._drop_link()
        self._on_link_lost(error)

    # ------------------------------------------------------------------ public actions

    def close(self, reply_code: int = 200, reply_text: str = "Normal shutdown") -> None:
        """Close the connection and every channel on it. Safe to call more than once,
        from any number of greenlets; blocks until the broker confirms or 5 s pass.

        Unlike pika, closing a closed connection does nothing rather than raise:
        close() runs in `finally` blocks, `with` exits and several greenlets at
        once, where a second error would only hide the first (geamqp.pika raises,
        as pika does)."""
        if self._closed.is_set():
            return
        self._app_closing = True
        error = ConnectionClosedByClient(reply_code, reply_text)
        supervisor = self._supervisor
        if supervisor is not None and supervisor.recovering:
            supervisor.stop()
            self._drop_link()
            self._final_close(error)
            return
        link = self._link
        if link is None or not (link.close(reply_code, reply_text) or link.closing):
            self._abort(error)
            return
        if not self._closed.wait(_CLOSE_TIMEOUT):
            log.warning("broker did not answer connection.close within %s s; dropping the "
                        "socket", _CLOSE_TIMEOUT)
            self._abort(error)

    def update_secret(self, new_secret: str, reason: str) -> None:
        """Replace the connection's credential secret (e.g. a refreshed OAuth 2 token).

        Blocks until the broker accepts it; concurrent calls are answered in turn.
        Later reconnects (recovery) log in with the newest secret."""
        if isinstance(new_secret, bytes):
            new_secret = new_secret.decode("utf-8")
        if not isinstance(new_secret, str):
            raise TypeError(f"new_secret must be a str, not {type(new_secret).__name__}")
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, not {type(reason).__name__}")
        if self._supervisor is not None and self._supervisor.recovering:
            self._wait_recovered()
        link = self._link
        if not self.is_open or link is None:
            raise self._wrong_state()
        with self._credentials.lock:  # one update (or provider call) at a time
            self._secret = new_secret
            link.update_secret(new_secret.encode("utf-8"), reason).get()

    def _refresh_secret(self, new_secret: str, reason: str) -> None:
        """The credentials provider's refresh: update-secret now, never waiting for a
        recovery (which asks the provider itself)."""
        link = self._link
        if not self.is_open or link is None or self.is_recovering:
            raise self._wrong_state()
        link.update_secret(new_secret.encode("utf-8"), reason).get()

    def add_callback_threadsafe(self, callback: Callable[[], Any]) -> None:
        """Run `callback()` in the hub, in a greenlet; callable from any OS thread."""
        self._bridge.add_callback_threadsafe(callback)

    def call_later(self, delay: float, callback: Callable[[], Any]) -> gevent.Greenlet:
        """Run `callback()` in a new greenlet after `delay` seconds; kill it to cancel."""
        return gevent.spawn_later(delay, callback)

    def sleep(self, seconds: float) -> None:
        """Sleep this greenlet; the connection keeps working meanwhile."""
        gevent.sleep(seconds)

    def process_data_events(self, time_limit: float | None = 0) -> None:
        """pika compatibility: events are always processed (by the reader greenlet and
        the dispatchers), so this only yields, for `time_limit` seconds (None: once)."""
        gevent.sleep(time_limit or 0)


make_threadsafe(Connection, skip=("add_callback_threadsafe",))


class _Host:
    """The named interface a Connection offers its channels and its links."""

    __slots__ = ("bridge", "connection", "telemetry")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.bridge = connection._bridge
        self.telemetry: Telemetry = connection._telemetry

    # for channels (channel.ChannelHost)

    def wait_recovered(self) -> None:
        self.connection._wait_recovered()

    def wait_unblocked(self) -> None:
        self.connection._wait_unblocked()

    def record(self, method: Method, reply: Any) -> None:
        self.connection._topology.on_reply(method, reply)

    def consumer_gone(self, queue: str) -> None:
        conn = self.connection
        still = any(queue in channel_control.queues_consumed(c) for c in conn._channels.values())
        conn._topology.on_consumer_gone(queue, still)

    def run_callback(self, fn: Callable[..., Any], *args: Any) -> None:
        self.connection._dispatcher.submit(fn, *args)

    def channel_ended(self, channel: Channel) -> None:
        channels = self.connection._channels
        if channels.get(channel.channel_number) is channel:
            del channels[channel.channel_number]

    def channel_closed(self, channel: Channel, error: ChannelClosedByBroker,
                       refused: Method | None) -> bool:
        """The broker closed `channel`: True when channel recovery takes it over."""
        conn = self.connection
        supervisor = conn._supervisor
        if (supervisor is None or supervisor.recovering or conn._app_closing
                or not conn._recover_channels
                or conn._channels.get(channel.channel_number) is not channel
                or not retriable(error.reply_code, error.reply_text, refused)):
            return False
        if not channel_control.suspend_closed(channel, error,
                                              supervisor.settings.republish_unconfirmed):
            return False
        supervisor.restore_channel(channel)
        return True

    def nacked_before_any_ack(self, channel: Channel) -> None:
        """A nack before any ack on `channel` since it opened: a stale quorum leader
        may hold it; the supervisor reopens it (recovery.Supervisor.refresh_channel)."""
        conn = self.connection
        supervisor = conn._supervisor
        if (supervisor is None or supervisor.recovering or conn._app_closing
                or not conn._recover_channels
                or conn._channels.get(channel.channel_number) is not channel):
            return
        supervisor.refresh_channel(channel)

    # for links (_link.LinkHandler): reports of a link that is not current are stale

    def link_lost(self, link: Link, error: AMQPError) -> None:
        if link is self.connection._link:
            self.connection._on_link_lost(error)

    def link_blocked(self, link: Link, reason: str) -> None:
        if link is self.connection._link:
            self.connection._on_blocked(reason)

    def link_unblocked(self, link: Link) -> None:
        if link is self.connection._link:
            self.connection._on_unblocked()


class _RecoveryPort:
    """The named interface the supervisor (recovery.py) drives a Connection through."""

    __slots__ = ("connection",)

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    @property
    def topology(self) -> Topology:
        return self.connection._topology

    def candidates(self) -> list[ConnectionParameters]:
        """One attempt's order: shuffled (or chosen), the node just lost last."""
        return self.connection._attempt_order(lost=self.connection.params)

    def connect(self, params: ConnectionParameters) -> Link:
        return self.connection._connect_link(params)

    def current_link(self) -> Link | None:
        """The link, when open (channel recovery reopens a channel on it)."""
        link = self.connection._link
        return link if link is not None and link.is_open else None

    def release_private(self) -> None:
        """After a channel recovery: close the private channel it may have opened
        (unless a connection recovery, which owns it then, runs)."""
        conn = self.connection
        if conn._supervisor is not None and conn._supervisor.recovering:
            return
        private, conn._private = conn._private, None
        if private is not None and private.is_open:
            private.close()

    def drop_link(self) -> None:
        """After a failed attempt: a link still open is cut; a lost one is already
        shutting down, flushing what the broker is owed (close-ok)."""
        link = self.connection._link
        if link is not None and link.is_open:
            link.abort()

    def channels(self) -> list[Channel]:
        channels = self.connection._channels
        return [channels[n] for n in sorted(channels)]

    def private_channel(self) -> Channel:
        """The supervisor's own channel: a failed replay step closes it, not a user's."""
        conn = self.connection
        private = conn._private
        if private is None or not private.is_open:
            conn._private = None
            conn._private = conn._open_channel(None, register=False)
        assert conn._private is not None
        return conn._private

    def recovered(self) -> None:
        conn = self.connection
        private, conn._private = conn._private, None
        if private is not None and private.is_open:
            private.close()
        for callback in conn._recovered_callbacks:
            conn._dispatcher.submit(callback, conn)
        tm = conn._telemetry
        if tm.recovered is not None:
            tm.recovered(tm.info, time.monotonic() - conn._lost_at)

    def gave_up(self, error: AMQPError) -> None:
        conn = self.connection
        for callback in conn._recovery_failed_callbacks:
            conn._dispatcher.submit(callback, conn, error)
        tm = conn._telemetry
        if tm.recovery_failed is not None:
            tm.recovery_failed(tm.info, error)
        conn._supervisor = None
        conn._drop_link()
        conn._final_close(error)

    def queue_renamed(self, old: str, new: str) -> None:
        conn = self.connection
        log.info("server-named queue %r came back as %r", old, new)
        for channel in conn._channels.values():
            channel_control.rename_queue(channel, old, new)
        for callback in conn._renamed_callbacks:
            conn._dispatcher.submit(callback, old, new)
