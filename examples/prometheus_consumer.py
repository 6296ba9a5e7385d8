"""A consumer whose client metrics Prometheus can scrape (pip install 'geamqp[prometheus]').

    python examples/prometheus_consumer.py [--queue NAME] [--port 9100] [--publish N]

Serves http://127.0.0.1:PORT/metrics (geamqp_delivered_messages_total,
geamqp_acks_total, geamqp_connections, ... labelled with the connection name
and vhost) while it consumes and acks. ``--publish N`` first puts N messages
on the queue so there is something to see; ``--exit-after SECONDS`` stops it
(default: run until Ctrl+C).
"""

from __future__ import annotations

import argparse

import gevent
from prometheus_client import start_http_server

import geamqp
from geamqp.metrics import set_default_collector
from geamqp.metrics.prometheus import PrometheusCollector


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--queue", default="geamqp-example-metrics")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--publish", type=int, default=0, metavar="N")
    parser.add_argument("--exit-after", type=float, default=0, metavar="SECONDS")
    args = parser.parse_args()

    # Every connection made from here on reports to it; one connection alone
    # would take geamqp.connect(..., metrics=collector).
    set_default_collector(PrometheusCollector())
    start_http_server(args.port, addr="127.0.0.1")  # a thread; the registry is thread-safe
    print(f"serving metrics on http://127.0.0.1:{args.port}/metrics", flush=True)

    consumed = 0

    def on_message(channel: geamqp.Channel, method, properties, body: bytes) -> None:
        nonlocal consumed
        consumed += 1
        channel.basic_ack(method.delivery_tag)
        if consumed == args.publish:
            print(f"consumed {consumed} messages", flush=True)

    with geamqp.connect(args.url, name="metrics-example") as conn:
        channel = conn.channel()
        channel.queue_declare(args.queue, auto_delete=True)
        channel.basic_qos(prefetch_count=100)
        channel.basic_consume(args.queue, on_message)
        for i in range(args.publish):
            channel.basic_publish("", args.queue, b"message %d" % i)
        try:
            if args.exit_after:
                gevent.sleep(args.exit_after)
            else:
                channel.start_consuming()
        except KeyboardInterrupt:
            pass
    print(f"done: {consumed} messages", flush=True)


if __name__ == "__main__":
    main()
