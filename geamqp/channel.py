"""The Channel API: pika's method names and defaults, blocking only the calling greenlet.

Rules:
- Synchronous methods are pipelined: each caller appends its waiter and its
  frame in one step (no yield between), and the broker answers a channel's
  requests in order, so the oldest waiter takes the next reply. Any number of
  greenlets may share a channel.
- Deliveries flow as soon as `basic_consume` returns; callbacks run in the
  channel's dispatcher greenlet (see consumer.py). `start_consuming` only
  blocks its caller.
- When the channel closes, every waiter, every pending confirmation and every
  later call raises the closing exception (`ChannelClosedByBroker(code, text)`,
  `ChannelClosedByClient`, or the connection's).
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import AsyncResult, Event
from gevent.queue import Empty, Queue

from ._hub import make_threadsafe
from .consumer import Confirmation, Consumer, Dispatcher, OnMessage, ReturnedMessage
from .exceptions import (
    AMQPError,
    ChannelClosedByBroker,
    ChannelClosedByClient,
    ChannelWrongStateError,
    ConsumerCancelled,
    DuplicateConsumerTag,
    NackError,
    UnroutableError,
)
from .protocol.properties import BasicProperties
from .protocol.spec import Basic, Confirm, Exchange, Method, Tx
from .protocol.spec import Channel as ChannelSpec
from .protocol.spec import Queue as Q
from .recovery import ChannelRecovery

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Channel"]

log = logging.getLogger("geamqp.channel")

_tag_counter = itertools.count(1)
# Consumer tags need only be unique per channel; a per-process random part keeps
# them distinct across processes in the management UI (no urandom per consumer).
_TAG_SUFFIX = uuid.uuid4().hex[:16]


def _new_tag() -> str:
    return f"ctag{next(_tag_counter)}.{_TAG_SUFFIX}"
_OPENING, _OPEN, _CLOSING, _CLOSED = "opening", "open", "closing", "closed"
# While the supervisor reconnects: suspended, then being restored (see recovery.py).
_RECOVERING, _RESTORING = "recovering", "restoring"


class Channel(ChannelRecovery):
    """One AMQP channel on a `Connection`. Create with `connection.channel()`."""

    def __init__(self, connection: Connection, number: int) -> None:
        self.connection = connection
        self.channel_number = number
        self._bridge = connection._bridge  # for the thread-safety wrapper of every method
        self._state = _OPENING
        self._error: AMQPError | None = None
        self._waiters: deque[tuple[tuple[type[Method], ...], AsyncResult]] = deque()
        self._consumers: dict[str, Consumer] = {}
        self._confirms: dict[int, Confirmation] = {}
        self._confirm_mode = False
        self._dispatcher = Dispatcher(f"geamqp-channel-{number}")
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

    def __repr__(self) -> str:
        return f"<Channel number={self.channel_number} {self._state}>"

    # ------------------------------------------------------------------ state

    @property
    def is_open(self) -> bool:
        return self._state == _OPEN

    @property
    def is_closed(self) -> bool:
        return self._state == _CLOSED

    @property
    def is_closing(self) -> bool:
        return self._state == _CLOSING

    @property
    def consumer_tags(self) -> list[str]:
        return list(self._consumers)

    def _check_open(self) -> None:
        if self._state != _OPEN:
            if self._state in (_RECOVERING, _RESTORING):
                self.connection._wait_recovered()
                if self._state == _OPEN:
                    return
            if self._error is not None:
                raise self._error
            raise ChannelWrongStateError(f"channel {self.channel_number} is {self._state}")

    def add_on_close_callback(self, callback: Callable[[Channel, AMQPError], Any]) -> None:
        """`callback(channel, exception)` when the channel closes, for any reason."""
        self._close_callbacks.append(callback)

    def add_on_return_callback(self, callback: Callable[..., Any]) -> None:
        """`callback(channel, method, properties, body)` for each basic.return not
        claimed by a confirm-mode publish."""
        self._return_callbacks.append(callback)

    def add_on_cancel_callback(self, callback: Callable[[Any], Any]) -> None:
        """`callback(method_frame)` when the broker cancels one of this channel's consumers."""
        self._cancel_callbacks.append(callback)

    # ------------------------------------------------------------------ RPC plumbing

    def _send(self, method: Method) -> None:
        self.connection._engine.send_method(self.channel_number, method)
        self.connection._kick()

    def _rpc(self, method: Method, replies: tuple[type[Method], ...] | None = None) -> Any:
        self._check_open()
        return self._rpc_unchecked(method, replies or method.RESPONSES)

    def _rpc_unchecked(self, method: Method, replies: tuple[type[Method], ...]) -> Any:
        waiter = AsyncResult()
        self._waiters.append((replies, waiter))
        log.debug("channel %s: sent %s", self.channel_number, method.NAME)
        try:
            conn = self.connection
            conn._engine.send_method(self.channel_number, method)
            conn._transport.write_now()
        except BaseException:
            self._waiters.remove((replies, waiter))
            raise
        reply = waiter.get()
        log.debug("channel %s: %s answered", self.channel_number, method.NAME)
        self.connection._topology.on_reply(self, method, reply)
        return reply

    # ------------------------------------------------------------------ events (reader)

    def _on_opened(self) -> None:
        if self._state == _OPENING:
            self._state = _OPEN
        self._resolve(ChannelSpec.OpenOk())

    def _resolve(self, method: Any, value: Any = None) -> None:
        """Give `method` (a reply) to the oldest waiter expecting it."""
        if self._waiters and type(method) in self._waiters[0][0]:
            _, waiter = self._waiters.popleft()
            waiter.set(method if value is None else value)
            return
        log.warning("channel %s: unexpected %s dropped", self.channel_number, method.NAME)

    def _on_method(self, method: Method) -> None:
        kind = type(method)
        if kind is Basic.Ack:
            self._on_confirm(method.delivery_tag, method.multiple, True)  # type: ignore[attr-defined]
        elif kind is Basic.Nack:
            self._on_confirm(method.delivery_tag, method.multiple, False)  # type: ignore[attr-defined]
        elif kind is Basic.Cancel:
            self._on_broker_cancel(method)  # type: ignore[arg-type]
        elif kind is ChannelSpec.Flow:
            log.info("channel %s: broker set flow active=%s", self.channel_number,
                     method.active)  # type: ignore[attr-defined]
        else:
            self._resolve(method)

    def _on_content(self, method: Method, properties: BasicProperties, body: bytes) -> None:
        kind = type(method)
        if kind is Basic.Deliver:
            if self._tag_offset:
                method.delivery_tag += self._tag_offset  # type: ignore[attr-defined]
            self._last_tag = method.delivery_tag  # type: ignore[attr-defined]
            tag = method.consumer_tag  # type: ignore[attr-defined]
            consumer = self._consumers.get(tag)
            if consumer is None:
                log.warning("channel %s: delivery for unknown consumer %r dropped",
                            self.channel_number, tag)
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

    def _on_return(self, method: Basic.Return, properties: BasicProperties, body: bytes) -> None:
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
            done = [seq for seq in confirms if seq <= tag]
        else:
            done = [tag] if tag in confirms else []
        for seq in done:
            confirmation = confirms.pop(seq)
            if acked:
                confirmation._ack()
            else:
                confirmation._nack()
        if not confirms:
            self._consuming.set()

    def _on_broker_cancel(self, method: Basic.Cancel) -> None:
        tag = method.consumer_tag
        consumer = self._consumers.pop(tag, None)
        log.info("channel %s: broker cancelled consumer %r", self.channel_number, tag)
        if consumer is not None:
            self._consumer_gone(consumer)
            if consumer.sink is not None:
                consumer.sink.put(ConsumerCancelled(f"consumer {tag!r} was cancelled by the "
                                                    "broker"))
            else:
                self._dispatcher.submit(consumer.drain)
        for callback in self._cancel_callbacks:
            self._dispatcher.submit(callback, method)
        self._consuming.set()

    def _on_closed(self, error: AMQPError) -> None:
        """The channel is closed (by the broker, by us, or with its connection)."""
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self._error = error
        waiters, self._waiters = self._waiters, deque()
        for _, waiter in waiters:
            waiter.set_exception(error)
        confirms, self._confirms = self._confirms, {}
        for confirmation in confirms.values():
            confirmation._fail(error)
        # The dispatcher first: parked in a full pool's spawn(), it would start one
        # more callback in the slot that killing the pool frees.
        self._dispatcher.stop(spare=self._closer)
        consumers, self._consumers = self._consumers, {}
        for consumer in consumers.values():
            if consumer.sink is not None:
                consumer.sink.put(error)
            consumer.stop()
        self._consuming.set()
        self._closed_event.set()
        log.log(logging.INFO if isinstance(error, ChannelClosedByBroker) else logging.DEBUG,
                "channel %s closed: %s", self.channel_number, error)
        # Everything held for the channel is released above: queued deliveries and
        # any callback still running (it could not ack or publish on a closed channel
        # anyway). The close callbacks run in the connection's dispatcher instead.
        for callback in self._close_callbacks:
            self.connection._dispatcher.submit(callback, self, error)

    # ------------------------------------------------------------------ lifecycle

    def close(self, reply_code: int = 200, reply_text: str = "Normal shutdown") -> None:
        """Close the channel; blocks until the broker confirms (close-ok)."""
        if self._state in (_CLOSED, _CLOSING):
            if self._state == _CLOSING:
                self._wait_closed()
            return
        self._state = _CLOSING
        self._closer = gevent.getcurrent()
        self._error = ChannelClosedByClient(reply_code, reply_text)
        conn = self.connection
        if conn._engine.is_open:
            conn._engine.close_channel(self.channel_number, reply_code, reply_text)
            conn._kick()
            self._wait_closed()
        else:
            self._on_closed(self._error)

    def _wait_closed(self) -> None:
        self._closed_event.wait()

    # ------------------------------------------------------------------ exchanges and queues

    def exchange_declare(self, exchange: str, exchange_type: str = "direct",
                         passive: bool = False, durable: bool = False,
                         auto_delete: bool = False, internal: bool = False,
                         arguments: dict[str, Any] | None = None) -> Exchange.DeclareOk:
        return self._rpc(Exchange.Declare(0, exchange, exchange_type, passive, durable,  # type: ignore[no-any-return]
                                          auto_delete, internal, False, arguments))

    def exchange_delete(self, exchange: str, if_unused: bool = False) -> Exchange.DeleteOk:
        return self._rpc(Exchange.Delete(0, exchange, if_unused))  # type: ignore[no-any-return]

    def exchange_bind(self, destination: str, source: str, routing_key: str = "",
                      arguments: dict[str, Any] | None = None) -> Exchange.BindOk:
        return self._rpc(Exchange.Bind(0, destination, source, routing_key, False,  # type: ignore[no-any-return]
                                       arguments))

    def exchange_unbind(self, destination: str, source: str, routing_key: str = "",
                        arguments: dict[str, Any] | None = None) -> Exchange.UnbindOk:
        return self._rpc(Exchange.Unbind(0, destination, source, routing_key, False,  # type: ignore[no-any-return]
                                         arguments))

    def queue_declare(self, queue: str = "", passive: bool = False, durable: bool = False,
                      exclusive: bool = False, auto_delete: bool = False,
                      arguments: dict[str, Any] | None = None) -> Q.DeclareOk:
        return self._rpc(Q.Declare(0, queue, passive, durable, exclusive, auto_delete,  # type: ignore[no-any-return]
                                   False, arguments))

    def queue_bind(self, queue: str, exchange: str, routing_key: str | None = None,
                   arguments: dict[str, Any] | None = None) -> Q.BindOk:
        key = queue if routing_key is None else routing_key
        return self._rpc(Q.Bind(0, queue, exchange, key, False, arguments))  # type: ignore[no-any-return]

    def queue_unbind(self, queue: str, exchange: str, routing_key: str | None = None,
                     arguments: dict[str, Any] | None = None) -> Q.UnbindOk:
        key = queue if routing_key is None else routing_key
        return self._rpc(Q.Unbind(0, queue, exchange, key, arguments))  # type: ignore[no-any-return]

    def queue_purge(self, queue: str) -> Q.PurgeOk:
        return self._rpc(Q.Purge(0, queue))  # type: ignore[no-any-return]

    def queue_delete(self, queue: str, if_unused: bool = False,
                     if_empty: bool = False) -> Q.DeleteOk:
        return self._rpc(Q.Delete(0, queue, if_unused, if_empty))  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ basic

    def basic_qos(self, prefetch_size: int = 0, prefetch_count: int = 0,
                  global_qos: bool = False) -> Basic.QosOk:
        ok = self._rpc(Basic.Qos(prefetch_size, prefetch_count, global_qos))
        self._qos = (prefetch_size, prefetch_count, global_qos)
        return ok  # type: ignore[no-any-return]

    def basic_recover(self, requeue: bool = False) -> Basic.RecoverOk:
        return self._rpc(Basic.Recover(requeue))  # type: ignore[no-any-return]

    def confirm_delivery(self) -> None:
        """Enable publisher confirms: publishes then block until acked (or use wait=False)."""
        if self._confirm_mode:
            return
        self._rpc(Confirm.Select())
        self._confirm_mode = True

    @property
    def publisher_confirms(self) -> bool:
        return self._confirm_mode

    def tx_select(self) -> Tx.SelectOk:
        ok = self._rpc(Tx.Select())
        self._tx_mode = True
        return ok  # type: ignore[no-any-return]

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
        conn = self.connection
        if self._state != _OPEN:
            self._check_open()
        if isinstance(body, str):
            body = body.encode("utf-8")
        if conn._blocked:
            conn._wait_unblocked()
            self._check_open()
        seqno = conn._engine.publish(self.channel_number, exchange, routing_key, body,
                                     properties, mandatory)
        confirmation = None
        if seqno:
            # Registered before anything can yield: the ack, or the channel's
            # close, may arrive while back-pressure parks this greenlet below.
            confirmation = Confirmation(seqno, exchange, routing_key, body, properties,
                                        mandatory)
            self._confirms[seqno] = confirmation
        transport = conn._transport
        transport.throttle()
        transport.write_now()
        if confirmation is None:
            return None
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

    def basic_ack(self, delivery_tag: int = 0, multiple: bool = False) -> None:
        if self._state != _OPEN:
            self._check_open()
        if self._tag_offset:
            delivery_tag = self._current_tag(delivery_tag, multiple)
            if delivery_tag < 0:
                return
        self.connection._engine.ack(self.channel_number, delivery_tag, multiple)
        self.connection._kick()

    def basic_nack(self, delivery_tag: int = 0, multiple: bool = False,
                   requeue: bool = True) -> None:
        self._check_open()
        if self._tag_offset:
            delivery_tag = self._current_tag(delivery_tag, multiple)
            if delivery_tag < 0:
                return
        self._send(Basic.Nack(delivery_tag, multiple, requeue))

    def basic_reject(self, delivery_tag: int, requeue: bool = True) -> None:
        self._check_open()
        if self._tag_offset:
            delivery_tag = self._current_tag(delivery_tag, False)
            if delivery_tag < 0:
                return
        self._send(Basic.Reject(delivery_tag, requeue))

    def basic_get(self, queue: str, auto_ack: bool = False) -> tuple[Any, Any, Any]:
        """One message from `queue`: (method, properties, body), or (None, None, None)."""
        reply = self._rpc(Basic.Get(0, queue, auto_ack))
        if isinstance(reply, Basic.GetEmpty):
            return None, None, None
        return reply  # type: ignore[no-any-return]

    def basic_consume(self, queue: str, on_message_callback: OnMessage, auto_ack: bool = False,
                      exclusive: bool = False, consumer_tag: str | None = None,
                      arguments: dict[str, Any] | None = None, *, executor: Any = None,
                      concurrency: int = 1) -> str:
        """Start a consumer; deliveries reach `on_message_callback(channel, method,
        properties, body)` from the moment this returns. Returns the consumer tag."""
        self._check_open()
        tag = consumer_tag or _new_tag()
        if tag in self._consumers:
            raise DuplicateConsumerTag(f"consumer tag {tag!r} is already in use on this channel")
        consumer = Consumer(self, tag, queue, on_message_callback, auto_ack, exclusive,
                            arguments, executor, concurrency)
        self._consumers[tag] = consumer
        try:
            self._rpc(Basic.Consume(0, queue, tag, False, auto_ack, exclusive, False, arguments))
        except BaseException:
            self._consumers.pop(tag, None)
            raise
        return tag

    def basic_cancel(self, consumer_tag: str) -> None:
        """Cancel a consumer; deliveries already received are still dispatched."""
        if consumer_tag not in self._consumers:
            return
        try:
            if self._state == _OPEN:
                self._rpc(Basic.Cancel(consumer_tag))
        finally:
            consumer = self._consumers.pop(consumer_tag, None)
            if consumer is not None:
                self._consumer_gone(consumer)
                if consumer.sink is not None:
                    consumer.sink.put(StopIteration)
                else:
                    self._dispatcher.submit(consumer.drain)
            self._consuming.set()

    # ------------------------------------------------------------------ consuming loops

    def start_consuming(self) -> None:
        """Block this greenlet while the channel has consumers.

        Returns after `stop_consuming()` or when every consumer is cancelled;
        raises the closing exception if the channel or connection closes.
        """
        self._stop_requested = False
        while True:
            self._consuming.clear()
            if self._state == _CLOSED:
                assert self._error is not None
                raise self._error
            if self._stop_requested or not self._consumers:
                return
            self._consuming.wait()

    def stop_consuming(self, consumer_tag: str | None = None) -> None:
        """Cancel the given consumer, or all of them, ending `start_consuming()`."""
        tags = [consumer_tag] if consumer_tag else list(self._consumers)
        self._stop_requested = consumer_tag is None
        for tag in tags:
            if self._state == _OPEN:
                self.basic_cancel(tag)
        self._consuming.set()

    def consume(self, queue: str, auto_ack: bool = False, exclusive: bool = False,
                arguments: dict[str, Any] | None = None,
                inactivity_timeout: float | None = None) -> Iterator[tuple[Any, Any, Any]]:
        """Yield (method, properties, body) per delivery; (None, None, None) after
        `inactivity_timeout` seconds without one. Closing the generator cancels."""
        self._check_open()
        tag = _new_tag()
        queue_: Queue = Queue()
        consumer = Consumer(self, tag, queue, None, auto_ack, exclusive, arguments, sink=queue_)
        self._consumers[tag] = consumer
        try:
            self._rpc(consumer.consume_method())
        except BaseException:
            self._consumers.pop(tag, None)
            raise
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
                yield item
        finally:
            if tag in self._consumers and self._state == _OPEN:
                self.basic_cancel(tag)

    def cancel(self) -> None:
        """Cancel every `consume()` generator's consumer on this channel (pika's name)."""
        for tag in [t for t, c in self._consumers.items() if c.sink is not None]:
            self.basic_cancel(tag)



make_threadsafe(Channel)
