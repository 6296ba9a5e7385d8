"""A write that fails in the caller's own greenlet (the latency path writes a lone
request or publish directly) ends the link there and then; whatever that caller
was doing must still be released with the loss, never left waiting.

Found as a rare hang of foreign-thread calls racing a dead socket: the request
was registered after the direct write had already ended the channel.
"""

from __future__ import annotations

from typing import Any

import gevent
import pytest
from fakebroker import WAIT, FakeBroker

from geamqp import ChannelWrongStateError, StreamLostError
from geamqp._transport import Transport


@pytest.fixture
def failing_writes(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Set `failing_writes[0] = True` and every later send raises EPIPE."""
    armed = [False]
    send_all = Transport._send_all

    def maybe_fail(self: Transport, data: bytes) -> None:
        if armed[0]:
            raise BrokenPipeError(32, "Broken pipe")
        send_all(self, data)

    monkeypatch.setattr(Transport, "_send_all", maybe_fail)
    return armed


@pytest.mark.parametrize("call", ["queue_declare", "basic_get", "basic_publish"])
def test_a_failed_direct_write_releases_its_own_caller(
        broker: FakeBroker, connect: Any, failing_writes: list[bool], call: str) -> None:
    conn, signals = connect(broker, recover=False)
    ch = conn.channel()
    failing_writes[0] = True
    calls = {
        "queue_declare": lambda: ch.queue_declare("q"),
        "basic_get": lambda: ch.basic_get("q"),
        "basic_publish": lambda: ch.basic_publish("", "q", b"x"),
    }
    def outcome() -> BaseException | None:
        try:
            calls[call]()
        except StreamLostError as exc:
            return exc
        return None

    caller = gevent.spawn(outcome)
    caller.join(WAIT)
    assert caller.ready(), f"{call} hung after its own write failed"
    signals.wait("closed")
    if call != "basic_publish":  # a publish without confirms returns once queued
        assert isinstance(caller.value, StreamLostError)
    with pytest.raises(ChannelWrongStateError) as later:
        ch.queue_declare("q")
    assert isinstance(later.value.__cause__, StreamLostError)
