"""Fixtures for the `geamqp.pika` tests, against the real broker at 127.0.0.1:5672.

The broker and fault-proxy helpers are the integration suite's (tests/integration/
support); this directory puts them on sys.path itself so that it also runs alone.
``pika`` is `geamqp.pika` imported the way a legacy application does it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from support.broker import BrokerEndpoint, port_open
from support.faultproxy import FaultProxy

import geamqp.pika


@pytest.fixture(scope="session")
def broker() -> BrokerEndpoint:
    endpoint = BrokerEndpoint()
    if not port_open(endpoint.host, endpoint.port):
        pytest.fail(f"RabbitMQ must listen on {endpoint.host}:{endpoint.port}: run "
                    "`make broker`", pytrace=False)
    return endpoint


@pytest.fixture
def proxy(broker: BrokerEndpoint) -> Iterator[FaultProxy]:
    with FaultProxy(upstream=broker.address) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def pika() -> Any:
    return geamqp.pika


@pytest.fixture
def params(broker: BrokerEndpoint) -> Any:
    return geamqp.pika.ConnectionParameters(broker.host, broker.port)


@pytest.fixture
def conn(params: Any) -> Iterator[Any]:
    connection = geamqp.pika.BlockingConnection(params)
    try:
        yield connection
    finally:
        if connection.is_open:
            connection.close()


@pytest.fixture
def ch(conn: Any) -> Any:
    return conn.channel()


@pytest.fixture
def queue(ch: Any) -> str:
    """A server-named exclusive queue on `ch`'s connection."""
    return ch.queue_declare("", exclusive=True).method.queue  # type: ignore[no-any-return]
