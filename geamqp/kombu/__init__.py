"""A kombu transport on geamqp, so that Celery's gevent pool runs on geamqp.

Use: ``import geamqp.kombu`` once (it registers the URL schemes), then a
broker URL ``geamqp://user:pass@host:5672/vhost`` (``geamqps://`` for TLS;
``geamqp://h1;geamqp://h2`` for failover), or, without the import,
``kombu.Connection(url, transport="geamqp.kombu:Transport")``. kombu is an
optional extra (``pip install geamqp[kombu]``); ``import geamqp`` never
imports this module.

Design (the rules this package keeps):

- **Deliveries are handed over, not dispatched in place.** geamqp runs a
  consumer callback in the channel's dispatcher greenlet as soon as a delivery
  is decoded; kombu expects its callbacks to run inside
  ``Connection.drain_events()``, in the greenlet that drains (Celery's
  consumer loop counts its prefetch window and updates QoS between drains,
  and code written for kombu assumes nothing runs behind its back). So the
  geamqp callback only appends ``(kombu callback, raw message)`` to one queue
  per connection, in arrival order across channels; ``drain_events`` runs
  every item buffered when it starts (not one per call, as py-amqp does:
  that made a Celery worker with heartbeats on take one message per loop
  turn), then returns. Broker cancels, ``basic.return`` handlers and a
  broker's close of a consuming channel travel through the same queue, so
  kombu sees them where py-amqp would have raised or called them.
- **Heartbeats belong to the connection.** geamqp's reader and heartbeat
  greenlets keep the link alive whatever the worker's loop is doing, so the
  transport declares ``implements.heartbeats = False``: Celery then never
  schedules ``heartbeat_check`` and never waits on an idle event connection
  "so broker heartbeats are consumed" (0.1 s per loop turn with py-amqp).
  ``heartbeat_check`` is a no-op for whoever calls it. kombu's default
  ``heartbeat=0`` takes the broker's proposal here (they cost nothing);
  ``transport_options={"heartbeat": 0}`` turns heartbeats off.
- **Recovery is kombu's job by default.** The connection is opened with
  geamqp's automatic recovery off, so a lost connection surfaces as a
  connection error and kombu's ``ensure()``/``autoretry`` and Celery's
  consumer restart reconnect and re-declare as they expect to (Celery also
  resets its QoS counters and reserved requests there). Recommended for
  Celery. ``transport_options={"recover": True}`` turns geamqp's recovery on
  (channels, topology and consumers come back underneath kombu, which then
  never sees the loss; ``recovery_delay_min`` / ``recovery_delay_max`` /
  ``recovery_max_attempts`` / ``recovery_wait_timeout`` pass through): worth
  it only for plain kombu code that uses neither ``ensure()`` nor
  ``ConsumerMixin``; with Celery the two layers would hide the loss from the
  worker, whose bookkeeping then goes stale.
- **Any greenlet may publish and ack** on any channel while another drains:
  geamqp's channels are greenlet-safe; a kombu ``Message`` keeps the channel
  it arrived on, so an ack goes to that channel with that delivery tag.
- **A lost connection is reported, not replaced.** ``connected`` stays true
  until kombu closes or collects the connection, so the loss reaches kombu
  and Celery as the connection error they recover from (the next
  ``drain_events`` or channel call raises it), instead of kombu quietly
  opening a fresh connection that has none of the worker's consumers.
- **After fork()**, ``_collect`` drops the inherited connection without a
  byte on the wire (the socket belongs to the parent): geamqp refuses a
  connection used from another process with `ForkedConnectionError`. (At
  the time of writing the core still runs the inherited reader greenlet in
  a child whose hub runs; tests/kombu has a strict xfail for it.)
"""

from __future__ import annotations

from typing import Any

import amqp.exceptions as amqp_errors  # kombu's own dependency: its exception classes
import kombu.transport
from kombu.transport import base
from kombu.utils.amq_manager import get_manager
from kombu.utils.text import version_string_as_tuple

import geamqp
from geamqp.exceptions import (
    AMQPChannelError,
    AMQPConnectionError,
    AMQPError,
    IncompatibleProtocolError,
    ProbableAccessDeniedError,
    ProbableAuthenticationError,
)

from . import _connection
from ._channel import Channel, ConsumerCancelled, Message
from ._connection import Connection, connection_parameters

__all__ = [
    "BrokerRefused",
    "Channel",
    "Connection",
    "ConsumerCancelled",
    "Message",
    "SSLTransport",
    "Transport",
]

DEFAULT_PORT = 5672
DEFAULT_SSL_PORT = 5671
_REFUSED_FOR_GOOD = (ProbableAuthenticationError, ProbableAccessDeniedError,
                     IncompatibleProtocolError)
# transport_options read here; kombu reads its retry options from the same dict.
_RECOVERY_OPTIONS = ("recovery_delay_min", "recovery_delay_max", "recovery_max_attempts",
                     "recovery_wait_timeout")


class BrokerRefused(AMQPError):
    """The broker refused this client for a reason a retry cannot fix (credentials,
    virtual host, protocol). The geamqp exception is the ``__cause__``.

    A separate class because kombu retries every `recoverable_connection_errors`
    entry, and geamqp's refusals are subclasses of `AMQPConnectionError`."""


class Transport(base.Transport):  # type: ignore[misc]
    """kombu transport: ``geamqp://`` URLs, or ``transport="geamqp.kombu:Transport"``."""

    Connection = Connection
    default_port = DEFAULT_PORT
    default_ssl_port = DEFAULT_SSL_PORT

    # socket.timeout (drain_events) is an OSError: as with py-amqp, kombu's loops
    # catch it before these tuples are consulted. kombu's own code raises py-amqp's
    # classes whatever the transport (kombu.common: "channel disconnected" when an
    # entity's channel is closed), so they are listed too.
    connection_errors = (AMQPConnectionError, BrokerRefused, OSError, amqp_errors.ConnectionError)
    channel_errors = (AMQPChannelError, amqp_errors.ChannelError)
    recoverable_connection_errors = (AMQPConnectionError, OSError,
                                     amqp_errors.RecoverableConnectionError)
    recoverable_channel_errors = (amqp_errors.RecoverableChannelError,)

    driver_name = "geamqp"
    driver_type = "amqp"  # Celery's mingle, gossip, events and quorum checks read this
    implements = base.Transport.implements.extend(asynchronous=False, heartbeats=False)

    def __init__(self, client: Any, default_port: int | None = None,
                 default_ssl_port: int | None = None, **kwargs: Any) -> None:
        self.client = client
        self.default_port = default_port or self.default_port
        self.default_ssl_port = default_ssl_port or self.default_ssl_port

    def driver_version(self) -> str:
        return geamqp.__version__

    @property
    def default_connection_params(self) -> dict[str, Any]:
        return {"userid": "guest", "password": "guest", "hostname": "localhost",
                "port": self.default_ssl_port if self.client.ssl else self.default_port,
                "login_method": "PLAIN"}

    def establish_connection(self) -> _connection.Connection:
        conninfo = self.client
        for name, value in self.default_connection_params.items():
            if not getattr(conninfo, name, None):
                setattr(conninfo, name, value)
        tls_name = conninfo.hostname  # certificates name the host as the user wrote it
        if conninfo.hostname == "localhost":
            conninfo.hostname = "127.0.0.1"  # as kombu's py-amqp transport: no IPv6 lookup
        options = dict(conninfo.transport_options or {})
        params = connection_parameters(conninfo, options, tls_name)
        recovery = {name: options[name] for name in _RECOVERY_OPTIONS if name in options}
        try:
            conn = geamqp.connect(params, name=options.get("connection_name"),
                                  recover=bool(options.get("recover", False)), **recovery)
        except _REFUSED_FOR_GOOD as exc:
            raise BrokerRefused(f"{conninfo.hostname}:{conninfo.port} refused this client: "
                                f"{exc}") from exc
        return Connection(conn, conninfo, heartbeat=params.heartbeat,
                          confirm_publish=bool(options.get("confirm_publish", False)))

    def close_connection(self, connection: _connection.Connection) -> None:
        connection.client = None
        connection.close()

    def verify_connection(self, connection: _connection.Connection) -> bool:
        return connection.connected

    def create_channel(self, connection: _connection.Connection) -> Channel:
        return connection.channel()

    def close_channel(self, channel: Channel) -> None:
        channel.close()

    def drain_events(self, connection: _connection.Connection, timeout: float | None = None,
                     **kwargs: Any) -> None:
        connection.drain_events(timeout=timeout)

    def _collect(self, connection: _connection.Connection | None) -> None:
        if connection is not None:
            connection.collect()

    def get_heartbeat_interval(self, connection: _connection.Connection) -> float:
        return connection.heartbeat

    def heartbeat_check(self, connection: _connection.Connection, rate: float = 2) -> None:
        """Nothing to do: geamqp's own greenlets send and check heartbeats."""

    def qos_semantics_matches_spec(self, connection: _connection.Connection) -> bool:
        """False on RabbitMQ 3.3 to 3.x, where basic.qos global=False is per consumer
        and Celery must ask for global=True to limit the channel."""
        props = connection.server_properties
        if props.get("product") != "RabbitMQ" or not props.get("version"):
            return True
        version = version_string_as_tuple(props["version"])
        return bool(version < (3, 3) or version >= (4, 0))

    def get_manager(self, *args: Any, **kwargs: Any) -> Any:
        return get_manager(self.client, *args, **kwargs)


class SSLTransport(Transport):
    """``geamqps://``: TLS, port 5671 unless given."""

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        if not client.ssl:
            client.ssl = True


def _register() -> None:
    aliases = kombu.transport.TRANSPORT_ALIASES
    aliases.setdefault("geamqp", "geamqp.kombu:Transport")
    aliases.setdefault("geamqps", "geamqp.kombu:SSLTransport")


_register()
