"""A channel restored by a recovery whose publishes are nacked before any ack is
reopened (recovery.Supervisor.refresh_channel): on RabbitMQ 3.10.8 such a channel may
keep a dead quorum queue leader and be nacked until that node returns. A channel that
was never restored keeps its nacks (reject-publish overflow is the broker's word)."""

from __future__ import annotations

from typing import Any

import pytest
from fakebroker import FakeBroker
from pamqp import commands as C

import geamqp


def test_a_restored_channel_nacked_before_any_ack_is_reopened(
        broker: FakeBroker, connect: Any) -> None:
    broker.auto_confirm = False
    conn, signals = connect(broker)
    ch = conn.channel()
    ch.confirm_delivery()
    broker.peer(0).drop()
    signals.wait("recovered")
    nacked = ch.basic_publish("", "q", b"stale", wait=False)
    broker.wait_for(C.Basic.Publish, conn=1, channel=1)
    broker.peer(1).nack(1, 1)
    with pytest.raises(geamqp.NackError):
        nacked.wait(5)
    # the client closes the channel, waits for close-ok, and opens the same number again
    broker.wait_for(C.Channel.Close, conn=1, channel=1)
    opens = broker.frames(C.Channel.Open, conn=1, channel=1)
    broker.wait_for(C.Channel.Open, conn=1, channel=1,
                    where=lambda r: r not in opens)
    broker.auto_confirm = True
    ch.basic_publish("", "q", b"fresh")  # confirmed on the reopened channel
    assert ch.is_open and conn.is_open


def test_a_channel_never_restored_keeps_its_nacks(broker: FakeBroker, connect: Any) -> None:
    broker.auto_confirm = False
    conn, _ = connect(broker)
    ch = conn.channel()
    ch.confirm_delivery()
    nacked = ch.basic_publish("", "q", b"refused", wait=False)
    broker.wait_for(C.Basic.Publish, conn=0, channel=1)
    broker.peer(0).nack(1, 1)
    with pytest.raises(geamqp.NackError):
        nacked.wait(5)
    broker.auto_confirm = True
    ch.basic_publish("", "q", b"next")
    assert broker.frames(C.Channel.Close, conn=0) == []
