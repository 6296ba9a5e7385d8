"""Socket, TLS and the three greenlets that move bytes for one connection.

- The *reader* owns the socket's read side: it feeds the protocol engine and
  hands the resulting events to the connection's router. It never runs user
  code, so a slow callback cannot stall heartbeats or other channels.
- The *writer* coalesces: any greenlet appends whole frames to the engine and
  calls `kick()`; the writer wakes once, takes everything queued in that hub
  turn with `data_to_send()` and writes it with one `sendall`.
- The *heartbeat* greenlet calls `engine.tick(now)` four times per interval, so a
  heartbeat goes out at most 3/4 of an interval after the last frame sent (the
  broker allows two intervals), and an idle connection wakes twice per interval.

A send that makes no progress for `write_timeout` seconds means the link is
dead (write stall). OS errors become `StreamLostError` here, at the boundary,
and nowhere else. Closing kills and joins all three greenlets.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket as _stdsocket
import ssl
import time
from collections.abc import Callable
from typing import Any
from weakref import WeakSet

import gevent
from gevent import socket
from gevent.event import Event

from ._hub import cooperate, waiting_bridges
from .exceptions import AMQPConnectionError, AMQPError, ProtocolError, StreamLostError
from .parameters import ConnectionParameters
from .protocol import AMQPConnection
from .protocol import events as ev

__all__ = ["Transport", "open_socket"]

log = logging.getLogger("geamqp.transport")

RECV_SIZE = 64 * 1024

# Every live transport of this process, for the fork handler below.
_live: WeakSet[Transport] = WeakSet()


def _abandon_after_fork() -> None:
    """In a forked child: the inherited reader, writer and heartbeat greenlets would go
    on reading and writing the *parent's* socket (stealing its frames, answering for
    it). Kill them without a word on the wire and drop the child's copy of the fd;
    the parent's connection is untouched. Using the connection in the child raises
    ForkedConnectionError (see _hub.py)."""
    for transport in list(_live):
        transport.abandon()


os.register_at_fork(after_in_child=_abandon_after_fork)
_CLOSE_GRACE = 5.0  # seconds to wait for close-ok after a protocol error
# Bytes of publishes queued for the writer before a publisher waits for it: bounds
# the memory a fast publisher can pin (bodies plus the one joined copy the send
# makes) whatever the message size, and is large enough that small messages
# still leave in big batches (one syscall for thousands).
HIGH_WATER_BYTES = 1024 * 1024


def open_socket(params: ConnectionParameters, deadline: float | None) -> Any:
    """Resolve (through gevent), connect with socket_timeout, wrap in TLS when asked."""
    try:
        infos = socket.getaddrinfo(params.host, params.port, 0, socket.SOCK_STREAM)
    except OSError as exc:
        raise AMQPConnectionError(f"cannot resolve {params.host!r}: {exc}") from None
    errors = []
    for family, kind, proto, _name, addr in infos:
        sock = socket.socket(family, kind, proto)
        limits = [t for t in (params.socket_timeout,
                              None if deadline is None else deadline - time.monotonic())
                  if t is not None]
        sock.settimeout(max(0.001, min(limits)) if limits else None)
        try:
            sock.connect(addr)
        except OSError as exc:
            sock.close()
            errors.append(f"{addr[0]}:{addr[1]}: {_describe(exc)}")
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if params.ssl_options is not None:
            sock = _wrap_tls(sock, params)
        return sock
    raise AMQPConnectionError(f"cannot connect to {params.host}:{params.port}: "
                              + "; ".join(errors))


def _wrap_tls(sock: Any, params: ConnectionParameters) -> Any:
    from gevent import ssl as gssl

    opts = params.ssl_options
    assert opts is not None
    hostname = opts.server_hostname or params.host
    try:
        # gevent's SSLSocket takes any stdlib context, so the user's object is
        # used as it is (CA store, verify mode, minimum version) and the
        # handshake cooperates with the hub.
        return gssl.SSLSocket(sock=sock, server_side=False, server_hostname=hostname,
                              _context=opts.context)
    except OSError as exc:
        sock.close()
        raise AMQPConnectionError(f"TLS handshake with {params.host}:{params.port} failed: "
                                  f"{_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, _stdsocket.timeout)):
        return "timed out"
    if isinstance(exc, ssl.SSLError):  # its errno is an SSL error code, not an OS errno
        return exc.strerror or str(exc)
    if isinstance(exc, OSError) and exc.errno:
        return f"{errno.errorcode.get(exc.errno, exc.errno)} {exc.strerror or ''}".strip()
    return str(exc) or type(exc).__name__


class Transport:
    """Moves bytes between one socket and one protocol engine."""

    def __init__(self, sock: Any, engine: AMQPConnection,
                 on_events: Callable[[list[ev.Event]], None],
                 on_lost: Callable[[AMQPError], None], write_timeout: float | None) -> None:
        self._sock = sock
        self._engine = engine
        self._on_events = on_events
        self._on_lost = on_lost
        self._wake = Event()
        self._sending = False  # a send is in progress (writer or write_now): others wait
        self._sent_directly = False  # write_now() was used in this hub turn
        self._run_callback = gevent.get_hub().loop.run_callback
        self._flushed = Event()
        self._closing = False
        self._lost = False
        self._error: AMQPError | None = None  # why the link failed, for parked publishers
        self._write_timeout = write_timeout
        sock.settimeout(write_timeout)
        self._reader = gevent.spawn(self._read_loop)
        self._writer = gevent.spawn(self._write_loop)
        self._heartbeat: gevent.Greenlet | None = None
        _live.add(self)

    # ------------------------------------------------------------------ writing

    def kick(self) -> None:
        """Ask the writer to flush what the engine has queued, this hub turn."""
        wake = self._wake
        if not wake.is_set():
            wake.set()

    def throttle(self) -> None:
        """Back-pressure for publishers: when many frames wait for the writer (the
        broker reads slower than we publish), wait until the writer has sent them.
        Raises the transport's error when the link fails meanwhile."""
        if self._engine.pending_bytes >= HIGH_WATER_BYTES and not self._closing:
            self._flushed.clear()
            self.kick()
            self._flushed.wait()
            if self._error is not None:
                raise self._error

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far has been handed to the kernel."""
        self._flushed.clear()
        self.kick()
        return bool(self._flushed.wait(timeout)) and self._error is None

    def _send_all(self, data: bytes) -> None:
        """sock.send until all of `data` is out. (gevent's sendall() asks the kernel
        for the socket's buffer size on every call; one send() usually suffices.)
        While the broker has blocked the connection (resource alarm) a slow write is
        expected, not a stall: keep waiting."""
        send = self._sock.send
        total = len(data)
        view = None
        sent = 0
        while sent < total:
            try:
                if view is None:
                    sent = send(data)
                    view = memoryview(data)
                else:
                    sent += send(view[sent:])
            except TimeoutError:
                if not self._engine.blocked:
                    raise

    def write_now(self) -> None:
        """The latency path: the first write of a hub turn is sent from the calling
        greenlet instead of waiting a turn for the writer; later writes of the same
        turn go to the writer, which coalesces them into one send. A lone request
        or publish thus costs no hub turn, and a burst still costs one syscall.

        Back-pressure first: over `HIGH_WATER_BYTES` of queued publishes the caller
        waits for the writer (`throttle`). This is the publish hot path's one call
        after queuing (`Link.push`), so the check costs a publish one comparison."""
        if self._engine.pending_bytes >= HIGH_WATER_BYTES:
            self.throttle()
        if self._sent_directly or self._sending or self._closing:
            self.kick()
            return
        self._sent_directly = True
        self._run_callback(self._new_turn)
        data = self._engine.data_to_send()
        if not data:
            return
        self._sending = True
        try:
            self._send_all(data)
        except OSError as exc:  # TimeoutError included
            self._write_failed(exc)
            return
        finally:
            self._sending = False
        if self._engine.has_output:  # queued by others while we were sending
            self.kick()

    def _new_turn(self) -> None:
        self._sent_directly = False

    def _write_failed(self, exc: OSError) -> None:
        if isinstance(exc, TimeoutError):
            self._fail(StreamLostError(f"write stalled for {self._write_timeout:.1f} s"))
        else:
            self._fail(StreamLostError(f"write failed: {_describe(exc)}"))

    def _write_loop(self) -> None:
        wake = self._wake
        engine = self._engine
        send_all = self._send_all
        try:
            while True:
                wake.wait()
                wake.clear()
                if self._sending:
                    continue  # write_now() is mid-send; it kicks us when it is done
                data = engine.data_to_send()
                if data:
                    self._sending = True
                    try:
                        send_all(data)
                    finally:
                        self._sending = False
                self._flushed.set()
                if self._closing and not engine.has_output:
                    self._shut_socket()
                    return
        except OSError as exc:
            self._write_failed(exc)

    # ------------------------------------------------------------------ reading

    def _read_loop(self) -> None:
        recv = self._sock.recv
        engine = self._engine
        unyielded = 0  # bytes handled since this greenlet last let others run
        waiting = waiting_bridges()  # callbacks from other threads go first
        while True:
            try:
                data = recv(RECV_SIZE)
            except TimeoutError:
                continue  # the socket timeout is for writes; heartbeats watch reads
            except OSError as exc:
                if not self._closing:
                    self._fail(StreamLostError(f"read failed: {_describe(exc)}"))
                return
            try:
                events = engine.receive_data(data)
            except ProtocolError as exc:
                log.error("protocol error from the server, closing with %s: %s",
                          exc.reply_code, exc)
                if exc.events:
                    self._on_events(exc.events)
                self._protocol_failure(exc)
                return
            if events:
                self._on_events(events)
            if engine.has_output:  # replies nobody asked for (close-ok, flow-ok) or acks
                self.kick()
            if not data:
                return
            unyielded += len(data)
            if unyielded >= RECV_SIZE or waiting:
                # recv() returns at once while the broker keeps sending, so this
                # loop would never block: yield after every RECV_SIZE bytes, so
                # dispatchers, the writer and callbacks from other threads get
                # their turn (bounded latency under full load).
                unyielded = 0
                cooperate(waiting)

    def _protocol_failure(self, exc: ProtocolError) -> None:
        if exc.fatal:
            self._fail(exc)
            return
        # connection.close is queued: send it, give the server a moment to
        # answer close-ok, then drop the link whatever it did.
        self.kick()
        waiter = gevent.spawn(self._await_close_ok, exc)
        waiter.join(_CLOSE_GRACE)
        waiter.kill()
        self._fail(exc)

    def _await_close_ok(self, exc: ProtocolError) -> None:
        recv = self._sock.recv
        while True:
            try:
                data = recv(RECV_SIZE)
            except OSError:
                return
            try:
                events = self._engine.receive_data(data)
            except ProtocolError:
                return
            if not data or any(isinstance(e, ev.ConnectionClosed) for e in events):
                return

    # ------------------------------------------------------------------ heartbeats

    def start_heartbeat(self, interval: int) -> None:
        if interval and self._heartbeat is None:
            self._heartbeat = gevent.spawn(self._heartbeat_loop, interval / 4.0)

    def _heartbeat_loop(self, period: float) -> None:
        engine = self._engine
        while not self._closing:
            events = engine.tick(time.monotonic())
            if events:
                self._on_events(events)
            if engine.has_output:  # a heartbeat was queued: wake the writer only then
                self.kick()
            gevent.sleep(period)

    # ------------------------------------------------------------------ closing

    def close_after_flush(self) -> None:
        """Send what is queued (e.g. close-ok), then close the socket."""
        self._closing = True
        self.kick()

    def _fail(self, error: AMQPError) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._error = error
        self._shut_socket()
        self._flushed.set()  # the writer is gone: release publishers parked in throttle()
        self._on_lost(error)

    def _shut_socket(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._sock.close()

    def abandon(self) -> None:
        """After fork(), in the child: stop this transport's greenlets, send nothing."""
        self._closing = True
        self._lost = True
        greenlets = [g for g in (self._reader, self._writer, self._heartbeat) if g is not None]
        for greenlet in greenlets:
            greenlet.kill(block=False)
        with contextlib.suppress(OSError):
            self._sock.close()  # the child's fd only: the parent's stays open, no FIN
        _live.discard(self)

    def abort(self) -> None:
        """Close the socket now and stop every greenlet (not from one of them)."""
        self._closing = True
        self._lost = True
        self._shut_socket()
        self._flushed.set()
        self.stop_greenlets()

    def stop_greenlets(self) -> None:
        current = gevent.getcurrent()
        others = [g for g in (self._reader, self._writer, self._heartbeat)
                  if g is not None and g is not current]
        gevent.killall(others, block=True, timeout=5)
