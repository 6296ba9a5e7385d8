"""Codec micro-benchmark: geamqp against pika's and pamqp's codecs, in one process.

    .venv/bin/python benchmarks/codec.py            # full run (about a minute)
    .venv/bin/python benchmarks/codec.py --quick    # a few seconds

Operations, each on a 100-byte body, channel 1, exchange "bench", routing key
"bench.key":

  publish, no props    encode basic.publish + content header + body frame
  publish, props       the same with content_type, delivery_mode=2, a headers
                       table of 2 entries, message_id and timestamp
  deliver, no props    decode a stream of basic.deliver + header + body frames,
  deliver, props       fed in 64 KiB chunks, into (method, properties, body)

Who does what:

- geamqp: `frames.encode_publish`; decoding through `AMQPConnection.receive_data`
  on a connection scripted open (so the timing includes frame splitting, state
  checks and content assembly, as in production).
- pika: `pika.frame.Method(1, pika.spec.Basic.Publish(...)).marshal()`, `Header`,
  `Body` (what `pika.connection.Connection._send_message` does); decoding with
  `pika.frame.decode_frame` and pika's own `ContentFrameAssembler`.
- pamqp: `pamqp.frame.marshal` of `commands.Basic.Publish`, `header.ContentHeader`,
  `body.ContentBody`; decoding with `pamqp.frame.unmarshal` and a minimal
  assembler (pamqp has none of its own).

pika and pamqp decode through a best-case driver: each frame's bytes are cut out
exactly once and handed to the decoder (pika's own connection instead re-slices
its whole receive buffer after every frame, which is slower). Properties objects
are built once per run and reused by every library. Each figure is the median
of several repeats (the libraries take turns within each repeat), wall time by
`time.perf_counter`, CPU by `time.process_time`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import struct
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import pika.frame
import pika.spec
from pamqp import body as p_body
from pamqp import commands as p_commands
from pamqp import frame as p_frame
from pamqp import header as p_header
from pika.channel import ContentFrameAssembler

from geamqp.protocol import frames, spec
from geamqp.protocol.connection import AMQPConnection, ClientSettings
from geamqp.protocol.properties import BasicProperties
from geamqp.protocol.sasl import PlainCredentials

CHANNEL = 1
EXCHANGE = "bench"
ROUTING_KEY = "bench.key"
CONSUMER_TAG = "amq.ctag-bench-0001"
BODY = bytes(range(100))
FRAME_MAX = 131072
CHUNK = 64 * 1024
CONTENT_TYPE = "application/json"
HEADERS = {"x-trace-id": "4bf92f3577b34da6a3ce929d0e0e4736", "x-retries": 3}
MESSAGE_ID = "msg-0000000042"
TIMESTAMP = 1795000000  # 2026-11-18, seconds since the epoch
_HEADER = struct.Struct(">BHI")

Prepare = Callable[[], Callable[[], int]]  # builds one repeat's runner; runner -> ops done

# --------------------------------------------------------------------------- encoders


def geamqp_encoder(with_props: bool) -> Callable[[], bytes]:
    props = (BasicProperties(content_type=CONTENT_TYPE, delivery_mode=2, headers=HEADERS,
                             message_id=MESSAGE_ID, timestamp=TIMESTAMP) if with_props else None)
    encode_publish = frames.encode_publish

    def encode() -> bytes:
        return encode_publish(CHANNEL, EXCHANGE, ROUTING_KEY, BODY, props, FRAME_MAX)

    return encode


def pika_encoder(with_props: bool) -> Callable[[], bytes]:
    props = (pika.spec.BasicProperties(content_type=CONTENT_TYPE, delivery_mode=2,
                                       headers=HEADERS, message_id=MESSAGE_ID,
                                       timestamp=TIMESTAMP)
             if with_props else pika.spec.BasicProperties())
    method_frame, header_frame, body_frame = pika.frame.Method, pika.frame.Header, pika.frame.Body
    publish = pika.spec.Basic.Publish

    def encode() -> bytes:
        return b"".join((
            method_frame(CHANNEL, publish(exchange=EXCHANGE, routing_key=ROUTING_KEY)).marshal(),
            header_frame(CHANNEL, len(BODY), props).marshal(),
            body_frame(CHANNEL, BODY).marshal(),
        ))

    return encode


def pamqp_encoder(with_props: bool) -> Callable[[], bytes]:
    stamp = datetime.datetime.fromtimestamp(TIMESTAMP, tz=datetime.timezone.utc)
    props = (p_commands.Basic.Properties(content_type=CONTENT_TYPE, delivery_mode=2,
                                         headers=HEADERS, message_id=MESSAGE_ID,
                                         timestamp=stamp)
             if with_props else None)
    marshal, publish = p_frame.marshal, p_commands.Basic.Publish
    content_header, content_body = p_header.ContentHeader, p_body.ContentBody

    def encode() -> bytes:
        return b"".join((
            marshal(publish(exchange=EXCHANGE, routing_key=ROUTING_KEY), CHANNEL),
            marshal(content_header(0, len(BODY), props), CHANNEL),
            marshal(content_body(BODY), CHANNEL),
        ))

    return encode


def encode_runner(make: Callable[[bool], Callable[[], bytes]], with_props: bool,
                  n: int) -> Prepare:
    def prepare() -> Callable[[], int]:
        encode = make(with_props)

        def run() -> int:
            for _ in range(n):
                encode()
            return n

        return run

    return prepare


# --------------------------------------------------------------------------- the deliver stream


def deliver_stream(count: int, with_props: bool) -> list[bytes]:
    """`count` deliveries as the broker would send them, cut into 64 KiB chunks."""
    props = (BasicProperties(content_type=CONTENT_TYPE, delivery_mode=2, headers=HEADERS,
                             message_id=MESSAGE_ID, timestamp=TIMESTAMP) if with_props else None)
    stream = b"".join(
        frames.encode_content(
            CHANNEL, spec.Basic.Deliver(CONSUMER_TAG, tag, False, EXCHANGE, ROUTING_KEY),
            props, BODY, FRAME_MAX)
        for tag in range(1, count + 1)
    )
    return [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]


def opened_geamqp_connection() -> AMQPConnection:
    """An AMQPConnection scripted through the handshake, channel 1 open."""
    conn = AMQPConnection(ClientSettings(PlainCredentials("guest", "guest"), frame_max=FRAME_MAX))
    conn.data_to_send()
    conn.receive_data(b"".join((
        frames.encode_method(0, spec.Connection.Start(0, 9, {"product": "RabbitMQ"},
                                                      b"PLAIN", b"en_US")),
        frames.encode_method(0, spec.Connection.Tune(2047, FRAME_MAX, 0)),
        frames.encode_method(0, spec.Connection.OpenOk()),
    )))
    channel = conn.open_channel()
    assert channel == CHANNEL and conn.is_open
    conn.receive_data(frames.encode_method(CHANNEL, spec.Channel.OpenOk()))
    conn.data_to_send()
    return conn


def geamqp_decoder(chunks: list[bytes]) -> Prepare:
    def prepare() -> Callable[[], int]:
        conn = opened_geamqp_connection()
        receive = conn.receive_data

        def run() -> int:
            done = 0
            for chunk in chunks:
                done += len(receive(chunk))  # each event: ContentReceived(method, props, body)
            return done

        return run

    return prepare


def _frames_of(chunks: list[bytes]) -> Any:
    """Best-case driver: yields each complete frame's bytes exactly once."""
    unpack = _HEADER.unpack_from
    rest = b""
    for chunk in chunks:
        buf = rest + chunk if rest else chunk
        pos, avail = 0, len(buf)
        while avail - pos >= 7:
            end = pos + 8 + unpack(buf, pos)[2]
            if end > avail:
                break
            yield buf[pos:end]
            pos = end
        rest = buf[pos:]


def pika_decoder(chunks: list[bytes]) -> Prepare:
    def prepare() -> Callable[[], int]:
        assembler = ContentFrameAssembler()
        decode_frame, process = pika.frame.decode_frame, assembler.process

        def run() -> int:
            done = 0
            for raw in _frames_of(chunks):
                if process(decode_frame(raw)[1]) is not None:  # (method, header, body)
                    done += 1
            return done

        return run

    return prepare


class PamqpAssembler:
    """(method, properties, body) from pamqp frames; mirrors pika's assembler."""

    __slots__ = ("header", "method", "parts", "seen")

    def __init__(self) -> None:
        self.method: Any = None
        self.header: Any = None
        self.parts: list[bytes] = []
        self.seen = 0

    def process(self, frame: Any) -> tuple[Any, Any, bytes] | None:
        if isinstance(frame, p_body.ContentBody):
            self.parts.append(frame.value)
            self.seen += len(frame.value)
            if self.seen < self.header.body_size:
                return None
        elif isinstance(frame, p_header.ContentHeader):
            self.header = frame
            if frame.body_size:
                return None
        else:
            self.method = frame
            return None
        done = (self.method, self.header.properties, b"".join(self.parts))
        self.parts, self.seen = [], 0
        return done


def pamqp_decoder(chunks: list[bytes]) -> Prepare:
    def prepare() -> Callable[[], int]:
        process, unmarshal = PamqpAssembler().process, p_frame.unmarshal

        def run() -> int:
            done = 0
            for raw in _frames_of(chunks):
                if process(unmarshal(raw)[2]) is not None:
                    done += 1
            return done

        return run

    return prepare


def check_decoders(chunks: list[bytes], count: int, with_props: bool) -> None:
    """Every decoder yields `count` messages and the last one right, before timing."""
    conn = opened_geamqp_connection()
    events = [e for c in chunks for e in conn.receive_data(c)]
    last = events[-1]
    assert len(events) == count and last.body == BODY  # type: ignore[attr-defined]
    assert last.method.delivery_tag == count  # type: ignore[attr-defined]
    assert last.properties.message_id == (MESSAGE_ID if with_props else None)  # type: ignore[attr-defined]

    assembler = ContentFrameAssembler()
    pika_out = [r for raw in _frames_of(chunks)
                if (r := assembler.process(pika.frame.decode_frame(raw)[1])) is not None]
    method, header, body = pika_out[-1]
    assert len(pika_out) == count and body == BODY and method.method.delivery_tag == count
    assert header.properties.message_id == (MESSAGE_ID if with_props else None)

    p_asm = PamqpAssembler()
    pamqp_out = [r for raw in _frames_of(chunks)
                 if (r := p_asm.process(p_frame.unmarshal(raw)[2])) is not None]
    method, props, body = pamqp_out[-1]
    assert len(pamqp_out) == count and body == BODY and method.delivery_tag == count
    assert props.message_id == (MESSAGE_ID if with_props else None)


# --------------------------------------------------------------------------- measuring


def measure(runners: dict[str, Prepare], repeats: int) -> dict[str, tuple[float, float]]:
    """Per library: (median operations per second, median CPU microseconds per operation).

    The libraries take turns within each repeat, so a burst of background load
    hits all of them alike instead of one library's whole series.
    """
    rates: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, prepare in runners.items():
            run = prepare()
            c0, t0 = time.process_time(), time.perf_counter()
            ops = run()
            t1, c1 = time.perf_counter(), time.process_time()
            rates[name].append(ops / (t1 - t0))
            cpu[name].append((c1 - c0) / ops * 1e6)
    return {name: (statistics.median(rates[name]), statistics.median(cpu[name]))
            for name in runners}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (fewer ops, repeats)")
    parser.add_argument("--repeats", type=int, help="repeats per measurement (default 7, quick 3)")
    args = parser.parse_args(argv)
    n_encode, n_decode, repeats = (3_000, 3_000, 3) if args.quick else (30_000, 20_000, 7)
    repeats = args.repeats or repeats

    streams = {p: deliver_stream(n_decode, p) for p in (False, True)}
    for with_props, chunks in streams.items():
        check_decoders(chunks, n_decode, with_props)

    rows: list[tuple[str, dict[str, Prepare]]] = []
    for with_props in (False, True):
        label = "publish, props" if with_props else "publish, no props"
        rows.append((label, {
            "geamqp": encode_runner(geamqp_encoder, with_props, n_encode),
            "pika": encode_runner(pika_encoder, with_props, n_encode),
            "pamqp": encode_runner(pamqp_encoder, with_props, n_encode),
        }))
    for with_props in (False, True):
        label = "deliver, props" if with_props else "deliver, no props"
        chunks = streams[with_props]
        rows.append((label, {
            "geamqp": geamqp_decoder(chunks),
            "pika": pika_decoder(chunks),
            "pamqp": pamqp_decoder(chunks),
        }))

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"# geamqp codec benchmark  {datetime.date.today()}  Python {platform.python_version()}"
          f"  {os.cpu_count()} CPUs (load {load})  pika {version('pika')}"
          f"  pamqp {version('pamqp')}")
    print(f"# {n_encode} encodes / {n_decode} decodes per repeat, median of {repeats} repeats;"
          " 100-byte bodies; decode fed in 64 KiB chunks")
    print("# ratios are geamqp / other: of wall-clock ops/s, and (CPU) of CPU time per op")
    columns = ("operation", "geamqp ops/s", "pika ops/s", "pamqp ops/s", "÷ pika", "÷ pamqp",
               "CPU µs/op geamqp / pika / pamqp", "÷ pika (CPU)", "÷ pamqp (CPU)")
    widths = (17, 12, 10, 11, 6, 7, 31, 12, 13)
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for label, runners in rows:
        results = measure(runners, repeats)
        (g, g_cpu), (pk, pk_cpu), (pq, pq_cpu) = (results[n] for n in ("geamqp", "pika", "pamqp"))
        cells = (label, f"{g:,.0f}", f"{pk:,.0f}", f"{pq:,.0f}", f"{g / pk:.2f}x",
                 f"{g / pq:.2f}x", f"{g_cpu:.2f} / {pk_cpu:.2f} / {pq_cpu:.2f}",
                 f"{pk_cpu / g_cpu:.2f}x", f"{pq_cpu / g_cpu:.2f}x")
        print("| " + " | ".join(c.rjust(w) if i else c.ljust(w)
                                for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
              + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
