"""Where user code runs: the per-channel dispatcher greenlet, consumers, confirmations.

Rules:
- User callbacks never run in the reader greenlet or inside a hub callback:
  the reader appends work to a channel's `Dispatcher` and wakes it once per
  batch; the dispatcher runs callbacks in order, in its own greenlet, where
  they may block cooperatively (publish, ack, declare, sleep).
- A callback that raises is logged with its traceback and the dispatcher
  carries on: one bad message never takes the connection down.
- `concurrency=N` runs up to N callbacks of one consumer at once (ordering
  is then only per greenlet); `executor=` hands each callback to a thread pool.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event
from gevent.pool import Pool

from ._hub import cooperate, waiting_bridges
from .exceptions import AMQPError, NackError, UnroutableError
from .protocol.properties import BasicProperties
from .protocol.spec import Basic

if TYPE_CHECKING:
    from .channel import Channel

__all__ = ["Confirmation", "Consumer", "Dispatcher", "ReturnedMessage"]

log = logging.getLogger("geamqp.consumer")

_YIELD_EVERY = 64
OnMessage = Callable[["Channel", Any, BasicProperties, bytes], Any]


class Dispatcher:
    """One greenlet running queued callables in order; owned by a channel or connection.

    The queue has no bound of its own: for deliveries the bound is the broker's,
    the channel's prefetch count. With prefetch 0 the broker sends as fast as it
    can, so a slow callback lets the queue grow without limit: the dispatcher
    logs one warning when more than `WARN_PENDING` calls wait.
    """

    __slots__ = ("_greenlet", "_name", "_queue", "_stopped", "_wake", "warn_at")

    WARN_PENDING = 10_000

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._wake = Event()
        self._greenlet: gevent.Greenlet | None = None
        self._stopped = False
        self.warn_at = self.WARN_PENDING  # 0: never warn (e.g. a prefetch limit is set)

    def rename(self, name: str) -> None:
        self._name = name
        if self._greenlet is not None:
            self._greenlet.name = name

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._stopped:
            return
        queue = self._queue
        queue.append((fn, args))
        if len(queue) == self.warn_at:
            self._warn_backlog()
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)
            self._greenlet.name = self._name
        wake = self._wake
        if not wake.is_set():
            wake.set()

    def _warn_backlog(self) -> None:
        self.warn_at = 0
        log.warning("%s: %d calls wait for the callbacks; with prefetch_count 0 the broker "
                    "sends without limit — set basic_qos(prefetch_count=...) to bound memory",
                    self._name, len(self._queue))

    @property
    def pending(self) -> int:
        return len(self._queue)

    def discard(self, unwanted: Callable[[Callable[..., Any]], bool]) -> int:
        """Drop the queued calls whose function `unwanted(fn)` picks; how many."""
        queue = self._queue
        kept = [(fn, args) for fn, args in queue if not unwanted(fn)]
        dropped = len(queue) - len(kept)
        if dropped:
            queue.clear()
            queue.extend(kept)
        return dropped

    def _run(self) -> None:
        queue = self._queue
        popleft = queue.popleft
        wake = self._wake
        waiting = waiting_bridges()  # callbacks from other threads go first
        while True:
            wake.clear()
            done = 0
            while queue:
                done += 1
                if waiting or not done % _YIELD_EVERY:
                    cooperate(waiting)  # bound the latency other greenlets and threads see
                fn, args = popleft()
                try:
                    fn(*args)
                except gevent.GreenletExit:
                    raise
                except Exception:
                    log.exception("%s: callback %r raised; carrying on", self._name,
                                  getattr(fn, "__qualname__", fn))
            if self._stopped:
                return
            wake.wait()

    def stop(self, drain: bool = False, spare: Any = None) -> None:
        """Stop the greenlet: after running what is queued (drain) or now (killing it).

        The greenlet is not killed when it is `spare` (e.g. a callback that is itself
        closing the channel): it ends once that callback returns.
        """
        self._stopped = True
        greenlet = self._greenlet
        if greenlet is None or greenlet.dead:
            return
        if drain:
            self._wake.set()
            return
        self._queue.clear()
        if greenlet is not gevent.getcurrent() and greenlet is not spare:
            greenlet.kill(block=True, timeout=5)


class Consumer:
    """One basic.consume: its tag, callback and how the callback is run."""

    __slots__ = ("arguments", "auto_ack", "callback", "channel", "concurrency", "exclusive",
                 "executor", "live", "offset", "on_cancel", "orphaned", "pool", "queue",
                 "reconsume", "sink", "tag")

    def __init__(self, channel: Channel, tag: str, queue: str, callback: OnMessage | None,
                 auto_ack: bool, exclusive: bool, arguments: dict[str, Any] | None,
                 executor: Any = None, concurrency: int = 1, sink: Any = None,
                 live: Callable[[], bool] = lambda: True,
                 on_cancel: Callable[..., Any] | None = None, reconsume: bool = False) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.channel = channel
        self.tag = tag
        self.queue = queue
        self.callback = callback
        self.auto_ack = auto_ack
        self.exclusive = exclusive
        self.arguments = arguments
        self.executor = executor
        self.concurrency = concurrency
        self.pool = Pool(concurrency) if concurrency > 1 else None
        self.sink = sink  # a consume() generator's queue: deliveries go there, not to a callback
        self.live = live  # False while the channel must not run callbacks (closing, closed)
        self.orphaned = False  # its basic_consume() caller gave up: cancelled in the background
        self.on_cancel = on_cancel  # on_cancel(channel, consumer_tag): the consumer is gone
        self.reconsume = reconsume  # re-consume after a broker cancel (see _reconsume.py)
        # A stream consumer: the x-stream-offset of the last delivery handed to the
        # application; a restore resumes right after it (nothing replayed, nothing skipped).
        self.offset: int | None = None
        start = (arguments or {}).get("x-stream-offset")
        if isinstance(start, int) and not isinstance(start, bool) and start > 0:
            self.offset = start - 1  # the broker starts at the chunk holding it: skip the rest

    def consume_method(self) -> Basic.Consume:
        """The basic.consume that (re)creates this consumer on the broker; a stream
        consumer resumes after the last offset it handed to the application."""
        arguments = self.arguments
        if self.offset is not None:
            arguments = {**(arguments or {}), "x-stream-offset": self.offset + 1}
        return Basic.Consume(0, self.queue, self.tag, False, self.auto_ack, self.exclusive,
                             False, arguments)

    def note_offset(self, properties: BasicProperties) -> bool:
        """Remember a stream delivery's offset as handed to the application; False
        for one at or below the last offset handed over (a resumed stream replays
        the start of the chunk holding its offset): that one is not handed over."""
        headers = properties.headers
        if headers:
            offset = headers.get("x-stream-offset")
            if isinstance(offset, int) and not isinstance(offset, bool):
                if self.offset is not None and offset <= self.offset:
                    return False
                self.offset = offset
        return True

    def _replayed(self, method: Basic.Deliver, properties: BasicProperties) -> bool:
        """A stream delivery already handed to the application: settled here."""
        if self.note_offset(properties):
            return False
        if not self.auto_ack:
            self.channel.basic_ack(method.delivery_tag)  # credit for the stream consumer
        return True

    def run(self, method: Basic.Deliver, properties: BasicProperties, body: bytes) -> None:
        """Called in the dispatcher greenlet for each delivery."""
        if not self.live():
            # Closing, closed or suspended: the broker requeues what was not
            # acked, and an ack from here could not be sent anyway.
            return
        if self.executor is not None:
            if properties.headers and self._replayed(method, properties):
                return
            # concurrent.futures executors have submit(); gevent's ThreadPool has spawn().
            submit = getattr(self.executor, "submit", None) or self.executor.spawn
            submit(self._call_logged, method, properties, body)
        elif self.pool is not None:
            # Wait for a free slot first, then look again: the channel may have
            # closed meanwhile, and spawn() itself must not park (a greenlet it
            # created while waiting would outlive the close).
            self.pool.wait_available()
            if self.live():
                if properties.headers and self._replayed(method, properties):
                    return
                self.pool.spawn(self._call_logged, method, properties, body)
        else:
            if properties.headers and self._replayed(method, properties):
                return
            self.callback(self.channel, method, properties, body)  # type: ignore[misc]

    def _call_logged(self, method: Basic.Deliver, properties: BasicProperties,
                     body: bytes) -> None:
        try:
            self.callback(self.channel, method, properties, body)  # type: ignore[misc]
        except Exception:
            log.exception("consumer %s: callback raised on delivery %s; carrying on",
                          self.tag, method.delivery_tag)

    def stop(self) -> None:
        """The channel closed: kill the callbacks still running (they could not ack)."""
        if self.pool is not None:
            self.pool.kill(block=True, timeout=5)

    def discard_queued(self) -> None:
        """The link was lost: drop deliveries a `consume()` generator has not taken yet
        (manual-ack ones are redelivered by the broker); errors and ends stay."""
        sink = self.sink
        if sink is None:
            return
        kept = []
        while not sink.empty():
            item = sink.get_nowait()
            if not isinstance(item, tuple):
                kept.append(item)
        for item in kept:
            sink.put(item)

    def drain(self) -> None:
        """The consumer was cancelled: wait, in the dispatcher, for the callbacks
        already running to finish; deliveries received before the cancel still count."""
        if self.pool is not None:
            self.pool.join()


class ReturnedMessage:
    """A message the broker returned (basic.return) or nacked, as pika names it."""

    __slots__ = ("body", "method", "properties")

    def __init__(self, method: Any, properties: BasicProperties | None, body: bytes) -> None:
        self.method = method
        self.properties = properties
        self.body = body

    def __repr__(self) -> str:
        return f"ReturnedMessage(method={self.method!r}, body_size={len(self.body)})"


_PENDING, _ACKED, _FAILED = 0, 1, 2


class Confirmation:
    """The future outcome of one publish in confirm mode.

    Resolves exactly once: acked (`wait()` returns True), nacked (`NackError`),
    returned as unroutable (`UnroutableError`), or failed with the channel's or
    connection's closing exception.
    """

    __slots__ = ("_error", "_event", "_state", "body", "exchange", "mandatory", "properties",
                 "returned", "routing_key", "sent_at", "seqno")

    def __init__(self, seqno: int, exchange: str, routing_key: str, body: bytes,
                 properties: BasicProperties | None, mandatory: bool) -> None:
        self.seqno = seqno
        self.exchange = exchange
        self.routing_key = routing_key
        self.body = body
        self.properties = properties
        self.mandatory = mandatory
        self.returned: ReturnedMessage | None = None
        self.sent_at = 0.0  # monotonic time of the publish, when confirms are timed (metrics)
        self._state = _PENDING
        self._error: AMQPError | None = None
        self._event: Event | None = None

    def done(self) -> bool:
        return self._state != _PENDING

    def set_acked(self) -> None:
        if self.returned is not None:
            self.set_failed(UnroutableError([self.returned]))
            return
        if self._state == _PENDING:
            self._state = _ACKED
            if self._event is not None:
                self._event.set()

    def set_nacked(self) -> None:
        self.set_failed(NackError([ReturnedMessage(
            Basic.Publish(0, self.exchange, self.routing_key, self.mandatory),
            self.properties, self.body)]))

    def set_failed(self, error: AMQPError) -> None:
        if self._state == _PENDING:
            self._state = _FAILED
            self._error = error
            if self._event is not None:
                self._event.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block this greenlet until the broker decides; True when acked.

        Raises `NackError`, `UnroutableError` or the closing exception; returns
        False only if `timeout` expires first.
        """
        if self._state == _PENDING:
            if self._event is None:
                self._event = Event()
            if not self._event.wait(timeout):
                return False
        if self._error is not None:
            raise self._error
        return True

    def __repr__(self) -> str:
        state = ("pending", "acked", "failed")[self._state]
        return f"<Confirmation seqno={self.seqno} {state}>"
