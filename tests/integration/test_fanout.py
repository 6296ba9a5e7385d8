"""High fan-out and worker pools, against the real broker.

What a user running thousands of consumers in one gevent process relies on:

- a `ConsumerFleet` of 10,000 consumers (one queue each, 20 connections x 25
  channels) keeps every consumer fed: none starves behind the others;
- a consumer that stops acking holds at most `prefetch_count` messages, in the
  broker's books and in this process, however many wait in its queue;
- idle connections cost (next to) no CPU, heartbeats included;
- `concurrency=N` runs up to N callbacks at once, and the default of 1 keeps
  delivery order;
- cancelling a consumer, closing a channel or losing a connection releases
  everything held for it: memory, dispatcher greenlets, callback pools.

Waiting is done on events (callbacks setting them) or on bounded polls of
state (broker counters, live greenlets); the one `gevent.sleep` that is not a
poll is the idle period whose CPU cost is the measurement.
"""

from __future__ import annotations

import gc
import resource
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import gevent
import pytest
from gevent.event import Event
from gevent.pool import Pool
from support import broker as broker_ctl
from support.broker import BrokerEndpoint

import geamqp
from geamqp.consumer import Consumer, Dispatcher
from geamqp.fleet import ConsumerFleet

# The target is 10,000 consumers over 20 connections x 25 channels.
# Declaring 10,000 queues takes this 2-core broker about 10 s and consuming
# from all of them about 6 s, so the full count fits in CI (~40 s in all).
FLEET_CONNECTIONS = 20
FLEET_CHANNELS = 25
FLEET_CONSUMERS = 10_000
FLEET_ROUNDS = 8  # one message to every queue per round
QUEUE_TTL_MS = 10 * 60 * 1000  # x-expires: a crashed run's queues vanish on their own


class Tally:
    """A count that greenlets can wait on reaching a given value."""

    def __init__(self) -> None:
        self.value = 0
        self._waiters: dict[int, Event] = {}

    def add(self, n: int = 1) -> None:
        self.value += n
        for target, event in list(self._waiters.items()):
            if self.value >= target:
                event.set()
                del self._waiters[target]

    def wait_for(self, target: int, timeout: float) -> None:
        if self.value >= target:
            return
        event = self._waiters.setdefault(target, Event())
        if not event.wait(timeout):
            raise TimeoutError(f"count stuck at {self.value}, waited for {target}")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _traced_bytes() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


@contextmanager
def _tracing() -> Iterator[None]:
    gc.collect()
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def _on_queues(url: str, names: Sequence[str], action: Callable[[geamqp.Channel, str], object],
               tag: str) -> None:
    """Run `action(channel, name)` for every queue, pipelined over a few channels."""
    conn = geamqp.connect(url, name=f"{tag}-admin", recover=False)
    try:
        channels = [conn.channel() for _ in range(10)]
        Pool(200).map(lambda i: action(channels[i % 10], names[i]), range(len(names)))
    finally:
        conn.close()


def _declare_queues(url: str, names: Sequence[str], tag: str) -> None:
    _on_queues(url, names, lambda ch, name: ch.queue_declare(
        name, arguments={"x-expires": QUEUE_TTL_MS}), tag)


def _delete_queues(url: str, names: Sequence[str], tag: str) -> None:
    _on_queues(url, names, lambda ch, name: ch.queue_delete(name), tag)


def _prefill(channel: geamqp.Channel, queue: str, bodies: Sequence[bytes]) -> None:
    """Publish `bodies` to `queue` and wait until the broker has confirmed all of them."""
    channel.confirm_delivery()
    for body in bodies:
        channel.basic_publish("", queue, body, wait=False)
    assert channel.wait_for_confirms(timeout=60)


# --------------------------------------------------------------------------- fan-out


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_fleet_of_10000_consumers_keeps_every_consumer_receiving(
        broker: BrokerEndpoint, unique_name: str) -> None:
    n = FLEET_CONSUMERS
    names = [f"{unique_name}-{i}" for i in range(n)]
    counts = [0] * n
    total = Tally()

    def consumer_of(index: int) -> geamqp.consumer.OnMessage:
        def on_message(channel: geamqp.Channel, method: object, _props: object,
                       _body: bytes) -> None:
            counts[index] += 1
            channel.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]
            total.add()
        return on_message

    fleet = None
    publisher = None
    try:
        _declare_queues(broker.url(), names, unique_name)
        fleet = ConsumerFleet(broker.url(), connections=FLEET_CONNECTIONS,
                              channels_per_connection=FLEET_CHANNELS, prefetch_count=10,
                              name=unique_name)
        Pool(200).map(lambda i: fleet.basic_consume(names[i], consumer_of(i)), range(n))
        assert fleet.consumer_count == n
        assert len(fleet.connections) == FLEET_CONNECTIONS
        assert len(fleet.channels) == FLEET_CONNECTIONS * FLEET_CHANNELS
        per_channel = {len(ch.consumer_tags) for ch in fleet.channels}
        assert per_channel == {n // (FLEET_CONNECTIONS * FLEET_CHANNELS)}, per_channel

        # A steady stream: one message to every queue per round, at most two
        # rounds ahead of what the consumers have taken.
        conn = geamqp.connect(broker.url(), name=f"{unique_name}-publisher", recover=False)
        publisher = conn
        channel = conn.channel()

        def publish_rounds() -> None:
            for round_ in range(FLEET_ROUNDS):
                total.wait_for((round_ - 2) * n, timeout=60)
                for name in names:
                    channel.basic_publish("", name, b"tick")

        streaming = gevent.spawn(publish_rounds)
        try:
            total.wait_for(2 * n, timeout=60)
            start, at_start = time.monotonic(), list(counts)
            total.wait_for((FLEET_ROUNDS - 1) * n, timeout=90)
            window, at_end = time.monotonic() - start, list(counts)
            total.wait_for(FLEET_ROUNDS * n, timeout=60)
            streaming.get(timeout=10)
        finally:
            streaming.kill()

        rates = sorted((b - a) / window for a, b in zip(at_start, at_end, strict=True))
        median = statistics.median(rates)
        assert rates[0] > 0, "a consumer received nothing while the stream flowed"
        assert rates[0] >= median / 2, (
            f"slowest consumer {rates[0]:.2f} msg/s, median {median:.2f} msg/s")
        assert set(counts) == {FLEET_ROUNDS}  # nothing lost, nothing delivered twice
    finally:
        if publisher is not None:
            publisher.close()
        if fleet is not None:
            fleet.close()
        _delete_queues(broker.url(), names, unique_name)


# --------------------------------------------------------------------------- prefetch bounds memory


@pytest.mark.parametrize("stuck", ["returns-without-ack", "callback-blocks"])
def test_unacking_consumer_holds_only_its_prefetch(broker: BrokerEndpoint, unique_name: str,
                                                   stuck: str) -> None:
    prefetch, waiting = 10, 10_000
    body = b"m" * 1024  # 10,000 buffered deliveries would be > 10 MiB
    conn = geamqp.connect(broker.url(), name=unique_name, recover=False)
    gate = Event()  # releases blocked callbacks at the end
    try:
        channel = conn.channel()
        channel.queue_declare(unique_name, arguments={"x-expires": QUEUE_TTL_MS})
        _prefill(conn.channel(), unique_name, [body] * (prefetch + waiting))
        channel.basic_qos(prefetch_count=prefetch)
        received = Tally()

        def on_message(_ch: geamqp.Channel, _method: object, _props: object,
                       _body: bytes) -> None:
            received.add()
            if stuck == "callback-blocks":
                gate.wait()

        with _tracing():
            before = _traced_bytes()
            channel.basic_consume(unique_name, on_message)
            stats = broker_ctl.wait_until(
                lambda: (s := broker_ctl.list_queue(unique_name)) is not None
                and s.messages_unacknowledged == prefetch and s, timeout=30,
                what=f"{prefetch} unacked")
            assert stats.messages_ready == waiting
            # A round trip on the consuming channel: every delivery the broker
            # sent before its reply has been read by now.
            assert channel.queue_declare(unique_name, passive=True).message_count == waiting
            held = _traced_bytes() - before
            for _ in range(50):  # the queue keeps waiting; nothing more arrives
                assert channel.queue_declare(unique_name, passive=True).message_count == waiting
            later = _traced_bytes() - before

        in_callbacks = 1 if stuck == "callback-blocks" else prefetch
        assert received.value == in_callbacks
        assert channel._dispatcher.pending == prefetch - in_callbacks
        assert held < 256 * 1024, f"{held} bytes held for a prefetch of {prefetch}"
        assert later - held < 32 * 1024, f"grew from {held} to {later} bytes while idle"
    finally:
        gate.set()
        try:
            conn.channel().queue_delete(unique_name)
        finally:
            conn.close()


# --------------------------------------------------------------------------- idle CPU


def test_idle_connections_cost_next_to_no_cpu(broker: BrokerEndpoint, unique_name: str) -> None:
    conns: list[geamqp.Connection] = []
    try:
        for i in range(20):
            conn = geamqp.connect(f"{broker.url()}?heartbeat=2", name=f"{unique_name}-{i}",
                                  recover=False)
            conns.append(conn)
            channel = conn.channel()
            queue = channel.queue_declare("", exclusive=True).queue
            channel.basic_consume(queue, lambda *_: None)
        assert {c._link.engine.heartbeat for c in conns} == {2}

        # Objects left by earlier tests are not ours to collect during the measurement.
        gc.collect()
        gc.freeze()
        try:
            cpu_before, wall_before = _cpu_seconds(), time.monotonic()
            gevent.sleep(5.0)  # the measurement: five seconds of idling, heartbeats included
            cpu, wall = _cpu_seconds() - cpu_before, time.monotonic() - wall_before
        finally:
            gc.unfreeze()

        assert wall >= 5.0
        assert cpu < 0.05, f"{cpu * 1000:.1f} ms of CPU in {wall:.1f} s idle"
        # heartbeat=2: a connection that had stopped beating would be gone by now
        assert all(c.is_open for c in conns)
        assert len(broker_ctl.find_connections(unique_name)) == 20
    finally:
        for conn in conns:
            conn.close()


# --------------------------------------------------------------------------- concurrency=N


def _consume_all(conn: geamqp.Connection, queue: str, n: int,
                 **consume_options: object) -> tuple[int, list[int]]:
    """Consume `n` numbered messages with callbacks that yield; return the most
    callbacks seen running at once and the order in which they finished."""
    channel = conn.channel()
    channel.basic_qos(prefetch_count=50)
    active = 0
    most = 0
    order: list[int] = []
    done = Tally()

    def on_message(ch: geamqp.Channel, method: object, _props: object, body: bytes) -> None:
        nonlocal active, most
        active += 1
        most = max(most, active)
        try:
            gevent.sleep(0.005)  # work that blocks cooperatively
            order.append(int(body))
            ch.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]
        finally:
            active -= 1
        done.add()

    channel.basic_consume(queue, on_message, **consume_options)  # type: ignore[arg-type]
    done.wait_for(n, timeout=30)
    return most, order


def test_concurrency_n_runs_up_to_n_callbacks_at_once(broker: BrokerEndpoint,
                                                       unique_name: str) -> None:
    n = 200
    with geamqp.connect(broker.url(), name=unique_name, recover=False) as conn:
        ch = conn.channel()
        ch.queue_declare(unique_name, arguments={"x-expires": QUEUE_TTL_MS})
        try:
            _prefill(conn.channel(), unique_name, [str(i).encode() for i in range(n)])
            most, order = _consume_all(conn, unique_name, n, concurrency=8)
            assert most == 8
            assert sorted(order) == list(range(n))
        finally:
            ch.queue_delete(unique_name)


def test_default_concurrency_runs_one_callback_at_a_time_in_order(
        broker: BrokerEndpoint, unique_name: str) -> None:
    n = 200
    with geamqp.connect(broker.url(), name=unique_name, recover=False) as conn:
        ch = conn.channel()
        ch.queue_declare(unique_name, arguments={"x-expires": QUEUE_TTL_MS})
        try:
            _prefill(conn.channel(), unique_name, [str(i).encode() for i in range(n)])
            most, order = _consume_all(conn, unique_name, n)
            assert most == 1
            assert order == list(range(n))
        finally:
            ch.queue_delete(unique_name)


# --------------------------------------------------------------------------- releasing


def _live_greenlets_run_by(*owners: object) -> set[gevent.Greenlet]:
    """Live greenlets running a method of one of `owners`, or a callback of a
    consumer of one of the channels among them."""
    found = set()
    for obj in gc.get_objects():
        if not isinstance(obj, gevent.Greenlet) or obj.dead:
            continue
        owner = getattr(obj.__dict__.get("_run"), "__self__", None)
        if owner is None:
            continue
        if any(owner is o for o in owners) or (
                isinstance(owner, Consumer) and any(owner.channel is o for o in owners)):
            found.add(obj)
    # a dispatcher has a (shared) runner greenlet only while it runs its calls
    found.update(o._greenlet for o in owners
                 if isinstance(o, Dispatcher) and o._greenlet is not None)
    return found


def _channel_greenlets(channel: geamqp.Channel) -> set[gevent.Greenlet]:
    """The channel's dispatcher and its consumers' callback greenlets."""
    return _live_greenlets_run_by(channel, channel._dispatcher)


def _connection_greenlets(conn: geamqp.Connection,
                          channels: Sequence[geamqp.Channel]) -> set[gevent.Greenlet]:
    """Everything geamqp runs for `conn`: transport (reader, writer, heartbeat),
    hub-callback runner, dispatchers, callback pools."""
    return _live_greenlets_run_by(conn, conn._link.transport, conn._bridge, conn._dispatcher,
                                  *channels, *(channel._dispatcher for channel in channels))


def _wait_until_gone(greenlets: Callable[[], set[gevent.Greenlet]],
                     timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while True:  # a bounded poll: closing hands the last joins to a greenlet of its own
        left = greenlets()
        if not left:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"greenlets still alive after close: {sorted(map(repr, left))}")
        gevent.sleep(0.01)


def test_cancelling_10000_consumers_gives_their_memory_back(broker: BrokerEndpoint,
                                                            unique_name: str) -> None:
    with geamqp.connect(broker.url(), name=unique_name, recover=False) as conn:
        channel = conn.channel()
        channel.queue_declare(unique_name, arguments={"x-expires": QUEUE_TTL_MS})
        try:
            def open_and_cancel(times: int) -> None:
                for _ in range(times):
                    channel.basic_cancel(channel.basic_consume(unique_name, lambda *_: None))

            open_and_cancel(200)  # warm caches (method codecs, tag formatting)
            with _tracing():
                before = _traced_bytes()
                open_and_cancel(10_000)
                # the dispatcher has run every cancelled consumer's drain
                assert channel.queue_declare(unique_name, passive=True).consumer_count == 0
                after = _traced_bytes()
            assert channel.consumer_tags == []
            assert channel._dispatcher.pending == 0
            # 10,000 leaked consumers would be megabytes
            assert after - before < 100 * 1024, f"{after - before} bytes kept"
        finally:
            channel.queue_delete(unique_name)


def _consuming_channel(conn: geamqp.Connection, queue: str, concurrency: int,
                       blocked: bool) -> geamqp.Channel:
    """A channel with one consumer that has had deliveries: its callbacks have
    all returned, or (`blocked`) `concurrency` of them are stuck until the
    channel goes away, with more deliveries waiting behind them."""
    setup = conn.channel()
    setup.queue_declare(queue, arguments={"x-expires": QUEUE_TTL_MS})
    _prefill(setup, queue, [b"x"] * 20)
    started = Tally()
    forever = Event()

    def on_message(channel: geamqp.Channel, method: object, *_: object) -> None:
        started.add()
        if blocked:
            forever.wait()
        channel.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]

    channel = conn.channel()
    channel.basic_qos(prefetch_count=concurrency + 2)
    channel.basic_consume(queue, on_message, concurrency=concurrency)
    started.wait_for(concurrency if blocked else 20, timeout=10)
    dispatcher = channel._dispatcher._greenlet
    if blocked:  # a runner is inside its callback (or waiting for a pool slot)
        assert dispatcher is not None and not dispatcher.dead
    else:  # everything ran: an idle dispatcher keeps no greenlet
        wait_for_idle = time.monotonic() + 3
        while channel._dispatcher._greenlet is not None and time.monotonic() < wait_for_idle:
            gevent.sleep(0.01)
        assert channel._dispatcher._greenlet is None
    return channel


CLOSE_CASES = [
    pytest.param(1, False, id="serial-idle"),
    pytest.param(4, False, id="pool-idle"),
    pytest.param(1, True, id="serial-blocked"),
    pytest.param(4, True, id="pool-blocked"),
]


@pytest.mark.parametrize(("concurrency", "blocked"), CLOSE_CASES)
def test_closing_a_channel_stops_its_dispatcher_and_callbacks(
        broker: BrokerEndpoint, unique_name: str, concurrency: int, blocked: bool) -> None:
    with geamqp.connect(broker.url(), name=unique_name, recover=False) as conn:
        try:
            channel = _consuming_channel(conn, unique_name, concurrency, blocked)
            dispatcher = channel._dispatcher._greenlet
            closed = Event()
            channel.add_on_close_callback(lambda *_: closed.set())
            channel.close()
            assert closed.wait(timeout=3), "the channel's close callback did not run"
            if dispatcher is not None:  # the runner stuck in a callback was killed
                dispatcher.join(timeout=3)
                assert dispatcher.dead
            assert channel._dispatcher._greenlet is None
            assert channel.consumer_tags == []
            _wait_until_gone(lambda: _channel_greenlets(channel))
            assert conn.is_open
        finally:
            conn.channel().queue_delete(unique_name)


@pytest.mark.parametrize(("concurrency", "blocked"), [
    pytest.param(4, False, id="pool-idle"),
    pytest.param(1, True, id="serial-blocked"),
    pytest.param(4, True, id="pool-blocked"),
])
@pytest.mark.parametrize("ending", ["client-close", "broker-close", "socket-reset"])
def test_ending_a_connection_leaves_no_geamqp_greenlets(
        broker: BrokerEndpoint, proxy: object, unique_name: str, ending: str,
        concurrency: int, blocked: bool) -> None:
    from support.faultproxy import FaultProxy

    assert isinstance(proxy, FaultProxy)
    conn = geamqp.connect(f"{proxy.url()}?heartbeat=2", name=unique_name, recover=False)
    closed = Event()
    conn.add_on_close_callback(lambda *_: closed.set())
    try:
        channel = _consuming_channel(conn, unique_name, concurrency, blocked)
        dispatcher = channel._dispatcher._greenlet
        # reader, writer, heartbeat, the dispatcher's runner while it is inside a
        # callback (the hub-callback runner starts only when a thread first hands
        # the connection work)
        assert len(_connection_greenlets(conn, [channel])) >= (4 if blocked else 3)

        if ending == "client-close":
            conn.close()
        elif ending == "broker-close":
            broker_ctl.close_connection(unique_name)
        else:
            proxy.reset_all()
        assert closed.wait(timeout=10)

        if dispatcher is not None:
            dispatcher.join(timeout=3)
            assert dispatcher.dead
        assert not channel.is_open and channel.consumer_tags == []
        _wait_until_gone(lambda: _connection_greenlets(conn, [channel]))
    finally:
        conn.close()
        with geamqp.connect(broker.url(), recover=False) as admin:
            admin.channel().queue_delete(unique_name)
