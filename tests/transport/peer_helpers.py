"""Helpers of the transport rung: callback recorders, bounded joins, round trips."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
from fakebroker import WAIT
from gevent.event import Event


class Signals:
    """Named callback calls, recorded in order; waits are event-driven and bounded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._changed = Event()

    def add(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        changed, self._changed = self._changed, Event()
        changed.set()

    def callback(self, name: str) -> Callable[..., None]:
        return lambda *args: self.add(name, *args)

    def count(self, name: str) -> int:
        return sum(1 for n, _ in self.calls if n == name)

    def args(self, name: str) -> list[tuple[Any, ...]]:
        return [a for n, a in self.calls if n == name]

    def wait(self, name: str, count: int = 1, timeout: float = WAIT) -> tuple[Any, ...]:
        """The arguments of the `count`-th call of `name`, waiting up to `timeout` s."""
        deadline = gevent.get_hub().loop.now() + timeout
        while True:
            changed = self._changed
            found = self.args(name)
            if len(found) >= count:
                return found[count - 1]
            left = deadline - gevent.get_hub().loop.now()
            if left <= 0 or not changed.wait(left):
                raise AssertionError(f"callback {name!r} called {len(found)} time(s), "
                                     f"expected {count} within {timeout} s; calls so far: "
                                     f"{[n for n, _ in self.calls]}")


def watch_connection(conn: Any) -> Signals:
    signals = Signals()
    conn.add_on_connection_lost_callback(signals.callback("lost"))
    conn.add_on_recovered_callback(signals.callback("recovered"))
    conn.add_on_recovery_failed_callback(signals.callback("recovery_failed"))
    conn.add_on_close_callback(signals.callback("closed"))
    conn.add_on_connection_blocked_callback(signals.callback("blocked"))
    conn.add_on_connection_unblocked_callback(signals.callback("unblocked"))
    return signals


FAST_RECOVERY: dict[str, Any] = {
    "recovery_delay_min": 0.0,
    "recovery_delay_max": 0.001,
    "recovery_wait_timeout": WAIT,
    "recovery_max_attempts": 20,
}


def round_trip(conn: Any, name: str = "probe") -> None:
    """The connection works: a new channel, a queue.declare answered with its own name,
    the channel closed again — all within WAIT seconds."""
    with gevent.Timeout(WAIT, AssertionError(f"round trip {name!r} did not finish in time")):
        ch = conn.channel()
        ok = ch.queue_declare(name)
        assert ok.queue == name, f"queue.declare({name!r}) was answered with {ok.queue!r}"
        ch.close()


def finished(greenlet: gevent.Greenlet, timeout: float = WAIT) -> Any:
    """Join `greenlet` (bounded); its value, or re-raise its exception."""
    greenlet.join(timeout)
    if not greenlet.ready():
        greenlet.kill(block=False)
        raise AssertionError(f"{greenlet!r} still running after {timeout} s")
    return greenlet.get()


def turns(n: int) -> None:
    """Let the hub run `n` turns."""
    for _ in range(n):
        gevent.sleep(0)


def _catching(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # the test asserts on it; the hub must not print it
        return exc


def spawn_catching(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> gevent.Greenlet:
    """A greenlet running `fn`; its value is the result, or the Exception it raised
    (so a call expected to fail does not count as a hub error)."""
    return gevent.spawn(_catching, fn, *args, **kwargs)


def outcome(greenlet: gevent.Greenlet, timeout: float = WAIT) -> Any:
    """The value of a `spawn_catching` greenlet (bounded join)."""
    return finished(greenlet, timeout)
