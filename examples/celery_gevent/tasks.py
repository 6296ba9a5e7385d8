"""A Celery app whose gevent worker runs on geamqp: change ``pyamqp://`` to
``geamqp://`` and import ``geamqp.kombu`` once. See README.md beside this file.

    celery -A tasks worker -P gevent -c 100 --loglevel=INFO     # in this folder
    python -c "import tasks; print(tasks.add.delay(2, 3).get(timeout=10))"
"""

from __future__ import annotations

import os

import gevent
from celery import Celery

import geamqp.kombu  # noqa: F401  (registers geamqp:// and geamqps:// with kombu)

BROKER = os.environ.get("BROKER_URL", "geamqp://guest:guest@localhost:5672//")

app = Celery("tasks", broker=BROKER, backend="rpc://")
app.conf.update(
    broker_heartbeat=10,  # kept by geamqp's own greenlets, however busy the pool is
    task_acks_late=True,  # a task is acked when it has run: a lost connection redelivers
    worker_prefetch_multiplier=4,
)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def slow_io(seconds: float) -> str:
    """Stands for a slow HTTP call or query: sleeps cooperatively, the other
    99 greenlets and the broker connection's heartbeats carry on."""
    gevent.sleep(seconds)
    return f"slept {seconds} s"
