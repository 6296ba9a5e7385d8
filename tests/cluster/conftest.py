"""Fixtures for the failover tests against a local 3-node RabbitMQ cluster.

- ``cluster`` (session): starts scripts/cluster.sh when the cluster is not up, and stops it
  at the end of the session only if it started it (a cluster you started with
  `make cluster` stays up for the next run).
- ``three_nodes``: the cluster with all three nodes running before the test, and again after
  it, whatever the test did (killed, frozen or stopped nodes are thawed, restarted and
  rejoined in the teardown), so every test starts from three healthy nodes.

Every test here is marked ``cluster``; `make test` runs them after the rest.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import ModuleType

import clusterctl
import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = str(clusterctl.ROOT / "tests" / "cluster")
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster() -> Iterator[ModuleType]:
    started_here = not clusterctl.is_up()
    if started_here:
        began = time.monotonic()
        clusterctl.start()
        print(f"\ncluster started in {time.monotonic() - began:.1f} s")
    try:
        yield clusterctl
    finally:
        if started_here:
            clusterctl.stop()


@pytest.fixture
def three_nodes(cluster: ModuleType) -> Iterator[ModuleType]:
    cluster.start()  # a no-op when all three are up
    try:
        yield cluster
    finally:
        cluster.start()
