"""The in-process TCP proxy behind ``python -m geamqp perf --chaos``.

The perf tool's own connections go through it; `reset_all()` cuts every
link it carries with a TCP reset (SO_LINGER 0), as a flaky network or a load
balancer would. Only the perf tool's connections are affected: the broker,
and every other client of it, see ordinary connection resets.

Rules: every greenlet it spawns is in one group, killed and joined by
`stop()`; a socket error of a link that was cut on purpose is the point,
never an error printed by the hub.
"""

from __future__ import annotations

import contextlib
import socket
import struct

import gevent
import gevent.socket
from gevent.pool import Group
from gevent.server import StreamServer

__all__ = ["ChaosProxy"]

_LINGER_RESET = struct.pack("ii", 1, 0)
_CHUNK = 65536


class ChaosProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``; `reset_all()` cuts every link."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._group = Group()
        self._links: set[tuple[gevent.socket.socket, gevent.socket.socket]] = set()
        self._server = StreamServer(("127.0.0.1", 0), self._accept, spawn=self._group.spawn)
        self.resets = 0

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def start(self) -> ChaosProxy:
        self._server.start()
        return self

    def _accept(self, client: gevent.socket.socket, _address: object) -> None:
        try:
            upstream = gevent.socket.create_connection(self._upstream, timeout=10)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = (client, upstream)
        self._links.add(link)
        back = self._group.spawn(_pump, upstream, client)
        try:
            _pump(client, upstream)
            back.join()
        finally:
            self._links.discard(link)
            for sock in link:
                sock.close()

    def reset_all(self) -> int:
        """RST both sides of every open link; returns how many links were cut."""
        self.resets += 1
        return self._cut()

    def _cut(self) -> int:
        links = list(self._links)
        for client, upstream in links:
            _reset(client)
            _reset(upstream)
        return len(links)

    def stop(self) -> None:
        """Stop listening, cut what is left, and join every greenlet."""
        self._server.stop(timeout=1)
        self._cut()
        self._group.kill(block=True, timeout=5)


def _pump(source: gevent.socket.socket, sink: gevent.socket.socket) -> None:
    try:
        while data := source.recv(_CHUNK):
            sink.sendall(data)
    except OSError:
        pass  # a reset link, ours or the peer's
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _reset(sock: gevent.socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()  # a pump waiting in recv() on it gets an OSError and ends
