"""The connection object kombu holds: a geamqp Connection plus the delivery handoff.

`post()` is called from geamqp's dispatcher greenlets (deliveries, cancels,
returns, channel closes); `drain_events()` runs what was posted, in the
greenlet kombu drains from. See the package docstring for why.
"""

from __future__ import annotations

import contextlib
import math
import os
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any

from gevent.event import Event

import geamqp
from geamqp.exceptions import AMQPError, ConnectionWrongStateError

from ._channel import Channel

__all__ = ["Connection", "connection_parameters"]

# transport_options passed to geamqp.ConnectionParameters as they are.
_PARAMETER_OPTIONS = ("frame_max", "channel_max", "socket_timeout", "blocked_connection_timeout",
                      "client_properties", "locale", "max_message_size")
_SSL_KEYS = frozenset({"ca_certs", "certfile", "keyfile", "cert_reqs", "server_hostname",
                       "context"})


class Connection:
    """One broker connection as kombu's transport sees it (``kombu.Connection.connection``)."""

    def __init__(self, conn: geamqp.Connection, client: Any, heartbeat: int | None,
                 confirm_publish: bool) -> None:
        self._conn = conn
        self.client = client
        self.heartbeat = float(heartbeat or 0)
        self.confirm_publish = confirm_publish
        self._pending: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._wake = Event()
        self._error: BaseException | None = None
        self._pid = os.getpid()
        self._dropped = False  # kombu closed or collected it
        conn.add_on_close_callback(self._on_closed)

    def __repr__(self) -> str:
        return f"<geamqp.kombu.Connection {self._conn!r}>"

    @property
    def geamqp_connection(self) -> geamqp.Connection:
        """The underlying `geamqp.Connection`."""
        return self._conn

    @property
    def server_properties(self) -> dict[str, Any]:
        return self._conn.server_properties

    @property
    def connected(self) -> bool:
        """True until kombu closed or collected this connection (or it crossed a fork).

        Not "the link is up": geamqp's reader sees a lost link between two kombu
        calls, and kombu's ``Connection.connection`` silently opens a new one when
        this turns False. A Celery worker would then drain a fresh connection that
        has none of its consumers, and stop taking tasks without a word. Staying
        True makes the loss surface as the connection error kombu and Celery
        recover from: the next ``drain_events`` or channel call raises it (as
        py-amqp's reads do), and they collect and reconnect."""
        return not self._dropped and os.getpid() == self._pid

    @property
    def is_alive(self) -> bool:
        """The link is up (or geamqp is recovering it)."""
        return self._error is None and not self._conn.is_closed and os.getpid() == self._pid

    def channel(self) -> Channel:
        return Channel(self, self._conn.channel())

    # ------------------------------------------------------------------ handoff

    @property
    def pending(self) -> int:
        """Deliveries (and cancels, returns, errors) waiting for the next drain_events()."""
        return len(self._pending)

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the next `drain_events()`. Called from geamqp's greenlets."""
        if self._error is None:
            self._pending.append((fn, args))
            wake = self._wake
            if not wake.is_set():
                wake.set()

    def drain_events(self, timeout: float | None = None) -> None:
        """Run every delivery (and cancel, return, channel error) buffered now.

        Waits up to `timeout` seconds (None: for ever) for the first; raises
        `socket.timeout` when none came, and the connection's closing exception
        once it is closed (what was still buffered is dropped: the broker
        requeues unacked deliveries, and they could not be acked any more).
        """
        pending = self._pending
        if not pending and self._error is None:
            self._wake.clear()
            if not self._wake.wait(timeout):
                raise TimeoutError("timed out")  # socket.timeout is TimeoutError
        if self._error is not None:
            raise self._error
        for _ in range(len(pending)):
            # A callback may yield (Celery's pool.spawn waits for a free slot): the
            # connection can close meanwhile (which empties the queue), and another
            # greenlet may drain too.
            if not pending:
                break
            fn, args = pending.popleft()
            fn(*args)
        if self._error is not None:
            raise self._error

    def _on_closed(self, _conn: geamqp.Connection, error: AMQPError) -> None:
        self._error = error
        self._pending.clear()
        self._wake.set()

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Close the connection (bounded: geamqp gives the broker 5 s to answer)."""
        self._dropped = True
        if os.getpid() != self._pid:
            self.collect()
            return
        self._conn.close()

    def collect(self) -> None:
        """Drop this connection quickly: closed if it is ours, left untouched (no byte
        on the parent's socket) when it was inherited through fork()."""
        self._dropped = True
        if os.getpid() != self._pid:
            if self._error is None:
                self._error = ConnectionWrongStateError(
                    "this kombu connection was inherited through fork(); it was dropped")
            self._pending.clear()
            return
        with contextlib.suppress(AMQPError):
            self._conn.close()


# ---------------------------------------------------------------------- parameters


def connection_parameters(conninfo: Any, options: dict[str, Any],
                          tls_name: str | None = None) -> geamqp.ConnectionParameters:
    """geamqp parameters from a kombu.Connection's fields and transport_options;
    `tls_name` is the name to send as SNI and verify (default: the host)."""
    password = conninfo.password
    if callable(password):  # resolved on every connection attempt: credential refresh
        password = password()
    credentials: Any
    if (conninfo.login_method or "").upper() == "EXTERNAL":
        credentials = geamqp.ExternalCredentials()
    else:
        credentials = geamqp.PlainCredentials(conninfo.userid or "guest", password or "")
    extra = {name: options[name] for name in _PARAMETER_OPTIONS if name in options}
    return geamqp.ConnectionParameters(
        host=conninfo.hostname, port=int(conninfo.port), virtual_host=conninfo.virtual_host or "/",
        credentials=credentials, heartbeat=_heartbeat(conninfo.heartbeat, options),
        ssl_options=ssl_options(conninfo.ssl, tls_name or conninfo.hostname),
        stack_timeout=float(conninfo.connect_timeout or 15.0), **extra)


def _heartbeat(requested: float | None, options: dict[str, Any]) -> int | None:
    if "heartbeat" in options:
        return int(options["heartbeat"])
    if not requested:
        return None  # the broker's proposal: geamqp's greenlets keep heartbeats for free
    return max(1, math.ceil(float(requested)))


def ssl_options(value: Any, host: str) -> geamqp.SSLOptions | None:
    """kombu's ``ssl`` (False, True, an SSLContext, geamqp.SSLOptions or py-amqp's dict
    of ca_certs / certfile / keyfile / cert_reqs / server_hostname) as SSLOptions."""
    if not value:
        return None
    if isinstance(value, geamqp.SSLOptions):
        return value
    if value is True:
        return geamqp.SSLOptions(None, host)
    if isinstance(value, ssl.SSLContext):
        return geamqp.SSLOptions(value, host)
    if not isinstance(value, dict):
        raise TypeError(f"ssl must be a bool, dict, ssl.SSLContext or geamqp.SSLOptions, "
                        f"not {type(value).__name__}")
    unknown = set(value) - _SSL_KEYS
    if unknown:
        raise ValueError(f"unknown ssl option(s) {sorted(unknown)}; known: {sorted(_SSL_KEYS)}")
    options = geamqp.SSLOptions(value.get("context"), value.get("server_hostname") or host)
    context = options.context
    if value.get("cert_reqs") == ssl.CERT_NONE:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if value.get("ca_certs"):
        context.load_verify_locations(cafile=value["ca_certs"])
    if value.get("certfile"):
        context.load_cert_chain(value["certfile"], value.get("keyfile"))
    return options
