"""Shared helpers for the recovery tests (test_recovery*.py).

- ``FAST``: small back-off bounds, so a recovery takes tens of milliseconds.
- ``Watch``: records a connection's lost / recovered / failed / renamed / close
  callbacks and lets a test wait on them (events, never sleeps).
- ``RestoreLog``: which requests a recovery sent, in order (a spy on the RPC path).
- ``broker_exchanges`` / ``broker_bindings`` / ``broker_queues``: what the broker
  holds, from rabbitmqctl.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import AsyncResult, Event
from support import broker as broker_ctl
from support.faultproxy import Changes

import geamqp
from geamqp.channel import Channel

FAST: dict[str, Any] = {"recovery_delay_min": 0.05, "recovery_delay_max": 0.5}


def connect(url: str, **kwargs: Any) -> geamqp.Connection:
    """A recovering connection with small back-off bounds (overridable)."""
    return geamqp.connect(url, **{**FAST, **kwargs})


class Watch:
    """Every recovery callback of one connection, with timestamps (time.monotonic())."""

    def __init__(self, conn: geamqp.Connection) -> None:
        self.conn = conn
        self.lost: list[tuple[float, Exception]] = []
        self.recovered: list[float] = []
        self.failed: list[Exception] = []
        self.renamed: list[tuple[str, str]] = []
        self.closed: AsyncResult = AsyncResult()
        self.close_calls = 0
        self._changes = Changes()
        conn.add_on_connection_lost_callback(self._on_lost)
        conn.add_on_recovered_callback(self._on_recovered)
        conn.add_on_recovery_failed_callback(self._on_failed)
        conn.add_on_queue_renamed_callback(self._on_renamed)
        conn.add_on_close_callback(self._on_closed)

    def _on_lost(self, _conn: geamqp.Connection, error: Exception) -> None:
        self.lost.append((time.monotonic(), error))
        self._changes.notify()

    def _on_recovered(self, _conn: geamqp.Connection) -> None:
        self.recovered.append(time.monotonic())
        self._changes.notify()

    def _on_failed(self, _conn: geamqp.Connection, error: Exception) -> None:
        self.failed.append(error)
        self._changes.notify()

    def _on_renamed(self, old: str, new: str) -> None:
        self.renamed.append((old, new))
        self._changes.notify()

    def _on_closed(self, _conn: geamqp.Connection, error: Exception) -> None:
        self.close_calls += 1
        self.closed.set(error)
        self._changes.notify()

    def wait_lost(self, n: int = 1, timeout: float = 10.0) -> Exception:
        """The exception of the n-th loss, once it has been reported."""
        self._changes.wait_for(lambda: len(self.lost) >= n, timeout, f"loss #{n}")
        return self.lost[n - 1][1]

    def wait_recovered(self, n: int = 1, timeout: float = 10.0) -> float:
        """When the n-th recovery finished."""
        self._changes.wait_for(lambda: len(self.recovered) >= n, timeout, f"recovery #{n}")
        return self.recovered[n - 1]

    def wait_failed(self, timeout: float = 10.0) -> Exception:
        self._changes.wait_for(lambda: self.failed, timeout, "recovery to give up")
        return self.failed[0]

    def wait_renamed(self, timeout: float = 10.0) -> tuple[str, str]:
        self._changes.wait_for(lambda: self.renamed, timeout, "a queue rename")
        return self.renamed[0]


class RestoreLog:
    """Records every request that goes through Channel._call (the path both user
    requests and the supervisor's replay take): (channel number, method)."""

    def __init__(self, monkeypatch: Any) -> None:
        self.requests: list[tuple[int, Any]] = []
        original = Channel._call

        def spy(channel: Channel, method: Any, replies: Any, effect: Any) -> Any:
            self.requests.append((channel.channel_number, method))
            return original(channel, method, replies, effect)

        monkeypatch.setattr(Channel, "_call", spy)

    def mark(self) -> int:
        return len(self.requests)

    def names(self, since: int = 0) -> list[str]:
        return [method.NAME for _, method in self.requests[since:]]


def broker_exchanges(vhost: str = "/") -> set[str]:
    rows = broker_ctl.rabbitmqctl_json("list_exchanges", "-p", vhost, "name")
    return {row["name"] for row in rows}


def broker_queues(vhost: str = "/") -> set[str]:
    rows = broker_ctl.rabbitmqctl_json("list_queues", "-p", vhost, "name")
    return {row["name"] for row in rows}


def broker_bindings(vhost: str = "/") -> set[tuple[str, str, str, str]]:
    """(source, destination kind, destination, routing key) of every binding."""
    rows = broker_ctl.rabbitmqctl_json(
        "list_bindings", "-p", vhost, "source_name", "destination_kind", "destination_name",
        "routing_key")
    return {(r["source_name"], r["destination_kind"], r["destination_name"], r["routing_key"])
            for r in rows}


def collect(into: list[Any], event_at: int | None = None,
            done: Event | None = None) -> Callable[..., None]:
    """An on_message callback that appends (method, properties, body) and sets
    `done` once `event_at` deliveries are in; it does not ack."""

    def on_message(_channel: Any, method: Any, properties: Any, body: bytes) -> None:
        into.append((method, properties, body))
        if done is not None and event_at is not None and len(into) >= event_at:
            done.set()

    return on_message


def spawn_catching(fn: Callable[..., Any], *args: Any) -> gevent.Greenlet:
    """A greenlet whose value is fn's result or the exception it raised."""

    def run() -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            return exc

    return gevent.spawn(run)
