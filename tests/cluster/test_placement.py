"""Where connections land on a 3-node cluster given the host list a, b, c.

Every connection attempt shuffles the list (the first connect as well as reconnects, the
node just lost tried last); ``shuffle_hosts=False`` keeps the given order; a
``host_selector`` callable chooses; a `ConsumerFleet` starts connection i at host i mod n.
"""

from __future__ import annotations

import random
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


class _AFirstThenShuffled:
    """A host_selector: the first connect lands on a; reconnects shuffle (the default)."""

    def __init__(self) -> None:
        self.first = True

    def __call__(self, candidates: list[geamqp.ConnectionParameters],
                 ) -> list[geamqp.ConnectionParameters]:
        if self.first:
            self.first = False
            return candidates
        return random.sample(candidates, len(candidates))


def _open_on_a(cluster: ModuleType, count: int) -> list[geamqp.Connection]:
    return [geamqp.connect(cluster.urls("abc"), host_selector=_AFirstThenShuffled())
            for _ in range(count)]


def _close(conns: list[geamqp.Connection]) -> None:
    for conn in conns:
        conn.close()


def test_first_connects_spread_over_the_nodes(three_nodes: ModuleType) -> None:
    conns = _open(three_nodes, CONNECTIONS)
    try:
        spread = _spread(conns, three_nodes)
        print(f"{CONNECTIONS} first connects: {dict(spread)}")
        # Uniform over 3 nodes, a node gets fewer than 2 of 30 with probability < 1e-4.
        assert all(spread[node] >= 2 for node in three_nodes.NODES), spread
    finally:
        _close(conns)


def test_keeping_the_given_order(three_nodes: ModuleType) -> None:
    conns = _open(three_nodes, 5, shuffle_hosts=False)
    try:
        assert _spread(conns, three_nodes) == Counter({"a": 5})
    finally:
        _close(conns)


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
