"""The channel kombu uses, with py-amqp's method names and return values.

Rules:
- Deliveries, broker cancels, returns and a broker's close of a consuming
  channel are posted to the connection's handoff queue and run in
  ``drain_events`` (see the package docstring); every other call runs in the
  caller's greenlet on the geamqp channel, which is greenlet-safe.
- A message keeps the channel it arrived on, so its ack goes to that channel
  with its delivery tag, from whichever greenlet acks.
- ``connection`` is None once the channel is closed (kombu tests it for truth).
- ``nowait=True`` is accepted and waits anyway: geamqp pipelines requests, so
  waiting for the reply costs no extra round trip for other greenlets.
"""

from __future__ import annotations

import datetime
import logging
import uuid
from collections import defaultdict
from typing import TYPE_CHECKING, Any, NamedTuple

from kombu.transport import base

import geamqp
from geamqp.exceptions import AMQPConnectionError, ChannelClosedByBroker, UnroutableError

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["Channel", "ConsumerCancelled", "Message", "queue_declare_ok_t"]

log = logging.getLogger("geamqp.kombu")

_PROPERTY_NAMES = ("content_type", "content_encoding", "delivery_mode", "priority",
                   "correlation_id", "reply_to", "expiration", "message_id", "timestamp",
                   "type", "user_id", "app_id", "cluster_id")


class queue_declare_ok_t(NamedTuple):
    queue: str
    message_count: int
    consumer_count: int


class ConsumerCancelled(AMQPConnectionError):
    """The broker cancelled a consumer that has no ``on_cancel`` (its queue was deleted,
    its node went down). Raised from ``drain_events``; a connection error, as in
    py-amqp, so that kombu and Celery reconnect and consume again."""


class RawMessage:
    """What a consumer callback receives before ``message_to_python`` (py-amqp's shape)."""

    __slots__ = ("auto_acked", "body", "channel", "delivery_info", "delivery_tag", "headers",
                 "properties")

    def __init__(self, channel: Channel, delivery_info: dict[str, Any],
                 properties: geamqp.BasicProperties | None, body: bytes,
                 auto_acked: bool) -> None:
        self.channel = channel
        self.delivery_info = delivery_info
        self.delivery_tag = delivery_info.get("delivery_tag")
        props = _properties_dict(properties)
        self.properties = props
        self.headers = props.get("application_headers") or {}
        self.body = body
        self.auto_acked = auto_acked


class Message(base.Message):  # type: ignore[misc]
    """A kombu message received on a geamqp channel."""

    def __init__(self, raw: RawMessage, channel: Channel | None = None, **kwargs: Any) -> None:
        props = raw.properties
        super().__init__(body=raw.body, channel=channel or raw.channel,
                         delivery_tag=raw.delivery_tag,
                         content_type=props.get("content_type"),
                         content_encoding=props.get("content_encoding"),
                         delivery_info=raw.delivery_info, properties=props,
                         headers=raw.headers, **kwargs)
        self._auto_acked = raw.auto_acked

    def ack(self, multiple: bool = False) -> None:
        # The consumer was no_ack: nothing to send. Known per message, so an ack of a
        # delivery that arrived while its consumer was being cancelled stays local too.
        if self._auto_acked:
            return
        super().ack(multiple=multiple)


KombuMessage = Message  # for annotations inside Channel, whose Message attribute shadows it


class OutgoingMessage:
    """What ``prepare_message`` returns and ``basic_publish`` sends."""

    __slots__ = ("body", "properties")

    def __init__(self, body: bytes, properties: geamqp.BasicProperties) -> None:
        self.body = body
        self.properties = properties


def _properties_dict(properties: geamqp.BasicProperties | None) -> dict[str, Any]:
    if properties is None:
        return {}
    props = {name: value for name in _PROPERTY_NAMES
             if (value := getattr(properties, name)) is not None}
    if properties.headers is not None:
        props["application_headers"] = properties.headers
    return props


def _timestamp(value: Any) -> int | None:
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:  # py-amqp's convention: naive means UTC
            value = value.replace(tzinfo=datetime.timezone.utc)
        return int(value.timestamp())
    if isinstance(value, float):
        return int(value)
    raise TypeError(f"timestamp must be an int, float or datetime, not {type(value).__name__}")


class Channel(base.StdChannel):  # type: ignore[misc]
    """A kombu channel on one geamqp channel."""

    Message = Message

    def __init__(self, connection: Connection, channel: geamqp.Channel) -> None:
        self._connection = connection
        self._ch = channel
        self.channel_id = channel.channel_number
        self.events: defaultdict[str, set[Any]] = defaultdict(set)
        self.no_ack_consumers: set[str] = set()
        self.callbacks: dict[str, Any] = {}
        self.cancel_callbacks: dict[str, Any] = {}
        self._confirm = connection.confirm_publish
        self._confirm_selected = False
        self._closed = False
        channel.add_on_return_callback(self._on_return)
        channel.add_on_cancel_callback(self._on_broker_cancel)
        channel.add_on_close_callback(self._on_close)

    def __repr__(self) -> str:
        return f"<geamqp.kombu.Channel {self.channel_id} {'open' if self.is_open else 'closed'}>"

    @property
    def connection(self) -> Connection | None:
        if self._closed or self._ch.is_closed or self._ch.is_closing:
            return None
        return self._connection

    @property
    def is_open(self) -> bool:
        return bool(self._ch.is_open)

    @property
    def geamqp_channel(self) -> geamqp.Channel:
        return self._ch

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ch.close()

    # ------------------------------------------------------------------ events (geamqp's greenlets)

    def _on_return(self, _ch: Any, method: Any, properties: Any, body: bytes) -> None:
        raw = self._returned(method, properties, body)
        exc = UnroutableError([geamqp.ReturnedMessage(method, properties, body)])
        self._run_return_handlers(exc, raw, self._connection.post)

    def _returned(self, method: Any, properties: Any, body: bytes) -> RawMessage:
        info = {"exchange": method.exchange, "routing_key": method.routing_key,
                "reply_code": method.reply_code, "reply_text": method.reply_text}
        return RawMessage(self, info, properties, body, auto_acked=True)

    def _run_return_handlers(self, exc: Exception, raw: RawMessage, run: Any) -> None:
        handlers = list(self.events["basic_return"])
        if not handlers:
            log.warning("channel %s: message to %r / %r returned (%s) and no basic_return "
                        "handler is registered", self.channel_id, raw.delivery_info["exchange"],
                        raw.delivery_info["routing_key"], raw.delivery_info["reply_text"])
        for handler in handlers:
            run(handler, exc, raw.delivery_info["exchange"], raw.delivery_info["routing_key"],
                raw)

    def _on_broker_cancel(self, method: Any) -> None:
        tag = method.consumer_tag
        self.callbacks.pop(tag, None)
        self.no_ack_consumers.discard(tag)
        on_cancel = self.cancel_callbacks.pop(tag, None)
        if on_cancel is not None:
            self._connection.post(on_cancel, tag)
        else:
            self._connection.post(_raise, ConsumerCancelled(
                f"the broker cancelled consumer {tag!r} on channel {self.channel_id}"))

    def _on_close(self, _ch: Any, error: Exception) -> None:
        # A consuming channel closed by the broker surfaces where py-amqp raises it:
        # in drain_events, so a Celery worker notices its consumer is gone.
        if isinstance(error, ChannelClosedByBroker) and self.callbacks:
            self._connection.post(_raise, error)

    # ------------------------------------------------------------------ messages

    def prepare_message(self, body: Any, priority: int | None = None,
                        content_type: str | None = None, content_encoding: str | None = None,
                        headers: dict[str, Any] | None = None,
                        properties: dict[str, Any] | None = None) -> OutgoingMessage:
        props = properties or {}
        if isinstance(body, str):
            body = body.encode(content_encoding or "utf-8")
        return OutgoingMessage(bytes(body), geamqp.BasicProperties(
            content_type=content_type, content_encoding=content_encoding, headers=headers,
            delivery_mode=props.get("delivery_mode"),
            priority=priority if priority is not None else props.get("priority"),
            correlation_id=props.get("correlation_id"), reply_to=props.get("reply_to"),
            expiration=props.get("expiration"), message_id=props.get("message_id"),
            timestamp=_timestamp(props.get("timestamp")), type=props.get("type"),
            user_id=props.get("user_id"), app_id=props.get("app_id"),
            cluster_id=props.get("cluster_id")))

    def prepare_queue_arguments(self, arguments: dict[str, Any],
                                **kwargs: Any) -> dict[str, Any]:
        return base.to_rabbitmq_queue_arguments(arguments, **kwargs)  # type: ignore[no-any-return]

    def message_to_python(self, raw: RawMessage) -> KombuMessage:
        return self.Message(raw, channel=self)

    def basic_publish(self, msg: OutgoingMessage, exchange: str = "", routing_key: str = "",
                      mandatory: bool = False, immediate: bool = False,
                      timeout: float | None = None, confirm_timeout: float | None = None,
                      **kwargs: Any) -> None:
        """Publish; with confirm_publish, wait for the broker's ack (up to confirm_timeout,
        then `socket.timeout` as py-amqp raises) and raise `NackError` on a nack."""
        if immediate:
            raise NotImplementedError("RabbitMQ does not implement basic.publish immediate")
        ch = self._ch
        if not self._confirm:
            ch.basic_publish(exchange, routing_key, msg.body, msg.properties, mandatory,
                             wait=False)
            return
        if not self._confirm_selected:
            ch.confirm_delivery()
            self._confirm_selected = True
        confirmation = ch.basic_publish(exchange, routing_key, msg.body, msg.properties,
                                        mandatory, wait=False)
        assert confirmation is not None
        limit = confirm_timeout or timeout
        try:
            if not confirmation.wait(limit):
                raise TimeoutError(f"publish to {exchange!r} / {routing_key!r} not confirmed "
                                     f"within {limit} s")
        except UnroutableError as exc:
            for returned in exc.messages:  # in confirm mode the return comes with the ack
                raw = self._returned(returned.method, returned.properties, returned.body)
                self._run_return_handlers(exc, raw, _call)

    def confirm_select(self, nowait: bool = False) -> None:
        self._ch.confirm_delivery()
        self._confirm = self._confirm_selected = True

    # ------------------------------------------------------------------ consuming

    def basic_consume(self, queue: str = "", consumer_tag: str = "", no_local: bool = False,
                      no_ack: bool = False, exclusive: bool = False, nowait: bool = False,
                      callback: Any = None, arguments: dict[str, Any] | None = None,
                      on_cancel: Any = None, **kwargs: Any) -> str:
        # Our own tag, registered before the consume: a delivery can reach the
        # drainer before this greenlet resumes from consume-ok.
        tag = consumer_tag or f"kombu-{uuid.uuid4().hex}"
        if no_ack:
            self.no_ack_consumers.add(tag)
        self.callbacks[tag] = callback
        if on_cancel is not None:
            self.cancel_callbacks[tag] = on_cancel
        post = self._connection.post

        def deliver(_ch: Any, method: Any, properties: Any, body: bytes) -> None:
            if callback is not None:
                info = {"consumer_tag": method.consumer_tag,
                        "delivery_tag": method.delivery_tag,
                        "redelivered": method.redelivered, "exchange": method.exchange,
                        "routing_key": method.routing_key}
                post(callback, RawMessage(self, info, properties, body, no_ack))

        try:
            return self._ch.basic_consume(queue, deliver, auto_ack=no_ack, exclusive=exclusive,
                                          consumer_tag=tag, arguments=arguments)
        except BaseException:
            self.no_ack_consumers.discard(tag)
            self.callbacks.pop(tag, None)
            self.cancel_callbacks.pop(tag, None)
            raise

    def basic_cancel(self, consumer_tag: str, nowait: bool = False) -> None:
        """Cancel a consumer; deliveries that arrive meanwhile still reach its callback."""
        self.no_ack_consumers.discard(consumer_tag)
        self.callbacks.pop(consumer_tag, None)
        self.cancel_callbacks.pop(consumer_tag, None)
        if self.connection is not None:
            self._ch.basic_cancel(consumer_tag)

    def basic_get(self, queue: str = "", no_ack: bool = False,
                  **kwargs: Any) -> RawMessage | None:
        method, properties, body = self._ch.basic_get(queue, auto_ack=no_ack)
        if method is None:
            return None
        info = {"delivery_tag": method.delivery_tag, "redelivered": method.redelivered,
                "exchange": method.exchange, "routing_key": method.routing_key,
                "message_count": method.message_count}
        return RawMessage(self, info, properties, body, no_ack)

    def basic_ack(self, delivery_tag: int, multiple: bool = False, **kwargs: Any) -> None:
        self._ch.basic_ack(delivery_tag, multiple)

    def basic_reject(self, delivery_tag: int, requeue: bool = True, **kwargs: Any) -> None:
        self._ch.basic_reject(delivery_tag, requeue)

    def basic_nack(self, delivery_tag: int, multiple: bool = False, requeue: bool = True,
                   **kwargs: Any) -> None:
        self._ch.basic_nack(delivery_tag, multiple, requeue)

    def basic_recover(self, requeue: bool = False) -> None:
        self._ch.basic_recover(requeue)

    def basic_qos(self, prefetch_size: int, prefetch_count: int, a_global: bool = False,
                  **kwargs: Any) -> None:
        self._ch.basic_qos(prefetch_size, prefetch_count, a_global)

    def flow(self, active: bool) -> None:
        raise NotImplementedError("RabbitMQ does not accept channel.flow from a client")

    # ------------------------------------------------------------------ topology

    def exchange_declare(self, exchange: str, type: str, passive: bool = False,
                         durable: bool = False, auto_delete: bool = True, nowait: bool = False,
                         arguments: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self._ch.exchange_declare(exchange, type, passive=passive, durable=durable,
                                  auto_delete=auto_delete, internal=False, arguments=arguments)

    def exchange_delete(self, exchange: str, if_unused: bool = False,
                        nowait: bool = False, **kwargs: Any) -> None:
        self._ch.exchange_delete(exchange, if_unused)

    def exchange_bind(self, destination: str, source: str = "", routing_key: str = "",
                      nowait: bool = False, arguments: dict[str, Any] | None = None,
                      **kwargs: Any) -> None:
        self._ch.exchange_bind(destination, source, routing_key, arguments)

    def exchange_unbind(self, destination: str, source: str = "", routing_key: str = "",
                        nowait: bool = False, arguments: dict[str, Any] | None = None,
                        **kwargs: Any) -> None:
        self._ch.exchange_unbind(destination, source, routing_key, arguments)

    def queue_declare(self, queue: str = "", passive: bool = False, durable: bool = False,
                      exclusive: bool = False, auto_delete: bool = True, nowait: bool = False,
                      arguments: dict[str, Any] | None = None,
                      **kwargs: Any) -> queue_declare_ok_t:
        ok = self._ch.queue_declare(queue, passive=passive, durable=durable, exclusive=exclusive,
                                    auto_delete=auto_delete, arguments=arguments)
        return queue_declare_ok_t(ok.queue, ok.message_count, ok.consumer_count)

    def queue_bind(self, queue: str, exchange: str = "", routing_key: str = "",
                   nowait: bool = False, arguments: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
        self._ch.queue_bind(queue, exchange, routing_key, arguments)

    def queue_unbind(self, queue: str, exchange: str, routing_key: str = "",
                     nowait: bool = False, arguments: dict[str, Any] | None = None,
                     **kwargs: Any) -> None:
        self._ch.queue_unbind(queue, exchange, routing_key, arguments)

    def queue_purge(self, queue: str = "", nowait: bool = False, **kwargs: Any) -> int:
        return int(self._ch.queue_purge(queue).message_count)

    def queue_delete(self, queue: str = "", if_unused: bool = False, if_empty: bool = False,
                     nowait: bool = False, **kwargs: Any) -> int:
        return int(self._ch.queue_delete(queue, if_unused, if_empty).message_count)

    def tx_select(self) -> None:
        self._ch.tx_select()

    def tx_commit(self) -> None:
        self._ch.tx_commit()

    def tx_rollback(self) -> None:
        self._ch.tx_rollback()


def _raise(error: BaseException) -> None:
    raise error


def _call(fn: Any, *args: Any) -> None:
    fn(*args)
