"""Counters of `python -m geamqp perf`: latency histograms and the message ledger.

Latency is kept in a log-bucketed histogram (1 % wide buckets from 1 µs to
~100 s, about 1,900 ints), so a long run's percentiles cost no memory per
message. The ledger records, per producer, which sequence numbers were
published, settled by the broker and received (one byte each), so that at the
end it can count what was lost and what arrived twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["Histogram", "Ledger", "Totals"]

_MIN = 1e-6
_GROWTH = 1.01
_LOG_GROWTH = math.log(_GROWTH)
_BUCKETS = int(math.log(1e2 / _MIN) / _LOG_GROWTH) + 2


class Histogram:
    """Seconds, bucketed logarithmically (relative error under 1 %)."""

    __slots__ = ("count", "counts", "max", "total")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def record(self, seconds: float) -> None:
        if seconds > _MIN:
            index = min(_BUCKETS - 1, int(math.log(seconds / _MIN) / _LOG_GROWTH) + 1)
        else:
            index = 0
        self.counts[index] += 1
        self.count += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds

    def merge(self, other: Histogram) -> None:
        counts = self.counts
        for i, n in enumerate(other.counts):
            if n:
                counts[i] += n
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)

    def percentile(self, fraction: float) -> float | None:
        """The value under which ``fraction`` of the samples fall (None: no samples)."""
        if not self.count:
            return None
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                upper = _MIN * _GROWTH ** index if index else _MIN
                return min(upper, self.max)
        return self.max

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None


@dataclass
class Totals:
    """Counts since the start of the run."""

    published: int = 0
    confirmed: int = 0
    nacked: int = 0
    unknown: int = 0  # the broker's answer was lost with the connection
    refused: int = 0  # basic_publish itself raised (e.g. the connection was closing)
    consumed: int = 0
    duplicated: int = 0  # deliveries of a message already consumed once
    recoveries: int = 0
    losses: int = 0


@dataclass
class _Producer:
    published: bytearray = field(default_factory=bytearray)
    settled: bytearray = field(default_factory=bytearray)  # 1 acked, 2 nacked, 3 unknown
    received: bytearray = field(default_factory=bytearray)  # deliveries, saturating at 255


def _grow(array: bytearray, index: int) -> None:
    if index >= len(array):
        array.extend(bytes(max(index + 1 - len(array), len(array), 1024)))


class Ledger:
    """What was published, settled and received, per (producer, sequence number).

    ``outstanding`` counts messages that are owed to the consumers: confirmed
    (in confirm mode) or published (without confirms) and not received yet;
    it is kept up to date on every event, so the end of a run can wait on it.
    """

    ACKED, NACKED, UNKNOWN = 1, 2, 3

    def __init__(self, producers: int, confirms: bool) -> None:
        self._producers = [_Producer() for _ in range(producers)]
        self._confirms = confirms
        self.totals = Totals()
        self.outstanding = 0

    def published(self, producer: int, seq: int) -> None:
        p = self._producers[producer]
        _grow(p.published, seq)
        p.published[seq] = 1
        self.totals.published += 1
        if not self._confirms:
            _grow(p.received, seq)
            if not p.received[seq]:
                self.outstanding += 1

    def settled(self, producer: int, seq: int, outcome: int) -> None:
        p = self._producers[producer]
        _grow(p.settled, seq)
        p.settled[seq] = outcome
        totals = self.totals
        if outcome == self.ACKED:
            totals.confirmed += 1
            _grow(p.received, seq)
            if not p.received[seq]:
                self.outstanding += 1
        elif outcome == self.NACKED:
            totals.nacked += 1
        else:
            totals.unknown += 1

    def received(self, producer: int, seq: int) -> bool:
        """Record one delivery; False when it is a duplicate (or not ours)."""
        if not 0 <= producer < len(self._producers):
            return False
        p = self._producers[producer]
        _grow(p.received, seq)
        count = p.received[seq]
        if count < 255:
            p.received[seq] = count + 1
        if count:
            self.totals.duplicated += 1
            return False
        self.totals.consumed += 1
        owed = (p.settled[seq] == self.ACKED if seq < len(p.settled) else False) \
            if self._confirms else (seq < len(p.published) and p.published[seq] == 1)
        if owed:
            self.outstanding -= 1
        return True

    def lost(self) -> int:
        """Messages owed (confirmed, or published without confirms) never received."""
        return self.outstanding
