"""The AMQP 0-9-1 method table, written once, as data — plus RabbitMQ's extensions.

Each method is a slotted dataclass whose annotated fields, in order, *are* the
wire layout (spec section 1.4 and the class reference of amqp0-9-1.xml). The
class-level decorator records the ids, who may send it, whether it is
synchronous, which methods answer it and whether content follows; `_codegen`
derives each method's encoder and decoder from the same annotations.

RabbitMQ extensions included: connection.blocked / unblocked / update-secret,
exchange.bind / unbind (note exchange.unbind-ok is method 51), basic.nack,
confirm.select, and basic.cancel sent by the server.

Names follow pika (`spec.Basic.Deliver`, `spec.Queue.DeclareOk`) so handler code
ports unchanged. Short strings are UTF-8 with ``surrogateescape``, so any bytes
a peer sends survive a decode/encode round trip.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, TypeVar

from . import _codegen

__all__ = [
    "METHODS",
    "Basic",
    "Channel",
    "Confirm",
    "Connection",
    "Exchange",
    "Method",
    "Queue",
    "Tx",
]

Octet = Annotated[int, "octet"]
Short = Annotated[int, "short"]
Long = Annotated[int, "long"]
LongLong = Annotated[int, "longlong"]
Bit = Annotated[bool, "bit"]
ShortStr = Annotated[str, "shortstr"]
LongStr = Annotated[bytes, "longstr"]
Table = Annotated["dict[str, Any] | None", "table"]

CLIENT = "client"
SERVER = "server"
BOTH = "both"


class Method:
    """Base of every AMQP method. Class attributes describe the method itself."""

    __slots__ = ()

    CLASS_ID: ClassVar[int]
    METHOD_ID: ClassVar[int]
    INDEX: ClassVar[int]  # (class_id << 16) | method_id, the key of METHODS
    NAME: ClassVar[str]  # e.g. "basic.deliver"
    SENDER: ClassVar[str]  # "client", "server" or "both"
    SYNCHRONOUS: ClassVar[bool]  # the sender waits for one of RESPONSES
    HAS_CONTENT: ClassVar[bool]  # a content header and body frames follow
    RESPONSES: ClassVar[tuple[type[Method], ...]]
    FIELDS: ClassVar[tuple[tuple[str, str], ...]]  # (name, domain) in wire order
    _response_names: ClassVar[tuple[str, ...]]

    def encode(self) -> bytes:
        """The method's arguments as they go on the wire (after class and method id)."""
        raise NotImplementedError  # generated per class

    @classmethod
    def decode(cls, buf: bytes, pos: int) -> tuple[Method, int]:
        """Decode the arguments starting at `pos` (after class and method id)."""
        raise NotImplementedError  # generated per class


METHODS: dict[int, type[Method]] = {}

_M = TypeVar("_M", bound=type[Method])


def _method(
    class_id: int,
    method_id: int,
    name: str,
    sender: str,
    *,
    responses: tuple[str, ...] = (),
    content: bool = False,
) -> Callable[[_M], _M]:
    def register(cls: _M) -> _M:
        cls.CLASS_ID = class_id
        cls.METHOD_ID = method_id
        cls.INDEX = (class_id << 16) | method_id
        cls.NAME = name
        cls.SENDER = sender
        cls.SYNCHRONOUS = bool(responses)
        cls.HAS_CONTENT = content
        cls._response_names = responses
        cls.FIELDS = _codegen.fields_of(cls)
        _codegen.install(cls)
        METHODS[cls.INDEX] = cls
        return cls

    return register


# fmt: off
class Connection:
    @_method(10, 10, "connection.start", SERVER, responses=("connection.start-ok",))
    @dataclass(slots=True)
    class Start(Method):
        version_major: Octet = 0
        version_minor: Octet = 9
        server_properties: Table = None
        mechanisms: LongStr = b"PLAIN"
        locales: LongStr = b"en_US"

    @_method(10, 11, "connection.start-ok", CLIENT)
    @dataclass(slots=True)
    class StartOk(Method):
        client_properties: Table = None
        mechanism: ShortStr = "PLAIN"
        response: LongStr = b""
        locale: ShortStr = "en_US"

        def __repr__(self) -> str:  # the response carries the password
            return f"Connection.StartOk(mechanism={self.mechanism!r}, response=<hidden>)"

    @_method(10, 20, "connection.secure", SERVER, responses=("connection.secure-ok",))
    @dataclass(slots=True)
    class Secure(Method):
        challenge: LongStr = b""

    @_method(10, 21, "connection.secure-ok", CLIENT)
    @dataclass(slots=True)
    class SecureOk(Method):
        response: LongStr = b""

        def __repr__(self) -> str:
            return "Connection.SecureOk(response=<hidden>)"

    @_method(10, 30, "connection.tune", SERVER, responses=("connection.tune-ok",))
    @dataclass(slots=True)
    class Tune(Method):
        channel_max: Short = 0
        frame_max: Long = 0
        heartbeat: Short = 0

    @_method(10, 31, "connection.tune-ok", CLIENT)
    @dataclass(slots=True)
    class TuneOk(Method):
        channel_max: Short = 0
        frame_max: Long = 0
        heartbeat: Short = 0

    @_method(10, 40, "connection.open", CLIENT, responses=("connection.open-ok",))
    @dataclass(slots=True)
    class Open(Method):
        virtual_host: ShortStr = "/"
        capabilities: ShortStr = ""
        insist: Bit = False

    @_method(10, 41, "connection.open-ok", SERVER)
    @dataclass(slots=True)
    class OpenOk(Method):
        known_hosts: ShortStr = ""

    @_method(10, 50, "connection.close", BOTH, responses=("connection.close-ok",))
    @dataclass(slots=True)
    class Close(Method):
        reply_code: Short = 0
        reply_text: ShortStr = ""
        class_id: Short = 0
        method_id: Short = 0

    @_method(10, 51, "connection.close-ok", BOTH)
    @dataclass(slots=True)
    class CloseOk(Method):
        pass

    @_method(10, 60, "connection.blocked", SERVER)
    @dataclass(slots=True)
    class Blocked(Method):
        reason: ShortStr = ""

    @_method(10, 61, "connection.unblocked", SERVER)
    @dataclass(slots=True)
    class Unblocked(Method):
        pass

    @_method(10, 70, "connection.update-secret", CLIENT,
             responses=("connection.update-secret-ok",))
    @dataclass(slots=True)
    class UpdateSecret(Method):
        new_secret: LongStr = b""
        reason: ShortStr = ""

        def __repr__(self) -> str:
            return f"Connection.UpdateSecret(new_secret=<hidden>, reason={self.reason!r})"

    @_method(10, 71, "connection.update-secret-ok", SERVER)
    @dataclass(slots=True)
    class UpdateSecretOk(Method):
        pass


class Channel:
    @_method(20, 10, "channel.open", CLIENT, responses=("channel.open-ok",))
    @dataclass(slots=True)
    class Open(Method):
        out_of_band: ShortStr = ""

    @_method(20, 11, "channel.open-ok", SERVER)
    @dataclass(slots=True)
    class OpenOk(Method):
        channel_id: LongStr = b""

    @_method(20, 20, "channel.flow", BOTH, responses=("channel.flow-ok",))
    @dataclass(slots=True)
    class Flow(Method):
        active: Bit = True

    @_method(20, 21, "channel.flow-ok", BOTH)
    @dataclass(slots=True)
    class FlowOk(Method):
        active: Bit = True

    @_method(20, 40, "channel.close", BOTH, responses=("channel.close-ok",))
    @dataclass(slots=True)
    class Close(Method):
        reply_code: Short = 0
        reply_text: ShortStr = ""
        class_id: Short = 0
        method_id: Short = 0

    @_method(20, 41, "channel.close-ok", BOTH)
    @dataclass(slots=True)
    class CloseOk(Method):
        pass


class Exchange:
    @_method(40, 10, "exchange.declare", CLIENT, responses=("exchange.declare-ok",))
    @dataclass(slots=True)
    class Declare(Method):
        ticket: Short = 0
        exchange: ShortStr = ""
        type: ShortStr = "direct"
        passive: Bit = False
        durable: Bit = False
        auto_delete: Bit = False
        internal: Bit = False
        nowait: Bit = False
        arguments: Table = None

    @_method(40, 11, "exchange.declare-ok", SERVER)
    @dataclass(slots=True)
    class DeclareOk(Method):
        pass

    @_method(40, 20, "exchange.delete", CLIENT, responses=("exchange.delete-ok",))
    @dataclass(slots=True)
    class Delete(Method):
        ticket: Short = 0
        exchange: ShortStr = ""
        if_unused: Bit = False
        nowait: Bit = False

    @_method(40, 21, "exchange.delete-ok", SERVER)
    @dataclass(slots=True)
    class DeleteOk(Method):
        pass

    @_method(40, 30, "exchange.bind", CLIENT, responses=("exchange.bind-ok",))
    @dataclass(slots=True)
    class Bind(Method):
        ticket: Short = 0
        destination: ShortStr = ""
        source: ShortStr = ""
        routing_key: ShortStr = ""
        nowait: Bit = False
        arguments: Table = None

    @_method(40, 31, "exchange.bind-ok", SERVER)
    @dataclass(slots=True)
    class BindOk(Method):
        pass

    @_method(40, 40, "exchange.unbind", CLIENT, responses=("exchange.unbind-ok",))
    @dataclass(slots=True)
    class Unbind(Method):
        ticket: Short = 0
        destination: ShortStr = ""
        source: ShortStr = ""
        routing_key: ShortStr = ""
        nowait: Bit = False
        arguments: Table = None

    @_method(40, 51, "exchange.unbind-ok", SERVER)
    @dataclass(slots=True)
    class UnbindOk(Method):
        pass


class Queue:
    @_method(50, 10, "queue.declare", CLIENT, responses=("queue.declare-ok",))
    @dataclass(slots=True)
    class Declare(Method):
        ticket: Short = 0
        queue: ShortStr = ""
        passive: Bit = False
        durable: Bit = False
        exclusive: Bit = False
        auto_delete: Bit = False
        nowait: Bit = False
        arguments: Table = None

    @_method(50, 11, "queue.declare-ok", SERVER)
    @dataclass(slots=True)
    class DeclareOk(Method):
        queue: ShortStr = ""
        message_count: Long = 0
        consumer_count: Long = 0

    @_method(50, 20, "queue.bind", CLIENT, responses=("queue.bind-ok",))
    @dataclass(slots=True)
    class Bind(Method):
        ticket: Short = 0
        queue: ShortStr = ""
        exchange: ShortStr = ""
        routing_key: ShortStr = ""
        nowait: Bit = False
        arguments: Table = None

    @_method(50, 21, "queue.bind-ok", SERVER)
    @dataclass(slots=True)
    class BindOk(Method):
        pass

    @_method(50, 30, "queue.purge", CLIENT, responses=("queue.purge-ok",))
    @dataclass(slots=True)
    class Purge(Method):
        ticket: Short = 0
        queue: ShortStr = ""
        nowait: Bit = False

    @_method(50, 31, "queue.purge-ok", SERVER)
    @dataclass(slots=True)
    class PurgeOk(Method):
        message_count: Long = 0

    @_method(50, 40, "queue.delete", CLIENT, responses=("queue.delete-ok",))
    @dataclass(slots=True)
    class Delete(Method):
        ticket: Short = 0
        queue: ShortStr = ""
        if_unused: Bit = False
        if_empty: Bit = False
        nowait: Bit = False

    @_method(50, 41, "queue.delete-ok", SERVER)
    @dataclass(slots=True)
    class DeleteOk(Method):
        message_count: Long = 0

    @_method(50, 50, "queue.unbind", CLIENT, responses=("queue.unbind-ok",))
    @dataclass(slots=True)
    class Unbind(Method):
        ticket: Short = 0
        queue: ShortStr = ""
        exchange: ShortStr = ""
        routing_key: ShortStr = ""
        arguments: Table = None

    @_method(50, 51, "queue.unbind-ok", SERVER)
    @dataclass(slots=True)
    class UnbindOk(Method):
        pass


class Basic:
    @_method(60, 10, "basic.qos", CLIENT, responses=("basic.qos-ok",))
    @dataclass(slots=True)
    class Qos(Method):
        prefetch_size: Long = 0
        prefetch_count: Short = 0
        global_qos: Bit = False

    @_method(60, 11, "basic.qos-ok", SERVER)
    @dataclass(slots=True)
    class QosOk(Method):
        pass

    @_method(60, 20, "basic.consume", CLIENT, responses=("basic.consume-ok",))
    @dataclass(slots=True)
    class Consume(Method):
        ticket: Short = 0
        queue: ShortStr = ""
        consumer_tag: ShortStr = ""
        no_local: Bit = False
        no_ack: Bit = False
        exclusive: Bit = False
        nowait: Bit = False
        arguments: Table = None

    @_method(60, 21, "basic.consume-ok", SERVER)
    @dataclass(slots=True)
    class ConsumeOk(Method):
        consumer_tag: ShortStr = ""

    @_method(60, 30, "basic.cancel", BOTH, responses=("basic.cancel-ok",))
    @dataclass(slots=True)
    class Cancel(Method):
        consumer_tag: ShortStr = ""
        nowait: Bit = False

    @_method(60, 31, "basic.cancel-ok", BOTH)
    @dataclass(slots=True)
    class CancelOk(Method):
        consumer_tag: ShortStr = ""

    @_method(60, 40, "basic.publish", CLIENT, content=True)
    @dataclass(slots=True)
    class Publish(Method):
        ticket: Short = 0
        exchange: ShortStr = ""
        routing_key: ShortStr = ""
        mandatory: Bit = False
        immediate: Bit = False

    @_method(60, 50, "basic.return", SERVER, content=True)
    @dataclass(slots=True)
    class Return(Method):
        reply_code: Short = 0
        reply_text: ShortStr = ""
        exchange: ShortStr = ""
        routing_key: ShortStr = ""

    @_method(60, 60, "basic.deliver", SERVER, content=True)
    @dataclass(slots=True)
    class Deliver(Method):
        consumer_tag: ShortStr = ""
        delivery_tag: LongLong = 0
        redelivered: Bit = False
        exchange: ShortStr = ""
        routing_key: ShortStr = ""

    @_method(60, 70, "basic.get", CLIENT, responses=("basic.get-ok", "basic.get-empty"))
    @dataclass(slots=True)
    class Get(Method):
        ticket: Short = 0
        queue: ShortStr = ""
        no_ack: Bit = False

    @_method(60, 71, "basic.get-ok", SERVER, content=True)
    @dataclass(slots=True)
    class GetOk(Method):
        delivery_tag: LongLong = 0
        redelivered: Bit = False
        exchange: ShortStr = ""
        routing_key: ShortStr = ""
        message_count: Long = 0

    @_method(60, 72, "basic.get-empty", SERVER)
    @dataclass(slots=True)
    class GetEmpty(Method):
        cluster_id: ShortStr = ""

    @_method(60, 80, "basic.ack", BOTH)
    @dataclass(slots=True)
    class Ack(Method):
        delivery_tag: LongLong = 0
        multiple: Bit = False

    @_method(60, 90, "basic.reject", CLIENT)
    @dataclass(slots=True)
    class Reject(Method):
        delivery_tag: LongLong = 0
        requeue: Bit = True

    @_method(60, 100, "basic.recover-async", CLIENT)
    @dataclass(slots=True)
    class RecoverAsync(Method):
        requeue: Bit = False

    @_method(60, 110, "basic.recover", CLIENT, responses=("basic.recover-ok",))
    @dataclass(slots=True)
    class Recover(Method):
        requeue: Bit = False

    @_method(60, 111, "basic.recover-ok", SERVER)
    @dataclass(slots=True)
    class RecoverOk(Method):
        pass

    @_method(60, 120, "basic.nack", BOTH)
    @dataclass(slots=True)
    class Nack(Method):
        delivery_tag: LongLong = 0
        multiple: Bit = False
        requeue: Bit = True


class Confirm:
    @_method(85, 10, "confirm.select", CLIENT, responses=("confirm.select-ok",))
    @dataclass(slots=True)
    class Select(Method):
        nowait: Bit = False

    @_method(85, 11, "confirm.select-ok", SERVER)
    @dataclass(slots=True)
    class SelectOk(Method):
        pass


class Tx:
    @_method(90, 10, "tx.select", CLIENT, responses=("tx.select-ok",))
    @dataclass(slots=True)
    class Select(Method):
        pass

    @_method(90, 11, "tx.select-ok", SERVER)
    @dataclass(slots=True)
    class SelectOk(Method):
        pass

    @_method(90, 20, "tx.commit", CLIENT, responses=("tx.commit-ok",))
    @dataclass(slots=True)
    class Commit(Method):
        pass

    @_method(90, 21, "tx.commit-ok", SERVER)
    @dataclass(slots=True)
    class CommitOk(Method):
        pass

    @_method(90, 30, "tx.rollback", CLIENT, responses=("tx.rollback-ok",))
    @dataclass(slots=True)
    class Rollback(Method):
        pass

    @_method(90, 31, "tx.rollback-ok", SERVER)
    @dataclass(slots=True)
    class RollbackOk(Method):
        pass
# fmt: on


def _link_responses() -> None:
    by_name = {cls.NAME: cls for cls in METHODS.values()}
    for cls in METHODS.values():
        cls.RESPONSES = tuple(by_name[name] for name in cls._response_names)


_link_responses()
