"""Automatic recovery (DESIGN 6; RELIABILITY 20, 24, 29, 35): what starts it, what
does not, and what comes back behind the user's own Connection and Channel objects.

Faults come from the FaultProxy (reset, blackhole, refuse, stall) or from the
broker (`rabbitmqctl close_connection`, 320). Every wait is on a callback or an
event (see recovery_helpers.Watch); broker-side state is polled with rabbitmqctl.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gevent
import pytest
from channel_helpers import wait_for
from gevent.event import Event
from recovery_helpers import (
    RestoreLog,
    Watch,
    broker_bindings,
    broker_exchanges,
    collect,
    connect,
    spawn_catching,
)
from support import broker as broker_ctl
from transport_helpers import geamqp_greenlets, joined

import geamqp
from geamqp.exceptions import (
    AMQPConnectionError,
    ChannelClosedByBroker,
    ConnectionClosedByBroker,
    ProbableAccessDeniedError,
    ProbableAuthenticationError,
    PublishOutcomeUnknown,
    StreamLostError,
)


@contextlib.contextmanager
def cleanup(broker: Any, queues: Sequence[str] = (),
            exchanges: Sequence[str] = ()) -> Iterator[None]:
    """Delete `queues` and `exchanges` over a connection of its own afterwards."""
    try:
        yield
    finally:
        with geamqp.connect(broker.url(), recover=False) as conn:
            ch = conn.channel()
            for kind, names in (("queue_delete", queues), ("exchange_delete", exchanges)):
                for name in names:
                    if not ch.is_open:
                        ch = conn.channel()
                    with contextlib.suppress(ChannelClosedByBroker):
                        getattr(ch, kind)(name)


def roundtrip(ch: geamqp.Channel) -> None:
    """A request on `ch` that succeeds only if the channel is open on the broker."""
    ch.exchange_declare("amq.direct", "direct", passive=True)


# ---------------------------------------------------------------- what starts a recovery


def test_proxy_reset_recovers_behind_the_same_objects(proxy):
    conn = connect(proxy.url())
    watch = Watch(conn)
    ch1, ch2 = conn.channel(), conn.channel()
    numbers = (ch1.channel_number, ch2.channel_number)
    try:
        assert proxy.reset_all() == 1
        assert isinstance(watch.wait_lost(), StreamLostError)
        watch.wait_recovered()
        assert conn.is_open and not conn.is_recovering
        assert (ch1.channel_number, ch2.channel_number) == numbers
        assert ch1.is_open and ch2.is_open
        queue = ch1.queue_declare("", exclusive=True).queue
        ch2.confirm_delivery()
        ch2.basic_publish("", queue, b"after")
        assert ch1.basic_get(queue, auto_ack=True)[2] == b"after"
        assert proxy.connections_forwarded == 2
        assert not watch.failed and watch.close_calls == 0
    finally:
        conn.close()
    assert isinstance(watch.closed.get(timeout=5), geamqp.ConnectionClosedByClient)


def test_missed_heartbeats_start_a_recovery(proxy):
    conn = connect(f"{proxy.url()}?heartbeat=1")
    watch = Watch(conn)
    ch = conn.channel()
    try:
        proxy.blackhole(True)
        assert isinstance(watch.wait_lost(timeout=6), AMQPConnectionError)
        proxy.reset_all()  # the half-open link: let the broker side go too
        proxy.heal()
        watch.wait_recovered()
        roundtrip(ch)
    finally:
        proxy.heal()
        conn.close()


def test_close_connection_320_starts_a_recovery(broker, unique_name):
    conn = connect(broker.url(), name=unique_name)
    watch = Watch(conn)
    ch = conn.channel()
    try:
        broker_ctl.close_connection(unique_name)
        lost = watch.wait_lost()
        assert isinstance(lost, ConnectionClosedByBroker) and lost.reply_code == 320
        watch.wait_recovered()
        roundtrip(ch)
        assert broker_ctl.find_connections(unique_name)
    finally:
        conn.close()


# ---------------------------------------------------------------- what does not (RELIABILITY 35)


def test_no_recovery_after_the_applications_close(proxy):
    conn = connect(proxy.url())
    watch = Watch(conn)
    ch = conn.channel()
    conn.close()
    assert isinstance(watch.closed.get(timeout=5), geamqp.ConnectionClosedByClient)
    assert not watch.lost and not conn.is_recovering and conn.is_closed
    assert proxy.connections_accepted == 1
    with pytest.raises(geamqp.ChannelWrongStateError) as later:
        ch.queue_declare("", exclusive=True)
    assert isinstance(later.value.__cause__, geamqp.ConnectionClosedByClient)


def test_no_recovery_after_a_failed_first_connect(proxy):
    proxy.refuse(True)
    with pytest.raises(AMQPConnectionError):
        connect(f"{proxy.url()}?connection_attempts=1")
    proxy.refuse(False)
    assert proxy.connections_accepted == 0
    assert not [g for g in geamqp_greenlets() if g.name == "geamqp-supervisor"]


def test_no_recovery_after_a_403_or_530_refusal(broker, vhost):
    with pytest.raises(ProbableAuthenticationError):
        connect(broker.url().replace("guest:guest", "guest:wrong"))
    with pytest.raises(ProbableAccessDeniedError):
        connect(broker.url("no-such-vhost-for-recovery"))


def test_a_530_while_recovering_gives_up_at_once(broker, vhost, unique_name):
    """The vhost is deleted under a live connection: the reconnect is refused (530)
    and recovery ends there instead of retrying forever."""
    conn = connect(broker.url(vhost), name=unique_name)
    watch = Watch(conn)
    conn.channel()
    broker_ctl.rabbitmqctl("delete_vhost", vhost)
    try:
        watch.wait_lost()
        failure = watch.wait_failed()
        assert isinstance(failure.__cause__, ProbableAccessDeniedError), failure.__cause__
        assert watch.closed.get(timeout=5) is failure
        assert len(conn._supervisor.attempts if conn._supervisor else []) <= 1
    finally:
        broker_ctl.rabbitmqctl("add_vhost", vhost)  # the fixture deletes it again


def test_a_403_while_recovering_gives_up_at_once(broker, unique_name):
    user, password = unique_name, "s3cret-recovery"
    broker_ctl.rabbitmqctl("add_user", user, password)
    try:
        broker_ctl.rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        conn = connect(broker.url().replace("guest:guest", f"{user}:{password}"),
                       name=unique_name)
        watch = Watch(conn)
        broker_ctl.rabbitmqctl("change_password", user, "changed-under-it")
        broker_ctl.close_connection(unique_name)
        assert watch.wait_lost().reply_code == 320
        failure = watch.wait_failed()
        assert isinstance(failure.__cause__, ProbableAuthenticationError), failure.__cause__
        assert conn.is_closed and watch.close_calls == 1
    finally:
        broker_ctl.rabbitmqctl("delete_user", user)


def test_a_channel_error_closes_only_that_channel(proxy, unique_name):
    conn = connect(proxy.url())
    watch = Watch(conn)
    bad, good = conn.channel(), conn.channel()
    try:
        with pytest.raises(ChannelClosedByBroker) as info:
            bad.queue_declare(unique_name, passive=True)
        assert info.value.reply_code == 404
        roundtrip(good)
        assert bad.is_closed and conn.is_open and not watch.lost and not conn.is_recovering
        # A later recovery restores the open channel only.
        proxy.reset_all()
        watch.wait_recovered()
        assert bad.is_closed and good.is_open
        roundtrip(good)
        assert bad.channel_number not in conn._channels
    finally:
        conn.close()


# ---------------------------------------------------------------- channel modes


def test_qos_confirm_and_tx_modes_are_restored(broker, proxy, unique_name):
    queue = unique_name
    conn = connect(proxy.url())
    watch = Watch(conn)
    with cleanup(broker, queues=[queue]):
        consuming, confirming, transacted = conn.channel(), conn.channel(), conn.channel()
        consuming.queue_declare(queue)
        consuming.basic_qos(prefetch_count=3)
        confirming.confirm_delivery()
        transacted.tx_select()
        try:
            proxy.reset_all()
            watch.wait_recovered()
            # confirm mode: a publish returns a future the broker resolves
            pending = [confirming.basic_publish("", queue, b"%d" % i, wait=False)
                       for i in range(10)]
            assert all(p is not None and p.wait(5) for p in pending)
            assert pending[0].seqno == 1  # a fresh confirm sequence on the new channel
            # tx mode: commit would be 406 PRECONDITION_FAILED on a non-transactional channel
            transacted.basic_publish("", queue, b"tx")
            transacted.tx_commit()
            # qos: three unacked deliveries, no more
            got: list[Any] = []
            three = Event()
            consuming.basic_consume(queue, collect(got, 3, three))
            assert three.wait(5)
            broker_ctl.wait_until(
                lambda: (s := broker_ctl.list_queue(queue)) and s.messages_unacknowledged == 3
                and s.messages_ready == 8, what="3 unacked, 8 ready")
            assert len(got) == 3
            consuming.basic_ack(0, multiple=True)
            broker_ctl.wait_until(lambda: len(got) >= 6, what="the next three deliveries")
            assert len(got) == 6
        finally:
            conn.close()


# ---------------------------------------------------------------- topology


def test_topology_and_consumers_come_back_in_order(broker, proxy, unique_name, monkeypatch):
    """Everything is deleted broker-side while the client is cut off; recovery
    re-declares exchanges, then queues, then bindings, then consumers."""
    source, middle, queue, queue2 = (f"{unique_name}-{s}" for s in ("src", "mid", "q", "q2"))
    conn = connect(proxy.url())
    watch = Watch(conn)
    requests = RestoreLog(monkeypatch)
    pool = ThreadPoolExecutor(2)
    with cleanup(broker, queues=[queue, queue2], exchanges=[source, middle]):
        ch = conn.channel()
        ch.exchange_declare(source, "topic")
        ch.exchange_declare(middle, "fanout")
        ch.exchange_bind(middle, source, "a.#")  # exchange-to-exchange
        ch.queue_declare(queue)
        ch.queue_declare(queue2)
        ch.queue_bind(queue, middle)
        ch.queue_bind(queue2, source, "b.*")
        got: list[Any] = []
        got_threads: list[tuple[str, int]] = []
        arrived = Event()
        hub_thread = threading.get_ident()

        def on_message(channel, method, properties, body):
            got.append((method.consumer_tag, body))
            got_threads.append((method.consumer_tag, threading.get_ident()))
            if threading.get_ident() == hub_thread:
                arrived.set()
            else:  # the executor's thread: hand the wake-up to the hub
                channel.connection.add_callback_threadsafe(arrived.set)

        ch.basic_consume(queue, on_message, auto_ack=True, consumer_tag="plain")
        ch.basic_consume(queue2, on_message, auto_ack=True, consumer_tag="pooled",
                         executor=pool)
        try:
            proxy.refuse(True)
            proxy.reset_all()
            watch.wait_lost()
            with geamqp.connect(broker.url(), recover=False) as other:
                och = other.channel()
                for q in (queue, queue2):
                    och.queue_delete(q)
                for x in (middle, source):
                    och.exchange_delete(x)
            mark = requests.mark()
            proxy.refuse(False)
            watch.wait_recovered()
            replay = [n for n in requests.names(mark) if n not in ("basic.qos",)]
            assert replay == ["exchange.declare", "exchange.declare", "queue.declare",
                              "queue.declare", "exchange.bind", "queue.bind", "queue.bind",
                              "queue.declare", "basic.consume", "queue.declare",
                              "basic.consume"], replay
            assert {source, middle} <= broker_exchanges()
            bindings = broker_bindings()
            assert {(source, "exchange", middle, "a.#"), (middle, "queue", queue, queue),
                    (source, "queue", queue2, "b.*")} <= bindings
            assert sorted(ch.consumer_tags) == ["plain", "pooled"]
            for key, tag in (("a.x.y", "plain"), ("b.z", "pooled")):
                arrived.clear()
                ch.basic_publish(source, key, key.encode())
                assert arrived.wait(5), tag
                assert got[-1] == (tag, key.encode())
            assert dict(got_threads)["plain"] == hub_thread
            assert dict(got_threads)["pooled"] != hub_thread  # still on the executor
        finally:
            proxy.heal()
            conn.close()
            pool.shutdown(wait=True)


def test_server_named_queue_is_recovered_under_its_new_name(proxy, unique_name):
    """RELIABILITY 24: the exclusive queue died with the connection; it comes back
    with a new name, its binding and its consumer follow, the exchange reaches it."""
    exchange = unique_name
    conn = connect(proxy.url())
    watch = Watch(conn)
    try:
        ch = conn.channel()
        ch.exchange_declare(exchange, "fanout", auto_delete=True)
        old = ch.queue_declare("", exclusive=True).queue
        ch.queue_bind(old, exchange)
        got: list[Any] = []
        arrived = Event()
        tag = ch.basic_consume(old, collect(got, 1, arrived), auto_ack=True)
        proxy.reset_all()
        watch.wait_recovered()
        renamed_from, new = watch.wait_renamed()
        assert renamed_from == old and new != old and new.startswith("amq.gen-")
        assert broker_ctl.list_queue(old) is None
        assert broker_ctl.list_queue(new) is not None
        assert (exchange, "queue", new, old) in broker_bindings()  # routing key: old name
        assert ch.consumer_tags == [tag]
        ch.basic_publish(exchange, "", b"to the renamed queue")
        assert arrived.wait(5)
        assert got[0][0].consumer_tag == tag and got[0][2] == b"to the renamed queue"
    finally:
        conn.close()


def test_deleted_and_cancelled_things_do_not_come_back(broker, proxy, unique_name):
    names = {k: f"{unique_name}-{k}" for k in ("x", "q", "kept", "auto", "theirs")}
    conn = connect(proxy.url())
    watch = Watch(conn)
    with cleanup(broker, queues=[names["q"], names["kept"], names["auto"], names["theirs"]],
                 exchanges=[names["x"]]), \
            geamqp.connect(broker.url(), recover=False) as other:
        ch, och = conn.channel(), other.channel()
        cancelled = Event()
        ch.add_on_cancel_callback(lambda method: cancelled.set())
        ch.exchange_declare(names["x"], "fanout")
        ch.queue_declare(names["q"])
        ch.queue_bind(names["q"], names["x"])
        ch.queue_delete(names["q"])
        ch.exchange_delete(names["x"])
        ch.queue_declare(names["kept"])
        ch.queue_bind(names["kept"], "amq.fanout", "unbound-later")
        ch.queue_unbind(names["kept"], "amq.fanout", "unbound-later")
        user_tag = ch.basic_consume(names["kept"], lambda *a: None)
        ch.basic_cancel(user_tag)  # a user cancel
        ch.queue_declare(names["auto"], auto_delete=True)
        ch.basic_cancel(ch.basic_consume(names["auto"], lambda *a: None))  # broker deletes it
        och.queue_declare(names["theirs"])  # not this connection's: not recorded
        ch.basic_consume(names["theirs"], lambda *a: None)
        och.queue_delete(names["theirs"])  # a broker cancel
        assert cancelled.wait(5)
        och.queue_declare(names["theirs"])  # back, but the consumer must not return
        broker_ctl.wait_until(lambda: broker_ctl.list_queue(names["auto"]) is None,
                              what="the auto-delete queue to go")
        try:
            proxy.reset_all()
            watch.wait_recovered()
            roundtrip(ch)
            assert ch.consumer_tags == []
            assert names["x"] not in broker_exchanges()
            assert broker_ctl.list_queue(names["q"]) is None
            assert broker_ctl.list_queue(names["auto"]) is None
            assert broker_ctl.list_queue(names["kept"]).consumers == 0
            assert broker_ctl.list_queue(names["theirs"]).consumers == 0
            assert not [b for b in broker_bindings() if "unbound-later" in b[3]]
        finally:
            conn.close()


# ---------------------------------------------------------------- callers during a recovery


def test_requests_made_while_recovering_wait_and_succeed(broker, proxy, unique_name):
    queue = unique_name
    conn = connect(proxy.url())
    watch = Watch(conn)
    with cleanup(broker, queues=[queue]):
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(queue)
        ch.basic_publish("", queue, b"first")
        method, _, _ = ch.basic_get(queue)  # unacked: delivery tag 1 of this generation
        try:
            proxy.refuse(True)
            proxy.reset_all()
            watch.wait_lost()
            assert conn.is_recovering and not ch.is_open
            waiting = {
                "declare": spawn_catching(ch.queue_declare, "", False, False, True),
                "publish": spawn_catching(ch.basic_publish, "", queue, b"second"),
                "channel": spawn_catching(conn.channel),
            }
            # an ack of the lost generation's tag is dropped at once, without waiting
            assert ch.basic_ack(method.delivery_tag) is None
            gevent.sleep(0)  # let them all reach their wait
            assert not any(g.ready() for g in waiting.values())
            proxy.refuse(False)
            outcomes = dict(zip(waiting, joined(list(waiting.values()), 10), strict=True))
            assert outcomes["declare"].queue.startswith("amq.gen-")
            assert outcomes["publish"] is None  # confirmed
            assert isinstance(outcomes["channel"], geamqp.Channel) and outcomes["channel"].is_open
            first = ch.basic_get(queue, auto_ack=True)
            assert first[2] == b"first" and first[0].redelivered
            assert ch.basic_get(queue, auto_ack=True)[2] == b"second"
            roundtrip(ch)
        finally:
            proxy.heal()
            conn.close()


def test_requests_in_flight_raise_the_loss(proxy, unique_name):
    conn = connect(proxy.url(), name=unique_name)
    watch = Watch(conn)
    try:
        ch = conn.channel()
        proxy.throttle(0, "to_client")  # the reply never comes
        sent = proxy.bytes_to_broker
        reset_rpc = spawn_catching(ch.queue_declare, "", False, False, True)
        proxy.wait_for(lambda: proxy.bytes_to_broker > sent, 5, "the declare on the wire")
        proxy.reset_all()
        [outcome] = joined([reset_rpc], 5)
        assert isinstance(outcome, StreamLostError), outcome
        proxy.throttle(None)
        watch.wait_recovered()
        # The broker closes: its connection.close overtakes a request held on the way in.
        proxy.throttle(0, "to_broker")
        closed_rpc = spawn_catching(ch.queue_declare, "", False, False, True)
        wait_for(lambda: ch._requests, 5, "the declare to be sent")
        broker_ctl.close_connection(unique_name)
        [outcome] = joined([closed_rpc], 10)
        assert isinstance(outcome, ConnectionClosedByBroker) and outcome.reply_code == 320
        proxy.throttle(None)
        watch.wait_recovered(2)
        roundtrip(ch)
    finally:
        proxy.heal()
        conn.close()


def test_recovery_gives_up_after_max_attempts(proxy):
    conn = connect(proxy.url(), recovery_max_attempts=3)
    watch = Watch(conn)
    assert conn._supervisor is not None
    attempts = conn._supervisor.attempts  # recorded reconnect attempts
    ch = conn.channel()
    queue = ch.queue_declare("", exclusive=True).queue
    ch.basic_consume(queue, lambda *a: None)
    consuming = spawn_catching(ch.start_consuming)
    proxy.refuse(True)
    try:
        proxy.reset_all()
        failure = watch.wait_failed()
        assert isinstance(failure, AMQPConnectionError)
        assert watch.closed.get(timeout=5) is failure and watch.close_calls == 1
        [raised] = joined([consuming], 5)
        assert raised is failure
        assert conn.is_closed and not conn.is_recovering
        assert len(conn._supervisor.attempts if conn._supervisor else attempts) == 3
        with pytest.raises(geamqp.ConnectionWrongStateError) as refused:
            conn.channel()
        assert refused.value.__cause__ is failure
        for call in (lambda: ch.basic_publish("", queue, b"x"),
                     lambda: ch.queue_declare("", exclusive=True)):
            with pytest.raises(geamqp.ChannelWrongStateError) as later:
                call()
            assert later.value.__cause__ is failure
    finally:
        proxy.heal()
    assert not watch.recovered


def test_start_consuming_keeps_waiting_through_a_recovery(proxy):
    conn = connect(proxy.url())
    watch = Watch(conn)
    try:
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).queue
        got: list[Any] = []
        arrived = Event()
        ch.basic_consume(queue, collect(got, 1, arrived), auto_ack=True)
        consuming = spawn_catching(ch.start_consuming)
        proxy.reset_all()
        watch.wait_recovered()
        assert not consuming.ready()
        queue = next(iter(conn._topology.queues))  # renamed (server-named)
        ch.basic_publish("", queue, b"after the recovery")
        assert arrived.wait(5)
        assert not consuming.ready()
        ch.stop_consuming()
        assert joined([consuming], 5) == [None]
    finally:
        conn.close()


# ---------------------------------------------------------------- acks and confirms


def test_acks_of_the_lost_generation_are_dropped_and_redelivered(broker, proxy, unique_name):
    """RELIABILITY 20: tags 1..5 of the old connection are not sent (no 406); the
    broker redelivers those messages with redelivered=True under new tags."""
    queue = unique_name
    conn = connect(proxy.url())
    watch = Watch(conn)
    with cleanup(broker, queues=[queue]):
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(queue)
        for i in range(5):
            ch.basic_publish("", queue, b"m%d" % i)
        got: list[Any] = []
        five, ten = Event(), Event()

        def on_message(channel, method, properties, body):
            got.append((method.delivery_tag, method.redelivered, body))
            (five if len(got) == 5 else ten if len(got) == 10 else Event()).set()

        ch.basic_consume(queue, on_message)
        try:
            assert five.wait(5)
            proxy.reset_all()
            watch.wait_recovered()
            for tag, _, _ in got[:5]:
                ch.basic_ack(tag)  # stale: dropped, not sent
            assert ten.wait(5)
            roundtrip(ch)  # no 406 closed the channel
            assert ch.is_open
            old, new = got[:5], got[5:]
            assert [b for *_, b in new] == [b for *_, b in old]
            assert all(redelivered for _, redelivered, _ in new)
            assert min(t for t, _, _ in new) > max(t for t, _, _ in old)  # tags stay unique
            for tag, _, _ in new:
                ch.basic_ack(tag)
            roundtrip(ch)
            broker_ctl.wait_until(
                lambda: (s := broker_ctl.list_queue(queue)) is not None
                and s.messages_ready == 0 and s.messages_unacknowledged == 0,
                what="every message acked")
        finally:
            conn.close()


def _unconfirmed_at_loss(proxy, ch, queue, n):
    """Publish `n` messages whose acks are held by the proxy, then reset the link."""
    sent = proxy.bytes_to_broker
    proxy.throttle(0, "to_client")
    pending = [ch.basic_publish("", queue, b"u%d" % i, wait=False) for i in range(n)]
    proxy.wait_for(lambda: proxy.bytes_to_broker - sent > n * 20, 5, "the publishes sent")
    assert not any(p.done() for p in pending)
    proxy.reset_all()
    proxy.throttle(None)
    return pending


def test_unconfirmed_publishes_fail_once_with_outcome_unknown(broker, proxy, unique_name):
    """RELIABILITY 29: N unconfirmed at the loss all fail, each once; the channel's
    next publishes confirm cleanly from seqno 1."""
    queue = unique_name
    conn = connect(proxy.url())
    watch = Watch(conn)
    with cleanup(broker, queues=[queue]):
        ch = conn.channel()
        ch.queue_declare(queue)
        ch.confirm_delivery()
        try:
            pending = _unconfirmed_at_loss(proxy, ch, queue, 50)
            watch.wait_recovered()
            errors = []
            for confirmation in pending:
                with pytest.raises(PublishOutcomeUnknown) as info:
                    confirmation.wait(0)
                errors.append(info.value)
                with pytest.raises(PublishOutcomeUnknown) as again:
                    confirmation.wait(0)
                assert again.value is info.value  # resolved exactly once
            assert len({id(e) for e in errors}) == 50
            after = [ch.basic_publish("", queue, b"after%d" % i, wait=False) for i in range(5)]
            assert [c.seqno for c in after] == [1, 2, 3, 4, 5]
            assert all(c.wait(5) for c in after)
            assert ch.wait_for_confirms(5)
        finally:
            conn.close()


def test_unconfirmed_publishes_are_republished_when_asked(broker, proxy, unique_name):
    queue = unique_name
    conn = connect(proxy.url(), republish_unconfirmed=True)
    watch = Watch(conn)
    with cleanup(broker, queues=[queue]):
        ch = conn.channel()
        ch.queue_declare(queue)
        ch.confirm_delivery()
        try:
            pending = _unconfirmed_at_loss(proxy, ch, queue, 50)
            watch.wait_recovered()
            assert all(c.wait(5) for c in pending)  # resolved by the new connection's acks
            assert sorted(c.seqno for c in pending) == list(range(1, 51))
            bodies = set()
            while (message := ch.basic_get(queue, auto_ack=True))[0] is not None:
                bodies.add(message[2])
            assert bodies == {b"u%d" % i for i in range(50)}  # duplicates allowed, no loss
        finally:
            conn.close()


# ---------------------------------------------------------------- a loss during the restore


@pytest.mark.parametrize("fraction", [0.15, 0.4, 0.6, 0.8, 0.95])
def test_a_loss_in_the_middle_of_the_restore_is_recovered_again(proxy, unique_name, fraction):
    """A first recovery measures how many bytes the broker sends during a restore;
    in the second, the link is cut after `fraction` of them (the handshake, the
    channel reopen, the replay, the consumers). The supervisor starts over."""
    exchange = unique_name
    conn = connect(proxy.url())
    watch = Watch(conn)
    try:
        chs = [conn.channel() for _ in range(3)]
        chs[0].basic_qos(prefetch_count=5)
        chs[1].confirm_delivery()
        chs[0].exchange_declare(exchange, "fanout", auto_delete=True)
        queue = chs[0].queue_declare("", exclusive=True).queue
        chs[0].queue_bind(queue, exchange)
        got: list[Any] = []
        arrived = Event()
        chs[2].basic_consume(queue, collect(got, 1, arrived), auto_ack=True)
        before = proxy.bytes_to_client
        proxy.reset_all()
        watch.wait_recovered()
        restore_bytes = proxy.bytes_to_client - before
        proxy.reset_all()
        watch.wait_lost(2)
        fired = proxy.reset_after(int(restore_bytes * fraction), "to_client")
        watch.wait_recovered(2, timeout=15)
        assert fired.wait(0), "the cut did not land inside the restore"
        assert len(watch.lost) == 2  # one report per outage, however many attempts
        for ch in chs:
            roundtrip(ch)
        chs[1].basic_publish(exchange, "", b"through the last rename")
        assert arrived.wait(5)
        assert len(conn._topology.queues) == 1 and len(watch.renamed) >= 2
    finally:
        proxy.cancel_reset()
        conn.close()


def test_a_consume_generator_keeps_yielding_after_a_recovery(proxy):
    conn = connect(proxy.url())
    watch = Watch(conn)
    try:
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).queue
        ch.basic_publish("", queue, b"before")
        messages = ch.consume(queue, auto_ack=True, inactivity_timeout=5)
        assert next(messages)[2] == b"before"
        proxy.reset_all()
        watch.wait_recovered()
        queue = next(iter(conn._topology.queues))
        ch.basic_publish("", queue, b"after")
        assert next(messages)[2] == b"after"
        messages.close()
        assert ch.consumer_tags == []
    finally:
        conn.close()
