"""Fixtures for the kombu transport's tests against the real broker at 127.0.0.1:5672.

- ``kombu_url``  ``geamqp://guest:guest@127.0.0.1:5672//``
- ``kconn``      a connected ``kombu.Connection`` on the geamqp transport, released after
- ``proxy``      a FaultProxy in front of the broker (tests/integration/support)
- ``tls_front``  a TLS-terminating front (trustme CA) for ``geamqps://``

The integration tests' support package is shared: tests/integration goes on sys.path.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "integration"))

import kombu
from support.broker import port_open
from support.faultproxy import FaultProxy
from support.tlsfront import TLSFront

import geamqp.kombu  # noqa: F401  (registers geamqp://)

HOST, PORT = "127.0.0.1", 5672


@pytest.fixture(scope="session")
def _broker_up() -> None:
    if not port_open(HOST, PORT):
        pytest.fail(f"RabbitMQ must listen at {HOST}:{PORT} (run `make broker`)", pytrace=False)


@pytest.fixture
def kombu_url(_broker_up: None) -> str:
    return f"geamqp://guest:guest@{HOST}:{PORT}//"


@pytest.fixture
def kconn(kombu_url: str) -> Iterator[kombu.Connection]:
    conn = kombu.Connection(kombu_url)
    conn.connect()
    try:
        yield conn
    finally:
        conn.release()


@pytest.fixture
def proxy(_broker_up: None) -> Iterator[FaultProxy]:
    with FaultProxy(upstream=(HOST, PORT)) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def tls_front(_broker_up: None) -> Iterator[TLSFront]:
    with TLSFront(upstream=(HOST, PORT)) as front:
        yield front
