"""A real Celery worker (``-P gevent``) on geamqp's kombu transport and on py-amqp.

Each run: a fresh vhost; ``celery -A celery_gevent_app worker -P gevent -c 100``
as a subprocess with the given broker heartbeat and ``task_acks_late``; once
it is ready, N tasks are sent (every k-th sleeps cooperatively), and every
execution is recorded on a queue that this driver counts (a lost connection
would redeliver and show up as a duplicate). Then ``--rpc-checks`` echo tasks
go through Celery's ``rpc://`` result backend, the worker is stopped, and the
task queue must be empty (nothing left unacked to run again).

Reported per run: wall time from the first send to the last first execution,
tasks/s, the worker's CPU seconds over that window (utime+stime from /proc),
connection losses and errors its log shows, duplicates, messages left.

    .venv/bin/python benchmarks/celery_gevent.py --transport geamqp,pyamqp \
        --heartbeat 2 --repeat 3
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import quote  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

import geamqp  # noqa: E402
import geamqp.kombu  # noqa: E402  (registers geamqp:// for the caller's Celery app)

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMES = {"geamqp": "geamqp", "pyamqp": "pyamqp", "amqp": "amqp"}
# What a lost or failing broker connection looks like in a Celery worker's log.
LOSS = re.compile(r"Connection to broker lost|missed heartbeat|Cannot connect to|"
                  r"ConnectionResetError|Broken pipe|StreamLostError|AMQPHeartbeatTimeout|"
                  r"Connection reset|ConnectionForced|RecoverableConnectionError", re.I)
ERROR = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback")
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    transport: str
    heartbeat: float
    tasks: int
    wall_s: float = 0.0
    tasks_per_s: float = 0.0
    worker_cpu_s: float = 0.0
    losses: int = 0
    consumer_restarts: int = 0  # "consumer: Connection to broker lost" lines
    worker_exit: int | None = None  # the worker's exit code if it died during the run
    errors: int = 0
    duplicates: int = 0
    missing: int = 0
    left_in_queue: int = -1
    rpc_ok: int = 0
    rpc_checks: int = 0
    per_second: list[int] = field(default_factory=list)  # first executions recorded, per second
    log_tail: list[str] = field(default_factory=list)


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


def broker_url(transport: str, vhost: str) -> str:
    return f"{SCHEMES[transport]}://guest:guest@127.0.0.1:5672/{quote(vhost, safe='')}"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process; NaN once it has exited."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Worker:
    """The worker subprocess; its log is read line by line in a greenlet."""

    def __init__(self, env: dict[str, str], concurrency: int) -> None:
        self.lines: list[str] = []
        self.ready = Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_gevent_app", "worker", "-P", "gevent",
             "-c", str(concurrency), "--loglevel=INFO", "-n", f"bench-{uuid.uuid4().hex[:8]}@%h"],
            cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.reader = gevent.spawn(self._read)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self.lines.append(line)
            if " ready." in line:
                self.ready.set()
        self.ready.set()  # exited: whoever waits finds out

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL. The gevent pool has no child
        processes; the worker stays in this driver's process group, so whoever
        runs the driver in a session of its own can kill everything at once."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.reader.join(5)


def caller_app(url: str, queue: str) -> Any:
    from celery import Celery

    app = Celery("celery_gevent_caller", broker=url, backend="rpc://")
    app.conf.update(task_default_queue=queue, task_serializer="json",
                    result_serializer="json", accept_content=["json"])
    return app


@dataclass
class Plan:
    """What one run does (the command line's options)."""

    tasks: int = 2000
    sleep_every: int = 10
    sleep: float = 7.0
    concurrency: int = 100
    rpc_checks: int = 0
    timeout: float = 300.0
    log: str | None = None
    reset_after: int = 0  # >0: the worker reaches the broker through a proxy reset then


def count_records(conn: geamqp.Connection, records: str, n: int, seen: Counter[int],
                  done: Event, arrivals: list[float], on_count: Any = None) -> None:
    def on_record(_ch: Any, _method: Any, _props: Any, body: bytes) -> None:
        index = json.loads(body)["i"]
        if index not in seen:
            arrivals.append(time.monotonic())
        seen[index] += 1
        if on_count is not None:
            on_count(len(seen))
        if len(seen) >= n:
            done.set()

    conn.channel().basic_consume(records, on_record, auto_ack=True)


def run_once(transport: str, heartbeat: float, plan: Plan) -> Run:
    vhost = f"celery-bench-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        proxy = _start_proxy() if plan.reset_after else None
        try:
            return _run_in(vhost, Run(transport, heartbeat, plan.tasks), plan, proxy)
        finally:
            if proxy is not None:
                proxy.stop()
    finally:
        rabbitmqctl("delete_vhost", vhost)


def _start_proxy() -> Any:
    """tests/integration's fault proxy in front of the broker, for --reset-after."""
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "integration"))
    from support.faultproxy import FaultProxy

    return FaultProxy(upstream=("127.0.0.1", 5672)).start()


def _run_in(vhost: str, run: Run, plan: Plan, proxy: Any) -> Run:
    url = broker_url(run.transport, vhost)
    worker_url = url if proxy is None else url.replace(":5672/", f":{proxy.port}/")
    queue, records = f"bench-tasks-{uuid.uuid4().hex[:8]}", f"bench-records-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, CELERY_BENCH_BROKER=worker_url,
               CELERY_BENCH_HEARTBEAT=str(run.heartbeat), CELERY_BENCH_QUEUE=queue,
               CELERY_BENCH_RECORDS=records,
               PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    conn = geamqp.connect(broker_url("amqp", vhost))
    conn.channel().queue_declare(records)
    worker = Worker(env, plan.concurrency)
    app = caller_app(url, queue)
    try:
        if not worker.ready.wait(plan.timeout) or worker.proc.poll() is not None:
            raise RuntimeError("worker did not start:\n" + "\n".join(worker.lines[-30:]))
        _drive(run, app, conn, worker, records, plan, proxy)
        run.rpc_checks = plan.rpc_checks
        results = [app.send_task("bench.echo", args=(f"v{i}",)) for i in range(plan.rpc_checks)]
        run.rpc_ok = sum(r.get(timeout=plan.timeout) == f"v{i}" for i, r in enumerate(results))
    finally:
        if plan.rpc_checks:  # the caller's result drainer greenlet, started by get()
            app.backend.result_consumer.drainer.stop()
        app.close()
        worker.stop()
        _tally_log(run, worker.lines)
        if plan.log:
            with open(plan.log, "a") as f:
                f.write(f"==== {run.transport} heartbeat {run.heartbeat:g}\n")
                f.write("\n".join(worker.lines) + "\n")
    run.left_in_queue = conn.channel().queue_declare(queue, passive=True).message_count
    conn.close()
    return run


def _drive(run: Run, app: Any, conn: geamqp.Connection, worker: Worker, records: str,
           plan: Plan, proxy: Any) -> None:
    seen: Counter[int] = Counter()
    done = Event()
    arrivals: list[float] = []

    def maybe_reset(count: int) -> None:
        if proxy is not None and count == plan.reset_after:
            gevent.spawn(proxy.reset_all)

    count_records(conn, records, run.tasks, seen, done, arrivals, maybe_reset)
    cpu0, t0 = cpu_seconds(worker.proc.pid), time.monotonic()
    for i in range(run.tasks):
        every = plan.sleep_every
        pause = plan.sleep if every and i % every == every - 1 else 0
        app.send_task("bench.work", args=(i, pause))
    finished = done.wait(plan.timeout)
    run.wall_s = time.monotonic() - t0
    run.worker_cpu_s = cpu_seconds(worker.proc.pid) - cpu0
    run.worker_exit = worker.proc.poll()
    run.tasks_per_s = len(seen) / run.wall_s
    run.missing = run.tasks - len(seen)
    run.duplicates = sum(c - 1 for c in seen.values())
    per_second = Counter(int(t - t0) for t in arrivals)
    run.per_second = [per_second.get(s, 0) for s in range(int(run.wall_s) + 1)]
    if not finished or run.worker_exit is not None:
        run.log_tail = worker.lines[-40:]


def _tally_log(run: Run, lines: list[str]) -> None:
    run.losses = sum(1 for line in lines if LOSS.search(line))
    run.consumer_restarts = sum("Connection to broker lost" in line for line in lines)
    run.errors = sum(1 for line in lines if ERROR.search(line))
    if run.losses or run.errors:
        run.log_tail = [line for line in lines if LOSS.search(line) or ERROR.search(line)][-20:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", default="geamqp,pyamqp")
    parser.add_argument("--heartbeat", default="2", help="comma-separated; 0 = off")
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--sleep-every", type=int, default=10)
    parser.add_argument("--sleep", type=float, default=7.0)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rpc-checks", type=int, default=0)
    parser.add_argument("--reset-after", type=int, default=0,
                        help="reset the worker's broker connections after this many tasks ran")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--json", action="store_true", help="one JSON object per run")
    parser.add_argument("--log", help="append each worker's log to this file")
    args = parser.parse_args()
    plan = Plan(args.tasks, args.sleep_every, args.sleep, args.concurrency, args.rpc_checks,
                args.timeout, args.log, args.reset_after)
    if not args.json:
        print("| transport | heartbeat | tasks | wall s | tasks/s | worker CPU s | "
              "connection losses | duplicates | missing |")
        print("|---|---|---|---|---|---|---|---|---|")
    ok = True
    for _ in range(args.repeat):
        for transport in args.transport.split(","):
            for heartbeat in (float(h) for h in args.heartbeat.split(",")):
                run = run_once(transport, heartbeat, plan)
                ok = ok and not (run.missing or run.left_in_queue)
                if args.json:
                    print(json.dumps(asdict(run)), flush=True)
                else:
                    print(f"| {transport} | {heartbeat:g} s | {run.tasks} | {run.wall_s:.1f} | "
                          f"{run.tasks_per_s:.0f} | {run.worker_cpu_s:.1f} | {run.losses} | "
                          f"{run.duplicates} | {run.missing} |", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
