"""Thread → hub callbacks: geamqp's add_callback_threadsafe beside pika's, in one run.

Throughput: T threads each hand N no-op callbacks to the connection; the
clock stops when the connection's own loop has run them all (pika's
BlockingConnection pumped by process_data_events, the way pika documents it).
Latency: while the connection consumes a pre-filled queue at full speed,
8 threads hand over time-stamped callbacks at a steady rate; we report p50 /
p90 / p99 from the moment of the call to the moment the callback runs. Twice:
with the broker and this process sharing every CPU, and (as root, with a local
broker) with the broker pinned to one core and this process to the others, as
if the broker ran on its own host; the pinning is undone afterwards.

    python benchmarks/threads.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def _flood(add: Callable[[Callable[[], None]], None], threads: int, per_thread: int,
           on_done: Callable[[], None]) -> list[threading.Thread]:
    remaining = [threads * per_thread]

    def callback() -> None:  # runs in the connection's loop; counts down
        remaining[0] -= 1
        if remaining[0] == 0:
            on_done()

    def worker() -> None:
        for _ in range(per_thread):
            add(callback)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    return workers


def geamqp_throughput(threads: int, per_thread: int) -> float:
    import gevent
    from gevent.event import Event

    import geamqp

    with geamqp.connect(URL, name="bench-threads") as conn:
        done = Event()
        start = time.perf_counter()
        workers = _flood(conn.add_callback_threadsafe, threads, per_thread, done.set)
        done.wait()
        elapsed = time.perf_counter() - start
        while any(w.is_alive() for w in workers):
            gevent.sleep(0.001)
    return threads * per_thread / elapsed


def pika_throughput(threads: int, per_thread: int) -> float:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(URL))
    try:
        done = threading.Event()
        start = time.perf_counter()
        workers = _flood(conn.add_callback_threadsafe, threads, per_thread, done.set)
        while not done.is_set():
            conn.process_data_events(time_limit=0.01)
        elapsed = time.perf_counter() - start
        for w in workers:
            w.join()
    finally:
        conn.close()
    return threads * per_thread / elapsed


def _prefill(queue: str, count: int) -> None:
    import geamqp

    with geamqp.connect(URL, name="bench-threads-fill") as conn:
        ch = conn.channel()
        ch.queue_declare(queue, auto_delete=False)
        ch.confirm_delivery()
        body = b"x" * 100
        for _ in range(count - 1):
            ch.basic_publish("", queue, body, wait=False)
        ch.basic_publish("", queue, body)


def geamqp_latency_while_consuming(messages: int, rate_per_thread: float,
                                   threads: int = 8) -> dict[str, float]:
    """The senders run throughout; only callbacks handed over while the queue is
    being consumed count (not those while the benchmark itself starts threads)."""
    import gevent
    from gevent.event import Event

    import geamqp

    queue = f"bench-threads-{uuid.uuid4().hex[:8]}"
    _prefill(queue, messages)
    samples: list[tuple[float, float]] = []
    consumed = [0]
    with geamqp.connect(URL, name="bench-threads-latency") as conn:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1000)
        finished = Event()

        def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
            consumed[0] += 1
            channel.basic_ack(method.delivery_tag)
            if consumed[0] == messages:
                finished.set()

        stop = threading.Event()

        def sender() -> None:
            interval = 1.0 / rate_per_thread
            while not stop.is_set():
                sent_at = time.perf_counter()
                conn.add_callback_threadsafe(
                    lambda t=sent_at: samples.append((t, time.perf_counter())))
                time.sleep(interval)

        senders = [threading.Thread(target=sender) for _ in range(threads)]
        for s in senders:
            s.start()
        try:
            gevent.sleep(0.05)  # every sender is running
            start = time.perf_counter()
            ch.basic_consume(queue, on_message)
            finished.wait()
            end = time.perf_counter()
        finally:
            stop.set()
            while any(s.is_alive() for s in senders):
                gevent.sleep(0.001)
        ch.queue_delete(queue)
    latencies = [ran - sent for sent, ran in samples if start <= sent <= end]
    return {"consume_rate": messages / (end - start), "callbacks": len(latencies),
            "p50_ms": _percentile(latencies, 0.5) * 1e3,
            "p90_ms": _percentile(latencies, 0.9) * 1e3,
            "p99_ms": _percentile(latencies, 0.99) * 1e3,
            "max_ms": max(latencies) * 1e3}


def _broker_pid() -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == "beam.smp":
                        return int(entry)
            except OSError:
                continue
    return None


@contextlib.contextmanager
def broker_on_its_own_core() -> Iterator[str | None]:
    """Pin the local broker (every thread of beam.smp) to CPU 0 and this process to
    the other CPUs, as if the broker ran on its own host; restore both afterwards.
    Yields a description, or None where that cannot be done (not root, one CPU,
    no local broker)."""
    cpus = sorted(os.sched_getaffinity(0))
    broker = _broker_pid()
    if os.geteuid() != 0 or len(cpus) < 2 or broker is None:
        yield None
        return
    saved: dict[int, set[int]] = {}
    mine = os.sched_getaffinity(0)
    try:
        for tid in os.listdir(f"/proc/{broker}/task"):
            with contextlib.suppress(OSError):  # a thread may end meanwhile
                saved[int(tid)] = os.sched_getaffinity(int(tid))
                os.sched_setaffinity(int(tid), {cpus[0]})
        os.sched_setaffinity(0, set(cpus[1:]))  # this thread; threads started later inherit
        yield f"broker pinned to CPU {cpus[0]}, client to CPU {','.join(map(str, cpus[1:]))}"
    finally:
        os.sched_setaffinity(0, mine)
        for tid, mask in saved.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, mask)


def latency_rows(messages: int, repeat: int) -> list[tuple[str, list[dict[str, float]]]]:
    rows = [("broker and client share every CPU",
             [geamqp_latency_while_consuming(messages, 500.0) for _ in range(repeat)])]
    with broker_on_its_own_core() as placement:
        if placement is not None:
            rows.append((placement, [geamqp_latency_while_consuming(messages, 500.0)
                                     for _ in range(repeat)]))
        else:
            rows.append(("broker on its own core: skipped (needs root and a local broker)", []))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    per_thread_1 = 20_000 if args.quick else 200_000
    per_thread_8 = 5_000 if args.quick else 25_000
    repeat = 1 if args.quick else args.repeat
    rows = []
    for label, threads, per in (("1 thread", 1, per_thread_1), ("8 threads", 8, per_thread_8)):
        ours = statistics.median(geamqp_throughput(threads, per) for _ in range(repeat))
        theirs = statistics.median(pika_throughput(threads, per) for _ in range(repeat))
        rows.append((label, ours, theirs))
    lat_rows = latency_rows(20_000 if args.quick else 100_000, repeat)
    print("| callbacks from | geamqp callbacks/s | pika BlockingConnection callbacks/s | ratio |")
    print("|---|---:|---:|---:|")
    for label, ours, theirs in rows:
        print(f"| {label} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.1f}x |")
    print()
    print("Thread → hub latency while the same connection consumes a pre-filled queue at "
          f"full speed; 8 threads x 500 callbacks/s; {repeat} run(s) each, median of runs "
          "(p99 range over runs):")
    print()
    print("| placement | consume msgs/s | samples | p50 ms | p90 ms | p99 ms | p99 range ms"
          " | max ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for placement, runs in lat_rows:
        if not runs:
            print(f"| {placement} | | | | | | | |")
            continue

        def med(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        p99s = [r["p99_ms"] for r in runs]
        samples = sum(r["callbacks"] for r in runs)
        print(f"| {placement} | {med('consume_rate'):,.0f} | {samples:,.0f}"
              f" | {med('p50_ms'):.3f} | {med('p90_ms'):.3f} | {med('p99_ms'):.3f}"
              f" | {min(p99s):.2f} to {max(p99s):.2f} | {max(r['max_ms'] for r in runs):.2f} |")


if __name__ == "__main__":
    main()
