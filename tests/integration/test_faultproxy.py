"""FaultProxy against the real broker, driven with plain gevent sockets."""

from __future__ import annotations

import contextlib
import socket
import time

import gevent
import gevent.socket
import pytest
from pamqp import commands
from support import broker as broker_ctl
from support.broker import BrokerEndpoint
from support.faultproxy import FaultProxy
from support.rawamqp import PROTOCOL_HEADER, RawAMQP

# frame type 1, channel 0, size (4 bytes), class 10 method 10 = connection.start
START_PREFIX = b"\x01\x00\x00"
START_METHOD = b"\x00\x0a\x00\x0a"
QUIET = 0.5  # how long "nothing arrives" is watched for


def connect(proxy: FaultProxy) -> gevent.socket.socket:
    return gevent.socket.create_connection(proxy.address, timeout=5)


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, OSError | None]:
    """Everything the peer sends until it closes; and the error that closed it
    (None for a clean EOF)."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError) as exc:
            return data, exc
        if not chunk:
            return data, None
        data += chunk


def read_exactly(sock: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"EOF after {len(data)} of {n} bytes")
        data += chunk
    return data


def open_channel(conn: RawAMQP, number: int = 1) -> None:
    conn.send(commands.Channel.Open(), number)


def test_forwards_protocol_header_and_connection_start(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        sock.sendall(PROTOCOL_HEADER)
        head = read_exactly(sock, 11)
        assert head[:3] == START_PREFIX
        assert head[7:11] == START_METHOD
        proxy.wait_for_connections(1)
        proxy.wait_for_links(1)
        proxy.wait_for_bytes("to_client", 11)
    assert proxy.bytes_to_broker == len(PROTOCOL_HEADER)
    proxy.wait_for_active(0)
    assert proxy.connections_accepted == 1


def test_full_handshake_and_clean_close(proxy: FaultProxy, unique_name: str) -> None:
    conn = RawAMQP.connect(proxy.address, connection_name=unique_name)
    open_channel(conn)
    assert isinstance(conn.expect(commands.Channel.OpenOk), commands.Channel.OpenOk)
    assert proxy.active_connections == 1
    conn.close()
    proxy.wait_for_active(0)


def test_reset_all_resets_the_client(proxy: FaultProxy, unique_name: str) -> None:
    conn = RawAMQP.connect(proxy.address, connection_name=unique_name)
    assert proxy.reset_all() == 1
    data, error = read_until_closed(conn.sock)
    assert data == b""
    assert isinstance(error, ConnectionResetError)
    proxy.wait_for_active(0)
    conn.sock.close()


def test_reset_all_reaches_the_broker(proxy: FaultProxy, unique_name: str) -> None:
    conn = RawAMQP.connect(proxy.address, connection_name=unique_name)
    broker_ctl.wait_until(lambda: broker_ctl.find_connections(unique_name), what="the connection")
    proxy.reset_all()
    broker_ctl.wait_until(
        lambda: not broker_ctl.find_connections(unique_name), what="the broker to drop it"
    )
    conn.sock.close()


def test_reset_after_cuts_a_new_connection_at_the_byte(proxy: FaultProxy) -> None:
    fired = proxy.reset_after(5, "to_client")
    with connect(proxy) as sock:
        sock.sendall(PROTOCOL_HEADER)
        data, error = read_until_closed(sock)
    assert data == START_PREFIX + data[3:5] and len(data) == 5  # mid frame header
    assert isinstance(error, ConnectionResetError)
    assert fired.wait(5)
    assert proxy.bytes_to_client == 5


def test_reset_after_counts_from_arming_mid_frame(proxy: FaultProxy) -> None:
    conn = RawAMQP.connect(proxy.address)
    before = proxy.bytes_to_client
    fired = proxy.reset_after(9, "to_client")  # channel.open-ok is 7 + 8 + 1 bytes
    open_channel(conn)
    data, error = read_until_closed(conn.sock)
    assert data[:3] == b"\x01\x00\x01"  # method frame on channel 1 ...
    assert data[7:9] == b"\x00\x14"  # ... class 20 (channel), then cut mid method id
    assert len(data) == 9
    assert isinstance(error, ConnectionResetError)
    assert fired.wait(5)
    assert proxy.bytes_to_client - before == 9
    conn.sock.close()


def test_reset_after_towards_the_broker(proxy: FaultProxy) -> None:
    proxy.reset_after(4, "to_broker")
    with connect(proxy) as sock:
        sock.sendall(PROTOCOL_HEADER)
        data, error = read_until_closed(sock)
    assert data == b""
    assert isinstance(error, ConnectionResetError)
    assert proxy.bytes_to_broker == 4


def test_reset_after_is_one_shot(proxy: FaultProxy) -> None:
    proxy.reset_after(0, "to_client")
    with connect(proxy) as sock:
        sock.sendall(PROTOCOL_HEADER)
        data, error = read_until_closed(sock)
    assert data == b""
    assert isinstance(error, ConnectionResetError)
    with connect(proxy) as sock:
        sock.sendall(PROTOCOL_HEADER)
        assert read_exactly(sock, 11)[7:11] == START_METHOD


def test_close_all_sends_eof(proxy: FaultProxy) -> None:
    conn = RawAMQP.connect(proxy.address)
    assert proxy.close_all() == 1
    data, error = read_until_closed(conn.sock)
    assert (data, error) == (b"", None)
    proxy.wait_for_active(0)
    conn.sock.close()


def test_blackhole_holds_traffic_without_closing(proxy: FaultProxy) -> None:
    conn = RawAMQP.connect(proxy.address)
    proxy.blackhole(True)
    open_channel(conn)
    conn.sock.settimeout(QUIET)
    with pytest.raises(TimeoutError):
        conn.sock.recv(1)
    assert proxy.active_connections == 1
    proxy.blackhole(False)  # TCP would deliver the held bytes after a partition heals
    conn.expect(commands.Channel.OpenOk)
    conn.close()


def test_blackhole_holds_a_forced_close(proxy: FaultProxy, unique_name: str) -> None:
    conn = RawAMQP.connect(proxy.address, connection_name=unique_name)
    proxy.blackhole(True)
    broker_ctl.close_connection(unique_name, "blackholed")
    conn.sock.settimeout(QUIET)
    with pytest.raises(TimeoutError):
        conn.sock.recv(1)
    proxy.blackhole(False)
    close = conn.expect(commands.Connection.Close)
    assert close.reply_code == 320
    conn.sock.close()


def test_throttle_zero_stalls_everything(proxy: FaultProxy) -> None:
    proxy.throttle(0)
    with connect(proxy) as sock:
        sock.sendall(PROTOCOL_HEADER)
        sock.settimeout(QUIET)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        assert proxy.bytes_to_broker == 0
        proxy.throttle(None)
        assert read_exactly(sock, 11)[7:11] == START_METHOD


def test_throttle_paces_bytes(proxy: FaultProxy) -> None:
    rate = 2000.0
    proxy.throttle(rate, "to_client")
    with connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(PROTOCOL_HEADER)
        head = read_exactly(sock, 7)
        size = int.from_bytes(head[3:7], "big")
        read_exactly(sock, size + 1)
        elapsed = time.monotonic() - started
    total = 7 + size + 1  # connection.start: about 500 bytes
    # the first slice (rate / 20 bytes) goes out at once; the rest is paced
    assert elapsed >= 0.8 * (total - rate / 20) / rate
    assert proxy.bytes_to_broker == len(PROTOCOL_HEADER)  # the other way was not throttled


def test_refuse_close_makes_connects_fail(proxy: FaultProxy) -> None:
    conn = RawAMQP.connect(proxy.address)
    proxy.refuse(True)
    with pytest.raises(ConnectionRefusedError):
        gevent.socket.create_connection(proxy.address, timeout=5)
    open_channel(conn)  # links already open keep working
    conn.expect(commands.Channel.OpenOk)
    proxy.refuse(False)
    with connect(proxy) as sock:
        sock.sendall(PROTOCOL_HEADER)
        assert read_exactly(sock, 11)[7:11] == START_METHOD
    conn.close()


def test_refuse_reset_accepts_then_resets(proxy: FaultProxy) -> None:
    proxy.refuse(True, mode="reset")
    with connect(proxy) as sock:
        proxy.wait_for_connections(1)
        data, error = read_until_closed(sock)
    assert data == b""
    assert isinstance(error, ConnectionResetError)
    assert proxy.connections_refused == 1
    assert proxy.connections_forwarded == 0


def test_wait_for_connections_is_an_event(proxy: FaultProxy) -> None:
    with pytest.raises(TimeoutError):
        proxy.wait_for_connections(1, timeout=0.05)
    client = gevent.spawn(lambda: connect(proxy).close())
    try:
        proxy.wait_for_connections(1, timeout=5)
    finally:
        client.join(5)
    assert client.successful()


def test_upstream_down_resets_the_client() -> None:
    with FaultProxy(upstream=("127.0.0.1", 1)) as proxy, connect(proxy) as sock:
        data, error = read_until_closed(sock)
        proxy.wait_for(lambda: proxy.connections_failed == 1)
    assert data == b""
    assert isinstance(error, ConnectionResetError)


def test_stop_kills_every_greenlet_and_closes_every_socket(broker: BrokerEndpoint) -> None:
    proxy = FaultProxy(upstream=broker.address).start()
    conns = [RawAMQP.connect(proxy.address) for _ in range(3)]
    proxy.blackhole(True)  # pumps parked in the blackhole must be killed too
    proxy.stop()
    assert len(proxy._group) == 0
    assert proxy._acceptor is not None and proxy._acceptor.dead
    for conn in conns:
        _, error = read_until_closed(conn.sock)
        assert isinstance(error, ConnectionResetError)
        conn.sock.close()
    with pytest.raises(ConnectionRefusedError):
        gevent.socket.create_connection(proxy.address, timeout=5)
    proxy.stop()  # idempotent


def echo_server() -> tuple[gevent.socket.socket, gevent.Greenlet]:
    """A local upstream that echoes everything: bulk traffic without the broker."""
    listener = gevent.socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def serve() -> None:
        sock, _ = listener.accept()
        with sock, contextlib.suppress(ConnectionResetError, BrokenPipeError):
            while data := sock.recv(65536):
                sock.sendall(data)

    return listener, gevent.spawn(serve)


def send_until_reset(sock: socket.socket, payload: bytes) -> None:
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        sock.sendall(payload)


def test_bulk_traffic_arrives_intact_and_reset_after_is_exact() -> None:
    listener, server = echo_server()
    payload = bytes(range(256)) * 8192  # 2 MiB
    cut = len(payload) - 12345
    try:
        with FaultProxy(upstream=listener.getsockname()) as proxy, connect(proxy) as sock:
            fired = proxy.reset_after(cut, "to_client")
            writer = gevent.spawn(send_until_reset, sock, payload)
            data, error = read_until_closed(sock, timeout=10)
            writer.join(10)
            assert fired.wait(5)
        assert len(data) == cut
        assert data == payload[:cut]
        assert isinstance(error, ConnectionResetError)
    finally:
        server.kill()
        listener.close()
