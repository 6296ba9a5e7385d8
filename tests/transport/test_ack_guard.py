"""The consumer-timeout guard (issue 12 point 4) against the fake broker: one WARNING
and one hook call per delivery held past the fraction, none for settled ones."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fakebroker import WAIT, FakeBroker
from peer_helpers import Signals

import geamqp

pytestmark = pytest.mark.timeout(15)


def test_a_held_delivery_is_reported_once_with_its_tags(
        broker: FakeBroker, connect: Any, caplog: pytest.LogCaptureFixture) -> None:
    signals = Signals()
    guard = geamqp.ConsumerTimeoutGuard(consumer_timeout=0.4, fraction=0.5,
                                        on_warning=signals.callback("warning"))
    conn, _ = connect(broker, consumer_timeout_guard=guard)
    ch = conn.channel()
    tag = ch.basic_consume("q", lambda c, m, p, b: signals.add("msg", m.delivery_tag))
    auto = ch.basic_consume("q2", lambda c, m, p, b: signals.add("msg", m.delivery_tag),
                            auto_ack=True)
    peer = broker.peer(0)
    caplog.set_level(logging.WARNING, logger="geamqp")
    for dtag in (1, 2, 3):
        peer.deliver(1, tag, dtag)
    peer.deliver(1, auto, 4)
    signals.wait("msg", 4)
    ch.basic_ack(1)
    ch.basic_reject(3, requeue=False)
    channel, consumer_tag, delivery_tag, held = signals.wait("warning", timeout=WAIT)
    assert (channel, consumer_tag, delivery_tag) == (ch, tag, 2)
    assert 0.2 <= held < 0.4
    with pytest.raises(AssertionError):
        signals.wait("warning", count=2, timeout=0.5)  # once per delivery; none for auto-ack
    text = [r.getMessage() for r in caplog.records if "unacknowledged" in r.getMessage()]
    assert len(text) == 1 and tag in text[0] and "delivery 2 " in text[0]


def test_a_suspended_channel_forgets_what_it_held(broker: FakeBroker, connect: Any) -> None:
    signals = Signals()
    guard = geamqp.ConsumerTimeoutGuard(consumer_timeout=0.4, fraction=0.5,
                                        on_warning=signals.callback("warning"))
    conn, conn_signals = connect(broker, consumer_timeout_guard=guard)
    ch = conn.channel()
    tag = ch.basic_consume("q", lambda c, m, p, b: signals.add("msg", m.delivery_tag))
    broker.peer(0).deliver(1, tag, 1)
    signals.wait("msg")
    broker.peer(0).drop()
    conn_signals.wait("recovered")
    with pytest.raises(AssertionError):
        signals.wait("warning", timeout=0.5)


@pytest.mark.parametrize("kwargs", [{"consumer_timeout": 0}, {"fraction": 1.5},
                                    {"fraction": 0}, {"on_warning": "log"}])
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError)):
        geamqp.ConsumerTimeoutGuard(**kwargs)
