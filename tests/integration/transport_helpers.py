"""Shared helpers for the connect / transport / fault integration tests.

- ``SpySocket`` / ``spy_sockets``: every socket geamqp opens is wrapped so the
  test sees each ``sendall`` (its bytes, in order) without touching the client.
- ``frames``: split captured client bytes into AMQP frames.
- ``geamqp_greenlets`` / ``wait_no_geamqp_greenlets``: greenlets running
  geamqp code, to prove a connection leaves none behind.
- ``catching`` / ``joined`` / ``Closed``: spawned waiters that return their
  exception, bounded joins, the close callback's outcome.
- ``TinyServer``: a gevent listener with a scripted per-connection handler
  (silent server, foreign protocol header, accept-then-close, IPv6 forwarder).
"""

from __future__ import annotations

import contextlib
import gc
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.socket
from gevent.event import AsyncResult, Event
from gevent.pool import Group

import geamqp
import geamqp._link

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"
_FRAME_HEAD = struct.Struct(">BHI")
_IDS = struct.Struct(">HH")


class SpySocket:
    """Delegates to a real (gevent) socket; records every ``send`` / ``sendall`` payload
    (what reached the kernel, for ``send``)."""

    def __init__(self, sock: Any, on_send: Callable[[bytes], None] | None = None) -> None:
        self._sock = sock
        self.sends: list[bytes] = []
        self._on_send = on_send
        self.sent = Event()  # set on every sendall; clear it to wait for the next

    def _record(self, data: bytes) -> None:
        self.sends.append(data)
        if self._on_send is not None:
            self._on_send(data)
        self.sent.set()

    def sendall(self, data: bytes) -> None:
        self._record(bytes(data))
        self._sock.sendall(data)

    def send(self, data: bytes) -> int:
        sent: int = self._sock.send(data)
        self._record(bytes(data[:sent]))
        return sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def wire(self) -> bytes:
        return b"".join(self.sends)


def spy_sockets(monkeypatch: Any) -> list[SpySocket]:
    """From now on every connection's socket is a SpySocket; returns them in order."""
    spies: list[SpySocket] = []
    real_open = geamqp._link.open_socket

    def open_and_spy(params: Any, deadline: float) -> SpySocket:
        spy = SpySocket(real_open(params, deadline))
        spies.append(spy)
        return spy

    monkeypatch.setattr(geamqp._link, "open_socket", open_and_spy)
    return spies


@dataclass(frozen=True)
class Frame:
    type: int
    channel: int
    payload: bytes

    @property
    def method_ids(self) -> tuple[int, int] | None:
        if self.type != FRAME_METHOD:
            return None
        return _IDS.unpack_from(self.payload)


def frames(wire: bytes) -> list[Frame]:
    """The frames in bytes a client sent (its protocol header skipped)."""
    if wire.startswith(PROTOCOL_HEADER):
        wire = wire[len(PROTOCOL_HEADER) :]
    out = []
    offset = 0
    while offset < len(wire):
        kind, channel, size = _FRAME_HEAD.unpack_from(wire, offset)
        start = offset + _FRAME_HEAD.size
        end = start + size
        assert wire[end] == 0xCE, f"bad frame end at offset {end}"
        out.append(Frame(kind, channel, wire[start:end]))
        offset = end + 1
    return out


def count_method(wire: bytes, class_id: int, method_id: int) -> int:
    return sum(1 for f in frames(wire) if f.method_ids == (class_id, method_id))


# -- waiters -----------------------------------------------------------------


def catching(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn``; return its result or the exception it raised (for spawned waiters,
    so an expected failure is not printed by the hub as a greenlet error)."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        return exc


def first(iterable_factory: Callable[[], Any]) -> Any:
    return next(iter(iterable_factory()))


class Closed:
    """Records the close callback: the exception, how often, and when."""

    def __init__(self, conn: geamqp.Connection) -> None:
        self.result: AsyncResult = AsyncResult()
        self.calls = 0
        self.at: float | None = None
        conn.add_on_close_callback(self._on_close)

    def _on_close(self, _conn: geamqp.Connection, error: Exception) -> None:
        self.calls += 1
        self.at = time.monotonic()
        self.result.set(error)

    def wait(self, timeout: float) -> Exception:
        return self.result.get(timeout=timeout)  # type: ignore[no-any-return]


def joined(greenlets: list[gevent.Greenlet], timeout: float) -> list[Any]:
    gevent.joinall(greenlets, timeout=timeout)
    stuck = [g for g in greenlets if not g.ready()]
    assert not stuck, f"still waiting after {timeout} s: {stuck}"
    return [g.value for g in greenlets]


# -- greenlets ---------------------------------------------------------------


def _runs_geamqp_code(greenlet: gevent.Greenlet) -> bool:
    run = getattr(greenlet, "_run", None)
    owner = getattr(run, "__self__", None)
    module = getattr(type(owner), "__module__", "") if owner is not None else ""
    module = module or getattr(run, "__module__", "") or ""
    return module.startswith("geamqp")


def geamqp_greenlets() -> list[gevent.Greenlet]:
    """Live greenlets whose code belongs to geamqp (readers, writers, dispatchers...)."""
    return [
        g
        for g in gc.get_objects()
        if isinstance(g, gevent.Greenlet) and not g.dead and _runs_geamqp_code(g)
    ]


def wait_no_geamqp_greenlets(before: list[gevent.Greenlet], timeout: float = 3.0) -> None:
    """Wait (bounded) until no geamqp greenlet born after ``before`` is alive."""
    known = {id(g) for g in before}
    deadline = time.monotonic() + timeout
    while True:
        left = [g for g in geamqp_greenlets() if id(g) not in known]
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"geamqp greenlets still alive: {left!r}")
        gevent.sleep(0.01)


# -- scripted servers --------------------------------------------------------


class TinyServer:
    """Listens on ``host`` (port 0); runs ``handler(sock)`` per connection in a
    greenlet it owns. ``stop()`` kills the handlers and closes every socket."""

    def __init__(self, handler: Callable[[gevent.socket.socket], None],
                 host: str = "127.0.0.1", family: int = socket.AF_INET) -> None:
        self._handler = handler
        self._group = Group()
        self._socks: list[gevent.socket.socket] = []
        self.accepted = 0
        self._listener = gevent.socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(64)
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = gevent.spawn(self._accept_loop)

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            self._socks.append(sock)
            self._group.spawn(self._serve, sock)

    def _serve(self, sock: gevent.socket.socket) -> None:
        with contextlib.suppress(OSError):
            self._handler(sock)

    def stop(self) -> None:
        self._acceptor.kill()
        self._listener.close()
        self._group.kill(block=True, timeout=5)
        for sock in self._socks:
            sock.close()


@contextlib.contextmanager
def tiny_server(handler: Callable[[gevent.socket.socket], None], host: str = "127.0.0.1",
                family: int = socket.AF_INET) -> Iterator[TinyServer]:
    server = TinyServer(handler, host, family)
    try:
        yield server
    finally:
        server.stop()


def silent(sock: gevent.socket.socket) -> None:
    """Accept and never answer (reads and discards until the client leaves)."""
    while sock.recv(65536):
        pass


def answers_with(header: bytes) -> Callable[[gevent.socket.socket], None]:
    """Read the client's protocol header, answer ``header``, wait for the client to go."""

    def handler(sock: gevent.socket.socket) -> None:
        sock.recv(8)
        sock.sendall(header)
        while sock.recv(65536):
            pass

    return handler


def closes_without_a_word(sock: gevent.socket.socket) -> None:
    """Read the client's protocol header, then close cleanly (FIN) without sending
    anything: a load balancer with no healthy backend, a broker starting up."""
    sock.recv(8)
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(65536):
        pass


def forward_to(upstream: tuple[str, int]) -> Callable[[gevent.socket.socket], None]:
    """A plain TCP forwarder (e.g. from [::1] to the IPv4-only broker)."""

    def pump(src: gevent.socket.socket, dst: gevent.socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def handler(sock: gevent.socket.socket) -> None:
        upstream_sock = gevent.socket.create_connection(upstream, timeout=5)
        try:
            other = gevent.spawn(pump, upstream_sock, sock)
            try:
                pump(sock, upstream_sock)
                other.join()
            finally:
                other.kill()
        finally:
            upstream_sock.close()

    return handler
