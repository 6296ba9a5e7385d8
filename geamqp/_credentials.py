"""Credentials that refresh: a provider callable, asked per connection attempt and
ahead of expiry.

Wherever credentials are accepted (``ConnectionParameters(credentials=...)``,
hence `geamqp.connect`), a zero-argument callable returning `PlainCredentials`
may stand in for them. The connection then:

- calls it for every connection attempt (the first connect and each
  recovery attempt), so a reconnect always logs in with the newest secret —
  never with the one given at connect time, which may have expired;
- when the credentials it returned carry ``expires_at``, calls it again
  `lead` seconds before that time (``credentials_refresh_lead``, default 60 s:
  longer than a connection recovery or a broker round trip usually takes,
  far shorter than any token lifetime worth issuing) and, when the secret
  changed, sends it with connection.update-secret;
- serialises those calls: a refresh, a reconnect and a user's
  `update_secret` never ask the provider at the same time.

A provider that raises, or returns something other than `PlainCredentials`,
fails that connection attempt with `AMQPConnectionError` (recovery retries
it); a failed refresh is logged and retried a few seconds later, until the
old secret has expired. Nothing here logs or formats a secret.

Rules: the refresh timer is one greenlet per connection, stopped when the
connection closes for good.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent.lock import RLock

from .exceptions import AMQPConnectionError, AMQPError
from .protocol.sasl import Credentials, PlainCredentials

__all__ = ["DEFAULT_REFRESH_LEAD", "CredentialsSource", "is_provider"]

log = logging.getLogger("geamqp.credentials")

DEFAULT_REFRESH_LEAD = 60.0
MIN_INTERVAL = 1.0  # never ask the provider more often than this (a stale cache)
RETRY_AFTER = 5.0  # a failed refresh is tried again this much later

Provider = Callable[[], PlainCredentials]


def is_provider(credentials: Any) -> bool:
    """A credentials provider rather than credentials."""
    return callable(credentials) and not isinstance(credentials, Credentials)


def _name(provider: Provider) -> str:
    return getattr(provider, "__qualname__", None) or type(provider).__name__


class CredentialsSource:
    """The credentials of one connection's attempts, and their refresh timer."""

    def __init__(self, update_secret: Callable[[str, str], None],
                 lead: float = DEFAULT_REFRESH_LEAD) -> None:
        if isinstance(lead, bool) or not isinstance(lead, (int, float)) or lead < 0:
            raise ValueError(f"credentials_refresh_lead must be a number >= 0, not {lead!r}")
        self._update_secret = update_secret
        self.lead = float(lead)
        self._lock = RLock()
        self._provider: Provider | None = None
        self._current: PlainCredentials | None = None
        self._timer: gevent.Greenlet | None = None
        self._stopped = False

    @property
    def lock(self) -> RLock:
        """Held while the provider is asked and while a secret is being updated."""
        return self._lock

    def resolve(self, credentials: Any) -> Credentials:
        """The credentials for a connection attempt: `credentials` itself, or what
        the provider returns now (and the refresh is scheduled from them)."""
        if not is_provider(credentials):
            return credentials  # type: ignore[no-any-return]
        with self._lock:
            self._provider = credentials
            fresh = self._ask(credentials)
            self._current = fresh
        self._schedule(fresh)
        return fresh

    def _ask(self, provider: Provider) -> PlainCredentials:
        try:
            fresh = provider()
        except Exception as exc:
            raise AMQPConnectionError(
                f"credentials provider {_name(provider)} raised {type(exc).__name__}") from exc
        if not isinstance(fresh, PlainCredentials):
            raise AMQPConnectionError(
                f"credentials provider {_name(provider)} must return PlainCredentials, not "
                f"{type(fresh).__name__}")
        return fresh

    def _schedule(self, credentials: PlainCredentials, delay: float | None = None) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer is not gevent.getcurrent():
            timer.kill(block=False)
        if self._stopped or credentials.expires_at is None:
            return
        if delay is None:
            delay = credentials.expires_at - self.lead - time.time()
        self._timer = gevent.spawn_later(max(MIN_INTERVAL, delay), self._refresh)
        self._timer.name = "geamqp-credentials-refresh"

    def _refresh(self) -> None:
        provider, old = self._provider, self._current
        if provider is None or old is None or self._stopped:
            return
        try:
            with self._lock:
                fresh = self._ask(provider)
                if fresh.password != old.password:
                    self._update_secret(fresh.password, "credentials refreshed before expiry")
                    log.info("connection secret refreshed (expires at %s)", fresh.expires_at)
                self._current = fresh
        except (AMQPError, TypeError) as exc:
            expired = old.expires_at is not None and old.expires_at <= time.time()
            log.warning("refreshing the connection secret failed (%s)%s", exc,
                        "; the secret has expired" if expired else "; retrying")
            if not expired:
                self._schedule(old, RETRY_AFTER)
            return
        self._schedule(fresh)

    def stop(self) -> None:
        self._stopped = True
        timer, self._timer = self._timer, None
        if timer is not None and timer is not gevent.getcurrent():
            timer.kill(block=False)
