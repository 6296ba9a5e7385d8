"""`ConsumerFleet` never loses a consumer silently (issue 12 point 3), against the fake
broker: a recovered channel's consumers come back, a channel closed for good has its
consumers moved, a consumer the broker ends is reported failed."""

from __future__ import annotations

from collections.abc import Iterator

import gevent
import pytest
from fakebroker import WAIT, FakeBroker
from pamqp import commands as C
from peer_helpers import Signals

from geamqp import ConsumerFleet

pytestmark = pytest.mark.timeout(20)

ACK_TIMEOUT = "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out"


@pytest.fixture
def fleet(broker: FakeBroker) -> Iterator[ConsumerFleet]:
    fleet = ConsumerFleet(broker.params(), connections=1, channels_per_connection=2,
                          prefetch_count=5, name="fleet-test")
    yield fleet
    with gevent.Timeout(WAIT * 2):
        fleet.close()


def _wait_stats(broker: FakeBroker, fleet: ConsumerFleet, **expected: int) -> None:
    def matches() -> bool:
        stats = fleet.stats()
        return all(stats[k] == v for k, v in expected.items())
    deadline = gevent.get_hub().loop.now() + WAIT * 2
    while not matches():
        assert gevent.get_hub().loop.now() < deadline, f"stats {fleet.stats()} != {expected}"
        gevent.sleep(0.02)


def _consumers(fleet: ConsumerFleet, signals: Signals, n: int) -> list[str]:
    return [fleet.basic_consume(f"q{i}", lambda c, m, p, b: signals.add("msg", b))
            for i in range(n)]


def test_stats_count_live_consumers(broker: FakeBroker, fleet: ConsumerFleet) -> None:
    _consumers(fleet, Signals(), 4)
    stats = fleet.stats()
    assert (stats["live"], stats["moving"], stats["failed"]) == (4, 0, 0)
    assert stats["channels_open"] == 2


def test_a_recovered_channel_brings_its_consumers_back(
        broker: FakeBroker, fleet: ConsumerFleet) -> None:
    tags = _consumers(fleet, Signals(), 4)
    on_one = [t for t in tags if fleet._owner[t].channel_number == 1]
    mark = broker.mark()
    broker.peer(0).close_channel(1, 406, ACK_TIMEOUT)
    broker.wait_for(C.Channel.CloseOk, conn=0, channel=1, after=mark)
    _wait_stats(broker, fleet, live=4, moving=0, failed=0, channels_open=2)
    consumed = {r.method.consumer_tag
                for r in broker.frames(C.Basic.Consume, conn=0, channel=1, after=mark)}
    assert consumed == set(on_one)


def test_a_channel_closed_for_good_has_its_consumers_moved(
        broker: FakeBroker, fleet: ConsumerFleet) -> None:
    signals = Signals()
    fleet.add_on_consumer_failed_callback(signals.callback("failed"))
    tags = _consumers(fleet, signals, 4)
    on_two = [t for t in tags if fleet._owner[t].channel_number == 2]
    mark = broker.mark()
    broker.peer(0).close_channel(2, 403, "ACCESS_REFUSED - fake")
    broker.wait_for(C.Channel.CloseOk, conn=0, channel=2, after=mark)
    _wait_stats(broker, fleet, live=4, moving=0, failed=0)
    moved = {r.method.consumer_tag for r in broker.frames(C.Basic.Consume, conn=0, after=mark)}
    assert moved == set(on_two)
    assert signals.count("failed") == 0
    assert sorted(len(ch.consumer_tags) for ch in fleet.channels) == [2, 2]


def test_a_consumer_the_broker_ends_is_reported_failed(
        broker: FakeBroker, fleet: ConsumerFleet) -> None:
    signals = Signals()
    fleet.add_on_consumer_failed_callback(signals.callback("failed"))
    tags = _consumers(fleet, signals, 2)
    channel = fleet._owner[tags[0]].channel_number
    broker.peer(0).send(C.Basic.Cancel(consumer_tag=tags[0], nowait=True), channel)
    tag, queue, _error = signals.wait("failed")
    assert (tag, queue) == (tags[0], "q0")
    _wait_stats(broker, fleet, live=1, moving=0, failed=1)
    assert fleet.failed_consumers() == {tags[0]: ("q0", None)}


def test_a_consumer_that_cannot_move_is_reported_failed(
        broker: FakeBroker, fleet: ConsumerFleet, monkeypatch: pytest.MonkeyPatch) -> None:
    import geamqp.fleet as fleet_module

    monkeypatch.setattr(fleet_module, "MOVE_ATTEMPTS", 2)
    monkeypatch.setattr(fleet_module, "MOVE_DELAY_MIN", 0.01)
    signals = Signals()
    fleet.add_on_consumer_failed_callback(signals.callback("failed"))
    tags = _consumers(fleet, signals, 2)
    victim = next(t for t in tags if fleet._owner[t].channel_number == 2)
    # the queue of the moved consumer is gone: every consume of it is refused
    queue = "q1" if victim == tags[1] else "q0"
    broker.on(C.Basic.Consume, lambda peer, rec: peer.close_channel(
        rec.channel, 403, "ACCESS_REFUSED - fake", rec.method), where=lambda m: m.queue == queue)
    broker.peer(0).close_channel(2, 403, "ACCESS_REFUSED - fake")
    tag, failed_queue, error = signals.wait("failed", timeout=WAIT * 3)
    assert (tag, failed_queue) == (victim, queue) and error is not None
    assert fleet.stats()["failed"] == 1
