"""A WSGI app that publishes one confirmed message per request, under gunicorn's gevent worker.

    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2F AMQP_QUEUE=requests \\
        gunicorn -k gevent -w 2 examples.gunicorn_gevent_publisher:app

gunicorn forks its workers after importing this module, so nothing here
connects at import time: each worker process opens its own connection the
first time a request needs it (a connection inherited across fork() would
raise ForkedConnectionError). All requests of a worker share that connection
through one `geamqp.Publisher`: each request greenlet waits only for its own
confirm.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from gevent.lock import Semaphore

import geamqp

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
QUEUE = os.environ.get("AMQP_QUEUE", "geamqp-requests")

_lock = Semaphore()
_publisher: geamqp.Publisher | None = None


def publisher() -> geamqp.Publisher:
    """This worker's Publisher, created on first use (i.e. after the fork)."""
    global _publisher
    with _lock:  # many request greenlets may arrive at once
        if _publisher is None or not _publisher.connection.is_open:
            connection = geamqp.connect(URL, name=f"gunicorn-worker-{os.getpid()}")
            connection.channel().queue_declare(QUEUE, durable=True)
            _publisher = geamqp.Publisher(connection, channels=2)
        return _publisher


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = json.dumps({"path": environ.get("PATH_INFO", "/"), "worker": os.getpid()})
    try:
        publisher().publish("", QUEUE, body.encode(), geamqp.BasicProperties(
            content_type="application/json", delivery_mode=2))
    except geamqp.AMQPError as exc:
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
        return [f"not queued: {type(exc).__name__}\n".encode()]
    start_response("202 Accepted", [("Content-Type", "text/plain")])
    return [b"queued\n"]
