"""Calls that cannot succeed fail early and say why (issue 14, point 3, native side).

- A call on a closed channel or connection raises the WrongState error, whatever
  closed it, with the close reason as `__cause__`; closing twice is quiet
  (see `Connection.close`: geamqp.pika raises, as pika does).
- Channels are context managers that close on exit and do not swallow errors.
- A name, routing key, body or secret of the wrong type raises TypeError naming
  the argument before anything is sent; the channel stays usable.
- `socket_timeout=None` / `stack_timeout=None` mean no limit; `channel.flow`;
  `zero_heartbeat_disables`; `process_data_events(None)`.
"""

from __future__ import annotations

from typing import Any

import pytest

import geamqp
from geamqp import (
    ChannelClosedByBroker,
    ChannelClosedByClient,
    ChannelWrongStateError,
    ConnectionClosedByClient,
    ConnectionWrongStateError,
)


@pytest.fixture
def conn(broker: Any) -> Any:
    with geamqp.connect(broker.url(), recover=False) as connection:
        yield connection


def test_calls_on_a_closed_channel_raise_wrong_state_with_the_reason(conn: Any) -> None:
    ch = conn.channel()
    ch.close()
    ch.close()  # quiet
    for call in (lambda: ch.queue_declare(""), lambda: ch.basic_publish("", "q", b"x"),
                 lambda: ch.basic_ack(1), lambda: ch.basic_get("q")):
        with pytest.raises(ChannelWrongStateError) as info:
            call()
        assert isinstance(info.value.__cause__, ChannelClosedByClient)


def test_calls_on_a_closed_connection_raise_wrong_state_with_the_reason(broker: Any) -> None:
    conn = geamqp.connect(broker.url(), recover=False)
    ch = conn.channel()
    conn.close()
    conn.close()  # quiet
    with pytest.raises(ConnectionWrongStateError) as info:
        conn.channel()
    assert isinstance(info.value.__cause__, ConnectionClosedByClient)
    with pytest.raises(ConnectionWrongStateError):
        conn.update_secret("new", "rotation")
    with pytest.raises(ChannelWrongStateError) as later:
        ch.queue_declare("")
    assert isinstance(later.value.__cause__, ConnectionClosedByClient)


def test_a_channel_is_a_context_manager_that_does_not_swallow_errors(
        conn: Any, unique_name: str) -> None:
    with conn.channel() as ch:
        ch.queue_declare("", exclusive=True)
    assert ch.is_closed
    with pytest.raises(ChannelClosedByBroker) as info, conn.channel() as ch2:
        ch2.queue_declare(unique_name, passive=True)
    assert info.value.reply_code == 404 and ch2.is_closed


@pytest.mark.parametrize(("call", "argument"), [
    (lambda ch: ch.queue_declare([1, 2, 3]), "queue"),
    (lambda ch: ch.exchange_declare(1), "exchange"),
    (lambda ch: ch.queue_bind("q", b"amq.direct"), "exchange"),
    (lambda ch: ch.basic_publish("", 5, b"x"), "routing_key"),
    (lambda ch: ch.basic_publish(None, "q", b"x"), "exchange"),
    (lambda ch: ch.basic_publish("", "q", 12345), "body"),
    (lambda ch: ch.basic_consume(7, lambda *a: None), "queue"),
    (lambda ch: ch.basic_get(("q",)), "queue"),
    (lambda ch: ch.connection.update_secret(1, "rotation"), "new_secret"),
])
def test_wrong_types_raise_type_error_naming_the_argument(
        conn: Any, call: Any, argument: str) -> None:
    ch = conn.channel()
    with pytest.raises(TypeError, match=rf"^{argument} must be"):
        call(ch)
    assert ch.is_open and ch.queue_declare("", exclusive=True).queue  # nothing was sent


def test_no_timeouts_mean_no_limit(broker: Any) -> None:
    params = geamqp.URLParameters(broker.url())
    params = geamqp.ConnectionParameters(host=params.host, port=params.port,
                                         socket_timeout=None, stack_timeout=None)
    with geamqp.connect(params, recover=False) as conn:
        assert conn.channel().queue_declare("", exclusive=True).queue


def test_flow_true_is_confirmed(conn: Any) -> None:
    assert conn.channel().flow(True) is True


def test_zero_heartbeat_disables_only_when_asked(broker: Any) -> None:
    url = geamqp.URLParameters(broker.url())
    negotiated = {}
    for disables in (False, True):
        params = geamqp.ConnectionParameters(host=url.host, port=url.port, heartbeat=0,
                                             zero_heartbeat_disables=disables)
        with geamqp.connect(params, recover=False) as conn:
            negotiated[disables] = conn._link.engine.heartbeat  # what tune-ok carried
    assert negotiated[True] == 0  # pika's rule: the client's 0 turns heartbeats off
    assert negotiated[False] > 0  # RabbitMQ's rule: 0 takes the server's proposal


def test_process_data_events_none_only_yields(conn: Any) -> None:
    conn.process_data_events(None)
    conn.process_data_events(0)
