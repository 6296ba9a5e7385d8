"""Fixtures for tests against the real RabbitMQ at 127.0.0.1:5672.

- ``broker``     a BrokerEndpoint (host, port, url()); fails — never skips — when
                 the broker does not answer AMQP, pointing at ensure-rabbitmq.sh.
- ``proxy``      a started FaultProxy in front of the broker; stopped (every
                 greenlet joined, every socket closed) after the test.
- ``tls_front``  a started TLSFront (TLS outside, plain AMQP to the broker).
- ``vhost``      a fresh vhost with guest permissions, deleted after the test.

Support modules are imported as ``from support.faultproxy import FaultProxy``
(pytest puts this directory on sys.path: tests/integration has no __init__.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import gevent.socket
import pytest
from support import broker as broker_ctl
from support.broker import BrokerEndpoint
from support.faultproxy import FaultProxy
from support.rawamqp import PROTOCOL_HEADER
from support.tlsfront import TLSFront

_HOW_TO_START = (
    "RabbitMQ must answer AMQP at {host}:{port} (guest/guest) for integration tests: "
    "run `sudo scripts/ensure-rabbitmq.sh` (or `make broker`). Problem: {problem}"
)


def _amqp_answers(endpoint: BrokerEndpoint, timeout: float = 5.0) -> str | None:
    """None when the broker replies to a protocol header with connection.start."""
    try:
        sock = gevent.socket.create_connection(endpoint.address, timeout=timeout)
    except OSError as exc:
        return f"cannot connect: {exc}"
    try:
        sock.sendall(PROTOCOL_HEADER)
        reply = b""
        while len(reply) < 11:
            chunk = sock.recv(1024)
            if not chunk:
                break
            reply += chunk
    except OSError as exc:
        return f"no AMQP reply: {exc}"
    finally:
        sock.close()
    # frame type 1 (method), channel 0, then class 10 method 10: connection.start
    if reply[:3] != b"\x01\x00\x00" or reply[7:11] != b"\x00\x0a\x00\x0a":
        return f"unexpected reply {reply[:16]!r}"
    return None


@pytest.fixture(scope="session")
def _broker_endpoint() -> BrokerEndpoint:
    endpoint = BrokerEndpoint()
    problem = _amqp_answers(endpoint)
    if problem is not None:
        pytest.fail(
            _HOW_TO_START.format(host=endpoint.host, port=endpoint.port, problem=problem),
            pytrace=False,
        )
    return endpoint


@pytest.fixture
def broker(_broker_endpoint: BrokerEndpoint) -> BrokerEndpoint:
    """The real broker; the test fails loudly when it is not there."""
    return _broker_endpoint


@pytest.fixture
def proxy(broker: BrokerEndpoint) -> Iterator[FaultProxy]:
    with FaultProxy(upstream=broker.address) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def tls_front(broker: BrokerEndpoint) -> Iterator[TLSFront]:
    with TLSFront(upstream=broker.address) as front:
        yield front


@pytest.fixture
def vhost(broker: BrokerEndpoint) -> Iterator[str]:
    with broker_ctl.fresh_vhost() as name:
        yield name
