"""Drive the local 3-node test cluster of scripts/cluster.sh from tests and benchmarks.

Nodes are named ``a``, ``b`` and ``c`` (geamqp-a@localhost ... on ports 5673-5675). The
cluster script finds each node's beam process through its pid file checked against
RABBITMQ_NODENAME in the process environment; this module asks the script for the pid and
signals only that pid, so the default broker on 5672 is never touched. The script runs
through gevent's subprocess: a test's connections keep their heartbeats while a node restarts.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import gevent
from gevent import subprocess

import geamqp

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "cluster.sh"
NODES = ("a", "b", "c")
PORTS = {"a": 5673, "b": 5674, "c": 5675}
START_TIMEOUT = 240.0  # a fresh cluster takes 15-25 s on 2 idle cores; far more when busy


class ClusterError(RuntimeError):
    """The cluster script failed; the message has its output."""


def node_of_port(port: int) -> str:
    for node, node_port in PORTS.items():
        if node_port == port:
            return node
    raise ValueError(f"port {port} is not a cluster node's")


def url(node: str, heartbeat: int = 2, **query: object) -> str:
    extra = "".join(f"&{key}={value}" for key, value in query.items())
    return f"amqp://guest:guest@127.0.0.1:{PORTS[node]}/%2F?heartbeat={heartbeat}{extra}"


def urls(order: str = "abc", heartbeat: int = 2, **query: object) -> list[str]:
    return [url(node, heartbeat, **query) for node in order]


def connect_in_order(urls: list[str], **kwargs: Any) -> geamqp.Connection:
    """Connect trying `urls` in the given order, so that a test places a connection on the
    node it names: with ``shuffle_hosts=False`` once the core has that option (see
    test_placement.py), without it today (the first connect keeps the order anyway)."""
    try:
        return geamqp.connect(urls, shuffle_hosts=False, **kwargs)
    except TypeError as exc:
        if "shuffle_hosts" not in str(exc):
            raise
        return geamqp.connect(urls, **kwargs)


def _script(*args: str, timeout: float = START_TIMEOUT, check: bool = True) -> str:
    try:
        done = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"cluster.sh {' '.join(args)} did not finish in {timeout} s") from exc
    if check and done.returncode != 0:
        raise ClusterError(f"cluster.sh {' '.join(args)} failed ({done.returncode}):\n"
                           f"{done.stdout}{done.stderr}")
    return done.stdout


def start() -> None:
    """Start (or restore: restart killed nodes, thaw frozen ones) and wait until ready."""
    _script("start")


def stop() -> None:
    _script("stop", timeout=120)


def is_up() -> bool:
    """All three nodes run (not checked for readiness: `start` waits for that)."""
    return subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True,
                          timeout=30, check=False).returncode == 0


def status() -> str:
    return _script("status", timeout=30, check=False)


def running_nodes() -> list[str]:
    """The nodes whose beam process runs (healthy or not)."""
    return [line.split("@")[0].removeprefix("geamqp-") for line in status().splitlines()
            if " pid " in line]


def pid(node: str) -> int:
    out = _script("pid", node, timeout=30).strip()
    return int(out)


def kill(node: str) -> int:
    """kill -9 the node's beam; returns when the process is gone. Returns the pid."""
    return kill_pid(pid(node))


def kill_pid(target: int) -> int:
    """kill -9 a beam pid got from `pid()` (to kill at a chosen instant)."""
    os.kill(target, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(target):
        gevent.sleep(0.01)
    return target


def freeze(node: str) -> int:
    target = pid(node)
    os.kill(target, signal.SIGSTOP)
    return target


def thaw(target: int) -> None:
    os.kill(target, signal.SIGCONT)


def stop_node(node: str) -> None:
    """Stop one node cleanly (rabbitmqctl stop), keeping its data: `start` brings it back."""
    _script("stop-node", node, timeout=120)


def _alive(target: int) -> bool:
    try:
        with open(f"/proc/{target}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def ctl(node: str, *args: str, timeout: float = 60.0) -> str:
    return _script("ctl", node, *args, timeout=timeout)


def queue_leader(queue: str, via: str) -> str:
    """The node (a, b or c) that leads quorum queue `queue`, asked of node `via`."""
    rows = json.loads(ctl(via, "list_queues", "--quiet", "--formatter", "json",
                          "name", "leader"))
    for row in rows:
        if row["name"] == queue:
            return str(row["leader"]).split("@")[0].removeprefix("geamqp-")
    raise ClusterError(f"queue {queue!r} not listed by node {via}")
