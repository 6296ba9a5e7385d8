"""Fixtures for the failover tests against a local 3-node RabbitMQ cluster.

- ``cluster`` (session): starts scripts/cluster.sh when the cluster is not up, and stops it
  at the end of the session only if it started it (a cluster you started with
  `make cluster` stays up for the next run).
- ``three_nodes``: the cluster with all three nodes running before the test, and again after
  it, whatever the test did (killed, frozen or stopped nodes are thawed, restarted and
  rejoined in the teardown), so every test starts from three healthy nodes.
- ``quorum_queue``: a quorum queue declared through node a (so a leads it), deleted after.

Every test module here is marked ``cluster`` (pytestmark); `make test` runs them after
the rest.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import ModuleType

import clusterctl
import pytest
from traffic import QUORUM

import geamqp


@pytest.fixture(scope="session")
def cluster() -> Iterator[ModuleType]:
    started_here = not clusterctl.running_nodes()  # a cluster of `make cluster` stays up
    began = time.monotonic()
    try:
        clusterctl.start()  # also restarts, thaws or heals what a previous run left behind
        if started_here:
            print(f"\ncluster started in {time.monotonic() - began:.1f} s")
        yield clusterctl
    finally:
        if started_here:  # even when starting failed half-way
            clusterctl.stop()


@pytest.fixture
def three_nodes(cluster: ModuleType) -> Iterator[ModuleType]:
    cluster.start()  # a no-op when all three are up
    try:
        yield cluster
    finally:
        cluster.start()


@pytest.fixture
def quorum_queue(three_nodes: ModuleType, unique_name: str) -> Iterator[str]:
    """A quorum queue declared through node a, so that a leads it."""
    with geamqp.connect(three_nodes.url("a"), recover=False) as conn:
        conn.channel().queue_declare(unique_name, durable=True, arguments=QUORUM)
    yield unique_name
    three_nodes.start()  # the queue can only be deleted with a majority up
    with geamqp.connect(three_nodes.urls("bca"), recover=False) as conn:
        conn.channel().queue_delete(unique_name)
