"""The sans-I/O AMQP 0-9-1 client connection: bytes in, events and bytes out.

    conn = AMQPConnection(ClientSettings(PlainCredentials("guest", "guest")))
    sock.sendall(conn.data_to_send())          # the protocol header
    events = conn.receive_data(sock.recv(n))   # b"" means the peer closed
    sock.sendall(conn.data_to_send())          # replies, including ones nobody asked for
    events += conn.tick(now)                   # heartbeats; time is passed in

The engine implements the handshake (spec 2.2.4), tune negotiation, the
connection and channel state tables of `state.py`, content assembly
(method → header → body frames, spec 4.2.6) and heartbeat bookkeeping. A peer
that breaks the protocol makes `receive_data` raise a `ProtocolError`
subclass after connection.close with its reply code is queued (or, for a
corrupt frame boundary, after everything unsent was dropped); the events
decoded before the fault ride on the exception as `.events`.
"""

from __future__ import annotations

import platform
import struct
from typing import Any

from ..exceptions import (
    AMQPConnectionError,
    AMQPError,
    AMQPHeartbeatTimeout,
    BadHeartbeat,
    ChannelWrongStateError,
    CommandInvalid,
    ConnectionClosedByBroker,
    ConnectionClosedByClient,
    ConnectionWrongStateError,
    ContentTooLarge,
    FrameError,
    IncompatibleProtocolError,
    InvalidFieldError,
    InvalidTuneError,
    NoFreeChannels,
    ProbableAccessDeniedError,
    ProbableAuthenticationError,
    ProtocolError,
    StreamLostError,
    UnexpectedFrame,
    UnknownChannel,
    UnknownMethod,
)
from . import events as ev
from .channel import ChannelRecord
from .frames import (
    FRAME_BODY,
    FRAME_HEADER,
    FRAME_METHOD,
    FRAME_MIN_SIZE,
    HEARTBEAT_FRAME,
    LARGE_PART,
    PROTOCOL_HEADER,
    FrameReader,
    coalesce,
    decode_deliver,
    deliver_at,
    encode_ack,
    encode_content,
    encode_method,
    encode_publish,
    publish_parts,
)
from .properties import BasicProperties, decode_properties, new_properties
from .settings import (
    CAPABILITIES,
    VERSION,
    ClientSettings,
    negotiate_heartbeat,
    negotiate_limit,
)
from .spec import METHODS, SERVER, Basic, Channel, Confirm, Connection, Method
from .state import (
    CHANNEL_LOCAL,
    CHANNEL_TRANSITIONS,
    CONNECTION_LOCAL,
    CONNECTION_TRANSITIONS,
    Action,
    ChanState,
    ConnState,
    Local,
    transition,
)

__all__ = ["AMQPConnection", "ClientSettings", "negotiate_heartbeat", "negotiate_limit"]

_IDS = struct.Struct(">HH")
_CONTENT = struct.Struct(">HHQ")
_CHANNEL_SIZE = struct.Struct(">HI")  # a frame header after its type octet
_HEADER_FRAME = struct.Struct(">BHIHHQH")  # frame header + class, weight, size, flags
_FRAME_HEAD = struct.Struct(">BHI")
_OPEN = ChanState.OPEN
_DELIVER_IDS = b"\x00\x3c\x00\x3c"  # class 60, method 60
_new = object.__new__
_ContentReceived = ev.ContentReceived
_CONN_OPEN = ConnState.OPEN
_DELIVER = Basic.Deliver.INDEX
_ACCESS_REFUSED = 403
_NOT_ALLOWED = 530
_MAX_BODY_SIZE = (1 << 63) - 1


class AMQPConnection:
    """One client connection's protocol state. Not thread-safe; owns no I/O."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self._max_body = min(settings.max_message_size, _MAX_BODY_SIZE)
        self.state = ConnState.AWAIT_START
        self.server_properties: dict[str, Any] = {}
        self.channel_max = settings.channel_max
        self.frame_max = FRAME_MIN_SIZE  # what we may send until tune says otherwise
        self.heartbeat = 0
        self.blocked = False
        self._channels: dict[int, ChannelRecord] = {}
        self._reader = FrameReader(settings.frame_max)
        self._out: list[bytes | memoryview] = [PROTOCOL_HEADER]
        self._large = False  # _out holds a large body part: buffers_to_send() keeps it apart
        self.pending_bytes = 0  # message bodies queued in _out: the writer's back-pressure
        self._prelude = b""  # first bytes, while they might be a protocol header
        self._started = False  # a frame began: no protocol header can follow
        self._closing_error: AMQPError | None = None
        self._received = False  # since the last tick
        self._sent = False
        self._last_recv: float | None = None
        self._last_send: float | None = None

    # ------------------------------------------------------------------ state (one writer)

    def _enter(self, event: Local | ConnState) -> None:
        """The only writer of `state`: a `Local` event through CONNECTION_LOCAL, or
        the next state a method table (CONNECTION_TRANSITIONS) named."""
        if isinstance(event, Local):
            self.state = CONNECTION_LOCAL[self.state][event]
        else:
            self.state = event

    @staticmethod
    def _enter_channel(record: ChannelRecord, event: Local | ChanState) -> None:
        """The only writer of a channel record's state (CHANNEL_LOCAL, or the next
        state CHANNEL_TRANSITIONS named)."""
        if isinstance(event, Local):
            record.state = CHANNEL_LOCAL[record.state][event]
        else:
            record.state = event

    # ------------------------------------------------------------------ properties

    @property
    def is_open(self) -> bool:
        return self.state is ConnState.OPEN

    @property
    def is_closed(self) -> bool:
        """Nothing more will be received or sent."""
        return self.state is ConnState.CLOSED

    def channel_state(self, number: int) -> ChanState:
        record = self._channels.get(number)
        return record.state if record else ChanState.CLOSED

    def channel(self, number: int) -> ChannelRecord:
        """The record of a channel that is not closed (KeyError otherwise)."""
        return self._channels[number]

    @property
    def open_channels(self) -> list[int]:
        return sorted(self._channels)

    @property
    def has_output(self) -> bool:
        """Something is queued for the wire (data_to_send() would not be empty)."""
        return bool(self._out)

    @property
    def peer_spoke(self) -> bool:
        """The server sent at least one byte (a refusal before that is no answer)."""
        return self._started or bool(self._prelude)

    # ------------------------------------------------------------------ output

    def data_to_send(self) -> bytes:
        """Everything queued for the wire since the last call, as one bytes object."""
        out = self._out
        if not out:
            return b""
        self._out = []
        self._sent = True
        self.pending_bytes = 0
        self._large = False
        return bytes(out[0]) if len(out) == 1 else b"".join(out)

    def buffers_to_send(self) -> list[bytes | memoryview]:
        """Like `data_to_send()`, without copying large bodies: runs of small frames
        are joined into one buffer, each large body part (a view of the publisher's
        own bytes) is passed on as it is, for one vectored send (`sendmsg`)."""
        out = self._out
        if not out:
            return []
        self._out = []
        self._sent = True
        self.pending_bytes = 0
        if not self._large:
            return [out[0] if len(out) == 1 else b"".join(out)]
        self._large = False
        return coalesce(out)

    def _send(self, channel: int, method: Method) -> None:
        self._out.append(encode_method(channel, method))

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> list[ev.Event]:
        """Feed bytes from the socket; ``b""`` means the peer closed its side."""
        if self.state is ConnState.CLOSED:
            return []
        if not data:
            return self._on_eof()
        self._received = True
        if not self._started:
            data = self._check_prelude(data)
            if not data:
                return self._incompatible() if self._prelude_complete() else []
        events: list[ev.Event] = []
        reader = self._reader
        buf = reader.take(data)
        pos = 0
        try:
            if reader.error is not None:
                raise reader.error
            avail = len(buf)
            next_span = reader.next_span
            while True:
                if (avail - pos > 11 and buf[pos] == 1
                        and buf[pos + 7:pos + 11] == _DELIVER_IDS):
                    # basic.deliver: in one step when its content is whole here
                    done = self._fused_deliver(buf, pos, events)
                    if done:
                        pos = done
                        continue
                span = next_span(buf, pos)
                if span is None:
                    break
                ftype, channel, start, end = span
                pos = end + 1
                if ftype == FRAME_METHOD:
                    self._on_method_frame(channel, buf, start, end, events)
                    if self.is_closed:
                        break  # closed by this frame: the rest of the chunk is moot
                elif ftype == FRAME_BODY:
                    self._on_body_frame(channel, buf[start:end], events)
                elif ftype == FRAME_HEADER:
                    self._on_header_frame(channel, buf, start, end, events)
                elif channel != 0:
                    raise BadHeartbeat(f"heartbeat frame on channel {channel}")
            reader.keep(buf, pos)
        except ProtocolError as exc:
            if isinstance(exc, FrameError) and reader.error is None:
                reader.error = exc  # the stream is broken: nothing after it is read
            exc.events = events
            self._fail(exc)
            raise
        return events

    def _check_prelude(self, data: bytes) -> bytes:
        """Hold back the first bytes while they may be the server's protocol header."""
        data = self._prelude + data
        if not data.startswith(b"A"):
            # A frame starts here; later chunks may begin with any byte, 'A' included.
            self._started = True
            self._prelude = b""
            return data
        self._prelude = data
        return b""

    def _prelude_complete(self) -> bool:
        if len(self._prelude) < 8:
            return False
        self._enter(Local.ABORT)
        return True

    def _incompatible(self) -> list[ev.Event]:
        offered = self._prelude[:8]
        version = ".".join(str(b) for b in offered[5:8])
        text = f"server answered with protocol header {offered!r} (AMQP {version}), not 0-9-1"
        return [ev.ConnectionClosed(0, text, True, IncompatibleProtocolError(text))]

    def _on_eof(self) -> list[ev.Event]:
        state = self.state
        self._enter(Local.EOF)
        error: AMQPError
        if state is ConnState.CLOSING:
            error = self._closing_error or ConnectionClosedByClient(200, "Normal shutdown")
        elif state is ConnState.AWAIT_START:
            error = IncompatibleProtocolError(
                "the server closed the connection before sending connection.start")
        elif state is ConnState.AWAIT_TUNE:
            error = ProbableAuthenticationError(
                0, "the server closed the connection after connection.start-ok: "
                   "probably wrong credentials")
        elif state is ConnState.AWAIT_OPEN_OK:
            error = ProbableAccessDeniedError(
                0, f"the server closed the connection after connection.open: probably no "
                   f"access to virtual host {self.settings.virtual_host!r}")
        else:
            error = StreamLostError("the server closed the connection (EOF)")
        return [ev.ConnectionClosed(0, str(error), True, error)]

    def _fail(self, exc: ProtocolError) -> None:
        """A protocol fault: queue connection.close with its code, or go silent if fatal."""
        if exc.fatal or self.state in (ConnState.AWAIT_START, ConnState.CLOSED):
            self._enter(Local.ABORT)
            self._out = []
            return
        if self.state is not ConnState.CLOSING:
            self._closing_error = exc
            text = str(exc).encode("utf-8")[:255].decode("utf-8", "ignore")
            self._out.append(encode_method(0, Connection.Close(exc.reply_code, text)))
            self._enter(Local.CLOSE)

    # ------------------------------------------------------------------ frames

    def _fused_deliver(self, buf: bytes, pos: int, events: list[ev.Event]) -> int:
        """basic.deliver, its header and its single body frame, checked and decoded in
        one step straight from the buffer (the hot path of every consumer).

        `pos` is where the method frame starts. Returns where the next frame
        starts, or 0 when the content is not whole in this chunk or anything is
        unusual — then the frame-by-frame path takes over, and it raises what is
        wrong. Every check of `FrameReader.next_span` is made here too.
        """
        avail = len(buf)
        limit = self._reader.max_frame_size - 8
        channel, size = _CHANNEL_SIZE.unpack_from(buf, pos + 1)
        start = pos + 7
        end = start + size
        hpos = end + 1
        if size > limit or hpos + 21 > avail or buf[end] != 0xCE:
            return 0
        htype, hchannel, hsize, class_id, _weight, body_size, flags = _HEADER_FRAME.unpack_from(
            buf, hpos)
        hstart = hpos + 7
        hend = hstart + hsize
        record = self._channels.get(channel)
        if (htype != 2 or hchannel != channel or not 14 <= hsize <= limit or hend >= avail
                or buf[hend] != 0xCE or class_id != 60 or body_size > self._max_body
                or record is None or record.state is not _OPEN or record.method is not None
                or self.state is not _CONN_OPEN):
            return 0
        next_pos: int = hend + 1
        body = b""
        if body_size:
            if next_pos + 7 > avail:
                return 0
            btype, bchannel, bsize = _FRAME_HEAD.unpack_from(buf, next_pos)
            bstart = next_pos + 7
            next_pos = bstart + bsize
            if (btype != 3 or bchannel != channel or bsize != body_size or bsize > limit
                    or next_pos >= avail or buf[next_pos] != 0xCE):
                return 0
            body = buf[bstart:next_pos]
            next_pos += 1
        try:
            method = deliver_at(buf, start, end)
            if flags:
                props, stop = decode_properties(buf, hstart + 12)
                if stop > hend:
                    return 0
            else:
                props = _new(BasicProperties)
        except (struct.error, IndexError, UnicodeDecodeError, InvalidFieldError):
            return 0
        events.append(_ContentReceived(channel, method, props, body))
        return next_pos

    def _on_method_frame(self, channel: int, buf: bytes, start: int, end: int,
                         events: list[ev.Event]) -> None:
        try:
            if end - start < 4:
                raise IndexError("method frame shorter than its ids")
            class_id, method_id = _IDS.unpack_from(buf, start)
            index = (class_id << 16) | method_id
            if index == _DELIVER:
                method: Method = decode_deliver(buf, start, end)
            else:
                cls = METHODS.get(index)
                if cls is None:
                    raise UnknownMethod(f"unknown method {class_id}.{method_id} on channel "
                                        f"{channel}")
                if cls.SENDER is not SERVER and cls.SENDER != "both":
                    raise CommandInvalid(f"{cls.NAME} may only be sent by a client")
                method, stop = cls.decode(buf, start + 4)
                if stop > end:
                    raise InvalidFieldError(f"{cls.NAME} arguments overrun their frame")
        except (struct.error, IndexError, UnicodeDecodeError) as exc:
            raise InvalidFieldError(f"malformed method arguments on channel {channel}: "
                                    f"{type(exc).__name__}") from None
        if channel == 0:
            self._on_connection_method(method, events)
        elif method.CLASS_ID == 10:
            raise CommandInvalid(f"{method.NAME} on channel {channel}, not 0")
        else:
            self._on_channel_method(channel, method, events)

    def _record_for(self, channel: int) -> ChannelRecord | None:
        """The channel a frame is for; None when it should be dropped unread."""
        record = self._channels.get(channel)
        if record is not None:
            return None if record.state is ChanState.CLOSING else record
        if self.state is ConnState.CLOSING:
            return None
        if channel > self.channel_max:
            raise UnknownChannel(f"frame for channel {channel}, above channel_max "
                                 f"{self.channel_max}")
        raise UnknownChannel(f"frame for channel {channel}, which is not open")

    def _on_header_frame(self, channel: int, buf: bytes, start: int, end: int,
                         events: list[ev.Event]) -> None:
        record = self._record_for(channel)
        if record is None or self.state is ConnState.CLOSING:
            return
        if record.method is None or record.properties is not None:
            raise UnexpectedFrame(f"content header on channel {channel} without a content method")
        if end - start < 14:
            raise InvalidFieldError(f"content header on channel {channel} truncated")
        class_id, _weight, body_size = _CONTENT.unpack_from(buf, start)
        if class_id != 60:
            raise UnexpectedFrame(f"content header for class {class_id}, not basic (60)")
        if body_size > self.settings.max_message_size or body_size > _MAX_BODY_SIZE:
            raise ContentTooLarge(
                f"message of {body_size} bytes on channel {channel} exceeds "
                f"max_message_size {self.settings.max_message_size}")
        if buf[start + 12] == 0 and buf[start + 13] == 0:
            props = new_properties()
        else:
            try:
                props, stop = decode_properties(buf, start + 12)
            except (struct.error, IndexError, UnicodeDecodeError) as exc:
                raise InvalidFieldError(f"malformed properties on channel {channel}: "
                                        f"{type(exc).__name__}") from None
            if stop > end:
                raise InvalidFieldError(f"properties on channel {channel} overrun their frame")
        record.properties = props
        record.body_size = body_size
        if body_size == 0:
            self._content_done(record, b"", events)

    def _on_body_frame(self, channel: int, payload: bytes, events: list[ev.Event]) -> None:
        record = self._record_for(channel)
        if record is None or self.state is ConnState.CLOSING:
            return
        if record.properties is None:
            raise UnexpectedFrame(f"content body on channel {channel} without a content header")
        received = record.received + len(payload)
        if received > record.body_size:
            raise UnexpectedFrame(
                f"content body on channel {channel} overruns body_size {record.body_size}")
        if received == record.body_size:
            if record.parts:
                record.parts.append(payload)
                payload = b"".join(record.parts)
            self._content_done(record, payload, events)
        else:
            record.parts.append(payload)
            record.received = received

    def _content_done(self, record: ChannelRecord, body: bytes, events: list[ev.Event]) -> None:
        method = record.method
        props = record.properties
        assert method is not None and props is not None
        record.reset_content()
        events.append(ev.ContentReceived(record.number, method, props, body))

    # ------------------------------------------------------------------ methods

    def _on_connection_method(self, method: Method, events: list[ev.Event]) -> None:
        if method.CLASS_ID != 10:
            raise CommandInvalid(f"{method.NAME} on channel 0")
        step = transition(CONNECTION_TRANSITIONS, self.state, type(method))  # type: ignore[arg-type]
        if step is None:
            raise CommandInvalid(f"{method.NAME} not expected in state {self.state.value}")
        action, next_state = step
        if action is Action.DROP:
            return
        previous = self.state
        self._enter(next_state)  # type: ignore[arg-type]
        if action is Action.START:
            self._on_start(method, events)  # type: ignore[arg-type]
        elif action is Action.SECURE:
            self._send(0, Connection.SecureOk(self._sasl_response))
        elif action is Action.TUNE:
            self._on_tune(method)  # type: ignore[arg-type]
        elif action is Action.OPENED:
            self._channels.clear()
            events.append(ev.ConnectionOpened(self.server_properties, self.channel_max,
                                              self.frame_max, self.heartbeat))
        elif action is Action.PEER_CLOSE:
            self._on_peer_close(method, previous, events)  # type: ignore[arg-type]
        elif action is Action.CROSSING_CLOSE:
            self._send(0, Connection.CloseOk())
        elif action is Action.CLOSE_OK:
            error = self._closing_error or ConnectionClosedByClient(200, "Normal shutdown")
            code = getattr(error, "reply_code", 200)
            events.append(ev.ConnectionClosed(code, str(error), False, error))
        elif action is Action.BLOCKED:
            self.blocked = True
            events.append(ev.ConnectionBlocked(method.reason))  # type: ignore[attr-defined]
        elif action is Action.UNBLOCKED:
            self.blocked = False
            events.append(ev.ConnectionUnblocked())
        else:
            events.append(ev.MethodReceived(0, method))

    def _on_start(self, start: Connection.Start, events: list[ev.Event]) -> None:
        if (start.version_major, start.version_minor) != (0, 9):
            raise CommandInvalid(f"server speaks AMQP {start.version_major}-"
                                 f"{start.version_minor}, not 0-9")
        self.server_properties = start.server_properties or {}
        offered = start.mechanisms.decode("utf-8", "replace").split()
        creds = self.settings.credentials
        chosen = next((m for m in creds.mechanisms() if m in offered), None)
        if chosen is None:
            self._enter(Local.ABORT)
            text = (f"the server offers SASL mechanisms {offered}; {type(creds).__name__} "
                    f"needs one of {list(creds.mechanisms())}")
            events.append(ev.ConnectionClosed(0, text, False, AMQPConnectionError(text)))
            return
        self._sasl_response = creds.response_for(chosen)
        self._send(0, Connection.StartOk(self._client_properties(), chosen,
                                         self._sasl_response, self.settings.locale))

    def _client_properties(self) -> dict[str, Any]:
        props: dict[str, Any] = {
            "product": "geamqp",
            "version": VERSION,
            "platform": f"Python {platform.python_version()}",
            "information": "gevent-native AMQP 0-9-1 client",
            "capabilities": {name: True for name in CAPABILITIES},
        }
        if self.settings.connection_name:
            props["connection_name"] = self.settings.connection_name
        props.update(self.settings.client_properties)
        return props

    def _on_tune(self, tune: Connection.Tune) -> None:
        s = self.settings
        if tune.frame_max and tune.frame_max < FRAME_MIN_SIZE:
            raise InvalidTuneError(f"server frame_max {tune.frame_max} is below the "
                                   f"minimum of {FRAME_MIN_SIZE}")
        self.frame_max = negotiate_limit(s.frame_max, tune.frame_max)
        self.channel_max = negotiate_limit(s.channel_max, tune.channel_max)
        self.heartbeat = negotiate_heartbeat(s.heartbeat, tune.heartbeat,
                                             s.zero_heartbeat_disables)
        self._reader.max_frame_size = self.frame_max
        self._sasl_response = b""
        self._send(0, Connection.TuneOk(self.channel_max, self.frame_max, self.heartbeat))
        self._send(0, Connection.Open(s.virtual_host))

    def _on_peer_close(self, close: Connection.Close, previous: ConnState,
                       events: list[ev.Event]) -> None:
        self._send(0, Connection.CloseOk())
        code, text = close.reply_code, close.reply_text
        error: AMQPError
        if previous is ConnState.AWAIT_TUNE or code == _ACCESS_REFUSED:
            error = ProbableAuthenticationError(code, text)
        elif previous is ConnState.AWAIT_OPEN_OK or code == _NOT_ALLOWED:
            error = ProbableAccessDeniedError(code, text)
        else:
            error = ConnectionClosedByBroker(code, text)
        events.append(ev.ConnectionClosed(code, text, True, error))

    def _on_channel_method(self, channel: int, method: Method, events: list[ev.Event]) -> None:
        record = self._channels.get(channel)
        if record is None:
            self._record_for(channel)  # raises, or returns None while closing
            return
        if self.state is ConnState.CLOSING:
            return
        if record.method is not None:
            raise UnexpectedFrame(f"{method.NAME} on channel {channel} while content of "
                                  f"{record.method.NAME} is incomplete")
        state = record.state
        if state is ChanState.OPEN and method.CLASS_ID != 20:
            # The hot path: every method of the open channel that is not class channel.
            if method.HAS_CONTENT:
                record.method = method
            else:
                events.append(ev.MethodReceived(channel, method))
            return
        step = transition(CHANNEL_TRANSITIONS, state, type(method))  # type: ignore[arg-type]
        if step is None:
            raise CommandInvalid(f"{method.NAME} not expected on channel {channel} in state "
                                 f"{state.value}")
        action, next_state = step
        self._enter_channel(record, next_state)  # type: ignore[arg-type]
        if action is Action.OPENED:
            events.append(ev.ChannelOpened(channel))
        elif action is Action.PEER_CLOSE:
            self._send(channel, Channel.CloseOk())
            del self._channels[channel]
            c: Channel.Close = method  # type: ignore[assignment]
            events.append(ev.ChannelClosed(channel, c.reply_code, c.reply_text, c.class_id,
                                           c.method_id, True))
        elif action is Action.CROSSING_CLOSE:
            self._send(channel, Channel.CloseOk())
        elif action is Action.CLOSE_OK:
            del self._channels[channel]
            code, text = record.close_reason
            events.append(ev.ChannelClosed(channel, code, text, 0, 0, False))
        elif action is Action.FLOW:
            record.flow_active = method.active  # type: ignore[attr-defined]
            self._send(channel, Channel.FlowOk(record.flow_active))
            events.append(ev.MethodReceived(channel, method))
        elif action is Action.DELIVER:
            events.append(ev.MethodReceived(channel, method))  # e.g. flow-ok

    # ------------------------------------------------------------------ client actions

    def _require_open(self) -> None:
        if self.state is not ConnState.OPEN:
            raise ConnectionWrongStateError(f"connection is {self.state.value}, not open")

    def _open_record(self, channel: int) -> ChannelRecord:
        record = self._channels.get(channel)
        if record is None or record.state is not ChanState.OPEN:
            self._require_open()
            state = record.state.value if record else "closed"
            raise ChannelWrongStateError(f"channel {channel} is {state}, not open")
        return record

    def open_channel(self, number: int | None = None) -> int:
        """Queue channel.open; returns the channel number (the lowest free one by default)."""
        self._require_open()
        if number is None:
            number = next((n for n in range(1, self.channel_max + 1)
                           if n not in self._channels), 0)
            if not number:
                raise NoFreeChannels(f"all {self.channel_max} channels are in use")
        elif not 1 <= number <= self.channel_max:
            raise ValueError(f"channel number must be 1..{self.channel_max}, not {number}")
        elif number in self._channels:
            raise ChannelWrongStateError(f"channel {number} is already in use")
        self._channels[number] = ChannelRecord(number)
        self._send(number, Channel.Open())
        return number

    def close_channel(self, channel: int, reply_code: int = 200,
                      reply_text: str = "Normal shutdown") -> None:
        """Queue channel.close; ChannelClosed follows when close-ok arrives."""
        record = self._channels.get(channel)
        if record is None or record.state is ChanState.CLOSING:
            return
        self._require_open()
        self._enter_channel(record, Local.CLOSE)
        record.close_reason = (reply_code, reply_text)
        record.reset_content()
        self._send(channel, Channel.Close(reply_code, reply_text, 0, 0))

    def send_method(self, channel: int, method: Method) -> None:
        """Queue a method without content on an open channel (or channel 0)."""
        if method.HAS_CONTENT:
            raise TypeError(f"{method.NAME} carries content: use send_content()")
        if channel == 0:
            self._require_open()
        else:
            record = self._open_record(channel)
            if type(method) is Confirm.Select:
                record.confirm_mode = True
        self._out.append(encode_method(channel, method))

    def send_content(self, channel: int, method: Method, properties: BasicProperties | None,
                     body: bytes) -> int:
        """Queue a content method with its header and body; returns the publish seqno
        in confirm mode, else 0."""
        record = self._open_record(channel)
        self._out.append(encode_content(channel, method, properties, body, self.frame_max))
        self.pending_bytes += len(body)
        if record.confirm_mode:
            record.publish_seqno += 1
            return record.publish_seqno
        return 0

    def publish(self, channel: int, exchange: str, routing_key: str, body: bytes,
                properties: BasicProperties | None = None, mandatory: bool = False,
                immediate: bool = False) -> int:
        """Queue basic.publish (hot path); returns the publish seqno in confirm mode, else 0."""
        record = self._channels.get(channel)
        if record is None or record.state is not ChanState.OPEN:
            record = self._open_record(channel)
        size = len(body)
        if size < LARGE_PART:
            self._out.append(encode_publish(channel, exchange, routing_key, body, properties,
                                            self.frame_max, mandatory, immediate))
        else:  # the frames' heads, and views of the body: no copy of it until the kernel's
            self._out.extend(publish_parts(channel, exchange, routing_key, body, properties,
                                           self.frame_max, mandatory, immediate))
            self._large = True
        self.pending_bytes += size + 64  # a frame's overhead, roughly: empty bodies count
        if record.confirm_mode:
            record.publish_seqno += 1
            return record.publish_seqno
        return 0

    def ack(self, channel: int, delivery_tag: int, multiple: bool = False) -> None:
        """Queue basic.ack (hot path)."""
        record = self._channels.get(channel)
        if record is None or record.state is not ChanState.OPEN:
            self._open_record(channel)
        self._out.append(encode_ack(channel, delivery_tag, multiple))

    def update_secret(self, new_secret: bytes, reason: str) -> None:
        """Queue connection.update-secret (RabbitMQ extension, e.g. for OAuth 2 tokens)."""
        self.send_method(0, Connection.UpdateSecret(new_secret, reason))

    def close(self, reply_code: int = 200, reply_text: str = "Normal shutdown",
              class_id: int = 0, method_id: int = 0) -> bool:
        """Queue connection.close; returns False when one was already sent or cannot be."""
        if self.state in (ConnState.CLOSING, ConnState.CLOSED):
            return False
        if self.state is ConnState.AWAIT_START:
            self._enter(Local.CLOSE)
            return False
        self._closing_error = ConnectionClosedByClient(reply_code, reply_text)
        self._send(0, Connection.Close(reply_code, reply_text, class_id, method_id))
        self._enter(Local.CLOSE)
        return True

    # ------------------------------------------------------------------ time

    def tick(self, now: float) -> list[ev.Event]:
        """Heartbeat bookkeeping (spec 4.2.7); call at least every heartbeat/2 seconds.

        Queues a heartbeat when nothing was sent for heartbeat/2 seconds and
        reports the peer dead after two silent intervals.
        """
        if self._received or self._last_recv is None:
            self._last_recv = now
            self._received = False
        if self._sent or self._last_send is None:
            self._last_send = now
            self._sent = False
        interval = self.heartbeat
        if not interval or self.state is ConnState.CLOSED:
            return []
        if now - self._last_send >= interval / 2:
            self._out.append(HEARTBEAT_FRAME)
            self._last_send = now  # counted as sent now, not at the next tick
        silent = now - self._last_recv
        if silent < 2 * interval:
            return []
        self._enter(Local.ABORT)
        self._out = []
        error = AMQPHeartbeatTimeout(f"no data from the server for {silent:.1f} s "
                                     f"(heartbeat {interval} s)")
        return [ev.HeartbeatTimeout(silent), ev.ConnectionClosed(0, str(error), True, error)]
