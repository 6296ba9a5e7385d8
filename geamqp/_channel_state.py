"""The lifecycle of a `Channel`: its states, what moves it, and nothing else.

AMQP 0-9-1 section 2.2.5 gives a channel three phases (opening, open,
closing); automatic recovery adds two of its own, after the RabbitMQ Java
client's recovering channel:

    OPENING -open-ok-> OPEN -close()-> CLOSING -close-ok-> CLOSED
    OPEN/RESTORING -link lost, recovery follows-> SUSPENDED
    SUSPENDED -recovery reopens it-> RESTORING -restore done-> OPEN
    SUSPENDED -close()-> CLOSED             (recovery skips it)
    RESTORING -close()-> CLOSING            (closed on the new link)
    OPEN/RESTORING -broker close that channel recovery retries-> SUSPENDED
                                            (then RESTORING on the same link)
    any but CLOSED -broker close / connection gone / restore failed-> CLOSED

Rules:
- `TRANSITIONS` below is the whole lifecycle. `Channel._transition` is the
  only writer of a channel's state and consults nothing but this table.
- A pair missing from the table changes nothing (`next_state` returns None):
  e.g. a late close-ok for a channel already CLOSED, or a second close().
- What each public call does in each state is written in `CALLS_BY_STATE`
  (and in the README's Recovery section); channel.py carries it out.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["CALLS_BY_STATE", "TRANSITIONS", "ChannelEvent", "ChannelState", "next_state"]


class ChannelState(enum.Enum):
    OPENING = "opening"  # channel.open sent, open-ok not yet received
    OPEN = "open"
    CLOSING = "closing"  # channel.close sent, close-ok not yet received
    CLOSED = "closed"  # final: the Channel object is never used again
    SUSPENDED = "suspended"  # its connection was lost; recovery will reopen it
    RESTORING = "restoring"  # reopened on the new link; qos, modes, consumers being restored


class ChannelEvent(enum.Enum):
    OPENED = "open-ok received"
    CLOSE = "the application closes it (close(), or an abandoned open)"
    ENDED = "close-ok, a broker close, the connection closed for good, or a failed restore"
    LINK_LOST = "the connection was lost and will be recovered"
    RESTORE = "recovery sent channel.open on the new link"
    RESTORED = "recovery finished restoring it"
    RETRIABLE_CLOSE = "a broker close that channel recovery cures (see _channel_recovery.py)"


S = ChannelState
E = ChannelEvent

TRANSITIONS: Final[dict[tuple[ChannelState, ChannelEvent], ChannelState]] = {
    (S.OPENING, E.OPENED): S.OPEN,
    (S.OPENING, E.CLOSE): S.CLOSING,  # the opener gave up: close once open-ok arrives
    (S.OPENING, E.ENDED): S.CLOSED,
    (S.OPENING, E.LINK_LOST): S.CLOSED,  # never handed to anyone: nothing to restore
    (S.OPEN, E.CLOSE): S.CLOSING,
    (S.OPEN, E.ENDED): S.CLOSED,
    (S.OPEN, E.LINK_LOST): S.SUSPENDED,
    (S.CLOSING, E.ENDED): S.CLOSED,
    (S.CLOSING, E.LINK_LOST): S.CLOSED,  # the close is as good as done
    (S.SUSPENDED, E.CLOSE): S.CLOSED,  # nothing on the wire to close
    (S.SUSPENDED, E.RESTORE): S.RESTORING,
    (S.SUSPENDED, E.ENDED): S.CLOSED,  # recovery gave up, or the app closed the connection
    (S.RESTORING, E.CLOSE): S.CLOSING,
    (S.RESTORING, E.RESTORED): S.OPEN,
    (S.RESTORING, E.ENDED): S.CLOSED,  # broker close during the restore, or restore failed
    (S.RESTORING, E.LINK_LOST): S.SUSPENDED,  # lost again: the next attempt restores it
    # Channel recovery (recover_channels): reopened on the same link, same number.
    (S.OPEN, E.RETRIABLE_CLOSE): S.SUSPENDED,
    (S.RESTORING, E.RETRIABLE_CLOSE): S.SUSPENDED,  # e.g. 405 again: retried after a back-off
}


def next_state(state: ChannelState, event: ChannelEvent) -> ChannelState | None:
    """The state `event` moves a channel in `state` to; None: no change."""
    return TRANSITIONS.get((state, event))


# What the public API does in each state (documentation and tests read this).
CALLS_BY_STATE: Final[dict[ChannelState, dict[str, str]]] = {
    S.OPEN: {
        "requests": "proceed",
        "basic_publish": "proceed",
        "basic_ack/nack/reject": "proceed",
        "close()": "send channel.close, wait for close-ok -> CLOSED",
        "deliveries": "dispatched to the consumer's callback",
    },
    S.CLOSING: {
        "requests": "raise ChannelWrongStateError",
        "basic_publish": "raise ChannelWrongStateError",
        "basic_ack/nack/reject": "raise ChannelWrongStateError",
        "close()": "wait until CLOSED",
        "deliveries": "dropped (the broker requeues unacked messages)",
    },
    S.CLOSED: {
        "requests": "raise ChannelWrongStateError (__cause__: why it closed)",
        "basic_publish": "raise ChannelWrongStateError (__cause__: why it closed)",
        "basic_ack/nack/reject": "raise ChannelWrongStateError (__cause__: why it closed)",
        "close()": "return at once",
        "deliveries": "none arrive",
    },
    S.SUSPENDED: {
        "requests": "wait for the recovery (a connection's: recovery_wait_timeout; a channel "
                    "recovery's: until it ends), then as in the new state",
        "basic_publish": "wait for the recovery, then as in the new state",
        "basic_ack/nack/reject": "a tag of the lost connection is dropped at once "
                                 "(the broker redelivers that message)",
        "close()": "CLOSED at once; recovery skips the channel",
        "deliveries": "none arrive; manual-ack ones not yet dispatched are discarded",
    },
    S.RESTORING: {
        "requests": "wait for the recovery, then as in the new state",
        "basic_publish": "wait for the recovery, then as in the new state",
        "basic_ack/nack/reject": "a tag of the new connection proceeds; an old one is dropped",
        "close()": "send channel.close on the new link, wait for close-ok -> CLOSED; "
                   "recovery carries on with the other channels",
        "deliveries": "dispatched (a restored consumer is live from its consume-ok)",
    },
}
