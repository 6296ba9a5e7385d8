"""Closed connections and channels, context managers and bad arguments, as pika has them:
a second close() raises the WrongState error; every call on a closed object raises it
with the close reason chained; the call that first observes a broker's close raises
that close itself; non-string names raise TypeError naming the argument."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.timeout(30)


def test_second_close_raises(pika: Any, conn: Any, ch: Any) -> None:
    ch.close()
    with pytest.raises(pika.exceptions.ChannelWrongStateError) as info:
        ch.close()
    assert isinstance(info.value.__cause__, pika.exceptions.ChannelClosedByClient)
    conn.close()
    with pytest.raises(pika.exceptions.ConnectionWrongStateError) as conn_info:
        conn.close()
    assert isinstance(conn_info.value.__cause__, pika.exceptions.ConnectionClosedByClient)


def test_every_call_on_a_closed_channel_raises_wrong_state(pika: Any, ch: Any,
                                                           queue: str) -> None:
    ch.close()
    calls = [
        lambda: ch.basic_publish("", queue, b"x"),
        lambda: ch.queue_declare(queue, passive=True),
        lambda: ch.basic_get(queue),
        lambda: ch.basic_ack(1),
        lambda: ch.basic_consume(queue, lambda *a: None),
        lambda: ch.start_consuming(),
        lambda: next(ch.consume(queue)),
        lambda: ch.confirm_delivery(),
        lambda: ch.flow(True),
    ]
    for call in calls:
        with pytest.raises(pika.exceptions.ChannelWrongStateError) as info:
            call()
        assert isinstance(info.value.__cause__, pika.exceptions.ChannelClosedByClient)


def test_broker_close_is_raised_once_then_wrong_state(pika: Any, conn: Any, ch: Any,
                                                      unique_name: str) -> None:
    ch.basic_publish(unique_name, "rk", b"to an exchange that does not exist")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as first:
        ch.queue_declare(unique_name, auto_delete=True)
    assert first.value.reply_code == 404
    with pytest.raises(pika.exceptions.ChannelWrongStateError) as later:
        ch.basic_publish("", "q", b"x")
    assert later.value.__cause__ is first.value
    assert conn.is_open and conn.channel().is_open  # only the channel closed


def test_passive_declare_404_then_wrong_state(pika: Any, ch: Any, unique_name: str) -> None:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as first:
        ch.queue_declare(unique_name, passive=True)
    with pytest.raises(pika.exceptions.ChannelWrongStateError) as later:
        ch.queue_declare(unique_name, passive=True)
    assert later.value.__cause__ is first.value


def test_calls_on_a_closed_connection(pika: Any, conn: Any, ch: Any) -> None:
    conn.close()
    assert conn.is_closed and ch.is_closed
    for call in (conn.channel, conn.process_data_events, lambda: conn.sleep(0.01),
                 lambda: conn.update_secret("s", "r"), conn.close):
        with pytest.raises(pika.exceptions.ConnectionWrongStateError) as info:
            call()
        assert isinstance(info.value.__cause__, pika.exceptions.ConnectionClosedByClient)
    with pytest.raises(pika.exceptions.ChannelWrongStateError):
        ch.basic_publish("", "q", b"x")


def test_an_unexpected_loss_is_raised_once_then_wrong_state(pika: Any, proxy: Any) -> None:
    conn = pika.BlockingConnection(pika.ConnectionParameters(proxy.host, proxy.port))
    ch = conn.channel()
    proxy.reset_all()
    with pytest.raises(pika.exceptions.StreamLostError):
        conn.sleep(5)  # the call that sees the loss raises it, as pika's I/O would
    assert conn.is_closed
    with pytest.raises(pika.exceptions.ConnectionWrongStateError) as info:
        conn.channel()
    assert isinstance(info.value.__cause__, pika.exceptions.StreamLostError)
    with pytest.raises(pika.exceptions.ChannelWrongStateError) as ch_info:
        ch.basic_get("q")
    assert isinstance(ch_info.value.__cause__, pika.exceptions.StreamLostError)


def test_channel_context_manager(pika: Any, conn: Any, unique_name: str) -> None:
    with conn.channel() as ch:
        ch.queue_declare(unique_name, auto_delete=True)
    assert ch.is_closed
    with pytest.raises(pika.exceptions.ChannelClosedByBroker), conn.channel() as ch2:
        ch2.queue_declare(unique_name + "-missing", passive=True)
    assert ch2.is_closed and conn.is_open


def test_connection_context_manager(pika: Any, params: Any) -> None:
    with pika.BlockingConnection(params) as conn:
        conn.channel()
    assert conn.is_closed


def test_no_limit_timeouts_connect(pika: Any, broker: Any) -> None:
    params = pika.ConnectionParameters(broker.host, broker.port, socket_timeout=None,
                                       stack_timeout=None, blocked_connection_timeout=None)
    with pika.BlockingConnection(params) as conn:
        assert conn.channel().queue_declare("", exclusive=True).method.queue


@pytest.mark.parametrize(("call", "named"), [
    (lambda ch: ch.queue_declare(queue=[1, 2, 3]), "queue"),
    (lambda ch: ch.basic_publish(exchange=1, routing_key="k", body=b""), "exchange"),
    (lambda ch: ch.basic_publish(exchange="", routing_key=5, body=b""), "routing_key"),
    (lambda ch: ch.basic_publish(exchange="", routing_key="k", body=5), "body"),
    (lambda ch: ch.queue_bind("q", None), "exchange"),
    (lambda ch: ch.exchange_declare(exchange=b"x"), "exchange"),
    (lambda ch: ch.exchange_bind(1, "s"), "destination"),
    (lambda ch: ch.basic_consume("q", "not callable"), "on_message_callback"),
    (lambda ch: ch.basic_consume("q", print, consumer_tag=7), "consumer_tag"),
    (lambda ch: ch.basic_get(None), "queue"),
    (lambda ch: ch.connection.update_secret(1, "reason"), "new_secret"),
    (lambda ch: ch.connection.update_secret("s", None), "reason"),
    (lambda ch: ch.connection.call_later(1, None), "callback"),
    (lambda ch: ch.connection.process_data_events("1"), "time_limit"),
])
def test_wrong_types_raise_type_error_naming_the_argument(ch: Any, call: Any,
                                                          named: str) -> None:
    with pytest.raises(TypeError, match=named):
        call(ch)
    assert ch.is_open  # nothing was sent


def test_failed_connects_raise_pikas_exceptions(pika: Any, broker: Any, proxy: Any) -> None:
    proxy.refuse(True)
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika.ConnectionParameters(proxy.host, proxy.port))
    wrong = pika.ConnectionParameters(broker.host, broker.port,
                                      credentials=pika.PlainCredentials("guest", "wrong"))
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as info:
        pika.BlockingConnection(wrong)
    assert "wrong" not in str(info.value) and "wrong" not in repr(wrong)
    with pytest.raises(ValueError, match="empty"):
        pika.BlockingConnection([])
    with pytest.raises(TypeError, match="parameters"):
        pika.BlockingConnection("amqp://guest:guest@127.0.0.1/")
