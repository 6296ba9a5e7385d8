"""High fan-out and worker pools: geamqp vs pika's GeventConnection vs aio-pika.

    .venv/bin/python benchmarks/fanout.py                  # full run (a few minutes)
    .venv/bin/python benchmarks/fanout.py --quick          # smoke run, seconds
    .venv/bin/python benchmarks/fanout.py --connections 200 --channels 5 --big 400x25
    .venv/bin/python benchmarks/fanout.py --skip-big --skip-pool --output fanout.md

Every (scenario, client) runs in a fresh subprocess; the parent declares the
queues first and deletes them after (untimed, over a raw socket).

Fan-out (`--connections` C x `--channels` K, one consumer per channel, each
on its own queue, prefetch 10, manual acks):

  open      wall time to open all C connections, C*K channels, basic.qos and
            basic.consume on each (every client opens everything at once, as
            its API allows: geamqp a greenlet per channel, pika callbacks
            chained from on_open, aio-pika asyncio.gather); client CPU
            (user + sys, getrusage) per connection
  memory    VmRSS growth over the opening, per consumer and per connection;
            and again once every consumer has had its deliveries ("after")
  deliver   the parent publishes `--messages` messages round-robin over every
            queue (pre-encoded frames, raw socket) as soon as the child is
            ready; time until the child has received and acked all of them;
            client CPU per message
  idle      client CPU over `--idle` seconds with everything open and quiet
            (heartbeat `--heartbeat` s), per connection

The full run repeats this at 10,000 consumers (`--big`, default 400 x 25)
for every client, and for geamqp also through `ConsumerFleet` (20
connections x 25 channels x 20 consumers per channel, per-consumer QoS).

Pool: `--pool-greenlets` greenlets x `--pool-each` confirmed publishes, each
caller blocked until its own message is confirmed: geamqp `Publisher`
(`--pool-channels` confirm-mode channels); pika's GeventConnection with the
same number of confirm-mode channels, each publish registered under its
delivery tag and woken from pika's on-confirm callback; aio-pika tasks on a
publisher-confirms channel. Total time and client CPU per message.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import select
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (HERE, ROOT):
    if path not in sys.path:
        sys.path.insert(0, path)

from _clients import raw  # noqa: E402

DEFAULT_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
BODY = b"m" * 100
PREFETCH = 10
CLIENTS = ("geamqp", "pika-gevent", "aio-pika")
CHILD_TIMEOUT = 600.0


def rss_kib() -> int:
    gc.collect()
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def with_heartbeat(url: str, heartbeat: int) -> str:
    return f"{url}{'&' if '?' in url else '?'}heartbeat={heartbeat}"


# =========================================================================== children
#
# A fan-out child: open everything, emit {"phase": "ready", ...}, then count
# deliveries until `messages` arrived, idle, emit {"phase": "done", ...}.


class Phases:
    """The measurements a fan-out child takes, in order."""

    def __init__(self, connections: int) -> None:
        self.connections = connections
        self.rss0 = rss_kib()
        self.cpu0 = cpu_seconds()
        self.t0 = time.perf_counter()
        self.deliver_t0 = self.deliver_c0 = 0.0
        self.record: dict[str, Any] = {"connections": connections}

    def opened(self, consumers: int) -> None:
        wall, cpu = time.perf_counter() - self.t0, cpu_seconds() - self.cpu0
        self.record.update(open_s=wall, open_cpu_s=cpu, consumers=consumers,
                           rss_growth_kib=rss_kib() - self.rss0)
        emit({"phase": "ready", **self.record})
        self.deliver_c0, self.deliver_t0 = cpu_seconds(), time.perf_counter()

    def delivered(self, messages: int) -> None:
        self.record.update(deliver_s=time.perf_counter() - self.deliver_t0,
                           deliver_cpu_s=cpu_seconds() - self.deliver_c0, messages=messages)
        # after the timing: every consumer has had a delivery (what its dispatcher keeps)
        self.record.update(rss_delivered_kib=rss_kib() - self.rss0)

    def idle(self, sleep: Callable[[float], Any], seconds: float) -> Any:
        c0 = cpu_seconds()
        result = sleep(seconds)
        self.record.update(idle_cpu_s=cpu_seconds() - c0, idle_s=seconds)
        return result


def geamqp_fanout(url: str, queues: list[str], connections: int, channels: int,
                  messages: int, idle: float, fleet: int = 0) -> dict[str, Any]:
    """One greenlet per channel (`fleet`: ConsumerFleet with `fleet` consumers per channel)."""
    import gevent
    from gevent.event import Event

    import geamqp
    from geamqp.fleet import ConsumerFleet

    received = [0]
    all_in = Event()

    def on_message(channel: Any, method: Any, _properties: Any, _body: bytes) -> None:
        channel.basic_ack(method.delivery_tag)
        received[0] += 1
        if received[0] == messages:
            all_in.set()

    phases = Phases(connections)
    if fleet:
        consumers = ConsumerFleet(url, connections=connections, channels_per_connection=channels,
                                  prefetch_count=PREFETCH, name="bench-fleet")
        # A bounded pool, not a greenlet per queue: each blocked greenlet keeps its
        # stack on the heap while it waits, and RSS would count 10,000 of them.
        # Four per connection keep every connection's consumes pipelined (more
        # only adds switching; measured 0.73-0.79 s at 4, 0.89-0.91 s at 20).
        from gevent.pool import Pool

        openers = Pool(connections * 4)
        for q in queues:
            openers.spawn(consumers.basic_consume, q, on_message)
        openers.join(raise_error=True)
        conns = consumers.connections
    else:
        def open_connection(index: int) -> Any:
            conn = geamqp.connect(url, name=f"bench-fanout-{index}", recover=False)

            def open_channel(queue: str) -> None:
                channel = conn.channel()
                channel.basic_qos(prefetch_count=PREFETCH)
                channel.basic_consume(queue, on_message)

            mine = queues[index * channels:(index + 1) * channels]
            gevent.joinall([gevent.spawn(open_channel, q) for q in mine], raise_error=True)
            return conn

        openers = [gevent.spawn(open_connection, i) for i in range(connections)]
        gevent.joinall(openers, raise_error=True)
        conns = [g.value for g in openers]
    phases.opened(len(queues))
    if not all_in.wait(CHILD_TIMEOUT):
        raise TimeoutError(f"received {received[0]} of {messages}")
    phases.delivered(messages)
    phases.idle(gevent.sleep, idle)
    gevent.joinall([gevent.spawn(c.close) for c in conns])
    return phases.record


def pika_gevent_fanout(url: str, queues: list[str], connections: int, channels: int,
                       messages: int, idle: float) -> dict[str, Any]:
    """Callbacks all the way: on_open opens the channels, whose callbacks chain
    basic.qos and basic.consume; the main greenlet waits on an Event."""
    import gevent
    import pika
    from gevent.event import Event
    from pika.adapters.gevent_connection import GeventConnection

    received = [0]
    all_in = Event()
    opened = Event()
    pending = [len(queues)]
    errors: list[Any] = []

    def on_message(channel: Any, method: Any, _properties: Any, _body: bytes) -> None:
        channel.basic_ack(method.delivery_tag)
        received[0] += 1
        if received[0] == messages:
            all_in.set()

    def on_consume_ok(_frame: Any) -> None:
        pending[0] -= 1
        if not pending[0]:
            opened.set()

    def open_channel(conn: Any, queue: str) -> None:
        def on_channel(channel: Any) -> None:
            channel.basic_qos(prefetch_count=PREFETCH, callback=lambda _f: channel.basic_consume(
                queue, on_message, callback=on_consume_ok))
        conn.channel(on_open_callback=on_channel)

    def on_open_error(_conn: Any, exc: Any) -> None:
        errors.append(exc)
        opened.set()

    phases = Phases(connections)
    params = pika.URLParameters(url)
    conns = []
    for index in range(connections):
        mine = queues[index * channels:(index + 1) * channels]
        conns.append(GeventConnection(
            params, on_open_error_callback=on_open_error,
            on_open_callback=lambda conn, mine=mine: [open_channel(conn, q) for q in mine]))
    opened.wait(CHILD_TIMEOUT)
    if errors:
        raise RuntimeError(f"{len(errors)} connections failed: {errors[0]!r}")
    phases.opened(len(queues))
    if not all_in.wait(CHILD_TIMEOUT):
        raise TimeoutError(f"received {received[0]} of {messages}")
    phases.delivered(messages)
    phases.idle(gevent.sleep, idle)
    closed = [0]
    all_closed = Event()

    def on_close(*_: Any) -> None:
        closed[0] += 1
        if closed[0] == len(conns):
            all_closed.set()

    for conn in conns:
        conn.add_on_close_callback(on_close)
        conn.close()
    all_closed.wait(30)
    return phases.record


def aiopika_fanout(url: str, queues: list[str], connections: int, channels: int,
                   messages: int, idle: float) -> dict[str, Any]:
    """asyncio.gather over connections, and over each connection's channels."""
    import asyncio

    import aio_pika

    async def main() -> dict[str, Any]:
        received = [0]
        all_in = asyncio.Event()

        async def on_message(message: Any) -> None:
            await message.ack()
            received[0] += 1
            if received[0] == messages:
                all_in.set()

        async def open_connection(index: int) -> Any:
            conn = await aio_pika.connect(url)

            async def open_channel(queue_name: str) -> None:
                channel = await conn.channel(publisher_confirms=False)
                await channel.set_qos(prefetch_count=PREFETCH)
                queue = await channel.get_queue(queue_name, ensure=False)
                await queue.consume(on_message)

            mine = queues[index * channels:(index + 1) * channels]
            await asyncio.gather(*(open_channel(q) for q in mine))
            return conn

        phases = Phases(connections)
        conns = await asyncio.gather(*(open_connection(i) for i in range(connections)))
        phases.opened(len(queues))
        await asyncio.wait_for(all_in.wait(), CHILD_TIMEOUT)
        phases.delivered(messages)
        c0 = cpu_seconds()
        await asyncio.sleep(idle)
        phases.record.update(idle_cpu_s=cpu_seconds() - c0, idle_s=idle)
        await asyncio.gather(*(c.close() for c in conns))
        return phases.record

    return asyncio.run(main())


# --------------------------------------------------------------------------- pool children


def geamqp_pool(url: str, queue: str, greenlets: int, each: int,
                channels: int) -> dict[str, Any]:
    import gevent

    import geamqp

    conn = geamqp.connect(url, name="bench-pool", recover=False)
    publisher = geamqp.Publisher(conn, channels=channels, window=greenlets)

    def worker() -> None:
        for _ in range(each):
            publisher.publish("", queue, BODY)

    publisher.publish("", queue, BODY)  # channels opened before the clock starts
    c0, t0 = cpu_seconds(), time.perf_counter()
    gevent.joinall([gevent.spawn(worker) for _ in range(greenlets)], raise_error=True)
    record = {"wall_s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0}
    publisher.close()
    conn.close()
    return record


def pika_gevent_pool(url: str, queue: str, greenlets: int, each: int,
                     channels: int) -> dict[str, Any]:
    """`channels` confirm-mode channels shared round-robin; a greenlet publishes,
    registers an AsyncResult under the channel's next delivery tag and waits;
    pika's on-confirm callback (in the hub) resolves every tag it covers."""
    import itertools

    import gevent
    import pika
    from gevent.event import AsyncResult
    from pika.adapters.gevent_connection import GeventConnection

    opened = AsyncResult()
    conn = GeventConnection(pika.URLParameters(url), on_open_callback=opened.set,
                            on_open_error_callback=lambda _c, e: opened.set_exception(e))
    opened.get(timeout=30)

    class Confirmed:
        def __init__(self) -> None:
            self.next_tag = 0
            self.waiting: dict[int, AsyncResult] = {}

        def on_confirm(self, frame: Any) -> None:
            tag, multiple = frame.method.delivery_tag, frame.method.multiple
            ok = isinstance(frame.method, pika.spec.Basic.Ack)
            tags = [t for t in self.waiting if t <= tag] if multiple else [tag]
            for t in tags:
                waiter = self.waiting.pop(t, None)
                if waiter is not None:
                    if ok:
                        waiter.set(True)
                    else:
                        waiter.set_exception(RuntimeError(f"nacked {t}"))

    slots = []
    for _ in range(channels):
        channel_ready = AsyncResult()
        conn.channel(on_open_callback=channel_ready.set)
        channel = channel_ready.get(timeout=30)
        state = Confirmed()
        selected = AsyncResult()
        channel.confirm_delivery(state.on_confirm, callback=selected.set)
        selected.get(timeout=30)
        slots.append((channel, state))
    turn = itertools.cycle(slots)

    def publish() -> None:
        channel, state = next(turn)
        channel.basic_publish("", queue, BODY)
        state.next_tag += 1
        waiter = AsyncResult()
        state.waiting[state.next_tag] = waiter
        waiter.get(timeout=60)

    def worker() -> None:
        for _ in range(each):
            publish()

    for _ in range(channels):
        publish()
    c0, t0 = cpu_seconds(), time.perf_counter()
    gevent.joinall([gevent.spawn(worker) for _ in range(greenlets)], raise_error=True)
    record = {"wall_s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0}
    conn.close()
    return record


def aiopika_pool(url: str, queue: str, greenlets: int, each: int,
                 channels: int) -> dict[str, Any]:
    """Tasks instead of greenlets; `channels` publisher-confirms channels round-robin
    (aio-pika's publish awaits the broker's confirm)."""
    import asyncio
    import itertools

    import aio_pika

    async def main() -> dict[str, Any]:
        conn = await aio_pika.connect(url)
        chans = [await conn.channel(publisher_confirms=True) for _ in range(channels)]
        turn = itertools.cycle([c.default_exchange for c in chans])

        async def worker() -> None:
            for _ in range(each):
                await next(turn).publish(aio_pika.Message(BODY), routing_key=queue)

        await next(turn).publish(aio_pika.Message(BODY), routing_key=queue)
        c0, t0 = cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(greenlets)))
        record = {"wall_s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0}
        await conn.close()
        return record

    return asyncio.run(main())


FANOUT = {"geamqp": geamqp_fanout, "pika-gevent": pika_gevent_fanout,
          "aio-pika": aiopika_fanout}
POOL = {"geamqp": geamqp_pool, "pika-gevent": pika_gevent_pool, "aio-pika": aiopika_pool}


def child(spec: dict[str, Any]) -> int:
    try:
        if spec["kind"] == "fanout":
            kwargs = {k: spec[k] for k in ("connections", "channels", "messages", "idle")}
            if spec.get("fleet"):
                kwargs["fleet"] = spec["fleet"]
            record = FANOUT[spec["client"]](spec["url"], spec["queues"], **kwargs)
        else:
            record = POOL[spec["client"]](spec["url"], spec["queue"], spec["greenlets"],
                                          spec["each"], spec["channels"])
        emit({"phase": "done", **record})
    except Exception as exc:
        traceback.print_exc()
        emit({"phase": "error", "error": f"{type(exc).__name__}: {exc}"})
    return 0


# =========================================================================== parent


class Child:
    """A child process speaking JSON lines on stdout."""

    def __init__(self, spec: dict[str, Any], profile: str | None = None) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]))
        command = [sys.executable]
        if profile:
            command += ["-m", "cProfile", "-o", profile]
        command += [os.path.abspath(__file__), "--child"]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(spec))
        self.proc.stdin.close()

    def read(self, timeout: float = CHILD_TIMEOUT) -> dict[str, Any]:
        stdout = self.proc.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                self.proc.kill()
                return {"phase": "error", "error": f"no answer within {timeout:.0f} s"}
            line = stdout.readline()
            if not line:
                self.proc.wait()
                err = (self.proc.stderr.read() if self.proc.stderr else "").strip()
                return {"phase": "error",
                        "error": f"exit {self.proc.returncode}: {err.splitlines()[-1:]}"}
            if line.startswith("{"):
                return dict(json.loads(line))

    def finish(self) -> None:
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _pipelined(url: str, queues: list[str], make: Callable[[str], bytes],
               reply: bytes) -> None:
    conn = raw.RawConnection(url)
    try:
        conn.open_channel(1)
        for start in range(0, len(queues), 500):
            chunk = queues[start:start + 500]
            conn.sock.sendall(b"".join(make(q) for q in chunk))
            for _ in chunk:
                conn.expect(reply)
    finally:
        conn.close()


def declare_queues(url: str, queues: list[str]) -> None:
    _pipelined(url, queues, lambda q: raw.declare_frame(1, q), b"\x00\x32\x00\x0b")


def delete_queues(url: str, queues: list[str]) -> None:
    _pipelined(url, queues, lambda q: raw.method(1, 50, 40, b"\x00\x00" + raw.shortstr(q)
                                                 + b"\x00"), b"\x00\x32\x00\x29")


def publish_burst(url: str, queues: list[str], messages: int) -> None:
    """`messages` publishes round-robin over `queues`, pre-encoded, one raw socket."""
    frames = [raw.publish_frames(1, q, BODY) for q in queues]
    conn = raw.RawConnection(url)
    try:
        conn.open_channel(1)
        batch: list[bytes] = []
        for i in range(messages):
            batch.append(frames[i % len(frames)])
            if len(batch) == 1000:
                conn.sock.sendall(b"".join(batch))
                batch.clear()
        if batch:
            conn.sock.sendall(b"".join(batch))
        conn.declare(1, queues[0], passive=True)  # a round trip: the broker read them all
    finally:
        conn.close()


def run_fanout(url: str, client: str, connections: int, channels: int, messages: int,
               idle: float, fleet: int = 0, profile: str | None = None) -> dict[str, Any]:
    per_channel = fleet or 1
    prefix = f"bench-fanout-{uuid.uuid4().hex[:10]}"
    queues = [f"{prefix}-{i}" for i in range(connections * channels * per_channel)]
    declare_queues(url, queues)
    try:
        spec = {"kind": "fanout", "client": client, "url": url, "queues": queues,
                "connections": connections, "channels": channels, "messages": messages,
                "idle": idle, "fleet": fleet}
        child_proc = Child(spec, profile)
        ready = child_proc.read()
        if ready.get("phase") != "ready":
            child_proc.finish()
            return ready
        publish_burst(url, queues, messages)
        done = child_proc.read()
        child_proc.finish()
        return done
    finally:
        delete_queues(url, queues)


def run_pool(url: str, client: str, greenlets: int, each: int, channels: int,
             profile: str | None = None) -> dict[str, Any]:
    queue = f"bench-pool-{uuid.uuid4().hex[:10]}"
    declare_queues(url, [queue])
    try:
        spec = {"kind": "pool", "client": client, "url": url, "queue": queue,
                "greenlets": greenlets, "each": each, "channels": channels}
        child_proc = Child(spec, profile)
        done = child_proc.read()
        child_proc.finish()
        return done
    finally:
        delete_queues(url, [queue])


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _ratio(mine: float | None, base: float | None) -> str:
    if not mine or not base:
        return "—"
    return f"{mine / base:.2f}"


def median_record(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Field by field median of the runs that finished (the first failure if none did)."""
    done = [r for r in records if r.get("phase") == "done"]
    if not done:
        return records[0]
    merged = dict(done[0])
    for key, value in done[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            merged[key] = statistics.median(r[key] for r in done)
    return merged


def fanout_table(rows: list[tuple[str, str, dict[str, Any]]]) -> str:
    lines = [
        "| scenario | client | open s | open CPU ms/conn | RSS KiB/consumer | RSS KiB/conn "
        "| RSS KiB/conn after deliveries | deliver msgs/s | deliver CPU µs/msg "
        "| idle CPU µs/s per conn | open time ÷ geamqp's | KiB/consumer ÷ geamqp's |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base: dict[str, dict[str, Any]] = {}
    for scenario, client, r in rows:
        if client == "geamqp":
            base[scenario] = r
        if r.get("phase") != "done":
            lines.append(f"| {scenario} | {client} | failed: {r.get('error')} "
                         "| | | | | | | | | |")
            continue
        conns, consumers = r["connections"], r["consumers"]
        b = base.get(scenario, {})
        per_consumer = r["rss_growth_kib"] / consumers
        lines.append(
            f"| {scenario} | {client} | {r['open_s']:.2f} | {r['open_cpu_s'] / conns * 1e3:.2f} "
            f"| {per_consumer:.1f} | {r['rss_growth_kib'] / conns:.0f} "
            f"| {r.get('rss_delivered_kib', 0) / conns:.0f} "
            f"| {r['messages'] / r['deliver_s']:,.0f} "
            f"| {r['deliver_cpu_s'] / r['messages'] * 1e6:.1f} "
            f"| {r['idle_cpu_s'] / r['idle_s'] / conns * 1e6:.1f} "
            f"| {_ratio(r['open_s'], b.get('open_s')) if client != 'geamqp' else '1.00'} "
            f"| {_ratio(per_consumer, b['rss_growth_kib'] / b['consumers']) if b.get('phase') == 'done' and client != 'geamqp' else ('1.00' if client == 'geamqp' else '—')} |")  # noqa: E501
    return "\n".join(lines)


def pool_table(rows: list[tuple[str, dict[str, Any]]], n: int) -> str:
    lines = ["| client | total s | msgs/s | CPU µs/msg | time ÷ geamqp's | CPU ÷ geamqp's |",
             "|---|---:|---:|---:|---:|---:|"]
    base = next((r for c, r in rows if c == "geamqp" and r.get("phase") == "done"), None)
    for client, r in rows:
        if r.get("phase") != "done":
            lines.append(f"| {client} | failed: {r.get('error')} | | | | |")
            continue
        lines.append(
            f"| {client} | {r['wall_s']:.2f} | {n / r['wall_s']:,.0f} "
            f"| {r['cpu_s'] / n * 1e6:.1f} "
            f"| {_ratio(r['wall_s'], base['wall_s'] if base else None)} "
            f"| {_ratio(r['cpu_s'], base['cpu_s'] if base else None)} |")
    return "\n".join(lines)


def parse_shape(text: str) -> tuple[int, int]:
    c, k = text.lower().split("x")
    return int(c), int(k)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--channels", type=int, default=5)
    parser.add_argument("--big", default="400x25", help="10,000-consumer shape, C x K")
    parser.add_argument("--fleet", default="20x25x20",
                        help="geamqp ConsumerFleet shape: connections x channels x per channel")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--heartbeat", type=int, default=10)
    parser.add_argument("--pool-greenlets", type=int, default=500)
    parser.add_argument("--pool-each", type=int, default=200)
    parser.add_argument("--pool-channels", type=int, default=4)
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--repeat", type=int, default=1,
                        help="fan-out runs per client, alternating; the table shows medians")
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--skip-pool", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--profile", metavar="DIR",
                        help="cProfile every geamqp child; stats files go to DIR")
    parser.add_argument("--output", help="also write the Markdown report to this file")
    args = parser.parse_args(argv)
    if args.child:
        return child(json.loads(sys.stdin.read()))
    if args.quick:
        args.connections, args.channels, args.messages, args.idle = 4, 3, 600, 0.5
        args.big, args.fleet, args.pool_greenlets, args.pool_each = "4x5", "2x2x5", 20, 20
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    url = with_heartbeat(args.url, args.heartbeat)

    def profile_path(name: str, client: str) -> str | None:
        if not args.profile or client != "geamqp":
            return None
        os.makedirs(args.profile, exist_ok=True)
        return os.path.join(args.profile, f"{name}.prof")

    shapes = [(f"{args.connections} x {args.channels} x 1", args.connections, args.channels, 0)]
    if not args.skip_big:
        c, k = parse_shape(args.big)
        shapes.append((f"{c} x {k} x 1", c, k, 0))
    fanout_rows: list[tuple[str, str, dict[str, Any]]] = []
    spread: list[str] = []
    for label, c, k, _ in shapes:
        runs: dict[str, list[dict[str, Any]]] = {client: [] for client in clients}
        for round_ in range(args.repeat):
            # alternate the order, so a slow spell of the shared machine hits both
            for client in (clients if round_ % 2 == 0 else clients[::-1]):
                print(f"fan-out {label}: {client} ({round_ + 1}/{args.repeat}) ...",
                      file=sys.stderr, flush=True)
                runs[client].append(run_fanout(url, client, c, k, args.messages, args.idle,
                                               profile=profile_path(f"fanout-{c}x{k}", client)))
        for client in clients:
            fanout_rows.append((label, client, median_record(runs[client])))
            spread.append(f"- {label} {client}: deliver CPU µs/msg per run "
                          + ", ".join(_fmt(r["deliver_cpu_s"] / r["messages"] * 1e6, ".1f")
                                      if r.get("phase") == "done" else "failed"
                                      for r in runs[client])
                          + "; RSS KiB/conn after deliveries "
                          + ", ".join(f"{r['rss_delivered_kib'] / r['connections']:.0f}"
                                      if r.get("phase") == "done" else "failed"
                                      for r in runs[client]))
    if not args.skip_big and "geamqp" in clients:
        fc, fk, per = (int(x) for x in args.fleet.lower().split("x"))
        label = f"{fc} x {fk} x {per} (geamqp ConsumerFleet)"
        print(f"fan-out {label} ...", file=sys.stderr, flush=True)
        result = run_fanout(url, "geamqp", fc, fk, args.messages, args.idle, fleet=per,
                            profile=profile_path("fleet", "geamqp"))
        fanout_rows.append((label, "geamqp", result))
    pool_rows: list[tuple[str, dict[str, Any]]] = []
    if not args.skip_pool:
        for client in clients:
            print(f"pool: {client} ...", file=sys.stderr, flush=True)
            pool_rows.append((client, run_pool(url, client, args.pool_greenlets, args.pool_each,
                                               args.pool_channels,
                                               profile=profile_path("pool", client))))

    report = [
        f"{datetime.date.today().isoformat()} · {platform.node()} · {os.cpu_count()} CPUs · "
        f"Python {platform.python_version()} · heartbeat {args.heartbeat} s · "
        f"{args.messages:,} messages per delivery burst · idle {args.idle} s",
        "",
        "Fan-out (C connections x K channels x consumers per channel, one queue per consumer):",
        "",
        fanout_table(fanout_rows),
    ]
    if args.repeat > 1:
        report += ["", f"Medians of {args.repeat} alternating runs; each run:", "", *spread]
    if pool_rows:
        n = args.pool_greenlets * args.pool_each
        report += ["", f"Pool: {args.pool_greenlets} greenlets x {args.pool_each} confirmed "
                   f"publishes ({n:,}), {args.pool_channels} confirm-mode channels:", "",
                   pool_table(pool_rows, n)]
    text = "\n".join(report)
    print(text)
    if args.output:
        with open(args.output, "w") as out:
            out.write(text + "\n")
    failed = [r for _, _, r in fanout_rows if r.get("phase") != "done"]
    failed += [r for _, r in pool_rows if r.get("phase") != "done"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
