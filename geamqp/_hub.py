"""The one door from other OS threads into the hub: a thread-safe callback queue.

`add_callback_threadsafe(fn)` appends to a deque (a single atomic operation
in CPython, so no lock) and pokes the hub with gevent's thread-safe loop
wake-up (`loop.async_()`); no pipe, no polling. In the hub a runner greenlet
takes callbacks FIFO and runs them, so a callback may block cooperatively
(ack, publish with confirms, declare).

Under `gevent.monkey.patch_all()` `threading.get_ident` names greenlets, so
the hub's OS thread is recognised with the *original* `_thread.get_ident`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event
from gevent.monkey import get_original

from .exceptions import AMQPError, ConnectionWrongStateError

__all__ = ["HubBridge", "os_thread_ident"]

log = logging.getLogger("geamqp.hub")

os_thread_ident: Callable[[], int] = get_original("_thread", "get_ident")


class HubBridge:
    """Callbacks from any OS thread, run FIFO in a greenlet of the hub's thread."""

    def __init__(self, owner: Any) -> None:
        self._owner = owner
        self._hub = gevent.get_hub()
        self.thread_ident = os_thread_ident()
        self._queue: deque[Callable[[], Any]] = deque()
        self._wake = Event()
        self._closed: AMQPError | None = None
        self._async = self._hub.loop.async_()
        self._async.start(self._on_async)
        self._async.ref = False
        self._runner = gevent.spawn(self._run)
        self._runner.name = "geamqp-hub-callbacks"

    def in_hub_thread(self) -> bool:
        return os_thread_ident() == self.thread_ident

    def check_thread(self) -> None:
        if os_thread_ident() != self.thread_ident:
            raise AMQPError("this connection belongs to another OS thread; hand work to it "
                            "with connection.add_callback_threadsafe()")

    def add_callback_threadsafe(self, callback: Callable[[], Any]) -> None:
        if self._closed is not None:
            raise ConnectionWrongStateError(
                f"connection is closed ({self._closed!r}); callback not accepted")
        if not callable(callback):
            raise TypeError(f"callback must be callable, not {type(callback).__name__}")
        self._queue.append(callback)
        if os_thread_ident() == self.thread_ident:
            self._wake.set()
        else:
            self._async.send()

    def _on_async(self) -> None:
        # In the hub, inside the loop's callback: only wake the runner.
        self._wake.set()

    def _run(self) -> None:
        queue = self._queue
        while True:
            self._wake.clear()
            while queue:
                callback = queue.popleft()
                try:
                    callback()
                except gevent.GreenletExit:
                    raise
                except Exception:
                    log.exception("thread-safe callback %r raised", callback)
            if self._closed is not None:
                self._async.close()
                return
            self._wake.wait()

    def close(self, error: AMQPError) -> None:
        """Refuse new callbacks; those already accepted still run, then the runner ends."""
        if self._closed is None:
            self._closed = error
            self._wake.set()
