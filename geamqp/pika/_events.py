"""What the compat layer holds until the application's own greenlet dispatches it.

geamqp delivers in a dispatcher greenlet per channel; pika's BlockingConnection runs
callbacks only inside `process_data_events()` / `start_consuming()` / `consume()`, in
the caller's context. The compat layer's own callbacks registered on the geamqp objects
therefore only *record* an event here and wake the connection; the application's
callbacks run when it next asks for dispatch (see blocking_connection.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent

__all__ = ["CancelEvent", "ConsumerInfo", "Delivery", "ReturnEvent", "Timer", "check_callable",
           "check_str"]


def check_str(value: Any, name: str, *, optional: bool = False) -> None:
    """pika's rule: names, routing keys and secrets are strings; say which one is not."""
    if isinstance(value, str) or (optional and value is None):
        return
    kind = "a str or None" if optional else "a str"
    raise TypeError(f"{name} must be {kind}, not {type(value).__name__}: {value!r:.60}")


def check_callable(value: Any, name: str) -> None:
    if not callable(value):
        raise TypeError(f"{name} must be callable, not {type(value).__name__}")


class Delivery:
    """A basic.deliver received and not yet dispatched."""

    __slots__ = ("body", "method", "properties")

    def __init__(self, method: Any, properties: Any, body: bytes) -> None:
        self.method = method
        self.properties = properties
        self.body = body

    def as_tuple(self) -> tuple[Any, Any, bytes]:
        return self.method, self.properties, self.body


class CancelEvent:
    """The broker cancelled a consumer (basic.cancel), as a `frame.Method`."""

    __slots__ = ("frame",)

    def __init__(self, frame: Any) -> None:
        self.frame = frame

    @property
    def consumer_tag(self) -> str:
        return self.frame.method.consumer_tag  # type: ignore[no-any-return]


class ReturnEvent:
    """A basic.return for one `add_on_return_callback` callback."""

    __slots__ = ("body", "callback", "method", "properties")

    def __init__(self, callback: Callable[..., Any], method: Any, properties: Any,
                 body: bytes) -> None:
        self.callback = callback
        self.method = method
        self.properties = properties
        self.body = body


# Consumer states, as pika names them.
SETTING_UP, ACTIVE, TEARING_DOWN, CANCELLED_BY_BROKER, GONE = range(5)


class ConsumerInfo:
    """One consumer of a BlockingChannel: how to dispatch its deliveries.

    `sink` is set for the consumer of a `consume()` generator: its events go there
    instead of the channel's pending list.
    """

    __slots__ = ("auto_ack", "callback", "params", "sink", "state", "tag")

    def __init__(self, tag: str, auto_ack: bool, callback: Callable[..., Any] | None,
                 sink: Any = None, params: tuple[Any, ...] = ()) -> None:
        self.tag = tag
        self.auto_ack = auto_ack
        self.callback = callback
        self.sink = sink
        self.params = params
        self.state = SETTING_UP


_PENDING, _FIRED, _DONE = range(3)


class Timer:
    """The handle `call_later` returns; `remove_timeout(handle)` cancels it.

    Fired timers wait in the connection's ready list until dispatch; removing one
    then (or from inside its own callback, or after it ran) is safe.
    """

    __slots__ = ("_state", "callback", "greenlet")

    def __init__(self, callback: Callable[[], Any]) -> None:
        self.callback = callback
        self.greenlet: gevent.Greenlet | None = None
        self._state = _PENDING

    def fire(self) -> bool:
        """The delay has passed: True if it should be queued for dispatch."""
        if self._state != _PENDING:
            return False
        self._state = _FIRED
        return True

    def __call__(self) -> None:
        if self._state == _FIRED:
            self._state = _DONE
            self.callback()

    def cancel(self) -> None:
        if self._state == _PENDING and self.greenlet is not None:
            self.greenlet.kill(block=False)
        self._state = _DONE

    def __repr__(self) -> str:
        state = ("pending", "fired", "done")[self._state]
        return f"<Timer {state} {getattr(self.callback, '__qualname__', self.callback)}>"
