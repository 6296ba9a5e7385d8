"""RELIABILITY.md item 28: odd confirm streams from the broker.

Nack-multiple, duplicate acks, overlapping multiple acks and acks for tags
never published: each `Confirmation` resolves exactly once (its first outcome
stands), the nacked ones raise NackError, the rest stay pending, and the
channel keeps working.
"""

from __future__ import annotations

from typing import Any

import pytest
from fakebroker import FakeBroker
from pamqp import commands as C
from peer_helpers import outcome, spawn_catching

import geamqp

pytestmark = pytest.mark.timeout(15)

ACK, NACK, PENDING = "ack", "nack", "pending"

# name: (broker actions as (ack|nack, delivery_tag, multiple), expected outcome per seqno 1..5)
STREAMS: dict[str, tuple[list[tuple[str, int, bool]], list[str]]] = {
    "nack-multiple": ([(ACK, 1, False), (NACK, 3, True), (ACK, 5, True)],
                      [ACK, NACK, NACK, ACK, ACK]),
    "duplicate-acks": ([(ACK, 2, False), (ACK, 2, False), (NACK, 2, False), (ACK, 1, False),
                        (ACK, 1, True)],
                       [ACK, ACK, PENDING, PENDING, PENDING]),
    "overlapping-multiple": ([(ACK, 3, True), (ACK, 4, True), (NACK, 4, True), (ACK, 2, True),
                              (NACK, 5, False), (ACK, 5, True)],
                             [ACK, ACK, ACK, ACK, NACK]),
    "unknown-tags": ([(ACK, 99, False), (NACK, 77, False), (ACK, 2, False), (NACK, 50, False)],
                     [PENDING, ACK, PENDING, PENDING, PENDING]),
}


def _outcome(confirmation: Any) -> str:
    if not confirmation.done():
        return PENDING
    try:
        assert confirmation.wait(0) is True
    except geamqp.NackError as exc:
        assert len(exc.messages) == 1
        return NACK
    return ACK


@pytest.mark.parametrize("stream", sorted(STREAMS))
def test_each_confirmation_resolves_once(broker: FakeBroker, connect: Any, stream: str) -> None:
    actions, expected = STREAMS[stream]
    broker.auto_confirm = False
    conn, _ = connect(broker)
    ch = conn.channel()
    ch.confirm_delivery()
    confirmations = [ch.basic_publish("", "q", f"m{i}".encode(), wait=False)
                     for i in range(1, 6)]
    assert [c.seqno for c in confirmations] == [1, 2, 3, 4, 5]
    publishes = broker.wait_for_all(C.Basic.Publish, count=5, conn=0, channel=1)
    assert [p.seqno for p in publishes] == [1, 2, 3, 4, 5]
    peer = broker.peer(0)
    for kind, tag, multiple in actions:
        getattr(peer, kind)(1, tag, multiple)
    assert ch.queue_declare("sync").queue == "sync"  # answered after every confirm above
    outcomes = [_outcome(c) for c in confirmations]
    assert outcomes == expected
    assert [_outcome(c) for c in confirmations] == expected  # asking twice changes nothing
    assert ch.is_open
    # The channel still pairs confirms with publishes: the next one is seqno 6.
    sixth = ch.basic_publish("", "q", b"m6", wait=False)
    assert sixth.seqno == 6
    peer.ack(1, 6)
    assert sixth.wait(2) is True
    assert [_outcome(c) for c in confirmations] == expected


def test_blocking_publishers_each_return_once_on_a_multiple_ack(
        broker: FakeBroker, connect: Any) -> None:
    broker.auto_confirm = False
    conn, _ = connect(broker)
    ch = conn.channel()
    ch.confirm_delivery()
    publishers = [spawn_catching(ch.basic_publish, "", "q", f"b{i}".encode()) for i in range(4)]
    broker.wait_for_all(C.Basic.Publish, count=4, conn=0, channel=1)
    peer = broker.peer(0)
    peer.nack(1, 1)
    peer.ack(1, 4, multiple=True)
    peer.ack(1, 4, multiple=True)
    assert isinstance(outcome(publishers[0]), geamqp.NackError)
    assert [outcome(g) for g in publishers[1:]] == [None, None, None]
    assert ch.wait_for_confirms(timeout=1) is True
