"""Cancellation safety: a gevent.Timeout at every yield point of a public call.

For each call — ``conn.channel()``, ``ch.basic_consume()``, ``ch.queue_declare()``,
``ch.basic_publish()`` in confirm mode, ``ch.close()`` — the call runs in its
own greenlet; a greenlet trace counts its yields and, right after the k-th,
a hub callback throws a ``gevent.Timeout`` into it (k = 0 kills it before it
starts). k sweeps every yield the call makes when left alone, and one more.
The same sweep runs with the broker's answer held back until after the kill
(``late``), the case of issue 11 E. After each kill:

- the connection is usable: a new channel and a queue.declare round trip work;
- the peer's view is consistent: a channel it opened for a killed
  ``channel()`` gets channel.close (its number reused only after close-ok), a
  consumer registered by a killed ``basic_consume()`` gets basic.cancel, a
  killed ``queue_declare()`` never hands its reply to the next caller;
- no error is printed by the hub (the reader never dies).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import greenlet
import pytest
from fakebroker import WAIT, FakeBroker, reply_after
from gevent.event import Event
from pamqp import commands as C
from peer_helpers import round_trip

import geamqp

pytestmark = pytest.mark.timeout(30)

MAX_YIELDS = 12  # a call yielding more often than this is itself a finding


class _KillAtYield:
    """Throws gevent.Timeout into `target` right after its k-th switch out."""

    def __init__(self, target: gevent.Greenlet, k: int) -> None:
        self.target = target
        self.k = k
        self.yields = 0
        self.killed_at: int | None = None
        self._previous: Any = None

    def __enter__(self) -> _KillAtYield:
        self._previous = greenlet.settrace(self._trace)
        return self

    def __exit__(self, *exc: Any) -> None:
        greenlet.settrace(self._previous)

    def _trace(self, event: str, args: Any) -> None:
        if event in ("switch", "throw") and args[0] is self.target:
            self.yields += 1
            if self.yields == self.k:
                gevent.get_hub().loop.run_callback(self._throw)
        if self._previous is not None:
            self._previous(event, args)

    def _throw(self) -> None:
        if not self.target.dead:
            self.killed_at = self.yields
            self.target.throw(gevent.Timeout())


def _attempt(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", call()
    except gevent.Timeout as exc:
        return "timeout", exc
    except geamqp.AMQPError as exc:
        return "error", exc


@dataclass
class Round:
    conn: Any
    broker: FakeBroker
    k: int
    mark: int  # broker log position before the call
    ch: Any = None
    result: tuple[str, Any] = ("", None)


def _run_round(rnd: Round, call: Callable[[], Any], held: type | None,
               release: Event) -> _KillAtYield:
    """Run `call` with a kill after its k-th yield. With `held` (late mode) the broker
    holds its answer to that method until the call was killed or is parked on it."""
    target = gevent.Greenlet(_attempt, call)
    with _KillAtYield(target, rnd.k) as killer:
        target.start()
        if rnd.k == 0:
            target.kill(block=False)  # cancelled before it ever runs
        if held is not None:
            seen = gevent.spawn(rnd.broker.wait_for, held, conn=0, after=rnd.mark)
            gevent.wait([target, seen], count=1, timeout=WAIT)
            seen.kill(block=False)
        release.set()
        target.join(WAIT)
    assert target.ready(), f"k={rnd.k}: the call neither finished nor died within {WAIT} s"
    value = target.value
    rnd.result = value if isinstance(value, tuple) else ("not-started", None)
    assert rnd.result[0] != "error", f"k={rnd.k}: the call raised {rnd.result[1]!r}"
    return killer


# ------------------------------------------------------------------ the calls


def _open_channel(rnd: Round) -> Any:
    return rnd.conn.channel()


def _check_channel(rnd: Round) -> None:
    broker = rnd.broker
    for opened in broker.frames(C.Channel.Open, conn=0, after=rnd.mark):
        number = opened.channel
        if rnd.result[0] == "ok" and rnd.result[1].channel_number == number:
            continue
        close_ok = broker.wait_for(C.Channel.CloseOk, direction="out", conn=0, channel=number,
                                   after=opened.seq)
        for reopen in broker.frames(C.Channel.Open, conn=0, channel=number, after=opened.seq):
            assert reopen.seq > close_ok.seq, f"channel {number} reused before its close-ok"


def _consume(rnd: Round) -> Any:
    return rnd.ch.basic_consume("q", lambda *a: None, consumer_tag=f"k{rnd.k}")


def _check_consume(rnd: Round) -> None:
    tag = f"k{rnd.k}"
    sent = rnd.broker.frames(C.Basic.Consume, conn=0, after=rnd.mark,
                             where=lambda m: m.consumer_tag == tag)
    if rnd.result[0] == "ok":
        assert rnd.ch.consumer_tags == [tag]
    elif sent:
        rnd.broker.wait_for(C.Basic.Cancel, conn=0, after=rnd.mark,
                            where=lambda m: m.consumer_tag == tag)
        assert tag not in rnd.ch.consumer_tags


def _declare(rnd: Round) -> Any:
    return rnd.ch.queue_declare(f"killed-{rnd.k}")


def _check_declare(rnd: Round) -> None:
    name = f"next-{rnd.k}"
    try:
        with gevent.Timeout(WAIT):
            ok = rnd.ch.queue_declare(name)
    except geamqp.AMQPChannelError:
        return  # the channel may end; the connection must not (round trip below)
    assert ok.queue == name, f"queue_declare({name!r}) got the killed call's reply {ok.queue!r}"


def _publish(rnd: Round) -> Any:
    return rnd.ch.basic_publish("", "q", f"killed-{rnd.k}".encode())


def _check_publish(rnd: Round) -> None:
    with gevent.Timeout(WAIT):
        assert rnd.ch.basic_publish("", "q", b"next") is None
        assert rnd.ch.wait_for_confirms(timeout=WAIT) is True


def _close(rnd: Round) -> Any:
    return rnd.ch.close()


def _check_close(rnd: Round) -> None:
    number = rnd.ch.channel_number
    closes = rnd.broker.frames(C.Channel.Close, conn=0, channel=number, after=rnd.mark)
    if not closes:
        with gevent.Timeout(WAIT):
            rnd.ch.close()  # the killed close() never sent it: closing again works
        return
    rnd.broker.wait_for(C.Channel.CloseOk, direction="out", conn=0, channel=number,
                        after=rnd.mark)
    with gevent.Timeout(WAIT):
        rnd.ch.close()  # returns quietly (already closed or closing to its end)
    assert rnd.ch.is_closed


@dataclass(frozen=True)
class Op:
    call: Callable[[Round], Any]
    check: Callable[[Round], None]
    held: type  # the client method whose answer the broker holds back in "late" mode
    needs_channel: bool = True
    confirm: bool = False


OPS = {
    "channel": Op(_open_channel, _check_channel, C.Channel.Open, needs_channel=False),
    "basic_consume": Op(_consume, _check_consume, C.Basic.Consume),
    "queue_declare": Op(_declare, _check_declare, C.Queue.Declare),
    "basic_publish-confirm": Op(_publish, _check_publish, C.Basic.Publish, confirm=True),
    "close": Op(_close, _check_close, C.Channel.Close),
}


def _one_round(conn: Any, broker: FakeBroker, op: Op, k: int, late: bool) -> _KillAtYield:
    rnd = Round(conn, broker, k, broker.mark())
    if op.needs_channel:
        with gevent.Timeout(WAIT):
            rnd.ch = conn.channel()
            if op.confirm:
                rnd.ch.confirm_delivery()
        rnd.mark = broker.mark()
    release = Event()
    if late:
        broker.on(op.held, reply_after(release), conn=0, times=1)
    killer = _run_round(rnd, lambda: op.call(rnd), op.held if late else None, release)
    broker.rules.clear()
    # A round trip first: frames the killed call had queued are on the wire after it.
    round_trip(conn, f"sync-k{k}")
    op.check(rnd)
    round_trip(conn, f"after-k{k}")
    if rnd.ch is not None and not rnd.ch.is_closed:
        with gevent.Timeout(WAIT):
            rnd.ch.close()
    if rnd.result[0] == "ok" and op is OPS["channel"]:
        with gevent.Timeout(WAIT):
            rnd.result[1].close()
    return killer


@pytest.mark.parametrize("late", [False, True], ids=["prompt-reply", "late-reply"])
@pytest.mark.parametrize("name", sorted(OPS))
def test_a_timeout_at_every_yield_point_leaves_the_connection_usable(
        broker: FakeBroker, connect: Any, name: str, late: bool) -> None:
    op = OPS[name]
    conn, signals = connect(broker, recover=False)
    outcomes = []
    for k in range(MAX_YIELDS + 1):
        killer = _one_round(conn, broker, op, k, late)
        outcomes.append((k, killer.killed_at, killer.yields))
        if killer.killed_at is None and k > 0:
            break  # the call finished before its k-th yield: every point was covered
    else:
        pytest.fail(f"{name} still running after {MAX_YIELDS} yields: {outcomes}")
    assert conn.is_open and signals.count("closed") == 0
