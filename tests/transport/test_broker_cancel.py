"""Broker cancels (issue 12 point 2) against the fake broker: on_cancel, and the
re-consume opt-in probing the queue on its own channel before consuming again."""

from __future__ import annotations

from typing import Any

import gevent
import pytest
from fakebroker import WAIT, FakeBroker, close_channel
from pamqp import commands as C
from peer_helpers import Signals, outcome, spawn_catching

from geamqp import _reconsume

pytestmark = pytest.mark.timeout(15)


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_reconsume, "DELAY_MIN", 0.01)
    monkeypatch.setattr(_reconsume, "DELAY_MAX", 0.02)


def _consume(ch: Any, signals: Signals, **kwargs: Any) -> str:
    ch.add_on_cancel_callback(signals.callback("channel_cancel"))
    return str(ch.basic_consume("q", lambda c, m, p, b: signals.add("msg", m.delivery_tag, b),
                                on_cancel=signals.callback("on_cancel"), **kwargs))


def _broker_cancels(broker: FakeBroker, tag: str) -> None:
    broker.peer(0).send(C.Basic.Cancel(consumer_tag=tag, nowait=True), 1)


def test_on_cancel_hears_a_broker_cancel(broker: FakeBroker, connect: Any) -> None:
    conn, _ = connect(broker)
    ch = conn.channel()
    signals = Signals()
    tag = _consume(ch, signals)
    consuming = spawn_catching(ch.start_consuming)
    _broker_cancels(broker, tag)
    assert signals.wait("on_cancel") == (ch, tag)
    signals.wait("channel_cancel")
    assert ch.consumer_tags == [] and ch.is_open
    assert outcome(consuming) is None, "start_consuming returns once no consumer is left"


def test_reconsume_waits_for_the_queue_then_consumes_with_the_same_tag(
        broker: FakeBroker, connect: Any) -> None:
    conn, _ = connect(broker)
    ch = conn.channel()
    signals = Signals()
    tag = _consume(ch, signals, reconsume_on_cancel=True)
    consuming = spawn_catching(ch.start_consuming)
    # the queue is missing for the first two probes
    broker.on(C.Queue.Declare, close_channel(404, "NOT_FOUND - no queue 'q'"), conn=0,
              where=lambda m: m.passive, times=2)
    mark = broker.mark()
    _broker_cancels(broker, tag)
    consume = broker.wait_for(C.Basic.Consume, conn=0, channel=1, after=mark, timeout=WAIT * 2)
    assert consume.method.consumer_tag == tag
    probes = broker.frames(C.Queue.Declare, conn=0, after=mark)
    assert len(probes) == 3 and all(r.channel != 1 for r in probes), \
        "the queue was probed on the consumers' channel"
    assert ch.is_open and ch.consumer_tags == [tag]
    assert not consuming.ready(), "start_consuming returned while re-consuming"
    broker.peer(0).deliver(1, tag, 1, b"back")
    assert signals.wait("msg")[1] == b"back"
    assert signals.count("on_cancel") == 0
    ch.stop_consuming()
    assert outcome(consuming) is None


def test_reconsume_gives_up_and_says_so(broker: FakeBroker, connect: Any,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_reconsume, "ATTEMPTS", 3)
    conn, _ = connect(broker)
    ch = conn.channel()
    signals = Signals()
    tag = _consume(ch, signals, reconsume_on_cancel=True)
    broker.on(C.Queue.Declare, close_channel(404, "NOT_FOUND - no queue 'q'"), conn=0,
              where=lambda m: m.passive)
    _broker_cancels(broker, tag)
    assert signals.wait("on_cancel", timeout=WAIT * 2) == (ch, tag)
    assert len(broker.frames(C.Queue.Declare, conn=0, where=lambda m: m.passive)) == 3
    assert ch.is_open and ch.consumer_tags == []


def test_basic_cancel_stops_a_pending_reconsume(broker: FakeBroker, connect: Any) -> None:
    conn, _ = connect(broker)
    ch = conn.channel()
    signals = Signals()
    tag = _consume(ch, signals, reconsume_on_cancel=True)
    broker.on(C.Queue.Declare, close_channel(404, "NOT_FOUND - no queue 'q'"), conn=0,
              where=lambda m: m.passive)
    mark = broker.mark()
    _broker_cancels(broker, tag)
    broker.wait_for(C.Queue.Declare, conn=0, after=mark)
    ch.basic_cancel(tag)
    gevent.sleep(0.2)  # longer than every remaining back-off: nothing may follow
    assert broker.frames(C.Basic.Consume, conn=0, after=mark) == []
    assert signals.count("on_cancel") == 0
