"""`pika.connection`: connection parameters with pika's rules on top of geamqp's.

Differences from `geamqp.ConnectionParameters`, all pika's:
- ``socket_timeout=None`` and ``stack_timeout=None`` mean no limit;
- ``heartbeat`` may be a callable ``f(connection, server_proposal) -> seconds`` and
  ``heartbeat=0`` asks for no heartbeats (see `heartbeat_request`);
- ``tcp_options`` is accepted (geamqp sets TCP_NODELAY itself and has no other
  socket option hook yet).
Everything else (URL syntax, TLS via `SSLOptions`, defaults) is geamqp's, which
already follows pika's names and defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import parameters as _native
from ..parameters import SSLOptions
from .credentials import PlainCredentials

__all__ = ["ConnectionParameters", "Parameters", "SSLOptions", "URLParameters",
           "heartbeat_request"]

# "No limit" for the native layer, which takes seconds: a year is beyond any wait.
NO_LIMIT = 365 * 24 * 3600.0

HeartbeatSetting = int | Callable[[Any, int], int] | None


def _limit(name: str, value: float | None) -> float:
    if value is None:
        return NO_LIMIT
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not "
                        f"{type(value).__name__}")
    return float(value)


class ConnectionParameters(_native.ConnectionParameters):
    """pika's ``ConnectionParameters(host='localhost', port=5672, ...)``."""

    def __init__(self, host: str = "localhost", port: int | None = None,
                 virtual_host: str = "/", credentials: Any = None,
                 channel_max: int = 2047, frame_max: int = 131072,
                 heartbeat: HeartbeatSetting = None, ssl_options: SSLOptions | None = None,
                 connection_attempts: int = 1, retry_delay: float = 2.0,
                 socket_timeout: float | None = 10.0, stack_timeout: float | None = 15.0,
                 locale: str = "en_US", blocked_connection_timeout: float | None = None,
                 client_properties: dict[str, Any] | None = None,
                 tcp_options: dict[str, Any] | None = None,
                 connection_name: str | None = None) -> None:
        for name, value in (("host", host), ("virtual_host", virtual_host),
                            ("locale", locale)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str, not {type(value).__name__}")
        if not (heartbeat is None or callable(heartbeat)
                or (isinstance(heartbeat, int) and not isinstance(heartbeat, bool))):
            raise TypeError(f"heartbeat must be an int, a callable or None, not "
                            f"{type(heartbeat).__name__}")
        super().__init__(
            host=host, port=port, virtual_host=virtual_host,
            credentials=credentials if credentials is not None else PlainCredentials(
                "guest", "guest"),
            channel_max=channel_max, frame_max=frame_max,
            heartbeat=None if callable(heartbeat) else heartbeat,
            ssl_options=ssl_options, connection_attempts=connection_attempts,
            retry_delay=retry_delay, socket_timeout=_limit("socket_timeout", socket_timeout),
            stack_timeout=_limit("stack_timeout", stack_timeout), locale=locale,
            blocked_connection_timeout=blocked_connection_timeout,
            client_properties=client_properties, connection_name=connection_name,
            zero_heartbeat_disables=True)  # pika's rule: heartbeat=0 turns them off
        self.pika_heartbeat = heartbeat
        self.tcp_options = tcp_options


Parameters = ConnectionParameters


class URLParameters(_native.URLParameters):
    """pika's ``URLParameters('amqp://user:pass@host:5672/%2F?heartbeat=30')``."""

    def __init__(self, url: str) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        super().__init__(url)
        self.pika_heartbeat: HeartbeatSetting = self.heartbeat
        self.zero_heartbeat_disables = True  # pika's rule: heartbeat=0 turns them off
        self.tcp_options: dict[str, Any] | None = None


def heartbeat_request(params: _native.ConnectionParameters) -> HeartbeatSetting:
    """What the application asked for: pika's heartbeat setting (0, a callable...)."""
    return getattr(params, "pika_heartbeat", params.heartbeat)
