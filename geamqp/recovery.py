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
connect, an authentication or vhost refusal, or a channel-level error — except
the few broker channel closes that channel recovery (``recover_channels``,
`restore_channel`; the choice is in _channel_recovery.py) cures: that channel
alone is reopened on the current link, its number kept, with the same plan's
channel steps.

The restore is an explicit plan (`Step` list, built per attempt), and each
step has a failure policy (`Policy`): a connection-level failure (the link
died again, a protocol error, a 320/541 close) makes the whole attempt fail
and the next one start after a back-off; a channel-level failure of a
channel's own step ends that channel alone (its users get the error; the
broker closing it, or the application closing it, mid-restore ends here
too); a topology entity that cannot be declared is logged and skipped. The
supervisor greenlet never dies with waiters parked: anything unexpected
gives up cleanly, the recovery-failed and close callbacks run and every
waiter is released with `RecoveryFailed`.
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import gevent
from gevent.event import Event

from . import channel as channel_control
from ._channel_recovery import CHANNEL_ATTEMPTS
from ._channel_state import ChannelState
from ._topology import Topology
from .exceptions import (
    AMQPChannelError,
    AMQPConnectionError,
    AMQPError,
    ChannelClosedByBroker,
    ChannelWrongStateError,
    ConnectionBlockedTimeout,
    ConnectionClosedByClient,
    ProbableAccessDeniedError,
    ProbableAuthenticationError,
)
from .parameters import ConnectionParameters
from .protocol.spec import Method, Queue

if TYPE_CHECKING:
    from ._link import Link
    from .channel import Channel
    from .consumer import Consumer

__all__ = ["Policy", "RecoveryFailed", "RecoverySettings", "RecoveryTarget", "Step",
           "Supervisor", "backoff_delay"]

log = logging.getLogger("geamqp.recovery")

_NO_RECOVERY = (ConnectionClosedByClient, ProbableAuthenticationError, ProbableAccessDeniedError,
                ConnectionBlockedTimeout)
_REFUSED = (ProbableAuthenticationError, ProbableAccessDeniedError)
# A refusal is final only when the broker says so: ACCESS_REFUSED, NOT_ALLOWED,
# INVALID_PATH. Another close during the handshake (320 of a node shutting down,
# 541) or a bare EOF is a node in trouble, and the next attempt may land elsewhere.
_REFUSED_CODES = (403, 530, 402)
_RETRIED_CODES = (404, 405)  # NOT_FOUND (node gone), RESOURCE_LOCKED (old exclusive owner)
_ENTITY_RETRIES = 5
_GONE = (ChannelState.CLOSING, ChannelState.CLOSED)
# A nack streak right after a channel was opened or restored reopens it (see
# `Supervisor.refresh_channel`): only within this many seconds, at most this often.
_REFRESH_WINDOW = 30.0
_REFRESH_LIMIT = 20


class RecoverySettings:
    """Knobs of automatic recovery (arguments of `geamqp.connect`)."""

    def __init__(self, recovery_delay_min: float = 0.5, recovery_delay_max: float = 30.0,
                 recovery_max_attempts: int | None = None,
                 recovery_deadline: float | None = None,
                 republish_unconfirmed: bool = False,
                 recovery_wait_timeout: float = 60.0,
                 recover_channels: bool | None = None) -> None:
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
        self.recover_channels = recover_channels  # None: the parameters' choice


def backoff_delay(attempt: int, delay_min: float, delay_max: float,
                  rng: Callable[[float, float], float] = random.uniform) -> float:
    """Full jitter: uniform over [0, min(delay_max, delay_min * 2**attempt)]."""
    return rng(0.0, min(delay_max, delay_min * (2 ** min(attempt, 62))))


class RecoveryFailed(AMQPConnectionError):
    """Automatic recovery gave up; `__cause__` is the last failure."""


class RecoveryTarget(Protocol):
    """What the supervisor needs from its connection (connection.py's `_RecoveryPort`)."""

    @property
    def topology(self) -> Topology: ...
    def candidates(self) -> list[ConnectionParameters]: ...
    def connect(self, params: ConnectionParameters) -> Link: ...
    def drop_link(self) -> None: ...
    def channels(self) -> list[Channel]: ...
    def private_channel(self) -> Channel: ...
    def recovered(self) -> None: ...
    def gave_up(self, error: AMQPError) -> None: ...
    def queue_renamed(self, old: str, new: str) -> None: ...
    def current_link(self) -> Link | None: ...
    def release_private(self) -> None: ...


class Policy(enum.Enum):
    """What a step's channel-level failure does (connection-level failures always
    fail the attempt, which is retried after a back-off)."""

    DROP_CHANNEL = "end this channel with the error; restore the others"
    SKIP = "log it and carry on; the entity is not restored"


@dataclass(frozen=True)
class Step:
    """One step of a restore plan."""

    what: str  # for logs
    run: Callable[[], None]
    channel: Channel | None = None  # the channel restored (the step is skipped once it closes)
    policy: Policy = Policy.DROP_CHANNEL


class Supervisor:
    """Owns the recovery greenlet of one connection."""

    def __init__(self, target: RecoveryTarget, settings: RecoverySettings) -> None:
        self.target = target
        self.settings = settings
        self.recovered = Event()
        self.recovered.set()
        self._greenlet: gevent.Greenlet | None = None
        self.attempts: list[float] = []  # loop times of reconnect attempts (for tests)
        self._channel_restores: dict[Channel, gevent.Greenlet] = {}
        self._channel_opens: dict[Channel, Any] = {}  # channel.open requests of channel recovery

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
        restores, self._channel_restores = self._channel_restores, {}
        for restore in restores.values():
            if restore is not gevent.getcurrent():
                restore.kill(block=False)
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
        try:
            self._recover(error)
        except gevent.GreenletExit:
            raise  # stop(): the application closed the connection
        except BaseException as exc:  # a bug must not leave waiters parked forever
            log.exception("recovery failed unexpectedly")
            self._give_up(exc)

    def _recover(self, error: AMQPError) -> None:
        log.warning("connection lost (%r): recovering", error)
        last: BaseException = error
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
            for params in self.target.candidates():  # in this attempt's order
                self.attempts.append(gevent.get_hub().loop.now())
                try:
                    self._attempt(params)
                except _REFUSED as exc:
                    if exc.reply_code in _REFUSED_CODES:
                        self._give_up(exc)
                        return
                    last = self._failed(attempt, params, exc)
                except AMQPError as exc:  # the link failed again: next candidate / attempt
                    last = self._failed(attempt, params, exc)
                else:
                    log.warning("connection recovered after %d attempt(s)", attempt)
                    self._greenlet = None
                    self.recovered.set()
                    self.target.recovered()
                    return

    def _failed(self, attempt: int, params: ConnectionParameters, exc: AMQPError) -> AMQPError:
        log.info("recovery attempt %d via %s failed: %r", attempt, params, exc)
        self.target.drop_link()
        return exc

    def _give_up(self, cause: BaseException) -> None:
        error = RecoveryFailed(f"automatic recovery gave up: {cause}")
        error.__cause__ = cause
        log.error("%s", error)
        self._greenlet = None
        try:
            self.target.gave_up(error)
        finally:
            self.recovered.set()

    # ------------------------------------------------------------------ the plan

    def _attempt(self, params: ConnectionParameters) -> None:
        link = self.target.connect(params)
        for step in self.plan(link):
            channel = step.channel
            if channel is not None and channel.state in _GONE:
                continue  # closed meanwhile (by the application or the broker)
            try:
                step.run()
            except AMQPChannelError as exc:
                if channel is not None and step.policy is Policy.DROP_CHANNEL:
                    log.error("recovery: %s failed (%s); channel %s not restored",
                              step.what, exc, channel.channel_number)
                    channel_control.fail_restore(channel, exc)
                else:
                    log.error("recovery: %s failed (%s); skipped", step.what, exc)

    def plan(self, link: Link) -> list[Step]:
        """The restore of one attempt, in order: channels (limit checked first) and
        their modes, then exchanges, queues, bindings, then consumers, then open."""
        channels = [c for c in self.target.channels() if c.state is ChannelState.SUSPENDED]
        steps: list[Step] = []
        for channel in channels:
            number = channel.channel_number
            if number > link.channel_max:
                steps.append(Step(f"channel {number} above channel_max",
                                  _dropper(channel, link.channel_max)))
                continue
            steps.append(Step(f"reopen channel {number}", _reopener(channel, link), channel))
            steps += [Step(f"{m.NAME} on channel {number}", _requester(channel, m), channel)
                      for m in channel_control.restore_steps(channel)]
        steps += self._topology_steps()
        for channel in channels:
            steps += [Step(f"consumer {c.tag}", self._consumer_restorer(channel, c), channel)
                      for c in channel_control.consumers_of(channel)]
        steps += [Step(f"finish channel {channel.channel_number}", _finisher(channel), channel)
                  for channel in channels]
        return steps

    def _topology_steps(self) -> list[Step]:
        topology = self.target.topology
        steps = [Step(f"exchange {r.name!r}", self._declarer(r.declare()), policy=Policy.SKIP)
                 for r in topology.exchanges.values()]
        steps += [Step(f"queue {r.name!r}", self._queue_declarer(r.name), policy=Policy.SKIP)
                  for r in topology.queues.values()]
        # Bindings last, read when the step runs: exchange-to-exchange ones need their
        # exchanges, queue ones their (possibly renamed) queues.
        steps.append(Step("bindings", self._rebind, policy=Policy.SKIP))
        return steps

    def _declarer(self, method: Method) -> Callable[[], None]:
        return lambda: self._declare_with_retries(method)

    def _queue_declarer(self, name: str) -> Callable[[], None]:
        def declare() -> None:
            topology = self.target.topology
            record = topology.queues.get(name)
            if record is None:
                return
            reply = self._declare_with_retries(record.declare())
            if record.server_named and reply is not None and reply.queue != name:
                topology.rename(name, reply.queue)
                self.target.queue_renamed(name, reply.queue)
        return declare

    def _rebind(self) -> None:
        for binding in list(self.target.topology.bindings.values()):
            self._declare_with_retries(binding.bind())

    def _declare_with_retries(self, method: Method) -> Any:
        """Run one replay step on the private channel; 404/405 are retried with back-off."""
        for attempt in range(_ENTITY_RETRIES):
            channel = self.target.private_channel()
            try:
                return channel_control.private_request(channel, method)
            except ChannelClosedByBroker as exc:
                if exc.reply_code not in _RETRIED_CODES or attempt + 1 == _ENTITY_RETRIES:
                    log.error("recovery could not restore %s: %s", method.NAME, exc)
                    return None
                log.info("recovery: %s failed with %s; retrying", method.NAME, exc.reply_code)
                gevent.sleep(backoff_delay(attempt, self.settings.delay_min or 0.1,
                                           self.settings.delay_max))
        return None

    def _consumer_restorer(self, channel: Channel, consumer: Consumer) -> Callable[[], None]:
        def restore() -> None:
            exists = self._declare_with_retries(Queue.Declare(0, consumer.queue, passive=True))
            if exists is None:
                log.error("recovery: queue %r of consumer %s is gone; consumer not recovered",
                          consumer.queue, consumer.tag)
                channel_control.drop_consumer(channel, consumer.tag,
                                              f"queue {consumer.queue!r} of consumer "
                                              f"{consumer.tag!r} is gone")
                return
            channel_control.restore_request(channel, consumer.consume_method())
        return restore


    # ------------------------------------------------------------------ one channel

    def refresh_channel(self, channel: Channel) -> None:
        """A confirm-mode channel whose confirms since a recovery restored it are all
        nacks: reopen it on the same link (issue 13, measured on RabbitMQ 3.10.8).

        A channel that first publishes to a quorum queue while the survivors of a
        node failure have not elected a new leader yet (0.2-0.3 s after the loss,
        just when a fast recovery reopens it) keeps the dead leader: the broker
        nacks every publish on it until that node returns, seconds to minutes
        later. A new channel picks up the new leader. Only a channel restored within
        `_REFRESH_WINDOW` seconds and nacked before any ack qualifies, so the nacks
        of a healthy channel (reject-publish overflow) are left alone; a streak is
        bounded by `_REFRESH_LIMIT` reopens, each after the channel recovery's
        back-off. The nacks still reach their publishers; publishes in flight at a
        reopen end as after a loss (PublishOutcomeUnknown, or republished)."""
        since_open, refreshes = channel_control.nack_streak(channel)
        if since_open > _REFRESH_WINDOW or refreshes >= _REFRESH_LIMIT:
            return
        error = ChannelWrongStateError(
            f"channel {channel.channel_number} reopened: its publishes were nacked since "
            f"it was opened (a stale quorum queue leader)")
        log.warning("%s", error)
        channel_control.close_to_refresh(channel, error, self.settings.republish_unconfirmed,
                                         lambda: self.restore_channel(channel))

    def restore_channel(self, channel: Channel) -> None:
        """Channel recovery: the broker closed `channel` with a retriable code and it
        is SUSPENDED. channel.open goes out at once, in the reader's turn, so the
        number is never free for another channel to take; the restore greenlet (one
        per channel) backs off after the open-ok, then restores modes and consumers."""
        link = self.target.current_link()
        if link is None:
            return  # the link is going: the connection's recovery (or close) takes it
        request = channel_control.begin_restore(channel, link)
        if request is None:
            return
        self._channel_opens[channel] = request
        if channel not in self._channel_restores:
            greenlet = gevent.spawn(self._restore_channel, channel)
            greenlet.name = f"geamqp-channel-recovery-{channel.channel_number}"
            self._channel_restores[channel] = greenlet

    def _restore_channel(self, channel: Channel) -> None:
        try:
            error: BaseException | None = None
            for attempt in range(CHANNEL_ATTEMPTS):
                request = self._channel_opens.pop(channel, None)
                if request is None:
                    return  # closed for good, or the connection's recovery has it
                request.result.get()  # open-ok
                gevent.sleep(backoff_delay(attempt, self.settings.delay_min,
                                           self.settings.delay_max))
                if channel in self._channel_opens:
                    continue  # closed again (and reopened) meanwhile
                if channel.state is not ChannelState.RESTORING or self.recovering:
                    return
                error = self._channel_attempt(channel)
                if error is None:
                    return
                log.info("channel recovery attempt %d of channel %s failed: %s", attempt + 1,
                         channel.channel_number, error)
            failure = ChannelWrongStateError(
                f"channel {channel.channel_number} not recovered after {CHANNEL_ATTEMPTS} "
                f"attempts: {error}")
            failure.__cause__ = error
            log.error("%s", failure)
            channel_control.fail_restore(channel, failure)
        except AMQPError:
            return  # the link died: the connection's recovery restores the channel
        except Exception as exc:  # a bug must not leave the channel's waiters parked
            log.exception("channel recovery failed unexpectedly")
            channel_control.fail_restore(channel, ChannelWrongStateError(
                f"channel {channel.channel_number} not recovered: {exc!r}"))
        finally:
            self._channel_restores.pop(channel, None)
            self._channel_opens.pop(channel, None)
            self.target.release_private()

    def _channel_attempt(self, channel: Channel) -> AMQPChannelError | None:
        """Restore the reopened `channel`; the error when the broker closed it again
        with a retriable code (it is reopened already), else None."""
        for step in self._channel_plan(channel):
            if channel in self._channel_opens:
                return ChannelWrongStateError(
                    f"channel {channel.channel_number} closed again during its recovery")
            if channel.state is not ChannelState.RESTORING:
                return None  # closed meanwhile, or the link is lost
            try:
                step.run()
            except AMQPChannelError as exc:
                if channel in self._channel_opens:
                    return exc
                if channel.state is ChannelState.RESTORING:
                    log.error("channel recovery: %s failed (%s); channel %s not restored",
                              step.what, exc, channel.channel_number)
                    channel_control.fail_restore(channel, exc)
                return None
        return None

    def _channel_plan(self, channel: Channel) -> list[Step]:
        """The restore of one reopened channel: `plan` without the reopen and with
        only the topology its consumers need."""
        number = channel.channel_number
        steps = [Step(f"{m.NAME} on channel {number}", _requester(channel, m), channel)
                 for m in channel_control.restore_steps(channel)]
        # An auto-delete queue went with its last consumer when the channel closed: one
        # this connection declared is declared (and bound) again before consuming.
        topology = self.target.topology
        for name in sorted(channel_control.queues_consumed(channel)):
            record = topology.queues.get(name)
            if record is not None and record.auto_delete:
                steps.append(Step(f"queue {name!r}", self._queue_declarer(name), channel))
                steps.append(Step(f"bindings of {name!r}", self._binder(name), channel))
        steps += [Step(f"consumer {c.tag}", self._consumer_restorer(channel, c), channel)
                  for c in channel_control.consumers_of(channel)]
        steps.append(Step(f"finish channel {number}", _finisher(channel), channel))
        return steps

    def _binder(self, queue: str) -> Callable[[], None]:
        def bind() -> None:
            topology = self.target.topology
            for binding in list(topology.bindings.values()):
                if not binding.to_exchange and binding.destination == queue:
                    source = topology.exchanges.get(binding.source)
                    if source is not None and source.auto_delete:  # went with its binding
                        self._declare_with_retries(source.declare())
                    self._declare_with_retries(binding.bind())
        return bind


def _dropper(channel: Channel, channel_max: int) -> Callable[[], None]:
    def drop() -> None:
        error = ChannelWrongStateError(
            f"channel {channel.channel_number} cannot be restored: the broker now allows "
            f"channel numbers up to {channel_max} only")
        log.error("recovery: %s", error)
        channel_control.fail_restore(channel, error)
    return drop


def _reopener(channel: Channel, link: Link) -> Callable[[], None]:
    def reopen() -> None:
        request = channel_control.begin_restore(channel, link)
        if request is not None:
            request.result.get()
    return reopen


def _requester(channel: Channel, method: Method) -> Callable[[], None]:
    return lambda: channel_control.restore_request(channel, method)


def _finisher(channel: Channel) -> Callable[[], None]:
    return lambda: channel_control.finish_restore(channel)
