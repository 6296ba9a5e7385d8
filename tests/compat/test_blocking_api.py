"""pika's BlockingConnection / BlockingChannel behaviour, as pika documents it, on the
real broker through `geamqp.pika`.

Each expectation here was also checked against pika 1.x on the same broker.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import gevent
import pytest
from support import broker as broker_ctl

from geamqp.pika._threads import _os_thread_ident

pytestmark = pytest.mark.timeout(30)


def wait_delivered(queue: str, n: int) -> None:
    """The broker has handed `n` messages of `queue` to the client (unacked)."""
    broker_ctl.wait_until(
        lambda: (s := broker_ctl.list_queue(queue)) is not None
        and s.messages_unacknowledged == n, timeout=10, what=f"{n} unacked on {queue}")


def wait_ready(queue: str, n: int) -> None:
    """`n` messages of `queue` are ready (requeued ones are counted a moment later)."""
    broker_ctl.wait_until(
        lambda: (s := broker_ctl.list_queue(queue)) is not None and s.messages_ready == n,
        timeout=10, what=f"{n} ready on {queue}")


def publish(ch: Any, queue: str, *bodies: bytes) -> None:
    for body in bodies:
        ch.basic_publish("", queue, body)


# ---------------------------------------------------------------------- RPC results


def test_rpc_methods_return_frames(pika: Any, ch: Any, unique_name: str) -> None:
    declared = ch.queue_declare(unique_name, auto_delete=True)
    assert isinstance(declared, pika.frame.Method)
    assert isinstance(declared.method, pika.spec.Queue.DeclareOk)
    assert declared.method.queue == unique_name and declared.channel_number == ch.channel_number
    ex = ch.exchange_declare(unique_name, pika.exchange_type.ExchangeType.fanout,
                             auto_delete=True)
    assert isinstance(ex.method, pika.spec.Exchange.DeclareOk)
    assert isinstance(ch.queue_bind(unique_name, unique_name).method, pika.spec.Queue.BindOk)
    assert isinstance(ch.tx_select().method, pika.spec.Tx.SelectOk)
    ch.basic_publish(unique_name, "", b"one")
    assert isinstance(ch.tx_commit().method, pika.spec.Tx.CommitOk)
    assert ch.queue_declare(unique_name, passive=True).method.message_count == 1
    assert ch.queue_purge(unique_name).method.message_count == 1
    assert isinstance(ch.tx_rollback().method, pika.spec.Tx.RollbackOk)
    assert isinstance(ch.queue_unbind(unique_name, unique_name).method,
                      pika.spec.Queue.UnbindOk)
    assert isinstance(ch.exchange_delete(unique_name).method, pika.spec.Exchange.DeleteOk)
    assert ch.queue_delete(unique_name).method.message_count == 0
    assert ch.basic_qos(prefetch_count=5) is None


def test_basic_get(pika: Any, ch: Any, queue: str) -> None:
    assert ch.basic_get(queue) == (None, None, None)
    props = pika.BasicProperties(content_type="text/plain", headers={"k": 1},
                                 delivery_mode=pika.DeliveryMode.Persistent)
    ch.basic_publish("", queue, "héllo", properties=props)
    method, properties, body = ch.basic_get(queue, auto_ack=True)
    assert isinstance(method, pika.spec.Basic.GetOk)
    assert (method.delivery_tag, method.routing_key, method.message_count) == (1, queue, 0)
    assert (properties.content_type, properties.headers, properties.delivery_mode) == (
        "text/plain", {"k": 1}, 2)
    assert body == "héllo".encode()


def test_capabilities_come_from_the_broker(conn: Any) -> None:
    assert conn.basic_nack_supported and conn.consumer_cancel_notify_supported
    assert conn.exchange_exchange_bindings_supported and conn.publisher_confirms_supported
    assert conn.publisher_confirms is True  # pika's legacy alias


def test_flow(ch: Any) -> None:
    assert ch.flow(True) is True
    with pytest.raises(NotImplementedError, match="basic_qos"):
        ch.flow(False)
    assert ch.is_open


# ---------------------------------------------------------------------- when callbacks run


def test_consumer_callbacks_run_only_inside_dispatching_calls(ch: Any, conn: Any,
                                                               queue: str) -> None:
    """Messages received while the app does other things wait for process_data_events,
    and then run in the caller's greenlet and OS thread."""
    seen: list[tuple[bytes, Any, int]] = []
    ch.basic_consume(queue, lambda c, m, p, b: seen.append(
        (b, gevent.getcurrent(), _os_thread_ident())))
    publish(ch, queue, b"a", b"b")
    wait_delivered(queue, 2)
    ch.queue_declare(queue, passive=True)  # other blocking calls do not dispatch
    gevent.sleep(0.05)
    assert seen == []
    conn.process_data_events(time_limit=0)
    assert [s[0] for s in seen] == [b"a", b"b"]
    assert all(s[1] is gevent.getcurrent() and s[2] == _os_thread_ident() for s in seen)


def test_process_data_events_time_limits(conn: Any, ch: Any, queue: str) -> None:
    started = time.monotonic()
    conn.process_data_events()  # 0: nothing ready, returns at once
    conn.process_data_events(0)
    assert time.monotonic() - started < 0.2
    started = time.monotonic()
    conn.process_data_events(0.3)
    assert 0.25 < time.monotonic() - started < 2
    got: list[bytes] = []
    ch.basic_consume(queue, lambda c, m, p, b: got.append(b))
    publish(ch, queue, b"x")
    started = time.monotonic()
    conn.process_data_events(10)  # returns once something was dispatched
    assert got == [b"x"] and time.monotonic() - started < 5
    fired: list[int] = []
    conn.call_later(0.2, lambda: fired.append(1))
    started = time.monotonic()
    conn.process_data_events(None)  # blocks until a callback was dispatched
    assert fired == [1] and 0.15 < time.monotonic() - started < 5


def test_sleep_dispatches_and_lasts(conn: Any) -> None:
    fired: list[float] = []
    started = time.monotonic()
    conn.call_later(0.05, lambda: fired.append(time.monotonic() - started))
    conn.sleep(0.3)
    assert len(fired) == 1 and time.monotonic() - started >= 0.3
    with pytest.raises(ValueError):
        conn.sleep(-1)


def test_call_later_and_remove_timeout(conn: Any) -> None:
    ran: list[str] = []
    removed = conn.call_later(0.05, lambda: ran.append("removed"))
    conn.remove_timeout(removed)
    handle: list[Any] = []

    def removes_itself() -> None:
        ran.append("self")
        conn.remove_timeout(handle[0])  # from inside its own callback: no error

    handle.append(conn.call_later(0.01, removes_itself))
    fired_not_dispatched = conn.call_later(0.01, lambda: ran.append("fired"))
    gevent.sleep(0.1)  # the timers fire, but nothing dispatches outside pika's calls
    assert ran == []
    conn.remove_timeout(fired_not_dispatched)
    conn.sleep(0.2)
    assert ran == ["self"]
    conn.remove_timeout(handle[0])  # on a timer that already ran: no error
    assert conn.add_timeout(0, lambda: ran.append("legacy")) is not None
    conn.process_data_events(1)
    assert ran == ["self", "legacy"]


def test_add_callback_threadsafe_runs_in_the_connection_thread(conn: Any) -> None:
    where: list[int] = []
    main = _os_thread_ident()

    def worker() -> None:
        for _ in range(25):
            conn.add_callback_threadsafe(lambda: where.append(_os_thread_ident()))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while len(where) < 100 and time.monotonic() < deadline:
        conn.process_data_events(0.1)
    for thread in threads:
        thread.join(5)
    assert where == [main] * 100
    conn.close()
    with pytest.raises(Exception, match="closed") as info:
        conn.add_callback_threadsafe(lambda: None)
    assert type(info.value).__name__ == "ConnectionWrongStateError"


# ---------------------------------------------------------------------- consuming


@pytest.mark.parametrize("closes", ["channel", "connection"])
def test_start_consuming_returns_when_a_callback_closes(conn: Any, ch: Any, queue: str,
                                                        closes: str) -> None:
    def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
        channel.basic_ack(method.delivery_tag)
        (channel if closes == "channel" else conn).close()

    ch.basic_consume(queue, on_message)
    publish(ch, queue, b"1", b"2")
    ch.start_consuming()  # returns normally
    assert ch.is_closed and conn.is_open == (closes == "channel")


def test_stop_consuming_in_a_callback_requeues_what_was_not_dispatched(
        pika: Any, conn: Any, ch: Any, queue: str) -> None:
    ch.basic_qos(prefetch_count=10)
    ch.confirm_delivery()
    publish(ch, queue, *[b"%d" % i for i in range(5)])
    got: list[bytes] = []

    def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
        got.append(body)
        channel.stop_consuming()

    ch.basic_consume(queue, on_message)
    wait_delivered(queue, 5)
    ch.start_consuming()
    assert got == [b"0"] and ch.consumer_tags == []
    wait_ready(queue, 4)


def test_basic_cancel_returns_undispatched_auto_ack_messages(conn: Any, ch: Any,
                                                             queue: str) -> None:
    tag = ch.basic_consume(queue, lambda *a: pytest.fail("dispatched"), auto_ack=True)
    publish(ch, queue, b"a", b"b", b"c")
    broker_ctl.wait_until(lambda: (s := broker_ctl.list_queue(queue)) is not None
                          and s.messages_ready == 0, what="all delivered")
    ch.queue_declare(queue, passive=True)  # the deliveries came before this reply
    messages = ch.basic_cancel(tag)
    assert [body for _, _, body in messages] == [b"a", b"b", b"c"]
    assert [m.delivery_tag for m, _, _ in messages] == [1, 2, 3]
    assert ch.basic_cancel(tag) == []  # unknown now: warns, returns []


def test_basic_cancel_of_a_manual_ack_consumer_requeues(ch: Any, queue: str) -> None:
    tag = ch.basic_consume(queue, lambda *a: pytest.fail("dispatched"))
    publish(ch, queue, b"a", b"b")
    wait_delivered(queue, 2)
    assert ch.basic_cancel(tag) == []
    wait_ready(queue, 2)


def test_callback_exception_comes_out_of_start_consuming(ch: Any, queue: str) -> None:
    got: list[bytes] = []

    def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
        got.append(body)
        if body == b"boom":
            raise RuntimeError("handler failed")
        channel.stop_consuming()

    ch.basic_consume(queue, on_message, auto_ack=True)
    publish(ch, queue, b"boom", b"ok")
    with pytest.raises(RuntimeError, match="handler failed"):
        ch.start_consuming()
    ch.start_consuming()  # carries on with the next message
    assert got == [b"boom", b"ok"]


def test_start_consuming_inside_a_callback_is_refused(pika: Any, ch: Any, queue: str) -> None:
    errors: list[BaseException] = []

    def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
        try:
            channel.start_consuming()
        except pika.exceptions.ReentrancyError as exc:
            errors.append(exc)
        channel.stop_consuming()

    ch.basic_consume(queue, on_message, auto_ack=True)
    publish(ch, queue, b"x")
    ch.start_consuming()
    assert len(errors) == 1


def test_on_cancel_callback_gets_a_frame_and_start_consuming_ends(
        pika: Any, conn: Any, ch: Any, unique_name: str) -> None:
    ch.queue_declare(unique_name, auto_delete=False)
    frames: list[Any] = []
    ch.add_on_cancel_callback(frames.append)
    tag = ch.basic_consume(unique_name, lambda *a: None)
    conn.channel().queue_delete(unique_name)
    ch.start_consuming()  # the broker's cancel leaves no consumer
    assert len(frames) == 1 and isinstance(frames[0], pika.frame.Method)
    assert isinstance(frames[0].method, pika.spec.Basic.Cancel)
    assert frames[0].method.consumer_tag == tag and ch.consumer_tags == []


def test_consume_generator(conn: Any, ch: Any, queue: str) -> None:
    publish(ch, queue, b"1")
    seen: list[Any] = []
    started = time.monotonic()
    for method, _properties, body in ch.consume(queue, inactivity_timeout=0.2):
        seen.append(body)
        if body is None:
            assert method is None
            break
    assert seen == [b"1", None] and time.monotonic() - started >= 0.2
    ch.basic_ack(1)
    publish(ch, queue, b"2", b"3")
    wait_delivered(queue, 2)
    ch.queue_declare(queue, passive=True)
    assert ch.get_waiting_message_count() == 2
    with pytest.raises(ValueError, match="different params"):
        next(ch.consume(queue, auto_ack=True))
    resumed = ch.consume(queue, inactivity_timeout=0.2)  # same params: same consumer
    assert next(resumed)[2] == b"2"
    assert ch.cancel() == 0 and ch.get_waiting_message_count() == 0
    wait_ready(queue, 1)  # "3" requeued; "2" was handed out and waits for its ack


def test_consume_generator_ends_on_a_broker_cancel(conn: Any, ch: Any,
                                                   unique_name: str) -> None:
    ch.queue_declare(unique_name)
    publish(ch, unique_name, b"1", b"2")
    bodies = []
    for _method, _properties, body in ch.consume(unique_name, auto_ack=True):
        bodies.append(body)
        if len(bodies) == 2:
            conn.channel().queue_delete(unique_name)
    assert bodies == [b"1", b"2"] and ch.consumer_tags == []


# ---------------------------------------------------------------------- publishing


def test_unroutable_in_confirm_mode_raises_and_runs_return_callbacks(
        pika: Any, conn: Any, ch: Any, unique_name: str) -> None:
    returned: list[tuple[Any, ...]] = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append((c, m.reply_code, b)))
    ch.confirm_delivery()
    ch.confirm_delivery()  # twice: logged, no error
    with pytest.raises(pika.exceptions.UnroutableError) as info:
        ch.basic_publish("amq.direct", unique_name, b"lost", mandatory=True)
    assert info.value.messages[0].method.reply_text == "NO_ROUTE"
    assert returned == []  # like pika: at the next dispatch
    conn.process_data_events(1)
    assert returned == [(ch, 312, b"lost")]
    ch.basic_publish("amq.direct", unique_name, b"not mandatory")  # acked, no error


def test_return_without_confirms_is_dispatched(conn: Any, ch: Any, unique_name: str) -> None:
    returned: list[bytes] = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append(b))
    ch.basic_publish("amq.direct", unique_name, b"back", mandatory=True)
    deadline = time.monotonic() + 5
    while not returned and time.monotonic() < deadline:
        conn.process_data_events(0.1)
    assert returned == [b"back"]


# ---------------------------------------------------------------------- heartbeats, recovery


def _broker_heartbeat(name: str) -> int:
    rows = broker_ctl.rabbitmqctl("list_connections", "client_properties", "timeout",
                                  "--quiet", "--no-table-headers")
    for line in rows.splitlines():
        if name in line:
            return int(line.rsplit("\t", 1)[1])
    raise LookupError(name)


def test_heartbeat_is_negotiated(pika: Any, broker: Any, unique_name: str) -> None:
    params = pika.ConnectionParameters(broker.host, broker.port, heartbeat=7)
    with pika.BlockingConnection(params, name=unique_name):
        assert broker_ctl.wait_until(lambda: _broker_heartbeat(unique_name) == 7,
                                     what="heartbeat 7")


def test_heartbeats_survive_a_slow_cooperative_handler(pika: Any, broker: Any,
                                                       unique_name: str) -> None:
    """A handler that yields (gevent.sleep, or time.sleep when monkey-patched) for three
    heartbeat intervals: geamqp's reader keeps answering, the ack goes through."""
    params = pika.ConnectionParameters(broker.host, broker.port, heartbeat=1)
    with pika.BlockingConnection(params, name=unique_name) as conn:
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue

        def slow(channel: Any, method: Any, properties: Any, body: bytes) -> None:
            gevent.sleep(3)
            channel.basic_ack(method.delivery_tag)
            channel.stop_consuming()

        ch.basic_consume(queue, slow)
        ch.basic_publish("", queue, b"slow")
        ch.start_consuming()
        assert conn.is_open and _broker_heartbeat(unique_name) == 1
        wait_delivered(queue, 0)  # the ack sent after the slow work was taken


@pytest.mark.parametrize("heartbeat", [
    0,
    pytest.param(lambda conn, offered: 0, marks=pytest.mark.xfail(
        strict=True, reason="a heartbeat callable is not supported by geamqp.pika (the "
        "protocol core negotiates with an int); the broker's interval is used")),
])
def test_heartbeat_zero_disables_heartbeats(pika: Any, broker: Any, unique_name: str,
                                            heartbeat: Any) -> None:
    params = pika.ConnectionParameters(broker.host, broker.port, heartbeat=heartbeat)
    with pika.BlockingConnection(params, name=unique_name):
        broker_ctl.wait_until(lambda: _broker_heartbeat(unique_name) is not None,
                              what="the connection")
        assert _broker_heartbeat(unique_name) == 0


@pytest.mark.parametrize("recover", [False, True])
def test_recovery_only_when_asked(pika: Any, proxy: Any, params: Any, unique_name: str,
                                  recover: bool) -> None:
    """Off by default, as pika never recovers; ``recover=True`` turns geamqp's on."""
    conn = pika.BlockingConnection(pika.ConnectionParameters(proxy.host, proxy.port),
                                   recover=recover, recovery_delay_min=0.05)
    direct = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        ch.queue_declare(unique_name)
        got: list[bytes] = []

        def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
            got.append(body)
            channel.basic_ack(method.delivery_tag)
            channel.stop_consuming()

        ch.basic_consume(unique_name, on_message)
        proxy.reset_all()
        if not recover:
            with pytest.raises(pika.exceptions.StreamLostError):
                ch.start_consuming()
            assert conn.is_closed
            return
        direct.channel().basic_publish("", unique_name, b"after the reset")
        ch.start_consuming()
        assert got == [b"after the reset"] and conn.is_open
    finally:
        direct.channel().queue_delete(unique_name)
        direct.close()
        if conn.is_open:
            conn.close()
