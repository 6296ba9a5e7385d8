"""What the client asks for in the handshake, and how it meets the server's tune.

Negotiation rules (RabbitMQ's, as RELIABILITY.md records them): heartbeat — if
either side is 0 take the other, else the smaller; frame_max and channel_max —
the lower non-zero value (0 means "no limit").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .frames import FRAME_MIN_SIZE
from .sasl import Credentials

__all__ = ["CAPABILITIES", "VERSION", "ClientSettings", "negotiate_heartbeat",
           "negotiate_limit"]

VERSION = "0.1.0"
CAPABILITIES = (
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "connection.blocked",
    "authentication_failure_close",
    "per_consumer_qos",
)


@dataclass(slots=True)
class ClientSettings:
    """What the client asks for; the server's tune may lower the limits."""

    credentials: Credentials
    virtual_host: str = "/"
    heartbeat: int | None = None  # None: take the server's proposal
    frame_max: int = 131072
    channel_max: int = 2047
    max_message_size: int = 128 * 1024 * 1024  # bodies announced larger are refused
    connection_name: str | None = None
    client_properties: dict[str, Any] = field(default_factory=dict)
    locale: str = "en_US"
    # pika's rule instead of RabbitMQ's: a heartbeat of 0 asked for by the client
    # turns heartbeats off whatever the server proposes (the compat layer's choice).
    zero_heartbeat_disables: bool = False

    def __post_init__(self) -> None:
        if not FRAME_MIN_SIZE <= self.frame_max <= 0x7FFFFFFF:
            raise ValueError(f"frame_max must be 4096..2147483647, not {self.frame_max}")
        if not 1 <= self.channel_max <= 65535:
            raise ValueError(f"channel_max must be 1..65535, not {self.channel_max}")
        if self.heartbeat is not None and not 0 <= self.heartbeat <= 65535:
            raise ValueError(f"heartbeat must be 0..65535 seconds, not {self.heartbeat}")
        if self.max_message_size < 0:
            raise ValueError("max_message_size must not be negative")


def negotiate_heartbeat(client: int | None, server: int, zero_disables: bool = False) -> int:
    """If either side is 0 take the other, else the smaller (RabbitMQ's rule);
    with `zero_disables`, a client's 0 is 0 (pika's rule)."""
    if client is None:
        return server
    if zero_disables and client == 0:
        return 0
    if client == 0 or server == 0:
        return client or server
    return min(client, server)


def negotiate_limit(client: int, server: int) -> int:
    """frame_max / channel_max: the lower non-zero value (0 means 'no limit')."""
    if client == 0 or server == 0:
        return client or server
    return min(client, server)
