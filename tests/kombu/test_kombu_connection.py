"""Connecting through the geamqp transport: failover, resets under ensure(), credentials,
TLS, error classes, recovery option, fork."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Any

import gevent
import gevent.event
import gevent.os
import kombu
import pytest
from kombu import Producer, Queue
from support.broker import wait_until
from support.faultproxy import FaultProxy
from support.tlsfront import TLSFront

import geamqp
import geamqp.kombu

pytestmark = pytest.mark.timeout(30)


def _closed_port() -> tuple[socket.socket, int]:
    """A local port that refuses connections: bound, never listening (kept while the test runs)."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    return holder, holder.getsockname()[1]


def test_failover_url_skips_a_refused_first_host(kombu_url: str) -> None:
    holder, port = _closed_port()
    errors: list[Any] = []
    try:
        url = f"geamqp://guest:guest@127.0.0.1:{port}//;{kombu_url}"
        # kombu's retry options travel in transport_options; the transport ignores them.
        options = {"max_retries": 3, "interval_start": 0, "interval_step": 0,
                   "errback": lambda exc, interval: errors.append(exc)}
        with kombu.Connection(url, transport_options=options) as conn:
            conn.default_channel.queue_declare(exclusive=True)
            assert conn.connection.geamqp_connection.params.port == 5672
    finally:
        holder.close()
    assert len(errors) == 1 and isinstance(errors[0], geamqp.AMQPConnectionError)


def test_connection_reset_during_ensure_wrapped_publishing(proxy: FaultProxy,
                                                           unique_name: str) -> None:
    url = f"geamqp://guest:guest@127.0.0.1:{proxy.port}//"
    with kombu.Connection(url, transport_options={"confirm_publish": True}) as conn:
        ch = conn.channel()
        Queue(unique_name, durable=False, auto_delete=False)(ch).declare()
        producer = Producer(conn)
        errors: list[Any] = []
        publish = conn.ensure(producer, producer.publish, max_retries=5, interval_start=0,
                              interval_step=0.1, errback=lambda exc, interval: errors.append(exc))
        for i in range(200):
            publish(i, routing_key=unique_name)  # never raises: ensure() reconnects and retries
            if i == 80:
                assert proxy.reset_all() >= 1
        assert errors and all(isinstance(e, conn.recoverable_connection_errors) for e in errors)
        check = conn.channel()
        got = set()
        while (message := Queue(unique_name)(check).get(no_ack=True)) is not None:
            got.add(message.payload)
        check.queue_delete(unique_name)
        check.close()
    assert got == set(range(200))  # at least once: a publish whose confirm was lost is resent


def test_a_lost_connection_is_reported_not_silently_replaced(proxy: FaultProxy) -> None:
    with kombu.Connection(f"geamqp://guest:guest@127.0.0.1:{proxy.port}//") as conn:
        conn.connect()
        closed = gevent.event.Event()
        first = conn.connection
        first.geamqp_connection.add_on_close_callback(lambda c, e: closed.set())
        proxy.reset_all()
        assert closed.wait(5)
        # kombu would quietly open a new connection if this turned False; Celery's
        # consumer would then wait on a connection without its consumers.
        assert conn.connected and conn.connection is first
        with pytest.raises(conn.recoverable_connection_errors):
            conn.drain_events(timeout=1)
        conn.collect()  # what kombu's ensure() and Celery's restart do next
        assert not conn.connected
        conn.connect()
        assert conn.connection is not first and conn.connection.is_alive


def test_connection_lost_while_a_callback_waits_inside_drain_events(proxy: FaultProxy,
                                                                    unique_name: str) -> None:
    """Celery's callback can block in drain_events (a full pool): a loss meanwhile ends
    the drain with the connection error."""
    with kombu.Connection(f"geamqp://guest:guest@127.0.0.1:{proxy.port}//") as conn:
        closed = gevent.event.Event()
        conn.connection.geamqp_connection.add_on_close_callback(lambda c, e: closed.set())
        seen: list[Any] = []

        def blocking_callback(body: Any, message: Any) -> None:
            seen.append(body)
            if len(seen) == 1:
                proxy.reset_all()
                assert closed.wait(5)

        with kombu.Consumer(conn, [Queue(unique_name, exclusive=True)],
                            callbacks=[blocking_callback], prefetch_count=10):
            producer = Producer(conn)
            for i in range(10):
                producer.publish(i, routing_key=unique_name)
            wait_until(lambda: conn.connection.pending == 10, interval=0.01, what="10 buffered")
            with pytest.raises(conn.recoverable_connection_errors):
                conn.drain_events(timeout=5)
    assert seen == [0]


def test_password_may_be_a_callable_asked_on_each_connect(_broker_up: None) -> None:
    calls: list[int] = []

    def password() -> str:
        calls.append(1)
        return "guest"

    with kombu.Connection(hostname="127.0.0.1", userid="guest", password=password,
                          transport="geamqp.kombu:Transport") as conn:
        conn.connect()
        conn.collect()
        conn.connect()
        assert conn.connected
    assert len(calls) == 2


def test_localhost_means_127_0_0_1(_broker_up: None) -> None:
    with kombu.Connection("geamqp://guest:guest@localhost//") as conn:
        conn.connect()
        assert conn.connection.geamqp_connection.params.host == "127.0.0.1"


def test_wrong_password_is_not_retried(_broker_up: None) -> None:
    errors: list[Any] = []
    with kombu.Connection("geamqp://guest:wrong@127.0.0.1//") as conn, \
            pytest.raises(geamqp.kombu.BrokerRefused) as refused:
        conn.ensure_connection(errback=lambda exc, i: errors.append(exc), max_retries=3,
                               interval_start=0)
    assert errors == []
    assert isinstance(refused.value.__cause__, geamqp.ProbableAuthenticationError)
    assert "wrong" not in str(refused.value)


def test_what_celery_reads_from_the_transport(kconn: kombu.Connection) -> None:
    transport = kconn.transport
    assert transport.driver_type == "amqp" and transport.driver_name == "geamqp"
    assert not kconn.supports_heartbeats  # Celery never waits on heartbeat ticks
    assert transport.heartbeat_check(kconn.connection) is None
    assert issubclass(geamqp.StreamLostError, kconn.recoverable_connection_errors)
    assert issubclass(geamqp.AMQPHeartbeatTimeout, kconn.connection_errors)
    assert issubclass(geamqp.ChannelClosedByBroker, kconn.channel_errors)
    assert issubclass(socket.timeout, kconn.connection_errors)
    version = tuple(int(p) for p in kconn.connection.server_properties["version"].split(".")[:2])
    assert kconn.qos_semantics_matches_spec is (version < (3, 3) or version >= (4, 0))
    ch = kconn.default_channel
    ok = ch.queue_declare("", exclusive=True)
    assert ok == (ok.queue, 0, 0) and ok.queue.startswith("amq.gen-")
    ch.basic_qos(0, 10, True)  # global qos, as Celery asks on RabbitMQ 3.3 to 3.x


def test_geamqp_recovery_is_off_unless_asked(kombu_url: str) -> None:
    with kombu.Connection(kombu_url) as plain:
        plain.connect()
        assert plain.connection.geamqp_connection.recover is False


def test_recover_option_heals_the_connection_underneath_kombu(proxy: FaultProxy,
                                                              unique_name: str) -> None:
    url = f"geamqp://guest:guest@127.0.0.1:{proxy.port}//"
    options = {"recover": True, "recovery_delay_min": 0.05, "recovery_delay_max": 0.2}
    with kombu.Connection(url, transport_options=options) as conn:
        ch = conn.default_channel
        queue = Queue(unique_name, durable=False, auto_delete=False)(ch)
        queue.declare()
        recovered = gevent.event.Event()
        conn.connection.geamqp_connection.add_on_recovered_callback(lambda c: recovered.set())
        proxy.reset_all()
        assert recovered.wait(10)
        Producer(ch).publish("after", routing_key=unique_name)  # the same kombu channel
        assert conn.default_channel is ch and conn.connected
        message = gevent.with_timeout(5, _wait_get, queue)
        assert message.payload == "after"
        ch.queue_delete(unique_name)


def test_geamqps_connects_over_tls(tls_front: TLSFront, unique_name: str) -> None:
    ca_file = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"{unique_name}-ca.pem")
    tls_front.ca.cert_pem.write_to_path(ca_file)
    try:
        url = f"geamqps://guest:guest@localhost:{tls_front.port}//"
        with kombu.Connection(url, ssl={"ca_certs": ca_file}) as conn:
            queue = conn.SimpleQueue(unique_name, queue_opts={"exclusive": True},
                                     exchange_opts={"auto_delete": True})
            queue.put("over tls")
            message = queue.get(timeout=5)
            assert message.payload == "over tls"
            message.ack()
            queue.close()
    finally:
        os.unlink(ca_file)
    assert tls_front.handshakes_completed >= 1


def test_after_fork_the_child_collects_and_opens_its_own(kconn: kombu.Connection,
                                                         unique_name: str) -> None:
    ch = kconn.channel()
    queue = Queue(unique_name, durable=False, auto_delete=False)(ch)
    queue.declare()
    try:
        pid = gevent.os.fork()
        if pid == 0:  # the child reports through its exit code only
            code = 1
            try:
                kconn.collect()  # what kombu's pools do after fork: no byte on the parent's socket
                kconn.connect()
                Producer(kconn).publish("from the child", routing_key=unique_name)
                kconn.release()
                code = 0
            finally:
                os._exit(code)
        _, status = gevent.os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        assert kconn.connected  # the parent's connection is untouched
        message = gevent.with_timeout(5, _wait_get, queue)
        assert message.payload == "from the child"
    finally:
        ch.queue_delete(unique_name)
        ch.close()


def _wait_get(queue: Queue) -> Any:
    while (message := queue.get(no_ack=True)) is None:
        gevent.sleep(0.02)
    return message


def test_heartbeat_and_ssl_options_map_to_geamqp(kombu_url: str) -> None:
    cases = [({}, None), ({"heartbeat": 2}, 2), ({"heartbeat": 0.4}, 1),
             ({"transport_options": {"heartbeat": 0}}, 0)]
    for kwargs, expected in cases:
        with kombu.Connection(kombu_url, **kwargs) as conn:
            conn.connect()
            assert conn.connection.geamqp_connection.params.heartbeat == expected, kwargs
    with kombu.Connection("geamqps://guest:guest@localhost:1//",
                          ssl={"ca_cert": "/nowhere"}) as conn, \
            pytest.raises(ValueError, match=r"unknown ssl option.*ca_cert"):
        conn.connect()


def test_confirm_timeout_raises_socket_timeout(proxy: FaultProxy, unique_name: str) -> None:
    url = f"geamqp://guest:guest@127.0.0.1:{proxy.port}//"
    with kombu.Connection(url, transport_options={"confirm_publish": True}) as conn:
        producer = Producer(conn)
        producer.publish("confirmed", routing_key=unique_name, confirm_timeout=5)
        proxy.blackhole(True)  # the broker's ack never arrives
        started = time.monotonic()
        with pytest.raises(socket.timeout) as timed_out:
            producer.publish("stalled", routing_key=unique_name, confirm_timeout=0.3)
        assert 0.25 <= time.monotonic() - started < 3
        assert isinstance(timed_out.value, conn.recoverable_connection_errors)  # as py-amqp
        proxy.blackhole(False)


@pytest.mark.timeout(20)
def test_parent_keeps_its_deliveries_while_a_forked_child_runs(kconn: kombu.Connection,
                                                               unique_name: str) -> None:
    got: list[Any] = []
    consumer = kombu.Consumer(kconn, [Queue(unique_name, exclusive=True)], no_ack=True,
                              callbacks=[lambda body, msg: got.append(body)])
    consumer.consume()
    pid = gevent.os.fork()
    if pid == 0:  # a prefork-style child: collects what it inherited, then just runs
        try:
            kconn.collect()
            gevent.sleep(1.5)
        finally:
            os._exit(0)
    try:
        with gevent.Timeout(5, False):  # the parent may stall: the child took its replies
            producer = Producer(kconn.channel())
            for i in range(100):
                producer.publish(i, routing_key=unique_name)
                gevent.sleep(0.01)
            while len(got) < 100:
                with contextlib.suppress(TimeoutError):
                    kconn.drain_events(timeout=0.5)
    finally:
        gevent.os.waitpid(pid, 0)
    assert sorted(got) == list(range(100))
