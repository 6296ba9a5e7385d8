"""Connection and channel states, and which incoming method moves them where.

Implements the client side of AMQP 0-9-1 section 2.2.4 (connection
negotiation), 2.2.5 (channel open), 2.3.7 / 4.2.7 (close handshakes) as
RabbitMQ runs them:

    connection:  AWAIT_START -start-> AWAIT_TUNE -tune-> AWAIT_OPEN_OK -open-ok-> OPEN
                 any -(we send close)-> CLOSING -close-ok-> CLOSED
                 any -(peer sends close)-> CLOSED   (close-ok queued)
    channel:     OPENING -open-ok-> OPEN -(we send close)-> CLOSING -close-ok-> CLOSED
                 OPENING/OPEN -(peer sends close)-> CLOSED   (close-ok queued)

Rules worth stating:
- In CLOSING (either level) everything except close and close-ok is dropped
  unread: after sending close a peer must discard frames until close-ok.
- Receiving close while CLOSING is answered with close-ok and we keep waiting
  for our own close-ok (RabbitMQ answers a crossing close the same way), so a
  channel number is reused only after close-ok has passed both ways.
- A method not in the table for the current state is 503 COMMAND_INVALID.

The tables below are the whole of it; `connection.py` only carries them out,
and writes a state nowhere else (`AMQPConnection._enter` and
`_enter_channel` are its only writers). Each entry of the method tables is
``incoming method -> (action, next state)``; ``ANY`` matches methods without
an entry of their own. What the client itself does or observes — sending
close, giving up on a broken peer, the stream ending — is a `Local` event,
with its own tables (`CONNECTION_LOCAL`, `CHANNEL_LOCAL`).
"""

from __future__ import annotations

import enum
from typing import Final

from .spec import Channel, Connection, Method

__all__ = ["ANY", "CHANNEL_LOCAL", "CHANNEL_TRANSITIONS", "CONNECTION_LOCAL",
           "CONNECTION_TRANSITIONS", "Action", "ChanState", "ConnState", "Local"]


class ConnState(enum.Enum):
    AWAIT_START = "await-start"  # protocol header sent
    AWAIT_TUNE = "await-tune"  # start-ok sent; secure or tune next
    AWAIT_OPEN_OK = "await-open-ok"  # tune-ok and open sent
    OPEN = "open"
    CLOSING = "closing"  # our close sent, awaiting close-ok
    CLOSED = "closed"


class ChanState(enum.Enum):
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Action(enum.Enum):
    START = "reply start-ok"
    SECURE = "reply secure-ok"
    TUNE = "reply tune-ok and open"
    OPENED = "report opened"
    PEER_CLOSE = "reply close-ok, report closed"
    CROSSING_CLOSE = "reply close-ok, keep waiting for close-ok"
    CLOSE_OK = "report closed"
    BLOCKED = "report blocked"
    UNBLOCKED = "report unblocked"
    FLOW = "reply flow-ok, report the method"
    DELIVER = "report the method (content follows for content methods)"
    DROP = "drop silently"


class Local(enum.Enum):
    """What the client does or observes, as opposed to a method arriving."""

    CLOSE = "the client sends close"
    ABORT = "the client gives up: fatal frame error, foreign protocol, silent peer"
    EOF = "the peer closed the stream"


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY: Final = _Any()

Transitions = dict[object, tuple[Action, object]]

S = ConnState
CONNECTION_TRANSITIONS: dict[ConnState, Transitions] = {
    S.AWAIT_START: {
        Connection.Start: (Action.START, S.AWAIT_TUNE),
    },
    S.AWAIT_TUNE: {
        Connection.Secure: (Action.SECURE, S.AWAIT_TUNE),
        Connection.Tune: (Action.TUNE, S.AWAIT_OPEN_OK),
        Connection.Close: (Action.PEER_CLOSE, S.CLOSED),
    },
    S.AWAIT_OPEN_OK: {
        Connection.OpenOk: (Action.OPENED, S.OPEN),
        Connection.Close: (Action.PEER_CLOSE, S.CLOSED),
    },
    S.OPEN: {
        Connection.Close: (Action.PEER_CLOSE, S.CLOSED),
        Connection.Blocked: (Action.BLOCKED, S.OPEN),
        Connection.Unblocked: (Action.UNBLOCKED, S.OPEN),
        Connection.UpdateSecretOk: (Action.DELIVER, S.OPEN),
    },
    S.CLOSING: {
        Connection.Close: (Action.CROSSING_CLOSE, S.CLOSING),
        Connection.CloseOk: (Action.CLOSE_OK, S.CLOSED),
        ANY: (Action.DROP, S.CLOSING),
    },
    S.CLOSED: {
        ANY: (Action.DROP, S.CLOSED),
    },
}

C = ChanState
CHANNEL_TRANSITIONS: dict[ChanState, Transitions] = {
    C.OPENING: {
        Channel.OpenOk: (Action.OPENED, C.OPEN),
        Channel.Close: (Action.PEER_CLOSE, C.CLOSED),
    },
    C.OPEN: {
        Channel.Close: (Action.PEER_CLOSE, C.CLOSED),
        Channel.Flow: (Action.FLOW, C.OPEN),
        ANY: (Action.DELIVER, C.OPEN),
    },
    C.CLOSING: {
        Channel.Close: (Action.CROSSING_CLOSE, C.CLOSING),
        Channel.CloseOk: (Action.CLOSE_OK, C.CLOSED),
        ANY: (Action.DROP, C.CLOSING),
    },
}


_ENDED = {Local.ABORT: ConnState.CLOSED, Local.EOF: ConnState.CLOSED}

CONNECTION_LOCAL: dict[ConnState, dict[Local, ConnState]] = {
    # Before connection.start nothing can be closed politely: close means drop.
    S.AWAIT_START: {Local.CLOSE: S.CLOSED, **_ENDED},
    S.AWAIT_TUNE: {Local.CLOSE: S.CLOSING, **_ENDED},
    S.AWAIT_OPEN_OK: {Local.CLOSE: S.CLOSING, **_ENDED},
    S.OPEN: {Local.CLOSE: S.CLOSING, **_ENDED},
    S.CLOSING: {Local.CLOSE: S.CLOSING, **_ENDED},
    S.CLOSED: {Local.CLOSE: S.CLOSED, **_ENDED},
}

CHANNEL_LOCAL: dict[ChanState, dict[Local, ChanState]] = {
    C.OPENING: {Local.CLOSE: C.CLOSING},
    C.OPEN: {Local.CLOSE: C.CLOSING},
    C.CLOSING: {Local.CLOSE: C.CLOSING},
}


def transition(table: dict[object, Transitions], state: object,
               method: type[Method]) -> tuple[Action, object] | None:
    """The (action, next state) for `method` arriving in `state`, or None if invalid."""
    row = table[state]
    return row.get(method) or row.get(ANY)
