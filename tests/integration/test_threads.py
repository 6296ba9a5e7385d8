"""Threads meet the hub: the thread-safe callback queue, marshalled calls, executor consumers
(RELIABILITY.md 31, 33)."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.threadpool
import pytest
from gevent.event import Event
from support.broker import BrokerEndpoint, list_queue, wait_until

import geamqp

CLOSE_FRAME_HEAD = b"\x01\x00\x00"  # method frame on channel 0 ...
CLOSE_IDS = b"\x00\x0a\x00\x32"  # ... connection.close (10, 50)


@pytest.fixture
def conn(broker: BrokerEndpoint) -> Iterator[geamqp.Connection]:
    connection = geamqp.connect(broker.url() + "?heartbeat=2", name="test-threads")
    yield connection
    connection.close()


def _wait_threads(futures: list[concurrent.futures.Future[Any]], timeout: float) -> list[Any]:
    """Wait for thread results cooperatively, so the hub keeps serving them."""
    deadline = time.monotonic() + timeout
    while not all(f.done() for f in futures):
        assert time.monotonic() < deadline, "threads did not finish"
        gevent.sleep(0.005)
    return [f.result() for f in futures]


def test_eight_threads_times_ten_thousand_callbacks_run_once_in_order(
        conn: geamqp.Connection, unique_name: str) -> None:
    ch = conn.channel()
    queue = ch.queue_declare(unique_name, exclusive=True).queue
    runs: dict[int, list[int]] = {t: [] for t in range(8)}
    delivered = []
    ch.basic_consume(queue, lambda c, m, p, b: delivered.append(b), auto_ack=True)
    pinger_gaps: list[float] = []
    stop = Event()

    def pinger() -> None:  # the hub must stay responsive during the storm
        while True:
            ch.basic_publish("", queue, b"tick")
            if stop.is_set():
                return
            t0 = time.monotonic()
            gevent.sleep(0.01)
            pinger_gaps.append(time.monotonic() - t0)

    def flood(thread: int) -> None:
        for i in range(10_000):
            conn.add_callback_threadsafe(lambda i=i: runs[thread].append(i))

    ping = gevent.spawn(pinger)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        _wait_threads([pool.submit(flood, t) for t in range(8)], timeout=30)
    done = Event()
    conn.add_callback_threadsafe(done.set)  # FIFO: runs after everything queued before it
    assert done.wait(10)
    stop.set()
    ping.join()
    assert all(runs[t] == list(range(10_000)) for t in range(8))
    wait_until(lambda: delivered, timeout=5)  # deliveries flowed through the storm
    assert conn.is_open
    assert max(pinger_gaps) < 1.0


def test_a_callback_may_block_cooperatively(conn: geamqp.Connection, unique_name: str) -> None:
    ch = conn.channel()
    queue = ch.queue_declare(unique_name, exclusive=True).queue
    ch.confirm_delivery()
    result: list[Any] = []
    done = Event()

    def publish_and_get() -> None:  # runs in a greenlet in the hub: may wait for the confirm
        ch.basic_publish("", queue, b"from a callback")
        result.append(ch.basic_get(queue, auto_ack=True)[2])
        done.set()

    thread = threading.Thread(target=conn.add_callback_threadsafe, args=(publish_and_get,))
    thread.start()
    assert done.wait(10)
    thread.join()
    assert result == [b"from a callback"]


def test_add_callback_after_close_raises_and_accepted_ones_run(broker: BrokerEndpoint) -> None:
    conn = geamqp.connect(broker.url(), name="test-threads-close")
    ran: list[int] = []
    accepted = [0] * 4
    refused = [False] * 4
    started = threading.Barrier(5)

    def racer(thread: int) -> None:
        started.wait()
        for _ in range(50_000):
            try:
                conn.add_callback_threadsafe(lambda: ran.append(1))
            except geamqp.ConnectionWrongStateError:
                refused[thread] = True
                return
            accepted[thread] += 1

    threads = [threading.Thread(target=racer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    gevent.get_hub().threadpool.spawn(started.wait).get()
    gevent.sleep(0.01)
    conn.close()
    while any(t.is_alive() for t in threads):
        gevent.sleep(0.005)
    # Each callback was either refused with an exception or runs: none vanishes.
    wait_until(lambda: len(ran) == sum(accepted), timeout=10)
    assert all(refused[t] or accepted[t] == 50_000 for t in range(4))
    with pytest.raises(geamqp.ConnectionWrongStateError):
        conn.add_callback_threadsafe(lambda: None)


def test_public_methods_from_foreign_threads_return_and_raise_there(
        conn: geamqp.Connection, unique_name: str) -> None:
    def work(n: int) -> tuple[int, bytes, str]:
        ch = conn.channel()  # every call below is marshalled into the hub
        queue = ch.queue_declare(f"{unique_name}-{n}", exclusive=True).queue
        ch.confirm_delivery()
        ch.basic_publish("", queue, b"%d" % n)
        body = ch.basic_get(queue, auto_ack=True)[2]
        try:
            ch.queue_declare(f"{unique_name}-missing", passive=True)
        except geamqp.ChannelClosedByBroker as exc:  # raised in *this* thread
            return threading.get_ident(), body, f"{exc.reply_code}"
        return threading.get_ident(), body, "no error"

    hub_thread = threading.get_ident()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = _wait_threads([pool.submit(work, n) for n in range(8)], timeout=30)
    assert sorted(body for _, body, _ in results) == [b"%d" % n for n in range(8)]
    assert all(code == "404" for _, _, code in results)
    assert all(ident != hub_thread for ident, _, _ in results)

    plain: list[Any] = []
    thread = threading.Thread(target=lambda: plain.append(work(100)))
    thread.start()
    while thread.is_alive():
        gevent.sleep(0.005)
    assert plain[0][1] == b"100"

    pool = gevent.threadpool.ThreadPool(2)
    try:
        assert pool.spawn(work, 200).get(timeout=30)[1] == b"200"
    finally:
        pool.kill()


def test_concurrent_close_from_greenlets_and_threads_sends_one_close_frame(
        broker: BrokerEndpoint) -> None:
    conn = geamqp.connect(broker.url(), name="test-threads-close-race")
    engine = conn._link.engine
    sent: list[bytes] = []
    original = engine.buffers_to_send  # what the transport writes from

    def spy() -> list[Any]:
        buffers = original()
        sent.append(b"".join(buffers))
        return buffers

    engine.buffers_to_send = spy  # type: ignore[method-assign]
    greenlets = [gevent.spawn(conn.close) for _ in range(10)]
    threads = [threading.Thread(target=conn.close) for _ in range(10)]
    for t in threads:
        t.start()
    gevent.joinall(greenlets, timeout=10, raise_error=True)
    while any(t.is_alive() for t in threads):
        gevent.sleep(0.005)
    assert conn.is_closed
    wire = b"".join(sent)
    assert wire.count(CLOSE_IDS) == 1


def test_foreign_thread_calls_racing_a_connection_loss_all_return_or_raise(
        broker: BrokerEndpoint, unique_name: str) -> None:
    # Without recovery, so that the loss is final and every thread must come back.
    conn = geamqp.connect(broker.url(), name="test-threads-loss", recover=False)
    ch = conn.channel()
    queue = ch.queue_declare(unique_name, exclusive=True).queue
    outcomes: list[str] = []
    running = threading.Barrier(5)

    def hammer() -> None:
        running.wait()
        try:
            while True:
                ch.basic_publish("", queue, b"x")
                ch.basic_get(queue, auto_ack=True)
        except geamqp.AMQPError as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    gevent.get_hub().threadpool.spawn(running.wait).get()
    gevent.sleep(0.2)
    conn._link.transport._sock.close()  # the link dies under them
    deadline = time.monotonic() + 15
    while any(t.is_alive() for t in threads):
        assert time.monotonic() < deadline, "a foreign-thread call hung"
        gevent.sleep(0.01)
    assert len(outcomes) == 4
    conn.close()


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_slow_handlers_in_threads_and_greenlets_keep_the_connection(
        broker: BrokerEndpoint, unique_name: str) -> None:
    """The recipe: heartbeat 2 s, handlers that take 10 s per message.

    In an executor (20 messages, prefetch 4, a real thread sleeping or burning
    CPU) and, on another connection, in the dispatcher greenlet with a
    cooperative sleep (3 messages) — both connections survive, every message
    is acked exactly once, none is redelivered.
    """
    threaded_q, greenlet_q = f"{unique_name}-threads", f"{unique_name}-greenlet"
    setup = geamqp.connect(broker.url(), name="test-recipe-setup")
    sch = setup.channel()
    for q, n in ((threaded_q, 20), (greenlet_q, 3)):
        sch.queue_declare(q, auto_delete=False)
        for i in range(n):
            sch.basic_publish("", q, b"%d" % i)
    setup.close()

    seen: dict[str, list[tuple[bytes, bool]]] = {threaded_q: [], greenlet_q: []}
    done = {threaded_q: Event(), greenlet_q: Event()}

    def in_thread(channel: geamqp.Channel, method: Any, properties: Any, body: bytes) -> None:
        if int(body) % 2:
            time.sleep(10)  # blocks this OS thread, not the hub
        else:
            end = time.monotonic() + 10
            while time.monotonic() < end:  # CPU-bound, releasing the GIL now and then
                sum(range(1000))
        channel.basic_ack(method.delivery_tag)  # marshalled into the hub
        seen[threaded_q].append((body, method.redelivered))
        if len(seen[threaded_q]) == 20:
            channel.connection.add_callback_threadsafe(done[threaded_q].set)

    def in_greenlet(channel: geamqp.Channel, method: Any, properties: Any, body: bytes) -> None:
        gevent.sleep(10)
        channel.basic_ack(method.delivery_tag)
        seen[greenlet_q].append((body, method.redelivered))
        if len(seen[greenlet_q]) == 3:
            done[greenlet_q].set()

    c1 = geamqp.connect(broker.url() + "?heartbeat=2", name="test-recipe-threads")
    c2 = geamqp.connect(broker.url() + "?heartbeat=2", name="test-recipe-greenlet")
    pool = concurrent.futures.ThreadPoolExecutor(4)
    try:
        ch1, ch2 = c1.channel(), c2.channel()
        ch1.basic_qos(prefetch_count=4)
        ch1.basic_consume(threaded_q, in_thread, executor=pool)
        ch2.basic_consume(greenlet_q, in_greenlet)
        assert done[threaded_q].wait(120) and done[greenlet_q].wait(60)
        assert c1.is_open and c2.is_open
        for q, n in ((threaded_q, 20), (greenlet_q, 3)):
            assert sorted(int(b) for b, _ in seen[q]) == list(range(n))
            assert not any(redelivered for _, redelivered in seen[q])
        ch1.close()
        ch2.close()
        for q in (threaded_q, greenlet_q):
            stats = list_queue(q)
            assert stats is not None
            assert (stats.messages_ready, stats.messages_unacknowledged) == (0, 0)
    finally:
        pool.shutdown(wait=False)
        c1.close()
        c2.close()
        cleanup = geamqp.connect(broker.url(), name="test-recipe-cleanup")
        cch = cleanup.channel()
        cch.queue_delete(threaded_q)
        cch.queue_delete(greenlet_q)
        cleanup.close()


def test_threads_under_monkey_patching(broker: BrokerEndpoint) -> None:
    """Patched: threading.Thread is a greenlet (direct calls); gevent's ThreadPool
    threads are real (marshalled). Both work."""
    script = textwrap.dedent(f"""
        from gevent import monkey; monkey.patch_all()
        import threading, gevent.threadpool, geamqp
        conn = geamqp.connect({broker.url()!r}, name="test-threads-patched")
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).queue
        out = []
        def work(tag):
            ch.basic_publish("", q, tag)
            return ch.basic_get(q, auto_ack=True)[2]
        t = threading.Thread(target=lambda: out.append(work(b"greenlet-thread")))
        t.start(); t.join()
        pool = gevent.threadpool.ThreadPool(2)
        out.append(pool.spawn(work, b"real-thread").get(timeout=20))
        conn.close()
        print(sorted(out))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=50)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[b'greenlet-thread', b'real-thread']"


def test_executor_handler_that_returns_without_acking_acks_nothing(
        conn: geamqp.Connection, unique_name: str) -> None:
    ch = conn.channel()
    queue = ch.queue_declare(unique_name, auto_delete=False).queue
    try:
        for i in range(10):
            ch.basic_publish("", queue, b"%d" % i)
        ch.basic_qos(prefetch_count=3)  # at most 3 messages in threads at once
        handled: list[bytes] = []
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            ch.basic_consume(queue, lambda c, m, p, b: handled.append(b), executor=pool)
            wait_until(lambda: len(handled) == 3, timeout=10)
            stats = wait_until(lambda: (s := list_queue(queue)) and
                               s.messages_unacknowledged == 3 and s, timeout=10)
        assert stats.messages_ready == 7  # nothing acked behind the handler's back
        assert len(handled) == 3
    finally:
        ch.queue_delete(queue)
