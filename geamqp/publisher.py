"""`Publisher`: confirmed publishing for worker pools — many greenlets, a few channels.

Hundreds of greenlets (a gunicorn gevent worker, a `gevent.pool.Pool`) each
publish a little. Giving each its own channel wastes broker resources;
sharing one channel serialises nothing but makes every caller wait on every
other's confirms if done naively. A Publisher keeps a small set of
confirm-mode channels on one connection and:

- blocks each caller only until *its own* message is confirmed (or nacked,
  returned, or failed — every publish ends in one of those, raised in the
  caller);
- applies back-pressure: at most `window` messages are outstanding across
  its channels, and while the broker blocks the connection (resource alarm)
  publishes wait cooperatively;
- replaces a channel the broker closed (e.g. a publish to a missing exchange
  gets 404 on that publish only), so one bad publish does not poison the rest;
- raises `PublisherClosed` once closed.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from gevent.lock import BoundedSemaphore, Semaphore

from .exceptions import AMQPChannelError

if TYPE_CHECKING:
    from .channel import Channel
    from .connection import Connection
    from .protocol.properties import BasicProperties

__all__ = ["Publisher", "PublisherClosed"]


class PublisherClosed(AMQPChannelError):
    """The Publisher was closed; open a new one."""


class Publisher:
    """Confirmed publishing through `channels` confirm-mode channels of `connection`."""

    def __init__(self, connection: Connection, channels: int = 4, window: int = 1000) -> None:
        if channels < 1:
            raise ValueError(f"channels must be at least 1, not {channels}")
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        self.connection = connection
        self.window = window
        self._slots: list[Channel | None] = [None] * channels
        self._next = itertools.cycle(range(channels))
        self._outstanding = BoundedSemaphore(window)
        self._opening = [Semaphore() for _ in range(channels)]
        self._closed = False

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _channel(self, slot: int) -> Channel:
        channel = self._slots[slot]
        if channel is not None and channel.is_open:
            return channel
        with self._opening[slot]:  # one greenlet opens it; the others wait and share it
            channel = self._slots[slot]
            if channel is None or not channel.is_open:
                if self._closed:
                    raise PublisherClosed("publisher is closed")
                channel = self.connection.channel()
                channel.confirm_delivery()
                self._slots[slot] = channel
            return channel

    def publish(self, exchange: str, routing_key: str, body: bytes | str,
                properties: BasicProperties | None = None, mandatory: bool = False,
                timeout: float | None = None) -> None:
        """Publish and block this greenlet until the broker confirms this message.

        Raises `NackError`, `UnroutableError` (mandatory), the channel's or
        connection's closing exception, `PublisherClosed`, or — when `timeout`
        passes first — `TimeoutError` (the message may still be confirmed later).
        """
        if self._closed:
            raise PublisherClosed("publisher is closed")
        if not self._outstanding.acquire(timeout=timeout):
            raise TimeoutError(f"no room in the publish window of {self.window} within "
                               f"{timeout} s")
        try:
            channel = self._channel(next(self._next))
            confirmation = channel.basic_publish(exchange, routing_key, body, properties,
                                                 mandatory, wait=False)
            assert confirmation is not None
            if not confirmation.wait(timeout):
                raise TimeoutError(f"no confirm within {timeout} s")
        finally:
            self._outstanding.release()

    def close(self) -> None:
        """Close the channels: publishes still waiting fail with `ChannelClosedByClient`,
        later ones raise `PublisherClosed`."""
        self._closed = True
        slots, self._slots = self._slots, [None] * len(self._slots)
        for channel in slots:
            if channel is not None and channel.is_open:
                channel.close()
