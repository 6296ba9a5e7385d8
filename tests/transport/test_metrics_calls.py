"""The collector hears exactly what happened (issue 16): a scripted run against the
fake broker — confirmed, unroutable and nacked publishes, a consumer and its
ack, a recovery, a close — and the calls a `geamqp.metrics.Collector` receives,
in order, with their arguments. A connection without a collector makes none.
"""

from __future__ import annotations

from typing import Any

import pytest
from fakebroker import WAIT, FakeBroker
from gevent.event import Event
from pamqp import body as pbody
from pamqp import commands as C
from pamqp import frame as pframe
from pamqp import header as pheader

import geamqp
from geamqp.metrics import Collector, ConnectionInfo


class Recorder(Collector):
    """Every call except the info argument; durations replaced by their sign."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.infos: set[int] = set()
        self.changed = Event()

    def _note(self, name: str, conn: ConnectionInfo, *args: Any) -> None:
        self.infos.add(id(conn))
        self.calls.append((name, *args))
        self.changed.set()

    def connection_opened(self, conn: ConnectionInfo) -> None:
        self._note("opened", conn, conn.name, conn.vhost)

    def connection_lost(self, conn: ConnectionInfo, error: BaseException) -> None:
        self._note("lost", conn, type(error).__name__)

    def connection_recovered(self, conn: ConnectionInfo, downtime: float) -> None:
        self._note("recovered", conn, downtime >= 0)

    def connection_closed(self, conn: ConnectionInfo, error: BaseException | None) -> None:
        self._note("closed", conn, error)

    def channel_opened(self, conn: ConnectionInfo, channel: int) -> None:
        self._note("channel_opened", conn, channel)

    def channel_closed(self, conn: ConnectionInfo, channel: int,
                       error: BaseException | None) -> None:
        self._note("channel_closed", conn, channel, error)

    def message_published(self, conn: ConnectionInfo, channel: int, exchange: str,
                          routing_key: str, size: int) -> None:
        self._note("published", conn, channel, exchange, routing_key, size)

    def publish_acked(self, conn: ConnectionInfo, channel: int, latency: float) -> None:
        self._note("acked", conn, channel, latency >= 0)

    def publish_nacked(self, conn: ConnectionInfo, channel: int, latency: float) -> None:
        self._note("nacked", conn, channel, latency >= 0)

    def publish_returned(self, conn: ConnectionInfo, channel: int, exchange: str,
                         routing_key: str, reply_code: int) -> None:
        self._note("returned", conn, channel, exchange, routing_key, reply_code)

    def consumer_added(self, conn: ConnectionInfo, channel: int, queue: str,
                       consumer_tag: str) -> None:
        self._note("consumer_added", conn, channel, queue, consumer_tag)

    def consumer_cancelled(self, conn: ConnectionInfo, channel: int, queue: str,
                           consumer_tag: str, by_broker: bool) -> None:
        self._note("consumer_cancelled", conn, channel, queue, consumer_tag, by_broker)

    def message_delivered(self, conn: ConnectionInfo, channel: int, size: int,
                          redelivered: bool) -> None:
        self._note("delivered", conn, channel, size, redelivered)

    def delivery_acked(self, conn: ConnectionInfo, channel: int, delivery_tag: int,
                       multiple: bool) -> None:
        self._note("delivery_acked", conn, channel, delivery_tag, multiple)

    def wait_for(self, name: str) -> None:
        while not any(call[0] == name for call in self.calls):
            self.changed.clear()
            assert self.changed.wait(WAIT), f"no {name} call"


def _send_return(peer: Any, channel: int, exchange: str, routing_key: str, body: bytes) -> None:
    method = C.Basic.Return(reply_code=312, reply_text="NO_ROUTE", exchange=exchange,
                            routing_key=routing_key)
    data = pframe.marshal(method, channel)
    data += pframe.marshal(pheader.ContentHeader(0, len(body), C.Basic.Properties()), channel)
    data += pframe.marshal(pbody.ContentBody(body), channel)
    peer.send_raw(data)


def test_a_scripted_run_reports_exactly_what_happened(broker: FakeBroker, connect: Any) -> None:
    recorder = Recorder()
    broker.auto_confirm = False
    conn, signals = connect(broker, metrics=recorder, name="metered")
    ch = conn.channel()
    ch.confirm_delivery()
    peer = broker.peer(0)

    first = ch.basic_publish("", "q", b"one", wait=False)
    peer.ack(1, 1)
    assert first.wait(WAIT)
    lost = ch.basic_publish("amq.direct", "nowhere", b"lost", mandatory=True, wait=False)
    _send_return(peer, 1, "amq.direct", "nowhere", b"lost")
    peer.ack(1, 2)
    with pytest.raises(geamqp.UnroutableError):
        lost.wait(WAIT)
    third = ch.basic_publish("", "q", b"three", wait=False)
    peer.nack(1, 3)
    with pytest.raises(geamqp.NackError):
        third.wait(WAIT)

    acked = Event()

    def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
        channel.basic_ack(method.delivery_tag)
        acked.set()

    ch.basic_consume("q", on_message, consumer_tag="c1")
    peer.deliver(1, "c1", 1, b"hello")
    assert acked.wait(WAIT)
    recorder.wait_for("delivery_acked")

    peer.drop()
    signals.wait("recovered")
    recorder.wait_for("recovered")
    conn.close()
    recorder.wait_for("closed")

    assert recorder.calls == [
        ("opened", "metered", "/"),
        ("channel_opened", 1),
        ("published", 1, "", "q", 3),
        ("acked", 1, True),
        ("published", 1, "amq.direct", "nowhere", 4),
        ("returned", 1, "amq.direct", "nowhere", 312),
        ("acked", 1, True),
        ("published", 1, "", "q", 5),
        ("nacked", 1, True),
        ("consumer_added", 1, "q", "c1"),
        ("delivered", 1, 5, False),
        ("delivery_acked", 1, 1, False),
        ("lost", "StreamLostError"),
        ("recovered", True),
        ("consumer_cancelled", 1, "q", "c1", False),
        ("channel_closed", 1, None),
        ("closed", None),
    ]
    assert len(recorder.infos) == 1  # one ConnectionInfo for the connection's whole life


def test_without_a_collector_nothing_is_called(broker: FakeBroker, connect: Any,
                                               monkeypatch: Any) -> None:
    called: list[str] = []
    monkeypatch.setattr(Collector, "message_published", lambda *a: called.append("p"))
    conn, _ = connect(broker)
    ch = conn.channel()
    ch.basic_publish("", "q", b"x")
    assert called == []
