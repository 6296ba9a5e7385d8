"""geamqp underneath: the compat objects may be used from other OS threads, and the
broker's blocked/unblocked notices reach pika-style callbacks at a dispatch point."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from support import broker as broker_ctl

from geamqp.pika._threads import _os_thread_ident

pytestmark = pytest.mark.timeout(30)


def test_channel_and_connection_used_from_another_thread(conn: Any, ch: Any,
                                                        queue: str) -> None:
    """pika forbids it; geamqp runs such calls in the connection's hub and blocks only the
    calling thread, so callbacks they dispatch run in the connection's thread."""
    results: dict[str, Any] = {}
    main = _os_thread_ident()

    def worker() -> None:
        try:
            ch.basic_publish("", queue, b"from a thread")
            results["get"] = ch.basic_get(queue, auto_ack=True)[2]
            ch.basic_consume(queue, lambda c, m, p, b: results.update(
                body=b, thread=_os_thread_ident()), auto_ack=True)
            ch.basic_publish("", queue, b"consumed")
            while "body" not in results:
                conn.process_data_events(0.1)
            results["idle"] = next(ch.consume(queue, inactivity_timeout=0.05))
            ch.cancel()
        except BaseException as exc:  # handed to the test thread
            results["error"] = exc

    thread = threading.Thread(target=worker)
    thread.start()
    while thread.is_alive():
        conn.sleep(0.05)  # this thread keeps its hub running too
    assert "error" not in results, results.get("error")
    assert results["get"] == b"from a thread"
    assert results["body"] == b"consumed" and results["thread"] == main
    assert results["idle"] == (None, None, None)


@pytest.mark.broker_disruptive
def test_blocked_and_unblocked_callbacks_get_frames(pika: Any, conn: Any, ch: Any,
                                                    queue: str) -> None:
    events: list[Any] = []
    conn.add_on_connection_blocked_callback(lambda c, f: events.append((c, f.method)))
    conn.add_on_connection_unblocked_callback(lambda c, f: events.append((c, f.method)))
    with broker_ctl.memory_alarm():
        ch.basic_publish("", queue, b"trigger")  # under the alarm, publishing blocks us
        while not events:
            conn.process_data_events(0.1)
        assert events[0][0] is conn
        assert isinstance(events[0][1], pika.spec.Connection.Blocked)
        assert "memory" in events[0][1].reason.lower()
    while len(events) < 2:
        conn.process_data_events(0.1)
    assert isinstance(events[1][1], pika.spec.Connection.Unblocked)
