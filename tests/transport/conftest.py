"""Fixtures of the transport rung: a fake broker on a loopback socket and clients of it.

``broker`` is a started `FakeBroker` (stopped, every socket and greenlet gone,
at teardown); ``make_broker()`` makes more. ``connect(broker, **kw)`` opens a
real ``geamqp.connect`` to it with fast recovery settings and returns the
Connection with a `Signals` recorder of its connection-level callbacks
(``lost``, ``recovered``, ``recovery_failed``, ``closed``, ``blocked``,
``unblocked``); every connection is closed at teardown.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from fakebroker import WAIT, FakeBroker
from peer_helpers import FAST_RECOVERY, Signals, watch_connection

import geamqp


@pytest.fixture
def make_broker() -> Iterator[Callable[..., FakeBroker]]:
    brokers: list[FakeBroker] = []

    def make(**tune: int) -> FakeBroker:
        broker = FakeBroker(**tune)
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def broker(make_broker: Callable[..., FakeBroker]) -> FakeBroker:
    return make_broker()


@pytest.fixture
def connect() -> Iterator[Callable[..., tuple[Any, Signals]]]:
    """``connect(broker, params={...}, **connect_kwargs) -> (conn, signals)``."""
    opened: list[Any] = []

    def open_(broker: FakeBroker, params: dict[str, Any] | None = None,
              **kwargs: Any) -> tuple[Any, Signals]:
        options = {**FAST_RECOVERY, **kwargs}
        with gevent.Timeout(WAIT * 2):
            conn = geamqp.connect(broker.params(**(params or {})), **options)
        opened.append(conn)
        return conn, watch_connection(conn)

    yield open_
    for conn in opened:
        with contextlib.suppress(Exception, gevent.Timeout), gevent.Timeout(1):
            conn.close()
