"""Publisher confirms against the real RabbitMQ (RELIABILITY 27, 28).

Ordering claims (the return before the ack, the ack before `basic_publish`
returns) are checked by recording what the channel's reader-side handlers saw,
in order, on the real wire traffic.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator

import gevent
import pytest
from channel_helpers import Names, drain_queue
from gevent.event import Event

import geamqp
import geamqp._transport
from geamqp.consumer import Confirmation, ReturnedMessage
from geamqp.exceptions import ChannelClosedByBroker, NackError, UnroutableError

REJECT_PUBLISH = {"x-max-length": 1, "x-overflow": "reject-publish"}


@pytest.fixture
def names(broker) -> Iterator[Names]:
    made = Names(broker.url(), "confirms")
    yield made
    made.cleanup()


@pytest.fixture
def conn(broker) -> Iterator[geamqp.Connection]:
    connection = geamqp.connect(broker.url(), name=f"test-confirms-{uuid.uuid4().hex[:8]}",
                                recover=False)
    yield connection
    connection.close()


@pytest.fixture
def ch(conn: geamqp.Connection) -> geamqp.Channel:
    channel = conn.channel()
    channel.confirm_delivery()
    return channel


def record_broker_replies(ch: geamqp.Channel) -> list[tuple]:
    """Wrap the channel's reader-side handlers: returns and acks/nacks, in arrival order."""
    seen: list[tuple] = []
    on_confirm, on_return = ch._on_confirm, ch._on_return

    def confirm(tag: int, multiple: bool, acked: bool) -> None:
        seen.append(("ack" if acked else "nack", tag, multiple))
        on_confirm(tag, multiple, acked)

    def returned(method, properties, body) -> None:
        seen.append(("return", method.reply_code, body))
        on_return(method, properties, body)

    ch._on_confirm = confirm  # type: ignore[method-assign]
    ch._on_return = returned  # type: ignore[method-assign]
    return seen


def test_confirm_delivery_publish_blocks_until_acked(ch, names):
    queue = names.queue()
    ch.queue_declare(queue)
    assert ch.publisher_confirms
    ch.confirm_delivery()  # twice is harmless
    seen = record_broker_replies(ch)
    assert ch.basic_publish("", queue, b"one") is None
    seen.append("publish returned")
    assert seen == [("ack", 1, False), "publish returned"]
    assert ch._confirms == {}
    assert drain_queue(ch, queue) == [b"one"]  # acked means routed and enqueued


def test_wait_false_returns_a_confirmation(ch, names):
    queue = names.queue()
    ch.queue_declare(queue)
    confirmation = ch.basic_publish("", queue, "text body", wait=False)
    assert isinstance(confirmation, Confirmation)
    assert confirmation.seqno == 1
    assert confirmation.wait(timeout=5) is True
    assert confirmation.done()
    assert confirmation.wait(timeout=0) is True  # resolved for good
    assert "acked" in repr(confirmation)
    assert drain_queue(ch, queue) == [b"text body"]


def test_wait_for_confirms_waits_for_every_outstanding_publish(ch, names):
    queue = names.queue()
    ch.queue_declare(queue)
    assert ch.wait_for_confirms(timeout=5) is True  # nothing outstanding
    confirmations = [ch.basic_publish("", queue, str(i), wait=False) for i in range(50)]
    assert ch.wait_for_confirms(timeout=10) is True
    assert all(c.done() for c in confirmations)
    assert ch._confirms == {}
    assert drain_queue(ch, queue) == [str(i).encode() for i in range(50)]


def test_mandatory_unroutable_publish_raises_unroutable_error(ch, names):
    exchange = names.exchange()
    ch.exchange_declare(exchange, "direct")
    seen = record_broker_replies(ch)
    properties = geamqp.BasicProperties(message_id="lost-1")
    with pytest.raises(UnroutableError) as info:
        ch.basic_publish(exchange, "nowhere", b"lost", properties=properties, mandatory=True)
    [returned] = info.value.messages
    assert isinstance(returned, ReturnedMessage)
    assert returned.method.reply_code == 312
    assert returned.method.reply_text == "NO_ROUTE"
    assert (returned.method.exchange, returned.method.routing_key) == (exchange, "nowhere")
    assert returned.body == b"lost"
    assert returned.properties.message_id == "lost-1"
    # RabbitMQ sends basic.return before basic.ack for the same publish.
    assert seen == [("return", 312, b"lost"), ("ack", 1, False)]
    assert ch.is_open


def test_unroutable_without_mandatory_is_simply_acked(ch, names):
    exchange = names.exchange()
    ch.exchange_declare(exchange, "direct")
    assert ch.basic_publish(exchange, "nowhere", b"dropped") is None


def test_unroutable_futures_and_wait_for_confirms(ch, names):
    exchange, queue = names.exchange(), names.queue()
    ch.exchange_declare(exchange, "direct")
    ch.queue_declare(queue)
    ch.queue_bind(queue, exchange, routing_key="here")
    # identical unroutable messages: each return claims its own publish
    lost = [ch.basic_publish(exchange, "nowhere", b"same", mandatory=True, wait=False)
            for _ in range(2)]
    kept = ch.basic_publish(exchange, "here", b"same", mandatory=True, wait=False)
    with pytest.raises(UnroutableError) as info:
        ch.wait_for_confirms(timeout=5)
    assert [m.body for m in info.value.messages] == [b"same", b"same"]
    for confirmation in lost:
        with pytest.raises(UnroutableError):
            confirmation.wait(5)
    assert kept.wait(5) is True
    assert drain_queue(ch, queue) == [b"same"]


def test_broker_nack_raises_nack_error(ch, names):
    queue = names.queue()
    ch.queue_declare(queue, arguments=REJECT_PUBLISH)
    seen = record_broker_replies(ch)
    ch.basic_publish("", queue, b"fits")
    with pytest.raises(NackError) as info:
        ch.basic_publish("", queue, b"overflows")
    [message] = info.value.messages
    assert message.body == b"overflows"
    assert message.method.routing_key == queue
    assert [reply[:2] for reply in seen] == [("ack", 1), ("nack", 2)]
    assert ch.is_open  # a nack is not a channel error

    futures = [ch.basic_publish("", queue, str(i), wait=False) for i in range(3)]
    with pytest.raises(NackError) as info:
        ch.wait_for_confirms(timeout=5)
    assert sorted(m.body for m in info.value.messages) == [b"0", b"1", b"2"]
    assert all(f.done() for f in futures)
    assert drain_queue(ch, queue) == [b"fits"]


def test_publish_to_missing_exchange_fails_with_the_channel_error(conn, ch, names):
    with pytest.raises(ChannelClosedByBroker) as info:
        ch.basic_publish(names.exchange(), "key", b"x")
    assert info.value.reply_code == 404
    assert ch.is_closed and conn.is_open


def test_each_of_many_confirmations_resolves_exactly_once(ch, names, monkeypatch):
    queue = names.queue()
    ch.queue_declare(queue)
    resolutions: Counter[int] = Counter()
    for name in ("set_acked", "set_nacked", "set_failed"):
        original = getattr(Confirmation, name)

        def counted(self, *args, _original=original):
            resolutions[self.seqno] += 1
            return _original(self, *args)

        monkeypatch.setattr(Confirmation, name, counted)
    seen = record_broker_replies(ch)
    count = 5000
    confirmations = [ch.basic_publish("", queue, b"m", wait=False) for _ in range(count)]
    for confirmation in confirmations:
        assert confirmation.wait(timeout=20) is True
    assert [c.seqno for c in confirmations] == list(range(1, count + 1))
    assert resolutions == Counter(range(1, count + 1))  # each exactly once
    acked = set()
    previous = 0
    for kind, tag, multiple in seen:
        assert kind == "ack"
        acked.update(range(previous + 1, tag + 1) if multiple else [tag])
        previous = max(previous, tag)
    assert acked == set(range(1, count + 1))
    assert any(multiple for _, _, multiple in seen), "the broker sent no multiple ack"
    assert ch.queue_declare(queue, passive=True).message_count == count


def test_wait_for_confirms_with_5000_outstanding(ch, names):
    queue = names.queue()
    ch.queue_declare(queue)
    confirmations = [ch.basic_publish("", queue, str(i), wait=False) for i in range(5000)]
    assert ch.wait_for_confirms(timeout=30) is True
    assert all(c.done() for c in confirmations)
    assert ch._confirms == {}
    assert ch.queue_declare(queue, passive=True).message_count == 5000


def test_confirmed_publishes_from_many_greenlets(ch, names):
    queue = names.queue()
    ch.queue_declare(queue)

    def publisher(i: int) -> None:
        for j in range(20):
            ch.basic_publish("", queue, f"{i}-{j}")

    workers = [gevent.spawn(publisher, i) for i in range(50)]
    gevent.joinall(workers, timeout=20, raise_error=True)
    assert all(w.successful() for w in workers)
    bodies = drain_queue(ch, queue)
    assert sorted(bodies) == sorted(f"{i}-{j}".encode() for i in range(50) for j in range(20))
    for i in range(50):  # one greenlet's publishes keep their order
        mine = [b for b in bodies if b.startswith(f"{i}-".encode())]
        assert mine == [f"{i}-{j}".encode() for j in range(20)]


def test_ack_arriving_while_the_publisher_waits_for_the_writer(conn, ch, names, monkeypatch):
    """Back-pressure may park a publisher after its frames are queued; the broker's
    ack can arrive meanwhile and must still resolve that publish."""
    queue = names.queue()
    ch.queue_declare(queue)
    seen = record_broker_replies(ch)
    acked = Event()
    on_confirm = ch._on_confirm

    def confirm_and_signal(tag: int, multiple: bool, is_ack: bool) -> None:
        on_confirm(tag, multiple, is_ack)
        acked.set()

    ch._on_confirm = confirm_and_signal  # type: ignore[method-assign]

    def slow_writer() -> None:  # the writer only catches up after the broker answered
        conn._link.transport.kick()
        assert acked.wait(5)

    monkeypatch.setattr(conn._link.transport, "throttle", slow_writer)
    monkeypatch.setattr(geamqp._transport, "HIGH_WATER_BYTES", 0)  # every publish waits
    confirmation = ch.basic_publish("", queue, b"parked", wait=False)
    assert seen == [("ack", 1, False)]
    assert confirmation.wait(timeout=5) is True


def test_return_callback_without_confirms(conn, names):
    ch = conn.channel()
    exchange = names.exchange()
    ch.exchange_declare(exchange, "fanout")
    got = []
    done = Event()

    def on_return(channel, method, properties, body):
        got.append((channel, method, properties, body, gevent.getcurrent()))
        done.set()

    ch.add_on_return_callback(on_return)
    ch.basic_publish(exchange, "rk", b"bounced", mandatory=True,
                     properties=geamqp.BasicProperties(correlation_id="c-9"))
    assert done.wait(5)
    [(channel, method, properties, body, where)] = got
    assert channel is ch
    assert (method.reply_code, method.reply_text) == (312, "NO_ROUTE")
    assert (method.exchange, method.routing_key) == (exchange, "rk")
    assert properties.correlation_id == "c-9"
    assert body == b"bounced"
    assert where is not conn._link.transport._reader
    assert where is ch._dispatcher._greenlet


def test_wait_for_confirms_returns_false_on_timeout(proxy, names):
    conn = geamqp.connect(proxy.url(), recover=False)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        queue = names.queue()
        ch.queue_declare(queue)
        proxy.throttle(0, "to_client")  # the broker's acks are held back
        confirmation = ch.basic_publish("", queue, b"slow ack", wait=False)
        assert confirmation.wait(timeout=0.2) is False
        assert ch.wait_for_confirms(timeout=0.2) is False
        assert not confirmation.done()
        proxy.throttle(None)
        assert ch.wait_for_confirms(timeout=5) is True
        assert confirmation.wait(0) is True
    finally:
        conn.close()


def test_publisher_parked_by_back_pressure_is_released_when_the_link_dies(proxy):
    """Transport.throttle parks a publisher until the writer catches up; a write
    stall must release it with the connection's error (it once hung forever)."""
    params = geamqp.ConnectionParameters(proxy.host, proxy.port, socket_timeout=1.0)
    conn = geamqp.connect(params, recover=False)
    ch = conn.channel()
    proxy.throttle(0)  # the broker stops reading: the writer stalls, then gives up
    body = b"x" * 10_000
    with pytest.raises(geamqp.AMQPConnectionError), gevent.Timeout(6, False):
        while True:
            ch.basic_publish("", "nowhere", body)
    assert conn.is_closed
