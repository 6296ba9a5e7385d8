"""Failover on a real 3-node cluster: quorum queues, a node killed, frozen or stopped.

Each test starts from three running nodes and leaves three running nodes (the
``three_nodes`` fixture restarts and rejoins what a test killed, in its teardown). Clients
connect with ``recover=True``, the three nodes as the host list and heartbeats of 2 s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

import gevent
import pytest
from traffic import QUORUM, Consumer, Ledger, Publisher, check_nothing_lost, wait_until

import geamqp

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(150)]


def _connect(order: str, cluster: ModuleType, query: dict[str, object] | None = None,
             **kwargs: object) -> geamqp.Connection:
    conn = cluster.connect_in_order(cluster.urls(order, **(query or {})), recover=True,
                                    **kwargs)
    assert conn.params.port == cluster.PORTS[order[0]]
    return conn


def _node(conn: geamqp.Connection, cluster: ModuleType) -> str:
    return str(cluster.node_of_port(conn.params.port))


class Losses:
    """Counts connection losses and recoveries of a connection, with their times."""

    def __init__(self, conn: geamqp.Connection) -> None:
        self.lost: list[float] = []
        self.recovered: list[float] = []
        conn.add_on_connection_lost_callback(lambda *_: self.lost.append(time.monotonic()))
        conn.add_on_recovered_callback(lambda *_: self.recovered.append(time.monotonic()))


@dataclass
class Traffic:
    """A confirmed publisher and a manual-ack consumer, each on its own connection."""

    ledger: Ledger
    publisher: Publisher
    pub_conn: geamqp.Connection
    sub_conn: geamqp.Connection
    pub_losses: Losses
    sub_losses: Losses


@contextmanager
def _traffic(cluster: ModuleType, queue: str, order: str = "abc",
             query: dict[str, object] | None = None, confirm_timeout: float = 30.0,
             **pub_kwargs: object) -> Iterator[Traffic]:
    """Both connections on node order[0]; yields once 50 messages have gone through."""
    conns: list[geamqp.Connection] = []
    try:
        conns.append(_connect(order, cluster, query, **pub_kwargs))
        conns.append(_connect(order, cluster, query))
        ledger = Ledger()
        publisher = Publisher(conns[0], queue, ledger, confirm_timeout=confirm_timeout)
        traffic = Traffic(ledger, publisher, conns[0], conns[1], Losses(conns[0]),
                          Losses(conns[1]))
        Consumer(conns[1], queue, ledger)
        wait_until(lambda: len(ledger.deliveries) >= 50, 20, "traffic flowing")
        yield traffic
    finally:
        for conn in conns:
            conn.close()


def _run_kill(cluster: ModuleType, queue: str, republish: bool) -> tuple[Ledger, float]:
    """Publisher and consumer both on node a (the leader's node); kill a; restart it once
    both have recovered elsewhere; publish on until traffic has flowed again."""
    with _traffic(cluster, queue, republish_unconfirmed=republish) as t:
        target = cluster.pid("a")
        wait_until(lambda: t.publisher.outstanding, 5, "publishes in flight", interval=0.0005)
        killed_at = time.monotonic()
        cluster.kill_pid(target)
        wait_until(lambda: t.pub_losses.recovered and t.sub_losses.recovered, 30,
                   "both connections recovered on a survivor")
        assert _node(t.pub_conn, cluster) != "a" and _node(t.sub_conn, cluster) != "a"
        # Without waiting for node a, publishing resumes only when the recovered channel
        # did not cache the dead leader (see test_publishing_resumes_without_the_dead_node);
        # bring a back so that the test checks loss-freedom and not that broker fact.
        cluster.start()
        after_restart = t.publisher.next
        wait_until(lambda: sum(n >= after_restart for n in t.ledger.confirmed()) >= 100, 60,
                   "100 confirmed publishes after the restart")
        t.publisher.stop()
        assert len(t.pub_losses.lost) == 1 and len(t.sub_losses.lost) == 1
        return t.ledger, killed_at


@pytest.mark.slow
def test_node_killed_under_confirmed_publisher_and_manual_ack_consumer(
        three_nodes: ModuleType, quorum_queue: str) -> None:
    ledger, _ = _run_kill(three_nodes, quorum_queue, republish=False)
    # A nack is the broker refusing the message in so many words (the quorum leader cached
    # by a fast-reconnected channel is dead): an outcome the user sees, never a silent loss.
    check_nothing_lost(ledger, allowed={"confirmed", "unknown", "nacked"})
    assert ledger.count("confirmed") > 100


@pytest.mark.slow
def test_node_killed_with_republish_unconfirmed(three_nodes: ModuleType,
                                                quorum_queue: str) -> None:
    ledger, _ = _run_kill(three_nodes, quorum_queue, republish=True)
    check_nothing_lost(ledger, allowed={"confirmed", "nacked"})
    assert ledger.in_flight_at_loss, "the kill should catch publishes in flight"
    republished = ledger.in_flight_at_loss
    assert {ledger.outcomes[n] for n in republished} <= {"confirmed", "nacked"}


def test_publishing_resumes_after_reopening_a_nacked_channel(three_nodes: ModuleType,
                                                             quorum_queue: str) -> None:
    """The cure, shown with the public API: after a fast reconnect the restored channel is
    nacked for as long as node a stays dead, while a fresh channel on the same connection
    publishes as soon as the survivors have elected a leader (0.2-0.3 s after the kill)."""
    conn = _connect("abc", three_nodes, recovery_delay_min=0.0, recovery_delay_max=0.01)
    try:
        losses = Losses(conn)
        channel = conn.channel()
        channel.confirm_delivery()
        channel.basic_publish("", quorum_queue, b"before")
        killed_at = time.monotonic()
        three_nodes.kill("a")
        wait_until(lambda: losses.recovered, 20, "recovery on a survivor")
        nacks = reopened = 0
        while True:
            assert time.monotonic() - killed_at < 2.0, f"not resumed: {nacks} nacks"
            try:
                channel.basic_publish("", quorum_queue, b"after")
                break
            except geamqp.NackError:
                nacks += 1
                channel.close()
                channel = conn.channel()
                channel.confirm_delivery()
                reopened += 1
                gevent.sleep(0.05)
        resumed = time.monotonic() - killed_at
        print(f"resumed {resumed:.3f} s after the kill; {nacks} nacks, {reopened} reopens")
    finally:
        conn.close()


def test_publishing_resumes_without_the_dead_node(three_nodes: ModuleType,
                                                  quorum_queue: str) -> None:
    """Goal of the issue: under 2 s from the loss to a confirmed publish on the same
    Channel object, node a still dead (nacks meanwhile are allowed). A zero back-off
    reconnects in ~20-80 ms, before the election (~0.25 s): the restored channel is
    nacked (the broker keeps the dead leader) until the supervisor reopens it
    (recovery.Supervisor.refresh_channel)."""
    conn = _connect("abc", three_nodes, recovery_delay_min=0.0, recovery_delay_max=0.01)
    try:
        channel = conn.channel()
        channel.confirm_delivery()
        channel.basic_publish("", quorum_queue, b"before")
        killed_at = time.monotonic()
        three_nodes.kill("a")
        while True:
            try:
                channel.basic_publish("", quorum_queue, b"after")
                break
            except geamqp.PublishOutcomeUnknown:
                continue
            except geamqp.NackError:
                assert time.monotonic() - killed_at < 2.0, "publishes nacked for 2 s"
                gevent.sleep(0.05)
        assert time.monotonic() - killed_at < 2.0
    finally:
        conn.close()


@pytest.mark.slow
def test_node_frozen_then_thawed(three_nodes: ModuleType, quorum_queue: str) -> None:
    """SIGSTOP: the socket stays open and nothing answers; heartbeats of 2 s declare the
    node dead after two silent intervals and both connections move to a survivor. A connect
    attempt to the frozen node is accepted by the kernel and then hangs, so the handshake is
    bounded by stack_timeout (3 s here). The node is thawed a few seconds later; traffic
    flows again and nothing confirmed is lost."""
    frozen: int | None = None
    with _traffic(three_nodes, quorum_queue, query={"stack_timeout": 3}) as t:
        try:
            frozen_at = time.monotonic()
            frozen = three_nodes.freeze("a")
            wait_until(lambda: t.pub_losses.lost and t.sub_losses.lost, 10, "heartbeat timeouts")
            detected = max(t.pub_losses.lost[0], t.sub_losses.lost[0]) - frozen_at
            # 4.0-4.5 s on a quiet machine; a starved hub (load 12 on 2 cores) adds seconds.
            assert 2.0 <= detected <= 10.0, f"loss detected after {detected:.1f} s"
            wait_until(lambda: t.pub_losses.recovered, 20, "the publisher recovered elsewhere")
            assert _node(t.pub_conn, three_nodes) in {"b", "c"}
            three_nodes.thaw(frozen)
            frozen = None
            thawed_at = time.monotonic()
            # The consumer's restore on b or c waits for the frozen leader (see the README):
            # it may finish there or, after the thaw, on a.
            wait_until(lambda: t.sub_losses.recovered, 30, "the consumer recovered")
            thawed_from = t.publisher.next
            wait_until(lambda: sum(n > thawed_from for n in t.ledger.deliveries) >= 50, 30,
                       "deliveries after the thaw")
            t.publisher.stop()
        finally:
            if frozen is not None:
                three_nodes.thaw(frozen)
        check_nothing_lost(t.ledger, allowed={"confirmed", "unknown", "nacked"})
        print(f"detected after {detected:.2f} s; publisher recovered "
              f"{t.pub_losses.recovered[0] - frozen_at:.2f} s, consumer "
              f"{t.sub_losses.recovered[0] - frozen_at:.2f} s after the freeze (thawed at "
              f"{thawed_at - frozen_at:.2f} s); {t.ledger.count('nacked')} nacked")


@pytest.mark.slow
def test_recovery_target_dies_during_the_restore(three_nodes: ModuleType, unique_name: str,
                                                 quorum_queue: str) -> None:
    """a dies; while the supervisor restores on the node it reached (X), X dies too; the
    recovery carries on and ends on the third node. a comes back meanwhile, so the quorum
    queue has its majority again."""
    conn = _connect("abc", three_nodes)
    exchanges = [f"{unique_name}-x{i}" for i in range(40)]
    killed: list[str] = []
    try:
        losses = Losses(conn)
        channel = conn.channel()
        channel.confirm_delivery()
        for exchange in exchanges:  # a longer restore: a wider window to die in
            channel.exchange_declare(exchange, "fanout", auto_delete=False)
            channel.queue_bind(quorum_queue, exchange)
        channel.queue_declare(quorum_queue, durable=True, arguments=QUORUM)

        def kill_the_restore_target() -> None:
            while not (conn.is_recovering and conn.is_open
                       and _node(conn, three_nodes) != "a"):
                gevent.sleep(0.0005)
            target = _node(conn, three_nodes)
            three_nodes.kill(target)
            killed.append(target)
            three_nodes.start()  # a and the target come back

        killer = gevent.spawn(kill_the_restore_target)
        three_nodes.kill("a")
        killer.join(timeout=90)
        assert killed, "the restore target was not killed"
        wait_until(lambda: losses.recovered, 60, "recovery")
        third = ({"b", "c"} - set(killed)).pop()
        assert _node(conn, three_nodes) == third
        assert len(losses.lost) == 1 and len(losses.recovered) == 1  # one recovery, not two
        channel.basic_publish(exchanges[0], "", b"after")
        for exchange in exchanges:
            channel.exchange_delete(exchange)
    finally:
        conn.close()


def test_leader_moves_while_consumers_stay_attached(three_nodes: ModuleType,
                                                    quorum_queue: str) -> None:
    """Consumers on b and c, the leader on a; a is stopped cleanly: leadership moves to b or
    c and consuming goes on with no connection lost and nothing to recover."""
    ledger = Ledger()
    pub_conn = _connect("bca", three_nodes)
    sub_b = _connect("bca", three_nodes)
    sub_c = _connect("cab", three_nodes)
    try:
        watched = [Losses(c) for c in (pub_conn, sub_b, sub_c)]
        publisher = Publisher(pub_conn, quorum_queue, ledger)
        Consumer(sub_b, quorum_queue, ledger)
        Consumer(sub_c, quorum_queue, ledger)
        wait_until(lambda: len(ledger.deliveries) >= 50, 20, "traffic before the move")
        three_nodes.stop_node("a")
        moved_from = publisher.next
        wait_until(lambda: sum(n >= moved_from for n in ledger.deliveries) >= 100, 30,
                   "deliveries after the leader moved")
        assert three_nodes.queue_leader(quorum_queue, via="b") in {"b", "c"}
        publisher.stop()
        check_nothing_lost(ledger, allowed={"confirmed"})
        assert all(not w.lost for w in watched), "a connection was lost: recovery ran"
    finally:
        for conn in (pub_conn, sub_b, sub_c):
            conn.close()


@pytest.mark.slow
def test_majority_lost_then_a_node_returns(three_nodes: ModuleType, quorum_queue: str) -> None:
    """a and b die; the publisher and consumer on c stay connected. Publishes are neither
    confirmed nor lost while the queue has no majority: they wait (or are nacked), and when a
    node returns the waiting ones are confirmed and traffic resumes."""
    with _traffic(three_nodes, quorum_queue, order="cab", confirm_timeout=60) as t:
        three_nodes.kill("a")
        three_nodes.kill("b")
        lost_at = time.monotonic()
        confirmed_before = len(t.ledger.confirmed())
        gevent.sleep(3.0)  # the outage itself: nothing to wait for but time
        stalled = len(t.ledger.confirmed()) - confirmed_before
        assert stalled <= t.publisher.batch, f"{stalled} confirmed without a majority"
        returned_at = time.monotonic()
        three_nodes.start()
        resumed_from = t.publisher.next
        wait_until(lambda: sum(n >= resumed_from for n in t.ledger.confirmed()) >= 50, 60,
                   "confirmed publishes after the nodes returned")
        t.publisher.stop()
        check_nothing_lost(t.ledger, allowed={"confirmed", "nacked"})
        print(f"outage {returned_at - lost_at:.1f} s; first confirm "
              f"{(t.ledger.first_confirm_after(returned_at) or 0) - returned_at:.2f} s after "
              f"the restart began; {t.ledger.count('nacked')} nacked")
