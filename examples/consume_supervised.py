"""The consumer of `consume_recover.py` with no recovery code at all: ``recover=True``.

When the link dies (a reset, missed heartbeats, ``rabbitmqctl close_connection``)
the connection's supervisor reconnects with jittered back-off, reopens the
channel on its number, restores its qos, re-declares the queue and re-registers
the consumer with the same tag and callback; `start_consuming()` simply keeps
waiting. Acks for deliveries of the lost connection are dropped (the broker
redelivers those messages with ``redelivered=True``). See README "Recovery".

    python examples/consume_supervised.py [--url URL] [--queue NAME] [--count N]
                                          [--max-seconds S]
"""

from __future__ import annotations

import argparse
from typing import Any

import geamqp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--queue", default="geamqp-example")
    parser.add_argument("--count", type=int, default=0, help="stop after N messages; 0 = never")
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args()
    received = 0

    def on_message(channel: geamqp.Channel, method: Any, properties: Any, body: bytes) -> None:
        nonlocal received
        channel.basic_ack(method.delivery_tag)
        received += 1
        flag = " (redelivered)" if method.redelivered else ""
        print(f"received {body.decode()}{flag}", flush=True)
        if args.count and received >= args.count:
            channel.stop_consuming()

    with geamqp.connect(args.url, name=f"consume_supervised:{args.queue}",
                        recover=True) as conn:
        channel = conn.channel()
        channel.queue_declare(args.queue, durable=True)
        channel.basic_qos(prefetch_count=1)
        channel.basic_consume(args.queue, on_message)
        conn.call_later(args.max_seconds, channel.stop_consuming)
        print(f"consuming from {args.queue}", flush=True)
        channel.start_consuming()  # keeps waiting through any number of recoveries
    print(f"done: {received} messages", flush=True)


if __name__ == "__main__":
    main()
