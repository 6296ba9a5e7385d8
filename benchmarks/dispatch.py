"""The dispatch of deliveries through many per-channel dispatchers, without a broker.

    .venv/bin/python benchmarks/dispatch.py                      # the table
    .venv/bin/python benchmarks/dispatch.py --profile 20         # + cProfile's top 20
    PYTHONPATH=/other/tree .venv/bin/python benchmarks/dispatch.py   # another geamqp

What the reader greenlet does for a high fan-out connection: each round it
submits one call to each of N dispatchers (`fanout`: one delivery per channel
per hub turn), or 64 calls to one dispatcher (`burst`: a busy channel), then
yields until they have all run. Per dispatched call: CPU µs, greenlet switches
(counted with `greenlet.settrace`), and the memory each dispatcher keeps once
it has run something and gone idle (tracemalloc cannot see greenlet stacks, so
this is VmRSS growth over 20,000 dispatchers).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import statistics
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if not os.environ.get("PYTHONPATH") and ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import gevent  # noqa: E402
import greenlet  # noqa: E402
from gevent.event import Event  # noqa: E402

from geamqp.consumer import Dispatcher  # noqa: E402


def cpu() -> float:
    return time.process_time()


def rss_kib() -> int:
    gc.collect()
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Switches:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, event: str, _args: Any) -> None:
        if event in ("switch", "throw"):
            self.count += 1


def run_rounds(dispatchers: list[Dispatcher], rounds: int, per: int) -> tuple[float, int, int]:
    """CPU seconds, switches and calls for `rounds` rounds of `per` calls to each."""
    left = [0]
    done = Event()

    def call(_n: int) -> None:
        left[0] -= 1
        if not left[0]:
            done.set()

    switches = Switches()
    old = greenlet.settrace(switches)
    c0 = cpu()
    try:
        for r in range(rounds):
            done.clear()
            left[0] = len(dispatchers) * per
            for d in dispatchers:
                for _ in range(per):
                    d.submit(call, r)
            done.wait()
    finally:
        elapsed = cpu() - c0
        greenlet.settrace(old)
    return elapsed, switches.count, rounds * len(dispatchers) * per


def idle_memory(n: int) -> float:
    """KiB of RSS per dispatcher that has run one call and gone idle."""
    base = rss_kib()
    dispatchers = [Dispatcher(f"d{i}") for i in range(n)]
    run_rounds(dispatchers, 1, 1)
    gevent.sleep(0.05)
    grown = rss_kib() - base
    for d in dispatchers:
        d.stop()
    return grown / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dispatchers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", type=int, metavar="N", default=0,
                        help="also print cProfile's top N functions of the fan-out case")
    args = parser.parse_args(argv)
    import geamqp

    print(f"# dispatch benchmark · geamqp from {os.path.dirname(geamqp.__file__)} · "
          f"Python {sys.version.split()[0]} · gevent {gevent.__version__}")
    print(f"# medians of {args.repeat}; per dispatched call")
    print("| case | dispatchers | calls per dispatcher per round | CPU µs/call (runs) "
          "| switches/call |")
    print("|---|---:|---:|---|---:|")
    cases = [("fanout", args.dispatchers, 1, args.rounds), ("burst", 1, 64, args.rounds * 50),
             ("single", 1, 1, args.rounds * 500)]
    for name, n, per, rounds in cases:
        dispatchers = [Dispatcher(f"d{i}") for i in range(n)]
        results = [run_rounds(dispatchers, rounds, per) for _ in range(args.repeat)]
        per_call = [c / calls * 1e6 for c, _, calls in results]
        switches = statistics.median(s / calls for _, s, calls in results)
        print(f"| {name} | {n} | {per} | {statistics.median(per_call):.2f} "
              f"({', '.join(f'{x:.2f}' for x in per_call)}) | {switches:.2f} |")
        for d in dispatchers:
            d.stop()
    print(f"\nRSS per idle dispatcher that has run a call (20,000 of them): "
          f"{idle_memory(20_000):.2f} KiB")
    if args.profile:
        dispatchers = [Dispatcher(f"d{i}") for i in range(args.dispatchers)]
        profiler = cProfile.Profile()
        profiler.enable()
        run_rounds(dispatchers, args.rounds, 1)
        profiler.disable()
        print()
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
