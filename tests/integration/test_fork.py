"""Fork safety: a connection inherited by a child process is never used by accident."""

from __future__ import annotations

import os

import gevent.event
import gevent.os
from support.broker import BrokerEndpoint

import geamqp


def test_forked_child_gets_a_clear_error_and_opens_its_own(broker: BrokerEndpoint,
                                                          unique_name: str) -> None:
    conn = geamqp.connect(broker.url(), name="test-fork-parent")
    ch = conn.channel()
    queue = ch.queue_declare(unique_name, exclusive=False, auto_delete=False).queue
    try:
        pid = gevent.os.fork()
        if pid == 0:  # the child: report through the exit code only
            code = 10
            try:
                conn.channel()
            except geamqp.ForkedConnectionError as exc:
                code = 11 if "fork" in str(exc) else 12
            try:
                ch.basic_publish("", queue, b"via the parent's channel")
                code = 13
            except geamqp.ForkedConnectionError:
                pass
            try:
                conn.add_callback_threadsafe(lambda: None)
                code = 14
            except geamqp.ForkedConnectionError:
                pass
            if code == 11:
                own = geamqp.connect(broker.url(), name="test-fork-child")
                own.channel().basic_publish("", queue, b"from the child")
                own.close()
                code = 0
            os._exit(code)
        _, status = gevent.os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, os.WEXITSTATUS(status)
        # The parent's connection is untouched by the child.
        assert conn.is_open
        assert ch.basic_get(queue, auto_ack=True)[2] == b"from the child"
        assert ch.basic_get(queue, auto_ack=True) == (None, None, None)
    finally:
        ch.queue_delete(queue)
        conn.close()


def test_a_forked_child_leaves_the_parents_connection_alone(broker: BrokerEndpoint) -> None:
    """The child's hub must not run the inherited reader, writer and heartbeat on the
    parent's socket: it would take the parent's frames (deliveries vanish) or answer
    for it. The parent gets every message and keeps its connection."""
    conn = geamqp.connect(broker.url(), recover=False)
    try:
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).queue
        got: list[bytes] = []
        all_in = gevent.event.Event()

        def on_message(channel: object, method: object, properties: object,
                       body: bytes) -> None:
            got.append(body)
            if len(got) == 100:
                all_in.set()

        ch.basic_consume(queue, on_message, auto_ack=True)
        pid = gevent.os.fork()
        if pid == 0:  # the child runs its hub for a while, touching nothing
            gevent.sleep(2)
            os._exit(0)
        publisher = conn.channel()
        for i in range(100):
            publisher.basic_publish("", queue, b"%d" % i)
            gevent.sleep(0.01)  # the child's hub runs meanwhile
        assert all_in.wait(10), f"the parent got {len(got)} of 100"
        _, status = gevent.os.waitpid(pid, 0)
        assert status == 0
        assert conn.is_open and ch.queue_declare(queue, passive=True).message_count == 0
    finally:
        conn.close()
