"""Bounded memory in every queue (issue 11, point 6).

- The write path throttles publishers by bytes queued, not by frame count: a
  broker that stops reading parks a publisher of 1 MiB messages once about
  `HIGH_WATER_BYTES` are queued, instead of letting 2,000 of them pile up.
- A consumer without a prefetch limit whose callback falls behind gets one
  warning naming the fix; with a prefetch limit, none.
"""

from __future__ import annotations

import logging
from typing import Any

import gevent
import pytest
from fakebroker import WAIT, FakeBroker
from gevent.event import Event

from geamqp._transport import HIGH_WATER_BYTES, Transport
from geamqp.consumer import Dispatcher

MIB = 1024 * 1024


def test_a_publisher_parks_on_queued_bytes_when_the_broker_stops_reading(
        broker: FakeBroker, connect: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    flowing = Event()  # cleared: the broker has stopped reading, sends make no progress
    flowing.set()
    send_buffers = Transport._send_buffers

    def stallable_send(self: Transport, buffers: list[Any]) -> None:
        flowing.wait()
        send_buffers(self, buffers)

    monkeypatch.setattr(Transport, "_send_buffers", stallable_send)
    conn, _ = connect(broker, params={"socket_timeout": 30.0})
    ch = conn.channel()
    engine = conn._link.engine
    queued: list[int] = []
    parked = Event()
    throttle = Transport.throttle

    def watched_throttle(self: Transport) -> None:
        queued.append(engine.pending_bytes)
        if engine.pending_bytes >= HIGH_WATER_BYTES:
            parked.set()
        throttle(self)

    monkeypatch.setattr(Transport, "throttle", watched_throttle)
    body = b"x" * MIB
    publishers, each = 4, 10
    published: list[int] = []

    def publish_all() -> None:
        for i in range(each):
            ch.basic_publish("", "q", body)
            published.append(i)

    # One publisher's own write blocks in the stalled send; the others queue for
    # the writer until the byte limit parks them.
    flowing.clear()
    greenlets = [gevent.spawn(publish_all) for _ in range(publishers)]
    assert parked.wait(WAIT), "the publishers never reached the byte limit"
    assert len(published) < publishers * each, "they did not wait for the writer"
    # each publisher adds at most the message it is publishing beyond the limit
    assert max(queued) <= HIGH_WATER_BYTES + publishers * (MIB + 64)
    flowing.set()
    gevent.joinall(greenlets, timeout=10, raise_error=True)
    assert len(published) == publishers * each


class _Warnings(logging.Handler):
    """Collects geamqp warnings about the backlog; `seen` is set on the first."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.seen = Event()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "prefetch_count" in message:
            self.messages.append(message)
            self.seen.set()


@pytest.fixture
def backlog_warnings(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(Dispatcher, "WARN_PENDING", 50)
    handler = _Warnings()
    logger = logging.getLogger("geamqp")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _deliver_to_a_stuck_consumer(broker: FakeBroker, connect: Any, prefetch: int,
                                 count: int) -> tuple[Event, list[Any], Event]:
    conn, _ = connect(broker)
    ch = conn.channel()
    if prefetch:
        ch.basic_qos(prefetch_count=prefetch)
    release, all_seen = Event(), Event()
    seen: list[Any] = []

    def slow(*args: Any) -> None:
        seen.append(args)
        if len(seen) == count:
            all_seen.set()
        release.wait()

    ch.basic_consume("q", slow, auto_ack=True, consumer_tag="slow")
    peer = broker.peer(0)
    for tag in range(1, count + 1):
        peer.deliver(ch.channel_number, "slow", tag)
    return release, seen, all_seen


def test_a_consumer_without_prefetch_that_falls_behind_is_warned_once(
        broker: FakeBroker, connect: Any, backlog_warnings: _Warnings) -> None:
    release, _, all_seen = _deliver_to_a_stuck_consumer(broker, connect, 0, 120)
    assert backlog_warnings.seen.wait(WAIT), "no warning about the growing backlog"
    release.set()
    assert all_seen.wait(WAIT)
    [message] = backlog_warnings.messages
    assert "basic_qos" in message


def test_no_backlog_warning_with_a_prefetch_limit(
        broker: FakeBroker, connect: Any, backlog_warnings: _Warnings) -> None:
    release, _, all_seen = _deliver_to_a_stuck_consumer(broker, connect, 200, 120)
    release.set()
    assert all_seen.wait(WAIT)
    assert backlog_warnings.messages == []
