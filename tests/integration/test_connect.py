"""Opening connections against the real broker: URL, parameters, failover lists,
IPv6, DNS, retries, timeouts, refusals (RELIABILITY 13-15), client and server
properties, and TLS through a trustme-certified front (RELIABILITY 18).

Each refusal test counts the TCP connections that reached the listener, so
"not retried" is a measured fact, not an assumption.
"""

from __future__ import annotations

import itertools
import logging
import socket
import time
import traceback
import uuid
from urllib.parse import quote

import gevent
import pytest
from support import broker as broker_ctl
from support.faultproxy import FaultProxy
from transport_helpers import (
    answers_with,
    closes_without_a_word,
    forward_to,
    geamqp_greenlets,
    silent,
    tiny_server,
    wait_no_geamqp_greenlets,
)

import geamqp
import geamqp._link
from geamqp import ConnectionParameters, PlainCredentials, SSLOptions, URLParameters
from geamqp.exceptions import (
    AMQPConnectionError,
    IncompatibleProtocolError,
    ProbableAccessDeniedError,
    ProbableAuthenticationError,
)


def _roundtrip(conn: geamqp.Connection) -> None:
    """A publish and a get through a server-named queue: the link really works."""
    ch = conn.channel()
    ch.confirm_delivery()
    queue = ch.queue_declare("", exclusive=True).queue
    ch.basic_publish("", queue, b"hello")
    method, _props, body = ch.basic_get(queue, auto_ack=True)
    assert method is not None and body == b"hello"


def _refused_port() -> tuple[socket.socket, int]:
    """A port that refuses connections: bound, never listening (kept until closed)."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    return holder, holder.getsockname()[1]


# ---------------------------------------------------------------- the ways to connect


def test_connect_by_url(broker):
    with geamqp.connect(broker.url(), recover=False) as conn:
        assert conn.is_open
        _roundtrip(conn)
    assert conn.is_closed


def test_connect_by_connection_parameters(broker):
    params = ConnectionParameters(
        host=broker.host, port=broker.port, credentials=PlainCredentials("guest", "guest"),
        heartbeat=7, frame_max=8192, channel_max=100,
    )
    with geamqp.connect(params, recover=False) as conn:
        _roundtrip(conn)
        # what was asked for is what the connection runs with (the broker allows more)
        engine = conn._link.engine
        assert (engine.heartbeat, engine.frame_max, engine.channel_max) == (7, 8192, 100)


def test_list_tries_candidates_in_order_until_one_answers(broker):
    """With shuffle_hosts=False the given order is kept (the default shuffles it per
    attempt, tests/integration/test_connect.py::test_first_connects_shuffle_the_list)."""
    holder, refused = _refused_port()
    with (holder, FaultProxy(upstream=broker.address) as resetting,
          FaultProxy(upstream=broker.address) as good,
          FaultProxy(upstream=broker.address) as never):
        resetting.refuse(True, mode="reset")
        candidates = [
            ConnectionParameters(host="127.0.0.1", port=refused),
            URLParameters(resetting.url()),
            good.url(),
            never.url(),
        ]
        with geamqp.connect(candidates, recover=False, shuffle_hosts=False) as conn:
            _roundtrip(conn)
            assert conn.params.port == good.port
        assert resetting.connections_accepted == 1  # tried, after the refused port
        assert good.connections_forwarded == 1
        assert never.connections_accepted == 0  # the list stops at the first success


def test_list_fails_over_past_a_listener_that_closes_without_a_word(broker):
    """A load balancer with no healthy backend accepts and closes (FIN) before any
    byte: that is not a protocol mismatch, and the next host must be tried."""
    with tiny_server(closes_without_a_word) as balancer:
        conn = geamqp.connect(
            [f"amqp://guest:guest@127.0.0.1:{balancer.port}/", broker.url()], recover=False,
            shuffle_hosts=False)
        with conn:
            _roundtrip(conn)
            assert conn.params.port == broker.port
        assert balancer.accepted == 1


def test_ipv6_literal_url():
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    with tiny_server(forward_to(("127.0.0.1", 5672)), host="::1",
                     family=socket.AF_INET6) as front:
        with geamqp.connect(f"amqp://guest:guest@[::1]:{front.port}/%2F",
                            recover=False) as conn:
            assert conn.params.host == "::1"
            _roundtrip(conn)
        assert front.accepted == 1


def test_host_names_resolve_through_gevents_resolver(broker, monkeypatch):
    resolver = gevent.get_hub().resolver
    asked = []
    real = resolver.getaddrinfo

    def spy(host, port, *args, **kwargs):
        asked.append((host, port))
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(resolver, "getaddrinfo", spy)
    with geamqp.connect(f"amqp://guest:guest@localhost:{broker.port}/%2F", recover=False) as conn:
        _roundtrip(conn)
    assert ("localhost", broker.port) in asked


def test_unresolvable_host_is_a_connection_error():
    with pytest.raises(AMQPConnectionError, match=r"cannot resolve 'no-such-host\.invalid'"):
        geamqp.connect("amqp://guest:guest@no-such-host.invalid:5672/", recover=False)


# ---------------------------------------------------------------- retries and timeouts


def test_connection_attempts_against_a_refused_port(monkeypatch):
    holder, port = _refused_port()
    attempts = []
    real_open = geamqp._link.open_socket

    def counting_open(params, deadline):
        attempts.append(time.monotonic())
        return real_open(params, deadline)

    monkeypatch.setattr(geamqp._link, "open_socket", counting_open)
    with holder, pytest.raises(AMQPConnectionError) as info:
        geamqp.connect(ConnectionParameters(
            host="127.0.0.1", port=port, connection_attempts=3, retry_delay=0.2), recover=False)
    assert len(attempts) == 3
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert all(0.2 <= gap < 1.0 for gap in gaps), gaps
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "ECONNREFUSED" in str(info.value)


def test_connection_attempts_against_a_listener_that_resets(proxy):
    before = geamqp_greenlets()
    proxy.refuse(True, mode="reset")
    started = time.monotonic()
    with pytest.raises(AMQPConnectionError):
        geamqp.connect(f"{proxy.url()}?connection_attempts=3&retry_delay=0.1", recover=False)
    assert proxy.connections_accepted == 3
    assert time.monotonic() - started < 5
    wait_no_geamqp_greenlets(before)


def test_connection_attempts_against_a_listener_that_closes_without_a_word():
    before = geamqp_greenlets()
    with tiny_server(closes_without_a_word) as server:
        url = f"amqp://guest:guest@127.0.0.1:{server.port}/?connection_attempts=3&retry_delay=0"
        with pytest.raises(IncompatibleProtocolError, match=r"before sending connection\.start"):
            geamqp.connect(url, recover=False)
        assert server.accepted == 3
    wait_no_geamqp_greenlets(before)  # three failed attempts leave nothing running


def test_socket_timeout_bounds_a_connect_that_hangs():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))  # the backlog is now full
    with listener, filler:
        started = time.monotonic()
        with pytest.raises(AMQPConnectionError, match="timed out") as info:
            geamqp.connect(ConnectionParameters(host="127.0.0.1", port=port,
                                                socket_timeout=0.5, stack_timeout=30),
                           recover=False)
        elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 2.0, elapsed
    assert f"127.0.0.1:{port}" in str(info.value)


def test_stack_timeout_against_a_silent_server():
    before = geamqp_greenlets()
    with tiny_server(silent) as server:
        started = time.monotonic()
        with pytest.raises(AMQPConnectionError, match="did not finish within") as info:
            geamqp.connect(ConnectionParameters(host="127.0.0.1", port=server.port,
                                                stack_timeout=1.0), recover=False)
        elapsed = time.monotonic() - started
        assert server.accepted == 1
    assert 0.9 <= elapsed < 2.5, elapsed
    assert f"127.0.0.1:{server.port}" in str(info.value)
    wait_no_geamqp_greenlets(before)


def test_stack_timeout_with_a_blackholed_proxy(proxy):
    proxy.blackhole(True)
    started = time.monotonic()
    with pytest.raises(AMQPConnectionError, match="did not finish within"):
        geamqp.connect(f"{proxy.url()}?stack_timeout=1", recover=False)
    assert time.monotonic() - started < 2.5


def test_amqp_1_0_header_reply_is_incompatible_protocol():
    before = geamqp_greenlets()
    with tiny_server(answers_with(b"AMQP\x00\x01\x00\x00")) as server:
        url = f"amqp://guest:guest@127.0.0.1:{server.port}/?connection_attempts=3"
        with pytest.raises(IncompatibleProtocolError, match=r"1\.0\.0"):
            geamqp.connect(url, recover=False)
        assert server.accepted == 1  # a protocol mismatch is not retried
    wait_no_geamqp_greenlets(before)


# ---------------------------------------------------------------- refusals


def test_wrong_password_is_403_not_retried_and_never_echoed(proxy, caplog):
    secret = f"s3cret-{uuid.uuid4().hex}"
    caplog.set_level(logging.DEBUG)
    params = ConnectionParameters(host=proxy.host, port=proxy.port,
                                  credentials=PlainCredentials("guest", secret),
                                  connection_attempts=3, retry_delay=0.1)
    with pytest.raises(ProbableAuthenticationError) as info:
        geamqp.connect(params, recover=False)
    error = info.value
    assert error.reply_code == 403
    assert "ACCESS_REFUSED" in error.reply_text
    assert proxy.connections_accepted == 1
    shown = [str(error), repr(error), "".join(traceback.format_exception(error)), repr(params)]
    assert not [text for text in shown if secret in text]
    assert not [r for r in caplog.records if secret in r.getMessage()]


def test_wrong_password_in_a_url_is_never_echoed(broker, caplog):
    secret = f"pw{uuid.uuid4().hex}"
    caplog.set_level(logging.DEBUG)
    url = f"amqp://guest:{secret}@{broker.host}:{broker.port}/%2F"
    with pytest.raises(ProbableAuthenticationError) as info:
        geamqp.connect(url, recover=False)
    assert secret not in str(info.value) and secret not in repr(info.value)
    assert not [r for r in caplog.records if secret in r.getMessage()]


def test_missing_vhost_is_530_and_not_retried(proxy):
    vhost = f"geamqp-missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ProbableAccessDeniedError) as info:
        geamqp.connect(f"{proxy.url(vhost)}?connection_attempts=3&retry_delay=0.1",
                       recover=False)
    assert info.value.reply_code == 530
    assert vhost in info.value.reply_text
    assert proxy.connections_accepted == 1


def test_existing_vhost_works(broker, vhost):
    with geamqp.connect(broker.url(vhost), recover=False) as conn:
        _roundtrip(conn)


# ---------------------------------------------------------------- properties


def test_connection_name_reaches_the_broker(broker, unique_name):
    with geamqp.connect(broker.url(), name=unique_name, recover=False):
        found = broker_ctl.wait_until(lambda: broker_ctl.find_connections(unique_name),
                                      what="the named connection")
        assert [c.connection_name for c in found] == [unique_name]


def test_connection_name_from_the_url(broker, unique_name):
    url = f"{broker.url()}?connection_name={quote(unique_name)}"
    with geamqp.connect(url, recover=False):
        assert broker_ctl.wait_until(lambda: broker_ctl.find_connections(unique_name))


def test_server_properties_and_advertised_capabilities(broker, unique_name):
    with geamqp.connect(broker.url(), name=unique_name, recover=False) as conn:
        props = conn.server_properties
        assert props["product"] == "RabbitMQ"
        assert props["version"]
        assert props["capabilities"]["publisher_confirms"] is True

        def client_properties():
            rows = broker_ctl.rabbitmqctl_json("list_connections", "client_properties")
            for row in rows:
                table = {entry[0]: entry[-1] for entry in row["client_properties"]}
                if table.get("connection_name") == unique_name:
                    return table
            return None

        table = broker_ctl.wait_until(client_properties, what="our client_properties")
    assert table["product"] == "geamqp"
    capabilities = {name: value for name, _type, value in table["capabilities"]}
    for name in ("authentication_failure_close", "connection.blocked", "publisher_confirms",
                 "basic.nack", "consumer_cancel_notify", "exchange_exchange_bindings",
                 "per_consumer_qos"):
        assert capabilities.get(name) is True, name


# ---------------------------------------------------------------- TLS (RELIABILITY 18)


def _tls_params(front, **kwargs) -> ConnectionParameters:
    return ConnectionParameters(host="localhost", port=front.port, ssl_options=SSLOptions(
        **kwargs), stack_timeout=10)


def test_tls_with_the_test_ca_works_end_to_end_and_sends_sni(tls_front):
    params = _tls_params(tls_front, context=tls_front.client_context())
    with geamqp.connect(params, recover=False) as conn:
        _roundtrip(conn)
    assert tls_front.server_names == ["localhost"]
    assert tls_front.handshakes_completed == 1


def test_tls_with_the_system_trust_store_refuses_the_test_ca(tls_front):
    with pytest.raises(AMQPConnectionError, match="certificate verify failed") as info:
        geamqp.connect(_tls_params(tls_front), recover=False)  # SSLOptions(): system CAs
    assert "TLS handshake" in str(info.value)
    assert "EPERM" not in str(info.value)  # an SSL error code is not an errno
    assert tls_front.proxy.connections_forwarded == 0


def test_tls_with_the_wrong_server_hostname_fails(tls_front):
    params = _tls_params(tls_front, context=tls_front.client_context(),
                         server_hostname="wrong.example")
    with pytest.raises(AMQPConnectionError, match=r"certificate verify failed|hostname"):
        geamqp.connect(params, recover=False)
    assert tls_front.server_names == ["wrong.example"]  # SNI is the name verified


def test_tls_certificate_for_another_host_fails(tls_front):
    tls_front.mode = "wrong_host"
    with pytest.raises(AMQPConnectionError, match=r"certificate verify failed|hostname"):
        geamqp.connect(_tls_params(tls_front, context=tls_front.client_context()),
                       recover=False)


def test_tls_handshake_with_a_silent_server_is_bounded_by_socket_timeout(tls_front):
    with tiny_server(silent) as server:
        params = ConnectionParameters(
            host="localhost", port=server.port, socket_timeout=0.5, stack_timeout=30,
            ssl_options=SSLOptions(tls_front.client_context()))
        started = time.monotonic()
        with pytest.raises(AMQPConnectionError, match=r"TLS handshake .* timed out"):
            geamqp.connect(params, recover=False)
    assert time.monotonic() - started < 2.0


def test_amqps_url_with_cacertfile(tls_front, tmp_path):
    ca_file = tmp_path / "ca.pem"
    tls_front.ca.cert_pem.write_to_path(str(ca_file))
    url = f"{tls_front.url()}?cacertfile={quote(str(ca_file))}"
    with geamqp.connect(url, recover=False) as conn:
        _roundtrip(conn)
    assert tls_front.server_names == ["localhost"]


def test_amqps_url_without_the_ca_fails(tls_front):
    with pytest.raises(AMQPConnectionError, match="certificate verify failed"):
        geamqp.connect(tls_front.url(), recover=False)


def test_first_connects_shuffle_the_list(broker):
    """By default every connect tries the hosts in a fresh random order, so a process's
    connections spread over a cluster: over 30 connects each of two equally good
    hosts is chosen first at least twice (probability of failing < 1e-6)."""
    with (FaultProxy(upstream=broker.address) as one,
          FaultProxy(upstream=broker.address) as two):
        conns = [geamqp.connect([one.url(), two.url()], recover=False) for _ in range(30)]
        try:
            ports = [conn.params.port for conn in conns]
        finally:
            for conn in conns:
                conn.close()
    assert ports.count(one.port) >= 2 and ports.count(two.port) >= 2
