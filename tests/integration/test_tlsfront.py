"""TLSFront against the real broker, driven with plain gevent.ssl sockets."""

from __future__ import annotations

import ssl

import gevent.socket
import gevent.ssl
import pytest
from pamqp import commands
from support.broker import BrokerEndpoint
from support.rawamqp import PROTOCOL_HEADER, RawAMQP
from support.tlsfront import WRONG_HOSTNAME, TLSFront


def tls_connect(
    front: TLSFront, context: ssl.SSLContext, server_hostname: str = "localhost"
) -> ssl.SSLSocket:
    sock = gevent.socket.create_connection(front.address, timeout=5)
    try:
        return context.wrap_socket(sock, server_hostname=server_hostname)
    except BaseException:
        sock.close()
        raise


def test_trusted_ca_and_right_hostname_reach_the_broker(tls_front: TLSFront) -> None:
    with tls_connect(tls_front, tls_front.client_context()) as tls:
        tls.sendall(PROTOCOL_HEADER)
        tls.settimeout(5)
        head = tls.recv(11)
        assert head[:3] == b"\x01\x00\x00"
    assert tls_front.server_names == ["localhost"]
    assert tls_front.handshakes_completed == 1


def test_full_amqp_handshake_over_tls(tls_front: TLSFront, unique_name: str) -> None:
    conn = RawAMQP.connect(
        tls_front.address,
        connection_name=unique_name,
        ssl_context=tls_front.client_context(),
        server_hostname="localhost",
    )
    conn.send(commands.Channel.Open(), 1)
    conn.expect(commands.Channel.OpenOk)
    conn.close()
    tls_front.proxy.wait_for_active(0)


def test_ip_address_is_verified_and_sends_no_sni(tls_front: TLSFront) -> None:
    with tls_connect(tls_front, tls_front.client_context(), server_hostname="127.0.0.1"):
        pass
    tls_front.wait_for_handshakes(1)
    assert tls_front.server_names == [None]  # RFC 6066: no SNI for IP literals


def test_system_trust_store_rejects_the_certificate(tls_front: TLSFront) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        tls_connect(tls_front, tls_front.client_context(trust=False))
    tls_front.wait_for_handshakes(1)
    assert tls_front.handshakes_completed == 0
    assert tls_front.proxy.connections_forwarded == 0


def test_wrong_hostname_is_rejected(tls_front: TLSFront) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        tls_connect(tls_front, tls_front.client_context(), server_hostname="not-localhost.test")
    tls_front.wait_for_handshakes(1)
    assert tls_front.server_names == ["not-localhost.test"]


def test_wrong_host_certificate_is_rejected(tls_front: TLSFront) -> None:
    tls_front.mode = "wrong_host"
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        tls_connect(tls_front, tls_front.client_context())
    # the certificate itself is fine for the name it was issued to
    with tls_connect(tls_front, tls_front.client_context(), server_hostname=WRONG_HOSTNAME):
        pass


def test_untrusted_mode_fails_even_with_the_ca_trusted(tls_front: TLSFront) -> None:
    tls_front.mode = "untrusted"
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        tls_connect(tls_front, tls_front.client_context())
    tls_front.wait_for_handshakes(1)
    assert len(tls_front.handshake_errors) == 1


def test_faults_work_behind_tls(tls_front: TLSFront) -> None:
    conn = RawAMQP.connect(
        tls_front.address, ssl_context=tls_front.client_context(), server_hostname="localhost"
    )
    assert tls_front.proxy.reset_all() == 1
    conn.sock.settimeout(5)
    with pytest.raises((ConnectionResetError, ssl.SSLError, EOFError)):
        conn.read_frame()
    conn.sock.close()


def test_stop_closes_everything(broker: BrokerEndpoint) -> None:
    front = TLSFront().start()
    address = front.address
    front.stop()
    with pytest.raises(ConnectionRefusedError):
        gevent.socket.create_connection(address, timeout=5)
