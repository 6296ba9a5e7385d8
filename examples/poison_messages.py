"""Poison messages on a quorum queue: a delivery limit and a dead-letter queue.

A message whose handler always fails would be redelivered forever. A quorum
queue counts deliveries (the ``x-delivery-count`` header, from the second one
on) and, past ``x-delivery-limit``, dead-letters the message instead of
requeueing it. The handler here rejects with requeue while the count is
under the limit — a transient failure gets its retries — and the broker
moves the message to the dead-letter queue after the last one.

    python examples/poison_messages.py [--queue NAME] [--limit N]
"""

from __future__ import annotations

import argparse

import geamqp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--queue", default="geamqp-poison-example")
    parser.add_argument("--limit", type=int, default=3)
    args = parser.parse_args()
    work, dlx, dlq = args.queue, f"{args.queue}.dlx", f"{args.queue}.dead"

    with geamqp.connect(args.url, name="example-poison") as conn:
        channel = conn.channel()
        channel.exchange_declare(dlx, "fanout")
        channel.queue_declare(dlq)
        channel.queue_bind(dlq, dlx)
        channel.queue_declare(work, durable=True, arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": args.limit,
            "x-dead-letter-exchange": dlx,
        })
        channel.basic_qos(prefetch_count=10)

        def on_message(ch: geamqp.Channel, method, properties, body: bytes) -> None:
            count = (properties.headers or {}).get("x-delivery-count", 0)
            print(f"attempt {count + 1} for {body.decode()}: handler failed")
            ch.basic_reject(method.delivery_tag, requeue=True)  # the broker counts it

        channel.basic_consume(work, on_message)
        channel.basic_publish("", work, b"poison")
        while True:  # the dead-letter queue receives it after limit + 1 attempts
            _method, properties, body = channel.basic_get(dlq, auto_ack=True)
            if body is not None:
                death = properties.headers["x-death"][0]
                print(f"dead-lettered {body.decode()} from {death['queue']} "
                      f"({death['reason']})")
                break
            conn.sleep(0.05)
        channel.queue_delete(work)
        channel.queue_delete(dlq)
        channel.exchange_delete(dlx)


if __name__ == "__main__":
    main()
