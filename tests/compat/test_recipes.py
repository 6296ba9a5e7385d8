"""pika's documented recipes, run as programs with only their imports changed.

tests/compat/recipes/ holds the recipes as pika documents them, `import pika` replaced by
`import geamqp.pika as pika`. Each test runs a copy in a child process with the few
substitutions a shared broker and a time budget need, listed next to the test (the
target address and a connection name, unique queue and exchange names, shorter
heartbeat/work/retry times); every substitution must match exactly once, so the
recipe text cannot drift unnoticed.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.subprocess
import pytest
from support import broker as broker_ctl
from support.faultproxy import Changes

import geamqp

RECIPES = Path(__file__).resolve().parent / "recipes"


class Program:
    """A recipe running as a child process; its output lines are waited on."""

    def __init__(self, path: Path, *args: str) -> None:
        self.lines: list[str] = []
        self._changes = Changes()
        self.process = gevent.subprocess.Popen(
            [sys.executable, str(path), *args], stdout=gevent.subprocess.PIPE,
            stderr=gevent.subprocess.STDOUT, text=True, env={**os.environ})
        self._reader = gevent.spawn(self._read)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            self._changes.notify()
        self._changes.notify()

    def wait_line(self, pattern: str, n: int = 1, timeout: float = 15.0) -> list[str]:
        def matching() -> list[str]:
            return [line for line in self.lines if re.search(pattern, line)]

        try:
            self._changes.wait_for(lambda: len(matching()) >= n, timeout, pattern)
        except TimeoutError:
            raise AssertionError(f"no {n} x {pattern!r} in:\n" + self.output()) from None
        return matching()

    def output(self) -> str:
        return "\n".join(self.lines)

    def finish(self, timeout: float = 20.0) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return int(code)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._reader.kill()


def recipe_copy(tmp_path: Path, name: str, substitutions: dict[str, str],
                names: dict[str, str]) -> Path:
    """A copy of the recipe with `substitutions` (each must be found) and its queue and
    exchange names ("standard", "test_exchange", quoted) replaced by `names`."""
    text = (RECIPES / name).read_text()
    assert "import geamqp.pika as pika" in text and "\nimport pika" not in text
    for old, new in substitutions.items():
        assert old in text, f"{old!r} not in {name}"
        text = text.replace(old, new)
    text, queues = re.subn(r"""(["'])standard\1""", rf"\g<1>{names['queue']}\g<1>", text)
    text, exchanges = re.subn(r"""(["'])test_exchange\1""", rf"\g<1>{names['exchange']}\g<1>",
                              text)
    assert queues and exchanges, name
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def names(unique_name: str) -> Iterator[dict[str, str]]:
    """The recipe's queue/exchange/connection names made unique; both deleted after."""
    chosen = {"queue": f"{unique_name}-q", "exchange": f"{unique_name}-x",
              "connection": f"{unique_name}-c"}
    try:
        yield chosen
    finally:
        with geamqp.connect(broker_ctl.amqp_url(), recover=False) as conn:
            ch = conn.channel()
            ch.queue_delete(chosen["queue"])
            ch.exchange_delete(chosen["exchange"])


class Publisher:
    """Publishes to the recipe's exchange once its queue is bound (confirmed, mandatory)."""

    def __init__(self, exchange: str) -> None:
        self.exchange = exchange
        self.conn = geamqp.connect(broker_ctl.amqp_url(), recover=False)
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()

    def send(self, *bodies: str) -> None:
        for body in bodies:
            broker_ctl.wait_until(lambda b=body: self._routed(b), timeout=15,
                                  what=f"{body} routed to the recipe's queue")

    def _routed(self, body: str) -> bool:
        try:
            self.ch.basic_publish(self.exchange, "standard_key", body.encode(), mandatory=True)
        except (geamqp.UnroutableError, geamqp.ChannelClosedByBroker):
            if not self.ch.is_open:  # the exchange does not exist yet
                self.ch = self.conn.channel()
                self.ch.confirm_delivery()
            return False
        return True


def consuming(queue: str) -> None:
    broker_ctl.wait_until(lambda: (s := broker_ctl.list_queue(queue)) is not None
                          and s.consumers == 1, timeout=15, what=f"a consumer on {queue}")


def all_acked(queue: str, timeout: float = 15) -> None:
    broker_ctl.wait_until(
        lambda: (s := broker_ctl.list_queue(queue)) is not None
        and s.messages_ready == 0 and s.messages_unacknowledged == 0,
        timeout=timeout, what=f"every message of {queue} acked")


@pytest.mark.timeout(60)
def test_threaded_ack_recipe(tmp_path: Path, names: dict[str, str]) -> None:
    """Work (3 s) outlasts two heartbeat intervals (1 s); acks come back through
    add_callback_threadsafe and start_consuming; Ctrl-C ends it cleanly."""
    path = recipe_copy(tmp_path, "basic_consumer_threaded.py", {
        "'localhost', credentials=credentials, heartbeat=5":
            "'127.0.0.1', credentials=credentials, heartbeat=1, "
            f"client_properties={{'connection_name': '{names['connection']}'}}",
        "time.sleep(10)": "time.sleep(3)",
    }, names)
    program = Program(path)
    publisher = Publisher(names["exchange"])
    try:
        consuming(names["queue"])
        first = broker_ctl.find_connections(names["connection"])
        publisher.send("m0", "m1")
        program.wait_line(r"Delivery tag: 2 Message body: b'm1'", timeout=20)
        all_acked(names["queue"], timeout=20)
        assert broker_ctl.find_connections(names["connection"]) == first  # never dropped
        program.process.send_signal(signal.SIGINT)
        assert program.finish() == 0, program.output()
        assert "Traceback" not in program.output()
        assert len(program.wait_line(r"Thread id: \d+ Delivery tag")) == 2
    finally:
        publisher.conn.close()
        program.stop()


LOOP_RECIPES = {
    "consume_recover.py": {},
    "consume_recover_retry.py": {"delay=5": "delay=0.1"},
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("recipe", sorted(LOOP_RECIPES))
def test_reconnecting_consumer_recipes(tmp_path: Path, names: dict[str, str], proxy: Any,
                                       recipe: str) -> None:
    """Reconnect after a reset (AMQPConnectionError); stop on a broker close (320)."""
    path = recipe_copy(tmp_path, recipe, {
        "pika.ConnectionParameters('localhost', credentials=credentials)":
            f"pika.ConnectionParameters('{proxy.host}', {proxy.port}, "
            f"credentials=credentials, client_properties={{'connection_name': "
            f"'{names['connection']}'}})",
        **LOOP_RECIPES[recipe],
    }, names)
    program = Program(path)
    publisher = Publisher(names["exchange"])
    try:
        consuming(names["queue"])
        first = {c.pid for c in broker_ctl.find_connections(names["connection"])}
        publisher.send("m0", "m1")
        program.wait_line(r"Message body: b'm1'")
        all_acked(names["queue"])
        proxy.reset_all()
        broker_ctl.wait_until(
            lambda: {c.pid for c in broker_ctl.find_connections(names["connection"])} - first,
            timeout=15, what="a new connection")
        publisher.send("m2", "m3")
        program.wait_line(r"Message body: b'm3'")
        all_acked(names["queue"])
        broker_ctl.close_connection(names["connection"])  # 320: the loop ends
        assert program.finish() == 0, program.output()
        bodies = re.findall(r"Userdata: on_message_userdata Message body: b'(m\d)'",
                            program.output())
        assert bodies == ["m0", "m1", "m2", "m3"], program.output()
    finally:
        publisher.conn.close()
        program.stop()


@pytest.mark.timeout(60)
def test_monkey_patched_app_with_200_greenlets_on_one_channel(unique_name: str) -> None:
    program = Program(RECIPES / "gevent_shared_channel.py", broker_ctl.amqp_url(), unique_name)
    try:
        assert program.finish(timeout=50) == 0, program.output()
        line = program.wait_line("^greenlets=")[0]
        assert "published=1000 received=1000 same=True rpcs_ok=True" in line, line
    finally:
        program.stop()
