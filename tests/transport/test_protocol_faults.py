"""RELIABILITY.md items 1, 4, 5 and 12 over a real socket against a real Connection.

For each fault the broker sends: every greenlet waiting on the connection gets
the ProtocolError, the right connection.close goes out (or nothing, for a fatal
fault), a log line of "geamqp..." names the fault, and another connection in
the same process, to a second fake broker, keeps working.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

import gevent
import pytest
from fakebroker import WAIT, FakeBroker, no_reply, raw_frame
from pamqp import commands as C
from pamqp import frame as pframe
from peer_helpers import outcome, round_trip, spawn_catching

import geamqp

pytestmark = pytest.mark.timeout(15)

FRAME_METHOD = 1


def _frame_too_large() -> bytes:
    return struct.pack(">BHI", FRAME_METHOD, 0, 131072 + 1)  # header only: no payload follows


FAULTS: dict[str, tuple[Any, int | None]] = {
    # name: (bytes the broker sends, reply code of the client's close; None: fatal, no close)
    "item1-frame-over-frame-max": (_frame_too_large(), 501),
    "item4-frame-end-0x00": (raw_frame(FRAME_METHOD, 1, struct.pack(">HH", 60, 80), end=0), None),
    "item5-unknown-method": (raw_frame(FRAME_METHOD, 1, struct.pack(">HH", 99, 1)), 540),
    "item5-client-only-method": (pframe.marshal(C.Basic.Qos(prefetch_count=10), 1), 503),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_protocol_fault_reaches_every_waiter_and_spares_other_connections(
        make_broker: Any, connect: Any, caplog: pytest.LogCaptureFixture, fault: str) -> None:
    data, code = FAULTS[fault]
    caplog.set_level(logging.WARNING, logger="geamqp")
    bad, good = make_broker(), make_broker()
    other, _ = connect(good)
    conn, signals = connect(bad, recover=False)
    ch1, ch2 = conn.channel(), conn.channel()
    bad.on(C.Queue.Declare, no_reply)
    bad.on(C.Channel.Open, no_reply, channel=3)
    waiters = [spawn_catching(ch1.queue_declare, "w1"), spawn_catching(ch2.queue_declare, "w2"),
               spawn_catching(conn.channel)]
    bad.wait_for(C.Queue.Declare, count=2)
    bad.wait_for(C.Channel.Open, channel=3)
    mark = bad.mark()
    bad.peer(0).send_raw(data)
    errors = [outcome(waiter) for waiter in waiters]
    assert all(isinstance(e, geamqp.ProtocolError) for e in errors), errors
    if code is not None:
        assert {e.reply_code for e in errors} == {code}
        close = bad.wait_for(C.Connection.Close, conn=0).method
        assert close.reply_code == code
    else:
        assert all(e.fatal for e in errors)
        assert bad.peer(0).gone.wait(WAIT), "the client did not drop the connection"
        assert bad.frames(conn=0, after=mark) == [], "the client sent after a fatal fault"
    signals.wait("closed")
    assert conn.is_closed
    messages = [r.getMessage() for r in caplog.records
                if r.name.startswith("geamqp") and r.levelno >= logging.WARNING]
    assert any(str(errors[0]) in m for m in messages), f"no log line names the fault: {messages}"
    assert other.is_open
    round_trip(other)


@pytest.mark.parametrize(("until", "expected"), [
    ("header", geamqp.IncompatibleProtocolError),
    ("start_ok", geamqp.ProbableAuthenticationError),
    ("open", geamqp.ProbableAccessDeniedError),
])
def test_item12_eof_during_the_handshake_raises_a_typed_error(
        broker: FakeBroker, until: str, expected: type) -> None:
    def eof(peer: Any) -> None:
        peer.handshake(until=until)
        peer.drop()

    broker.script(0, eof)
    with pytest.raises(expected), gevent.Timeout(WAIT * 2):
        geamqp.connect(broker.params(), recover=True)
    assert len(broker.peers) == 1, "a refused handshake was retried"
