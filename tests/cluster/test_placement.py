"""Where connections land on a 3-node cluster given the host list a, b, c.

Today the first connect tries the list in the given order (every connection of a process
lands on the first node) and only reconnects shuffle it. The issue asks for a shuffle per
connection attempt, an option to keep the given order, and an optional callable choosing
the node; the tests of those are xfail(strict) until the core has them (see the report for
the proposed API: ``shuffle_hosts`` and ``host_selector`` on `geamqp.connect`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from types import ModuleType

import pytest
from traffic import wait_until

import geamqp

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

CONNECTIONS = 30


def _spread(conns: list[geamqp.Connection], cluster: ModuleType) -> Counter[str]:
    return Counter(cluster.node_of_port(conn.params.port) for conn in conns)


def _open(cluster: ModuleType, count: int, **kwargs: object) -> list[geamqp.Connection]:
    return [geamqp.connect(cluster.urls("abc"), **kwargs) for _ in range(count)]


def _open_on_a(cluster: ModuleType, count: int) -> list[geamqp.Connection]:
    return [cluster.connect_in_order(cluster.urls("abc")) for _ in range(count)]


def _close(conns: list[geamqp.Connection]) -> None:
    for conn in conns:
        conn.close()


@pytest.mark.xfail(strict=True, reason="needs core change: the first connect tries the host "
                   "list in the given order; it should shuffle it per attempt as reconnects do")
def test_first_connects_spread_over_the_nodes(three_nodes: ModuleType) -> None:
    conns = _open(three_nodes, CONNECTIONS)
    try:
        spread = _spread(conns, three_nodes)
        print(f"{CONNECTIONS} first connects: {dict(spread)}")
        # Uniform over 3 nodes, a node gets fewer than 2 of 30 with probability < 1e-4.
        assert all(spread[node] >= 2 for node in three_nodes.NODES), spread
    finally:
        _close(conns)


@pytest.mark.xfail(strict=True, raises=TypeError,
                   reason="needs core change: connect(shuffle_hosts=False) does not exist yet")
def test_keeping_the_given_order(three_nodes: ModuleType) -> None:
    conns = _open(three_nodes, 5, shuffle_hosts=False)
    try:
        assert _spread(conns, three_nodes) == Counter({"a": 5})
    finally:
        _close(conns)


@pytest.mark.xfail(strict=True, raises=TypeError,
                   reason="needs core change: connect(host_selector=...) does not exist yet")
def test_a_callable_chooses_the_node(three_nodes: ModuleType) -> None:
    """The selector gets the candidates and returns the order to try them in, for the
    first connect and every reconnect: here node b (say, the queue leader's) first."""
    seen: list[int] = []

    def b_first(candidates: Sequence[geamqp.ConnectionParameters],
                ) -> list[geamqp.ConnectionParameters]:
        seen.append(len(candidates))
        return sorted(candidates, key=lambda params: params.port != three_nodes.PORTS["b"])

    conns = _open(three_nodes, 5, host_selector=b_first)
    try:
        assert _spread(conns, three_nodes) == Counter({"b": 5})
        assert seen == [3] * 5
    finally:
        _close(conns)


@pytest.mark.xfail(strict=True, reason="needs core change: a ConsumerFleet's connections all "
                   "land on the first host; it should place connection i on host i mod n")
def test_fleet_spreads_its_connections(three_nodes: ModuleType, quorum_queue: str) -> None:
    fleet = geamqp.ConsumerFleet(three_nodes.urls("abc"), connections=6,
                                 channels_per_connection=1)
    try:
        for _ in range(6):
            fleet.basic_consume(quorum_queue, lambda ch, m, p, b: None, auto_ack=True)
        spread = _spread(fleet.connections, three_nodes)
        print(f"fleet of 6 connections: {dict(spread)}")
        assert spread == Counter({"a": 2, "b": 2, "c": 2})
    finally:
        fleet.close()


@pytest.mark.slow
def test_reconnects_spread_over_the_survivors(three_nodes: ModuleType) -> None:
    """30 connections on node a; a is killed; the supervisor's shuffle spreads them."""
    conns = _open_on_a(three_nodes, CONNECTIONS)
    try:
        assert _spread(conns, three_nodes) == Counter({"a": CONNECTIONS})
        recovered: list[geamqp.Connection] = []
        for conn in conns:
            conn.add_on_recovered_callback(recovered.append)
        three_nodes.kill("a")
        wait_until(lambda: len(recovered) == CONNECTIONS, 30, "every connection recovered")
        spread = _spread(conns, three_nodes)
        print(f"{CONNECTIONS} reconnects after a died: {dict(spread)}")
        # b and c about half each: fewer than 5 of 30 has probability < 1e-4.
        assert spread["a"] == 0 and spread["b"] >= 5 and spread["c"] >= 5, spread
    finally:
        _close(conns)
