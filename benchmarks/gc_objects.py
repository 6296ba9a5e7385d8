"""Garbage-collector load per message: geamqp and pika-gevent side by side.

    .venv/bin/python benchmarks/gc_objects.py        # publish, consume (ack each), latency
    .venv/bin/python benchmarks/gc_objects.py --repeat 3 --clients geamqp

Each (case, client) runs in a fresh subprocess with compare.py's driver
(benchmarks/_clients/), twice:

- collector on: collections per 100,000 messages by generation (gc.callbacks),
  and the longest pause of each generation — a gen-2 pause is the `max` of
  every latency table;
- collector off (gc.disable() over the timed span): the net number of
  GC-tracked objects left per message (gc.get_count()[0], which grows on
  each tracked allocation and shrinks on each deallocation), then how many of
  them were garbage cycles (what gc.collect() finds unreachable), per message.
  Objects freed by reference counting cost no collection; the ones left
  behind are what fills generation 0 and, promoted, generation 2.

`latency`: consume latency (p50, p99, p99.9, max) of messages published at a
fixed rate with their publish time in the body.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (HERE, ROOT):
    if path not in sys.path:
        sys.path.insert(0, path)

from _clients import Meter  # noqa: E402
from _clients import raw as raw_client  # noqa: E402

DEFAULT_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
BODY = bytes(range(100))
MODULES = {"geamqp": "geamqp_client", "pika-gevent": "pika_gevent", "pika": "pika_blocking"}
CASES = {"publish": 50_000, "consume": 30_000, "confirm": 30_000}


class GCWatch:
    """Collections and their pauses by generation while armed."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.longest = [0.0, 0.0, 0.0]
        self.armed = False
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if not self.armed:
            return
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        gen = info["generation"]
        self.count[gen] += 1
        self.longest[gen] = max(self.longest[gen], time.perf_counter() - self._t0)


def child(spec: dict[str, Any]) -> int:
    try:
        module = importlib.import_module(f"_clients.{MODULES[spec['client']]}")
        meter = Meter()
        start, stop = meter.start, meter.stop
        watch = GCWatch()
        state: dict[str, Any] = {}

        def start_measuring() -> None:
            gc.collect()
            if spec["gc_off"]:
                gc.disable()
                state["count0"] = gc.get_count()[0]
            else:
                gc.callbacks.append(watch)
                watch.armed = True
            start()

        def stop_measuring() -> None:
            stop()
            if spec["gc_off"]:
                state["left"] = gc.get_count()[0] - state["count0"]
                state["cyclic"] = gc.collect()
                gc.enable()
            watch.armed = False

        meter.start = start_measuring  # type: ignore[method-assign]
        meter.stop = stop_measuring  # type: ignore[method-assign]
        case, n = spec["case"], spec["n"]
        if case == "publish":
            module.publish(spec["url"], meter, spec["queue"], n, BODY)
        elif case == "confirm":
            module.confirm(spec["url"], meter, spec["queue"], n, BODY, window=1000)
        else:
            module.consume(spec["url"], meter, spec["queue"], n, prefetch=1000, ack_every=1)
        result = {"cpu": meter.cpu, "wall": meter.wall, "collections": watch.count,
                  "longest_ms": [x * 1e3 for x in watch.longest], **state}
    except Exception as exc:
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    return 0


LATENCY_N, LATENCY_RATE = 100_000, 10_000


def latency_child(spec: dict[str, Any]) -> int:
    """Consume timestamped messages (auto-ack) as they are published at a fixed rate;
    print the latency percentiles (publish time in the body, same host clock)."""
    import struct as _struct

    import gevent
    from gevent.event import Event

    unpack = _struct.Struct(">d").unpack_from
    samples: list[float] = []
    done = Event()
    n = spec["n"]

    def on_message(_ch: Any, _method: Any, _props: Any, body: bytes) -> None:
        samples.append(time.time() - unpack(body)[0])
        if len(samples) == n:
            done.set()

    if spec["client"] == "geamqp":
        import geamqp

        conn = geamqp.connect(spec["url"], recover=False)
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1000)
        ch.basic_consume(spec["queue"], on_message, auto_ack=True)
    else:
        import pika
        from pika.adapters.gevent_connection import GeventConnection

        opened = Event()

        def on_open(connection: Any) -> None:
            def on_channel(channel: Any) -> None:
                channel.basic_qos(prefetch_count=1000, callback=lambda _f: channel.basic_consume(
                    spec["queue"], on_message, auto_ack=True,
                    callback=lambda _f: opened.set()))
            connection.channel(on_open_callback=on_channel)

        conn = GeventConnection(pika.URLParameters(spec["url"]), on_open_callback=on_open)
        opened.wait(30)
        gevent.sleep(0.5)
    print(json.dumps({"ready": True}), flush=True)
    done.wait(120)
    ordered = sorted(samples)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3

    print(json.dumps({"n": len(samples), "p50": pct(0.5), "p99": pct(0.99),
                      "p999": pct(0.999), "max": ordered[-1] * 1e3}), flush=True)
    return 0


def run_latency(url: str, client: str) -> dict[str, Any]:
    import struct as _struct

    queue = f"bench-gc-lat-{uuid.uuid4().hex[:10]}"
    raw_client.admin(url, declare=(queue,))
    try:
        spec = {"client": client, "n": LATENCY_N, "queue": queue, "url": url,
                "latency": True}
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]))
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child",
                                 json.dumps(spec)], stdout=subprocess.PIPE, text=True,
                                cwd=ROOT, env=env)
        assert proc.stdout is not None
        proc.stdout.readline()  # ready
        conn = raw_client.RawConnection(url)
        conn.open_channel(1)
        batch, pack = 10, _struct.Struct(">d").pack
        start = time.perf_counter()
        for i in range(0, LATENCY_N, batch):
            delay = start + i / LATENCY_RATE - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            stamp = pack(time.time()) + bytes(92)
            conn.sock.sendall(raw_client.publish_frames(1, queue, stamp) * batch)
        line = proc.stdout.readline()
        proc.wait(60)
        conn.close()
        return dict(json.loads(line)) if line else {"error": "no answer"}
    finally:
        raw_client.admin(url, delete=(queue,))


def run_one(url: str, client: str, case: str, gc_off: bool) -> dict[str, Any]:
    queue = f"bench-gc-{uuid.uuid4().hex[:10]}"
    n = CASES[case]
    raw_client.admin(url, declare=(queue,))
    try:
        if case == "consume":
            raw_client.prefill(url, queue, n, BODY)
        spec = {"client": client, "case": case, "n": n, "queue": queue, "url": url,
                "gc_off": gc_off}
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]))
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                               json.dumps(spec)], capture_output=True, text=True, cwd=ROOT,
                              env=env, timeout=300, check=False)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
        if not lines:
            return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
        return dict(json.loads(lines[-1]))
    finally:
        raw_client.admin(url, delete=(queue,))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--clients", default="geamqp,pika-gevent")
    parser.add_argument("--cases", default="publish,consume,confirm,latency")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        return latency_child(spec) if spec.get("latency") else child(spec)
    clients = args.clients.split(",")
    print(f"# GC per message · {time.strftime('%Y-%m-%d')} · medians of {args.repeat} "
          "alternating runs · 100-byte bodies")
    print("| case | client | CPU µs/msg | gen0 / gen1 / gen2 collections per 100k msgs "
          "| longest gen2 pause ms | tracked objects left per msg (gc off) "
          "| cyclic garbage objects per msg |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for case in args.cases.split(","):
        if case == "latency":
            continue
        n = CASES[case]
        on: dict[str, list[dict[str, Any]]] = {c: [] for c in clients}
        off: dict[str, list[dict[str, Any]]] = {c: [] for c in clients}
        for r in range(args.repeat):
            for client in (clients if r % 2 == 0 else clients[::-1]):
                print(f"{case} {client} ({r + 1}/{args.repeat})", file=sys.stderr, flush=True)
                on[client].append(run_one(args.url, client, case, False))
                off[client].append(run_one(args.url, client, case, True))
        for client in clients:
            a = [x for x in on[client] if "cpu" in x]
            b = [x for x in off[client] if "cpu" in x]
            if not a or not b:
                print(f"| {case} | {client} | failed: {(on[client] + off[client])[0]} | | | | |")
                continue
            per100k = [statistics.median(x["collections"][g] for x in a) * 1e5 / n
                       for g in range(3)]
            print(f"| {case} | {client} | {statistics.median(x['cpu'] for x in a) / n * 1e6:.1f} "
                  f"| {per100k[0]:,.0f} / {per100k[1]:,.0f} / {per100k[2]:,.1f} "
                  f"| {max(x['longest_ms'][2] for x in a):.1f} "
                  f"| {statistics.median(x['left'] for x in b) / n:.2f} "
                  f"| {statistics.median(x['cyclic'] for x in b) / n:.2f} |", flush=True)
    if "latency" in args.cases.split(","):
        print(f"\nConsume latency, auto-ack, {LATENCY_N:,} messages published at "
              f"{LATENCY_RATE:,}/s (in batches of 10) by a raw client in the parent; each run:\n")
        print("| client | p50 ms | p99 ms | p99.9 ms | max ms |")
        print("|---|---:|---:|---:|---:|")
        for r in range(args.repeat):
            for client in (clients if r % 2 == 0 else clients[::-1]):
                x = run_latency(args.url, client)
                if "p50" not in x:
                    print(f"| {client} | failed: {x} | | | |")
                    continue
                print(f"| {client} | {x['p50']:.2f} | {x['p99']:.2f} | {x['p999']:.2f} "
                      f"| {x['max']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
