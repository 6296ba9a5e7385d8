"""A publish -> consume round trip traced with OpenTelemetry, printed to the console.

    pip install 'geamqp[otel]' opentelemetry-sdk
    python examples/otel_trace.py

The publish is a PRODUCER span whose context travels in the message's
``traceparent`` header; the consumer callback runs in a CONSUMER span that
continues the same trace. Both spans are printed as JSON by the SDK's console
exporter.
"""

from __future__ import annotations

import argparse

from gevent.event import AsyncResult
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

import geamqp
from geamqp.otel import GeamqpInstrumentor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    args = parser.parse_args()

    provider = TracerProvider(resource=Resource.create({"service.name": "geamqp-example"}))
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    GeamqpInstrumentor().instrument()  # connections made from now on are traced

    got: AsyncResult = AsyncResult()

    def on_message(channel: geamqp.Channel, method, properties, body: bytes) -> None:
        headers = properties.headers or {}
        print(f"consumed {body.decode()!r}, traceparent {headers.get('traceparent')}",
              flush=True)
        got.set(body)

    with geamqp.connect(args.url, name="otel-example") as conn:
        channel = conn.channel()
        queue = channel.queue_declare("", exclusive=True).queue
        channel.confirm_delivery()
        channel.basic_consume(queue, on_message, auto_ack=True)
        channel.basic_publish("", queue, b"hello, traced world")
        got.get(timeout=10)
    provider.shutdown()  # flushes the spans


if __name__ == "__main__":
    main()
