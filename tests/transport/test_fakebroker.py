"""The fake broker itself: handshake, auto-answers, recording, waits (against geamqp)."""

from __future__ import annotations

from typing import Any

import pytest
from fakebroker import FakeBroker
from pamqp import commands as C
from peer_helpers import round_trip

pytestmark = pytest.mark.timeout(10)


def test_handshake_round_trip_and_recording(broker: FakeBroker, connect: Any) -> None:
    conn, _ = connect(broker)
    start_ok = broker.frames(C.Connection.StartOk, conn=0)[0].method
    assert "guest" in str(start_ok.response)
    round_trip(conn, "q1")
    opens = broker.frames(C.Channel.Open, conn=0)
    assert [r.channel for r in opens] == [1]
    broker.wait_for(C.Channel.Close, conn=0, channel=1)


def test_publish_is_recorded_whole_with_confirm_seqno(broker: FakeBroker, connect: Any) -> None:
    conn, _ = connect(broker)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("ex", "rk", b"hello" * 1000)
    ch.basic_publish("ex", "rk", b"")
    pubs = broker.frames(C.Basic.Publish, conn=0, channel=1)
    assert [(len(p.body or b""), p.seqno) for p in pubs] == [(5000, 1), (0, 2)]


def test_deliveries_reach_the_callback(broker: FakeBroker, connect: Any) -> None:
    conn, _ = connect(broker)
    ch = conn.channel()
    got: list[bytes] = []
    ch.basic_consume("q", lambda c, m, p, b: (got.append(b), c.basic_ack(m.delivery_tag)),
                     consumer_tag="t1")
    peer = broker.peer(0)
    peer.deliver(1, "t1", 1, b"a")
    peer.deliver(1, "t1", 2, b"b")
    acks = broker.wait_for(C.Basic.Ack, conn=0, channel=1, count=2)
    assert acks.method.delivery_tag == 2
    assert got == [b"a", b"b"]


def test_a_reconnect_is_a_new_connection_index(broker: FakeBroker, connect: Any) -> None:
    conn, signals = connect(broker)
    conn.channel()
    broker.peer(0).drop()
    signals.wait("recovered")
    broker.wait_for(C.Channel.Open, conn=1, channel=1)
