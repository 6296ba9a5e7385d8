"""Connection parameters, from keywords or from an AMQP URI.

URI rules follow RabbitMQ's URI specification (rabbitmq.com/uri-spec):
``amqp[s]://user:pass@host:port/vhost?options``; the vhost is the single
percent-decoded path segment, ``amqp://h/`` names the vhost ``""`` and no path
at all names ``"/"``; IPv6 hosts go in brackets; ``amqps`` defaults to port
5671 with a verifying TLS context. Unknown query options and malformed URIs
raise `ValueError` whose message never contains the password.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .protocol.sasl import Credentials, PlainCredentials

__all__ = ["ConnectionParameters", "SSLOptions", "URLParameters"]

DEFAULT_PORT = 5672
DEFAULT_SSL_PORT = 5671


class SSLOptions:
    """TLS settings: an `ssl.SSLContext` and the name to send as SNI and verify.

    `server_hostname` defaults to the host being connected to.
    """

    __slots__ = ("context", "server_hostname")

    def __init__(self, context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None) -> None:
        self.context = context if context is not None else default_ssl_context()
        self.server_hostname = server_hostname

    def __repr__(self) -> str:
        verify = self.context.verify_mode is ssl.CERT_REQUIRED
        return f"SSLOptions(verify={verify}, server_hostname={self.server_hostname!r})"


def default_ssl_context() -> ssl.SSLContext:
    """Verifying client context: certificate and hostname checked, TLS 1.2 or newer."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _positive_float(name: str, value: Any) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError(f"{name} must be greater than 0, not {value!r}")
    return number


class ConnectionParameters:
    """Everything needed to open one connection. Defaults match pika's."""

    def __init__(
        self,
        host: str = "localhost",
        port: int | None = None,
        virtual_host: str = "/",
        credentials: Credentials | Callable[[], PlainCredentials] | None = None,
        channel_max: int = 2047,
        frame_max: int = 131072,
        heartbeat: int | None = None,
        ssl_options: SSLOptions | None = None,
        connection_attempts: int = 1,
        retry_delay: float = 2.0,
        socket_timeout: float | None = 10.0,
        stack_timeout: float | None = 15.0,
        locale: str = "en_US",
        blocked_connection_timeout: float | None = None,
        client_properties: dict[str, Any] | None = None,
        connection_name: str | None = None,
        max_message_size: int = 128 * 1024 * 1024,
        zero_heartbeat_disables: bool = False,
        recover_channels: bool = True,
    ) -> None:
        self.host = host
        self.port = port if port is not None else (DEFAULT_SSL_PORT if ssl_options
                                                   else DEFAULT_PORT)
        if not 0 < int(self.port) < 65536:
            raise ValueError(f"port must be 1..65535, not {port!r}")
        self.virtual_host = virtual_host
        # a zero-argument callable returning PlainCredentials is asked per connection
        # attempt and ahead of expires_at (see _credentials.py)
        self.credentials = credentials if credentials is not None else PlainCredentials(
            "guest", "guest")
        self.channel_max = channel_max
        self.frame_max = frame_max
        self.heartbeat = heartbeat
        self.ssl_options = ssl_options
        if int(connection_attempts) < 1:
            raise ValueError(f"connection_attempts must be at least 1, not {connection_attempts!r}")
        self.connection_attempts = int(connection_attempts)
        if float(retry_delay) < 0:
            raise ValueError(f"retry_delay must not be negative, not {retry_delay!r}")
        self.retry_delay = float(retry_delay)
        # None: no limit (pika's meaning). Without a socket timeout a stalled write is
        # found by heartbeats instead; without a stack timeout a silent server hangs
        # the connect until the socket timeout or the heartbeat gives up.
        self.socket_timeout = (None if socket_timeout is None
                               else _positive_float("socket_timeout", socket_timeout))
        self.stack_timeout = (None if stack_timeout is None
                              else _positive_float("stack_timeout", stack_timeout))
        self.locale = locale
        self.blocked_connection_timeout = (
            None if blocked_connection_timeout is None
            else _positive_float("blocked_connection_timeout", blocked_connection_timeout))
        self.client_properties = dict(client_properties or {})
        self.connection_name = connection_name
        self.max_message_size = max_message_size
        # heartbeat=0 means "off" (pika) rather than "take the server's" (RabbitMQ)
        self.zero_heartbeat_disables = zero_heartbeat_disables
        # reopen a channel closed by a retriable broker close (see _channel_recovery.py)
        self.recover_channels = bool(recover_channels)

    def __repr__(self) -> str:
        user = getattr(self.credentials, "username", None)
        who = f"{user}@" if user else ""
        tls = "amqps" if self.ssl_options else "amqp"
        return (f"<{type(self).__name__} {tls}://{who}{self.host}:{self.port}"
                f"/{self.virtual_host!r}>")

    __str__ = __repr__


# name -> converter for the query options an AMQP URI may carry.
_URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "heartbeat": int,
    "frame_max": int,
    "channel_max": int,
    "connection_attempts": int,
    "retry_delay": float,
    "socket_timeout": float,
    "stack_timeout": float,
    "blocked_connection_timeout": float,
    "connection_name": str,
    "locale": str,
    "max_message_size": int,
}
_TLS_OPTIONS = ("cacertfile", "certfile", "keyfile", "verify", "server_name_indication")


def _redact(url: str) -> str:
    """The URL with any password replaced, for error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<unparseable URL>"
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        userinfo, _, hostport = authority.rpartition("@")
        user = userinfo.split(":", 1)[0]
        authority = f"{user}:***@{hostport}" if ":" in userinfo else f"{user}@{hostport}"
    return f"{scheme}://{authority}{slash}{path}"


class URLParameters(ConnectionParameters):
    """Parameters from an ``amqp://`` or ``amqps://`` URI."""

    def __init__(self, url: str) -> None:
        safe = _redact(url)
        try:
            parts = urlsplit(url)
            port = parts.port
            host = parts.hostname
        except ValueError as exc:
            reason = str(exc).replace(url, safe)
            raise ValueError(f"malformed AMQP URL {safe}: {reason.split(':')[0]}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("amqp", "amqps"):
            raise ValueError(f"AMQP URL must start with amqp:// or amqps://, not {scheme!r}: "
                             f"{safe}")
        if parts.fragment:
            raise ValueError(f"AMQP URL must not have a fragment: {safe}")
        kwargs: dict[str, Any] = {}
        if parts.username is not None or parts.password is not None:
            kwargs["credentials"] = PlainCredentials(unquote(parts.username or ""),
                                                     unquote(parts.password or ""))
        kwargs["virtual_host"] = self._vhost(parts.path, safe)
        tls: dict[str, str] = {}
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name in _TLS_OPTIONS:
                tls[name] = value
                continue
            convert = _URL_OPTIONS.get(name)
            if convert is None:
                known = ", ".join(sorted([*_URL_OPTIONS, *_TLS_OPTIONS]))
                raise ValueError(f"unknown AMQP URL option {name!r} in {safe}; known: {known}")
            try:
                kwargs[name] = convert(value)
            except ValueError:
                raise ValueError(f"AMQP URL option {name}={value!r} is not a valid "
                                 f"{convert.__name__}: {safe}") from None
        if scheme == "amqps":
            kwargs["ssl_options"] = _ssl_options_from(tls, safe)
        elif tls:
            raise ValueError(f"TLS options {sorted(tls)} need an amqps:// URL: {safe}")
        super().__init__(host=unquote(host) if host else "localhost", port=port, **kwargs)
        self.url = safe

    @staticmethod
    def _vhost(path: str, safe: str) -> str:
        if not path:
            return "/"
        segment = path[1:]
        if "/" in segment:
            raise ValueError(f"AMQP URL path must be one segment (encode '/' in a vhost as "
                             f"%2F): {safe}")
        return unquote(segment)


def _ssl_options_from(tls: dict[str, str], safe: str) -> SSLOptions:
    context = default_ssl_context()
    verify = tls.get("verify", "verify_peer")
    if verify == "verify_none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif verify != "verify_peer":
        raise ValueError(f"AMQP URL option verify must be verify_peer or verify_none: {safe}")
    if "cacertfile" in tls:
        context.load_verify_locations(cafile=tls["cacertfile"])
    if "certfile" in tls:
        context.load_cert_chain(tls["certfile"], tls.get("keyfile"))
    return SSLOptions(context, tls.get("server_name_indication"))
