"""A minimal AMQP 0-9-1 peer over a gevent socket, built on pamqp.

It exists so the test infrastructure (proxy, TLS front, rabbitmqctl helpers)
can be tested against the real broker without geamqp's client, which is being
written separately. It does the handshake, sends methods and reads frames;
nothing more — no channels bookkeeping, no heartbeats.
"""

from __future__ import annotations

import socket
import ssl
import struct
from typing import Any

import gevent.socket
from pamqp import body, commands, frame, header
from pamqp.base import Frame
from pamqp.heartbeat import Heartbeat

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
_FRAME_HEADER = struct.Struct(">BHI")
FrameValue = Frame | header.ProtocolHeader | header.ContentHeader | Heartbeat | Any
Sendable = Frame | header.ContentHeader | body.ContentBody | Heartbeat


class RawAMQP:
    """One AMQP connection driven by hand: ``send()`` methods, ``read_frame()``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()
        self.server_properties: dict[str, Any] = {}

    @classmethod
    def connect(
        cls,
        address: tuple[str, int],
        *,
        connection_name: str | None = None,
        vhost: str = "/",
        user: str = "guest",
        password: str = "guest",
        heartbeat: int = 0,
        timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> RawAMQP:
        """Connect and complete the handshake through connection.open-ok."""
        sock = gevent.socket.create_connection(address, timeout=timeout)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname)
        conn = cls(sock)
        try:
            conn.handshake(connection_name, vhost, user, password, heartbeat, timeout)
        except BaseException:
            sock.close()
            raise
        return conn

    def handshake(
        self,
        connection_name: str | None,
        vhost: str,
        user: str,
        password: str,
        heartbeat: int,
        timeout: float,
    ) -> None:
        self.sock.sendall(PROTOCOL_HEADER)
        start = self.expect(commands.Connection.Start, timeout)
        self.server_properties = dict(start.server_properties or {})
        properties: dict[str, Any] = {
            "product": "geamqp-test-rawamqp",
            "capabilities": {"authentication_failure_close": True, "connection.blocked": True},
        }
        if connection_name is not None:
            properties["connection_name"] = connection_name
        self.send(
            commands.Connection.StartOk(
                client_properties=properties, response=f"\0{user}\0{password}"
            )
        )
        tune = self.expect(commands.Connection.Tune, timeout)
        self.send(
            commands.Connection.TuneOk(
                channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=heartbeat
            )
        )
        self.send(commands.Connection.Open(virtual_host=vhost))
        self.expect(commands.Connection.OpenOk, timeout)

    def send(self, value: Sendable, channel: int = 0) -> None:
        self.sock.sendall(frame.marshal(value, channel))

    def read_frame(self, timeout: float | None = 5.0) -> tuple[int, FrameValue]:
        """Next (channel, frame); raises EOFError when the peer closed cleanly."""
        self.sock.settimeout(timeout)
        while True:
            if len(self._buffer) >= _FRAME_HEADER.size:
                _, _, size = _FRAME_HEADER.unpack_from(self._buffer)
                total = _FRAME_HEADER.size + size + 1
                if len(self._buffer) >= total:
                    consumed, channel, value = frame.unmarshal(bytes(self._buffer[:total]))
                    del self._buffer[:consumed]
                    return channel, value
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("peer closed the connection")
            self._buffer += data

    def expect(self, kind: type, timeout: float | None = 5.0) -> Any:
        """Read one frame and check it is a ``kind``; a connection.close is an error."""
        _, value = self.read_frame(timeout)
        if not isinstance(value, kind):
            raise AssertionError(f"expected {kind.__name__}, got {value!r}")
        return value

    def close(self, timeout: float = 5.0) -> None:
        """Polite close (connection.close / close-ok) when possible; always frees the socket."""
        try:
            self.send(
                commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)
            )
            while True:
                _, value = self.read_frame(timeout)
                if isinstance(value, commands.Connection.CloseOk):
                    break
        except (OSError, EOFError):
            pass  # already gone: nothing left to be polite to
        finally:
            self.sock.close()
