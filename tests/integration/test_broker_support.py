"""The rabbitmqctl helpers in support/broker.py, checked with a raw AMQP peer."""

from __future__ import annotations

import time

import gevent.socket
import pytest
from pamqp import body, commands, header
from support import broker as broker_ctl
from support.broker import BrokerEndpoint
from support.rawamqp import RawAMQP


def declare_queue(conn: RawAMQP, queue: str) -> None:
    conn.send(commands.Channel.Open(), 1)
    conn.expect(commands.Channel.OpenOk)
    conn.send(commands.Queue.Declare(queue=queue), 1)
    conn.expect(commands.Queue.DeclareOk)


def publish(conn: RawAMQP, routing_key: str, payload: bytes) -> None:
    conn.send(commands.Basic.Publish(exchange="", routing_key=routing_key), 1)
    conn.send(header.ContentHeader(0, len(payload), commands.Basic.Properties()), 1)
    conn.send(body.ContentBody(payload), 1)


def test_close_connection_forces_320(broker: BrokerEndpoint, unique_name: str) -> None:
    conn = RawAMQP.connect(broker.address, connection_name=unique_name)
    closed = broker_ctl.close_connection(unique_name, "test says so")
    assert [c.connection_name for c in closed] == [unique_name]
    close = conn.expect(commands.Connection.Close)
    assert close.reply_code == 320
    assert "test says so" in close.reply_text
    conn.sock.close()


def test_close_connection_without_a_match_raises(broker: BrokerEndpoint, unique_name: str) -> None:
    with pytest.raises(LookupError):
        broker_ctl.close_connection(unique_name, wait=0.1)


def test_list_queue_counts_in_a_fresh_vhost(
    broker: BrokerEndpoint, vhost: str, unique_name: str
) -> None:
    conn = RawAMQP.connect(broker.address, vhost=vhost)
    try:
        declare_queue(conn, unique_name)
        publish(conn, unique_name, b"one")
        publish(conn, unique_name, b"two")
        stats = broker_ctl.wait_until(
            lambda: (
                (s := broker_ctl.list_queue(unique_name, vhost)) and s.messages_ready == 2 and s
            ),
            what="two ready messages",
        )
        assert stats == broker_ctl.QueueStats(2, 0, 0)
        assert broker_ctl.list_queue(unique_name, "/") is None  # other vhost
        broker_ctl.delete_queue(unique_name, vhost)
        assert broker_ctl.list_queue(unique_name, vhost) is None
    finally:
        conn.close()


def test_fresh_vhost_is_deleted_afterwards(broker: BrokerEndpoint) -> None:
    with broker_ctl.fresh_vhost() as name:
        assert broker_ctl.vhost_exists(name)
        RawAMQP.connect(broker.address, vhost=name).close()
    assert not broker_ctl.vhost_exists(name)


def test_wait_until_returns_the_value_or_times_out() -> None:
    values = iter([None, 0, "ready"])
    assert broker_ctl.wait_until(lambda: next(values), timeout=5, interval=0.01) == "ready"
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="never"):
        broker_ctl.wait_until(lambda: False, timeout=0.1, interval=0.02, what="never")
    assert time.monotonic() - started < 1


@pytest.mark.broker_disruptive
def test_memory_alarm_blocks_publishers(broker: BrokerEndpoint, unique_name: str) -> None:
    conn = RawAMQP.connect(broker.address)
    try:
        declare_queue(conn, unique_name)
        with broker_ctl.memory_alarm():
            assert broker_ctl.alarms() == ["memory"]
            publish(conn, unique_name, b"blocked")
            conn.expect(commands.Connection.Blocked, timeout=10)
        conn.expect(commands.Connection.Unblocked, timeout=10)
        assert broker_ctl.alarms() == []
        broker_ctl.delete_queue(unique_name)
    finally:
        conn.close()


@pytest.mark.broker_disruptive
@pytest.mark.timeout(180)
def test_app_stopped_closes_connections_and_comes_back(broker: BrokerEndpoint) -> None:
    conn = RawAMQP.connect(broker.address)
    with broker_ctl.app_stopped():
        with pytest.raises((EOFError, ConnectionResetError)):
            while True:  # connection.close (320, shutdown) then EOF, or just EOF
                conn.read_frame(timeout=10)
        with pytest.raises(ConnectionRefusedError):
            gevent.socket.create_connection(broker.address, timeout=5)
    conn.sock.close()
    assert broker_ctl.port_open(broker.host, broker.port)
    RawAMQP.connect(broker.address).close()
