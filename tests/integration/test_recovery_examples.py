"""The four reconnecting-consumer examples, each run as a program whose connection
is killed under it (a proxy reset, refused connects, `rabbitmqctl close_connection`).

The example runs as a child process (gevent.subprocess, so the proxy in this
process keeps forwarding); its stdout lines are read by a greenlet and waited
on. Before a kill the test waits until the broker holds no unacked message,
so what the example printed is exactly what it consumed.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gevent
import gevent.subprocess
import pytest
from support import broker as broker_ctl
from support.faultproxy import Changes

import geamqp

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class Program:
    """A running example: its output lines, waited on as they arrive."""

    def __init__(self, script: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self._changes = Changes()
        self.process = gevent.subprocess.Popen(
            [sys.executable, str(EXAMPLES / script), *args], stdout=gevent.subprocess.PIPE,
            stderr=gevent.subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})
        self._reader = gevent.spawn(self._read)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            self._changes.notify()
        self._changes.notify()

    def wait_line(self, pattern: str, n: int = 1, timeout: float = 15.0) -> list[str]:
        """The lines matching `pattern`, once there are at least `n` of them."""
        def matching() -> list[str]:
            return [line for line in self.lines if re.search(pattern, line)]

        try:
            self._changes.wait_for(lambda: len(matching()) >= n, timeout, f"{n} x {pattern!r}")
            return matching()
        except TimeoutError:
            raise AssertionError(f"no {n} x {pattern!r} in:\n" + "\n".join(self.lines)) from None

    def finish(self, timeout: float = 20.0) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return int(code)

    def received(self) -> list[str]:
        return [m.group(1) for line in self.lines if (m := re.match(r"received (\S+)", line))]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._reader.kill()


@contextmanager
def running(script: str, *args: str, env: dict[str, str] | None = None) -> Iterator[Program]:
    program = Program(script, *args, env=env)
    try:
        yield program
    finally:
        program.kill()


@pytest.fixture
def queue(broker, unique_name) -> Iterator[str]:
    try:
        yield unique_name
    finally:
        broker_ctl.delete_queue(unique_name)


@pytest.fixture
def publish(broker, queue):
    conn = geamqp.connect(broker.url(), recover=False)
    ch = conn.channel()
    ch.queue_declare(queue, durable=True)
    ch.confirm_delivery()

    def send(*bodies: str) -> None:
        for body in bodies:
            ch.basic_publish("", queue, body.encode())

    try:
        yield send
    finally:
        conn.close()


def all_acked(queue: str) -> None:
    broker_ctl.wait_until(
        lambda: (s := broker_ctl.list_queue(queue)) is not None
        and s.messages_ready == 0 and s.messages_unacknowledged == 0,
        what=f"every message of {queue} consumed and acked")


@pytest.mark.parametrize(("script", "env"), [
    ("consume_recover.py", {}),
    ("consume_recover_retry.py", {"GEAMQP_RETRY_DELAY": "0.1"}),
])
def test_loop_consumers_reconnect_on_a_reset_and_stop_on_a_broker_close(
        proxy, queue, publish, script, env):
    """pika's pattern: reconnect on AMQPConnectionError, stop on ConnectionClosedByBroker."""
    args = ("--url", proxy.url(), "--queue", queue, "--max-seconds", "30",
            "--retry-delay", "0.1") if script == "consume_recover.py" else (
            "--url", proxy.url(), "--queue", queue, "--max-seconds", "30")
    with running(script, *args, env=env) as program:
        program.wait_line("^consuming from")
        publish("m0", "m1")
        program.wait_line("^received m1")
        all_acked(queue)
        proxy.reset_all()
        program.wait_line("^consuming from", 2)
        publish("m2", "m3")
        program.wait_line("^received m3")
        all_acked(queue)
        broker_ctl.close_connection(queue)  # 320: on purpose, so the program ends
        assert program.finish() == 0, "\n".join(program.lines)
        program.wait_line("closed by the broker .*320.*stopping")
        assert program.received() == ["m0", "m1", "m2", "m3"]
        assert program.lines[-1] == "done: 4 messages"
        if script == "consume_recover_retry.py":
            assert len(program.wait_line("^connecting")) == 2  # one retry


def test_callback_consumer_reconnects_with_growing_delays(proxy, queue, publish):
    args = ("--url", proxy.url(), "--queue", queue, "--count", "4", "--max-seconds", "30",
            "--reconnect-delay", "0.05", "--max-delay", "1")
    with running("asynchronous_consumer_example.py", *args) as program:
        program.wait_line("^consuming from")
        publish("m0", "m1")
        program.wait_line("^received m1")
        all_acked(queue)
        proxy.refuse(True)
        proxy.reset_all()
        waits = program.wait_line(r"reconnecting in", 4)  # the loss, then 3 refused connects
        proxy.refuse(False)
        program.wait_line("^consuming from", 2)
        publish("m2", "m3")
        assert program.finish() == 0, "\n".join(program.lines)
        delays = [float(re.findall(r"in ([\d.]+) s", w)[0]) for w in waits]
        assert delays == sorted(delays) and delays[-1] > delays[0], delays
        assert program.received() == ["m0", "m1", "m2", "m3"]
        assert program.lines[-1] == "done: 4 messages"


def test_supervised_consumer_needs_no_recovery_code(proxy, queue, publish):
    args = ("--url", proxy.url(), "--queue", queue, "--count", "6", "--max-seconds", "30")
    with running("consume_supervised.py", *args) as program:
        program.wait_line("^consuming from")
        publish("m0", "m1")
        program.wait_line("^received m1")
        all_acked(queue)
        proxy.reset_all()
        publish("m2", "m3")  # queued while the example reconnects
        program.wait_line("^received m3")
        all_acked(queue)
        started = time.monotonic()
        broker_ctl.close_connection(queue)  # 320: recovered too, unlike the loops above
        publish("m4", "m5")
        assert program.finish() == 0, "\n".join(program.lines)
        assert time.monotonic() - started < 15
        assert program.received() == ["m0", "m1", "m2", "m3", "m4", "m5"]
        assert program.lines[-1] == "done: 6 messages"
