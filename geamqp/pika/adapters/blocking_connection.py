"""`BlockingConnection`: pika 1.3's blocking connection API over one `geamqp.Connection`.

Underneath is geamqp: its reader greenlet reads the socket and answers heartbeats
whatever the application's callbacks do, its writer coalesces frames, every request is
pipelined, and the objects may be shared by greenlets and OS threads. There is no
recovery unless asked for: ``BlockingConnection(params, recover=True)`` (and the other
``recovery_*`` keywords of `geamqp.connect`) turns geamqp's supervisor on.

When callbacks run — the one place where pika and geamqp differ in kind.
geamqp runs consumer callbacks in a dispatcher greenlet per channel, as soon as a
delivery arrives. pika's BlockingConnection runs them only inside the blocking calls
that dispatch: `process_data_events()`, `sleep()`, `start_consuming()` and the
`consume()` generator, in the caller's thread, never while the application is in any
other call. Legacy code relies on that: state shared between the main loop and the
callbacks is not locked, a callback may assume the main loop is parked in
`start_consuming()`, thread callbacks (`add_callback_threadsafe`) run in the thread
that drives the connection, and an exception a callback raises comes out of
`start_consuming()`. So this layer keeps pika's rule: the geamqp callbacks it
registers only record the event (delivery, cancel, return, timer, thread callback,
blocked/unblocked) and wake the connection; the application's callbacks run in the
greenlet that calls a dispatching method, in the order the events arrived (connection
events first, then each channel's), one dispatcher at a time per connection. A call
made from inside a callback does not dispatch (no recursion), as in pika.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import gevent
from gevent.event import Event

from ... import parameters as _native_params
from ...connection import Connection, connect
from .. import exceptions as exc
from .. import frame, spec
from .._channel import BlockingChannel, dispatch_events, has_pending
from .._events import Timer, check_callable, check_str
from .._threads import OwnerThread, hub_bound
from ..connection import ConnectionParameters, heartbeat_request

__all__ = ["BlockingChannel", "BlockingConnection", "ReturnedMessage"]

log = logging.getLogger("geamqp.pika")

# How long a closed connection's close callbacks may take to report the reason.
_REASON_WAIT = 5.0


class ReturnedMessage:
    """A message returned by the broker (in `UnroutableError.messages`)."""

    __slots__ = ("body", "method", "properties")

    def __init__(self, method: Any, properties: Any, body: bytes) -> None:
        self.method = method
        self.properties = properties
        self.body = body


def _candidates(parameters: Any) -> list[_native_params.ConnectionParameters]:
    if parameters is None:
        return [ConnectionParameters()]
    if isinstance(parameters, _native_params.ConnectionParameters):
        return [parameters]
    if isinstance(parameters, Sequence) and not isinstance(parameters, str):
        found = list(parameters)
        if not found:
            raise ValueError("parameters must not be an empty sequence")
        for item in found:
            if not isinstance(item, _native_params.ConnectionParameters):
                raise TypeError(f"parameters must be ConnectionParameters or URLParameters, "
                                f"not {type(item).__name__}")
        return found
    raise TypeError(f"parameters must be ConnectionParameters, URLParameters or a sequence "
                    f"of them, not {type(parameters).__name__}")


@hub_bound("add_callback_threadsafe")
class BlockingConnection:
    """pika's ``BlockingConnection(parameters=None)``; open when it returns.

    Keywords beyond pika's (all optional): ``recover`` (False here; True turns on
    geamqp's recovery), ``name``, and geamqp's ``recovery_*`` /
    ``republish_unconfirmed`` settings.
    """

    def __init__(self, parameters: Any = None, _impl_class: Any = None, *,
                 recover: bool = False, name: str | None = None, **recovery: Any) -> None:
        candidates = _candidates(parameters)
        self._note_heartbeat(candidates)
        self._impl: Connection = connect(candidates, name=name, recover=recover, **recovery)
        self._owner = OwnerThread(self._impl.add_callback_threadsafe)
        self._port = _DispatchPort(self)
        self._ready: deque[Callable[[], Any]] = deque()
        self._channels_pending: dict[int, BlockingChannel] = {}
        self._channels: dict[int, BlockingChannel] = {}
        self._wake = Event()
        self._dispatcher: Any = None  # the greenlet running callbacks now
        self._closing_reason: BaseException | None = None
        self._close_seen = Event()
        self._loss_reported = False
        self._impl.add_on_close_callback(self._on_impl_closed)

    @staticmethod
    def _note_heartbeat(candidates: list[_native_params.ConnectionParameters]) -> None:
        for params in candidates:
            asked = heartbeat_request(params)
            if callable(asked):
                log.warning("heartbeat=%r: a callable is not supported by geamqp.pika; the "
                            "broker's interval is used (geamqp's reader answers heartbeats "
                            "while callbacks run)", asked)

    def __repr__(self) -> str:
        return f"<BlockingConnection impl={self._impl!r}>"

    def __enter__(self) -> BlockingConnection:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.is_open:
            self.close()

    # ------------------------------------------------------------------ state

    @property
    def is_closed(self) -> bool:
        return self._impl.is_closed

    @property
    def is_open(self) -> bool:
        return self._impl.is_open

    def _capability(self, name: str) -> bool:
        capabilities = self._impl.server_properties.get("capabilities") or {}
        return bool(capabilities.get(name, False))

    @property
    def basic_nack_supported(self) -> bool:
        return self._capability("basic.nack")

    @property
    def consumer_cancel_notify_supported(self) -> bool:
        return self._capability("consumer_cancel_notify")

    @property
    def exchange_exchange_bindings_supported(self) -> bool:
        return self._capability("exchange_exchange_bindings")

    @property
    def publisher_confirms_supported(self) -> bool:
        return self._capability("publisher_confirms")

    basic_nack = basic_nack_supported
    consumer_cancel_notify = consumer_cancel_notify_supported
    exchange_exchange_bindings = exchange_exchange_bindings_supported
    publisher_confirms = publisher_confirms_supported

    def _on_impl_closed(self, _connection: Any, reason: BaseException) -> None:
        if self._closing_reason is None:
            self._closing_reason = reason
        self._close_seen.set()
        self._wake.set()

    def _wait_close_callbacks(self) -> None:
        """geamqp runs close callbacks in its own greenlet: the reason follows shortly."""
        if self._impl.is_closed and not self._close_seen.is_set():
            self._close_seen.wait(_REASON_WAIT)

    def _raise_loss_once(self) -> None:
        """The first call to see an unexpected close raises its reason (pika would have
        seen it in that call's I/O); later calls raise the WrongState error."""
        if not self._impl.is_closed:
            return
        self._wait_close_callbacks()
        reason = self._closing_reason
        if (reason is not None and not self._loss_reported
                and not isinstance(reason, exc.ConnectionClosedByClient)):
            self._loss_reported = True
            raise reason

    def _check_open(self) -> None:
        if not self._impl.is_closed:  # open, or being recovered (calls wait for that)
            return
        self._raise_loss_once()
        raise exc.ConnectionWrongStateError(
            f"connection is closed ({self._closing_reason!r})") from self._closing_reason

    # ------------------------------------------------------------------ dispatch

    def _post(self, callback: Callable[[], Any]) -> None:
        self._ready.append(callback)
        self._wake.set()

    def _request_dispatch(self, channel: BlockingChannel) -> None:
        self._channels_pending[channel.channel_number] = channel
        self._wake.set()

    def _in_dispatch(self) -> bool:
        return self._dispatcher is gevent.getcurrent()

    def _dispatchable(self) -> bool:
        return self._dispatcher is None and bool(self._ready or self._channels_pending)

    def _wait_dispatchable(self, time_limit: float | None) -> None:
        """Until something can be dispatched, the connection closed, or time is up."""
        if time_limit == 0:
            gevent.sleep(0)  # let the reader and geamqp's dispatchers run once
            return
        loop = gevent.get_hub().loop
        deadline = None if time_limit is None else loop.now() + time_limit
        while not self._dispatchable() and not self._impl.is_closed:
            self._wake.clear()
            if self._dispatchable():
                return
            left = None if deadline is None else deadline - loop.now()
            if left is not None and left <= 0:
                return
            self._wake.wait(left)

    def _dispatch(self) -> bool:
        """Run what is ready, in this greenlet; False if nothing was (or another greenlet
        is dispatching)."""
        if not self._dispatchable():
            return False
        self._dispatcher = gevent.getcurrent()
        try:
            for _ in range(len(self._ready)):
                if not self._ready:
                    break
                self._ready.popleft()()
            while self._channels_pending:
                number = next(iter(self._channels_pending))
                channel = self._channels_pending.pop(number)
                try:
                    dispatch_events(channel)
                except BaseException:  # a callback raised: what it left waits for next time
                    if has_pending(channel):
                        self._channels_pending.setdefault(number, channel)
                    raise
        finally:
            self._dispatcher = None
            self._wake.set()  # other greenlets waiting to dispatch look again
        return True

    def process_data_events(self, time_limit: float | None = 0) -> None:
        """Dispatch the callbacks that are ready, waiting up to `time_limit` seconds for
        some (0: none; None: until at least one dispatch happened). From inside a
        callback it only waits: callbacks never nest."""
        if time_limit is not None and not isinstance(time_limit, (int, float)):
            raise TypeError(f"time_limit must be a number or None, not "
                            f"{type(time_limit).__name__}")
        self._check_open()
        if self._in_dispatch():
            gevent.sleep(time_limit or 0)
            return
        while True:
            self._wait_dispatchable(time_limit)
            if self._dispatch() or time_limit is not None or self._impl.is_closed:
                break
        if self._impl.is_closed:
            self._raise_loss_once()

    def sleep(self, duration: float) -> None:
        """Sleep `duration` seconds, dispatching callbacks meanwhile."""
        if duration < 0:
            raise ValueError(f"duration must not be negative, not {duration!r}")
        loop = gevent.get_hub().loop
        deadline = loop.now() + duration
        left = duration
        while True:
            self.process_data_events(left)
            left = deadline - loop.now()
            if left <= 0:
                break

    # ------------------------------------------------------------------ timers and threads

    def call_later(self, delay: float, callback: Callable[[], Any]) -> Timer:
        """Run `callback()` at a dispatch point after `delay` seconds; returns a handle
        for `remove_timeout`."""
        check_callable(callback, "callback")
        timer = Timer(callback)
        timer.greenlet = self._impl.call_later(delay, functools.partial(self._fire, timer))
        return timer

    add_timeout = call_later  # pika 0.x's name

    def _fire(self, timer: Timer) -> None:
        if timer.fire():
            self._post(timer)

    def remove_timeout(self, timeout_id: Any) -> None:
        """Cancel a timer: safe on one that already ran, and from its own callback."""
        if isinstance(timeout_id, Timer):
            timeout_id.cancel()
            with contextlib.suppress(ValueError):
                self._ready.remove(timeout_id)

    def add_callback_threadsafe(self, callback: Callable[[], Any]) -> None:
        """From any thread: run `callback()` in the connection's thread, at its next
        dispatch point. Raises ConnectionWrongStateError once the connection is closed."""
        check_callable(callback, "callback")
        if self._impl.is_closed:
            raise exc.ConnectionWrongStateError(
                "add_callback_threadsafe() called on a closed connection")
        self._impl.add_callback_threadsafe(functools.partial(self._post, callback))

    def add_on_connection_blocked_callback(self, callback: Callable[..., Any]) -> None:
        """`callback(connection, method_frame)` when the broker blocks publishing."""
        check_callable(callback, "callback")
        self._impl.add_on_connection_blocked_callback(
            lambda _conn, reason: self._post(functools.partial(
                callback, self, frame.Method(0, spec.Connection.Blocked(reason or "")))))

    def add_on_connection_unblocked_callback(self, callback: Callable[..., Any]) -> None:
        """`callback(connection, method_frame)` when the broker unblocks it."""
        check_callable(callback, "callback")
        self._impl.add_on_connection_unblocked_callback(
            lambda _conn, _reason: self._post(functools.partial(
                callback, self, frame.Method(0, spec.Connection.Unblocked()))))

    # ------------------------------------------------------------------ channels and closing

    def channel(self, channel_number: int | None = None) -> BlockingChannel:
        """Open a channel (the lowest free number unless given)."""
        if channel_number is not None and (isinstance(channel_number, bool)
                                           or not isinstance(channel_number, int)):
            raise TypeError(f"channel_number must be an int or None, not "
                            f"{type(channel_number).__name__}")
        self._check_open()
        channel = BlockingChannel(self._impl.channel(channel_number), self, self._port)
        self._channels[channel.channel_number] = channel
        return channel

    def close(self, reply_code: int = 200, reply_text: str = "Normal shutdown") -> None:
        """Close every open channel (cancelling its consumers), then the connection.
        A second close raises ConnectionWrongStateError."""
        self._check_open()
        for channel in list(self._channels.values()):
            if channel.is_open:
                try:
                    channel.close(reply_code, reply_text)
                except exc.ChannelClosed as error:
                    log.warning("channel closed by the broker while closing: %r", error)
        self._channels.clear()
        if self._closing_reason is None:
            self._closing_reason = exc.ConnectionClosedByClient(reply_code, reply_text)
        self._impl.close(reply_code, reply_text)

    def update_secret(self, new_secret: str, reason: str) -> None:
        check_str(new_secret, "new_secret")
        check_str(reason, "reason")
        self._check_open()
        self._impl.update_secret(new_secret, reason)


class _DispatchPort:
    """The named interface a BlockingConnection offers its channels (_channel.DispatchPort)."""

    __slots__ = ("_connection", "owner")

    def __init__(self, connection: BlockingConnection) -> None:
        self._connection = connection
        self.owner = connection._owner

    def raise_loss_once(self) -> None:
        self._connection._raise_loss_once()

    def loss_observed(self) -> None:
        self._connection._loss_reported = True

    def request_dispatch(self, channel: BlockingChannel) -> None:
        self._connection._request_dispatch(channel)

    def in_dispatch(self) -> bool:
        return self._connection._in_dispatch()
