"""Calls from other OS threads, for the compat classes (built on the public API only).

pika's BlockingConnection may only be used from the thread that created it (except
`add_callback_threadsafe`). geamqp's objects may be used from any thread, and so are
these: a public method called from a thread other than the one whose hub owns the
connection is run in that hub, in a greenlet of its own, through the connection's
public `add_callback_threadsafe`; only the calling thread blocks (on an *original*,
unpatched lock) until its result or exception comes back. Callbacks dispatched by such
a call (`process_data_events` from a foreign thread) therefore run in the hub's thread.

Under `gevent.monkey.patch_all()` `threading.get_ident` names greenlets, so the owner
thread is recognised with the original `_thread.get_ident`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import gevent
from gevent.monkey import get_original

__all__ = ["OwnerThread", "hub_bound"]

_os_thread_ident: Callable[[], int] = get_original("_thread", "get_ident")
_new_lock: Callable[[], Any] = get_original("_thread", "allocate_lock")


class OwnerThread:
    """The OS thread whose hub runs a connection; `run` gets other threads into it."""

    __slots__ = ("_post", "ident")

    def __init__(self, post: Callable[[Callable[[], Any]], None]) -> None:
        self.ident = _os_thread_ident()
        self._post = post  # the native connection's add_callback_threadsafe

    def is_current(self) -> bool:
        return _os_thread_ident() == self.ident

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` in a new greenlet of the owner's hub; wait here for it."""
        lock = _new_lock()
        lock.acquire()
        box: list[Any] = [None, None]

        def body() -> None:
            try:
                box[0] = fn(*args, **kwargs)
            except BaseException as exc:  # handed back to the calling thread
                box[1] = exc
            finally:
                lock.release()

        self._post(lambda: gevent.spawn(body))
        lock.acquire()
        if box[1] is not None:
            raise box[1]
        return box[0]


_F = TypeVar("_F", bound=Callable[..., Any])


def _bind(method: _F) -> _F:
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def iterate(self: Any, *args: Any, **kwargs: Any) -> Any:
            owner: OwnerThread = self._owner
            generator = method(self, *args, **kwargs)
            return generator if owner.is_current() else _stepped(owner, generator)

        return iterate  # type: ignore[return-value]

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        owner: OwnerThread = self._owner
        if owner.is_current():
            return method(self, *args, **kwargs)
        return owner.run(method, self, *args, **kwargs)

    return call  # type: ignore[return-value]


def _stepped(owner: OwnerThread, generator: Iterator[Any]) -> Iterator[Any]:
    """A hub-side generator driven from another thread, one next() at a time."""
    try:
        while True:
            try:
                item = owner.run(next, generator)
            except StopIteration:
                return
            yield item
    finally:
        owner.run(generator.close)  # type: ignore[attr-defined]


_C = TypeVar("_C", bound=type)


def hub_bound(*skip: str) -> Callable[[_C], _C]:
    """Class decorator: every public method but `skip` runs in the owner's hub thread."""
    def decorate(cls: _C) -> _C:
        for name, value in list(vars(cls).items()):
            if name.startswith("_") or name in skip or not inspect.isfunction(value):
                continue
            setattr(cls, name, _bind(value))
        return cls

    return decorate
