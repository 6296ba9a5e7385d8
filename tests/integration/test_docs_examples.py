"""The README's tour and every example run as written against the real broker."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_tour_runs_as_written(broker: object) -> None:
    blocks = _readme_blocks()
    assert len(blocks) >= 4, "the README tour lost its code blocks"
    result = _run("-c", "\n".join(blocks))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "got b'world'" in out
    assert "returned: NO_ROUTE" in out
    assert "404 NOT_FOUND" in out
    assert "403" in out and "wrong" not in out


def test_publish_then_consume_examples(broker: object) -> None:
    queue = f"example-{uuid.uuid4().hex[:10]}"
    try:
        published = _run(str(EXAMPLES / "publish.py"), "--queue", queue, "--count", "5")
        assert published.returncode == 0, published.stderr
        assert f"published and confirmed 5 messages to {queue}" in published.stdout
        consumed = _run(str(EXAMPLES / "consume.py"), "--queue", queue, "--count", "5")
        assert consumed.returncode == 0, consumed.stderr
        bodies = re.findall(r"received (message \d+)", consumed.stdout)
        assert bodies == [f"message {i}" for i in range(5)]
    finally:
        subprocess.run(["rabbitmqctl", "delete_queue", queue], capture_output=True, timeout=30)


def test_rpc_client_and_server_over_direct_reply_to(broker: object) -> None:
    queue = f"rpc-{uuid.uuid4().hex[:10]}"
    server = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "rpc_server.py"), "--queue", queue, "--count", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        assert first.startswith(f"serving on {queue}"), server.stderr and server.stderr.read()
        client = _run(str(EXAMPLES / "rpc_client.py"), "--queue", queue, "2", "3", "12")
        assert client.returncode == 0, client.stderr
        assert client.stdout.splitlines() == ["2 squared is 4", "3 squared is 9",
                                              "12 squared is 144"]
        out, err = server.communicate(timeout=30)
        assert server.returncode == 0, err
        assert "served 3 requests" in out
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


@pytest.mark.parametrize("command", [["-m", "geamqp", "perf", "--duration", "2"],
                                     ["-m", "geamqp", "perf", "--duration", "2", "--confirm",
                                      "100", "--rate", "2000"]])
def test_perf_tool_reports_progress_and_summary(broker: object, command: list[str]) -> None:
    result = _run(*command, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("time ") and "received" in line for line in lines)
    summary = [line for line in lines if line.startswith("summary: ")]
    assert len(summary) == 1
    sent = int(re.search(r"sent (\d+)", summary[0]).group(1))  # type: ignore[union-attr]
    received = int(re.search(r"received (\d+)", summary[0]).group(1))  # type: ignore[union-attr]
    assert sent > 0 and received > 0
    if "--confirm" in command:
        confirmed = int(re.search(r"confirmed (\d+)", summary[0]).group(1))  # type: ignore[union-attr]
        assert confirmed == sent
        assert received == sent


@pytest.mark.parametrize(("script", "expected"), [
    ("threaded_ack.py", "processed and acked 5 messages in worker threads"),
    ("threaded_consumer.py", "processed and acked 8 messages in the pool"),
])
def test_threaded_examples(broker: object, script: str, expected: str) -> None:
    queue = f"threaded-{uuid.uuid4().hex[:10]}"
    result = _run(str(EXAMPLES / script), "--queue", queue)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def test_pool_consumer_example_bounds_concurrency(broker: object) -> None:
    queue = f"pool-{uuid.uuid4().hex[:10]}"
    result = _run(str(EXAMPLES / "pool_consumer.py"), "--queue", queue, "--workers", "7")
    assert result.returncode == 0, result.stderr
    assert "processed 50 messages with at most 7 at once" in result.stdout


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_gunicorn_gevent_publisher_example(broker: object) -> None:
    import concurrent.futures
    import http.client
    import os
    import time

    queue = f"requests-{uuid.uuid4().hex[:10]}"
    port = _free_port()
    env = dict(os.environ, AMQP_QUEUE=queue)
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "2", "--bind",
         f"127.0.0.1:{port}", "examples.gunicorn_gevent_publisher:app"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def request(n: int) -> tuple[int, bytes]:
        deadline = time.monotonic() + 20
        while True:
            try:
                client = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                client.request("POST", f"/order/{n}")
                response = client.getresponse()
                return response.status, response.read()
            except ConnectionRefusedError:  # gunicorn still starting
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    try:
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            results = list(pool.map(request, range(40)))
        assert results == [(202, b"queued\n")] * 40
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    drained = _run("-c", (
        "import geamqp, json\n"
        "c = geamqp.connect('amqp://guest:guest@127.0.0.1:5672/%2F')\n"
        "ch = c.channel(); paths = []\n"
        f"while (m := ch.basic_get({queue!r}, auto_ack=True))[0]:\n"
        "    paths.append(json.loads(m[2])['path'])\n"
        f"ch.queue_delete({queue!r}); print(len(paths), len(set(paths)))\n"))
    assert drained.returncode == 0, drained.stderr + output
    assert drained.stdout.split() == ["40", "40"]
