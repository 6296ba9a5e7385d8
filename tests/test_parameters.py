"""Connection parameters and AMQP URIs (RELIABILITY.md 16, 17).

Vectors from Appendix A of RabbitMQ's URI specification; every error names
what is wrong and never echoes the password.
"""

from __future__ import annotations

import logging
import ssl

import pytest

import geamqp
from geamqp import ConnectionParameters, PlainCredentials, URLParameters

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("url", "user", "password", "host", "port", "vhost"),
    [
        ("amqp://user:pass@host:10000/vhost", "user", "pass", "host", 10000, "vhost"),
        ("amqp://user%61:%61pass@ho%61st:10000/v%2fhost", "usera", "apass", "hoast", 10000,
         "v/host"),
        ("amqp://", "guest", "guest", "localhost", 5672, "/"),
        ("amqp://:@/", "", "", "localhost", 5672, ""),
        ("amqp://user@", "user", "", "localhost", 5672, "/"),
        ("amqp://user:pass@", "user", "pass", "localhost", 5672, "/"),
        ("amqp://host", "guest", "guest", "host", 5672, "/"),
        ("amqp://:10000", "guest", "guest", "localhost", 10000, "/"),
        ("amqp:///vhost", "guest", "guest", "localhost", 5672, "vhost"),
        ("amqp://host/", "guest", "guest", "host", 5672, ""),
        ("amqp://host/%2f", "guest", "guest", "host", 5672, "/"),
        ("amqp://[::1]", "guest", "guest", "::1", 5672, "/"),
        ("amqps://host", "guest", "guest", "host", 5671, "/"),
        ("AMQPS://host:5000/x", "guest", "guest", "host", 5000, "x"),
    ],
)
def test_uri_spec_appendix_a(url: str, user: str, password: str, host: str, port: int,
                             vhost: str) -> None:
    params = URLParameters(url)
    assert isinstance(params.credentials, PlainCredentials)
    assert (params.credentials.username, params.credentials.password) == (user, password)
    assert (params.host, params.port, params.virtual_host) == (host, port, vhost)
    assert (params.ssl_options is not None) == url.lower().startswith("amqps")


def test_amqps_defaults_to_a_verifying_tls_context() -> None:
    context = URLParameters("amqps://broker.example").ssl_options.context  # type: ignore[union-attr]
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_turning_verification_off_takes_an_explicit_option() -> None:
    context = URLParameters("amqps://h?verify=verify_none").ssl_options.context  # type: ignore[union-attr]
    assert context.verify_mode is ssl.CERT_NONE
    with pytest.raises(ValueError, match="verify"):
        URLParameters("amqps://h?verify=maybe")


def test_query_options_are_converted() -> None:
    params = URLParameters(
        "amqp://h/?heartbeat=7&frame_max=8192&channel_max=9&connection_attempts=3"
        "&retry_delay=0.5&socket_timeout=2&stack_timeout=4&blocked_connection_timeout=30"
        "&connection_name=billing")
    assert params.heartbeat == 7 and params.frame_max == 8192 and params.channel_max == 9
    assert params.connection_attempts == 3 and params.retry_delay == 0.5
    assert params.socket_timeout == 2 and params.stack_timeout == 4
    assert params.blocked_connection_timeout == 30 and params.connection_name == "billing"


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        (f"http://user:{SECRET}@host/", "amqp:// or amqps://"),
        (f"amqp://user:{SECRET}@host:notaport/", "malformed"),
        (f"amqp://user:{SECRET}@host:99999/", "malformed"),
        (f"amqp://user:{SECRET}@[::1/", "malformed"),
        (f"amqp://user:{SECRET}@host/a/b", "one segment"),
        (f"amqp://user:{SECRET}@host/?heartbeat=often", "heartbeat"),
        (f"amqp://user:{SECRET}@host/?hearbeat=5", "unknown AMQP URL option 'hearbeat'"),
        (f"amqp://user:{SECRET}@host/?socket_timeout=0", "socket_timeout"),
        (f"amqp://user:{SECRET}@host/#frag", "fragment"),
        (f"amqp://user:{SECRET}@host/?certfile=x", "amqps"),
    ],
)
def test_bad_urls_raise_value_error_without_the_password(url: str, complaint: str) -> None:
    with pytest.raises(ValueError) as info:
        URLParameters(url)
    assert complaint in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)


def test_no_credential_in_any_repr_or_str() -> None:
    params = URLParameters(f"amqp://alice:{SECRET}@host/prod")
    creds = params.credentials
    for text in (repr(params), str(params), repr(creds), str(creds),
                 repr(ConnectionParameters(credentials=PlainCredentials("bob", SECRET)))):
        assert SECRET not in text
    assert "alice" in repr(params)
    start_ok = geamqp.protocol.spec.Connection.StartOk(
        {}, "PLAIN", creds.response_for("PLAIN"), "en_US")  # type: ignore[union-attr]
    assert SECRET not in repr(start_ok)


def test_parameters_validate_their_values() -> None:
    with pytest.raises(ValueError, match="port"):
        ConnectionParameters(port=0)
    with pytest.raises(ValueError, match="connection_attempts"):
        ConnectionParameters(connection_attempts=0)
    with pytest.raises(ValueError, match="retry_delay"):
        ConnectionParameters(retry_delay=-1)
    assert ConnectionParameters(ssl_options=geamqp.SSLOptions()).port == 5671


def test_library_logger_has_a_null_handler() -> None:
    handlers = logging.getLogger("geamqp").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)
