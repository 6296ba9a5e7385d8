"""The dispatcher without a broker: no greenlet while idle, order kept across
restarts, a blocked callback holds up only its own dispatcher, stop()."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator

import gevent
import pytest
from gevent.event import Event

from geamqp.consumer import Dispatcher, _Runner, _Scheduler

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def dispatchers() -> Iterator[list[Dispatcher]]:
    made = [Dispatcher(f"test-{i}") for i in range(3)]
    yield made
    for d in made:
        d.stop()


def _drained(*ds: Dispatcher) -> None:
    """Wait (bounded, on an event) until each dispatcher has run all it has queued."""
    for d in ds:
        done = Event()
        d.submit(done.set)
        assert done.wait(5)
        assert not d.pending


def _live_runners() -> list[_Runner]:
    return [g for g in gc.get_objects() if isinstance(g, _Runner) and not g.dead]


def test_idle_dispatcher_has_no_greenlet_and_restarts_in_order(
        dispatchers: list[Dispatcher]) -> None:
    d = dispatchers[0]
    order: list[int] = []
    assert d._greenlet is None
    for burst in range(5):
        for i in range(burst * 10, burst * 10 + 10):
            d.submit(order.append, i)
        _drained(d)
        assert d._greenlet is None  # idle between bursts: nothing of its own kept
    assert order == list(range(50))


def test_calls_queued_while_a_callback_blocks_run_after_it_in_order(
        dispatchers: list[Dispatcher]) -> None:
    a, b = dispatchers[:2]
    order: list[object] = []
    release = Event()
    in_callback = Event()

    def blocking() -> None:
        in_callback.set()
        release.wait()
        order.append("a-blocked-done")

    a.submit(order.append, "a-0")
    a.submit(blocking)
    assert in_callback.wait(5)
    a.submit(order.append, "a-after")
    # another channel's calls run meanwhile: the blocked callback keeps only its runner
    _drained(b)
    b.submit(order.append, "b-0")
    _drained(b)
    assert order == ["a-0", "b-0"]
    assert a._greenlet is not None and not a._greenlet.dead
    release.set()
    _drained(a)
    assert order == ["a-0", "b-0", "a-blocked-done", "a-after"]


def test_one_runner_serves_many_ready_dispatchers() -> None:
    many = [Dispatcher(f"fan-{i}") for i in range(200)]
    where: set[object] = set()
    done = Event()
    left = [len(many)]

    def call() -> None:
        where.add(gevent.getcurrent())
        left[0] -= 1
        if not left[0]:
            done.set()

    gevent.sleep(0)
    for d in many:
        d.submit(call)  # as the reader does: one delivery per channel in one hub turn
    assert done.wait(5)
    assert len(where) == 1  # one wake-up for all of them, not one greenlet each
    for d in many:
        d.stop()


def test_a_callback_that_stops_its_own_dispatcher_finishes(
        dispatchers: list[Dispatcher]) -> None:
    d = dispatchers[0]
    order: list[str] = []
    finished = Event()

    def closing() -> None:
        d.stop(spare=gevent.getcurrent())
        gevent.sleep(0.01)  # it may still block cooperatively
        order.append("closing-done")
        finished.set()

    d.submit(closing)
    d.submit(order.append, "dropped")
    assert finished.wait(5)
    d.submit(order.append, "after-stop")  # refused
    _drained(dispatchers[1])
    assert order == ["closing-done"]
    assert d.pending == 0


def test_stop_kills_the_runner_inside_a_callback_and_others_go_on(
        dispatchers: list[Dispatcher]) -> None:
    a, b = dispatchers[:2]
    started = Event()
    a.submit(lambda: (started.set(), Event().wait()))
    assert started.wait(5)
    runner = a._greenlet
    assert runner is not None
    a.stop()
    assert runner.dead and a._greenlet is None
    ran = Event()
    b.submit(ran.set)
    assert ran.wait(5)


def test_stop_with_drain_runs_what_is_queued(dispatchers: list[Dispatcher]) -> None:
    d = dispatchers[0]
    order: list[int] = []
    for i in range(10):
        d.submit(order.append, i)
    d.stop(drain=True)
    d.submit(order.append, 99)  # refused
    _drained(dispatchers[1])
    assert order == list(range(10))


def test_discard_drops_only_the_chosen_calls(dispatchers: list[Dispatcher]) -> None:
    d = dispatchers[0]
    order: list[object] = []
    release = Event()
    d.submit(release.wait)
    gevent.sleep(0)  # the runner is inside release.wait()

    def unwanted(x: object) -> None:
        order.append(("unwanted", x))

    for i in range(4):
        d.submit(order.append if i % 2 else unwanted, i)
    assert d.discard(lambda fn: fn is unwanted) == 2
    release.set()
    _drained(d)
    assert order == [1, 3]


def test_idle_runners_end() -> None:
    d = Dispatcher("short-lived")
    _drained(d)
    # the idle timeout itself is what is tested: a runner ends between one and two
    # IDLE_SECONDS after it parked (its timer ticks every IDLE_SECONDS)
    deadline = time.monotonic() + 2 * _Scheduler.IDLE_SECONDS + 1.0
    while _live_runners() and time.monotonic() < deadline:
        gevent.sleep(0.05)
    assert _live_runners() == []
    _drained(d)  # and a new one starts on demand
    d.stop()


def test_backlog_warning_still_fires_once(caplog: pytest.LogCaptureFixture,
                                          dispatchers: list[Dispatcher]) -> None:
    d = dispatchers[0]
    d.warn_at = 5
    release = Event()
    d.submit(release.wait)
    for i in range(10):
        d.submit(int, i)
    assert [r for r in caplog.records if "calls wait for the callbacks" in r.getMessage()]
    assert d.warn_at == 0
    release.set()
    _drained(d)
