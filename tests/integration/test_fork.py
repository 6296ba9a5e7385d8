"""Fork safety: a connection inherited by a child process is never used by accident."""

from __future__ import annotations

import os

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
