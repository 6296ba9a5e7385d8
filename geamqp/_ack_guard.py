"""The consumer-timeout guard: warn before the broker's 406 delivery-ack timeout.

RabbitMQ closes a channel with 406 PRECONDITION_FAILED when one of its
manual-ack deliveries stays unacknowledged longer than ``consumer_timeout``
(30 minutes by default; many operators set minutes). Channel recovery cures
the close, but the message is redelivered and the slow handler's work is
thrown away. The guard tells the operator first::

    guard = geamqp.ConsumerTimeoutGuard(consumer_timeout=1800, fraction=0.5,
                                        on_warning=callback)
    conn = geamqp.connect(url, consumer_timeout_guard=guard)

For every manual-ack delivery held (not acked, nacked or rejected) longer
than ``fraction * consumer_timeout`` seconds it logs one WARNING naming the
channel, consumer tag and delivery tag, and calls
``on_warning(channel, consumer_tag, delivery_tag, held_seconds)``.

Default fraction 0.5: the broker checks on its channel tick (60 s by
default), so the 406 may come at any time from ``consumer_timeout`` on; a
warning at half of it leaves the operator as long again to react (15 minutes
with the broker's default), a handler past half the limit is already far off
its normal duration, and with a short timeout (say 60 s) a later warning
(0.9: 6 s ahead) would come too late to act on.

Cost: nothing without a guard; with one, a dict insert per manual-ack
delivery and a delete per ack, and one timer greenlet per channel while
deliveries are held.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gevent

__all__ = ["DEFAULT_FRACTION", "ConsumerTimeoutGuard", "HeldDeliveries"]

log = logging.getLogger("geamqp.consumer")

DEFAULT_FRACTION = 0.5
OnWarning = Callable[[Any, str, int, float], Any]


class ConsumerTimeoutGuard:
    """Settings of the guard; give one to `geamqp.connect(consumer_timeout_guard=...)`."""

    __slots__ = ("consumer_timeout", "fraction", "on_warning")

    def __init__(self, consumer_timeout: float = 1800.0, fraction: float = DEFAULT_FRACTION,
                 on_warning: OnWarning | None = None) -> None:
        if isinstance(consumer_timeout, bool) or not isinstance(consumer_timeout, (int, float)) \
                or consumer_timeout <= 0:
            raise ValueError(f"consumer_timeout must be a number of seconds > 0, not "
                             f"{consumer_timeout!r}")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
                or not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], not {fraction!r}")
        if on_warning is not None and not callable(on_warning):
            raise TypeError(f"on_warning must be callable, not {type(on_warning).__name__}")
        self.consumer_timeout = float(consumer_timeout)
        self.fraction = float(fraction)
        self.on_warning = on_warning

    @property
    def threshold(self) -> float:
        return self.consumer_timeout * self.fraction

    def __repr__(self) -> str:
        return (f"ConsumerTimeoutGuard(consumer_timeout={self.consumer_timeout}, "
                f"fraction={self.fraction})")


class HeldDeliveries:
    """One channel's manual-ack deliveries not yet settled, oldest first."""

    __slots__ = ("_channel", "_guard", "_held", "_timer")

    def __init__(self, guard: ConsumerTimeoutGuard, channel: Any) -> None:
        self._guard = guard
        self._channel = channel
        # delivery tag -> [consumer tag, loop time delivered, warned]
        self._held: dict[int, list[Any]] = {}
        self._timer: gevent.Greenlet | None = None

    def delivered(self, delivery_tag: int, consumer_tag: str) -> None:
        self._held[delivery_tag] = [consumer_tag, gevent.get_hub().loop.now(), False]
        if self._timer is None:
            self._timer = gevent.spawn_later(self._guard.threshold, self._check)

    def settled(self, delivery_tag: int, multiple: bool) -> None:
        held = self._held
        if not multiple:
            held.pop(delivery_tag, None)
        elif delivery_tag == 0:
            held.clear()
        else:
            for tag in [t for t in held if t <= delivery_tag]:
                del held[tag]

    def clear(self) -> None:
        """The channel was closed or lost: the broker requeued what was held."""
        self._held.clear()
        timer, self._timer = self._timer, None
        if timer is not None and timer is not gevent.getcurrent():
            timer.kill(block=False)

    def _check(self) -> None:
        self._timer = None
        threshold = self._guard.threshold
        now = gevent.get_hub().loop.now()
        next_due: float | None = None
        for delivery_tag, entry in list(self._held.items()):
            consumer_tag, since, warned = entry
            if warned:
                continue
            held_for = now - since
            if held_for < threshold:
                next_due = since + threshold - now
                break  # the rest were delivered later still
            entry[2] = True
            self._warn(consumer_tag, delivery_tag, held_for)
        if next_due is not None and self._timer is None:  # else all warned: the next
            self._timer = gevent.spawn_later(max(next_due, 0.001), self._check)  # delivery

    def _warn(self, consumer_tag: str, delivery_tag: int, held_for: float) -> None:
        guard = self._guard
        log.warning("channel %s: consumer %s has held delivery %s unacknowledged for %.1f s "
                    "(%.0f%% of the broker's consumer_timeout of %.0f s); the broker closes "
                    "the channel with 406 at the timeout", self._channel.channel_number,
                    consumer_tag, delivery_tag, held_for, 100 * guard.fraction,
                    guard.consumer_timeout)
        if guard.on_warning is not None:
            try:
                guard.on_warning(self._channel, consumer_tag, delivery_tag, held_for)
            except Exception:
                log.exception("consumer-timeout guard: on_warning raised")
