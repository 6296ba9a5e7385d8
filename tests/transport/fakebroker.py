"""A scripted fake AMQP 0-9-1 broker on a real loopback socket, for `tests/transport/`.

The peer side speaks AMQP through pamqp — an independent codec — so a test
checks geamqp's wire behaviour against somebody else's encoder and decoder.

How to script a scenario
------------------------

``FakeBroker`` listens on 127.0.0.1 (port 0) and accepts any number of
connections in sequence: connection 0 is the first ``geamqp.connect``,
connection 1 the supervisor's first reconnect, and so on. Each accepted socket
gets a `Peer`, which runs a *script*: by default ``Peer.run`` — the handshake
with the broker's tune values for that connection, then ``serve()``, the
auto-responder, which answers every request the way RabbitMQ would
(open-ok, qos-ok, declare-ok echoing the queue name, consume-ok, confirms for
publishes on a confirm-mode channel...).

Change what happens, from the test, in three ways:

- **rules**: ``broker.on(commands.Basic.Qos, handler, conn=1, channel=1)``
  replaces the default answer to matching requests (first matching rule wins;
  ``times=`` limits it). Ready-made handlers: ``reply_after(event)`` (answer
  once the Event is set; later answers on that channel queue behind it, as a
  broker answers a channel's requests in order), ``no_reply``,
  ``close_channel(403)``, ``close_connection(541)``, ``disconnect``,
  ``send_bytes(b"...")``. A handler is any ``fn(peer, record)``.
- **per-connection settings and scripts**: ``broker.tune[1] = dict(channel_max=2)``;
  ``broker.hold(1)`` returns an Event that connection 1 waits for before it
  says a word; ``broker.refuse(1)`` closes connection 1 at once;
  ``broker.script(2, fn)`` runs ``fn(peer)`` instead of ``Peer.run`` (use
  ``peer.handshake(until="start_ok")`` to stop the handshake early, then
  ``peer.drop()`` / ``peer.close_connection(320)`` / ``peer.serve()``).
- **direct actions** on a live peer (``broker.peer(0)``): ``deliver``, ``ack``,
  ``nack``, ``blocked``, ``close_channel``, ``close_connection``,
  ``send_raw``, ``drop``.

Everything both sides send is recorded in one ordered log (``broker.log``,
`Record` objects with the connection index, channel, pamqp method, and for
publishes the properties, body and confirm seqno). Assert with
``broker.frames(kind, conn=, channel=)`` and wait with
``broker.wait_for(kind, conn=, channel=, where=)`` — waits are driven by the
log's own change Event and bounded (`WAIT` seconds), never by sleep loops.

``broker.stop()`` (the fixture's teardown) closes every socket and kills every
greenlet the broker started.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
from fakepeer import Peer, PeerGone, Record, raw_frame
from gevent.event import Event
from gevent.pool import Group, Pool
from gevent.server import StreamServer

__all__ = [
    "WAIT",
    "FakeBroker",
    "Peer",
    "Record",
    "close_channel",
    "close_connection",
    "disconnect",
    "no_reply",
    "raw_frame",
    "reply_after",
    "send_bytes",
]

WAIT = 1.5  # default bound, in seconds, of every wait on the peer

Handler = Callable[[Peer, Record], None]


@dataclass
class _Rule:
    kind: type
    handler: Handler
    conn: int | None
    channel: int | None
    where: Callable[[Any], bool] | None
    times: int | None

    def matches(self, record: Record) -> bool:
        return (isinstance(record.method, self.kind)
                and (self.times is None or self.times > 0)
                and (self.conn is None or self.conn == record.conn)
                and (self.channel is None or self.channel == record.channel)
                and (self.where is None or self.where(record.method)))


# ------------------------------------------------------------------------- handlers


def no_reply(peer: Peer, record: Record) -> None:
    """Swallow the request: its answer never comes."""


def reply_after(event: Event) -> Handler:
    """Answer normally once `event` is set (later answers on the channel wait behind it)."""

    def handler(peer: Peer, record: Record) -> None:
        peer.reply(record, hold=event)

    return handler


def close_channel(code: int = 403, text: str = "ACCESS_REFUSED - fake") -> Handler:
    """Answer the request with channel.close(code) on its channel."""

    def handler(peer: Peer, record: Record) -> None:
        peer.close_channel(record.channel, code, text, record.method)

    return handler


def close_connection(code: int = 320, text: str = "CONNECTION_FORCED - fake") -> Handler:
    """Answer the request with connection.close(code)."""

    def handler(peer: Peer, record: Record) -> None:
        peer.close_connection(code, text, record.method)

    return handler


def disconnect(peer: Peer, record: Record) -> None:
    """Drop the TCP connection instead of answering."""
    peer.drop()


def send_bytes(data: bytes) -> Handler:
    """Answer with raw bytes (garbage, a bad frame...)."""

    def handler(peer: Peer, record: Record) -> None:
        peer.send_raw(data)

    return handler


# ------------------------------------------------------------------------- the broker


class FakeBroker:
    """A listening fake broker; see the module docstring."""

    def __init__(self, **tune: int) -> None:
        self.default_tune: dict[str, int] = {"channel_max": 2047, "frame_max": 131072,
                                             "heartbeat": 0, **tune}
        self.tune: dict[int, dict[str, int]] = {}  # per connection index, over default_tune
        self.auto_confirm = True  # ack every publish on a confirm-mode channel at once
        self.log: list[Record] = []
        self.peers: list[Peer] = []
        self.rules: list[_Rule] = []
        self._scripts: dict[int, Callable[[Peer], None]] = {}
        self._changed = Event()
        self._counter = itertools.count()
        self._seq = itertools.count()
        self._last_cleared = -1
        self._pool = Pool()
        self.greenlets = Group()  # helpers the peers spawn
        self._server = StreamServer(("127.0.0.1", 0), self._handle, spawn=self._pool)
        self._server.start()

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def params(self, **kwargs: Any) -> Any:
        """`geamqp.ConnectionParameters` for this broker (short timeouts, heartbeat from tune)."""
        import geamqp

        kwargs.setdefault("stack_timeout", 3.0)
        kwargs.setdefault("socket_timeout", 3.0)
        return geamqp.ConnectionParameters(host="127.0.0.1", port=self.port, **kwargs)

    def stop(self) -> None:
        for peer in self.peers:
            peer.drop()
        self.greenlets.kill(block=True, timeout=2)
        self._server.stop(timeout=1)
        self._pool.kill(block=True, timeout=2)

    # ------------------------------------------------------------------ scripting

    def on(self, kind: type, handler: Handler, *, conn: int | None = None,
           channel: int | None = None, where: Callable[[Any], bool] | None = None,
           times: int | None = None) -> None:
        """Answer requests of `kind` (a pamqp method class) with `handler` instead."""
        self.rules.append(_Rule(kind, handler, conn, channel, where, times))

    def script(self, index: int, fn: Callable[[Peer], None]) -> None:
        """Connection `index` runs `fn(peer)` instead of the default handshake + serve."""
        self._scripts[index] = fn

    def hold(self, index: int) -> Event:
        """Connection `index` is accepted but stays silent until the returned Event is set."""
        release = Event()

        def held(peer: Peer) -> None:
            release.wait()
            peer.run()

        self.script(index, held)
        return release

    def refuse(self, index: int) -> None:
        """Connection `index` is closed as soon as it is accepted."""
        self.script(index, lambda peer: peer.drop())

    def tune_for(self, index: int) -> dict[str, int]:
        return {**self.default_tune, **self.tune.get(index, {})}

    def rule_for(self, record: Record) -> _Rule | None:
        for rule in self.rules:
            if rule.matches(record):
                if rule.times is not None:
                    rule.times -= 1
                return rule
        return None

    # ------------------------------------------------------------------ the log

    def record(self, **fields: Any) -> Record:
        record = Record(seq=next(self._seq), **fields)
        self.log.append(record)
        changed, self._changed = self._changed, Event()
        changed.set()
        return record

    def frames(self, kind: type | tuple[type, ...] | None = None, *, conn: int | None = None,
               channel: int | None = None, direction: str = "in",
               where: Callable[[Any], bool] | None = None, after: int = -1) -> list[Record]:
        """Logged records matching every given filter, oldest first."""
        return [r for r in self.log
                if r.seq > after and r.direction == direction
                and (kind is None or isinstance(r.method, kind))
                and (conn is None or r.conn == conn)
                and (channel is None or r.channel == channel)
                and (where is None or where(r.method))]

    def wait_for(self, kind: type | tuple[type, ...] | None = None, *, count: int = 1,
                 timeout: float = WAIT, **filters: Any) -> Record:
        """The `count`-th record matching the filters (see `frames`), waiting up to
        `timeout` seconds for it; AssertionError naming what never came."""
        return self.wait_for_all(kind, count=count, timeout=timeout, **filters)[count - 1]

    def wait_for_all(self, kind: type | tuple[type, ...] | None = None, *, count: int = 1,
                     timeout: float = WAIT, **filters: Any) -> list[Record]:
        deadline = gevent.get_hub().loop.now() + timeout
        while True:
            changed = self._changed
            found = self.frames(kind, **filters)
            if len(found) >= count:
                return found
            left = deadline - gevent.get_hub().loop.now()
            if left <= 0 or not changed.wait(left):
                name = getattr(kind, "__name__", kind)
                raise AssertionError(
                    f"the fake broker saw {len(found)} of {count} {name} {filters} within "
                    f"{timeout} s; last frames: {self.describe(12)}")

    def wait_until(self, condition: Callable[[], bool], timeout: float = WAIT,
                   what: str = "condition") -> None:
        """Wait until `condition()` holds, re-checked whenever the log changes."""
        deadline = gevent.get_hub().loop.now() + timeout
        while True:
            changed = self._changed
            if condition():
                return
            left = deadline - gevent.get_hub().loop.now()
            if left <= 0 or not changed.wait(left):
                raise AssertionError(f"{what} not reached within {timeout} s; "
                                     f"last frames: {self.describe(12)}")

    def mark(self) -> int:
        """The seq of the latest record (-1 if none): pass it as ``after=`` to look
        only at what comes next."""
        return self.log[-1].seq if self.log else self._last_cleared

    def clear_log(self) -> None:
        """Forget the records so far (long runs); sequence numbers keep counting."""
        self._last_cleared = self.mark()
        self.log.clear()

    def describe(self, last: int | None = None) -> str:
        records = self.log if last is None else self.log[-last:]
        return "; ".join(f"{r.conn}{'<' if r.direction == 'in' else '>'}{r.channel}:{r.name}"
                         for r in records)

    def peer(self, index: int, timeout: float = WAIT) -> Peer:
        """The Peer of connection `index`, once accepted."""
        self.wait_until(lambda: len(self.peers) > index, timeout,
                        f"connection {index} accepted")
        return self.peers[index]

    # ------------------------------------------------------------------ accepting

    def _handle(self, sock: Any, address: Any) -> None:
        index = next(self._counter)
        peer = Peer(self, index, sock)
        self.peers.append(peer)
        self.record(conn=index, direction="in", channel=0, method=_Accepted())
        script = self._scripts.pop(index, None) or Peer.run
        try:
            script(peer)
        except PeerGone:
            pass
        finally:
            peer.drop()


class _Accepted:
    """Log marker: a TCP connection was accepted."""

    name = "accepted"
