"""A fault-injecting TCP proxy for integration tests, written for gevent.

The proxy listens on 127.0.0.1 (an ephemeral port) and forwards every accepted
connection to an upstream address (RabbitMQ at 127.0.0.1:5672 by default).
Test greenlets steer it while traffic flows:

- ``reset_all()``             RST both sides of every open link (SO_LINGER 0, close).
- ``close_all()``             FIN both sides of every open link.
- ``reset_after(n, d)``       RST the first link that forwards ``n`` more bytes in
                              direction ``d``, after exactly those bytes arrived.
- ``blackhole(True)``         hold every byte and every FIN/RST in both directions
                              without closing anything: a half-open link. Held data
                              flows again after ``blackhole(False)``, as TCP would
                              retransmit it after a transient partition. New TCP
                              connects still complete (the kernel accepts them);
                              then nothing flows: a silent server.
- ``throttle(rate)``          at most ``rate`` bytes/s per link and direction;
                              ``0`` stalls like a blackhole, ``None`` removes it.
- ``refuse(True)``            new connections fail: ``mode="close"`` takes the
                              listener down (ECONNREFUSED; the port stays
                              reserved by a bound, non-listening SO_REUSEPORT
                              socket), ``mode="reset"`` accepts and resets.

Rules this module keeps:

- Every greenlet it spawns lives in one ``gevent.pool.Group`` (plus the accept
  greenlet); ``stop()`` kills and joins all of them and closes every socket.
- No greenlet of the proxy ever lets an OS error escape to the hub: a fault
  the proxy injected is the test's business, not an error to print.
- Waiting is done on events (``wait_for_*``), never on sleeps, except the
  proxy's own pacing under ``throttle`` and the short drain before an exact
  ``reset_after``.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import socket
import struct
import termios
import time
from collections.abc import Callable
from types import TracebackType
from typing import Literal

import gevent
import gevent.socket
from gevent.event import Event
from gevent.pool import Group

Direction = Literal["to_broker", "to_client"]
DIRECTIONS: tuple[Direction, ...] = ("to_broker", "to_client")
RefuseMode = Literal["close", "reset"]
Address = tuple[str, int]
# Called in the link's greenlet with the accepted socket; returns the socket to
# forward from (e.g. an ssl.SSLSocket after a server-side handshake).
ClientWrapper = Callable[[gevent.socket.socket], gevent.socket.socket]

DEFAULT_UPSTREAM: Address = ("127.0.0.1", 5672)
_RECV_SIZE = 65536
_LINGER_RST = struct.pack("ii", 1, 0)


def rst_close(sock: socket.socket | None) -> None:
    """Close ``sock`` so that the peer sees a RST, not a FIN."""
    if sock is None:
        return
    with contextlib.suppress(OSError):  # already closed: close() below still frees it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    sock.close()


def _unsent_bytes(sock: socket.socket) -> int:
    """Bytes in the kernel send queue not yet acknowledged by the peer."""
    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return int(struct.unpack("i", raw)[0])


class Changes:
    """Wakes every waiter whenever something it watches changes (also used by
    the recovery tests' Watch)."""

    def __init__(self) -> None:
        self._event = Event()

    def notify(self) -> None:
        event, self._event = self._event, Event()
        event.set()

    def wait(self, timeout: float | None) -> None:
        """Block until the next notify() or ``timeout``."""
        self._event.wait(timeout)

    def wait_for(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        """Block until ``predicate()`` is truthy, re-checking after every notify()."""
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            self._event.wait(remaining)


class _LinkDone(Exception):
    """Raised inside a pump when its link has been torn down on purpose."""


class _Link:
    """One proxied connection: the client socket and its upstream socket."""

    _ids = itertools.count(1)

    def __init__(self, client: gevent.socket.socket) -> None:
        self.id = next(self._ids)
        self.client: gevent.socket.socket = client
        self.upstream: gevent.socket.socket | None = None
        self.sent: dict[Direction, int] = {"to_broker": 0, "to_client": 0}
        self.closing = False

    def source(self, direction: Direction) -> gevent.socket.socket:
        sock = self.client if direction == "to_broker" else self.upstream
        assert sock is not None
        return sock

    def dest(self, direction: Direction) -> gevent.socket.socket:
        sock = self.upstream if direction == "to_broker" else self.client
        assert sock is not None
        return sock

    def abort(self) -> None:
        """RST both sides. Pumps blocked on these sockets wake with OSError."""
        if self.closing:
            return
        self.closing = True
        rst_close(self.client)
        rst_close(self.upstream)

    def close(self) -> None:
        """FIN both sides (or just release them when already aborted)."""
        self.closing = True
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            with contextlib.suppress(OSError):  # not connected any more
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class _ResetTrigger:
    """A one-shot ``reset_after``: which link, direction and byte offset."""

    def __init__(self, n_bytes: int, direction: Direction, baselines: dict[int, int]) -> None:
        self.n_bytes = n_bytes
        self.direction = direction
        # Bytes already forwarded by links open when armed; later links start at 0.
        self.baselines = baselines
        self.fired = Event()

    def bytes_before_reset(self, link: _Link, direction: Direction, chunk: int) -> int | None:
        """How many bytes of a ``chunk``-byte send go out before the RST, or None."""
        if direction != self.direction:
            return None
        already = link.sent[direction] - self.baselines.get(link.id, 0)
        remaining = self.n_bytes - already
        return remaining if chunk >= remaining else None


class FaultProxy:
    """A TCP proxy in front of ``upstream`` whose faults tests switch on and off.

    Use as a context manager (``with FaultProxy() as proxy:``) or call
    ``start()`` / ``stop()``. All methods are meant for greenlets of the same
    hub; none of them may be called from another OS thread.
    """

    def __init__(
        self,
        upstream: Address = DEFAULT_UPSTREAM,
        *,
        host: str = "127.0.0.1",
        connect_timeout: float = 5.0,
        wrap_client: ClientWrapper | None = None,
    ) -> None:
        self.upstream = upstream
        self._host = host
        self._port = 0
        self._connect_timeout = connect_timeout
        self._wrap_client = wrap_client
        self._group = Group()
        self._acceptor: gevent.Greenlet | None = None
        self._listener: gevent.socket.socket | None = None
        self._port_holder: gevent.socket.socket | None = None
        self._links: dict[int, _Link] = {}
        self._stopping = False
        self._started = False
        self._blackholed = False
        self._rates: dict[Direction, float | None] = {"to_broker": None, "to_client": None}
        self._refusing: RefuseMode | None = None
        self._trigger: _ResetTrigger | None = None
        self._settings = Changes()  # blackhole / throttle / refuse / stop
        self._progress = Changes()  # bytes, links, accepts
        self.bytes_to_broker = 0
        self.bytes_to_client = 0
        self.connections_accepted = 0  # every TCP connection the listener accepted
        self.connections_refused = 0  # accepted and reset because of refuse(mode="reset")
        self.connections_forwarded = 0  # reached the upstream: a link was made
        self.connections_failed = 0  # upstream connect or client wrap (TLS) failed

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> FaultProxy:
        if self._started:
            raise RuntimeError("FaultProxy already started")
        self._started = True
        self._port_holder = self._bound_socket(0)
        self._port = self._port_holder.getsockname()[1]
        self._listen()
        self._acceptor = gevent.spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        """Kill and join every greenlet, close every socket. Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        self._settings.notify()
        self._close_listener()
        if self._acceptor is not None:
            self._acceptor.kill(block=True, timeout=5)
        for link in list(self._links.values()):
            link.abort()
        self._group.kill(block=True, timeout=5)
        alive = [g for g in self._group if not g.dead]
        if self._port_holder is not None:
            self._port_holder.close()
        self._progress.notify()
        if alive or (self._acceptor is not None and not self._acceptor.dead):
            raise RuntimeError(f"FaultProxy.stop: greenlets still alive: {alive}")

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- where to connect --------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> Address:
        return (self._host, self._port)

    def url(self, vhost: str = "/", user: str = "guest", password: str = "guest") -> str:
        """An amqp:// URL that goes through the proxy."""
        from urllib.parse import quote

        return f"amqp://{user}:{password}@{self._host}:{self._port}/{quote(vhost, safe='')}"

    # -- faults ------------------------------------------------------------

    def reset_all(self) -> int:
        """RST both sides of every open link; returns how many were reset."""
        links = list(self._links.values())
        for link in links:
            link.abort()
        return len(links)

    def close_all(self) -> int:
        """FIN both sides of every open link; returns how many were closed."""
        links = list(self._links.values())
        for link in links:
            link.close()
        return len(links)

    def reset_after(self, n_bytes: int, direction: Direction = "to_client") -> Event:
        """Arm a one-shot reset: the first link to forward ``n_bytes`` more bytes
        in ``direction`` (counted from now for open links, from their start for
        new ones) delivers exactly those bytes, then both its sides get a RST.

        Returns an Event set when the reset has happened. Re-arming replaces a
        pending trigger.
        """
        if n_bytes < 0:
            raise ValueError("n_bytes must be >= 0")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
        baselines = {link.id: link.sent[direction] for link in self._links.values()}
        self._trigger = _ResetTrigger(n_bytes, direction, baselines)
        return self._trigger.fired

    def cancel_reset(self) -> None:
        self._trigger = None

    def blackhole(self, on: bool = True) -> None:
        """Hold all traffic (data, FIN, RST) in both directions, or release it."""
        self._blackholed = on
        self._settings.notify()

    def throttle(self, bytes_per_sec: float | None, direction: Direction | None = None) -> None:
        """Limit each link to ``bytes_per_sec`` per direction (both when None).

        ``0`` stalls the traffic (nothing is lost, nothing arrives); ``None``
        lifts the limit.
        """
        if bytes_per_sec is not None and bytes_per_sec < 0:
            raise ValueError("bytes_per_sec must be >= 0 or None")
        for d in DIRECTIONS if direction is None else (direction,):
            self._rates[d] = bytes_per_sec
        self._settings.notify()

    def refuse(self, on: bool = True, mode: RefuseMode = "close") -> None:
        """Make new connections fail; open links are left alone.

        ``mode="close"``: the listener is closed, connects get ECONNREFUSED.
        ``mode="reset"``: connects succeed, then the proxy resets them at once.
        """
        if mode not in ("close", "reset"):
            raise ValueError(f"mode must be 'close' or 'reset', not {mode!r}")
        if self._stopping:
            raise RuntimeError("FaultProxy is stopped")
        if on:
            self._refusing = mode
            if mode == "close":
                self._close_listener()
            elif self._listener is None:
                self._listen()
        else:
            self._refusing = None
            if self._listener is None:
                self._listen()
        self._settings.notify()

    def heal(self) -> None:
        """Lift every fault: no blackhole, no throttle, no refusal, no pending reset."""
        self._trigger = None
        self._blackholed = False
        self._rates = {"to_broker": None, "to_client": None}
        if self._refusing is not None:
            self.refuse(False)
        self._settings.notify()

    # -- observing ---------------------------------------------------------

    @property
    def active_connections(self) -> int:
        """Links currently open (client accepted and upstream connected)."""
        return len(self._links)

    def bytes_forwarded(self, direction: Direction) -> int:
        return self.bytes_to_broker if direction == "to_broker" else self.bytes_to_client

    def notify_waiters(self) -> None:
        """Re-check every ``wait_for`` predicate (for state kept outside the proxy)."""
        self._progress.notify()

    def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 10.0, what: str = ""
    ) -> None:
        """Block until ``predicate()`` holds; re-checked on every proxy event."""
        self._progress.wait_for(predicate, timeout, what or repr(predicate))

    def wait_for_connections(self, n: int, timeout: float = 10.0) -> None:
        """Block until the listener has accepted ``n`` connections in total."""
        self.wait_for(lambda: self.connections_accepted >= n, timeout, f"{n} accepted connections")

    def wait_for_links(self, n: int, timeout: float = 10.0) -> None:
        """Block until ``n`` links in total have reached the upstream."""
        self.wait_for(
            lambda: self.connections_forwarded >= n, timeout, f"{n} forwarded connections"
        )

    def wait_for_active(self, n: int, timeout: float = 10.0) -> None:
        """Block until exactly ``n`` links are open (e.g. 0: every client gone)."""
        self.wait_for(lambda: len(self._links) == n, timeout, f"{n} open links")

    def wait_for_bytes(self, direction: Direction, n: int, timeout: float = 10.0) -> None:
        """Block until ``n`` bytes in total have been forwarded in ``direction``."""
        self.wait_for(
            lambda: self.bytes_forwarded(direction) >= n, timeout, f"{n} bytes {direction}"
        )

    def __repr__(self) -> str:
        return (
            f"<FaultProxy {self._host}:{self._port} -> {self.upstream[0]}:{self.upstream[1]}"
            f" links={len(self._links)} blackholed={self._blackholed} rates={self._rates}"
            f" refusing={self._refusing}>"
        )

    # -- listener ----------------------------------------------------------

    def _bound_socket(self, port: int) -> gevent.socket.socket:
        # SO_REUSEPORT on both the holder and the listener lets the listener
        # come and go (refuse) while the holder keeps the port ours.
        sock = gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self._host, port))
        return sock

    def _listen(self) -> None:
        listener = self._bound_socket(self._port)
        listener.listen(128)
        self._listener = listener

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()  # wakes the acceptor with OSError

    def _accept_loop(self) -> None:
        while not self._stopping:
            listener = self._listener
            if listener is None:
                self._settings.wait(None)
                continue
            try:
                sock, _ = listener.accept()
            except OSError:
                continue  # listener closed by refuse() or stop(): look again
            self.connections_accepted += 1
            if self._refusing == "reset":
                rst_close(sock)
                self.connections_refused += 1
            else:
                self._group.spawn(self._serve, sock)
            self._progress.notify()

    # -- links -------------------------------------------------------------

    def _serve(self, client: gevent.socket.socket) -> None:
        link = _Link(client)
        self._links[link.id] = link
        try:
            if not self._connect(link):
                self.connections_failed += 1
                link.abort()
                return
            self.connections_forwarded += 1
            self._progress.notify()
            other = self._group.spawn(self._pump, link, "to_client")
            self._pump(link, "to_broker")
            other.join()
        finally:
            link.close()
            self._links.pop(link.id, None)
            self._progress.notify()

    def _connect(self, link: _Link) -> bool:
        """Wrap the client side (TLS) and connect upstream; False on failure."""
        try:
            link.client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._wrap_client is not None:
                link.client = self._wrap_client(link.client)
            upstream = gevent.socket.create_connection(self.upstream, timeout=self._connect_timeout)
        except OSError:
            return False
        upstream.settimeout(None)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link.upstream = upstream
        if link.closing:  # reset_all() ran while we were connecting
            rst_close(upstream)
            return False
        return True

    def _pump(self, link: _Link, direction: Direction) -> None:
        """Copy one direction of a link until EOF, error or teardown."""
        try:
            src, dst = link.source(direction), link.dest(direction)
            while True:
                data = src.recv(_RECV_SIZE)
                if not data:
                    break
                self._forward(link, direction, dst, data)
            self._hold(direction)
            if not link.closing:
                dst.shutdown(socket.SHUT_WR)  # pass the FIN on, keep the other way open
        except _LinkDone:
            return
        except OSError:
            self._propagate_reset(link, direction)

    def _propagate_reset(self, link: _Link, direction: Direction) -> None:
        if link.closing:
            return
        try:
            self._hold(direction)  # a blackhole holds RSTs as well as data
        except _LinkDone:
            return
        link.abort()

    def _hold(self, direction: Direction) -> None:
        """Block while the direction is blackholed or stalled."""
        while self._blackholed or self._rates[direction] == 0:
            if self._stopping:
                raise _LinkDone
            self._settings.wait(None)
        if self._stopping:
            raise _LinkDone

    def _forward(
        self, link: _Link, direction: Direction, dst: gevent.socket.socket, data: bytes
    ) -> None:
        view = memoryview(data)
        while view:
            self._hold(direction)
            if link.closing:
                raise _LinkDone
            rate = self._rates[direction]
            size = len(view) if rate is None else min(len(view), max(1, int(rate / 20)))
            chunk = view[:size]
            trigger = self._trigger
            cut = trigger.bytes_before_reset(link, direction, size) if trigger else None
            if trigger is not None and cut is not None:
                self._trigger = None  # one-shot: claimed before any yield
                self._reset_at(link, direction, dst, chunk[:cut], trigger)
            dst.sendall(chunk)
            self._count(link, direction, size)
            view = view[size:]
            if rate is not None:
                self._settings.wait(size / rate)  # pacing; a new setting cuts it short

    def _reset_at(
        self,
        link: _Link,
        direction: Direction,
        dst: gevent.socket.socket,
        head: memoryview,
        trigger: _ResetTrigger,
    ) -> None:
        if head:
            dst.sendall(head)
            self._count(link, direction, len(head))
        # A RST discards what is still queued: let the peer's kernel take it all.
        deadline = time.monotonic() + 1.0
        while _unsent_bytes(dst) and time.monotonic() < deadline:
            gevent.sleep(0.001)
        link.abort()
        trigger.fired.set()
        self._progress.notify()
        raise _LinkDone

    def _count(self, link: _Link, direction: Direction, n: int) -> None:
        link.sent[direction] += n
        if direction == "to_broker":
            self.bytes_to_broker += n
        else:
            self.bytes_to_client += n
        self._progress.notify()
