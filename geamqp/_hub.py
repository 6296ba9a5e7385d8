"""The one door from other OS threads into the hub: a thread-safe callback queue.

`add_callback_threadsafe(fn)` appends to a deque (a single atomic operation
in CPython, so no lock) and pokes the hub with gevent's thread-safe loop
wake-up (`loop.async_()`); no pipe, no polling. In the hub a runner greenlet
takes callbacks FIFO and runs them, so a callback may block cooperatively
(ack, publish with confirms, declare).

A hub busy reading and dispatching at full speed polls its loop rarely
(gevent runs queued greenlet switches for up to the switch interval, 5 ms,
before it looks at I/O again), so the loop wake-up alone would leave a
callback waiting that long. The busy greenlets therefore yield with
`cooperate()`, which first wakes the runners of this hub that have callbacks
waiting: a callback waits at most one yield period of the busiest greenlet.

Every public Connection and Channel method goes through `threadsafe()`:
called in the hub's OS thread it runs directly; called from any other OS
thread it is handed over as a callback, runs in its own greenlet in the hub,
and only the calling thread blocks (on an *original* lock) until the result
or exception comes back to it.

Under `gevent.monkey.patch_all()` `threading.get_ident` names greenlets, so
the hub's OS thread is recognised with the *original* `_thread.get_ident`,
and "threads" that are really greenlets take the direct path.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import gevent
from gevent.hub import Hub, Waiter
from gevent.monkey import get_original

from .exceptions import AMQPError, ConnectionWrongStateError

__all__ = ["ForkedConnectionError", "HubBridge", "cooperate", "make_threadsafe",
           "os_thread_ident", "waiting_bridges"]

log = logging.getLogger("geamqp.hub")

os_thread_ident: Callable[[], int] = get_original("_thread", "get_ident")
_allocate_lock: Callable[[], Any] = get_original("_thread", "allocate_lock")

# Bumped in every forked child: a connection remembers the generation it was
# opened in, and refuses to be used from another one.
_fork_generation = [0]


def _after_fork_in_child() -> None:
    _fork_generation[0] += 1


os.register_at_fork(after_in_child=_after_fork_in_child)

# Per hub: the bridges that other threads have handed callbacks to since that
# hub's last cooperate(). A bridge is listed at most once (its `_listed` flag).
_waiting: weakref.WeakKeyDictionary[Hub, deque[HubBridge]] = weakref.WeakKeyDictionary()


def waiting_bridges() -> deque[HubBridge]:
    """This hub's list of bridges with thread callbacks waiting: a busy greenlet
    keeps it and calls `cooperate(waiting)` as soon as it is not empty."""
    return _waiting.setdefault(gevent.get_hub(), deque())


def cooperate(waiting: deque[HubBridge]) -> None:
    """Yield to the hub's other greenlets like `gevent.sleep(0)`; when callbacks
    from other threads are waiting (`waiting` is this hub's `waiting_bridges()`),
    their runners go first, ahead of every greenlet already queued to run (see
    module docs)."""
    parked: list[Waiter] = []
    while waiting:
        try:
            bridge = waiting.popleft()
        except IndexError:
            break
        bridge._listed = False  # before the wake: a callback added now is listed again
        waiter = bridge._unpark()
        if waiter is not None:
            parked.append(waiter)
    if not parked:
        gevent.sleep(0)
        return
    run_callback = gevent.get_hub().loop.run_callback
    for waiter in parked[1:]:
        run_callback(waiter.switch, None)
    resume = _Resume(gevent.getcurrent())
    run_callback(resume)  # we go on behind what is queued: a yield
    runner = parked[0].greenlet
    assert runner is not None
    try:
        runner.switch(None)  # as the hub would: the runner's Waiter.get() returns
    finally:
        resume.greenlet = None  # if thrown into meanwhile (kill, Timeout): no stale switch


class _Resume:
    """Switches back into a greenlet from the hub once, unless disarmed first."""

    __slots__ = ("greenlet",)

    def __init__(self, greenlet: Any) -> None:
        self.greenlet: Any = greenlet

    def __call__(self) -> None:
        greenlet, self.greenlet = self.greenlet, None
        if greenlet is not None:
            greenlet.switch()


class ForkedConnectionError(ConnectionWrongStateError):
    """A connection inherited across os.fork(): it belongs to the parent process.
    Open a new connection in the child (e.g. lazily, after the fork)."""


class HubBridge:
    """Callbacks from any OS thread, run FIFO in a greenlet of the hub's thread."""

    def __init__(self, owner: Any) -> None:
        self._owner = owner
        self._hub = gevent.get_hub()
        self.thread_ident = os_thread_ident()
        self.fork_generation = _fork_generation[0]
        self.pid = os.getpid()
        self._queue: deque[Callable[[], Any]] = deque()
        self._waiter: Waiter | None = None  # the parked runner's, while it is parked
        self._listed = False  # in this hub's `_waiting` deque
        self._waiting = waiting_bridges()
        self._closed: AMQPError | None = None
        self._exited = False  # the runner took its last callbacks
        self._async = self._hub.loop.async_()
        self._async.start(self._on_async)
        self._async.ref = False
        self._runner: gevent.Greenlet | None = None  # started by the first callback
        # called with the queue's depth once per batch (metrics), when set
        self.report_depth: Callable[[int], None] | None = None

    def check_fork(self) -> None:
        if self.fork_generation != _fork_generation[0]:
            raise ForkedConnectionError(
                f"this connection was opened in process {self.pid} and inherited by "
                f"process {os.getpid()} through fork(); open a new connection here")

    def in_hub_thread(self) -> bool:
        return os_thread_ident() == self.thread_ident

    def add_callback_threadsafe(self, callback: Callable[[], Any]) -> None:
        if not callable(callback):
            raise TypeError(f"callback must be callable, not {type(callback).__name__}")
        self.check_fork()
        if self._closed is not None:
            raise self._refusal()
        self._queue.append(callback)
        if self._exited:
            # The runner has finished its last drain or is in it: whichever of
            # us removes the callback first owns it, so it runs or is refused.
            try:
                self._queue.remove(callback)
            except ValueError:
                return
            raise self._refusal()
        if os_thread_ident() == self.thread_ident:
            self._wake_runner()
        else:
            if not self._listed:  # for the next cooperate() of a busy hub
                self._listed = True
                self._waiting.append(self)
            self._async.send()  # for a hub that is idle or polling

    def _refusal(self) -> ConnectionWrongStateError:
        return ConnectionWrongStateError(
            f"connection is closed ({self._closed!r}); callback not accepted")

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn` in a greenlet of the hub thread; block this OS thread for the result."""
        done = _allocate_lock()
        done.acquire()
        outcome: list[Any] = [None, None]

        def run() -> None:
            try:
                outcome[0] = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the calling thread, not lost
                outcome[1] = exc
            finally:
                done.release()

        # Each marshalled call gets its own greenlet so that one caller waiting
        # for a confirm never holds up another thread's call.
        self.add_callback_threadsafe(lambda: gevent.spawn(run))
        done.acquire()
        if outcome[1] is not None:
            raise outcome[1]
        return outcome[0]

    def _on_async(self) -> None:
        # In the hub, inside the loop's callback: only wake (or start) the runner.
        self._wake_runner()

    def _wake_runner(self) -> None:
        waiter = self._unpark()
        if waiter is None:
            return
        if gevent.getcurrent() is self._hub:
            waiter.switch(None)  # straight in, not behind every queued greenlet switch
        else:
            self._hub.loop.run_callback(waiter.switch, None)

    def _unpark(self) -> Waiter | None:
        """Start the runner if there is none yet; if it is parked, the Waiter to
        switch it in with (no longer parked: nobody else switches it)."""
        if self._runner is None:
            # Most connections never see a thread: no parked greenlet until one does.
            self._runner = gevent.spawn(self._run)
            self._runner.name = "geamqp-hub-callbacks"
            return None
        waiter = self._waiter
        self._waiter = None
        return waiter  # None while it runs: it drains until the queue is empty

    def _run(self) -> None:
        while True:
            self._drain()
            if self._closed is not None:
                self._exited = True
                self._drain()
                self._async.close()
                if self._listed:  # nothing left to wake: do not keep the connection alive
                    with contextlib.suppress(ValueError):
                        self._waiting.remove(self)
                return
            # No yield between the drain's last look at the queue and parking:
            # whoever appends after it wakes the waiter set here.
            waiter = Waiter()
            self._waiter = waiter
            waiter.get()

    def _drain(self) -> None:
        queue = self._queue
        if queue and self.report_depth is not None:
            self.report_depth(len(queue))
        while queue:
            try:
                callback = queue.popleft()
            except IndexError:  # a refusing caller took it back
                return
            try:
                callback()
            except gevent.GreenletExit:
                raise
            except Exception:
                log.exception("thread-safe callback %r raised", callback)

    def close(self, error: AMQPError) -> None:
        """Refuse new callbacks; those already accepted still run, then the runner ends."""
        if self._closed is None:
            self._closed = error
            self._wake_runner()


_F = TypeVar("_F", bound=Callable[..., Any])


def threadsafe(method: _F) -> _F:
    """Marshal calls from foreign OS threads into the hub thread (see module docs).
    The wrapped method's object keeps its connection's HubBridge as `_bridge`."""
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def generator_wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            bridge: HubBridge = self._bridge
            bridge.check_fork()
            if bridge.in_hub_thread():
                return method(self, *args, **kwargs)
            return _marshalled_iter(bridge, method(self, *args, **kwargs))

        return generator_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        bridge: HubBridge = self._bridge
        if bridge.fork_generation != _fork_generation[0]:
            bridge.check_fork()
        if os_thread_ident() == bridge.thread_ident:
            return method(self, *args, **kwargs)
        return bridge.call(method, self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _marshalled_iter(bridge: HubBridge, generator: Iterator[Any]) -> Iterator[Any]:
    """Step a hub-side generator from a foreign thread, one marshalled next() at a time."""
    try:
        while True:
            try:
                item = bridge.call(next, generator)
            except StopIteration:
                return
            yield item
    finally:
        close = getattr(generator, "close", None)
        if close is not None:
            bridge.call(close)


def make_threadsafe(cls: type, skip: tuple[str, ...] = ()) -> None:
    """Wrap every public method of `cls` with `threadsafe` (properties stay as they are)."""
    for name, value in list(vars(cls).items()):
        if name.startswith("_") or name in skip or not inspect.isfunction(value):
            continue
        setattr(cls, name, threadsafe(value))
