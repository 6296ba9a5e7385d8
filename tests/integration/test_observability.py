"""Observability against the real broker: trace headers survive the wire.

The core will call the collector's hooks itself once wired (issue 16); until
then this test calls them where the core will, around a real publish and
consume, so the injected headers are encoded and decoded by the client.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import gevent.event
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

import geamqp
from geamqp.metrics import ConnectionInfo
from geamqp.otel import OtelCollector


def test_trace_context_round_trip_through_the_broker(broker: Any, unique_name: str) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    collector = OtelCollector(tracer_provider=provider)
    info = ConnectionInfo(unique_name, "/", "127.0.0.1", 5672)
    got: gevent.event.AsyncResult = gevent.event.AsyncResult()
    with geamqp.connect(broker.url(), name=unique_name) as conn:
        ch = conn.channel()
        ch.queue_declare(unique_name, exclusive=True)
        ch.confirm_delivery()
        on_message = collector.wrap_consumer(info, 1, unique_name,
                                             lambda ch_, method, props, body: got.set(props))
        ch.basic_consume(unique_name, on_message, auto_ack=True)
        props = collector.before_publish(info, 1, "", unique_name, None)
        assert props is not None and props.headers is not None
        ch.basic_publish("", unique_name, b"traced", props)
        received = got.get(timeout=10)
    provider.shutdown()
    assert received.headers["traceparent"] == props.headers["traceparent"]
    publish, process = spans.get_finished_spans()
    assert process.context.trace_id == publish.context.trace_id
    assert process.parent is not None and process.parent.span_id == publish.context.span_id
    attributes = dict(process.attributes or {})
    assert attributes["messaging.rabbitmq.destination.routing_key"] == unique_name
    assert attributes["messaging.destination.name"] == ""


# ---------------------------------------------------------------- the examples

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape_prometheus_example(unique_name: str) -> tuple[str, str]:
    """Run the example; return (its output, the metrics page it served)."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "prometheus_consumer.py"), "--queue", unique_name,
         "--port", str(port), "--publish", "20", "--exit-after", "3"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert lines[0].startswith(f"serving metrics on http://127.0.0.1:{port}/metrics"), lines
        assert lines[1] == "consumed 20 messages\n", lines
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
            text = page.read().decode()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    return "".join(lines) + out, text


def test_prometheus_consumer_example_serves_metrics(broker: Any, unique_name: str) -> None:
    out, text = _scrape_prometheus_example(unique_name)
    assert "done: 20 messages" in out
    families = {family.name for family in text_string_to_metric_families(text)}
    assert {"geamqp_delivered_messages", "geamqp_acks", "geamqp_connections",
            "geamqp_confirm_latency_seconds"} <= families


def test_prometheus_consumer_example_counts_its_messages(broker: Any, unique_name: str) -> None:
    _, text = _scrape_prometheus_example(unique_name)
    labels = '{connection="metrics-example",vhost="/"}'
    assert f"geamqp_delivered_messages_total{labels} 20.0" in text
    assert f"geamqp_acks_total{labels} 20.0" in text
    assert f"geamqp_connections{labels} 1.0" in text


def _otel_example() -> str:
    result = subprocess.run([sys.executable, str(EXAMPLES / "otel_trace.py")], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "consumed 'hello, traced world'" in result.stdout
    return result.stdout


def test_otel_example_round_trip_runs(broker: Any) -> None:
    _otel_example()


def test_otel_example_prints_one_trace(broker: Any) -> None:
    out = _otel_example()
    spans = [json.loads(block) for block in re.findall(r"^\{\n.*?^\}$", out, re.S | re.M)]
    by_name = {span["name"]: span for span in spans}
    publish, process = by_name["publish amq.default"], by_name["process amq.default"]
    assert publish["kind"] == "SpanKind.PRODUCER" and process["kind"] == "SpanKind.CONSUMER"
    assert process["context"]["trace_id"] == publish["context"]["trace_id"]
    assert process["parent_id"] == publish["context"]["span_id"]
    assert publish["context"]["trace_id"].removeprefix("0x") in out.split("traceparent")[1]
