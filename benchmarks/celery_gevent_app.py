"""The Celery app that benchmarks/celery_gevent.py runs in a worker (``-A celery_gevent_app``).

Configured by environment variables the driver sets:
CELERY_BENCH_BROKER (a ``geamqp://`` or ``pyamqp://`` URL), CELERY_BENCH_HEARTBEAT
(broker_heartbeat, seconds; 0 = off), CELERY_BENCH_QUEUE (the task queue) and
CELERY_BENCH_RECORDS (a queue that gets one message per task *execution*, so the
driver sees duplicates: with task_acks_late a lost connection redelivers).
"""

from __future__ import annotations

import os

import gevent
from celery import Celery

BROKER = os.environ["CELERY_BENCH_BROKER"]
if BROKER.startswith("geamqp"):
    import geamqp.kombu  # noqa: F401  (registers geamqp:// with kombu)

QUEUE = os.environ["CELERY_BENCH_QUEUE"]
RECORDS = os.environ["CELERY_BENCH_RECORDS"]

app = Celery("celery_gevent_app", broker=BROKER, backend="rpc://")
app.conf.update(
    broker_heartbeat=float(os.environ.get("CELERY_BENCH_HEARTBEAT", "2")),
    broker_connection_retry_on_startup=True,
    task_acks_late=True,
    task_default_queue=QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=True,
)


@app.task(name="bench.work", ignore_result=True)
def work(index: int, sleep: float) -> None:
    """Sleep cooperatively when asked, then record this execution."""
    if sleep:
        gevent.sleep(sleep)
    with app.producer_or_acquire() as producer:
        producer.publish({"i": index, "pid": os.getpid()}, exchange="", routing_key=RECORDS,
                         serializer="json", retry=True)


@app.task(name="bench.echo")
def echo(value: object) -> object:
    """Returns its argument: the rpc:// result backend carries it back to the caller."""
    return value


if os.environ.get("CELERY_BENCH_PROFILE"):  # a cProfile of the worker, from ready to shutdown
    import cProfile

    from celery import signals

    _profile = cProfile.Profile()

    @signals.worker_ready.connect
    def _start_profile(**_: object) -> None:
        _profile.enable()

    @signals.worker_shutdown.connect
    def _dump_profile(**_: object) -> None:
        _profile.disable()
        _profile.dump_stats(os.environ["CELERY_BENCH_PROFILE"])
