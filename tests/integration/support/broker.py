"""Helpers around the real RabbitMQ broker: rabbitmqctl calls and polling.

Every rabbitmqctl call runs through ``gevent.subprocess`` with a timeout, so
the hub keeps serving proxies, heartbeats and consumers while the CLI (about
0.4 s per call) runs. Broker-side state that has no event to wait on is polled
with ``wait_until``; nothing here sleeps to "let things settle".

Context managers that disturb the whole broker (``memory_alarm``,
``app_stopped``) always restore it in ``finally`` and wait until it is back;
tests that use them must be marked ``broker_disruptive``.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import gevent.socket
import gevent.subprocess

HOST = "127.0.0.1"
PORT = 5672
RABBITMQCTL = os.environ.get("RABBITMQCTL", "rabbitmqctl")
RABBITMQ_DIAGNOSTICS = os.environ.get("RABBITMQ_DIAGNOSTICS", "rabbitmq-diagnostics")
DEFAULT_WATERMARK = 0.4

T = TypeVar("T")


class BrokerCommandError(RuntimeError):
    """A rabbitmqctl call failed or timed out."""


def amqp_url(
    host: str = HOST,
    port: int = PORT,
    vhost: str = "/",
    user: str = "guest",
    password: str = "guest",
) -> str:
    return f"amqp://{user}:{password}@{host}:{port}/{quote(vhost, safe='')}"


@dataclass(frozen=True)
class BrokerEndpoint:
    """Where the real broker listens (what the ``broker`` fixture returns)."""

    host: str = HOST
    port: int = PORT

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def url(self, vhost: str = "/") -> str:
        return amqp_url(self.host, self.port, vhost)


def port_open(host: str = HOST, port: int = PORT, timeout: float = 1.0) -> bool:
    try:
        gevent.socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _run(tool: str, args: tuple[str, ...], timeout: float) -> str:
    try:
        done = gevent.subprocess.run(
            [tool, *args],
            stdout=gevent.subprocess.PIPE,
            stderr=gevent.subprocess.PIPE,
            timeout=timeout,
            check=False,
        )
    except gevent.subprocess.TimeoutExpired as exc:
        raise BrokerCommandError(f"{tool} {' '.join(args)}: timed out after {timeout} s") from exc
    except FileNotFoundError as exc:
        raise BrokerCommandError(
            f"{tool} not found; run scripts/ensure-rabbitmq.sh (as root)"
        ) from exc
    out: str = done.stdout.decode("utf-8", "replace")
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace")
        raise BrokerCommandError(
            f"{tool} {' '.join(args)}: exit {done.returncode}\n{out}{err}".rstrip()
        )
    return out


def rabbitmqctl(*args: str, timeout: float = 30.0) -> str:
    """Run ``rabbitmqctl ARGS`` and return its stdout; raise BrokerCommandError."""
    return _run(RABBITMQCTL, args, timeout)


def rabbitmqctl_json(*args: str, timeout: float = 30.0) -> Any:
    return json.loads(rabbitmqctl(*args, "--formatter", "json", timeout=timeout))


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.2,
    what: str = "",
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    For broker-side state only (queue depths, connection lists, alarms): the
    broker offers no event to wait on, so polling it is the honest way.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what or predicate!r}")
        gevent.sleep(min(interval, max(0.0, deadline - time.monotonic())))


# -- connections -------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionInfo:
    """A broker-side AMQP connection as rabbitmqctl reports it."""

    pid: str  # "<rabbit@host.123.456.0>", the handle close_connection needs
    name: str  # "127.0.0.1:34660 -> 127.0.0.1:5672"
    vhost: str
    user: str
    connection_name: str | None  # client_properties["connection_name"]


_CONNECTION_NAME = re.compile(r'\{"connection_name","((?:[^"\\]|\\.)*)"\}')


def list_connections() -> list[ConnectionInfo]:
    """Every AMQP connection the broker has, in one rabbitmqctl call.

    The table output is used (not JSON) because only it writes pids in the
    form close_connection accepts; client_properties come as Erlang-ish terms
    from which connection_name is picked out.
    """
    table = rabbitmqctl(
        "list_connections", "pid", "name", "vhost", "user", "client_properties",
        "--quiet", "--no-table-headers",
    )  # fmt: skip
    infos = []
    for line in table.splitlines():
        fields = line.split("\t")
        if len(fields) != 5:
            continue  # not a connection row
        pid, name, vhost, user, properties = fields
        match = _CONNECTION_NAME.search(properties)
        infos.append(
            ConnectionInfo(
                pid=pid,
                name=name,
                vhost=vhost,
                user=user,
                connection_name=match.group(1).replace('\\"', '"') if match else None,
            )
        )
    return infos


def find_connections(name_substring: str) -> list[ConnectionInfo]:
    """Connections whose client-provided connection_name contains ``name_substring``."""
    return [
        c
        for c in list_connections()
        if c.connection_name is not None and name_substring in c.connection_name
    ]


def close_connection(
    name_substring: str, reason: str = "closed by test", *, wait: float = 10.0
) -> list[ConnectionInfo]:
    """Force-close (320 CONNECTION_FORCED) every connection whose connection_name
    contains ``name_substring``; waits up to ``wait`` s for one to appear.

    Returns the connections closed; raises LookupError when none appeared.
    """
    try:
        found = wait_until(
            lambda: find_connections(name_substring),
            timeout=wait,
            what=f"a connection named *{name_substring}*",
        )
    except TimeoutError as exc:
        raise LookupError(
            f"no broker connection with a name containing {name_substring!r}"
        ) from exc
    for conn in found:
        rabbitmqctl("close_connection", conn.pid, reason)
    return found


# -- queues ------------------------------------------------------------------


@dataclass(frozen=True)
class QueueStats:
    messages_ready: int
    messages_unacknowledged: int
    consumers: int


def list_queue(name: str, vhost: str = "/") -> QueueStats | None:
    """Counters of queue ``name`` in ``vhost``, or None when it does not exist."""
    rows = rabbitmqctl_json(
        "list_queues",
        "-p",
        vhost,
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
    )
    for row in rows:
        if row["name"] == name:
            return QueueStats(
                messages_ready=int(row["messages_ready"]),
                messages_unacknowledged=int(row["messages_unacknowledged"]),
                consumers=int(row["consumers"]),
            )
    return None


def delete_queue(name: str, vhost: str = "/") -> None:
    """Delete a queue if it exists (cleanup helper; missing queues are fine)."""
    if list_queue(name, vhost) is not None:
        rabbitmqctl("delete_queue", "-p", vhost, name)


# -- vhosts ------------------------------------------------------------------


@contextmanager
def fresh_vhost(prefix: str = "geamqp-test", user: str = "guest") -> Iterator[str]:
    """A new vhost with full permissions for ``user``; deleted (with all it holds) after."""
    vhost = f"{prefix}-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield vhost
    finally:
        rabbitmqctl("delete_vhost", vhost)


def vhost_exists(vhost: str) -> bool:
    return any(row["name"] == vhost for row in rabbitmqctl_json("list_vhosts", "name"))


# -- alarms ------------------------------------------------------------------


def alarms() -> list[str]:
    """Resource alarms in effect, e.g. ["memory"]."""
    status = rabbitmqctl_json("status")
    return sorted(str(alarm.get("resource")) for alarm in status.get("alarms", []))


def _watermark_args(setting: dict[str, Any]) -> tuple[str, ...]:
    if "absolute" in setting:
        return ("absolute", str(setting["absolute"]))
    return (str(setting.get("relative", DEFAULT_WATERMARK)),)


@contextmanager
def memory_alarm(timeout: float = 30.0) -> Iterator[None]:
    """Raise the memory alarm (publishers get connection.blocked) for the block.

    The watermark in force before is restored in ``finally`` and the alarm is
    waited out, so later tests see a publishing broker.
    """
    setting = rabbitmqctl_json("status").get("vm_memory_high_watermark_setting") or {}
    restore = _watermark_args(setting)
    rabbitmqctl("set_vm_memory_high_watermark", "0.0000001")
    try:
        wait_until(lambda: "memory" in alarms(), timeout, what="the memory alarm")
        yield
    finally:
        rabbitmqctl("set_vm_memory_high_watermark", *restore)
        wait_until(lambda: "memory" not in alarms(), timeout, what="the memory alarm to clear")


# -- the whole app -----------------------------------------------------------


def stop_app(timeout: float = 60.0) -> None:
    rabbitmqctl("stop_app", timeout=timeout)


def start_app(timeout: float = 120.0) -> None:
    """Start the app and wait until it is up and 5672 accepts connections."""
    rabbitmqctl("start_app", timeout=timeout)
    rabbitmqctl("await_startup", "--timeout", str(int(timeout)), timeout=timeout + 10)
    wait_until(lambda: port_open(HOST, PORT), timeout, what=f"{HOST}:{PORT} to accept")


@contextmanager
def app_stopped(timeout: float = 120.0) -> Iterator[None]:
    """The RabbitMQ app is stopped for the block (every connection is closed,
    5672 refuses); it is restarted and awaited in ``finally``, whatever happens."""
    stop_app(timeout)
    try:
        yield
    finally:
        start_app(timeout)
