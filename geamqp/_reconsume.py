"""Re-consuming after a broker cancel (``basic_consume(..., reconsume_on_cancel=True)``).

RabbitMQ cancels a consumer with basic.cancel when its queue is deleted, or
when a mirrored/quorum queue's leader moves and the consumer asked for
``x-cancel-on-ha-failover``. Without the opt-in the consumer is gone and its
``on_cancel(channel, consumer_tag)`` runs. With it, one greenlet per cancelled
consumer waits for the queue to exist again and consumes it again with the
same tag, callback, arguments and executor:

- up to `ATTEMPTS` (10) attempts, full-jitter back-off between `DELAY_MIN`
  (0.5 s) and `DELAY_MAX` (10 s): about a minute in all, long enough for a
  re-declare by the application or a leader election, short enough that a
  queue deleted for good is reported within a minute;
- each attempt first checks the queue with a passive declare on a short-lived
  probe channel, so a queue that is still missing never closes (with 404)
  the channel the other consumers share;
- ``on_cancel`` runs when the consumer is gone for good: the attempts ran
  out, or the channel closed meanwhile. ``basic_cancel(tag)`` during the
  wait stops it quietly.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent

from .exceptions import AMQPError, ChannelClosedByBroker

if TYPE_CHECKING:
    from .channel import Channel
    from .consumer import Consumer

__all__ = ["ATTEMPTS", "DELAY_MAX", "DELAY_MIN", "start"]

log = logging.getLogger("geamqp.consumer")

ATTEMPTS = 10
DELAY_MIN = 0.5
DELAY_MAX = 10.0


def start(channel: Channel, consumer: Consumer, wanted: Callable[[], bool],
          done: Callable[[], None]) -> gevent.Greenlet:
    """Spawn the re-consume of `consumer` on `channel`; `wanted()` False stops it,
    `done()` runs at the end whatever happened."""
    greenlet = gevent.spawn(_run, channel, consumer, wanted, done)
    greenlet.name = f"geamqp-reconsume-{consumer.tag}"
    return greenlet


def _run(channel: Channel, consumer: Consumer, wanted: Callable[[], bool],
         done: Callable[[], None]) -> None:
    failed = False
    try:
        outcome = _attempts(channel, consumer, wanted)
    except Exception as exc:  # reported below: the consumer must not vanish silently
        log.exception("re-consuming %s failed unexpectedly", consumer.tag)
        outcome = repr(exc)
    finally:
        failed = wanted()  # not re-consumed, and not cancelled by the application meanwhile
        done()
    if failed and outcome is not None:
        log.error("consumer %s of queue %r not re-consumed: %s", consumer.tag, consumer.queue,
                  outcome)
        if consumer.on_cancel is not None:
            consumer.on_cancel(channel, consumer.tag)


def _attempts(channel: Channel, consumer: Consumer, wanted: Callable[[], bool]) -> str | None:
    """None once consuming again (or no longer wanted), else why not."""
    why = "no attempt made"
    for attempt in range(ATTEMPTS):
        gevent.sleep(random.uniform(0.0, min(DELAY_MAX, DELAY_MIN * 2 ** attempt)))
        if not wanted():
            return None
        if channel.is_closed:
            return "its channel closed"
        try:
            if not _queue_exists(channel, consumer.queue):
                why = f"queue {consumer.queue!r} does not exist"
                continue
            channel.basic_consume(
                consumer.queue, consumer.callback, consumer.auto_ack,  # type: ignore[arg-type]
                consumer.exclusive, consumer.tag, consumer.arguments,
                executor=consumer.executor, concurrency=consumer.concurrency,
                on_cancel=consumer.on_cancel, reconsume_on_cancel=True)
        except AMQPError as exc:
            why = str(exc)
            log.info("re-consuming %s: attempt %d failed: %s", consumer.tag, attempt + 1, exc)
            continue
        log.warning("consumer %s consumes queue %r again after a broker cancel", consumer.tag,
                    consumer.queue)
        return None
    return f"{why} after {ATTEMPTS} attempts"


def _queue_exists(channel: Channel, queue: str) -> bool:
    probe: Any = channel.connection.channel()
    try:
        probe.queue_declare(queue, passive=True)
    except ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return False
        raise
    probe.close()
    return True
