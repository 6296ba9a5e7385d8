"""`ConsumerFleet`: thousands of consumers spread over C connections x K channels.

High-fan-out processes hold one queue per tenant, device or session. One
channel per consumer costs the broker a process per channel; one channel for
all of them serialises every callback behind one dispatcher greenlet and
one prefetch window. A fleet opens `connections` connections with
`channels_per_connection` channels each (lazily, as consumers arrive) and
puts each new consumer on the channel with the fewest consumers, so load and
prefetch windows are shared evenly and no consumer starves behind another.

Adding thousands of consumers is fastest from a bounded pool of greenlets
(a few per connection, e.g. ``gevent.pool.Pool(4 * connections)``): each
`basic_consume` waits for its consume-ok, and a greenlet per consumer would keep
thousands of parked stacks in memory while they wait.

`basic_qos(prefetch_count)` is per consumer (RabbitMQ's per-consumer QoS),
so a consumer that stops acking holds at most `prefetch_count` messages in
this process, whatever the others do.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Sequence
from typing import Any

import gevent
from gevent.lock import Semaphore

from .channel import Channel
from .connection import Connection, ParamsLike, connect
from .consumer import OnMessage
from .exceptions import AMQPError

__all__ = ["ConsumerFleet"]


class _StartAt:
    """Host order of a fleet's connection i: its first connect starts at host i mod n,
    so the fleet spreads over a cluster's nodes evenly; reconnects shuffle."""

    __slots__ = ("first", "index")

    def __init__(self, index: int) -> None:
        self.index = index
        self.first = True

    def __call__(self, candidates: list[Any]) -> list[Any]:
        if self.first:
            self.first = False
            start = self.index % len(candidates)
            return candidates[start:] + candidates[:start]
        random.shuffle(candidates)
        return candidates


class ConsumerFleet:
    """Many consumers, spread evenly over a bounded set of connections and channels."""

    def __init__(self, parameters: ParamsLike | Sequence[ParamsLike] | None = None, *,
                 connections: int = 20, channels_per_connection: int = 25,
                 prefetch_count: int = 10, name: str = "consumer-fleet") -> None:
        if connections < 1 or channels_per_connection < 1:
            raise ValueError("connections and channels_per_connection must be at least 1")
        self._parameters = parameters
        self._name = name
        self.prefetch_count = prefetch_count
        self.max_connections = connections
        self.channels_per_connection = channels_per_connection
        self.connections: list[Connection] = []
        self.channels: list[Channel] = []
        self._load: dict[Channel, int] = {}
        # (load, tie-breaker, channel), lazily pruned: an entry whose load is no longer
        # the channel's, or whose channel closed, is dropped when it reaches the top.
        self._by_load: list[tuple[int, int, Channel]] = []
        self._tie = itertools.count()
        self._owner: dict[str, Channel] = {}  # consumer tag -> its channel
        self._grow = Semaphore()
        self._closed = False

    def __enter__(self) -> ConsumerFleet:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def consumer_count(self) -> int:
        return len(self._owner)

    def _capacity(self) -> int:
        return self.max_connections * self.channels_per_connection

    def _open_batch(self) -> Channel:
        """Open the rest of the current connection's channels at once (a new
        connection when the last one is full): their open and qos round trips are
        pipelined instead of paid one after another. Returns one of them."""
        conn_index = len(self.channels) // self.channels_per_connection
        if conn_index == len(self.connections):
            self.connections.append(connect(self._parameters,
                                             name=f"{self._name}-{conn_index}",
                                             host_selector=_StartAt(conn_index)))
        conn = self.connections[conn_index]
        missing = (conn_index + 1) * self.channels_per_connection - len(self.channels)

        def open_one() -> Channel | AMQPError:
            try:
                channel = conn.channel()
                channel.basic_qos(prefetch_count=self.prefetch_count)  # per consumer
            except AMQPError as exc:  # reported below, not printed by the hub
                return exc
            return channel

        openers = [gevent.spawn(open_one) for _ in range(missing)]
        gevent.joinall(openers)
        results = [g.value for g in openers]
        opened = [r for r in results if isinstance(r, Channel)]
        for channel in opened:
            self.channels.append(channel)
            self._load[channel] = 0
            self._reindex(channel)
        if not opened:
            raise next(r for r in results if isinstance(r, AMQPError))
        return opened[0]

    def _reindex(self, channel: Channel) -> None:
        """Record the channel's new load (O(log n); the old entry goes stale)."""
        load = self._load.get(channel)
        if load is None:
            return
        heap = self._by_load
        if len(heap) > 4 * len(self._load) + 64:  # too many stale entries: rebuild
            heap[:] = [(n, next(self._tie), ch) for ch, n in self._load.items()]
            heapq.heapify(heap)
        else:
            heapq.heappush(heap, (load, next(self._tie), channel))

    def _least_loaded(self) -> Channel | None:
        heap = self._by_load
        while heap:
            load, _, channel = heap[0]
            if channel.is_open and self._load.get(channel) == load:
                return channel
            heapq.heappop(heap)
        return None

    def _pick(self) -> Channel:
        # Picking is O(log channels), not a scan: with 10,000 consumers a scan of
        # 500 channels per consumer was most of the time spent adding them.
        with self._grow:  # greenlets adding consumers at once open channels one by one
            lightest = self._least_loaded()
            if len(self.channels) < self._capacity() and (
                    lightest is None or self._load[lightest] > 0):
                return self._open_batch()
            if lightest is None:
                raise RuntimeError("every channel of the fleet is closed")
            return lightest

    def basic_consume(self, queue: str, on_message_callback: OnMessage, auto_ack: bool = False,
                      **kwargs: Any) -> str:
        """Start a consumer on the least-loaded channel; returns its consumer tag."""
        if self._closed:
            raise RuntimeError("consumer fleet is closed")
        channel = self._pick()
        self._load[channel] += 1
        self._reindex(channel)
        try:
            tag = channel.basic_consume(queue, on_message_callback, auto_ack, **kwargs)
        except BaseException:
            self._load[channel] -= 1
            self._reindex(channel)
            raise
        self._owner[tag] = channel
        return tag

    def basic_cancel(self, consumer_tag: str) -> None:
        """Cancel one consumer; everything held for it is released."""
        channel = self._owner.pop(consumer_tag, None)
        if channel is None:
            return
        self._load[channel] -= 1
        self._reindex(channel)
        if channel.is_open:
            channel.basic_cancel(consumer_tag)

    def close(self) -> None:
        """Close every connection of the fleet (and so every consumer)."""
        self._closed = True
        for connection in self.connections:
            connection.close()
        self._owner.clear()
        self._load.clear()
        self._by_load.clear()
