"""The broker side of one fake AMQP connection (see fakebroker.py for how to script it).

A `Peer` reads what the client sends with pamqp, logs it through its broker,
answers like RabbitMQ would (``serve()``), and offers the actions a test
drives by hand: deliveries, confirms, blocked, closes, raw bytes, a dropped
socket.
"""

from __future__ import annotations

import contextlib
import itertools
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gevent import socket
from gevent.event import Event
from pamqp import body as pbody
from pamqp import commands as C
from pamqp import frame as pframe
from pamqp import header as pheader
from pamqp.heartbeat import Heartbeat

if TYPE_CHECKING:
    from fakebroker import FakeBroker

__all__ = ["PROTOCOL_HEADER", "Peer", "PeerGone", "Record", "raw_frame"]

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
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
