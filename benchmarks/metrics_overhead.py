"""CPU cost of geamqp.metrics per message, measured in-process (no broker).

What the core pays per publish or delivery for each way of (not) having a
collector, so that the "within 2 % of no metrics" target can be checked
against the per-message CPU in RESULTS.md (geamqp publish ~1.1 µs/msg,
consume ~4.7 µs/msg there):

- the guard alone: ``if metrics is not None`` with no collector, read from a
  local and from an attribute (what the hot path pays by default);
- one call to the base `Collector`'s no-op method (what it would pay if the
  core called a no-op collector instead of testing for None);
- `PrometheusCollector` and `OtelCollector` (SDK meter) per event;
- the tracing hooks: `before_publish` and a wrapped consumer callback with the
  OpenTelemetry SDK (spans recorded, not exported) and with the API alone.

Each case runs N iterations, best CPU time (time.process_time) of R repeats,
minus the empty loop; printed as nanoseconds per message.

    python benchmarks/metrics_overhead.py [--n 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from geamqp import BasicProperties
from geamqp.metrics import Collector, ConnectionInfo

CONN = ConnectionInfo("bench", "/", "127.0.0.1", 5672)
BODY = b"x" * 100


def best(fn: Callable[[int], None], n: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn(n)
        times.append(time.process_time() - t0)
    return min(times)


def loop_empty(n: int) -> None:
    for _ in range(n):
        pass


def loop_guard_local(n: int) -> None:
    metrics = None
    for _ in range(n):
        if metrics is not None:
            metrics.message_published(CONN, 1, "", "q", len(BODY))


class _Holder:
    __slots__ = ("metrics",)

    def __init__(self, metrics: Any) -> None:
        self.metrics = metrics


def loop_guard_attr(n: int) -> None:
    holder = _Holder(None)
    for _ in range(n):
        if holder.metrics is not None:
            holder.metrics.message_published(CONN, 1, "", "q", len(BODY))


def calls(method: Callable[..., Any], *args: Any) -> Callable[[int], None]:
    def loop(n: int) -> None:
        for _ in range(n):
            method(*args)
    return loop


def publish_case(collector: Collector) -> Callable[[int], None]:
    def loop(n: int) -> None:
        m = collector
        for _ in range(n):
            if m is not None:
                m.message_published(CONN, 1, "", "q", len(BODY))
    return loop


def consume_case(wrapped: Callable[..., Any], method: Any,
                 props: BasicProperties) -> Callable[[int], None]:
    def loop(n: int) -> None:
        for _ in range(n):
            wrapped(None, method, props, BODY)
    return loop


def cases() -> list[tuple[str, Callable[[int], None]]]:
    from geamqp.protocol.spec import Basic

    rows: list[tuple[str, Callable[[int], None]]] = [
        ("no collector: `if m is not None` (local)", loop_guard_local),
        ("no collector: `if self.m is not None` (slot)", loop_guard_attr),
        ("base Collector: one no-op call (5 args)", publish_case(Collector())),
    ]
    try:
        from prometheus_client import CollectorRegistry

        from geamqp.metrics.prometheus import PrometheusCollector
        prom = PrometheusCollector(registry=CollectorRegistry())
        rows += [("Prometheus: message_published", publish_case(prom)),
                 ("Prometheus: publish_acked (histogram)", calls(prom.publish_acked, CONN, 1,
                                                                 0.001)),
                 ("Prometheus: message_delivered", calls(prom.message_delivered, CONN, 1, 100,
                                                         False))]
    except ImportError:
        print("(prometheus-client not installed: skipped)")
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.trace import NoOpTracerProvider

        from geamqp.otel import OtelCollector
        sdk = OtelCollector(TracerProvider(), MeterProvider())
        api = OtelCollector(NoOpTracerProvider(), None)
        props = BasicProperties(message_id="m")
        method = Basic.Deliver("ctag", 1, False, "", "q")
        sent = sdk.before_publish(CONN, 1, "", "q", props)
        assert sent is not None

        def callback(*args: Any) -> None:
            pass

        rows += [
            ("OTel SDK meter: message_published", publish_case(sdk)),
            ("OTel SDK: before_publish (span + inject)", calls(sdk.before_publish, CONN, 1,
                                                               "", "q", props)),
            ("OTel API only: before_publish", calls(api.before_publish, CONN, 1, "", "q",
                                                    props)),
            ("plain consumer callback", consume_case(callback, method, sent)),
            ("OTel SDK: traced consumer callback", consume_case(
                sdk.wrap_consumer(CONN, 1, "q", callback), method, sent)),
        ]
    except ImportError:
        print("(opentelemetry-sdk not installed: skipped)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    empty = best(loop_empty, args.n, args.repeat)
    print("| case | ns per message (CPU, empty loop subtracted) |")
    print("|---|---:|")
    for name, fn in cases():
        n = args.n if "OTel SDK:" not in name else max(1000, args.n // 20)
        cost = best(fn, n, args.repeat) - empty * n / args.n
        print(f"| {name} | {cost / n * 1e9:,.0f} |")


if __name__ == "__main__":
    main()
