"""Large messages: publish and consume 64 KiB, 1 MiB and 16 MiB bodies, side by side.

    .venv/bin/python benchmarks/large.py                  # full run (a few minutes)
    .venv/bin/python benchmarks/large.py --quick          # smoke run
    .venv/bin/python benchmarks/large.py --sizes 1MiB --repeat 5 --clients geamqp,pika-gevent

Every (size, case, client) runs in a fresh subprocess, `--repeat` times with the
clients taking turns; the table shows medians of MB/s (MiB of bodies per second),
client CPU per MiB, and the peak RSS growth of the child while it works (VmHWM
reset just before the timed span, minus VmRSS then; the body itself is made
before). Drivers are compare.py's (benchmarks/_clients/); the raw client, whose
compare.py driver puts a body in one frame, is replaced here by one that splits
bodies by frame_max and sends each message with one `sendmsg` (no join).

Copies: for geamqp, `--copies` also publishes and consumes one 16 MiB message
under tracemalloc and prints the peak of traced memory during each, in bodies:
how many body-sized buffers were alive at once on that path.

The target (issue 17): peak RSS while publishing 200 x 1 MiB bounded by the write
buffer's byte limit (HIGH_WATER_BYTES, 4 MiB) plus a small multiple of one body.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
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
KIB, MIB = 1024, 1024 * 1024
SIZES = {"64KiB": (64 * KIB, 2000), "1MiB": (MIB, 200), "16MiB": (16 * MIB, 12)}
CLIENTS = ("raw", "geamqp", "pika-gevent", "pika")
MODULES = {"geamqp": "geamqp_client", "pika": "pika_blocking", "pika-gevent": "pika_gevent"}
FRAME_MAX = 131072  # RabbitMQ's default, what every client negotiates here
RUN_TIMEOUT = 300.0


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current RSS (Linux 4.0+)
    except OSError:
        pass


def raw_message(queue: str, body: bytes) -> list[Any]:
    """basic.publish, content header and body frames split by FRAME_MAX, as buffers."""
    frame = raw_client.frame
    out: list[Any] = [raw_client.method(1, 60, 40, b"\x00\x00" + raw_client.shortstr("")
                                        + raw_client.shortstr(queue) + b"\x00"),
                      frame(2, 1, struct.pack(">HHQH", 60, 0, len(body), 0))]
    view = memoryview(body)
    chunk = FRAME_MAX - 8
    for start in range(0, len(body), chunk):
        part = view[start:start + chunk]
        out += [struct.pack(">BHI", 3, 1, len(part)), part, b"\xce"]
    return out


def _sendmsg_all(sock: socket.socket, buffers: list[Any]) -> None:
    buffers = list(buffers)
    while buffers:
        sent = sock.sendmsg(buffers[:1024])
        while buffers and sent >= len(buffers[0]):
            sent -= len(buffers[0])
            buffers.pop(0)
        if sent:
            buffers[0] = memoryview(buffers[0])[sent:]


def raw_publish(url: str, meter: Meter, queue: str, n: int, body: bytes) -> dict[str, float]:
    conn = raw_client.RawConnection(url)
    conn.open_channel(1)
    message = raw_message(queue, body)
    meter.start()
    for _ in range(n):
        _sendmsg_all(conn.sock, message)
    conn.wait_for_count(1, queue, n)
    meter.stop()
    conn.close()
    return {}


def prefill(url: str, queue: str, n: int, body: bytes) -> None:
    conn = raw_client.RawConnection(url)
    try:
        conn.open_channel(1)
        message = raw_message(queue, body)
        for _ in range(n):
            _sendmsg_all(conn.sock, message)
        conn.wait_for_count(1, queue, n)
    finally:
        conn.close()


def child(spec: dict[str, Any]) -> int:
    try:
        body = bytes(range(256)) * (spec["size"] // 256)
        if spec["client"] == "raw":
            driver = {"publish": raw_publish, "consume": raw_client.consume}[spec["case"]]
        else:
            import importlib

            module = importlib.import_module(f"_clients.{MODULES[spec['client']]}")
            driver = getattr(module, spec["case"])
        meter = Meter()
        start = meter.start

        def start_measuring() -> None:
            _reset_peak()
            rss0[0] = _status("VmRSS")
            start()

        rss0 = [0]
        meter.start = start_measuring  # type: ignore[method-assign]
        if spec["case"] == "publish":
            driver(spec["url"], meter, spec["queue"], spec["n"], body)
        else:
            driver(spec["url"], meter, spec["queue"], spec["n"], prefetch=spec["prefetch"],
                   ack_every=1)
        result = {"wall": meter.wall, "cpu": meter.cpu,
                  "peak_kib": _status("VmHWM") - rss0[0]}
    except Exception as exc:
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    return 0


def run_one(url: str, client: str, case: str, size: int, n: int, prefetch: int) -> dict[str, Any]:
    queue = f"bench-large-{uuid.uuid4().hex[:10]}"
    raw_client.admin(url, declare=(queue,))
    try:
        if case == "consume":
            prefill(url, queue, n, bytes(range(256)) * (size // 256))
        spec = {"client": client, "case": case, "size": size, "n": n, "queue": queue,
                "url": url, "prefetch": prefetch}
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]))
        try:
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                                   json.dumps(spec)], capture_output=True, text=True,
                                  cwd=ROOT, env=env, timeout=RUN_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {RUN_TIMEOUT:.0f} s"}
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if not lines:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return {"error": f"exit {proc.returncode}: {tail}"}
        return dict(json.loads(lines[-1]))
    finally:
        raw_client.admin(url, delete=(queue,))


def copies(url: str) -> str:
    """Peak traced memory, in bodies, while geamqp publishes / consumes one 16 MiB body."""
    import tracemalloc

    import gevent
    from gevent.event import Event

    import geamqp

    size = 16 * MIB
    body = bytes(range(256)) * (size // 256)
    queue = f"bench-large-copies-{uuid.uuid4().hex[:10]}"
    lines = []
    with geamqp.connect(url, recover=False) as conn:
        ch = conn.channel()
        ch.queue_declare(queue)
        try:
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            ch.basic_publish("", queue, body)
            conn._link.transport.flush(30)
            peak = tracemalloc.get_traced_memory()[1] - base
            lines.append(f"publish one 16 MiB body: peak traced {peak / size:.2f} bodies")
            while ch.queue_declare(queue, passive=True).message_count < 1:
                gevent.sleep(0.01)
            got = Event()
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            ch.basic_consume(queue, lambda c, m, p, b: got.set(), auto_ack=True)
            got.wait(30)
            peak = tracemalloc.get_traced_memory()[1] - base
            tracemalloc.stop()
            lines.append(f"consume one 16 MiB body: peak traced {peak / size:.2f} bodies")
        finally:
            ch.queue_delete(queue)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--cases", default="publish,consume")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--prefetch", type=int, default=10)
    parser.add_argument("--copies", action="store_true", help="geamqp's copies (tracemalloc)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    if args.child:
        return child(json.loads(args.child))
    sizes = {k: SIZES[k] for k in args.sizes.split(",")}
    if args.quick:
        sizes = {k: (s, max(2, n // 20)) for k, (s, n) in sizes.items()}
        args.repeat = 1
    clients = args.clients.split(",")
    lines = [f"# large messages · {time.strftime('%Y-%m-%d')} · {os.cpu_count()} CPUs · "
             f"medians of {args.repeat} alternating runs · prefetch {args.prefetch} (consume, "
             "ack each) · peak = VmHWM growth over the timed span",
             "| size x n | case | client | MiB/s | CPU ms/MiB | peak RSS MiB | runs (MiB/s) |",
             "|---|---|---|---:|---:|---:|---|"]
    for label, (size, n) in sizes.items():
        for case in args.cases.split(","):
            runs: dict[str, list[dict[str, Any]]] = {c: [] for c in clients}
            for r in range(args.repeat):
                for client in (clients if r % 2 == 0 else clients[::-1]):
                    print(f"{label} {case} {client} ({r + 1}/{args.repeat})", file=sys.stderr,
                          flush=True)
                    runs[client].append(run_one(args.url, client, case, size, n, args.prefetch))
            mib = size * n / MIB
            for client in clients:
                ok = [x for x in runs[client] if "wall" in x]
                if not ok:
                    lines.append(f"| {label} x {n} | {case} | {client} | failed: "
                                 f"{runs[client][0].get('error')} | | | |")
                    continue
                rates = [mib / x["wall"] for x in ok]
                lines.append(
                    f"| {label} x {n} | {case} | {client} | {statistics.median(rates):,.0f} "
                    f"| {statistics.median(x['cpu'] for x in ok) / mib * 1e3:.2f} "
                    f"| {statistics.median(x['peak_kib'] for x in ok) / 1024:.1f} "
                    f"| {', '.join(f'{x:,.0f}' for x in rates)} |")
            print(lines[-1], file=sys.stderr, flush=True)
    if args.copies:
        lines += ["", copies(args.url)]
    text = "\n".join(lines)
    print(text)
    if args.output:
        with open(args.output, "w") as out:
            out.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
