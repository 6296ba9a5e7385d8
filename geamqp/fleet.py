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

No consumer is lost silently. A channel the broker closes with a retriable
code (a 406 delivery-ack timeout...) is reopened by channel recovery with its
consumers (they count as *moving* meanwhile); a channel that closes for good
(a close that no retry cures, its connection gone) has its consumers moved to
live channels — reopening channels or connections as needed — with the same
tag, callback and arguments, `MOVE_ATTEMPTS` times with back-off. A consumer
that cannot be moved, or that the broker ended for good (its queue deleted:
see ``on_cancel``), is *failed*: kept in `stats()` and `failed_consumers()`
and reported to every ``add_on_consumer_failed_callback`` callback.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import gevent
from gevent.lock import Semaphore

from .channel import Channel
from .connection import Connection, ParamsLike, connect
from .consumer import OnMessage
from .exceptions import AMQPError

__all__ = ["MOVE_ATTEMPTS", "ConsumerFleet"]

log = logging.getLogger("geamqp.fleet")

MOVE_ATTEMPTS = 5
MOVE_DELAY_MIN, MOVE_DELAY_MAX = 0.2, 5.0


class _Spec:
    """What re-creates one consumer elsewhere."""

    __slots__ = ("auto_ack", "callback", "kwargs", "moving", "queue")

    def __init__(self, queue: str, callback: OnMessage, auto_ack: bool,
                 kwargs: dict[str, Any]) -> None:
        self.queue = queue
        self.callback = callback
        self.auto_ack = auto_ack
        self.kwargs = kwargs
        self.moving = False


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
        self._specs: dict[str, _Spec] = {}
        self._failed: dict[str, tuple[str, BaseException | None]] = {}  # tag -> (queue, why)
        self._failed_callbacks: list[Callable[..., Any]] = []
        self._movers: set[gevent.Greenlet] = set()
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

    def _connection_with_room(self) -> tuple[Connection, int]:
        """The first connection with fewer than channels_per_connection channels (a
        closed one replaced, a new one when all are full) and how many it lacks."""
        for index, conn in enumerate(self.connections):
            if conn.is_closed:
                conn = self.connections[index] = self._connect(index)
            held = sum(1 for ch in self.channels if ch.connection is conn)
            if held < self.channels_per_connection:
                return conn, self.channels_per_connection - held
        conn = self._connect(len(self.connections))
        self.connections.append(conn)
        return conn, self.channels_per_connection

    def _connect(self, index: int) -> Connection:
        return connect(self._parameters, name=f"{self._name}-{index}",
                       host_selector=_StartAt(index))

    def _open_batch(self) -> Channel:
        """Open the rest of the current connection's channels at once (a new
        connection when the last one is full): their open and qos round trips are
        pipelined instead of paid one after another. Returns one of them."""
        conn, missing = self._connection_with_room()

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
            channel.add_on_close_callback(self._channel_closed)
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
        spec = _Spec(queue, on_message_callback, auto_ack, kwargs)
        tag = self._consume_on_lightest(spec, kwargs.get("consumer_tag"))
        self._specs[tag] = spec
        return tag

    def _consume_on_lightest(self, spec: _Spec, tag: str | None) -> str:
        channel = self._pick()
        self._load[channel] += 1
        self._reindex(channel)
        kwargs = {**spec.kwargs, "consumer_tag": tag,
                  "on_cancel": self._cancelled_for_good(spec.kwargs.get("on_cancel"))}
        try:
            tag = channel.basic_consume(spec.queue, spec.callback, spec.auto_ack, **kwargs)
        except BaseException:
            if channel in self._load:
                self._load[channel] -= 1
                self._reindex(channel)
            raise
        self._owner[tag] = channel
        return tag

    # ------------------------------------------------------------------ never lost silently

    def add_on_consumer_failed_callback(
            self, callback: Callable[[str, str, BaseException | None], Any]) -> None:
        """`callback(consumer_tag, queue, error)` when a consumer is gone for good: the
        broker ended it (queue deleted, not re-consumed) or it could not be moved off a
        closed channel. It runs in a fleet greenlet."""
        self._failed_callbacks.append(callback)

    def stats(self) -> dict[str, int]:
        """``live`` (consuming on an open channel), ``moving`` (its channel is being
        recovered, or it is being moved to another), ``failed`` (see
        `failed_consumers`), and the channels ``open`` / ``recovering``."""
        live = moving = 0
        for tag, channel in self._owner.items():
            spec = self._specs.get(tag)
            if (spec is not None and spec.moving) or not channel.is_open:
                moving += 1
            else:
                live += 1
        moving += sum(1 for tag, spec in self._specs.items()
                      if spec.moving and tag not in self._owner)
        open_ = sum(1 for ch in self.channels if ch.is_open)
        return {"live": live, "moving": moving, "failed": len(self._failed),
                "channels_open": open_, "channels_recovering": len(self.channels) - open_}

    def failed_consumers(self) -> dict[str, tuple[str, BaseException | None]]:
        """consumer tag -> (queue, why) of every consumer that failed."""
        return dict(self._failed)

    def _fail(self, tag: str, queue: str, error: BaseException | None) -> None:
        self._owner.pop(tag, None)
        self._specs.pop(tag, None)
        self._failed[tag] = (queue, error)
        log.error("fleet %s: consumer %s of queue %r failed: %s", self._name, tag, queue, error)
        for callback in self._failed_callbacks:
            try:
                callback(tag, queue, error)
            except Exception:
                log.exception("fleet %s: consumer-failed callback raised", self._name)

    def _cancelled_for_good(self, user_on_cancel: Callable[..., Any] | None
                            ) -> Callable[[Channel, str], None]:
        def on_cancel(channel: Channel, tag: str) -> None:
            spec = self._specs.get(tag)
            if self._owner.get(tag) is channel and spec is not None:
                self._release(channel)
                self._fail(tag, spec.queue, None)
            if user_on_cancel is not None:
                user_on_cancel(channel, tag)
        return on_cancel

    def _release(self, channel: Channel) -> None:
        if channel in self._load:
            self._load[channel] -= 1
            self._reindex(channel)

    def _channel_closed(self, channel: Channel, error: BaseException) -> None:
        """A channel closed for good: forget it, move its consumers elsewhere."""
        self._load.pop(channel, None)
        if channel in self.channels:
            self.channels.remove(channel)
        if self._closed:
            return
        tags = [tag for tag, owner in self._owner.items() if owner is channel]
        for tag in tags:
            spec = self._specs.get(tag)
            if spec is None:
                continue
            spec.moving = True
            del self._owner[tag]
            mover = gevent.spawn(self._move, tag, spec, error)
            mover.name = f"geamqp-fleet-move-{tag}"
            self._movers.add(mover)
            mover.link(self._movers.discard)
        if tags:
            log.warning("fleet %s: channel %s closed (%s); moving its %d consumers",
                        self._name, channel.channel_number, error, len(tags))

    def _move(self, tag: str, spec: _Spec, error: BaseException) -> None:
        why: BaseException | None = error
        for attempt in range(MOVE_ATTEMPTS):
            if self._closed or self._specs.get(tag) is not spec:
                return  # the fleet closed, or the application cancelled it
            try:
                self._consume_on_lightest(spec, tag)
            except (AMQPError, RuntimeError) as exc:
                why = exc
                gevent.sleep(random.uniform(0, min(MOVE_DELAY_MAX, MOVE_DELAY_MIN * 2 ** attempt)))
                continue
            spec.moving = False
            return
        spec.moving = False
        self._fail(tag, spec.queue, why)

    def basic_cancel(self, consumer_tag: str) -> None:
        """Cancel one consumer; everything held for it is released."""
        self._specs.pop(consumer_tag, None)
        self._failed.pop(consumer_tag, None)
        channel = self._owner.pop(consumer_tag, None)
        if channel is None:
            return
        self._release(channel)
        if channel.is_open:
            channel.basic_cancel(consumer_tag)

    def close(self) -> None:
        """Close every connection of the fleet (and so every consumer)."""
        self._closed = True
        movers, self._movers = self._movers, set()
        for mover in movers:
            mover.kill(block=False)
        for connection in self.connections:
            connection.close()
        self._owner.clear()
        self._load.clear()
        self._by_load.clear()
