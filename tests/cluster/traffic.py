"""Confirmed publishing and manual-ack consuming on one queue, with a ledger of outcomes.

A `Publisher` sends numbered messages (body = the number) in small confirmed batches and
records each number's outcome: confirmed, `PublishOutcomeUnknown`, nacked, or refused (the
publish call itself raised, so nothing was sent). A `Consumer` records every delivery with
its `redelivered` flag and acks it. `check_nothing_lost` then holds the rules a user relies on
during a failover: every publish has exactly one outcome, every confirmed message arrives,
and a message arrives twice only when the broker says it is a redelivery (or, with
republish_unconfirmed, when it was in flight at a loss and was sent again).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import gevent
from gevent.event import Event

import geamqp

QUORUM = {"x-queue-type": "quorum"}


@dataclass
class Ledger:
    outcomes: dict[int, str] = field(default_factory=dict)
    confirm_times: list[tuple[float, int]] = field(default_factory=list)
    deliveries: dict[int, list[bool]] = field(default_factory=lambda: defaultdict(list))
    delivery_times: list[tuple[float, int]] = field(default_factory=list)
    in_flight_at_loss: set[int] = field(default_factory=set)

    def count(self, outcome: str) -> int:
        return sum(1 for value in self.outcomes.values() if value == outcome)

    def confirmed(self) -> set[int]:
        return {n for n, value in self.outcomes.items() if value == "confirmed"}

    def first_confirm_after(self, moment: float) -> float | None:
        return next((t for t, _ in self.confirm_times if t > moment), None)

    def first_delivery_after(self, moment: float, published_after: int = -1) -> float | None:
        return next((t for t, n in self.delivery_times if t > moment and n > published_after),
                    None)


class Publisher:
    """Publishes 0, 1, 2, ... to `queue` in confirmed batches of `batch` until stopped."""

    def __init__(self, conn: geamqp.Connection, queue: str, ledger: Ledger,
                 batch: int = 5, confirm_timeout: float = 30.0) -> None:
        self.conn = conn
        self.queue = queue
        self.ledger = ledger
        self.batch = batch
        self.confirm_timeout = confirm_timeout
        self.channel = conn.channel()
        self.channel.confirm_delivery()
        self.next = 0
        self.outstanding: set[int] = set()
        self._stop = Event()
        conn.add_on_connection_lost_callback(self._on_lost)
        self.greenlet = gevent.spawn(self._run)

    def _on_lost(self, _conn: object, _error: object) -> None:
        self.ledger.in_flight_at_loss |= self.outstanding

    def _run(self) -> None:
        while not self._stop.is_set():
            sent: list[tuple[int, geamqp.Confirmation]] = []
            for _ in range(self.batch):
                number, self.next = self.next, self.next + 1
                try:
                    sent.append((number, self.channel.basic_publish(
                        "", self.queue, b"%d" % number, wait=False)))
                    self.outstanding.add(number)
                except geamqp.AMQPError:
                    self.ledger.outcomes[number] = "refused"
                    if self.conn.is_closed:
                        self._stop.set()
                        break
            for number, confirmation in sent:
                self.ledger.outcomes[number] = self._outcome(confirmation)
                self.outstanding.discard(number)
                if self.ledger.outcomes[number] == "confirmed":
                    self.ledger.confirm_times.append((time.monotonic(), number))
            gevent.sleep(0.005)

    def _outcome(self, confirmation: geamqp.Confirmation) -> str:
        try:
            if not confirmation.wait(timeout=self.confirm_timeout):
                return "timeout"
        except geamqp.PublishOutcomeUnknown:
            return "unknown"
        except geamqp.NackError:
            return "nacked"
        except geamqp.AMQPError as exc:  # closed under it (a test's cleanup): no more traffic
            self._stop.set()
            return f"failed: {type(exc).__name__}"
        return "confirmed"

    def stop(self) -> None:
        self._stop.set()
        self.greenlet.join(timeout=self.confirm_timeout + 5)
        assert self.greenlet.dead, "publisher did not stop"

    def kill(self) -> None:
        """Stop at once (cleanup after a failure): nothing waits for outstanding confirms."""
        self._stop.set()
        self.greenlet.kill(block=True, timeout=5)


class Consumer:
    """Consumes `queue` with manual acks (prefetch 50) and records every delivery."""

    def __init__(self, conn: geamqp.Connection, queue: str, ledger: Ledger) -> None:
        self.ledger = ledger
        self.channel = conn.channel()
        self.channel.basic_qos(prefetch_count=50)
        self.channel.basic_consume(queue, self._on_message, auto_ack=False)

    def _on_message(self, channel: geamqp.Channel, method: object, _props: object,
                    body: bytes) -> None:
        number = int(body)
        self.ledger.deliveries[number].append(bool(method.redelivered))  # type: ignore[attr-defined]
        self.ledger.delivery_times.append((time.monotonic(), number))
        channel.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]


def wait_until(predicate: object, timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        gevent.sleep(interval)


def check_nothing_lost(ledger: Ledger, allowed: set[str], timeout: float = 30.0) -> None:
    """Every publish has one allowed outcome; every confirmed one arrives; duplicates only
    as redeliveries (or republished copies of messages in flight at a loss)."""
    unexpected = {n: o for n, o in ledger.outcomes.items() if o not in allowed}
    assert not unexpected, f"publishes with outcomes outside {allowed}: {unexpected}"
    confirmed = ledger.confirmed()
    wait_until(lambda: confirmed <= ledger.deliveries.keys(), timeout,
               "every confirmed message at the consumer")
    for number, flags in ledger.deliveries.items():
        fresh = flags.count(False)
        if fresh > 1:
            assert number in ledger.in_flight_at_loss, (
                f"message {number} delivered {fresh} times as new (redelivered=False)")
