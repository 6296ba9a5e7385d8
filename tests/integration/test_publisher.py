"""geamqp.Publisher: worker-pool publishing, each caller blocked only on its own confirm."""

from __future__ import annotations

from collections.abc import Iterator

import gevent
import pytest
from gevent.pool import Pool
from support.broker import BrokerEndpoint

import geamqp


@pytest.fixture
def conn(broker: BrokerEndpoint) -> Iterator[geamqp.Connection]:
    connection = geamqp.connect(broker.url(), name="test-publisher")
    yield connection
    connection.close()


def _drain(conn: geamqp.Connection, queue: str) -> list[bytes]:
    ch = conn.channel()
    bodies = []
    while True:
        _, _, body = ch.basic_get(queue, auto_ack=True)
        if body is None:
            return bodies
        bodies.append(body)


def test_500_greenlets_publish_each_confirmed_exactly_once(conn: geamqp.Connection,
                                                           unique_name: str) -> None:
    setup = conn.channel()
    queue = setup.queue_declare(unique_name, exclusive=True).queue
    confirmed: list[bytes] = []
    with geamqp.Publisher(conn, channels=4, window=256) as publisher:

        def worker(n: int) -> None:
            for i in range(20):
                body = b"%d-%d" % (n, i)
                publisher.publish("", queue, body)  # returns only once confirmed
                confirmed.append(body)

        pool = Pool(500)
        for n in range(500):
            pool.spawn(worker, n)
        pool.join(timeout=50, raise_error=True)
    assert len(confirmed) == 10_000 and len(set(confirmed)) == 10_000
    received = _drain(conn, queue)
    assert sorted(received) == sorted(confirmed)


def test_window_bounds_outstanding_publishes(conn: geamqp.Connection, unique_name: str) -> None:
    queue = conn.channel().queue_declare(unique_name, exclusive=True).queue
    publisher = geamqp.Publisher(conn, channels=2, window=5)
    peak = 0
    link = conn._link
    original = link.publish  # the engine's publish, as the channel's hot path calls it

    def spy(*args: object, **kwargs: object) -> int:
        nonlocal peak
        in_flight = sum(len(ch._confirms) for ch in publisher._slots if ch is not None)
        peak = max(peak, in_flight + 1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    link.publish = spy
    greenlets = [gevent.spawn(publisher.publish, "", queue, b"x") for _ in range(100)]
    gevent.joinall(greenlets, timeout=20, raise_error=True)
    assert peak == 5  # never more than the window in flight, and the window was used
    publisher.close()


def test_a_broker_closed_channel_is_replaced(conn: geamqp.Connection, unique_name: str) -> None:
    queue = conn.channel().queue_declare(unique_name, exclusive=True).queue
    with geamqp.Publisher(conn, channels=1) as publisher:
        with pytest.raises(geamqp.ChannelClosedByBroker) as info:
            publisher.publish("no-such-exchange-" + unique_name, "", b"lost")
        assert info.value.reply_code == 404
        publisher.publish("", queue, b"after")  # a fresh channel takes over
    assert _drain(conn, queue) == [b"after"]


def test_unroutable_and_closed_publishes_raise_in_the_caller(conn: geamqp.Connection) -> None:
    publisher = geamqp.Publisher(conn)
    with pytest.raises(geamqp.UnroutableError):
        publisher.publish("amq.direct", "nobody-is-bound-here", b"x", mandatory=True)
    publisher.close()
    with pytest.raises(geamqp.PublisherClosed):
        publisher.publish("", "anything", b"x")
