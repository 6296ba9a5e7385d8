"""The names a pika 1.3 application imports exist, with pika's shapes (no broker needed)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

import geamqp
import geamqp.exceptions


def test_top_level_names(pika: Any) -> None:
    for name in ("BlockingConnection", "BlockingChannel", "ConnectionParameters",
                 "URLParameters", "SSLOptions", "PlainCredentials", "BasicProperties",
                 "DeliveryMode"):
        assert hasattr(pika, name), name
    from geamqp.pika.adapters import BlockingConnection
    from geamqp.pika.adapters.blocking_connection import BlockingChannel
    assert BlockingConnection is pika.BlockingConnection
    assert BlockingChannel is pika.BlockingChannel
    assert pika.DeliveryMode.Persistent.value == 2 == pika.spec.PERSISTENT_DELIVERY_MODE
    assert pika.BasicProperties is pika.spec.BasicProperties


def test_submodules_as_pika_has_them(pika: Any) -> None:
    from geamqp.pika import credentials, exceptions, exchange_type, frame, spec
    assert exchange_type.ExchangeType.topic == "topic"
    assert credentials.PlainCredentials is pika.PlainCredentials
    for cls in (spec.Basic.Deliver, spec.Basic.GetOk, spec.Basic.Cancel, spec.Queue.DeclareOk,
                spec.Exchange.DeclareOk, spec.Confirm.Select, spec.Tx.Select):
        assert isinstance(cls.NAME, str)
    method = frame.Method(3, spec.Queue.DeclareOk("q", 1, 2))
    assert (method.channel_number, method.frame_type, method.method.queue) == (3, 1, "q")
    header = frame.Header(1, 5, pika.BasicProperties(content_type="text/plain"))
    assert header.body_size == 5 and header.properties.content_type == "text/plain"
    assert frame.Body(1, b"ab").fragment == b"ab"
    assert exceptions.ReentrancyError and exceptions.AuthenticationError


def test_exceptions_are_the_ones_geamqp_raises(pika: Any) -> None:
    """``except pika.exceptions.X`` must catch what the geamqp layer underneath raises."""
    for name in geamqp.exceptions.__all__:
        assert getattr(pika.exceptions, name) is getattr(geamqp.exceptions, name), name
    assert issubclass(pika.exceptions.ChannelClosedByBroker, pika.exceptions.AMQPChannelError)
    assert issubclass(pika.exceptions.StreamLostError, pika.exceptions.AMQPConnectionError)


def test_import_geamqp_does_not_load_the_compat_layer() -> None:
    code = "import sys, geamqp, geamqp.connection; print('geamqp.pika' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, check=True)
    assert out.stdout.strip() == "False"


def test_parameters_accept_pikas_none_timeouts(pika: Any) -> None:
    params = pika.ConnectionParameters("127.0.0.1", socket_timeout=None, stack_timeout=None,
                                       heartbeat=30, tcp_options={"TCP_KEEPIDLE": 60})
    assert params.socket_timeout > 24 * 3600 and params.stack_timeout > 24 * 3600
    assert params.heartbeat == 30 and params.tcp_options == {"TCP_KEEPIDLE": 60}
    assert pika.ConnectionParameters(heartbeat=lambda conn, offered: 0).heartbeat is None


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"host": 5}, "host"),
    ({"virtual_host": b"/"}, "virtual_host"),
    ({"socket_timeout": "10"}, "socket_timeout"),
    ({"heartbeat": 1.5}, "heartbeat"),
])
def test_parameters_reject_wrong_types_by_name(pika: Any, kwargs: dict[str, Any],
                                               named: str) -> None:
    with pytest.raises(TypeError, match=named):
        pika.ConnectionParameters(**kwargs)


def test_credentials_never_show_the_password(pika: Any) -> None:
    creds = pika.PlainCredentials("user", "s3cret", erase_on_connect=True)
    assert "s3cret" not in repr(creds) and creds.erase_on_connect
    with pytest.raises(TypeError, match="password"):
        pika.PlainCredentials("user", None)


def test_url_parameters(pika: Any) -> None:
    params = pika.URLParameters("amqp://u:p@127.0.0.1:5673/%2Fv?heartbeat=0")
    assert (params.host, params.port, params.virtual_host) == ("127.0.0.1", 5673, "/v")
    with pytest.raises(TypeError, match="url"):
        pika.URLParameters(None)


def test_asynchronous_adapters_are_named_as_missing(pika: Any) -> None:
    with pytest.raises(AttributeError, match="blocking adapter"):
        pika.SelectConnection  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'Nonsense'"):
        pika.Nonsense  # noqa: B018
