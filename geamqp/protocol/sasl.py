"""Credentials and SASL mechanisms: AMQP 0-9-1 connection.start-ok (RFC 4422, 4616).

PLAIN sends ``\\0user\\0password``; AMQPLAIN sends a field table of LOGIN and
PASSWORD without its length prefix; EXTERNAL sends nothing and lets the broker
take the identity from the TLS client certificate. Passwords never appear in a
repr or str.
"""

from __future__ import annotations

from .fields import encode_table

__all__ = ["Credentials", "ExternalCredentials", "PlainCredentials"]


class Credentials:
    """Base of credential types: a SASL mechanism and its initial response."""

    mechanism = ""

    def response_for(self, mechanism: str) -> bytes:
        """The start-ok response for `mechanism` (one this object offers)."""
        raise NotImplementedError

    def mechanisms(self) -> tuple[str, ...]:
        """Mechanisms this credential can answer, most preferred first."""
        return (self.mechanism,)


class PlainCredentials(Credentials):
    """A username and password, sent with PLAIN (or AMQPLAIN if only that is offered).

    `expires_at` (POSIX time, None: never) says when the password — e.g. an
    OAuth 2 access token — stops being accepted; a connection given a
    credentials provider asks it for fresh credentials ahead of that time.
    """

    mechanism = "PLAIN"

    __slots__ = ("_password", "expires_at", "username")

    def __init__(self, username: str, password: str, expires_at: float | None = None) -> None:
        if expires_at is not None and (isinstance(expires_at, bool)
                                       or not isinstance(expires_at, (int, float))):
            raise TypeError(f"expires_at must be a POSIX time (float) or None, not "
                            f"{type(expires_at).__name__}")
        self.username = username
        self._password = password
        self.expires_at = None if expires_at is None else float(expires_at)

    @property
    def password(self) -> str:
        return self._password

    def mechanisms(self) -> tuple[str, ...]:
        return ("PLAIN", "AMQPLAIN")

    def response_for(self, mechanism: str) -> bytes:
        if mechanism == "AMQPLAIN":
            return encode_table({"LOGIN": self.username, "PASSWORD": self._password})[4:]
        return b"\0" + self.username.encode("utf-8") + b"\0" + self._password.encode("utf-8")

    def __repr__(self) -> str:
        return f"PlainCredentials(username={self.username!r}, password=<hidden>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PlainCredentials):
            return NotImplemented
        return (self.username, self._password) == (other.username, other._password)

    def __hash__(self) -> int:
        return hash((PlainCredentials, self.username))


class ExternalCredentials(Credentials):
    """SASL EXTERNAL: the broker authenticates the TLS client certificate."""

    mechanism = "EXTERNAL"

    def response_for(self, mechanism: str) -> bytes:
        return b""

    def __repr__(self) -> str:
        return "ExternalCredentials()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExternalCredentials)

    def __hash__(self) -> int:
        return hash(ExternalCredentials)
