"""Per-client benchmark drivers for benchmarks/compare.py.

Each module exposes the same five functions, all taking ``(url, meter, queue,
n, **options)`` and returning a dict of extra figures (e.g. latencies):

    publish(url, meter, queue, n, body)                  no confirms
    confirm(url, meter, queue, n, body, window)          confirms, `window` outstanding
    consume(url, meter, queue, n, prefetch, ack_every)   queue pre-filled with n messages
    rpc(url, meter, queue, n, body)                      n sequential round trips
    declare(url, meter, queue, n)                        n passive queue.declare round trips

A driver connects first, then calls ``meter.start()`` just before the timed
work and ``meter.stop()`` just after; only that span counts. A driver that
cannot do a case raises `Unsupported` with the reason.
"""

from __future__ import annotations

import cProfile
import os
import resource
import time

PROFILE_ENV = "BENCH_PROFILE"  # when set: cProfile the timed span, dump the stats to this path


class Unsupported(Exception):
    """This client cannot run this case; the message says why."""


class Meter:
    """Wall time and this process's CPU time (user + sys) between start() and stop()."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self._t0 = 0.0
        self._c0 = 0.0
        path = os.environ.get(PROFILE_ENV)
        self._profile_path = path
        self._profiler = cProfile.Profile() if path else None

    @staticmethod
    def _cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def start(self) -> None:
        if self._profiler is not None:
            self._profiler.enable()
        self._c0 = self._cpu()
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        self.wall = time.perf_counter() - self._t0
        self.cpu = self._cpu() - self._c0
        if self._profiler is not None:
            self._profiler.disable()
            self._profiler.dump_stats(self._profile_path)


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50 and p99 of round-trip times (seconds) in microseconds."""
    ordered = sorted(samples)
    if not ordered:
        return {}

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1e6

    return {"p50_us": at(0.50), "p99_us": at(0.99)}


POLL_INTERVAL = 0.002  # seconds between passive declares while waiting for the queue to fill
