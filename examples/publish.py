"""Publish messages with publisher confirms: each publish returns once the broker has them.

    python examples/publish.py [--queue NAME] [--count N]
"""

from __future__ import annotations

import argparse

import geamqp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--queue", default="geamqp-example")
    parser.add_argument("--count", type=int, default=10)
    args = parser.parse_args()

    with geamqp.connect(args.url, name="example-publisher") as conn:
        channel = conn.channel()
        channel.queue_declare(args.queue, durable=True)
        channel.confirm_delivery()
        for i in range(args.count):
            channel.basic_publish(
                "", args.queue, f"message {i}".encode(),
                properties=geamqp.BasicProperties(content_type="text/plain", delivery_mode=2),
            )  # returns once the broker acked it; raises NackError / UnroutableError
        print(f"published and confirmed {args.count} messages to {args.queue}")


if __name__ == "__main__":
    main()
