"""`BlockingChannel`: pika's blocking channel API over one `geamqp.Channel`.

Every request goes to the geamqp channel underneath (pipelined RPCs, the coalescing
writer, confirms); this class adds only what pika's users observe differently:

- RPC replies come back as `frame.Method` (``queue_declare(...).method.queue``);
- deliveries, broker cancels and returns are *recorded* by small callbacks on the
  geamqp channel and dispatched to the application's callbacks only inside
  `start_consuming()`, `consume()` and the connection's `process_data_events()`,
  in the greenlet that calls them (pika's ordering; see blocking_connection.py);
- a closed channel raises `ChannelWrongStateError` for every call (chained to the
  close reason) — except the first call that *observes* a broker's close, which
  raises that `ChannelClosedByBroker` itself, as pika's call would have during its I/O;
- `basic_cancel` returns the undispatched deliveries of an auto-ack consumer and
  rejects (requeues) those of a manual-ack consumer, as pika does.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

import gevent
from gevent.event import Event

from . import exceptions as exc
from . import frame
from ._events import (
    ACTIVE,
    CANCELLED_BY_BROKER,
    GONE,
    TEARING_DOWN,
    CancelEvent,
    ConsumerInfo,
    Delivery,
    ReturnEvent,
    check_callable,
    check_str,
)
from ._threads import hub_bound

if TYPE_CHECKING:
    from ..channel import Channel
    from .adapters.blocking_connection import BlockingConnection

__all__ = ["BlockingChannel"]

log = logging.getLogger("geamqp.pika")

Message = tuple[Any, Any, Any]

# How long geamqp may take to report why a closed channel closed (it does at once).
_REASON_WAIT = 5.0


class DispatchPort(Protocol):
    """What a BlockingChannel needs from its BlockingConnection (blocking_connection.py)."""

    owner: Any

    def raise_loss_once(self) -> None: ...
    def loss_observed(self) -> None: ...
    def request_dispatch(self, channel: BlockingChannel) -> None: ...
    def in_dispatch(self) -> bool: ...


def dispatch_events(channel: BlockingChannel) -> None:
    """Run the callbacks this channel has recorded (in the dispatching greenlet)."""
    channel._dispatch_events()


def has_pending(channel: BlockingChannel) -> bool:
    return bool(channel._pending)


@hub_bound()
class BlockingChannel:
    """pika's `BlockingChannel`; create it with `BlockingConnection.channel()`."""

    def __init__(self, impl: Channel, connection: BlockingConnection,
                 port: DispatchPort) -> None:
        self._impl = impl
        self._connection = connection
        self._port = port
        self._owner = port.owner
        self._consumers: dict[str, ConsumerInfo] = {}
        self._pending: deque[Any] = deque()
        self._generator: ConsumerInfo | None = None
        self._confirming = False
        self._closing_reason: BaseException | None = None
        self._close_seen = Event()
        self._reported = False
        self._cancel_callbacks: list[Callable[..., Any]] = []
        self._return_callbacks: list[Callable[..., Any]] = []
        impl.add_on_close_callback(self._on_impl_closed)
        impl.add_on_cancel_callback(self._on_broker_cancel)
        impl.add_on_return_callback(self._on_returned)

    def __int__(self) -> int:
        return self.channel_number

    def __repr__(self) -> str:
        return f"<BlockingChannel impl={self._impl!r}>"

    def __enter__(self) -> BlockingChannel:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.is_open:
            self.close()

    # ------------------------------------------------------------------ state

    @property
    def channel_number(self) -> int:
        return self._impl.channel_number

    @property
    def connection(self) -> BlockingConnection:
        return self._connection

    @property
    def is_closed(self) -> bool:
        return self._impl.is_closed

    @property
    def is_open(self) -> bool:
        return self._impl.is_open

    @property
    def consumer_tags(self) -> list[str]:
        return list(self._consumers)

    def _check_open(self) -> None:
        """Raise as pika would for a call on a channel that is closed (module docs). A
        channel that geamqp is recovering is not closed: its calls wait for it."""
        if not self._impl.is_closed:
            return
        self._port.raise_loss_once()
        reason = self._reason()
        if isinstance(reason, exc.ChannelClosedByBroker) and not self._reported:
            self._reported = True
            raise reason
        raise exc.ChannelWrongStateError(
            f"channel {self.channel_number} is closed ({reason!r})") from reason

    def _reason(self) -> BaseException | None:
        """Why the channel closed: geamqp reports it from its own greenlet, just after."""
        if self._impl.is_closed and not self._close_seen.is_set():
            self._close_seen.wait(_REASON_WAIT)
        return self._closing_reason

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A request on the geamqp channel; its closing errors count as observed."""
        self._check_open()
        try:
            return fn(*args, **kwargs)
        except exc.ChannelClosedByBroker:
            self._reported = True
            raise
        except exc.AMQPConnectionError:
            self._port.loss_observed()
            raise

    def _rpc(self, fn: Callable[..., Any], *args: Any) -> frame.Method:
        return frame.Method(self.channel_number, self._call(fn, *args))

    # ------------------------------------------------------------------ events (geamqp side)

    def _on_impl_closed(self, _channel: Any, reason: BaseException) -> None:
        self._closing_reason = reason
        self._close_seen.set()
        if isinstance(reason, exc.ChannelClosedByBroker):
            self._cleanup()
        self._port.request_dispatch(self)

    def _on_delivery(self, info: ConsumerInfo, _channel: Any, method: Any, properties: Any,
                     body: bytes) -> None:
        if info.state == GONE:
            self._late_delivery(info, method)
            return
        event = Delivery(method, properties, body)
        if info.sink is not None:
            info.sink.append(event)
        else:
            self._pending.append(event)
        self._port.request_dispatch(self)

    def _late_delivery(self, info: ConsumerInfo, method: Any) -> None:
        """A delivery that reached us after its consumer's basic_cancel returned."""
        if not info.auto_ack and self._impl.is_open:
            self._impl.basic_reject(method.delivery_tag, requeue=True)
        elif info.auto_ack:
            log.warning("channel %s: auto-ack delivery %s for cancelled consumer %r arrived "
                        "after basic_cancel returned; dropped", self.channel_number,
                        method.delivery_tag, info.tag)

    def _on_broker_cancel(self, method: Any) -> None:
        info = self._consumers.get(method.consumer_tag)
        if info is None:
            return
        if info.state != TEARING_DOWN:
            info.state = CANCELLED_BY_BROKER
        event = CancelEvent(frame.Method(self.channel_number, method))
        if info.sink is not None:
            info.sink.append(event)
        else:
            self._pending.append(event)
        self._port.request_dispatch(self)

    def _on_returned(self, _channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._post_return(method, properties, body)

    def _post_return(self, method: Any, properties: Any, body: bytes) -> None:
        for callback in self._return_callbacks:
            self._pending.append(ReturnEvent(callback, method, properties, body))
        if self._return_callbacks:
            self._port.request_dispatch(self)

    # ------------------------------------------------------------------ dispatch (app side)

    def _dispatch_events(self) -> None:
        """Run the events recorded so far (not those arriving meanwhile: bounded)."""
        for _ in range(len(self._pending)):
            if not self._pending or self._impl.is_closed or self._impl.is_closing:
                return
            event = self._pending.popleft()
            kind = type(event)
            if kind is Delivery:
                info = self._consumers.get(event.method.consumer_tag)
                if info is not None and info.callback is not None:
                    info.callback(self, event.method, event.properties, event.body)
            elif kind is CancelEvent:
                self._consumers.pop(event.consumer_tag, None)
                for callback in list(self._cancel_callbacks):
                    callback(event.frame)
            else:
                event.callback(self, event.method, event.properties, event.body)

    def _cleanup(self) -> None:
        self._pending = deque()
        for info in self._consumers.values():
            info.state = GONE
        self._consumers = {}
        self._generator = None

    # ------------------------------------------------------------------ lifecycle

    def close(self, reply_code: int = 0, reply_text: str = "Normal shutdown") -> None:
        """Cancel every consumer, then close; a second close raises ChannelWrongStateError."""
        self._check_open()
        try:
            self._cancel_all_consumers()
            self._impl.close(reply_code, reply_text)
        finally:
            self._cleanup()

    def flow(self, active: bool) -> bool:
        """RabbitMQ always answers flow(True) with active=True; it does not implement
        flow(False) (it closes the connection with 540), so neither does this."""
        self._check_open()
        if not active:
            raise NotImplementedError(
                "RabbitMQ does not support channel.flow(active=False) (it closes the "
                "connection with 540 NOT_IMPLEMENTED); limit deliveries with basic_qos")
        return True

    def add_on_cancel_callback(self, callback: Callable[[frame.Method], Any]) -> None:
        """`callback(method_frame)` when the broker cancels a consumer of this channel."""
        check_callable(callback, "callback")
        self._cancel_callbacks.append(callback)

    def add_on_return_callback(self, callback: Callable[..., Any]) -> None:
        """`callback(channel, method, properties, body)` for each basic.return."""
        check_callable(callback, "callback")
        self._return_callbacks.append(callback)

    # ------------------------------------------------------------------ consumers

    def basic_consume(self, queue: str, on_message_callback: Callable[..., Any],
                      auto_ack: bool = False, exclusive: bool = False,
                      consumer_tag: str | None = None,
                      arguments: dict[str, Any] | None = None) -> str:
        """Start a consumer; its callback runs inside start_consuming/process_data_events."""
        check_str(queue, "queue")
        check_callable(on_message_callback, "on_message_callback")
        return self._consume(queue, auto_ack, exclusive, consumer_tag, arguments,
                             ConsumerInfo("", auto_ack, on_message_callback))

    def _consume(self, queue: str, auto_ack: bool, exclusive: bool, consumer_tag: str | None,
                 arguments: dict[str, Any] | None, info: ConsumerInfo) -> str:
        check_str(consumer_tag, "consumer_tag", optional=True)
        self._check_open()
        tag = consumer_tag or f"ctag{self.channel_number}.{uuid.uuid4().hex}"
        if tag in self._consumers:
            raise exc.DuplicateConsumerTag(tag)
        info.tag = tag
        self._consumers[tag] = info
        try:
            self._call(self._impl.basic_consume, queue,
                       functools.partial(self._on_delivery, info), auto_ack, exclusive, tag,
                       arguments)
        except BaseException:
            info.state = GONE
            self._consumers.pop(tag, None)
            raise
        if info.state != CANCELLED_BY_BROKER:
            info.state = ACTIVE
        return tag

    def basic_cancel(self, consumer_tag: str) -> list[Message]:
        """Cancel a consumer. Returns its received, undispatched messages when it is
        auto-ack; a manual-ack consumer's are rejected with requeue, and [] returned."""
        check_str(consumer_tag, "consumer_tag")
        info = self._consumers.get(consumer_tag)
        if info is None:
            log.warning("basic_cancel: unknown consumer %r (already cancelled?)", consumer_tag)
            return []
        self._check_open()
        try:
            info.state = TEARING_DOWN
            if not info.auto_ack:
                self._reject(self._remove_pending(info))
            self._call(self._impl.basic_cancel, consumer_tag)
            left = self._remove_pending(info)
            if info.auto_ack:
                return [event.as_tuple() for event in left]
            self._reject(left)
            return []
        finally:
            info.state = GONE
            self._consumers.pop(consumer_tag, None)
            if self._generator is info:
                self._generator = None
            self._port.request_dispatch(self)

    def _remove_pending(self, info: ConsumerInfo) -> list[Delivery]:
        """Take `info`'s deliveries out of what waits for dispatch (its cancel too)."""
        source = info.sink if info.sink is not None else self._pending
        mine: list[Delivery] = []
        keep: deque[Any] = deque()
        for event in source:
            if type(event) is Delivery and event.method.consumer_tag == info.tag:
                mine.append(event)
            elif not (type(event) is CancelEvent and event.consumer_tag == info.tag):
                keep.append(event)
        source.clear()
        source.extend(keep)
        return mine

    def _reject(self, deliveries: list[Delivery]) -> None:
        for event in deliveries:
            if self._impl.is_open:
                self._impl.basic_reject(event.method.delivery_tag, requeue=True)

    def _cancel_all_consumers(self) -> None:
        if self._generator is not None:
            self.cancel()
        for tag in list(self._consumers):
            self.basic_cancel(tag)

    def start_consuming(self) -> None:
        """Dispatch deliveries, timers and thread callbacks until every consumer is
        cancelled; returns normally when a callback closed the channel or connection."""
        if self._port.in_dispatch():
            raise exc.ReentrancyError(
                "start_consuming may not be called from the scope of another "
                "BlockingConnection or BlockingChannel callback")
        self._check_open()
        while self._consumers:
            self._process_data_events(None)

    def stop_consuming(self, consumer_tag: str | None = None) -> None:
        """Cancel one consumer or all of them; already received messages are not
        dispatched (manual-ack ones are requeued)."""
        if consumer_tag:
            self.basic_cancel(consumer_tag)
        else:
            self._cancel_all_consumers()

    def _process_data_events(self, time_limit: float | None) -> None:
        self._connection.process_data_events(time_limit)
        if self.is_closed and isinstance(self._reason(), exc.ChannelClosedByBroker):
            self._reported = True
            raise self._closing_reason  # type: ignore[misc]

    # ------------------------------------------------------------------ consume() generator

    def consume(self, queue: str, auto_ack: bool = False, exclusive: bool = False,
                arguments: dict[str, Any] | None = None,
                inactivity_timeout: float | None = None,
                consumer_tag: str | None = None) -> Iterator[Message]:
        """Yield (method, properties, body); (None, None, None) after `inactivity_timeout`
        seconds without one; ends when the consumer is cancelled (by `cancel()` or the
        broker). Calling it again with the same arguments resumes the same consumer."""
        check_str(queue, "queue")
        self._check_open()
        params = (queue, auto_ack, exclusive)
        if self._generator is None:
            info = ConsumerInfo("", auto_ack, None, sink=deque(), params=params)
            self._generator = info
            try:
                self._consume(queue, auto_ack, exclusive, consumer_tag, arguments, info)
            except BaseException:
                self._generator = None
                raise
        elif params != self._generator.params:
            raise ValueError(f"consume with different params not allowed on the existing "
                             f"consumer generator; previous {self._generator.params!r}, new "
                             f"{params!r}")
        yield from self._generate(self._generator, inactivity_timeout)

    def _generate(self, info: ConsumerInfo,
                  inactivity_timeout: float | None) -> Iterator[Message]:
        sink = info.sink
        while self._generator is info:
            if sink:
                event = sink.popleft()
                if type(event) is CancelEvent:
                    self._generator = None
                    self._consumers.pop(info.tag, None)
                    return
                yield event.as_tuple()
                continue
            if inactivity_timeout is None:
                self._process_data_events(None)
                continue
            deadline = gevent.get_hub().loop.now() + inactivity_timeout
            while self._generator is info and not sink:
                left = deadline - gevent.get_hub().loop.now()
                if left <= 0:
                    yield None, None, None
                    break
                self._process_data_events(left)

    def get_waiting_message_count(self) -> int:
        """Deliveries the consume() generator can yield without waiting."""
        if self._generator is None:
            return 0
        sink = self._generator.sink
        count = len(sink)
        if count and type(sink[-1]) is CancelEvent:
            count -= 1
        return count

    def cancel(self) -> int:
        """Cancel the consume() generator's consumer; its waiting messages are requeued."""
        info = self._generator
        if info is None:
            return 0
        try:
            if not info.auto_ack:
                self._reject(self._remove_pending(info))
            self.basic_cancel(info.tag)
        finally:
            self._generator = None
        return 0

    # ------------------------------------------------------------------ basic

    def basic_ack(self, delivery_tag: int = 0, multiple: bool = False) -> None:
        self._call(self._impl.basic_ack, delivery_tag, multiple)

    def basic_nack(self, delivery_tag: int = 0, multiple: bool = False,
                   requeue: bool = True) -> None:
        self._call(self._impl.basic_nack, delivery_tag, multiple, requeue)

    def basic_reject(self, delivery_tag: int = 0, requeue: bool = True) -> None:
        self._call(self._impl.basic_reject, delivery_tag, requeue)

    def basic_get(self, queue: str, auto_ack: bool = False) -> Message:
        """(Basic.GetOk, BasicProperties, body), or (None, None, None) when empty."""
        check_str(queue, "queue")
        return self._call(self._impl.basic_get, queue, auto_ack)  # type: ignore[no-any-return]

    def basic_publish(self, exchange: str, routing_key: str, body: bytes | str,
                      properties: Any = None, mandatory: bool = False) -> None:
        """Publish; in confirm mode wait for the broker and raise UnroutableError (the
        return callbacks still run, at the next dispatch) or NackError."""
        check_str(exchange, "exchange")
        check_str(routing_key, "routing_key")
        if not isinstance(body, (bytes, str)):
            raise TypeError(f"body must be bytes or str, not {type(body).__name__}")
        if properties is not None and isinstance(properties.delivery_mode, Enum):
            properties.delivery_mode = properties.delivery_mode.value  # pika.DeliveryMode
        try:
            self._call(self._impl.basic_publish, exchange, routing_key, body, properties,
                       mandatory)
        except exc.UnroutableError as error:
            for message in error.messages:
                self._post_return(message.method, message.properties, message.body)
            raise

    def basic_qos(self, prefetch_size: int = 0, prefetch_count: int = 0,
                  global_qos: bool = False) -> None:
        self._call(self._impl.basic_qos, prefetch_size, prefetch_count, global_qos)

    def basic_recover(self, requeue: bool = False) -> None:
        self._call(self._impl.basic_recover, requeue)

    def confirm_delivery(self) -> None:
        if self._confirming:
            log.error("confirm_delivery: already enabled on channel %s", self.channel_number)
            return
        self._call(self._impl.confirm_delivery)
        self._confirming = True

    # ------------------------------------------------------------------ exchanges and queues

    def exchange_declare(self, exchange: str, exchange_type: str | Enum = "direct",
                         passive: bool = False, durable: bool = False,
                         auto_delete: bool = False, internal: bool = False,
                         arguments: dict[str, Any] | None = None) -> frame.Method:
        check_str(exchange, "exchange")
        kind = exchange_type.value if isinstance(exchange_type, Enum) else exchange_type
        check_str(kind, "exchange_type")
        return self._rpc(self._impl.exchange_declare, exchange, kind, passive, durable,
                         auto_delete, internal, arguments)

    def exchange_delete(self, exchange: str | None = None,
                        if_unused: bool = False) -> frame.Method:
        check_str(exchange, "exchange", optional=True)
        return self._rpc(self._impl.exchange_delete, exchange or "", if_unused)

    def exchange_bind(self, destination: str, source: str, routing_key: str = "",
                      arguments: dict[str, Any] | None = None) -> frame.Method:
        for value, name in ((destination, "destination"), (source, "source"),
                            (routing_key, "routing_key")):
            check_str(value, name)
        return self._rpc(self._impl.exchange_bind, destination, source, routing_key, arguments)

    def exchange_unbind(self, destination: str | None = None, source: str | None = None,
                        routing_key: str = "",
                        arguments: dict[str, Any] | None = None) -> frame.Method:
        for value, name in ((destination, "destination"), (source, "source"),
                            (routing_key, "routing_key")):
            check_str(value, name)
        return self._rpc(self._impl.exchange_unbind, destination, source, routing_key,
                         arguments)

    def queue_declare(self, queue: str, passive: bool = False, durable: bool = False,
                      exclusive: bool = False, auto_delete: bool = False,
                      arguments: dict[str, Any] | None = None) -> frame.Method:
        check_str(queue, "queue")
        return self._rpc(self._impl.queue_declare, queue, passive, durable, exclusive,
                         auto_delete, arguments)

    def queue_delete(self, queue: str, if_unused: bool = False,
                     if_empty: bool = False) -> frame.Method:
        check_str(queue, "queue")
        return self._rpc(self._impl.queue_delete, queue, if_unused, if_empty)

    def queue_purge(self, queue: str) -> frame.Method:
        check_str(queue, "queue")
        return self._rpc(self._impl.queue_purge, queue)

    def queue_bind(self, queue: str, exchange: str, routing_key: str | None = None,
                   arguments: dict[str, Any] | None = None) -> frame.Method:
        check_str(queue, "queue")
        check_str(exchange, "exchange")
        check_str(routing_key, "routing_key", optional=True)
        return self._rpc(self._impl.queue_bind, queue, exchange, routing_key, arguments)

    def queue_unbind(self, queue: str, exchange: str | None = None,
                     routing_key: str | None = None,
                     arguments: dict[str, Any] | None = None) -> frame.Method:
        check_str(queue, "queue")
        check_str(exchange, "exchange")
        check_str(routing_key, "routing_key", optional=True)
        return self._rpc(self._impl.queue_unbind, queue, exchange, routing_key, arguments)

    def tx_select(self) -> frame.Method:
        return self._rpc(self._impl.tx_select)

    def tx_commit(self) -> frame.Method:
        return self._rpc(self._impl.tx_commit)

    def tx_rollback(self) -> frame.Method:
        return self._rpc(self._impl.tx_rollback)
