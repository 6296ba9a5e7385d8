"""Connection handshake, close handshakes, channels, flow, blocking, confirms and
update-secret, against a scripted server."""

from __future__ import annotations

import gc

import pytest
from amqp_script import (
    GUEST,
    SERVER_PROPERTIES,
    deliver,
    frame,
    new_connection,
    open_channel,
    open_ok,
    opened,
    parse,
    sent_methods,
    start,
    tune,
)

from geamqp.exceptions import (
    AMQPConnectionError,
    ChannelWrongStateError,
    ConnectionClosedByBroker,
    ConnectionClosedByClient,
    ConnectionWrongStateError,
    NoFreeChannels,
    ProbableAccessDeniedError,
    ProbableAuthenticationError,
)
from geamqp.protocol import events as ev
from geamqp.protocol.connection import (
    CAPABILITIES,
    AMQPConnection,
    negotiate_heartbeat,
    negotiate_limit,
)
from geamqp.protocol.fields import decode_table_at
from geamqp.protocol.frames import PROTOCOL_HEADER
from geamqp.protocol.sasl import ExternalCredentials, PlainCredentials
from geamqp.protocol.spec import Basic, Channel, Confirm, Connection, Queue
from geamqp.protocol.state import ChanState, ConnState

# --------------------------------------------------------------------------- handshake


def test_protocol_header_is_sent_first_and_alone() -> None:
    conn = new_connection()
    assert conn.data_to_send() == PROTOCOL_HEADER == b"AMQP\x00\x00\x09\x01"
    assert conn.data_to_send() == b""
    assert conn.state is ConnState.AWAIT_START


def _start_ok(conn: AMQPConnection, mechanisms: bytes) -> Connection.StartOk:
    conn.data_to_send()
    assert conn.receive_data(start(mechanisms)) == []
    [(channel, method)] = sent_methods(conn)
    assert channel == 0 and isinstance(method, Connection.StartOk)
    assert conn.state is ConnState.AWAIT_TUNE
    return method


def test_start_ok_plain_response() -> None:
    conn = new_connection(credentials=PlainCredentials("alice", "s3cr\u00e9t"))
    ok = _start_ok(conn, b"AMQPLAIN PLAIN")
    assert ok.mechanism == "PLAIN"
    assert ok.response == b"\x00alice\x00s3cr\xc3\xa9t"
    assert ok.locale == "en_US"


def test_start_ok_amqplain_when_only_amqplain_offered() -> None:
    conn = new_connection(credentials=PlainCredentials("alice", "pw"))
    ok = _start_ok(conn, b"AMQPLAIN")
    assert ok.mechanism == "AMQPLAIN"
    # A field table without its length prefix.
    table, end = decode_table_at(len(ok.response).to_bytes(4, "big") + ok.response, 0)
    assert table == {"LOGIN": "alice", "PASSWORD": "pw"}
    assert end == len(ok.response) + 4


def test_start_ok_external() -> None:
    conn = new_connection(credentials=ExternalCredentials())
    ok = _start_ok(conn, b"PLAIN EXTERNAL")
    assert ok.mechanism == "EXTERNAL"
    assert ok.response == b""


def test_no_common_mechanism_closes_with_an_error() -> None:
    conn = new_connection(credentials=ExternalCredentials())
    conn.data_to_send()
    [closed] = conn.receive_data(start(b"PLAIN AMQPLAIN"))
    assert isinstance(closed, ev.ConnectionClosed)
    assert isinstance(closed.error, AMQPConnectionError)
    assert "EXTERNAL" in closed.reply_text
    assert conn.state is ConnState.CLOSED
    assert conn.data_to_send() == b""


def test_start_ok_never_shows_the_password() -> None:
    conn = new_connection(credentials=PlainCredentials("alice", "hunter2"))
    ok = _start_ok(conn, b"PLAIN")
    assert "hunter2" not in repr(ok)
    assert "hunter2" not in repr(conn.settings.credentials)


def test_client_properties_advertise_capabilities_and_name() -> None:
    conn = new_connection(connection_name="billing-worker")
    props = _start_ok(conn, b"PLAIN").client_properties
    assert props is not None
    assert props["capabilities"] == {
        "publisher_confirms": True,
        "exchange_exchange_bindings": True,
        "basic.nack": True,
        "consumer_cancel_notify": True,
        "connection.blocked": True,
        "authentication_failure_close": True,
        "per_consumer_qos": True,
    }
    assert set(CAPABILITIES) == set(props["capabilities"])
    assert props["connection_name"] == "billing-worker"
    assert props["product"] == "geamqp"


def test_client_properties_without_a_name() -> None:
    props = _start_ok(new_connection(), b"PLAIN").client_properties
    assert props is not None
    assert "connection_name" not in props


def test_server_version_other_than_0_9_is_refused() -> None:
    conn = new_connection()
    conn.data_to_send()
    with pytest.raises(Exception) as info:
        conn.receive_data(start(version=(0, 8)))
    assert getattr(info.value, "reply_code", None) == 503


@pytest.mark.parametrize(
    ("client", "server", "expected"),
    [(None, 60, 60), (None, 0, 0), (0, 60, 60), (10, 0, 10), (0, 0, 0), (10, 60, 10),
     (60, 10, 10), (30, 30, 30)],
)
def test_heartbeat_negotiation(client: int | None, server: int, expected: int) -> None:
    assert negotiate_heartbeat(client, server) == expected
    conn = new_connection(heartbeat=client)
    conn.receive_data(start() + tune(heartbeat=server))
    tune_ok = [m for _, m in sent_methods(conn) if isinstance(m, Connection.TuneOk)]
    assert [t.heartbeat for t in tune_ok] == [expected]
    [opened_event] = conn.receive_data(open_ok())
    assert isinstance(opened_event, ev.ConnectionOpened)
    assert opened_event.heartbeat == conn.heartbeat == expected


@pytest.mark.parametrize(
    ("client", "server", "expected"),
    [(131072, 0, 131072), (131072, 4096, 4096), (8192, 131072, 8192),
     (131072, 1 << 31, 131072), (131072, 0xFFFFFFFF, 131072)],
)
def test_frame_max_negotiation(client: int, server: int, expected: int) -> None:
    assert negotiate_limit(client, server) == expected
    conn = new_connection(frame_max=client)
    conn.receive_data(start() + tune(frame_max=server))
    [tune_ok] = [m for _, m in sent_methods(conn) if isinstance(m, Connection.TuneOk)]
    assert tune_ok.frame_max == conn.frame_max == expected


@pytest.mark.parametrize(
    ("client", "server", "expected"),
    [(2047, 0, 2047), (2047, 100, 100), (10, 2047, 10), (65535, 65535, 65535)],
)
def test_channel_max_negotiation(client: int, server: int, expected: int) -> None:
    conn = new_connection(channel_max=client)
    conn.receive_data(start() + tune(channel_max=server))
    [tune_ok] = [m for _, m in sent_methods(conn) if isinstance(m, Connection.TuneOk)]
    assert tune_ok.channel_max == conn.channel_max == expected


def test_tune_ok_then_open_with_vhost_then_opened() -> None:
    conn = new_connection(virtual_host="billing", heartbeat=None)
    conn.data_to_send()
    conn.receive_data(start())
    conn.data_to_send()
    assert conn.receive_data(tune(channel_max=100, frame_max=65536, heartbeat=30)) == []
    assert sent_methods(conn) == [(0, Connection.TuneOk(100, 65536, 30)),
                                  (0, Connection.Open("billing"))]
    assert conn.state is ConnState.AWAIT_OPEN_OK
    assert not conn.is_open
    [opened_event] = conn.receive_data(open_ok())
    assert opened_event == ev.ConnectionOpened(SERVER_PROPERTIES, 100, 65536, 30)
    assert conn.is_open
    assert conn.server_properties == SERVER_PROPERTIES
    assert conn.data_to_send() == b""


def test_secure_is_answered_with_the_same_response() -> None:
    conn = new_connection(credentials=PlainCredentials("u", "p"))
    conn.data_to_send()
    conn.receive_data(start(b"PLAIN"))
    conn.data_to_send()
    conn.receive_data(frame(0, Connection.Secure(b"challenge")))
    assert sent_methods(conn) == [(0, Connection.SecureOk(b"\x00u\x00p"))]


# --------------------------------------------------------------------------- close


def test_client_close_then_close_ok() -> None:
    conn = opened()
    assert conn.close(200, "bye") is True
    assert conn.state is ConnState.CLOSING
    assert sent_methods(conn) == [(0, Connection.Close(200, "bye", 0, 0))]
    [closed] = conn.receive_data(frame(0, Connection.CloseOk()))
    assert isinstance(closed, ev.ConnectionClosed)
    assert closed.by_peer is False
    assert closed.reply_code == 200
    assert isinstance(closed.error, ConnectionClosedByClient)
    assert conn.state is ConnState.CLOSED
    assert conn.data_to_send() == b""


def test_close_twice_queues_one_close_frame() -> None:
    conn = opened()
    assert conn.close() is True
    assert conn.close() is False
    assert conn.close(320, "again") is False
    closes = [m for _, m in sent_methods(conn) if isinstance(m, Connection.Close)]
    assert len(closes) == 1


def test_frames_after_client_close_are_dropped_until_close_ok() -> None:
    conn = opened()
    number = open_channel(conn)
    conn.close()
    conn.data_to_send()
    events = conn.receive_data(deliver(number, b"late") + frame(number, Basic.Ack(1))
                               + frame(0, Connection.Blocked("x")))
    assert events == []
    assert conn.data_to_send() == b""
    [closed] = conn.receive_data(frame(0, Connection.CloseOk()))
    assert isinstance(closed, ev.ConnectionClosed)


def test_server_close_is_answered_with_close_ok() -> None:
    conn = opened()
    [closed] = conn.receive_data(frame(0, Connection.Close(320, "CONNECTION_FORCED", 0, 0)))
    assert isinstance(closed, ev.ConnectionClosed)
    assert closed.by_peer is True
    assert (closed.reply_code, closed.reply_text) == (320, "CONNECTION_FORCED")
    assert type(closed.error) is ConnectionClosedByBroker
    assert closed.error.reply_code == 320
    assert sent_methods(conn) == [(0, Connection.CloseOk())]
    assert conn.state is ConnState.CLOSED


def test_frames_after_server_close_in_the_same_chunk_are_ignored() -> None:
    conn = opened()
    number = open_channel(conn)
    events = conn.receive_data(frame(0, Connection.Close(320, "forced", 0, 0))
                               + deliver(number, b"x") + frame(77, Channel.OpenOk()))
    assert [type(e) for e in events] == [ev.ConnectionClosed]
    assert sent_methods(conn) == [(0, Connection.CloseOk())]


def test_crossing_connection_close_is_answered() -> None:
    conn = opened()
    conn.close()
    conn.data_to_send()
    assert conn.receive_data(frame(0, Connection.Close(320, "forced", 0, 0))) == []
    assert sent_methods(conn) == [(0, Connection.CloseOk())]
    assert conn.state is ConnState.CLOSING
    [closed] = conn.receive_data(frame(0, Connection.CloseOk()))
    assert isinstance(closed, ev.ConnectionClosed)


def test_403_during_handshake_is_an_authentication_error() -> None:
    conn = new_connection()
    conn.data_to_send()
    conn.receive_data(start())
    conn.data_to_send()
    [closed] = conn.receive_data(frame(0, Connection.Close(403, "ACCESS_REFUSED", 0, 0)))
    assert isinstance(closed, ev.ConnectionClosed)
    assert type(closed.error) is ProbableAuthenticationError
    assert closed.error.reply_code == 403
    assert sent_methods(conn) == [(0, Connection.CloseOk())]


def test_530_on_open_is_an_access_denied_error() -> None:
    conn = new_connection(virtual_host="nope")
    conn.receive_data(start() + tune())
    conn.data_to_send()
    [closed] = conn.receive_data(frame(0, Connection.Close(530, "NOT_ALLOWED", 10, 40)))
    assert isinstance(closed, ev.ConnectionClosed)
    assert type(closed.error) is ProbableAccessDeniedError
    assert closed.error.reply_code == 530
    assert sent_methods(conn) == [(0, Connection.CloseOk())]


def test_any_close_after_open_is_an_access_denied_error() -> None:
    conn = new_connection(virtual_host="nope")
    conn.receive_data(start() + tune())
    [closed] = conn.receive_data(frame(0, Connection.Close(402, "INVALID_PATH", 10, 40)))
    assert type(closed.error) is ProbableAccessDeniedError  # type: ignore[attr-defined]


def test_any_close_after_start_ok_is_an_authentication_error() -> None:
    conn = new_connection()
    conn.receive_data(start())
    [closed] = conn.receive_data(frame(0, Connection.Close(541, "INTERNAL_ERROR", 0, 0)))
    assert type(closed.error) is ProbableAuthenticationError  # type: ignore[attr-defined]


def test_close_before_start_sends_nothing() -> None:
    conn = new_connection()
    conn.data_to_send()
    assert conn.close() is False
    assert conn.state is ConnState.CLOSED
    assert conn.data_to_send() == b""


def test_operations_on_a_closed_connection_raise() -> None:
    conn = opened()
    conn.receive_data(frame(0, Connection.Close(320, "forced", 0, 0)))
    with pytest.raises(ConnectionWrongStateError):
        conn.open_channel()
    with pytest.raises(ConnectionWrongStateError):
        conn.update_secret(b"t", "r")
    assert conn.receive_data(frame(0, Connection.OpenOk())) == []


# --------------------------------------------------------------------------- channels


def test_channel_open_and_client_close() -> None:
    conn = opened()
    number = conn.open_channel()
    assert number == 1
    assert conn.channel_state(1) is ChanState.OPENING
    assert sent_methods(conn) == [(1, Channel.Open())]
    assert conn.receive_data(frame(1, Channel.OpenOk())) == [ev.ChannelOpened(1)]
    assert conn.channel_state(1) is ChanState.OPEN
    conn.close_channel(1, 200, "done")
    assert conn.channel_state(1) is ChanState.CLOSING
    assert sent_methods(conn) == [(1, Channel.Close(200, "done", 0, 0))]
    [closed] = conn.receive_data(frame(1, Channel.CloseOk()))
    assert closed == ev.ChannelClosed(1, 200, "done", 0, 0, False)
    assert conn.channel_state(1) is ChanState.CLOSED
    assert conn.open_channels == []


def test_channel_closed_by_broker() -> None:
    conn = opened()
    open_channel(conn)
    [closed] = conn.receive_data(frame(1, Channel.Close(404, "NOT_FOUND - no queue", 50, 10)))
    assert closed == ev.ChannelClosed(1, 404, "NOT_FOUND - no queue", 50, 10, True)
    assert sent_methods(conn) == [(1, Channel.CloseOk())]
    assert conn.open_channels == []
    with pytest.raises(ChannelWrongStateError):
        conn.publish(1, "", "q", b"x")
    assert conn.open_channel() == 1  # the number is free again


def test_channel_closed_by_broker_while_opening() -> None:
    conn = opened()
    conn.open_channel()
    conn.data_to_send()
    [closed] = conn.receive_data(frame(1, Channel.Close(504, "CHANNEL_ERROR", 20, 10)))
    assert closed.by_peer  # type: ignore[attr-defined]
    assert sent_methods(conn) == [(1, Channel.CloseOk())]


def test_crossing_channel_closes() -> None:
    conn = opened()
    open_channel(conn)
    conn.close_channel(1)
    conn.data_to_send()
    # The broker closed it at the same time: answer, but keep waiting for our close-ok.
    assert conn.receive_data(frame(1, Channel.Close(406, "PRECONDITION_FAILED", 60, 80))) == []
    assert sent_methods(conn) == [(1, Channel.CloseOk())]
    assert conn.channel_state(1) is ChanState.CLOSING
    assert conn.open_channel() == 2  # 1 is not reused yet
    [closed] = conn.receive_data(frame(1, Channel.CloseOk()))
    assert isinstance(closed, ev.ChannelClosed) and closed.channel == 1
    assert conn.open_channel() == 1


def test_channel_number_reused_only_after_close_ok() -> None:
    conn = opened()
    for _ in range(3):
        open_channel(conn)
    conn.close_channel(2)
    conn.data_to_send()
    assert conn.open_channel() == 4
    with pytest.raises(ChannelWrongStateError):
        conn.open_channel(2)
    conn.receive_data(frame(2, Channel.CloseOk()))
    assert conn.open_channel() == 2


def test_no_free_channels_above_channel_max() -> None:
    conn = opened(tune_args={"channel_max": 3})
    assert [open_channel(conn) for _ in range(3)] == [1, 2, 3]
    with pytest.raises(NoFreeChannels):
        conn.open_channel()
    with pytest.raises(ValueError):
        conn.open_channel(4)
    with pytest.raises(ValueError):
        conn.open_channel(0)
    assert conn.data_to_send() == b""


def test_ten_thousand_open_close_cycles_leave_no_records() -> None:
    conn = opened()
    gc.collect()
    for i in range(10_000):
        number = conn.open_channel()
        assert number == 1
        conn.receive_data(frame(number, Channel.OpenOk()))
        if i % 2:
            conn.close_channel(number)
            conn.receive_data(frame(number, Channel.CloseOk()))
        else:
            conn.receive_data(frame(number, Channel.Close(406, "x", 0, 0)))
        conn.data_to_send()
    assert conn.open_channels == []
    assert conn._channels == {}


def test_frames_for_a_closing_channel_are_dropped() -> None:
    conn = opened()
    open_channel(conn)
    conn.receive_data(frame(1, Basic.Deliver("c", 1, False, "", "q")))  # content pending
    conn.close_channel(1)
    conn.data_to_send()
    stream = (deliver(1, b"body") + frame(1, Basic.Ack(5)) + frame(1, Channel.Flow(False))
              + deliver(1, b"x" * 10, frame_max=4096))
    assert conn.receive_data(stream) == []
    assert conn.data_to_send() == b""  # no flow-ok for a closing channel
    [closed] = conn.receive_data(frame(1, Channel.CloseOk()))
    assert isinstance(closed, ev.ChannelClosed)


def test_channel_flow_is_answered_automatically() -> None:
    conn = opened()
    open_channel(conn)
    [event] = conn.receive_data(frame(1, Channel.Flow(False)))
    assert event == ev.MethodReceived(1, Channel.Flow(False))
    assert sent_methods(conn) == [(1, Channel.FlowOk(False))]
    assert conn.channel(1).flow_active is False
    conn.receive_data(frame(1, Channel.Flow(True)))
    assert sent_methods(conn) == [(1, Channel.FlowOk(True))]
    assert conn.channel(1).flow_active is True


def test_flow_ok_reply_is_reported() -> None:
    conn = opened()
    open_channel(conn)
    conn.send_method(1, Channel.Flow(False))
    assert sent_methods(conn) == [(1, Channel.Flow(False))]
    assert conn.receive_data(frame(1, Channel.FlowOk(False))) == [
        ev.MethodReceived(1, Channel.FlowOk(False))]


def test_methods_and_content_on_an_open_channel() -> None:
    conn = opened()
    open_channel(conn)
    events = conn.receive_data(frame(1, Queue.DeclareOk("amq.gen-1", 3, 1))
                               + deliver(1, b"hello", delivery_tag=7))
    assert events[0] == ev.MethodReceived(1, Queue.DeclareOk("amq.gen-1", 3, 1))
    assert isinstance(events[1], ev.ContentReceived)
    assert events[1].method == Basic.Deliver("ctag", 7, False, "ex", "rk")
    assert events[1].body == b"hello"


# --------------------------------------------------------------------------- blocked


def test_connection_blocked_and_unblocked() -> None:
    conn = opened()
    assert conn.blocked is False
    assert conn.receive_data(frame(0, Connection.Blocked("low on memory"))) == [
        ev.ConnectionBlocked("low on memory")]
    assert conn.blocked is True
    assert conn.receive_data(frame(0, Connection.Unblocked())) == [ev.ConnectionUnblocked()]
    assert conn.blocked is False
    assert conn.data_to_send() == b""


# --------------------------------------------------------------------------- confirms


def test_publish_seqno_numbering_in_confirm_mode() -> None:
    conn = opened()
    open_channel(conn)
    open_channel(conn)
    assert conn.publish(1, "", "q", b"a") == 0  # not in confirm mode
    conn.send_method(1, Confirm.Select())
    conn.receive_data(frame(1, Confirm.SelectOk()))
    assert [conn.publish(1, "", "q", b"x") for _ in range(3)] == [1, 2, 3]
    assert conn.send_content(1, Basic.Publish(0, "", "q"), None, b"y") == 4
    assert conn.publish(2, "", "q", b"other channel") == 0
    conn.send_method(2, Confirm.Select())
    assert conn.publish(2, "", "q", b"z") == 1
    sent = parse(conn.data_to_send())
    publishes = [f for f in sent if isinstance(f.method, Basic.Publish)]
    assert len(publishes) == 7


def test_seqno_restarts_on_a_reopened_channel() -> None:
    conn = opened()
    open_channel(conn)
    conn.send_method(1, Confirm.Select())
    assert conn.publish(1, "", "q", b"x") == 1
    conn.receive_data(frame(1, Channel.Close(406, "x", 0, 0)))
    open_channel(conn, 1)
    conn.send_method(1, Confirm.Select())
    assert conn.publish(1, "", "q", b"x") == 1


def test_acks_and_nacks_from_the_broker_are_reported() -> None:
    conn = opened()
    open_channel(conn)
    events = conn.receive_data(frame(1, Basic.Ack(3, True)) + frame(1, Basic.Nack(4, False)))
    assert events == [ev.MethodReceived(1, Basic.Ack(3, True)),
                      ev.MethodReceived(1, Basic.Nack(4, False, True))]


def test_client_ack_goes_on_the_wire() -> None:
    conn = opened()
    open_channel(conn)
    conn.ack(1, 42, multiple=True)
    assert sent_methods(conn) == [(1, Basic.Ack(42, True))]
    with pytest.raises(ChannelWrongStateError):
        conn.ack(2, 1)


# --------------------------------------------------------------------------- update-secret


def test_update_secret() -> None:
    conn = opened()
    conn.update_secret(b"new-token", "token refresh")
    [(channel, method)] = sent_methods(conn)
    assert channel == 0
    assert method == Connection.UpdateSecret(b"new-token", "token refresh")
    assert "new-token" not in repr(method)
    assert conn.receive_data(frame(0, Connection.UpdateSecretOk())) == [
        ev.MethodReceived(0, Connection.UpdateSecretOk())]


def test_update_secret_needs_an_open_connection() -> None:
    conn = new_connection()
    with pytest.raises(ConnectionWrongStateError):
        conn.update_secret(b"t", "r")
    assert conn.data_to_send() == PROTOCOL_HEADER


def test_credentials_equality_hides_nothing_it_should_not() -> None:
    assert PlainCredentials("a", "b") == PlainCredentials("a", "b")
    assert PlainCredentials("a", "b") != PlainCredentials("a", "c")
    assert "b" not in str(PlainCredentials("a", "b")).replace("PlainCredentials", "")
    assert GUEST.password == "guest"
