"""The Channel API: pika's method names and defaults, blocking only the calling greenlet.

Rules:
- The channel's lifecycle is the table of `_channel_state.py`; `_transition`
  is the only writer of `_state`. What each public call does in each state is
  `CALLS_BY_STATE` there (and the README's Recovery section).
- Synchronous methods are pipelined: each caller appends its request and
  queues its frame in one step (no yield between), and the broker answers a
  channel's requests in order, so the oldest request takes the next reply.
  What a reply changes (topology, qos, confirm mode, a consumer going live)
  is applied by the reader when the reply arrives, not by the caller — so a
  caller interrupted by `gevent.Timeout` or `kill()` leaves nothing half-made:
  an abandoned channel.open is closed, an abandoned consumer is cancelled.
- Deliveries flow as soon as `basic_consume` returns; callbacks run in the
  channel's dispatcher greenlet (see consumer.py).
- When the channel closes, every waiter and every pending confirmation get the
  closing exception (`ChannelClosedByBroker(code, text)`, `ChannelClosedByClient`,
  or the connection's); later calls raise `ChannelWrongStateError` whose
  `__cause__` is that exception.
- The module functions at the end (`suspend`, `begin_restore`, ...) are the
  named interface through which connection.py and recovery.py drive a channel.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import gevent
from gevent.event import AsyncResult, Event
from gevent.queue import Empty, Queue

from . import _reconsume
from ._ack_guard import ConsumerTimeoutGuard, HeldDeliveries
from ._channel_state import ChannelEvent, ChannelState, next_state
from ._hub import HubBridge, make_threadsafe
from ._telemetry import Telemetry
from .consumer import Confirmation, Consumer, Dispatcher, OnMessage, ReturnedMessage
from .exceptions import (
    AMQPError,
    ChannelClosedByBroker,
    ChannelClosedByClient,
    ChannelWrongStateError,
    ConnectionClosedByClient,
    ConsumerCancelled,
    DuplicateConsumerTag,
    NackError,
    PublishOutcomeUnknown,
    UnroutableError,
)
from .protocol.properties import BasicProperties
from .protocol.spec import Basic, Confirm, Exchange, Method, Tx
from .protocol.spec import Channel as ChannelSpec
from .protocol.spec import Queue as Q

if TYPE_CHECKING:
    from ._link import Link

__all__ = ["Channel", "ChannelHost"]

log = logging.getLogger("geamqp.channel")

_tag_counter = itertools.count(1)
# Consumer tags need only be unique per channel; a per-process random part keeps
# them distinct across processes in the management UI (no urandom per consumer).
_TAG_SUFFIX = uuid.uuid4().hex[:16]

OPENING, OPEN, CLOSING, CLOSED = (ChannelState.OPENING, ChannelState.OPEN,
                                  ChannelState.CLOSING, ChannelState.CLOSED)
SUSPENDED, RESTORING = ChannelState.SUSPENDED, ChannelState.RESTORING


def _explain_publish_error(exchange: Any, routing_key: Any, body: Any) -> None:
    """The encoder failed on a publish's arguments: raise the TypeError naming the
    first wrong one (else the caller re-raises the encoder's own error)."""
    _require_str("exchange", exchange, "routing_key", routing_key)
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError(f"body must be bytes or str, not {type(body).__name__}") from None


def _new_tag() -> str:
    return f"ctag{next(_tag_counter)}.{_TAG_SUFFIX}"


def _require_str(*names_and_values: Any) -> None:
    """TypeError naming the first argument that is not a str (before anything is sent:
    the encoder would fail deep inside, or send garbage)."""
    for name, value in zip(names_and_values[::2], names_and_values[1::2], strict=True):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, not {type(value).__name__}")


class ChannelHost(Protocol):
    """What a channel needs from its connection (implemented in connection.py)."""

    connection: Any  # the Connection, as users see it (`channel.connection`)
    bridge: HubBridge
    telemetry: Telemetry

    def wait_recovered(self) -> None: ...
    def wait_unblocked(self) -> None: ...
    def record(self, method: Method, reply: Any) -> None: ...
    def consumer_gone(self, queue: str) -> None: ...
    def run_callback(self, fn: Callable[..., Any], *args: Any) -> None: ...
    def channel_ended(self, channel: Channel) -> None: ...
    def channel_closed(self, channel: Channel, error: ChannelClosedByBroker,
                       refused: Method | None) -> bool: ...
    def nacked_before_any_ack(self, channel: Channel) -> None: ...


class _Request:
    """One request awaiting its reply. `effect(reply)` runs in the reader when the
    reply arrives, whether or not anyone still waits for `result`."""

    __slots__ = ("effect", "method", "replies", "result")

    def __init__(self, method: Method | None, replies: tuple[type[Method], ...],
                 effect: Callable[[Any], None] | None) -> None:
        self.method = method
        self.replies = replies
        self.effect = effect
        self.result: AsyncResult = AsyncResult()


class Channel:
    """One AMQP channel on a `Connection`. Create with `connection.channel()`."""

    def __init__(self, host: ChannelHost, link: Link, telemetry: Telemetry | None = None) -> None:
        self.connection = host.connection
        self.channel_number = 0
        self._host = host
        self._link = link
        self._bridge = host.bridge  # for the thread-safety wrapper of every method
        self._state = OPENING
        self._error: AMQPError | None = None  # why it closed
        self._requests: deque[_Request] = deque()
        self._consumers: dict[str, Consumer] = {}
        self._confirms: dict[int, Confirmation] = {}
        self._confirm_mode = False
        self._dispatcher = Dispatcher(f"geamqp-channel-{id(self):x}")
        self._return_callbacks: list[Callable[..., Any]] = []
        self._cancel_callbacks: list[Callable[..., Any]] = []
        self._close_callbacks: list[Callable[..., Any]] = []
        self._consuming = Event()  # set when start_consuming should re-check its condition
        self._stop_requested = False
        self._closed_event = Event()
        self._qos: tuple[int, int, bool] | None = None  # restored after a reconnect
        self._tx_mode = False
        self._tag_offset = 0  # delivery tags of earlier connection generations end here
        self._last_tag = 0
        self._republish: list[Confirmation] = []
        self._closer: gevent.Greenlet | None = None  # the greenlet inside close()
        # A channel restored by a recovery whose first confirms are nacks may be pinned
        # to a dead quorum leader (recovery.py, `refresh_channel`). A channel never
        # restored is never refreshed: its nacks are the broker's word.
        self._acked_since_open = False
        self._opened_at = float("-inf")  # when a recovery last restored it
        self._refreshes = 0  # reopens for a nack streak since the last ack
        self._restored = Event()  # cleared while a channel recovery of its own runs
        self._restored.set()
        self._recovered_callbacks: list[Callable[..., Any]] = []
        self._reconsuming: set[str] = set()  # tags waiting to re-consume after a broker cancel
        self._held: HeldDeliveries | None = None  # the consumer-timeout guard's (_ack_guard.py)
        tm = self._tm = telemetry or host.telemetry
        # One flag per hot path: without a collector each costs a single test.
        self._observe_publish = (tm.published is not None or tm.before_publish is not None
                                 or tm.times_confirms)
        self._observe_delivery = tm.delivered is not None

    def __repr__(self) -> str:
        return f"<Channel number={self.channel_number} {self._state.value}>"

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ state

    def _transition(self, event: ChannelEvent) -> bool:
        """The only writer of `_state`; True when `event` changed it."""
        new = next_state(self._state, event)
        if new is None:
            return False
        log.debug("channel %s: %s -> %s (%s)", self.channel_number, self._state.value,
                  new.value, event.name)
        self._state = new
        return True

    @property
    def state(self) -> ChannelState:
        return self._state

    @property
    def is_open(self) -> bool:
        return self._state is OPEN

    @property
    def is_closed(self) -> bool:
        return self._state is CLOSED

    @property
    def is_closing(self) -> bool:
        return self._state is CLOSING

    @property
    def consumer_tags(self) -> list[str]:
        return [tag for tag, c in self._consumers.items() if not c.orphaned]

    def _accepting(self) -> bool:
        """Manual-ack deliveries go to callbacks (OPEN, or RESTORING once a consumer
        is back); while SUSPENDED the broker will redeliver them."""
        state = self._state
        return state is OPEN or state is RESTORING

    def _not_ending(self) -> bool:
        """Auto-ack deliveries are the application's once received: they still go to
        callbacks while the channel is SUSPENDED (nothing will redeliver them), and
        stop only when it is closing or closed."""
        state = self._state
        return state is not CLOSING and state is not CLOSED

    def _live_for(self, auto_ack: bool) -> Callable[[], bool]:
        return self._not_ending if auto_ack else self._accepting

    def _await_open(self) -> None:
        """Return when the channel is OPEN; wait out a recovery; raise otherwise."""
        if self._state is OPEN:
            return
        if self._state is SUSPENDED or self._state is RESTORING:
            self._host.wait_recovered()
            if self._state is not OPEN:
                self._restored.wait()  # a channel recovery (bounded: it ends the channel)
            if self._state is OPEN:
                return
        raise self._wrong_state()

    def _wrong_state(self) -> ChannelWrongStateError:
        error = ChannelWrongStateError(f"channel {self.channel_number} is {self._state.value}")
        error.__cause__ = self._error
        return error

    def add_on_close_callback(self, callback: Callable[[Channel, AMQPError], Any]) -> None:
        """`callback(channel, exception)` when the channel closes, for any reason."""
        self._close_callbacks.append(callback)

    def add_on_channel_recovered_callback(self, callback: Callable[[Channel], Any]) -> None:
        """`callback(channel)` each time the channel is reopened and restored (qos,
        modes, consumers) after a connection recovery or a channel recovery
        (``recover_channels``); it runs in the connection's dispatcher."""
        self._recovered_callbacks.append(callback)

    def add_on_return_callback(self, callback: Callable[..., Any]) -> None:
        """`callback(channel, method, properties, body)` for each basic.return not
        claimed by a confirm-mode publish."""
        self._return_callbacks.append(callback)

    def add_on_cancel_callback(self, callback: Callable[[Any], Any]) -> None:
        """`callback(method_frame)` when the broker cancels one of this channel's consumers."""
        self._cancel_callbacks.append(callback)

    # ------------------------------------------------------------------ requests

    def _rpc(self, method: Method, effect: Callable[[Any], None] | None = None) -> Any:
        if self._state is not OPEN:
            self._await_open()
        return self._call(method, method.RESPONSES, effect)

    def _call(self, method: Method, replies: tuple[type[Method], ...],
              effect: Callable[[Any], None] | None) -> Any:
        request = self._send_request(method, replies, effect)
        self._link.request_flush()
        return request.result.get()

    def _send_request(self, method: Method, replies: tuple[type[Method], ...],
                      effect: Callable[[Any], None] | None) -> _Request:
        """Queue `method` and its request in one step (no yield)."""
        request = _Request(method, replies, effect)
        self._link.request(self.channel_number, method)
        self._requests.append(request)
        log.debug("channel %s: sent %s", self.channel_number, method.NAME)
        return request

    def _resolve(self, reply: Any, value: Any = None) -> None:
        """Give `reply` to the oldest request expecting it, applying its effect."""
        requests = self._requests
        if not requests or type(reply) not in requests[0].replies:
            log.warning("channel %s: unexpected %s dropped", self.channel_number, reply.NAME)
            return
        request = requests.popleft()
        if request.method is not None:
            log.debug("channel %s: %s answered", self.channel_number, request.method.NAME)
            self._host.record(request.method, reply)
        if request.effect is not None:
            try:
                request.effect(reply)
            except Exception:
                log.exception("channel %s: applying %s failed", self.channel_number, reply.NAME)
        request.result.set(reply if value is None else value)

    def _release_requests(self, error: AMQPError) -> None:
        """Every request still waiting for a reply fails with `error`."""
        requests, self._requests = self._requests, deque()
        for request in requests:
            request.result.set_exception(error)

    # ------------------------------------------------------------------ events (the link)

    def on_link_opened(self) -> None:
        self._resolve(ChannelSpec.OpenOk())

    def on_link_method(self, method: Method) -> None:
        kind = type(method)
        if kind is Basic.Ack:
            if not self._acked_since_open:
                self._acked_since_open = True
                self._refreshes = 0  # the streak is over
            self._on_confirm(method.delivery_tag, method.multiple, True)  # type: ignore[attr-defined]
        elif kind is Basic.Nack:
            self._on_confirm(method.delivery_tag, method.multiple, False)  # type: ignore[attr-defined]
            if not self._acked_since_open:
                self._host.nacked_before_any_ack(self)
        elif kind is Basic.Cancel:
            self._on_broker_cancel(method)  # type: ignore[arg-type]
        elif kind is ChannelSpec.Flow:
            log.info("channel %s: broker set flow active=%s", self.channel_number,
                     method.active)  # type: ignore[attr-defined]
        else:
            self._resolve(method)

    def on_link_content(self, method: Method, properties: BasicProperties, body: bytes) -> None:
        kind = type(method)
        if self._observe_delivery and kind is not Basic.Return:
            self._tm.delivered(self._tm.info, self.channel_number,  # type: ignore[misc]
                               len(body), method.redelivered)  # type: ignore[attr-defined]
        if kind is Basic.Deliver:
            if self._tag_offset:
                method.delivery_tag += self._tag_offset  # type: ignore[attr-defined]
            self._last_tag = method.delivery_tag  # type: ignore[attr-defined]
            consumer = self._consumers.get(method.consumer_tag)  # type: ignore[attr-defined]
            if self._held is not None and consumer is not None and not consumer.auto_ack:
                self._held.delivered(method.delivery_tag, consumer.tag)  # type: ignore[attr-defined]
            if consumer is None or consumer.orphaned:
                self._unclaimed(consumer, method)  # type: ignore[arg-type]
            elif consumer.sink is not None:
                consumer.sink.put((method, properties, body))
            else:
                self._dispatcher.submit(consumer.run, method, properties, body)
        elif kind is Basic.GetOk:
            if self._tag_offset:
                method.delivery_tag += self._tag_offset  # type: ignore[attr-defined]
            self._last_tag = method.delivery_tag  # type: ignore[attr-defined]
            self._resolve(method, (method, properties, body))
        elif kind is Basic.Return:
            self._on_return(method, properties, body)  # type: ignore[arg-type]

    def _unclaimed(self, consumer: Consumer | None, method: Basic.Deliver) -> None:
        """A delivery nobody will handle: give a manual-ack one back to the broker."""
        if consumer is None:
            log.warning("channel %s: delivery for unknown consumer %r dropped",
                        self.channel_number, method.consumer_tag)
        elif not consumer.auto_ack and self._state is OPEN:
            self._link.send(self.channel_number,
                            Basic.Reject(method.delivery_tag - self._tag_offset, True))

    def on_link_closed(self, reply_code: int, reply_text: str, by_peer: bool) -> None:
        error: AMQPError
        if by_peer:
            error = ChannelClosedByBroker(reply_code, reply_text)
            refused = self._requests[0].method if self._requests else None
            if self._host.channel_closed(self, error, refused):
                return  # suspended: channel recovery reopens it
        else:
            error = self._error or ChannelClosedByClient(reply_code, reply_text)
        self._end(error)

    def _on_return(self, method: Basic.Return, properties: BasicProperties, body: bytes) -> None:
        if self._tm.returned is not None:
            self._tm.returned(self._tm.info, self.channel_number, method.exchange,
                              method.routing_key, method.reply_code)
        returned = ReturnedMessage(method, properties, body)
        for confirmation in self._confirms.values():
            if (confirmation.mandatory and confirmation.returned is None
                    and confirmation.exchange == method.exchange
                    and confirmation.routing_key == method.routing_key
                    and confirmation.body == body):
                confirmation.returned = returned
                return
        for callback in self._return_callbacks:
            self._dispatcher.submit(callback, self, method, properties, body)
        if not self._return_callbacks:
            log.warning("channel %s: message returned (%s %s) with no return callback",
                        self.channel_number, method.reply_code, method.reply_text)

    def _on_confirm(self, tag: int, multiple: bool, acked: bool) -> None:
        confirms = self._confirms
        if multiple:
            # The dict is in seqno order (publishes register in order): stop at the
            # first one above `tag` instead of scanning every pending confirmation.
            done = []
            for seq in confirms:
                if seq > tag:
                    break
                done.append(seq)
        else:
            done = [tag] if tag in confirms else []
        tm = self._tm
        report = tm.acked if acked else tm.nacked
        now = time.monotonic() if report is not None else 0.0
        for seq in done:
            confirmation = confirms.pop(seq)
            if report is not None:
                report(tm.info, self.channel_number, now - confirmation.sent_at)
            if acked:
                confirmation.set_acked()
            else:
                confirmation.set_nacked()
        if not confirms:
            self._consuming.set()

    def _on_broker_cancel(self, method: Basic.Cancel) -> None:
        log.info("channel %s: broker cancelled consumer %r", self.channel_number,
                 method.consumer_tag)
        consumer = self._consumers.get(method.consumer_tag)
        if consumer is not None:
            self._after_broker_cancel(consumer)
        self._remove_consumer(method.consumer_tag, ConsumerCancelled(
            f"consumer {method.consumer_tag!r} was cancelled by the broker"), by_broker=True)
        for callback in self._cancel_callbacks:
            self._dispatcher.submit(callback, method)

    def _after_broker_cancel(self, consumer: Consumer) -> None:
        """Re-consume when the consumer opted in (see _reconsume.py), else tell its
        on_cancel that it is gone."""
        tag = consumer.tag
        if consumer.reconsume and self._state is OPEN:
            self._reconsuming.add(tag)

            def done() -> None:
                self._reconsuming.discard(tag)
                self._consuming.set()

            _reconsume.start(self, consumer, lambda: tag in self._reconsuming, done)
        elif consumer.on_cancel is not None:
            self._dispatcher.submit(consumer.on_cancel, self, tag)

    def _remove_consumer(self, tag: str, reason: BaseException | type[StopIteration],
                         by_broker: bool = False) -> None:
        """The one way a consumer ends (cancelled by us or the broker, or its queue is
        gone): a `consume()` generator gets `reason`; callbacks already queued or
        running still finish."""
        consumer = self._consumers.pop(tag, None)
        if consumer is not None:
            self._report_cancelled(consumer, by_broker)
            self._host.consumer_gone(consumer.queue)
            if consumer.sink is not None:
                consumer.sink.put(reason)
            else:
                self._dispatcher.submit(consumer.drain)
        self._consuming.set()

    def _report_cancelled(self, consumer: Consumer, by_broker: bool) -> None:
        tm = self._tm
        if tm.consumer_cancelled is not None and not consumer.orphaned:
            tm.consumer_cancelled(tm.info, self.channel_number, consumer.queue, consumer.tag,
                                  by_broker)

    def _end(self, error: AMQPError, event: ChannelEvent = ChannelEvent.ENDED) -> None:
        """The channel is closed for good (by the broker, by us, with its connection,
        or — `event` LINK_LOST — lost while opening or closing)."""
        if not self._transition(event) or self._state is not CLOSED:
            return
        self._error = error
        self._release_requests(error)
        confirms, self._confirms = self._confirms, {}
        for confirmation in confirms.values():
            confirmation.set_failed(error)
        # The dispatcher first: parked in a full pool's spawn(), it would start one
        # more callback in the slot that killing the pool frees.
        self._dispatcher.stop(spare=self._closer)
        consumers, self._consumers = self._consumers, {}
        for consumer in consumers.values():
            self._report_cancelled(consumer, False)
            if consumer.sink is not None:
                consumer.sink.put(error)
            consumer.stop()
        self._consuming.set()
        self._closed_event.set()
        self._restored.set()
        if self._held is not None:
            self._held.clear()
        self._link.detach(self.channel_number, self)
        self._host.channel_ended(self)
        log.log(logging.INFO if isinstance(error, ChannelClosedByBroker) else logging.DEBUG,
                "channel %s closed: %s", self.channel_number, error)
        tm = self._tm
        if tm.channel_closed is not None:
            orderly = (isinstance(error, (ChannelClosedByClient, ConnectionClosedByClient))
                       and error.reply_code == 200)
            tm.channel_closed(tm.info, self.channel_number, None if orderly else error)
        # Callbacks still running are released above (they could not ack or publish
        # on a closed channel anyway); the close callbacks run in the connection's
        # dispatcher instead.
        for callback in self._close_callbacks:
            self._host.run_callback(callback, self, error)

    # ------------------------------------------------------------------ lifecycle

    def close(self, reply_code: int = 200, reply_text: str = "Normal shutdown") -> None:
        """Close the channel; blocks until the broker confirms (close-ok). Closing a
        closed channel does nothing (see README: pika raises there, geamqp.pika too)."""
        state = self._state
        if state is CLOSED:
            return
        if state is CLOSING:
            self._closed_event.wait()
            return
        self._closer = gevent.getcurrent()
        self._error = ChannelClosedByClient(reply_code, reply_text)
        if state is SUSPENDED:
            self._end(self._error)
            return
        self._begin_close(reply_code, reply_text)
        self._closed_event.wait()

    def _begin_close(self, reply_code: int, reply_text: str) -> None:
        """OPENING/OPEN/RESTORING -> CLOSING: send channel.close; the broker drops
        replies to earlier requests now, so their waiters are released at once."""
        error = self._error or ChannelClosedByClient(reply_code, reply_text)
        self._error = error
        self._transition(ChannelEvent.CLOSE)
        self._release_requests(error)
        if not self._link.close_channel(self.channel_number, reply_code, reply_text):
            self._end(error)

    # ------------------------------------------------------------------ exchanges and queues

    def exchange_declare(self, exchange: str, exchange_type: str = "direct",
                         passive: bool = False, durable: bool = False,
                         auto_delete: bool = False, internal: bool = False,
                         arguments: dict[str, Any] | None = None) -> Exchange.DeclareOk:
        _require_str("exchange", exchange, "exchange_type", exchange_type)
        return self._rpc(Exchange.Declare(0, exchange, exchange_type, passive, durable,  # type: ignore[no-any-return]
                                          auto_delete, internal, False, arguments))

    def exchange_delete(self, exchange: str, if_unused: bool = False) -> Exchange.DeleteOk:
        _require_str("exchange", exchange)
        return self._rpc(Exchange.Delete(0, exchange, if_unused))  # type: ignore[no-any-return]

    def exchange_bind(self, destination: str, source: str, routing_key: str = "",
                      arguments: dict[str, Any] | None = None) -> Exchange.BindOk:
        _require_str("destination", destination, "source", source, "routing_key", routing_key)
        return self._rpc(Exchange.Bind(0, destination, source, routing_key, False,  # type: ignore[no-any-return]
                                       arguments))

    def exchange_unbind(self, destination: str, source: str, routing_key: str = "",
                        arguments: dict[str, Any] | None = None) -> Exchange.UnbindOk:
        _require_str("destination", destination, "source", source, "routing_key", routing_key)
        return self._rpc(Exchange.Unbind(0, destination, source, routing_key, False,  # type: ignore[no-any-return]
                                         arguments))

    def queue_declare(self, queue: str = "", passive: bool = False, durable: bool = False,
                      exclusive: bool = False, auto_delete: bool = False,
                      arguments: dict[str, Any] | None = None) -> Q.DeclareOk:
        _require_str("queue", queue)
        return self._rpc(Q.Declare(0, queue, passive, durable, exclusive, auto_delete,  # type: ignore[no-any-return]
                                   False, arguments))

    def queue_bind(self, queue: str, exchange: str, routing_key: str | None = None,
                   arguments: dict[str, Any] | None = None) -> Q.BindOk:
        key = queue if routing_key is None else routing_key
        _require_str("queue", queue, "exchange", exchange, "routing_key", key)
        return self._rpc(Q.Bind(0, queue, exchange, key, False, arguments))  # type: ignore[no-any-return]

    def queue_unbind(self, queue: str, exchange: str, routing_key: str | None = None,
                     arguments: dict[str, Any] | None = None) -> Q.UnbindOk:
        key = queue if routing_key is None else routing_key
        _require_str("queue", queue, "exchange", exchange, "routing_key", key)
        return self._rpc(Q.Unbind(0, queue, exchange, key, arguments))  # type: ignore[no-any-return]

    def queue_purge(self, queue: str) -> Q.PurgeOk:
        _require_str("queue", queue)
        return self._rpc(Q.Purge(0, queue))  # type: ignore[no-any-return]

    def queue_delete(self, queue: str, if_unused: bool = False,
                     if_empty: bool = False) -> Q.DeleteOk:
        _require_str("queue", queue)
        return self._rpc(Q.Delete(0, queue, if_unused, if_empty))  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ basic

    def basic_qos(self, prefetch_size: int = 0, prefetch_count: int = 0,
                  global_qos: bool = False) -> Basic.QosOk:
        def keep(_reply: Any) -> None:
            self._qos = (prefetch_size, prefetch_count, global_qos)
            # With a prefetch limit the broker bounds the backlog: no warning needed.
            self._dispatcher.warn_at = 0 if prefetch_count else Dispatcher.WARN_PENDING

        return self._rpc(Basic.Qos(prefetch_size, prefetch_count, global_qos), keep)  # type: ignore[no-any-return]

    def flow(self, active: bool) -> bool:
        """channel.flow: ask the broker to pause (False) or resume (True) deliveries;
        returns the state it confirms. RabbitMQ refuses active=False (540, closing
        the connection): pause consumers with basic_qos or basic_cancel instead."""
        ok = self._rpc(ChannelSpec.Flow(active))
        return bool(ok.active)

    def basic_recover(self, requeue: bool = False) -> Basic.RecoverOk:
        return self._rpc(Basic.Recover(requeue))  # type: ignore[no-any-return]

    def confirm_delivery(self) -> None:
        """Enable publisher confirms: publishes then block until acked (or use wait=False)."""
        if self._confirm_mode:
            return

        def keep(_reply: Any) -> None:
            self._confirm_mode = True

        self._rpc(Confirm.Select(), keep)

    @property
    def publisher_confirms(self) -> bool:
        return self._confirm_mode

    def tx_select(self) -> Tx.SelectOk:
        def keep(_reply: Any) -> None:
            self._tx_mode = True

        return self._rpc(Tx.Select(), keep)  # type: ignore[no-any-return]

    def tx_commit(self) -> Tx.CommitOk:
        return self._rpc(Tx.Commit())  # type: ignore[no-any-return]

    def tx_rollback(self) -> Tx.RollbackOk:
        return self._rpc(Tx.Rollback())  # type: ignore[no-any-return]

    def basic_publish(self, exchange: str, routing_key: str, body: bytes | str,
                      properties: BasicProperties | None = None, mandatory: bool = False,
                      wait: bool = True) -> Confirmation | None:
        """Publish a message.

        Without confirms this returns None once the frames are queued. In
        confirm mode it blocks this greenlet until the broker acks (raising
        `NackError` / `UnroutableError`), or with ``wait=False`` returns the
        `Confirmation` future at once.
        """
        if self._state is not OPEN:
            self._await_open()
        if isinstance(body, str):
            body = body.encode("utf-8")
        link = self._link
        if link.blocked:
            self._host.wait_unblocked()
            self._await_open()
            link = self._link
        if self._observe_publish:
            return self._publish_observed(exchange, routing_key, body, properties, mandatory,
                                          wait)
        try:
            seqno = link.publish(self.channel_number, exchange, routing_key, body, properties,
                                 mandatory)
        except (AttributeError, TypeError):  # free on the hot path until it happens
            _explain_publish_error(exchange, routing_key, body)
            raise
        if seqno:
            return self._confirmed(link, seqno, exchange, routing_key, body, properties,
                                   mandatory, wait, 0.0)
        link.push()
        return None

    def _publish_observed(self, exchange: str, routing_key: str, body: bytes,
                          properties: BasicProperties | None, mandatory: bool,
                          wait: bool) -> Confirmation | None:
        """basic_publish with a collector: the tracing hook, the count, the confirm's
        send time. (Kept apart so that the plain path pays one test for all of it.)"""
        tm, link, number = self._tm, self._link, self.channel_number
        if tm.before_publish is not None:
            properties = tm.before_publish(tm.info, number, exchange, routing_key, properties)
        try:
            seqno = link.publish(number, exchange, routing_key, body, properties, mandatory)
        except (AttributeError, TypeError):
            _explain_publish_error(exchange, routing_key, body)
            raise
        if tm.published is not None:
            tm.published(tm.info, number, exchange, routing_key, len(body))
        if seqno:
            return self._confirmed(link, seqno, exchange, routing_key, body, properties,
                                   mandatory, wait, time.monotonic() if tm.times_confirms else 0.0)
        link.push()
        return None

    def _confirmed(self, link: Link, seqno: int, exchange: str, routing_key: str, body: bytes,
                   properties: BasicProperties | None, mandatory: bool, wait: bool,
                   sent_at: float) -> Confirmation | None:
        """A publish in confirm mode, queued as `seqno`: its Confirmation is registered
        before anything can yield (the ack, or the channel's close, may arrive while
        back-pressure parks this greenlet in push()), then waited for unless `wait`
        is False."""
        confirmation = Confirmation(seqno, exchange, routing_key, body, properties, mandatory)
        confirmation.sent_at = sent_at
        self._confirms[seqno] = confirmation
        link.push()
        if wait:
            confirmation.wait()
            return None
        return confirmation

    def wait_for_confirms(self, timeout: float | None = None) -> bool:
        """Wait until every publish outstanding on this channel is resolved.

        Returns True when all were acked, False on timeout; raises `NackError` /
        `UnroutableError` listing the messages that were not.
        """
        pending = list(self._confirms.values())
        deadline = None if timeout is None else gevent.get_hub().loop.now() + timeout
        nacked: list[Any] = []
        returned: list[Any] = []
        for confirmation in pending:
            left = None if deadline is None else max(0.0, deadline - gevent.get_hub().loop.now())
            try:
                if not confirmation.wait(left):
                    return False
            except NackError as exc:
                nacked.extend(exc.messages)
            except UnroutableError as exc:
                returned.extend(exc.messages)
        if returned:
            raise UnroutableError(returned)
        if nacked:
            raise NackError(nacked)
        return True

    def _wire_tag(self, delivery_tag: int, multiple: bool) -> int:
        """The tag on the current link for a user-visible tag; -1 when the message
        belongs to a lost connection (the broker requeued it and redelivers it)."""
        state = self._state
        if state is not OPEN and state is not RESTORING:
            if state is SUSPENDED:
                return -1
            raise self._wrong_state()
        offset = self._tag_offset
        if not offset or delivery_tag > offset:
            return delivery_tag - offset
        if multiple and delivery_tag == 0:
            return 0  # "everything so far" on this connection
        log.debug("channel %s: ack/nack/reject of delivery tag %s from before the "
                  "reconnect dropped; the broker redelivers that message",
                  self.channel_number, delivery_tag)
        return -1

    def basic_ack(self, delivery_tag: int = 0, multiple: bool = False) -> None:
        if self._held is not None:
            self._held.settled(delivery_tag, multiple)
        if self._state is not OPEN or self._tag_offset:
            delivery_tag = self._wire_tag(delivery_tag, multiple)
            if delivery_tag < 0:
                return
        self._link.ack(self.channel_number, delivery_tag, multiple)
        if self._tm.delivery_acked is not None:
            self._tm.delivery_acked(self._tm.info, self.channel_number, delivery_tag, multiple)

    def basic_nack(self, delivery_tag: int = 0, multiple: bool = False,
                   requeue: bool = True) -> None:
        if self._held is not None:
            self._held.settled(delivery_tag, multiple)
        tag = self._wire_tag(delivery_tag, multiple)
        if tag >= 0:
            self._link.send(self.channel_number, Basic.Nack(tag, multiple, requeue))
            if self._tm.delivery_nacked is not None:
                self._tm.delivery_nacked(self._tm.info, self.channel_number, tag, multiple,
                                         requeue)

    def basic_reject(self, delivery_tag: int, requeue: bool = True) -> None:
        if self._held is not None:
            self._held.settled(delivery_tag, False)
        tag = self._wire_tag(delivery_tag, False)
        if tag >= 0:
            self._link.send(self.channel_number, Basic.Reject(tag, requeue))
            if self._tm.delivery_rejected is not None:
                self._tm.delivery_rejected(self._tm.info, self.channel_number, tag, requeue)

    def basic_get(self, queue: str, auto_ack: bool = False) -> tuple[Any, Any, Any]:
        """One message from `queue`: (method, properties, body), or (None, None, None)."""
        _require_str("queue", queue)
        reply = self._rpc(Basic.Get(0, queue, auto_ack))
        if isinstance(reply, Basic.GetEmpty):
            return None, None, None
        return reply  # type: ignore[no-any-return]

    def basic_consume(self, queue: str, on_message_callback: OnMessage, auto_ack: bool = False,
                      exclusive: bool = False, consumer_tag: str | None = None,
                      arguments: dict[str, Any] | None = None, *, executor: Any = None,
                      concurrency: int = 1, on_cancel: Callable[[Channel, str], Any] | None = None,
                      reconsume_on_cancel: bool = False) -> str:
        """Start a consumer; deliveries reach `on_message_callback(channel, method,
        properties, body)` from the moment this returns. Returns the consumer tag.

        `on_cancel(channel, consumer_tag)` runs when the broker ends the consumer (its
        queue deleted, a failover with x-cancel-on-ha-failover, a recovery that could
        not restore it). With `reconsume_on_cancel` the consumer is re-created once the
        queue exists again (bounded, see _reconsume.py); on_cancel then runs only if
        that fails. A stream consumer (x-stream-offset) resumes after the last offset
        delivered to the callback whenever it is restored."""
        _require_str("queue", queue)
        if consumer_tag is not None:
            _require_str("consumer_tag", consumer_tag)
        self._await_open()
        tag = consumer_tag or _new_tag()
        if tag in self._consumers:
            raise DuplicateConsumerTag(f"consumer tag {tag!r} is already in use on this channel")
        tm = self._tm
        if tm.wrap_consumer is not None:
            on_message_callback = tm.wrap_consumer(tm.info, self.channel_number, queue,
                                                   on_message_callback)
        consumer = Consumer(self, tag, queue, on_message_callback, auto_ack, exclusive,
                            arguments, executor, concurrency, live=self._live_for(auto_ack),
                            on_cancel=on_cancel, reconsume=reconsume_on_cancel)
        self._start_consumer(consumer)
        return tag

    def _start_consumer(self, consumer: Consumer) -> None:
        """basic.consume for `consumer`; if the caller is interrupted before consume-ok
        is seen, the consumer is cancelled in the background, never left orphaned."""
        self._consumers[consumer.tag] = consumer

        def on_consume_ok(_reply: Any) -> None:
            if consumer.orphaned:
                self._cancel_in_background(consumer.tag)

        request = self._send_request(consumer.consume_method(), (Basic.ConsumeOk,),
                                     on_consume_ok)
        try:
            self._link.request_flush()
            request.result.get()
            tm = self._tm
            if tm.consumer_added is not None:
                tm.consumer_added(tm.info, self.channel_number, consumer.queue, consumer.tag)
        except BaseException:
            if self._consumers.get(consumer.tag) is consumer:
                consumer.orphaned = True
                if request.result.successful():
                    self._cancel_in_background(consumer.tag)
                elif request.result.ready():  # refused, or the channel closed
                    self._consumers.pop(consumer.tag, None)
            raise

    def _cancel_in_background(self, tag: str) -> None:
        if self._state is not OPEN and self._state is not RESTORING:
            self._consumers.pop(tag, None)
            return
        self._send_request(Basic.Cancel(tag), (Basic.CancelOk,),
                           lambda _reply: self._remove_consumer(tag, StopIteration))
        self._link.kick()

    def basic_cancel(self, consumer_tag: str) -> None:
        """Cancel a consumer; deliveries already received are still dispatched."""
        self._reconsuming.discard(consumer_tag)
        if consumer_tag not in self._consumers:
            return
        try:
            if self._state is OPEN:
                self._rpc(Basic.Cancel(consumer_tag))
        finally:
            self._remove_consumer(consumer_tag, StopIteration)

    # ------------------------------------------------------------------ consuming loops

    def start_consuming(self) -> None:
        """Block this greenlet while the channel has consumers.

        Returns after `stop_consuming()` or when every consumer is cancelled;
        raises the closing exception if the channel or connection closes.
        """
        self._stop_requested = False
        while True:
            self._consuming.clear()
            if self._state is CLOSED:
                assert self._error is not None
                raise self._error
            if self._stop_requested or not (self._consumers or self._reconsuming):
                return
            self._consuming.wait()

    def stop_consuming(self, consumer_tag: str | None = None) -> None:
        """Cancel the given consumer, or all of them, ending `start_consuming()`."""
        tags = [consumer_tag] if consumer_tag else list(self._consumers)
        self._stop_requested = consumer_tag is None
        for tag in tags:
            if self._state is OPEN:
                self.basic_cancel(tag)
        self._consuming.set()

    def consume(self, queue: str, auto_ack: bool = False, exclusive: bool = False,
                arguments: dict[str, Any] | None = None,
                inactivity_timeout: float | None = None) -> Iterator[tuple[Any, Any, Any]]:
        """Yield (method, properties, body) per delivery; (None, None, None) after
        `inactivity_timeout` seconds without one. Closing the generator cancels."""
        _require_str("queue", queue)
        self._await_open()
        tag = _new_tag()
        queue_: Queue = Queue()
        consumer = Consumer(self, tag, queue, None, auto_ack, exclusive, arguments, sink=queue_,
                            live=self._live_for(auto_ack))
        self._start_consumer(consumer)
        try:
            while True:
                try:
                    item = queue_.get(timeout=inactivity_timeout)
                except Empty:
                    yield None, None, None
                    continue
                if item is StopIteration:
                    return
                if isinstance(item, BaseException):
                    raise item
                if item[1].headers and not consumer.note_offset(item[1]):
                    if not auto_ack:  # a resumed stream's replay: already yielded
                        self.basic_ack(item[0].delivery_tag)
                    continue
                yield item
        finally:
            if tag in self._consumers and self._state is OPEN:
                self.basic_cancel(tag)

    def cancel(self) -> None:
        """Cancel every `consume()` generator's consumer on this channel (pika's name)."""
        for tag in [t for t, c in self._consumers.items() if c.sink is not None]:
            self.basic_cancel(tag)


make_threadsafe(Channel, skip=("on_link_opened", "on_link_method", "on_link_content",
                               "on_link_closed"))


# ---------------------------------------------------------------------- lifecycle interface
# Called by connection.py and recovery.py, in the hub, never by users.


def start_open(channel: Channel, number: int | None) -> _Request:
    """Queue channel.open on the channel's link (no yield); `await_open` waits."""
    def opened(_reply: Any) -> None:
        channel._transition(ChannelEvent.OPENED)
        tm = channel._tm
        if tm.channel_opened is not None:
            tm.channel_opened(tm.info, channel.channel_number)

    channel.channel_number = channel._link.open_channel(number, channel)
    channel._dispatcher.rename(f"geamqp-channel-{channel.channel_number}")
    request = _Request(None, (ChannelSpec.OpenOk,), opened)
    channel._requests.append(request)
    return request


def set_guard(channel: Channel, guard: ConsumerTimeoutGuard | None) -> None:
    """Watch the channel's manual-ack deliveries with the consumer-timeout guard."""
    channel._held = None if guard is None else HeldDeliveries(guard, channel)


def await_open(channel: Channel, request: _Request) -> None:
    """Block until open-ok. Interrupted (Timeout, kill), the half-made channel is
    closed in the background and the interruption propagates."""
    try:
        request.result.get()
    except BaseException:
        if channel._state is OPENING or channel._state is OPEN:
            channel._begin_close(200, "The opener gave up waiting for open-ok")
        raise


def suspend(channel: Channel, error: AMQPError, republish: bool) -> None:
    """The connection is lost and will be recovered: release what waits on the wire."""
    if channel._state is OPENING or channel._state is CLOSING:
        channel._end(channel._error or error, ChannelEvent.LINK_LOST)
        return
    if not channel._transition(ChannelEvent.LINK_LOST):
        return
    _release_suspended(channel, error, republish)


def suspend_closed(channel: Channel, error: AMQPError, republish: bool) -> bool:
    """A broker close that channel recovery retries: OPEN/RESTORING -> SUSPENDED,
    released as after a lost link; False (nothing changed) in any other state."""
    if not channel._transition(ChannelEvent.RETRIABLE_CLOSE):
        return False
    channel._restored.clear()
    log.warning("channel %s closed by the broker (%s): recovering it", channel.channel_number,
                error)
    _release_suspended(channel, error, republish)
    return True


def nack_streak(channel: Channel) -> tuple[float, int]:
    """(seconds since a recovery restored the channel — infinite if none did —,
    reopens in this streak)."""
    return time.monotonic() - channel._opened_at, channel._refreshes


def close_to_refresh(channel: Channel, error: AMQPError, republish: bool,
                     reopen: Callable[[], None]) -> bool:
    """OPEN -> SUSPENDED by our own channel.close (a nack streak: the channel holds a
    stale queue leader); `reopen()` runs once the broker's close-ok has freed the
    number. In-flight publishes end as after a loss. False when not OPEN."""
    if channel._state is not OPEN or not channel._transition(ChannelEvent.RETRIABLE_CLOSE):
        return False
    channel._restored.clear()
    channel._refreshes += 1
    _release_suspended(channel, error, republish)
    link, number = channel._link, channel.channel_number
    link.detach(number, channel)
    link.attach(number, _CloseWaiter(reopen))
    link.close_channel(number, 200, "Reopening: confirms were nacked")
    return True  # (a link that cannot send it is going: connection recovery takes over)


class _CloseWaiter:
    """Stands in for a channel on its link until its close-ok (then `reopen`)."""

    def __init__(self, reopen: Callable[[], None]) -> None:
        self._reopen = reopen

    def on_link_opened(self) -> None:
        pass

    def on_link_method(self, method: Method) -> None:
        pass  # a late ack or nack for the closed channel: its publishes already ended

    def on_link_content(self, method: Method, properties: BasicProperties, body: bytes) -> None:
        pass  # deliveries after close are dropped; the broker requeues them

    def on_link_closed(self, reply_code: int, reply_text: str, by_peer: bool) -> None:
        self._reopen()


def _release_suspended(channel: Channel, error: AMQPError, republish: bool) -> None:
    if channel._held is not None:
        channel._held.clear()  # the broker requeued them
    channel._release_requests(error)
    confirms, channel._confirms = channel._confirms, {}
    for confirmation in confirms.values():
        if republish:
            channel._republish.append(confirmation)
        else:
            confirmation.set_failed(PublishOutcomeUnknown(
                f"connection or channel lost before the broker confirmed publish #"
                f"{confirmation.seqno}: it may or may not have been routed ({error})"))
    channel._tag_offset = max(channel._tag_offset, channel._last_tag)
    # Manual-ack deliveries not yet handed to a callback would only be acked on a
    # dead link: the broker redelivers them, so drop them now (auto-ack ones are
    # the application's already, so they are still dispatched).
    channel._dispatcher.discard(_undispatched_manual_ack)
    for consumer in channel._consumers.values():
        if consumer.sink is not None and not consumer.auto_ack:
            consumer.discard_queued()


def _undispatched_manual_ack(fn: Callable[..., Any]) -> bool:
    consumer = getattr(fn, "__self__", None)
    return isinstance(consumer, Consumer) and fn == consumer.run and not consumer.auto_ack


def end(channel: Channel, error: AMQPError) -> None:
    """The connection is closed for good (or recovery gave up)."""
    channel._end(error)


def begin_restore(channel: Channel, link: Link) -> _Request | None:
    """SUSPENDED -> RESTORING on `link`: channel.open queued; returns its request,
    or None when the channel was closed meanwhile."""
    if not channel._transition(ChannelEvent.RESTORE):
        return None
    channel._link = link
    link.open_channel(channel.channel_number, channel)
    request = _Request(None, (ChannelSpec.OpenOk,), None)
    channel._requests.append(request)
    return request


def restore_steps(channel: Channel) -> list[Method]:
    """What the channel's mode needs after channel.open: qos, confirm, tx."""
    steps: list[Method] = []
    if channel._qos is not None:
        steps.append(Basic.Qos(*channel._qos))
    if channel._confirm_mode:
        steps.append(Confirm.Select())
    if channel._tx_mode:
        steps.append(Tx.Select())
    return steps


def private_request(channel: Channel, method: Method) -> Any:
    """A request on the supervisor's own channel (no recovery wait: it is new)."""
    if channel._state is not OPEN:
        raise channel._wrong_state()
    return channel._call(method, method.RESPONSES, None)


def restore_request(channel: Channel, method: Method) -> Any:
    """One request of the restore (the channel is RESTORING, closed to users).
    Raises the channel's error when it was closed meanwhile."""
    if channel._state is not RESTORING:
        raise channel._error or channel._wrong_state()
    return channel._call(method, method.RESPONSES, None)


def consumers_of(channel: Channel) -> list[Consumer]:
    return [c for c in channel._consumers.values() if not c.orphaned]


def drop_consumer(channel: Channel, tag: str, reason: str) -> None:
    """A consumer that cannot be restored: ended as a broker cancel would end it."""
    if tag not in channel._consumers:
        return
    consumer = channel._consumers[tag]
    channel._remove_consumer(tag, ConsumerCancelled(reason))
    if consumer.on_cancel is not None:
        channel._dispatcher.submit(consumer.on_cancel, channel, tag)
    for callback in channel._cancel_callbacks:
        channel._dispatcher.submit(callback, Basic.Cancel(tag, True))


def rename_queue(channel: Channel, old: str, new: str) -> None:
    for consumer in channel._consumers.values():
        if consumer.queue == old:
            consumer.queue = new


def finish_restore(channel: Channel) -> None:
    """RESTORING -> OPEN; republish what the user asked to."""
    if not channel._transition(ChannelEvent.RESTORED):
        return
    channel._acked_since_open = False
    channel._opened_at = time.monotonic()
    pending, channel._republish = channel._republish, []
    link = channel._link
    for confirmation in pending:
        seqno = link.publish(channel.channel_number, confirmation.exchange,
                             confirmation.routing_key, confirmation.body,
                             confirmation.properties, confirmation.mandatory)
        confirmation.seqno = seqno
        channel._confirms[seqno] = confirmation
    if pending:
        link.kick()
    channel._restored.set()
    channel._consuming.set()
    for callback in channel._recovered_callbacks:
        channel._host.run_callback(callback, channel)


def fail_restore(channel: Channel, error: AMQPError) -> None:
    """The restore of this channel cannot succeed: close it on the link if it is
    open there, and end it with `error` for its users. A channel closing or
    closed meanwhile ends by itself."""
    state = channel._state
    if state is RESTORING:
        channel._link.close_channel(channel.channel_number, 200, "Not restored")
        channel._end(error)
    elif state is SUSPENDED:
        channel._end(error)


def queues_consumed(channel: Channel) -> set[str]:
    return {c.queue for c in channel._consumers.values()}
