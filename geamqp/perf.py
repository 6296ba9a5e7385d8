"""`python -m geamqp perf`: a PerfTest-style load tool for your own broker and network.

Producers publish fixed-size messages to one or more queues; each body starts
with its send time, producer number and sequence number. Consumers record
end-to-end latency from that timestamp and ack (each message, every N with
``multiple``, or automatically). Every second a progress line shows rates and
latency; at the end a summary counts what was sent, confirmed, received, lost
and duplicated. Each producer and consumer has its own connection, as in
RabbitMQ's PerfTest.

``--chaos SECONDS`` runs those connections through an in-process TCP proxy
that resets them all every SECONDS: the summary then shows how many times
they recovered, and, with ``--confirm``, that no confirmed message was lost.
Only this tool's own connections are cut; the broker is not touched.

Exit status: 0 when the run met what was asked of it (``--expect-rate``,
``--expect-p99``, and with confirms no lost message), 1 when it did not or a
worker failed, 2 for bad arguments. ``--json`` prints one JSON object per
second and one summary object instead of text.

Only geamqp's public API is used here.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import struct
import sys
import time
import uuid
from collections import deque
from typing import Any, TextIO

import gevent
from gevent.event import Event

from . import (
    AMQPError,
    BasicProperties,
    Confirmation,
    Connection,
    ConnectionParameters,
    NackError,
    UnroutableError,
    URLParameters,
    connect,
)
from ._perf_proxy import ChaosProxy
from ._perf_stats import Histogram, Ledger

__all__ = ["main", "run"]

# send time (ns, monotonic), producer number, sequence number
_HEADER = struct.Struct(">QIQ")
_QUEUE_TYPES = ("classic", "quorum", "stream")
_DRAIN_IDLE = 3.0  # seconds without progress that end the drain
_DRAIN_MAX = 20.0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m geamqp perf",
        description="Measure publish / confirm / consume rates and latency against RabbitMQ.")
    default_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
    add = parser.add_argument
    add("--url", default=default_url, help="broker URL (default: $AMQP_URL or local guest)")
    add("-x", "--producers", type=int, default=1, help="producer connections (default 1)")
    add("-y", "--consumers", type=int, default=1, help="consumer connections (default 1)")
    add("-r", "--rate", type=float, default=0,
        help="messages/s per producer; 0 = as fast as possible (default)")
    add("-s", "--size", type=int, default=100,
        help=f"message body bytes, at least {_HEADER.size} (default 100)")
    add("-c", "--confirm", type=int, default=0, metavar="WINDOW",
        help="publisher confirms with at most WINDOW outstanding per producer; 0 = off")
    add("-a", "--auto-ack", action="store_true", help="consume with auto-ack")
    add("--multi-ack-every", type=int, default=1, metavar="N",
        help="ack with multiple=True every N deliveries (default 1: ack each)")
    add("-q", "--prefetch", type=int, default=1000, help="consumer prefetch (default 1000)")
    add("--queue-type", choices=_QUEUE_TYPES, default="classic")
    add("--queues", type=int, default=1,
        help="queues; producer i publishes to queue i mod N, consumer j reads queue j mod N")
    add("-u", "--queue", default="",
        help="queue name (with --queues N: NAME-0 ... NAME-N-1); default: temporary names, "
             "deleted at the end")
    add("-f", "--persistent", action="store_true",
        help="persistent messages (delivery_mode 2) in durable queues")
    add("-z", "--duration", type=float, default=None,
        help="seconds to publish (default 10, or until --count is reached)")
    add("-C", "--count", type=int, default=0, help="messages per producer; 0 = no limit")
    add("--chaos", type=float, default=0, metavar="SECONDS",
        help="reset this tool's connections every SECONDS (through an in-process proxy)")
    add("--republish-unconfirmed", action="store_true",
        help="on recovery, publish unconfirmed messages again instead of failing them")
    add("--expect-rate", type=float, default=None, metavar="MSG_S",
        help="fail (exit 1) unless the receive rate (the send rate without consumers) "
             "reaches MSG_S")
    add("--expect-p99", type=float, default=None, metavar="MS",
        help="fail (exit 1) unless the p99 latency is at most MS milliseconds")
    add("--heartbeat", type=int, default=30, help="heartbeat seconds (default 30)")
    add("--json", action="store_true", help="one JSON object per second and a summary")
    args = parser.parse_args(argv)
    _check(parser, args)
    return args


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.size < _HEADER.size:
        parser.error(f"--size must be at least {_HEADER.size} (timestamp, producer, sequence)")
    if args.producers < 0 or args.consumers < 0 or args.producers + args.consumers == 0:
        parser.error("need at least one producer or consumer")
    if args.queues < 1:
        parser.error("--queues must be at least 1")
    if args.consumers and args.consumers < args.queues:
        parser.error(f"--consumers ({args.consumers}) must be 0 or at least --queues "
                     f"({args.queues}), so that every queue is read")
    for name in ("rate", "confirm", "count", "chaos", "heartbeat"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must not be negative")
    if args.prefetch < 0 or args.multi_ack_every < 1:
        parser.error("--prefetch must be >= 0 and --multi-ack-every >= 1")
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be positive")
    if args.duration is None and not args.count:
        args.duration = 10.0
    if args.count and not args.producers:
        parser.error("--count needs at least one producer")
    if args.queue_type == "stream" and args.auto_ack:
        parser.error("stream queues need manual acks: drop --auto-ack")
    if args.chaos and args.url.startswith("amqps:"):
        parser.error("--chaos proxies plain TCP: use an amqp:// URL")


class Run:
    """One perf run: its settings, counters and workers."""

    def __init__(self, args: argparse.Namespace, out: TextIO) -> None:
        self.args = args
        self.out = out
        self.run_id = uuid.uuid4().hex[:8]
        self.ledger = Ledger(args.producers, confirms=bool(args.confirm))
        self.second = Histogram()  # latency since the last progress report
        self.latency = Histogram()  # the whole run
        self.stop_producers = Event()
        self.stop_consumers = Event()
        self.proxy: ChaosProxy | None = None
        self.params = URLParameters(args.url)
        self.params.heartbeat = args.heartbeat
        self.queues = self._queue_names()

    def _queue_names(self) -> list[str]:
        base = self.args.queue or f"geamqp-perf-{self.run_id}"
        if self.args.queues == 1:
            return [base]
        return [f"{base}-{i}" for i in range(self.args.queues)]

    def connect(self, role: str, index: int) -> Connection:
        params: ConnectionParameters = copy.copy(self.params)
        if self.proxy is not None:
            params.host, params.port = "127.0.0.1", self.proxy.port
        conn = connect(params, name=f"geamqp-perf-{self.run_id}-{role}-{index}",
                       recovery_delay_min=0.05, recovery_delay_max=1.0,
                       republish_unconfirmed=self.args.republish_unconfirmed)
        totals = self.ledger.totals

        def lost(*_: Any) -> None:
            totals.losses += 1

        def recovered(*_: Any) -> None:
            totals.recoveries += 1

        conn.add_on_connection_lost_callback(lost)
        conn.add_on_recovered_callback(recovered)
        return conn


# ---------------------------------------------------------------- producers


def _producer(run: Run, index: int) -> None:
    args, ledger = run.args, run.ledger
    queue = run.queues[index % len(run.queues)]
    with run.connect("producer", index) as conn:
        channel = conn.channel()
        if args.confirm:
            channel.confirm_delivery()
        padding = b"\x00" * (args.size - _HEADER.size)
        props = BasicProperties(delivery_mode=2 if args.persistent else 1)
        window: deque[tuple[int, Confirmation]] = deque()
        interval = 1.0 / args.rate if args.rate else 0.0
        next_at = time.monotonic()
        publish, pack = channel.basic_publish, _HEADER.pack
        seq = 0
        while not run.stop_producers.is_set() and (not args.count or seq < args.count):
            body = pack(time.monotonic_ns(), index, seq) + padding
            try:
                confirmation = publish("", queue, body, props, wait=False)
            except AMQPError:
                ledger.totals.refused += 1
                if conn.is_closed:
                    raise
                gevent.sleep(0.01)
                continue
            ledger.published(index, seq)
            if confirmation is not None:
                window.append((seq, confirmation))
                while len(window) >= args.confirm:
                    _settle(ledger, index, *window.popleft())
            seq += 1
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    gevent.sleep(delay)
            elif not seq % 256:
                gevent.sleep(0)  # let the writer and the consumers run
        while window:
            _settle(ledger, index, *window.popleft())


def _settle(ledger: Ledger, producer: int, seq: int, confirmation: Confirmation) -> None:
    try:
        confirmation.wait()
        outcome = Ledger.ACKED
    except (NackError, UnroutableError):
        outcome = Ledger.NACKED
    except AMQPError:  # PublishOutcomeUnknown, or the connection closed for good
        outcome = Ledger.UNKNOWN
    ledger.settled(producer, seq, outcome)


# ---------------------------------------------------------------- consumers


def _consumer(run: Run, index: int) -> None:
    args, ledger = run.args, run.ledger
    queue = run.queues[index % len(run.queues)]
    every, auto_ack = args.multi_ack_every, args.auto_ack
    unpack, stamp = _HEADER.unpack_from, time.monotonic_ns

    def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
        sent, producer, seq = unpack(body)
        latency = (stamp() - sent) / 1e9
        run.second.record(latency)
        ledger.received(producer, seq)
        if auto_ack:
            return
        if every == 1:
            channel.basic_ack(method.delivery_tag)
        elif not method.delivery_tag % every:
            channel.basic_ack(method.delivery_tag, multiple=True)

    with run.connect("consumer", index) as conn:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=args.prefetch)
        arguments = {"x-stream-offset": "first"} if args.queue_type == "stream" else None
        channel.basic_consume(queue, on_message, auto_ack=auto_ack, arguments=arguments)
        run.stop_consumers.wait()


# ---------------------------------------------------------------- the run


def _declare(run: Run, setup: Connection) -> None:
    args = run.args
    channel = setup.channel()
    durable = args.persistent or args.queue_type != "classic"
    arguments = None if args.queue_type == "classic" else {"x-queue-type": args.queue_type}
    for queue in run.queues:
        channel.queue_declare(queue, durable=durable, arguments=arguments)
        if args.queue_type != "stream":
            channel.queue_purge(queue)


def _delete(run: Run, setup: Connection) -> None:
    if run.args.queue:
        return
    channel = setup.channel()
    for queue in run.queues:
        channel.queue_delete(queue)


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> dict[str, Any]:
    """Run one perf test as `args` describe; returns the summary (also printed)."""
    perf = Run(args, out)
    if args.chaos:
        perf.proxy = ChaosProxy((perf.params.host, perf.params.port)).start()
    setup = connect(copy.copy(perf.params), name=f"geamqp-perf-{perf.run_id}-setup")
    try:
        _declare(perf, setup)
        _announce(perf)
        elapsed, cpu = _measure(perf)
        _delete(perf, setup)
    finally:
        setup.close()
        if perf.proxy is not None:
            perf.proxy.stop()
    summary = _summary(perf, elapsed, cpu)
    _print_summary(perf, summary)
    return summary


def _measure(perf: Run) -> tuple[float, float]:
    """Start the workers, report each second, stop, drain: (seconds, CPU seconds)."""
    args = perf.args
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic()
    consumers = [gevent.spawn(_consumer, perf, i) for i in range(args.consumers)]
    producers = [gevent.spawn(_producer, perf, i) for i in range(args.producers)]
    chaos = gevent.spawn(_chaos, perf, start) if perf.proxy is not None else None
    workers = consumers + producers
    try:
        elapsed = _progress_loop(perf, start, producers, workers)
        if chaos is not None:
            chaos.kill()
        perf.stop_producers.set()
        gevent.joinall(producers, timeout=60)
        _raise_failures(workers)
        if consumers:
            _drain(perf)
        perf.stop_consumers.set()
        gevent.joinall(consumers, timeout=30)
        _raise_failures(workers)
    finally:
        if chaos is not None:
            chaos.kill()
        perf.stop_producers.set()
        perf.stop_consumers.set()
        gevent.killall(workers, timeout=10)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    return elapsed, cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime


def _progress_loop(perf: Run, start: float, producers: list[gevent.Greenlet],
                   workers: list[gevent.Greenlet]) -> float:
    """Report every second until the duration is over or every producer is done."""
    duration = perf.args.duration
    last: dict[str, float] = {"t": 0.0, "published": 0, "confirmed": 0, "consumed": 0}
    tick = 1
    while True:
        until = start + tick if duration is None else min(start + tick, start + duration)
        gevent.sleep(max(0.0, until - time.monotonic()))
        elapsed = time.monotonic() - start
        _progress(perf, last, elapsed)
        _raise_failures(workers)
        tick += 1
        if duration is not None and elapsed >= duration - 1e-3:
            return elapsed
        if perf.args.count and all(p.dead for p in producers):
            return elapsed


def _raise_failures(workers: list[gevent.Greenlet]) -> None:
    for worker in workers:
        if worker.dead and worker.exception is not None:
            raise worker.exception


def _chaos(perf: Run, start: float) -> None:
    """Reset every link each --chaos seconds; none in the run's last half second,
    so that the summary counts recoveries, not connections closed mid-recovery."""
    assert perf.proxy is not None
    every, duration = perf.args.chaos, perf.args.duration
    resets = 1
    while duration is None or resets * every < duration - 0.5:
        gevent.sleep(max(0.0, start + resets * every - time.monotonic()))
        perf.proxy.reset_all()
        resets += 1


def _drain(perf: Run) -> None:
    """After producers stop, let consumers take what is owed to them: until nothing
    is outstanding, or no progress for a while (lost or unconfirmed messages)."""
    ledger = perf.ledger
    deadline = time.monotonic() + _DRAIN_MAX
    seen, idle_since = ledger.totals.consumed, time.monotonic()
    while ledger.outstanding > 0 and time.monotonic() < deadline:
        gevent.sleep(0.05)
        if ledger.totals.consumed != seen:
            seen, idle_since = ledger.totals.consumed, time.monotonic()
        elif time.monotonic() - idle_since > _DRAIN_IDLE:
            return


# ---------------------------------------------------------------- output


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 3)


def _latency(histogram: Histogram) -> dict[str, float | None]:
    return {"p50": _ms(histogram.percentile(0.50)), "p95": _ms(histogram.percentile(0.95)),
            "p99": _ms(histogram.percentile(0.99)), "max": _ms(histogram.max or None)}


def _fmt(ms: float | None) -> str:
    return "   -   " if ms is None else f"{ms:7.2f}"


def _announce(perf: Run) -> None:
    args = perf.args
    if args.json:
        return
    rate = f"{args.rate:g}/s per producer" if args.rate else "unlimited"
    limit = f"{args.duration:g} s" if args.duration else ""
    if args.count:
        limit += f"{', ' if limit else ''}{args.count} messages per producer"
    perf.out.write(
        f"geamqp perf: {args.producers} producer(s), {args.consumers} consumer(s), "
        f"{args.size}-byte messages, rate {rate}, "
        f"confirm window {args.confirm or 'off'}, prefetch {args.prefetch}, "
        f"{'auto-ack' if args.auto_ack else f'ack every {args.multi_ack_every}'}, "
        f"{len(perf.queues)} {args.queue_type} queue(s) {perf.queues[0]}"
        f"{'...' if len(perf.queues) > 1 else ''}, {limit}"
        f"{f', connections reset every {args.chaos:g} s' if args.chaos else ''}\n")
    perf.out.flush()


def _progress(perf: Run, last: dict[str, float], elapsed: float) -> None:
    totals = perf.ledger.totals
    span = max(1e-9, elapsed - last["t"])
    second, perf.second = perf.second, Histogram()
    perf.latency.merge(second)
    rates = {"published": (totals.published - last["published"]) / span,
             "confirmed": (totals.confirmed - last["confirmed"]) / span,
             "consumed": (totals.consumed - last["consumed"]) / span}
    last.update(t=elapsed, published=totals.published, confirmed=totals.confirmed,
                consumed=totals.consumed)
    latency = _latency(second)
    if perf.args.json:
        record = {"type": "progress", "elapsed_s": round(elapsed, 3),
                  **{f"{k}_rate": round(v, 1) for k, v in rates.items()},
                  "latency_ms": latency, "recoveries": totals.recoveries}
        perf.out.write(json.dumps(record) + "\n")
    else:
        perf.out.write(
            f"time {elapsed:5.1f}s  sent {rates['published']:8.0f} msg/s  "
            f"confirmed {rates['confirmed']:8.0f} msg/s  "
            f"received {rates['consumed']:8.0f} msg/s  "
            f"latency p50 {_fmt(latency['p50'])} ms  p99 {_fmt(latency['p99'])} ms"
            f"{f'  recoveries {totals.recoveries}' if perf.args.chaos else ''}\n")
    perf.out.flush()


def _summary(perf: Run, elapsed: float, cpu: float) -> dict[str, Any]:
    args, totals = perf.args, perf.ledger.totals
    perf.latency.merge(perf.second)
    perf.second = Histogram()
    messages = max(totals.published, totals.consumed, 1)
    summary: dict[str, Any] = {
        "type": "summary", "duration_s": round(elapsed, 3),
        "producers": args.producers, "consumers": args.consumers,
        "published": totals.published, "confirmed": totals.confirmed,
        "nacked": totals.nacked, "outcome_unknown": totals.unknown,
        "refused": totals.refused, "consumed": totals.consumed,
        "duplicated": totals.duplicated,
        "lost": perf.ledger.lost() if args.consumers else None,  # nobody was reading
        "connection_losses": totals.losses, "recoveries": totals.recoveries,
        "resets": perf.proxy.resets if perf.proxy is not None else 0,
        "publish_rate": round(totals.published / elapsed, 1),
        "consume_rate": round(totals.consumed / elapsed, 1),
        "latency_ms": _latency(perf.latency),
        "cpu_s": round(cpu, 3), "cpu_us_per_message": round(cpu / messages * 1e6, 2),
    }
    summary["checks"] = _checks(perf, summary)
    summary["ok"] = all(check["met"] for check in summary["checks"].values())
    return summary


def _checks(perf: Run, summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    args = perf.args
    checks: dict[str, dict[str, Any]] = {}
    if args.expect_rate is not None:
        actual = summary["consume_rate"] if args.consumers else summary["publish_rate"]
        checks["rate"] = {"expected": args.expect_rate, "actual": actual,
                          "met": actual >= args.expect_rate}
    if args.expect_p99 is not None:
        p99 = summary["latency_ms"]["p99"]
        checks["p99_ms"] = {"expected": args.expect_p99, "actual": p99,
                            "met": p99 is not None and p99 <= args.expect_p99}
    if args.confirm and args.consumers:
        checks["lost"] = {"expected": 0, "actual": summary["lost"], "met": not summary["lost"]}
    return checks


def _print_summary(perf: Run, s: dict[str, Any]) -> None:
    out = perf.out
    if perf.args.json:
        out.write(json.dumps(s) + "\n")
        out.flush()
        return
    lat = s["latency_ms"]
    lost = "-" if s["lost"] is None else s["lost"]
    out.write(
        f"summary: {s['duration_s']:.1f} s, sent {s['published']} ({s['publish_rate']:.0f} "
        f"msg/s), confirmed {s['confirmed']}, nacked {s['nacked']}, received {s['consumed']} "
        f"({s['consume_rate']:.0f} msg/s), duplicated {s['duplicated']}, lost {lost}, "
        f"recoveries {s['recoveries']}, latency p50 {_fmt(lat['p50']).strip()} ms "
        f"p99 {_fmt(lat['p99']).strip()} ms\n"
        f"  latency p95 {_fmt(lat['p95']).strip()} ms, max {_fmt(lat['max']).strip()} ms; "
        f"outcome unknown {s['outcome_unknown']}, refused {s['refused']}, "
        f"connection losses {s['connection_losses']}, proxy resets {s['resets']}; "
        f"client CPU {s['cpu_s']:.2f} s ({s['cpu_us_per_message']:.1f} us/msg)\n")
    for name, check in s["checks"].items():
        out.write(f"  expect {name}: {check['expected']} -> {check['actual']} "
                  f"{'met' if check['met'] else 'NOT MET'}\n")
    out.write(f"result: {'OK' if s['ok'] else 'FAILED'}\n")
    out.flush()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        summary = run(args)
    except KeyboardInterrupt:
        return 130
    except AMQPError as exc:
        print(f"geamqp perf: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0 if summary["ok"] else 1
