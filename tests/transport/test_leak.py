"""200 recoveries in a row leave the greenlet count and RSS flat (a leak check).

Each cycle: the fake broker drops the link right after the previous restore
finished (the recovered callback ran); the supervisor reconnects and restores
a channel with qos, confirms and a consumer. After 20 warm-up cycles, 200
more may add at most GREENLET_SLACK live greenlets and RSS_SLACK of RSS.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any

import greenlet
import pytest
from fakebroker import FakeBroker
from peer_helpers import round_trip

pytestmark = pytest.mark.timeout(30)

WARMUP, CYCLES = 20, 200
GREENLET_SLACK = 3
RSS_SLACK = 4 * 1024 * 1024  # bytes; one leaked link per cycle (socket, buffers,
# four greenlets with their stacks) would cost well over this in 200 cycles


def _greenlets() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and not o.dead)


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _recover(broker: FakeBroker, signals: Any, cycles: int) -> None:
    for _ in range(cycles):
        done = signals.count("recovered")
        broker.peers[-1].drop()
        signals.wait("recovered", count=done + 1)
        broker.clear_log()


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc for RSS")
def test_200_recoveries_leave_greenlets_and_rss_flat(broker: FakeBroker, connect: Any) -> None:
    conn, signals = connect(broker, recovery_max_attempts=5)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=10)
    ch.confirm_delivery()
    ch.basic_consume("q", lambda *a: None, consumer_tag="leak")
    _recover(broker, signals, WARMUP)
    greenlets_before, rss_before = _greenlets(), _rss()
    started = time.monotonic()
    _recover(broker, signals, CYCLES)
    elapsed = time.monotonic() - started
    greenlets_after, rss_after = _greenlets(), _rss()
    print(f"{CYCLES} recoveries in {elapsed:.2f} s; greenlets {greenlets_before} -> "
          f"{greenlets_after}; RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB")
    assert signals.count("recovered") == WARMUP + CYCLES
    assert greenlets_after - greenlets_before <= GREENLET_SLACK
    assert rss_after - rss_before <= RSS_SLACK
    assert ch.is_open
    ch.basic_publish("", "q", b"still works")
    round_trip(conn)
