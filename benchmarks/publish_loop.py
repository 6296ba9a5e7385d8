"""In-loop publish CPU: 5 x 50,000 basic_publish of 100 bytes on one channel, best
CPU microseconds per call (no wait for the broker inside the timed loop).

    .venv/bin/python benchmarks/publish_loop.py            # geamqp from this tree
    PYTHONPATH=/other/tree .venv/bin/python benchmarks/publish_loop.py
    .venv/bin/python benchmarks/publish_loop.py --profile  # cProfile of one pass

Alternate trees in one sitting to compare them: the machine is noisy.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time

import geamqp

N = 50_000
BODY = b"x" * 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--url", default=os.environ.get(
        "AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    args = parser.parse_args()
    conn = geamqp.connect(args.url, recover=False)
    ch = conn.channel()
    queue = ch.queue_declare("", exclusive=True).queue
    try:
        if args.profile:
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(N):
                ch.basic_publish("", queue, BODY)
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(12)
            return
        best = float("inf")
        for _ in range(5):
            started = time.process_time()
            for _ in range(N):
                ch.basic_publish("", queue, BODY)
            best = min(best, (time.process_time() - started) / N * 1e6)
            ch.queue_purge(queue)
        print(f"{geamqp.__file__}: best CPU {best:.3f} us per publish")
    finally:
        conn.close()


if __name__ == "__main__":
    main()
