"""A minimal raw-socket AMQP 0-9-1 client: the floor the libraries are measured against.

No library: a blocking stdlib socket, the handshake written by hand, frames
pre-encoded with `struct`. Publishing sends pre-built method + header + body
frames in large chunks; consuming parses only what it must (the delivery tag
of basic.deliver, reply_to/correlation_id for RPC) and acks once per
`recv()` batch. It assumes a well-behaved broker (RabbitMQ on localhost) and
checks little: that is the point. The parent process of compare.py also uses
it to declare, pre-fill and delete the benchmark queues.
"""

from __future__ import annotations

import socket
import struct
import time
from urllib.parse import unquote, urlparse

from . import POLL_INTERVAL, Meter, percentiles

_FRAME_HEADER = struct.Struct(">BHI")
_CLASS_METHOD = struct.Struct(">HH")
_FRAME_END = b"\xce"
_Q = struct.Struct(">Q")

# (class, method) ids as the 4 bytes that open a method frame's payload
_START = b"\x00\x0a\x00\x0a"
_TUNE = b"\x00\x0a\x00\x1e"
_OPEN_OK = b"\x00\x0a\x00\x29"
_CLOSE_OK = b"\x00\x0a\x00\x33"
_DECLARE_OK = b"\x00\x32\x00\x0b"
_DELIVER = b"\x00\x3c\x00\x3c"
_ACK = b"\x00\x3c\x00\x50"
_NACK = b"\x00\x3c\x00\x78"
_CONNECTION_CLOSE = b"\x00\x0a\x00\x32"
_CHANNEL_CLOSE = b"\x00\x14\x00\x28"

_FLAG_CORRELATION_ID = 0x0400
_FLAG_REPLY_TO = 0x0200


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _FRAME_HEADER.pack(kind, channel, len(payload)) + payload + _FRAME_END


def shortstr(value: str) -> bytes:
    raw = value.encode()
    return bytes([len(raw)]) + raw


def method(channel: int, class_id: int, method_id: int, args: bytes = b"") -> bytes:
    return frame(1, channel, _CLASS_METHOD.pack(class_id, method_id) + args)


def publish_frames(channel: int, routing_key: str, body: bytes, properties: bytes = b"",
                   flags: int = 0) -> bytes:
    """basic.publish to the default exchange + content header + one body frame."""
    publish = method(channel, 60, 40, b"\x00\x00" + shortstr("") + shortstr(routing_key) + b"\x00")
    header = frame(2, channel, struct.pack(">HHQH", 60, 0, len(body), flags) + properties)
    return publish + header + frame(3, channel, body)


def ack_frame(channel: int, tag: int, multiple: bool = False) -> bytes:
    return method(channel, 60, 80, _Q.pack(tag) + (b"\x01" if multiple else b"\x00"))


def declare_frame(channel: int, queue: str, passive: bool = False) -> bytes:
    return method(channel, 50, 10, b"\x00\x00" + shortstr(queue)
                  + (b"\x01" if passive else b"\x00") + b"\x00\x00\x00\x00")


class RawConnection:
    """One AMQP connection over a plain blocking socket."""

    def __init__(self, url: str) -> None:
        parts = urlparse(url)
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pos = 0
        self.server_version = "unknown"
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        self._handshake(unquote(parts.username or "guest"), unquote(parts.password or "guest"),
                        vhost)

    # ---------------------------------------------------------------- frames in

    def _fill(self) -> None:
        if self.pos:
            del self.buf[:self.pos]
            self.pos = 0
        data = self.sock.recv(262144)
        if not data:
            raise EOFError("broker closed the connection")
        self.buf += data

    def next_frame(self) -> tuple[int, int, bytes]:
        """(type, channel, payload) of the next frame, reading as needed."""
        while True:
            buf, pos = self.buf, self.pos
            if len(buf) - pos >= 7:
                kind, channel, size = _FRAME_HEADER.unpack_from(buf, pos)
                end = pos + 7 + size
                if len(buf) > end:
                    self.pos = end + 1
                    payload = bytes(buf[pos + 7:end])
                    if kind == 1 and payload[:4] in (_CONNECTION_CLOSE, _CHANNEL_CLOSE):
                        raise RuntimeError(f"broker closed: {payload[4:]!r}")
                    return kind, channel, payload
            self._fill()

    def expect(self, class_method: bytes) -> bytes:
        while True:
            kind, _, payload = self.next_frame()
            if kind == 1 and payload[:4] == class_method:
                return payload[4:]

    # ---------------------------------------------------------------- set-up

    def _handshake(self, user: str, password: str, vhost: str) -> None:
        self.sock.sendall(b"AMQP\x00\x00\x09\x01")
        start = self.expect(_START)
        at = start.find(b"\x07versionS")  # server-properties entry: shortstr key, 'S', longstr
        if at >= 0:
            (size,) = struct.unpack_from(">I", start, at + 9)
            self.server_version = start[at + 13:at + 13 + size].decode()
        response = f"\0{user}\0{password}".encode()
        self.sock.sendall(method(0, 10, 11, b"\x00\x00\x00\x00" + shortstr("PLAIN")
                                 + struct.pack(">I", len(response)) + response
                                 + shortstr("en_US")))
        channel_max, frame_max, _ = struct.unpack(">HIH", self.expect(_TUNE)[:8])
        self.sock.sendall(method(0, 10, 31, struct.pack(">HIH", channel_max, frame_max, 0))
                          + method(0, 10, 40, shortstr(vhost) + shortstr("") + b"\x00"))
        self.expect(_OPEN_OK)

    def open_channel(self, channel: int) -> None:
        self.sock.sendall(method(channel, 20, 10, shortstr("")))
        self.expect(b"\x00\x14\x00\x0b")

    def declare(self, channel: int, queue: str, passive: bool = False) -> int:
        """queue.declare; returns the message count."""
        self.sock.sendall(declare_frame(channel, queue, passive))
        args = self.expect(_DECLARE_OK)
        return int(struct.unpack_from(">I", args, 1 + args[0])[0])

    def delete(self, channel: int, queue: str) -> None:
        self.sock.sendall(method(channel, 50, 40, b"\x00\x00" + shortstr(queue) + b"\x00"))
        self.expect(b"\x00\x32\x00\x29")

    def qos(self, channel: int, prefetch: int) -> None:
        self.sock.sendall(method(channel, 60, 10, struct.pack(">IHB", 0, prefetch, 0)))
        self.expect(b"\x00\x3c\x00\x0b")

    def consume(self, channel: int, queue: str, tag: str, no_ack: bool) -> None:
        self.sock.sendall(method(channel, 60, 20, b"\x00\x00" + shortstr(queue) + shortstr(tag)
                                 + (b"\x02" if no_ack else b"\x00") + b"\x00\x00\x00\x00"))
        self.expect(b"\x00\x3c\x00\x15")

    def confirm_select(self, channel: int) -> None:
        self.sock.sendall(method(channel, 85, 10, b"\x00"))
        self.expect(b"\x00\x55\x00\x0b")

    def wait_for_count(self, channel: int, queue: str, n: int) -> None:
        """Passive declares until the queue holds n messages."""
        while self.declare(channel, queue, passive=True) < n:
            time.sleep(POLL_INTERVAL)

    def close(self) -> None:
        try:
            self.sock.sendall(method(0, 10, 50, b"\x00\xc8" + shortstr("bye") + b"\x00" * 4))
            self.expect(_CLOSE_OK)
        except (OSError, EOFError, RuntimeError):
            pass
        finally:
            self.sock.close()


# ---------------------------------------------------------------- helpers for the parent


def prefill(url: str, queue: str, n: int, body: bytes) -> None:
    """Put n messages on `queue` as fast as possible (not timed)."""
    conn = RawConnection(url)
    try:
        conn.open_channel(1)
        _send_all(conn, publish_frames(1, queue, body), n)
        conn.wait_for_count(1, queue, n)
    finally:
        conn.close()


def _send_all(conn: RawConnection, message: bytes, n: int, chunk: int = 1000) -> None:
    block = message * chunk
    for _ in range(n // chunk):
        conn.sock.sendall(block)
    if n % chunk:
        conn.sock.sendall(message * (n % chunk))


def admin(url: str, declare: tuple[str, ...] = (), delete: tuple[str, ...] = ()) -> None:
    """Declare (non-durable) and/or delete queues."""
    conn = RawConnection(url)
    try:
        conn.open_channel(1)
        for queue in declare:
            conn.declare(1, queue)
        for queue in delete:
            conn.delete(1, queue)
    finally:
        conn.close()


# ---------------------------------------------------------------- the cases


def publish(url: str, meter: Meter, queue: str, n: int, body: bytes) -> dict[str, float]:
    conn = RawConnection(url)
    conn.open_channel(1)
    message = publish_frames(1, queue, body)
    meter.start()
    _send_all(conn, message, n)
    conn.wait_for_count(1, queue, n)
    meter.stop()
    conn.close()
    return {}


def confirm(url: str, meter: Meter, queue: str, n: int, body: bytes,
            window: int) -> dict[str, float]:
    # RabbitMQ confirms a single-queue route in publish order, so the highest
    # tag acked so far is the number confirmed (multiple or not).
    conn = RawConnection(url)
    conn.open_channel(1)
    conn.confirm_select(1)
    message = publish_frames(1, queue, body)
    step = max(1, window // 10)
    sent = confirmed = 0
    meter.start()
    while confirmed < n:
        if sent < n and sent - confirmed + step <= window:
            count = min(step, n - sent)
            conn.sock.sendall(message * count)
            sent += count
            continue
        kind, _, payload = conn.next_frame()
        if kind == 1 and payload[:4] == _ACK:
            confirmed = max(confirmed, _Q.unpack_from(payload, 4)[0])
        elif kind == 1 and payload[:4] == _NACK:
            raise RuntimeError("nacked")
    meter.stop()
    conn.close()
    return {}


def consume(url: str, meter: Meter, queue: str, n: int, prefetch: int,
            ack_every: int) -> dict[str, float]:
    conn = RawConnection(url)
    conn.open_channel(1)
    conn.qos(1, prefetch)
    sock = conn.sock
    unpack_header = _FRAME_HEADER.unpack_from
    unpack_q = _Q.unpack_from
    pack_ack = struct.Struct(">BHIHHQB").pack
    received = 0
    meter.start()
    conn.consume(1, queue, "raw", no_ack=False)
    buf = conn.buf
    pos = conn.pos
    while received < n:
        acks = []
        end = len(buf)
        while end - pos >= 7:
            kind, _, size = unpack_header(buf, pos)
            stop = pos + 8 + size
            if stop > end:
                break
            if kind == 1 and buf[pos + 7:pos + 11] == _DELIVER:
                tag_at = pos + 12 + buf[pos + 11]
                tag = unpack_q(buf, tag_at)[0]
                received += 1
                if ack_every == 1:
                    acks.append(pack_ack(1, 1, 13, 60, 80, tag, 0) + _FRAME_END)
                elif not received % ack_every or received == n:
                    acks.append(pack_ack(1, 1, 13, 60, 80, tag, 1) + _FRAME_END)
            pos = stop
        if acks:
            sock.sendall(b"".join(acks))
        if received >= n:
            break
        del buf[:pos]
        pos = 0
        data = sock.recv(262144)
        if not data:
            raise EOFError("broker closed the connection")
        buf += data
    conn.buf, conn.pos = buf, pos
    conn.declare(1, queue, passive=True)  # a round trip: the broker has read every ack
    meter.stop()
    conn.close()
    return {}


def rpc(url: str, meter: Meter, queue: str, n: int, body: bytes) -> dict[str, float]:
    conn = RawConnection(url)
    conn.open_channel(1)  # client: publishes requests, consumes direct replies
    conn.open_channel(2)  # server: consumes requests, publishes replies
    conn.consume(1, "amq.rabbitmq.reply-to", "client", no_ack=True)
    conn.consume(2, queue, "server", no_ack=True)
    sock = conn.sock
    times = []
    reply_to_prop = shortstr("amq.rabbitmq.reply-to")
    perf = time.perf_counter
    meter.start()
    for i in range(n):
        t0 = perf()
        sock.sendall(publish_frames(1, queue, body, shortstr(str(i)) + reply_to_prop,
                                    _FLAG_CORRELATION_ID | _FLAG_REPLY_TO))
        while True:
            kind, channel, payload = conn.next_frame()
            if kind == 2 and channel == 2:  # the request's header: answer it
                props = payload[14:]
                corr = props[:1 + props[0]]
                rest = props[len(corr):]
                reply_to = rest[1:1 + rest[0]].decode()
                sock.sendall(publish_frames(2, reply_to, body, corr, _FLAG_CORRELATION_ID))
            elif kind == 3 and channel == 1:  # the reply's body: done
                break
        times.append(perf() - t0)
    meter.stop()
    conn.close()
    return percentiles(times)


def declare(url: str, meter: Meter, queue: str, n: int) -> dict[str, float]:
    conn = RawConnection(url)
    conn.open_channel(1)
    request = declare_frame(1, queue, passive=True)
    sock = conn.sock
    meter.start()
    for _ in range(n):
        sock.sendall(request)
        conn.expect(_DECLARE_OK)
    meter.stop()
    conn.close()
    return {}
