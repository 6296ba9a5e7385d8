"""What the supervisor replays after a reconnect: the topology this connection declared.

Every successful synchronous reply passes through `Topology.on_reply` (one
call from the channel's RPC path), so recording needs no hook in each API
method. Rules, after the Java client's automatic recovery:

- Recorded: exchanges, queues and bindings (queue and exchange-to-exchange)
  declared through this connection, in declaration order; passive declares
  and the predeclared ``amq.*`` / default exchanges are not.
- Forgotten: what the user deleted or unbound, and the bindings of a deleted
  queue or exchange; an auto-delete queue once its last consumer is
  cancelled (the broker deletes it then).
- Server-named queues keep their record under their current name; after a
  reconnect they get a new name (`rename`), and their bindings and consumers
  follow.
- Consumers live on their channels; the topology only decides whether their
  queue still exists (the connection tells it when a queue loses its last
  consumer, and renames consumers itself).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .protocol.spec import Exchange, Method, Queue

__all__ = ["BindingRecord", "ExchangeRecord", "QueueRecord", "Topology"]


@dataclass
class ExchangeRecord:
    name: str
    type: str
    durable: bool
    auto_delete: bool
    internal: bool
    arguments: dict[str, Any] | None

    def declare(self) -> Exchange.Declare:
        return Exchange.Declare(0, self.name, self.type, False, self.durable, self.auto_delete,
                                self.internal, False, self.arguments)


@dataclass
class QueueRecord:
    name: str
    server_named: bool
    durable: bool
    exclusive: bool
    auto_delete: bool
    arguments: dict[str, Any] | None

    def declare(self) -> Queue.Declare:
        name = "" if self.server_named else self.name
        return Queue.Declare(0, name, False, self.durable, self.exclusive, self.auto_delete,
                             False, self.arguments)


@dataclass
class BindingRecord:
    to_exchange: bool  # exchange-to-exchange binding (exchange.bind)
    destination: str
    source: str
    routing_key: str
    arguments: dict[str, Any] | None = field(default=None)

    def key(self) -> tuple[bool, str, str, str, str]:
        return (self.to_exchange, self.destination, self.source, self.routing_key,
                repr(sorted((self.arguments or {}).items())))

    def bind(self) -> Method:
        if self.to_exchange:
            return Exchange.Bind(0, self.destination, self.source, self.routing_key, False,
                                 self.arguments)
        return Queue.Bind(0, self.destination, self.source, self.routing_key, False,
                          self.arguments)


def _predeclared(exchange: str) -> bool:
    return exchange == "" or exchange.startswith("amq.")


class Topology:
    """Exchanges, queues and bindings declared through one connection."""

    def __init__(self) -> None:
        self.exchanges: dict[str, ExchangeRecord] = {}
        self.queues: dict[str, QueueRecord] = {}
        self.bindings: dict[tuple[bool, str, str, str, str], BindingRecord] = {}

    def on_reply(self, method: Method, reply: Any) -> None:
        """Record what a successful request changed."""
        kind = type(method)
        if kind is Queue.Declare:
            self._on_queue_declare(method, reply)  # type: ignore[arg-type]
        elif kind is Exchange.Declare:
            m: Any = method
            if not m.passive and not _predeclared(m.exchange):
                self.exchanges[m.exchange] = ExchangeRecord(
                    m.exchange, m.type, m.durable, m.auto_delete, m.internal, m.arguments)
        elif kind is Queue.Bind or kind is Exchange.Bind:
            record = self._binding(method)
            self.bindings[record.key()] = record
        elif kind is Queue.Unbind or kind is Exchange.Unbind:
            self.bindings.pop(self._binding(method).key(), None)
        elif kind is Queue.Delete:
            self.forget_queue(method.queue)  # type: ignore[attr-defined]
        elif kind is Exchange.Delete:
            self._forget_exchange(method.exchange)  # type: ignore[attr-defined]

    def _on_queue_declare(self, method: Queue.Declare, reply: Queue.DeclareOk) -> None:
        if method.passive:
            return
        self.queues[reply.queue] = QueueRecord(
            reply.queue, method.queue == "", method.durable, method.exclusive,
            method.auto_delete, method.arguments)

    @staticmethod
    def _binding(method: Any) -> BindingRecord:
        if isinstance(method, (Exchange.Bind, Exchange.Unbind)):
            return BindingRecord(True, method.destination, method.source, method.routing_key,
                                 method.arguments)
        return BindingRecord(False, method.queue, method.exchange, method.routing_key,
                             method.arguments)

    def forget_queue(self, name: str) -> None:
        self.queues.pop(name, None)
        for key, binding in list(self.bindings.items()):
            if not binding.to_exchange and binding.destination == name:
                del self.bindings[key]

    def _forget_exchange(self, name: str) -> None:
        self.exchanges.pop(name, None)
        for key, binding in list(self.bindings.items()):
            if binding.source == name or (binding.to_exchange and binding.destination == name):
                del self.bindings[key]

    def on_consumer_gone(self, queue: str, still_consumed: bool) -> None:
        """A consumer was cancelled: an auto-delete queue with no consumers left is gone."""
        record = self.queues.get(queue)
        if record is None or not record.auto_delete or still_consumed:
            return
        self.forget_queue(queue)

    def rename(self, old: str, new: str) -> None:
        """A server-named queue came back as `new`: move its record and bindings
        (the connection moves its consumers)."""
        record = self.queues.pop(old)
        record.name = new
        self.queues[new] = record
        for key, binding in list(self.bindings.items()):
            if not binding.to_exchange and binding.destination == old:
                del self.bindings[key]
                binding.destination = new
                self.bindings[binding.key()] = binding
