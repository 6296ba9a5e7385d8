"""Which broker channel closes channel recovery (``recover_channels=True``) cures.

A channel closed by the broker takes every consumer on it down. Some closes
are a passing condition rather than a mistake of the code that made the
request, and reopening the channel on the same number, with its qos, confirm
mode and consumers, is then the whole cure. The choice, code by code:

- **406 PRECONDITION_FAILED whose text says a delivery acknowledgement timed
  out** (RabbitMQ's ``consumer_timeout``: "delivery acknowledgement on
  channel N timed out", "consumer ack timed out on channel N" before 3.9):
  retried. No request of the application caused it — a handler held one
  delivery too long — and the broker has already requeued every unacked
  message of the channel, so reopening loses nothing. Not retrying stops
  every consumer of the channel (all of a `ConsumerFleet` channel's).
- **404 NOT_FOUND and 405 RESOURCE_LOCKED answering basic.consume**:
  retried. The queue is being re-declared (by recovery, by the application,
  after a node failover) or an exclusive consumer's previous owner is not
  gone yet. The basic_consume caller gets the exception either way; without
  recovery the channel's other consumers would die with it.
- **Every other close is final**: 403 ACCESS_REFUSED (permissions do not
  change by retrying), 406 for anything else (an inequivalent argument, an
  unknown delivery tag: the same request fails the same way again), 404/405
  answering anything but basic.consume (a passive declare used as an
  existence check, a publish to a missing exchange: the caller relies on the
  close), 530, 540... The channel ends as before and its close callbacks run.

Default: on (with ``recover=True``). Every close it retries is one a
consumer cannot have wanted, and it costs nothing until one happens. It is
bounded: `CHANNEL_ATTEMPTS` reopen attempts per incident with the
connection's back-off (full jitter between ``recovery_delay_min`` and
``recovery_delay_max``), then the channel ends with the last error.
"""

from __future__ import annotations

import re
from typing import Final

from .protocol.spec import Basic, Method

__all__ = ["CHANNEL_ATTEMPTS", "retriable"]

CHANNEL_ATTEMPTS: Final = 5
# RabbitMQ 3.8: "PRECONDITION_FAILED - consumer ack timed out on channel 1";
# 3.9 and later: "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out.
# Timeout value used: 1800000 ms. ..."
_ACK_TIMEOUT = re.compile(r"\back(?:nowledgement)?\b.*\btimed out\b", re.IGNORECASE)


def retriable(reply_code: int, reply_text: str, refused: Method | None) -> bool:
    """True when a broker close with this code and text, answering `refused` (the
    channel's oldest request still waiting, None if none), is one channel recovery
    retries (see the module docstring)."""
    if reply_code == 406:
        return _ACK_TIMEOUT.search(reply_text) is not None  # whatever was in flight
    if reply_code in (404, 405):
        return isinstance(refused, Basic.Consume)
    return False
