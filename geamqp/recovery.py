"""The supervisor: automatic connection recovery that loses nothing.

When a connection opened with ``recover=True`` is lost without the
application asking for it (I/O error, missed heartbeats, a write stall, a
broker-initiated connection.close such as 320 CONNECTION_FORCED), the
supervisor greenlet:

1. suspends every channel: requests in flight raise the loss (e.g.
   `StreamLostError`) in their greenlets; unconfirmed publishes fail with
   `PublishOutcomeUnknown`, or are kept to be republished when the user
   opted in; new requests wait (bounded) for the outcome;
2. reconnects with exponential back-off and full jitter —
   ``sleep(uniform(0, min(delay_max, delay_min * 2**attempt)))`` — over the
   host list in shuffled order, so a thousand clients never reconnect in
   lockstep;
3. reopens every channel on its number behind the same Channel object and
   restores its qos, confirm and tx modes;
4. replays the recorded topology (exchanges, queues, bindings) on a private
   channel — a server-named queue is renamed and its bindings and consumers
   follow; RESOURCE_LOCKED (405) and NOT_FOUND (404) are retried with
   back-off — then re-registers every consumer with its tag, callback and
   executor;
5. shifts each channel's delivery tags past the old generation's, so an ack
   for a message of the lost connection is dropped (the broker redelivers
   it) instead of killing the new channel with 406.

It never recovers after the application's own ``close()``, a failed first
connect, an authentication or vhost refusal, or a channel-level error.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event

from .exceptions import (
    AMQPChannelError,
    AMQPConnectionError,
    AMQPError,
    ChannelClosedByBroker,
    ConnectionBlockedTimeout,
    ConnectionClosedByClient,
    ProbableAccessDeniedError,
    ProbableAuthenticationError,
)
from .protocol.spec import Basic, Confirm, Queue, Tx

if TYPE_CHECKING:
    from .channel import Channel
    from .connection import Connection

__all__ = ["RecoverySettings", "Supervisor", "backoff_delay"]

log = logging.getLogger("geamqp.recovery")

_NO_RECOVERY = (ConnectionClosedByClient, ProbableAuthenticationError, ProbableAccessDeniedError,
                ConnectionBlockedTimeout)
_RETRIED_CODES = (404, 405)  # NOT_FOUND (node gone), RESOURCE_LOCKED (old exclusive owner)
_ENTITY_RETRIES = 5


class RecoverySettings:
    """Knobs of automatic recovery (arguments of `geamqp.connect`)."""

    def __init__(self, recovery_delay_min: float = 0.5, recovery_delay_max: float = 30.0,
                 recovery_max_attempts: int | None = None,
                 recovery_deadline: float | None = None,
                 republish_unconfirmed: bool = False,
                 recovery_wait_timeout: float = 60.0) -> None:
        if recovery_delay_min < 0 or recovery_delay_max < recovery_delay_min:
            raise ValueError("need 0 <= recovery_delay_min <= recovery_delay_max")
        if recovery_max_attempts is not None and recovery_max_attempts < 1:
            raise ValueError("recovery_max_attempts must be at least 1 (or None: unlimited)")
        self.delay_min = recovery_delay_min
        self.delay_max = recovery_delay_max
        self.max_attempts = recovery_max_attempts
        self.deadline = recovery_deadline
        self.republish_unconfirmed = republish_unconfirmed
        self.wait_timeout = recovery_wait_timeout


def backoff_delay(attempt: int, delay_min: float, delay_max: float,
                  rng: Callable[[float, float], float] = random.uniform) -> float:
    """Full jitter: uniform over [0, min(delay_max, delay_min * 2**attempt)]."""
    return rng(0.0, min(delay_max, delay_min * (2 ** min(attempt, 62))))


class RecoveryFailed(AMQPConnectionError):
    """Automatic recovery gave up; `__cause__` is the last failure."""


class Supervisor:
    """Owns the recovery greenlet of one connection."""

    def __init__(self, connection: Connection, settings: RecoverySettings) -> None:
        self.connection = connection
        self.settings = settings
        self.recovered = Event()
        self.recovered.set()
        self._greenlet: gevent.Greenlet | None = None
        self.attempts: list[float] = []  # monotonic times of reconnect attempts (for tests)

    @property
    def recovering(self) -> bool:
        return not self.recovered.is_set()

    @staticmethod
    def should_recover(error: AMQPError) -> bool:
        return isinstance(error, AMQPError) and not isinstance(error, _NO_RECOVERY)

    def start(self, error: AMQPError) -> None:
        self.recovered.clear()
        self._greenlet = gevent.spawn(self._run, error)
        self._greenlet.name = "geamqp-supervisor"

    def stop(self) -> None:
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None and greenlet is not gevent.getcurrent():
            greenlet.kill(block=True, timeout=5)
        self.recovered.set()

    def wait(self) -> None:
        """Block the caller while a recovery runs (bounded by recovery_wait_timeout)."""
        if not self.recovered.wait(self.settings.wait_timeout):
            raise AMQPConnectionError(
                f"connection still recovering after {self.settings.wait_timeout} s")

    # ------------------------------------------------------------------ the loop

    def _run(self, error: AMQPError) -> None:
        conn = self.connection
        log.warning("connection lost (%r): recovering", error)
        last: AMQPError = error
        attempt = 0
        started = gevent.get_hub().loop.now()
        while True:
            s = self.settings
            if (s.max_attempts is not None and attempt >= s.max_attempts) or (
                    s.deadline is not None
                    and gevent.get_hub().loop.now() - started > s.deadline):
                self._give_up(last)
                return
            gevent.sleep(backoff_delay(attempt, s.delay_min, s.delay_max))
            attempt += 1
            candidates = list(conn._candidates)
            random.shuffle(candidates)
            for params in candidates:
                self.attempts.append(gevent.get_hub().loop.now())
                try:
                    conn._open_one(params)
                    self._restore()
                except (ProbableAuthenticationError, ProbableAccessDeniedError) as exc:
                    self._give_up(exc)
                    return
                except AMQPConnectionError as exc:
                    log.info("recovery attempt %d via %s failed: %s", attempt, params, exc)
                    last = exc
                    conn._drop_transport()
                    continue
                log.warning("connection recovered after %d attempt(s)", attempt)
                self.recovered.set()
                conn._on_recovered()
                return

    def _give_up(self, cause: AMQPError) -> None:
        error = RecoveryFailed(f"automatic recovery gave up: {cause}")
        error.__cause__ = cause
        log.error("%s", error)
        self._greenlet = None
        self.recovered.set()
        self.connection._on_recovery_failed(error)

    # ------------------------------------------------------------------ restoring

    def _restore(self) -> None:
        conn = self.connection
        channels = [conn._channels[n] for n in sorted(conn._channels)]
        for channel in channels:
            self._reopen(channel)
        self._replay_topology(channels)
        for channel in channels:
            self._restore_consumers(channel)
        for channel in channels:
            channel._resume(self.settings.republish_unconfirmed)

    def _reopen(self, channel: Channel) -> None:
        conn = self.connection
        conn._engine.open_channel(channel.channel_number)
        channel._begin_restore()
        conn._kick()
        channel._restore_rpc(None)  # waits for open-ok
        if channel._qos is not None:
            channel._restore_rpc(Basic.Qos(*channel._qos))
        if channel._confirm_mode:
            channel._restore_rpc(Confirm.Select())
        if channel._tx_mode:
            channel._restore_rpc(Tx.Select())

    def _replay_topology(self, channels: list[Channel]) -> None:
        conn = self.connection
        topology = conn._topology
        steps: list[tuple[str, Any]] = [("exchange", r) for r in topology.exchanges.values()]
        steps += [("queue", r) for r in topology.queues.values()]
        # Exchange-to-exchange bindings need their exchanges; queue bindings their queues.
        for kind, record in steps:
            if kind == "queue" and record.server_named:
                old = record.name
                reply = self._declare_with_retries(record.declare())
                if reply is not None and reply.queue != old:
                    topology.rename(old, reply.queue, channels)
                    conn._on_queue_renamed(old, reply.queue)
            else:
                self._declare_with_retries(record.declare())
        for binding in list(topology.bindings.values()):
            self._declare_with_retries(binding.bind())

    def _declare_with_retries(self, method: Any) -> Any:
        """Run one replay step on the private channel; 404/405 are retried with back-off."""
        for attempt in range(_ENTITY_RETRIES):
            channel = self.connection._recovery_channel()
            try:
                return channel._rpc(method)
            except ChannelClosedByBroker as exc:
                if exc.reply_code not in _RETRIED_CODES or attempt + 1 == _ENTITY_RETRIES:
                    log.error("recovery could not restore %s: %s", method.NAME, exc)
                    return None
                log.info("recovery: %s failed with %s; retrying", method.NAME, exc.reply_code)
                gevent.sleep(backoff_delay(attempt, self.settings.delay_min or 0.1,
                                           self.settings.delay_max))
        return None

    def _restore_consumers(self, channel: Channel) -> None:
        for consumer in list(channel._consumers.values()):
            exists = self._declare_with_retries(Queue.Declare(0, consumer.queue, passive=True))
            if exists is None:
                log.error("recovery: queue %r of consumer %s is gone; consumer not recovered",
                          consumer.queue, consumer.tag)
                channel._drop_consumer(consumer.tag)
                continue
            try:
                channel._restore_rpc(consumer.consume_method())
            except AMQPChannelError as exc:
                log.error("recovery: consumer %s not recovered: %s", consumer.tag, exc)


class ChannelRecovery:
    """The channel's side of recovery, mixed into `Channel`: suspend, restore, resume,
    and delivery tags that stay unique across connection generations."""

    # Provided by Channel:
    channel_number: int
    connection: Connection
    _state: str
    _error: AMQPError | None
    _waiters: Any
    _confirms: dict[int, Any]
    _consumers: dict[str, Any]
    _republish: list[Any]
    _tag_offset: int
    _last_tag: int
    _cancel_callbacks: list[Callable[..., Any]]
    _dispatcher: Any
    _consuming: Event

    def _current_tag(self, delivery_tag: int, multiple: bool) -> int:
        """The wire tag for a user-visible tag; -1 when it belongs to a lost connection
        (the broker has requeued that message and will redeliver it)."""
        if delivery_tag > self._tag_offset:
            return delivery_tag - self._tag_offset
        if multiple and delivery_tag == 0:
            return 0  # "everything so far" on this connection
        log.debug("channel %s: ack/nack/reject of delivery tag %s from before the "
                  "reconnect dropped; the broker redelivers that message",
                  self.channel_number, delivery_tag)
        return -1

    def _consumer_gone(self, consumer: Any) -> None:
        conn = self.connection
        conn._topology.on_consumer_gone(consumer.queue, list(conn._channels.values()))

    def _suspend(self, error: AMQPError, republish: bool) -> None:
        """The connection is lost and will be recovered: release what waits on the wire."""
        if self._state in ("closed", "closing"):
            return
        from .exceptions import PublishOutcomeUnknown

        self._state = "recovering"
        waiters, self._waiters = self._waiters, type(self._waiters)()
        for _, waiter in waiters:
            waiter.set_exception(error)
        confirms, self._confirms = self._confirms, {}
        for confirmation in confirms.values():
            if republish:
                self._republish.append(confirmation)
            else:
                confirmation._fail(PublishOutcomeUnknown(
                    f"connection lost before the broker confirmed publish #"
                    f"{confirmation.seqno}: it may or may not have been routed ({error})"))
        self._tag_offset = max(self._tag_offset, self._last_tag)

    def _begin_restore(self) -> None:
        self._state = "restoring"

    def _restore_rpc(self, method: Any) -> Any:
        """A request of the restore itself (the channel is not open to users yet)."""
        from .protocol.spec import Channel as ChannelSpec

        if method is None:  # channel.open was sent by the engine: wait for open-ok
            from gevent.event import AsyncResult

            waiter = AsyncResult()
            self._waiters.append(((ChannelSpec.OpenOk,), waiter))
            return waiter.get()
        return self._rpc_unchecked(method, method.RESPONSES)  # type: ignore[attr-defined]

    def _resume(self, republish: bool) -> None:
        """Restore finished: open to users again; republish what the user asked to."""
        self._state = "open"
        pending, self._republish = self._republish, []
        engine = self.connection._engine
        for confirmation in pending:
            seqno = engine.publish(self.channel_number, confirmation.exchange,
                                   confirmation.routing_key, confirmation.body,
                                   confirmation.properties, confirmation.mandatory)
            confirmation.seqno = seqno
            self._confirms[seqno] = confirmation
        self.connection._kick()
        self._consuming.set()

    def _drop_consumer(self, tag: str) -> None:
        """A consumer whose queue did not come back: end it as a broker cancel would."""
        from .protocol.spec import Basic

        consumer = self._consumers.pop(tag, None)
        if consumer is None:
            return
        if consumer.sink is not None:
            from .exceptions import ConsumerCancelled

            consumer.sink.put(ConsumerCancelled(f"queue of consumer {tag!r} is gone"))
        for callback in self._cancel_callbacks:
            self._dispatcher.submit(callback, Basic.Cancel(tag, True))
        self._consuming.set()
