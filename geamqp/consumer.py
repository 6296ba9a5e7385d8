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
import weakref
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
    """Queued callables of one channel (or connection), run in order, one at a time.

    A dispatcher has no greenlet of its own while it has nothing to run: when a
    call is queued on an idle dispatcher, the dispatcher joins its hub's ready
    list and one of a few shared runner greenlets (`_Runner`) runs its queue to
    the end, then the next ready dispatcher's. A parked greenlet keeps its stack
    slice on the heap (~8 KiB), so 10,000 channels no longer keep 10,000 of them;
    and one runner wakes once for every dispatcher that became ready in a hub
    turn instead of one wake-up and two switches per dispatcher. Only one runner
    works on a dispatcher at a time, so its calls keep their order; a callback
    that blocks keeps its runner (the others go on with the ready list).

    The queue has no bound of its own: for deliveries the bound is the broker's,
    the channel's prefetch count. With prefetch 0 the broker sends as fast as it
    can, so a slow callback lets the queue grow without limit: the dispatcher
    logs one warning when more than `WARN_PENDING` calls wait.
    """

    __slots__ = ("_busy", "_greenlet", "_name", "_queue", "_scheduler", "_stopped", "warn_at")

    WARN_PENDING = 10_000

    def __init__(self, name: str) -> None:
        self._name = name
        # made on demand and dropped when idle: an empty deque is ~0.7 KiB, times
        # 10,000 channels
        # function, arguments, function, arguments...: no (fn, args) tuple per call,
        # one GC-tracked object less for every delivery waiting here
        self._queue: deque[Any] | None = None
        self._scheduler = _scheduler()
        self._busy = False  # in the ready list, or a runner is working on it
        self._greenlet: _Runner | None = None  # the runner working on it now
        self._stopped = False
        self.warn_at = self.WARN_PENDING  # 0: never warn (e.g. a prefetch limit is set)

    def rename(self, name: str) -> None:
        self._name = name

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._stopped:
            return
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        queue.append(fn)
        queue.append(args)
        if len(queue) == 2 * self.warn_at:
            self._warn_backlog()
        if not self._busy:
            self._busy = True
            scheduler = self._scheduler
            scheduler.ready.append(self)
            if not scheduler.on_duty:
                scheduler.wake_one()

    def _warn_backlog(self) -> None:
        self.warn_at = 0
        log.warning("%s: %d calls wait for the callbacks; with prefetch_count 0 the broker "
                    "sends without limit — set basic_qos(prefetch_count=...) to bound memory",
                    self._name, self.pending)

    @property
    def pending(self) -> int:
        queue = self._queue
        return len(queue) // 2 if queue is not None else 0

    def discard(self, unwanted: Callable[[Callable[..., Any]], bool]) -> int:
        """Drop the queued calls whose function `unwanted(fn)` picks; how many."""
        queue = self._queue
        if not queue:
            return 0
        calls = list(queue)
        kept = [item for fn, args in zip(calls[::2], calls[1::2], strict=True)
                if not unwanted(fn) for item in (fn, args)]
        dropped = (len(calls) - len(kept)) // 2
        if dropped:
            queue.clear()
            queue.extend(kept)
        return dropped

    def stop(self, drain: bool = False, spare: Any = None) -> None:
        """Stop: after running what is queued (drain) or now (killing the runner
        that is inside one of its callbacks).

        That runner is not killed when it is `spare` (e.g. a callback that is itself
        closing the channel): the dispatcher ends once that callback returns.
        """
        self._stopped = True
        if drain:
            return  # a queued dispatcher is in the ready list: its runner drains it
        if self._queue is not None:
            self._queue.clear()
        runner = self._greenlet
        if runner is not None and runner is not gevent.getcurrent() and runner is not spare:
            runner.kill(block=True, timeout=5)


class _Scheduler:
    """Per hub: the dispatchers with calls waiting, and the runners that run them.

    `on_duty` counts the runners that will look at `ready` again without waiting
    for anything (woken, or working through it); a runner that blocks inside a
    callback goes off duty (`_Runner.switch_out`), and when none is left on duty
    while dispatchers are ready, another runner is woken or started.
    """

    __slots__ = ("idle", "on_duty", "ready", "run_callback", "waiting")

    MAX_IDLE = 8  # parked runners kept per hub; each holds ~8 KiB of stack
    IDLE_SECONDS = 0.5  # a parked runner ends after this long without work

    def __init__(self) -> None:
        self.ready: deque[Dispatcher] = deque()
        self.idle: list[_Runner] = []
        self.on_duty = 0
        self.run_callback = gevent.get_hub().loop.run_callback
        self.waiting = waiting_bridges()  # callbacks from other threads go first

    def wake_one(self) -> None:
        runner = self.idle.pop() if self.idle else None
        self.on_duty += 1
        if runner is None:
            runner = _Runner(self)
            runner.duty = True
            runner.start()
        else:
            runner.duty = True
            self.run_callback(runner.switch, None)


_EXPIRED = object()


class _Runner(gevent.Greenlet):  # type: ignore[misc]
    """Runs ready dispatchers' queues; parks for a while when there are none."""

    def __init__(self, scheduler: _Scheduler) -> None:
        super().__init__()
        self.name = "geamqp-dispatcher"
        self.scheduler = scheduler
        self.duty = False
        self.yielding = False  # in cooperate(): stays on duty
        self._timer: Any = None
        self._parked_at = 0.0

    def switch_out(self) -> None:
        """gevent calls this when we switch to the hub: we wait inside a callback
        (or yield): let another runner take the ready list meanwhile."""
        if self.duty and not self.yielding:
            self.duty = False
            scheduler = self.scheduler
            scheduler.on_duty -= 1
            if scheduler.ready and not scheduler.on_duty:
                scheduler.wake_one()

    def _run(self) -> None:
        scheduler = self.scheduler
        try:
            while True:
                self._serve(scheduler)
                self.duty = False
                scheduler.on_duty -= 1
                if len(scheduler.idle) >= scheduler.MAX_IDLE or not self._park(scheduler):
                    return
        finally:
            if self.duty:  # killed or failed while on duty: hand the ready list on
                self.duty = False
                scheduler.on_duty -= 1
                if scheduler.ready and not scheduler.on_duty:
                    scheduler.wake_one()
            if self in scheduler.idle:
                scheduler.idle.remove(self)
            if self._timer is not None:
                self._timer.close()

    def _serve(self, scheduler: _Scheduler) -> None:
        ready = scheduler.ready
        waiting = scheduler.waiting
        done = 0
        while ready:
            dispatcher = ready.popleft()
            queue = dispatcher._queue
            if queue is None:  # cannot be: made before it was ready
                dispatcher._busy = False
                continue
            popleft = queue.popleft
            dispatcher._greenlet = self
            try:
                while queue:
                    done += 1
                    if waiting or not done % _YIELD_EVERY:
                        # bound the latency others see; back within this hub turn,
                        # so still on duty (no other runner needed meanwhile)
                        self.yielding = True
                        try:
                            cooperate(waiting)
                        finally:
                            self.yielding = False
                    fn = popleft()
                    args = popleft()
                    try:
                        fn(*args)
                    except gevent.GreenletExit:
                        raise
                    except Exception:
                        log.exception("%s: callback %r raised; carrying on", dispatcher._name,
                                      getattr(fn, "__qualname__", fn))
            finally:
                # No switch between the empty queue and this: a call queued from now
                # on makes the dispatcher ready again.
                dispatcher._greenlet = None
                dispatcher._busy = False
                if not queue:
                    dispatcher._queue = None
            if not self.duty:  # it blocked meanwhile: back on duty
                self.duty = True
                scheduler.on_duty += 1

    def _park(self, scheduler: _Scheduler) -> bool:
        """Wait in the idle list until woken (True) or IDLE_SECONDS pass (False).

        One repeating timer per runner, started once: parking only notes the time
        (starting and stopping a timer on every park cost ~0.5 µs per wake-up)."""
        scheduler.idle.append(self)
        hub = self.parent
        self._parked_at = hub.loop.now()
        if self._timer is None:
            self._timer = hub.loop.timer(scheduler.IDLE_SECONDS, scheduler.IDLE_SECONDS)
            self._timer.start(self._check_idle)
        return hub.switch() is not _EXPIRED

    def _check_idle(self) -> None:
        """In the hub, every IDLE_SECONDS: end this runner if it has been parked
        that long. Out of the idle list first, so no wake can claim it after."""
        idle = self.scheduler.idle
        if self in idle and self.parent.loop.now() - self._parked_at >= self.scheduler.IDLE_SECONDS:
            idle.remove(self)
            self.switch(_EXPIRED)


def _scheduler() -> _Scheduler:
    hub = gevent.get_hub()
    scheduler = _schedulers.get(hub)
    if scheduler is None:
        scheduler = _schedulers[hub] = _Scheduler()
    return scheduler


_schedulers: weakref.WeakKeyDictionary[Any, _Scheduler] = weakref.WeakKeyDictionary()


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
