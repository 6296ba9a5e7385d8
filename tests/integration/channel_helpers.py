"""Shared helpers for the Channel API integration tests (real broker, no mocks).

- ``Names``: unique queue / exchange names per test, deleted afterwards over a
  connection of its own (the test's connection may be closed by then).
- ``wait_for``: bounded polling of client-side state that has no event.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from typing import Any

from support.broker import wait_until

import geamqp
from geamqp.exceptions import ChannelClosedByBroker


class Names:
    """Unique names for one test; everything handed out is deleted by `cleanup()`."""

    def __init__(self, url: str, prefix: str) -> None:
        self._url = url
        self._prefix = f"geamqp-test-{prefix}-{uuid.uuid4().hex[:8]}"
        self._count = 0
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def _next(self, kind: str) -> str:
        self._count += 1
        return f"{self._prefix}-{kind}{self._count}"

    def queue(self) -> str:
        name = self._next("q")
        self.queues.append(name)
        return name

    def exchange(self) -> str:
        name = self._next("x")
        self.exchanges.append(name)
        return name

    def cleanup(self) -> None:
        if not (self.queues or self.exchanges):
            return
        deletions = [("queue_delete", q) for q in self.queues]
        deletions += [("exchange_delete", x) for x in self.exchanges]
        with geamqp.connect(self._url, recover=False) as conn:
            ch = conn.channel()
            for method, name in deletions:
                if not ch.is_open:
                    ch = conn.channel()
                # Missing queues and exchanges are fine in RabbitMQ; an exclusive
                # queue of a closed connection may still be going away (405).
                with contextlib.suppress(ChannelClosedByBroker):
                    getattr(ch, method)(name)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll client-side state that has no event, cooperatively, every 10 ms
    (`support.broker.wait_until` at a finer interval)."""
    return wait_until(predicate, timeout, interval=0.01, what=what)


def drain_queue(ch: geamqp.Channel, queue: str) -> list[bytes]:
    """Every body ready in `queue`, taken with auto-ack."""
    bodies = []
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)


__all__ = ["Names", "drain_queue", "wait_for"]
