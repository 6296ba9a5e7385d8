"""A real Celery worker (``-P gevent -c 100``) on ``geamqp://`` with broker heartbeats of 2 s.

benchmarks/celery_gevent.py drives it (in a session of its own, so that the
driver, the worker and anything they started are killed together in the
finally, whatever happens): 2,000 tasks with ``task_acks_late``, every 20th
sleeping cooperatively for 6 s (three heartbeat intervals); every execution
is recorded on a queue, so a lost connection would show as a duplicate; then
50 results come back through Celery's ``rpc://`` result backend.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
@pytest.mark.timeout(130)
def test_celery_gevent_worker_runs_every_task_once_with_heartbeats(_broker_up: None) -> None:
    run: dict[str, Any] = _drive(["--tasks", "2000", "--sleep-every", "20", "--sleep", "6",
                                  "--rpc-checks", "50", "--timeout", "60"])
    detail = json.dumps(run, indent=1)
    assert run["missing"] == 0, detail  # every task ran...
    assert run["duplicates"] == 0, detail  # ...once: no redelivery after a lost connection
    assert run["left_in_queue"] == 0, detail  # nothing left unacked to run again
    assert run["losses"] == 0 and run["errors"] == 0, detail  # the log: no loss, no error
    assert run["rpc_ok"] == run["rpc_checks"] == 50, detail
    # Speed: every task ran within the driver's 60 s (--timeout), which already rules
    # out py-amqp's heartbeats-on pace (8 tasks/s: about 4 minutes for these 2,000).
    # 100 sleepers x 6 s over 100 slots is 6 s at best; quiet runs take 9-18 s, and
    # this shared machine under load has needed 43 s.
    assert run["wall_s"] < 60, detail


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_example_app_runs_as_its_readme_says(_broker_up: None) -> None:
    from support.broker import fresh_vhost

    folder = os.path.join(ROOT, "examples", "celery_gevent")
    with fresh_vhost("geamqp-kombu-example") as vhost:
        env = dict(os.environ, BROKER_URL=f"geamqp://guest:guest@localhost:5672/{vhost}")
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "gevent", "-c", "10",
             "--loglevel=INFO"], cwd=folder, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            call = subprocess.run(
                [sys.executable, "-c", "import tasks; print(tasks.add.delay(2, 3).get(timeout=60));"
                 " print(tasks.slow_io.delay(0.5).get(timeout=30))"],
                cwd=folder, env=env, capture_output=True, text=True, timeout=100)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            log = worker.communicate(timeout=10)[0]
        assert call.stdout.split("\n")[:2] == ["5", "slept 0.5 s"], call.stderr[-2000:] + log


@pytest.mark.slow
@pytest.mark.timeout(130)
def test_celery_worker_recovers_from_a_connection_reset(_broker_up: None) -> None:
    """Every broker connection of the worker is reset after 200 of 600 tasks ran: the
    worker notices (Celery's consumer restarts; kombu must not swap the connection
    silently under it) and every task runs at least once; nothing is left."""
    run: dict[str, Any] = _drive(["--tasks", "600", "--sleep-every", "0", "--reset-after", "200",
                  "--timeout", "60"])
    detail = json.dumps({k: v for k, v in run.items() if k != "log_tail"}, indent=1)
    assert run["missing"] == 0, detail + "\n".join(run["log_tail"])
    assert run["left_in_queue"] == 0, detail
    assert run["consumer_restarts"] >= 1, detail


def _drive(args: list[str]) -> dict[str, Any]:
    driver = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "benchmarks", "celery_gevent.py"),
         "--transport", "geamqp", "--heartbeat", "2", "--json", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        out, err = driver.communicate(timeout=110)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)  # the worker too, if anything was left
        driver.wait()
    assert out.strip(), err[-3000:]
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result
