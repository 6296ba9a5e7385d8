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

import contextlib
import itertools
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent import socket
from gevent.event import Event
from gevent.pool import Group, Pool
from gevent.server import StreamServer
from pamqp import body as pbody
from pamqp import commands as C
from pamqp import frame as pframe
from pamqp import header as pheader
from pamqp.heartbeat import Heartbeat

__all__ = [
    "WAIT",
    "FakeBroker",
    "Peer",
    "Record",
    "close_channel",
    "close_connection",
    "disconnect",
    "no_reply",
    "reply_after",
    "send_bytes",
]

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
WAIT = 2.0  # default bound, in seconds, of every wait on the peer
_FRAME_HEADER = struct.Struct(">BHI")
SERVER_PROPERTIES = {
    "product": "fakebroker",
    "version": "3.10.8",
    "capabilities": {
        "publisher_confirms": True,
        "basic.nack": True,
        "consumer_cancel_notify": True,
        "connection.blocked": True,
        "authentication_failure_close": True,
    },
}

Handler = Callable[["Peer", "Record"], None]


class PeerGone(Exception):
    """The socket is closed: the script ends."""


@dataclass(frozen=True)
class Record:
    """One frame (or whole publish) in the log, in the order it crossed the wire."""

    seq: int  # position in broker.log
    conn: int  # connection index: 0 is the first accepted connection
    direction: str  # "in": the client sent it; "out": the peer sent it
    channel: int
    method: Any  # a pamqp method (Frame), Heartbeat, or ProtocolHeader
    properties: Any = None  # publishes and deliveries: pamqp Basic.Properties
    body: bytes | None = None
    seqno: int | None = None  # a publish on a confirm-mode channel: its confirm number

    @property
    def name(self) -> str:
        return getattr(self.method, "name", type(self.method).__name__)


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


@dataclass
class _ChannelState:
    state: str = "open"  # "open", or "closing" after the peer sent channel.close
    confirm_seqno: int | None = None  # set once confirm.select was answered
    pending: deque[tuple[Event | None, list[Any]]] = field(default_factory=deque)
    flusher: Any = None


class Peer:
    """The broker side of one accepted connection."""

    def __init__(self, broker: FakeBroker, index: int, sock: Any) -> None:
        self.broker = broker
        self.index = index
        self.sock = sock
        self.channels: dict[int, _ChannelState] = {}
        self.start_ok: Any = None
        self.gone = Event()
        self._buffer = bytearray()
        self._names = itertools.count(1)

    # ------------------------------------------------------------------ scripts

    def run(self) -> None:
        """The default script: handshake with the broker's tune for this connection, serve."""
        self.handshake(**self.broker.tune_for(self.index))
        self.serve()

    def handshake(self, *, channel_max: int = 2047, frame_max: int = 131072,
                  heartbeat: int = 0, until: str | None = None) -> None:
        """Server side of the handshake. `until` ("header", "start_ok", "tune_ok",
        "open") stops right after receiving that client frame, unanswered."""
        header = self._recv_exact(8)
        self._log("in", 0, pheader.ProtocolHeader())
        if header != PROTOCOL_HEADER:
            raise AssertionError(f"client sent protocol header {header!r}")
        if until == "header":
            return
        self.send(C.Connection.Start(server_properties=SERVER_PROPERTIES,
                                     mechanisms="PLAIN AMQPLAIN", locales="en_US"))
        self.start_ok = self.expect(C.Connection.StartOk)
        if until == "start_ok":
            return
        self.send(C.Connection.Tune(channel_max=channel_max, frame_max=frame_max,
                                    heartbeat=heartbeat))
        self.expect(C.Connection.TuneOk)
        if until == "tune_ok":
            return
        self.expect(C.Connection.Open)
        if until == "open":
            return
        self.send(C.Connection.OpenOk())

    def serve(self) -> None:
        """Read and answer until the socket closes."""
        while True:
            record = self.read()
            if isinstance(record.method, Heartbeat):
                continue
            if self._ignored(record):
                continue
            rule = self.broker.rule_for(record)
            if rule is not None:
                rule.handler(self, record)
            else:
                self.reply(record)

    def _ignored(self, record: Record) -> bool:
        """After the peer sent channel.close, the channel only listens for close(-ok)."""
        state = self.channels.get(record.channel)
        if state is None or state.state != "closing":
            return False
        if isinstance(record.method, (C.Channel.CloseOk, C.Channel.Close)):
            del self.channels[record.channel]
            if isinstance(record.method, C.Channel.Close):
                self.send(C.Channel.CloseOk(), record.channel)
        return True

    # ------------------------------------------------------------------ reading

    def _recv_more(self) -> None:
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.gone.set()
            raise PeerGone
        self._buffer += data

    def _recv_exact(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._recv_more()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _read_frame(self) -> tuple[int, Any]:
        head = self._recv_exact(_FRAME_HEADER.size)
        _, channel, size = _FRAME_HEADER.unpack(head)
        rest = self._recv_exact(size + 1)
        _, channel, value = pframe.unmarshal(head + rest)
        return channel, value

    def read(self) -> Record:
        """The next frame from the client, logged; a publish is read whole."""
        channel, value = self._read_frame()
        if not isinstance(value, C.Basic.Publish):
            return self._log("in", channel, value)
        content: Any = self._read_frame()[1]
        body = bytearray()
        while len(body) < content.body_size:
            body += self._read_frame()[1].value
        state = self.channels.get(channel)
        seqno = None
        if state is not None and state.confirm_seqno is not None:
            state.confirm_seqno += 1
            seqno = state.confirm_seqno
        return self._log("in", channel, value, content.properties, bytes(body), seqno)

    def expect(self, kind: type) -> Any:
        record = self.read()
        if not isinstance(record.method, kind):
            raise AssertionError(f"expected {kind.__name__} from the client, got {record.name}")
        return record.method

    def _log(self, direction: str, channel: int, method: Any, properties: Any = None,
             body: bytes | None = None, seqno: int | None = None) -> Record:
        return self.broker.record(conn=self.index, direction=direction, channel=channel,
                                  method=method, properties=properties, body=body, seqno=seqno)

    # ------------------------------------------------------------------ answering

    def reply(self, record: Record, hold: Event | None = None) -> None:
        """The default answer to `record`, sent now or (with `hold`, or behind an
        earlier held answer on the same channel) in order once released."""
        if record.channel and isinstance(record.method, C.Channel.Open):
            self.channels[record.channel] = _ChannelState()
        # Taken before a channel.close forgets the channel: its close-ok still queues
        # behind held answers.
        state = self.channels.setdefault(record.channel, _ChannelState())
        replies = self._default_reply(record)
        if hold is None and not state.pending:
            self._send_all(record.channel, replies)
        else:
            state.pending.append((hold, replies))
            if state.flusher is None:
                state.flusher = self.broker.greenlets.spawn(self._flush, record.channel, state)
        if isinstance(record.method, (C.Connection.CloseOk, C.Connection.Close)):
            self.drop()

    def _flush(self, channel: int, state: _ChannelState) -> None:
        while state.pending:
            hold, replies = state.pending[0]
            if hold is not None:
                hold.wait()
            state.pending.popleft()
            with contextlib.suppress(OSError):
                self._send_all(channel, replies)
        state.flusher = None

    def _send_all(self, channel: int, replies: list[Any]) -> None:
        for method in replies:
            self.send(method, channel)

    def _default_reply(self, record: Record) -> list[Any]:
        method, channel = record.method, record.channel
        kind = type(method)
        if kind is C.Channel.Close:
            self.channels.pop(channel, None)
        if kind is C.Basic.Publish:
            if record.seqno is not None and self.broker.auto_confirm:
                return [C.Basic.Ack(delivery_tag=record.seqno)]
            return []
        if getattr(method, "nowait", False):
            return []
        if kind is C.Confirm.Select:
            state = self.channels.setdefault(channel, _ChannelState())
            state.confirm_seqno = 0
        if kind is C.Queue.Declare:
            return [C.Queue.DeclareOk(queue=method.queue or f"amq.gen-{next(self._names)}",
                                      message_count=0, consumer_count=0)]
        if kind is C.Basic.Consume:
            return [C.Basic.ConsumeOk(consumer_tag=method.consumer_tag
                                      or f"amq.ctag-{next(self._names)}")]
        if kind is C.Basic.Cancel:
            return [C.Basic.CancelOk(consumer_tag=method.consumer_tag)]
        if kind is C.Channel.Flow:
            return [C.Channel.FlowOk(active=method.active)]
        if kind in (C.Queue.Purge, C.Queue.Delete):
            return [_OK[kind](message_count=0)]
        ok = _OK.get(kind)
        return [ok()] if ok is not None else []

    # ------------------------------------------------------------------ sending

    def send(self, method: Any, channel: int = 0) -> None:
        """Send one method frame (or heartbeat) now."""
        self._log("out", channel, method)
        self._sendall(pframe.marshal(method, channel))

    def _sendall(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            self.gone.set()

    def send_raw(self, data: bytes) -> None:
        self._log("out", 0, _Raw(data))
        self._sendall(data)

    def deliver(self, channel: int, consumer_tag: str, delivery_tag: int, body: bytes = b"m",
                *, redelivered: bool = False, exchange: str = "", routing_key: str = "q",
                properties: Any = None) -> None:
        """basic.deliver + content header + body, in one write."""
        method = C.Basic.Deliver(consumer_tag=consumer_tag, delivery_tag=delivery_tag,
                                 redelivered=redelivered, exchange=exchange,
                                 routing_key=routing_key)
        props = properties or C.Basic.Properties()
        self._log("out", channel, method, props, body)
        data = pframe.marshal(method, channel)
        data += pframe.marshal(pheader.ContentHeader(0, len(body), props), channel)
        if body:
            data += pframe.marshal(pbody.ContentBody(body), channel)
        self._sendall(data)

    def ack(self, channel: int, delivery_tag: int, multiple: bool = False) -> None:
        self.send(C.Basic.Ack(delivery_tag=delivery_tag, multiple=multiple), channel)

    def nack(self, channel: int, delivery_tag: int, multiple: bool = False) -> None:
        self.send(C.Basic.Nack(delivery_tag=delivery_tag, multiple=multiple, requeue=False),
                  channel)

    def blocked(self, reason: str = "low on memory") -> None:
        self.send(C.Connection.Blocked(reason=reason))

    def unblocked(self) -> None:
        self.send(C.Connection.Unblocked())

    def close_channel(self, channel: int, code: int = 403, text: str = "ACCESS_REFUSED - fake",
                      cause: Any = None) -> None:
        """channel.close from the broker; the channel then ignores all but close-ok."""
        class_id, method_id = _ids(cause)
        self.channels.setdefault(channel, _ChannelState()).state = "closing"
        self.send(C.Channel.Close(reply_code=code, reply_text=text, class_id=class_id,
                                  method_id=method_id), channel)

    def close_connection(self, code: int = 320, text: str = "CONNECTION_FORCED - fake",
                         cause: Any = None) -> None:
        """connection.close from the broker; `serve()` drops the socket on close-ok."""
        class_id, method_id = _ids(cause)
        self.send(C.Connection.Close(reply_code=code, reply_text=text, class_id=class_id,
                                     method_id=method_id))

    def drop(self) -> None:
        """Close the TCP connection now (the client sees EOF)."""
        if self.gone.is_set() and self.sock.fileno() == -1:
            return
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        self.gone.set()


class _Raw:
    """Log marker for raw bytes the peer sent."""

    name = "raw"

    def __init__(self, data: bytes) -> None:
        self.data = data


def _ids(cause: Any) -> tuple[int, int]:
    index = getattr(cause, "index", 0)
    return index >> 16, index & 0xFFFF


_OK: dict[type, type] = {
    C.Channel.Open: C.Channel.OpenOk,
    C.Channel.Close: C.Channel.CloseOk,
    C.Basic.Qos: C.Basic.QosOk,
    C.Basic.Get: C.Basic.GetEmpty,
    C.Basic.Recover: C.Basic.RecoverOk,
    C.Confirm.Select: C.Confirm.SelectOk,
    C.Tx.Select: C.Tx.SelectOk,
    C.Tx.Commit: C.Tx.CommitOk,
    C.Tx.Rollback: C.Tx.RollbackOk,
    C.Exchange.Declare: C.Exchange.DeclareOk,
    C.Exchange.Delete: C.Exchange.DeleteOk,
    C.Exchange.Bind: C.Exchange.BindOk,
    C.Exchange.Unbind: C.Exchange.UnbindOk,
    C.Queue.Bind: C.Queue.BindOk,
    C.Queue.Unbind: C.Queue.UnbindOk,
    C.Queue.Purge: C.Queue.PurgeOk,
    C.Queue.Delete: C.Queue.DeleteOk,
    C.Connection.Close: C.Connection.CloseOk,
    C.Connection.UpdateSecret: C.Connection.UpdateSecretOk,
}


def raw_frame(frame_type: int, channel: int, payload: bytes, end: int = 0xCE) -> bytes:
    """One frame built by hand (for malformed input)."""
    return _FRAME_HEADER.pack(frame_type, channel, len(payload)) + payload + bytes((end,))
