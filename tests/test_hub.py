"""Callbacks from other threads while the hub is busy (no broker needed).

A hub that is dispatching a long queue never polls its loop, so the loop's
thread-safe wake-up alone would leave a thread's callback waiting until the
queue drains or gevent's switch interval runs out. The dispatcher checks for
waiting thread callbacks after every message and lets their runner go first.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import gevent
import pytest
from gevent.event import Event

from geamqp._hub import HubBridge, cooperate, waiting_bridges
from geamqp.consumer import Dispatcher
from geamqp.exceptions import ConnectionClosed

HANDED_OVER_AT = 10
TASKS = 1000


@pytest.fixture
def bridges() -> Iterator[list[HubBridge]]:
    made = [HubBridge(owner=None), HubBridge(owner=None)]
    yield made
    for bridge in made:
        bridge.close(ConnectionClosed(320, "test over"))
    gevent.joinall([b._runner for b in made if b._runner is not None], timeout=5,
                   raise_error=True)


def _dispatch_while_a_thread_hands_over(bridges: list[HubBridge]) -> list[object]:
    """TASKS callbacks in one dispatcher; during task HANDED_OVER_AT an OS thread
    hands one callback to each bridge. Returns the order things ran in."""
    dispatcher = Dispatcher("test-dispatcher")
    order: list[object] = []
    finished = Event()
    handed_over = threading.Event()

    def from_thread() -> None:
        for n, bridge in enumerate(bridges):
            bridge.add_callback_threadsafe(lambda n=n: order.append(f"thread-{n}"))
        handed_over.set()

    def task(i: int) -> None:
        order.append(i)
        if i == HANDED_OVER_AT:
            worker = threading.Thread(target=from_thread)
            worker.start()
            # Blocks the hub's OS thread (releasing the GIL) until the thread has
            # handed its callbacks over: no yield to the hub in between.
            assert handed_over.wait(5)
            worker.join(5)
        if i == TASKS - 1:
            finished.set()

    # Start the runners first (as a connection that has seen threads before).
    for bridge in bridges:
        bridge.add_callback_threadsafe(lambda: None)
    gevent.sleep(0)
    try:
        for i in range(TASKS):
            dispatcher.submit(task, i)
        assert finished.wait(10)
    finally:
        dispatcher.stop()
    return order


@pytest.mark.timeout(20)
def test_thread_callback_runs_right_after_the_current_message(bridges: list[HubBridge]) -> None:
    order = _dispatch_while_a_thread_hands_over(bridges[:1])
    assert order.index("thread-0") == HANDED_OVER_AT + 1  # not after the next 64, or 1000
    assert [x for x in order if isinstance(x, int)] == list(range(TASKS))


@pytest.mark.timeout(20)
def test_every_connection_of_the_hub_gets_its_thread_callbacks_run(
        bridges: list[HubBridge]) -> None:
    order = _dispatch_while_a_thread_hands_over(bridges)
    assert order[HANDED_OVER_AT + 1:HANDED_OVER_AT + 3] == ["thread-0", "thread-1"]


@pytest.mark.timeout(20)
def test_cooperate_without_waiting_callbacks_is_a_plain_yield() -> None:
    ran = []
    other = gevent.spawn(ran.append, "other")
    cooperate(waiting_bridges())
    assert ran == ["other"]
    other.join()


class _Interrupt(Exception):
    pass


@pytest.mark.timeout(20)
def test_a_greenlet_interrupted_while_thread_callbacks_run_is_not_switched_into_later(
        bridges: list[HubBridge]) -> None:
    # A kill or a gevent.Timeout may reach a greenlet while cooperate() lets the
    # runner go first; the greenlet then carries on elsewhere, and the switch
    # cooperate() queued to resume it must not land in that later wait.
    bridge = bridges[0]
    bridge.add_callback_threadsafe(lambda: None)  # start the runner
    gevent.sleep(0)
    ran: list[str] = []
    waiting = bridge._waiting
    outcome: list[str] = []

    def body() -> None:
        worker = threading.Thread(
            target=bridge.add_callback_threadsafe, args=(lambda: ran.append("thread"),))
        worker.start()
        worker.join(5)
        assert waiting  # listed by the thread
        me = gevent.getcurrent()
        gevent.get_hub().loop.run_callback(me.throw, _Interrupt())  # ahead of the resume
        try:
            cooperate(waiting)
        except _Interrupt:
            outcome.append("interrupted")
        gevent.sleep(0.05)  # a stale switch would end this wait early, or raise
        outcome.append("slept")

    glet = gevent.spawn(body)
    glet.join(5)
    assert glet.successful(), glet.exception
    assert ran == ["thread"]
    assert outcome == ["interrupted", "slept"]
