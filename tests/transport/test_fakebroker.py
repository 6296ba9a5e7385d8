"""The fake broker itself: handshake, auto-answers, recording, waits (against geamqp)."""

from __future__ import annotations

from typing import Any

import gevent
import pytest
from fakebroker import FakeBroker, reply_after
from gevent.event import Event
from pamqp import commands as C
from peer_helpers import outcome, round_trip, spawn_catching

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


def test_a_held_answer_keeps_later_answers_on_its_channel_behind_it(
        broker: FakeBroker, connect: Any) -> None:
    conn, _ = connect(broker)
    ch = conn.channel()
    qos_ok = Event()
    broker.on(C.Basic.Qos, reply_after(qos_ok), conn=0, channel=1)
    qos = spawn_catching(ch.basic_qos, prefetch_count=1)  # its answer is discarded after close
    broker.wait_for(C.Basic.Qos, conn=0, channel=1)
    other = conn.channel()  # another channel is not held up
    assert other.queue_declare("free").queue == "free"
    closer = gevent.spawn(ch.close)
    broker.wait_for(C.Channel.Close, conn=0, channel=1)
    assert broker.frames(C.Channel.CloseOk, direction="out", channel=1) == []
    qos_ok.set()
    closer.join(2)
    outcome(qos)
    sent = [r.name for r in broker.frames(direction="out", conn=0, channel=1)]
    assert sent[-2:] == ["Basic.QosOk", "Channel.CloseOk"]


def test_hold_and_refuse_connections(broker: FakeBroker, connect: Any) -> None:
    _, signals = connect(broker)
    broker.refuse(1)
    release = broker.hold(2)
    broker.peer(0).drop()
    broker.peer(2)
    assert broker.peer(1).gone.is_set()
    assert signals.count("recovered") == 0
    release.set()
    signals.wait("recovered")
    assert len(broker.peers) == 3
