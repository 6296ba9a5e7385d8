"""Consume messages and ack each one; stops after --count messages (or Ctrl+C).

    python examples/consume.py [--queue NAME] [--count N]
"""

from __future__ import annotations

import argparse

import geamqp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--queue", default="geamqp-example")
    parser.add_argument("--count", type=int, default=0, help="stop after N messages; 0 = never")
    args = parser.parse_args()
    received = 0

    def on_message(channel: geamqp.Channel, method, properties, body: bytes) -> None:
        nonlocal received
        received += 1
        print(f"received {body.decode()} (delivery tag {method.delivery_tag})")
        channel.basic_ack(method.delivery_tag)
        if args.count and received >= args.count:
            channel.stop_consuming()

    with geamqp.connect(args.url, name="example-consumer") as conn:
        channel = conn.channel()
        channel.queue_declare(args.queue, durable=True)
        channel.basic_qos(prefetch_count=50)
        channel.basic_consume(args.queue, on_message)
        try:
            channel.start_consuming()  # blocks this greenlet only
        except KeyboardInterrupt:
            channel.stop_consuming()
    print(f"done: {received} messages")


if __name__ == "__main__":
    main()
