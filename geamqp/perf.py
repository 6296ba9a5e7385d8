"""`python -m geamqp perf`: a PerfTest-style load tool for your own broker and network.

Producers publish fixed-size messages stamped with their send time to one
queue; consumers ack them and record end-to-end latency. Every second a
progress line shows rates and latency; at the end a summary. Each producer
and consumer has its own connection, as in RabbitMQ's PerfTest.
"""

from __future__ import annotations

import argparse
import os
import resource
import struct
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import gevent

from . import BasicProperties, connect
from .channel import Channel
from .consumer import Confirmation

__all__ = ["main"]

_STAMP = struct.Struct(">Q")


@dataclass
class Stats:
    """Counters shared by every producer and consumer greenlet."""

    sent: int = 0
    confirmed: int = 0
    nacked: int = 0
    received: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, since the last report
    all_latencies: list[float] = field(default_factory=list)


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m geamqp perf",
                                     description="Measure publish/consume throughput and "
                                                 "latency against a RabbitMQ broker.")
    default_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--url", default=default_url,
                        help="broker URL (default: $AMQP_URL or local guest)")
    parser.add_argument("-x", "--producers", type=int, default=1)
    parser.add_argument("-y", "--consumers", type=int, default=1)
    parser.add_argument("-s", "--size", type=int, default=100, help="message body bytes (>= 8)")
    parser.add_argument("-r", "--rate", type=float, default=0,
                        help="messages/s per producer; 0 = as fast as possible")
    parser.add_argument("-c", "--confirm", type=int, default=0, metavar="WINDOW",
                        help="publisher confirms with this many outstanding; 0 = off")
    parser.add_argument("-z", "--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("-q", "--prefetch", type=int, default=1000)
    parser.add_argument("--multi-ack-every", type=int, default=1, metavar="N",
                        help="ack with multiple=True every N messages (default 1: ack each)")
    parser.add_argument("-u", "--queue", default="", help="queue name (default: a temporary one)")
    parser.add_argument("--heartbeat", type=int, default=30)
    args = parser.parse_args(argv)
    if args.size < 8:
        parser.error("--size must be at least 8 (the send timestamp)")
    if args.producers < 0 or args.consumers < 0 or args.producers + args.consumers == 0:
        parser.error("need at least one producer or consumer")
    return args


def _producer(args: argparse.Namespace, queue: str, stats: Stats, stop: gevent.event.Event,
              index: int) -> None:
    with connect(f"{args.url.split('?')[0]}?heartbeat={args.heartbeat}",
                 name=f"perf-producer-{index}") as conn:
        channel = conn.channel()
        if args.confirm:
            channel.confirm_delivery()
        padding = b"\x00" * (args.size - 8)
        props = BasicProperties(delivery_mode=1)
        window: deque[Confirmation] = deque()
        interval = 1.0 / args.rate if args.rate else 0.0
        next_at = time.monotonic()
        publish = channel.basic_publish
        while not stop.is_set():
            body = _STAMP.pack(time.monotonic_ns()) + padding
            if args.confirm:
                confirmation = publish("", queue, body, props, wait=False)
                assert confirmation is not None
                window.append(confirmation)
                if len(window) >= args.confirm:
                    _settle(window.popleft(), stats)
            else:
                publish("", queue, body, props)
            stats.sent += 1
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    gevent.sleep(delay)
            elif not stats.sent % 256:
                gevent.sleep(0)  # let the writer and consumers run
        while window:
            _settle(window.popleft(), stats)


def _settle(confirmation: Confirmation, stats: Stats) -> None:
    try:
        confirmation.wait()
        stats.confirmed += 1
    except Exception:
        stats.nacked += 1


def _consumer(args: argparse.Namespace, queue: str, stats: Stats, stop: gevent.event.Event,
              index: int) -> None:
    with connect(f"{args.url.split('?')[0]}?heartbeat={args.heartbeat}",
                 name=f"perf-consumer-{index}") as conn:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=args.prefetch)
        every = max(1, args.multi_ack_every)
        unpack = _STAMP.unpack_from

        def on_message(ch: Channel, method: Any, properties: Any, body: bytes) -> None:
            now = time.monotonic_ns()
            stats.received += 1
            stats.latencies.append((now - unpack(body)[0]) / 1e9)
            if every == 1:
                ch.basic_ack(method.delivery_tag)
            elif not method.delivery_tag % every:
                ch.basic_ack(method.delivery_tag, multiple=True)

        channel.basic_consume(queue, on_message)
        stop.wait()
        channel.close()


def _report(stats: Stats, last: dict[str, float], elapsed: float, out: Any) -> None:
    span = max(1e-9, elapsed - last["t"])
    lat = stats.latencies
    stats.all_latencies.extend(lat)
    stats.latencies = []
    line = (f"time {elapsed:5.1f}s  sent {(stats.sent - last['sent']) / span:9.0f} msg/s  "
            f"confirmed {(stats.confirmed - last['confirmed']) / span:9.0f} msg/s  "
            f"received {(stats.received - last['received']) / span:9.0f} msg/s  "
            f"latency p50 {_percentile(lat, 0.5) * 1e3:7.2f} ms  "
            f"p99 {_percentile(lat, 0.99) * 1e3:7.2f} ms")
    out.write(line + "\n")
    out.flush()
    last.update(t=elapsed, sent=stats.sent, confirmed=stats.confirmed, received=stats.received)


def run(args: argparse.Namespace, out: Any = sys.stdout) -> Stats:
    """Run one perf test as `args` describe; returns the counters."""
    stats = Stats()
    stop = gevent.event.Event()  # producers stop first, consumers after draining
    stop_consumers = gevent.event.Event()
    with connect(args.url, name="perf-setup") as setup:
        channel = setup.channel()
        queue = args.queue or f"geamqp-perf-{uuid.uuid4().hex[:12]}"
        channel.queue_declare(queue, auto_delete=not args.queue)
        channel.queue_purge(queue)
        out.write(f"geamqp perf: {args.producers} producer(s), {args.consumers} consumer(s), "
                  f"{args.size}-byte messages, confirm window {args.confirm or 'off'}, "
                  f"prefetch {args.prefetch}, {args.duration:g} s, queue {queue}\n")
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.monotonic()
        consumers = [gevent.spawn(_consumer, args, queue, stats, stop_consumers, i)
                     for i in range(args.consumers)]
        producers = [gevent.spawn(_producer, args, queue, stats, stop, i)
                     for i in range(args.producers)]
        workers = consumers + producers
        last = {"t": 0.0, "sent": 0, "confirmed": 0, "received": 0}
        try:
            while (elapsed := time.monotonic() - start) < args.duration:
                gevent.sleep(min(1.0, args.duration - elapsed))
                _report(stats, last, time.monotonic() - start, out)
                failed = [w for w in workers if w.dead and w.exception]
                if failed:
                    raise failed[0].exception
        finally:
            stop.set()
            gevent.joinall(producers, timeout=10)
            if args.consumers:
                _drain(stats, timeout=5)
            stop_consumers.set()
            gevent.joinall(consumers, timeout=10)
            gevent.killall(workers)
        elapsed = time.monotonic() - start
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        if not args.queue:
            channel.queue_delete(queue)
    _summary(stats, elapsed, cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, out)
    return stats


def _drain(stats: Stats, timeout: float) -> None:
    """After producers stop, give consumers a bounded time to take what is queued."""
    deadline = time.monotonic() + timeout
    while stats.received < stats.sent and time.monotonic() < deadline:
        gevent.sleep(0.05)


def _summary(stats: Stats, elapsed: float, cpu: float, out: Any) -> None:
    lat = stats.all_latencies + stats.latencies
    messages = max(stats.sent, stats.received)
    out.write(
        "summary: "
        f"sent {stats.sent} ({stats.sent / elapsed:.0f} msg/s), "
        f"confirmed {stats.confirmed}, nacked {stats.nacked}, "
        f"received {stats.received} ({stats.received / elapsed:.0f} msg/s), "
        f"latency p50 {_percentile(lat, 0.5) * 1e3:.2f} ms "
        f"p99 {_percentile(lat, 0.99) * 1e3:.2f} ms, "
        f"client CPU {cpu:.2f} s ({cpu / max(1, messages) * 1e6:.1f} us/msg)\n")
    out.flush()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        run(args)
    except KeyboardInterrupt:
        return 130
    return 0
