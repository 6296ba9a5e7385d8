"""The core scenarios under ``gevent.monkey.patch_all()``, in a fresh interpreter.

Patching must happen before anything else is imported, so the scenarios run in
a subprocess: once with ``patch_all()`` first, once without, and both must
report the same outcomes. The scenario script prints one JSON object; any
traceback on its stderr (a greenlet error printed by the hub included) fails
the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCENARIOS = textwrap.dedent(
    r"""
    import sys
    if sys.argv[1] == "patched":
        from gevent import monkey
        monkey.patch_all()

    import json
    import threading
    import gevent
    import gevent.monkey
    from gevent.event import Event

    import geamqp

    url, name = sys.argv[2], sys.argv[3]
    out = {"socket_patched": gevent.monkey.is_module_patched("socket")}

    conn = geamqp.connect(url, name=name, recover=False)
    closes, closed = [], Event()
    def on_close(connection, error):
        closes.append(type(error).__name__)
        closed.set()
    conn.add_on_close_callback(on_close)
    out["open"] = conn.is_open
    out["product"] = conn.server_properties.get("product")

    ch = conn.channel()
    queue = ch.queue_declare("", exclusive=True).queue
    out["declared"] = queue.startswith("amq.gen-")
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", queue, f"m{i}".encode())  # returns once acked
    out["confirmed"] = ch.wait_for_confirms(timeout=5)

    received = []
    def on_message(channel, method, properties, body):
        received.append(body.decode())
        channel.basic_ack(method.delivery_tag)
        if len(received) == 3:
            channel.stop_consuming()
    ch.basic_consume(queue, on_message)
    consuming = gevent.spawn(ch.start_consuming)
    consuming.join(10)
    out["consumed"] = received

    ch.basic_publish("", queue, b"single")
    method, properties, body = ch.basic_get(queue, auto_ack=True)
    out["got"] = body.decode() if method else None
    out["empty_after"] = ch.basic_get(queue)[0] is None

    # a real OS thread (whatever threading means now) hands work to the hub
    ran = Event()
    start_thread = gevent.monkey.get_original("_thread", "start_new_thread")
    start_thread(conn.add_callback_threadsafe, (ran.set,))
    out["threadsafe_callback"] = ran.wait(5)

    # greenlets share the connection: 20 concurrent RPCs on one channel
    jobs = [gevent.spawn(ch.queue_declare, queue, passive=True) for _ in range(20)]
    gevent.joinall(jobs, timeout=10, raise_error=True)
    out["concurrent_rpcs"] = sum(1 for j in jobs if j.successful())

    conn.close()
    out["closed"] = conn.is_closed and closed.wait(5)
    out["close_callbacks"] = closes
    print(json.dumps(out, sort_keys=True))
    """
)

EXPECTED = {
    "open": True,
    "product": "RabbitMQ",
    "declared": True,
    "confirmed": True,
    "consumed": ["m0", "m1", "m2"],
    "got": "single",
    "empty_after": True,
    "threadsafe_callback": True,
    "concurrent_rpcs": 20,
    "closed": True,
    "close_callbacks": ["ConnectionClosedByClient"],
}


def _run(mode: str, url: str, name: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SCENARIOS, mode, url, name],
        capture_output=True, text=True, timeout=40, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("mode", ["patched", "unpatched"])
def test_core_scenarios(broker, unique_name, mode):
    result = _run(mode, broker.url(), unique_name)
    assert result.pop("socket_patched") is (mode == "patched")
    assert result == EXPECTED
