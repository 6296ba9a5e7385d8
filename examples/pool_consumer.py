"""Process deliveries in a gevent Pool, with prefetch as the bound on work in flight.

    python examples/pool_consumer.py [--queue NAME] [--count N] [--workers W]

basic_consume(..., concurrency=W) hands each delivery to one of up to W
greenlets; basic_qos(prefetch_count=W) makes the broker send no more than W
unacked messages, so memory and concurrency stay bounded however deep the
queue is. Ordering holds only per greenlet.
"""

from __future__ import annotations

import argparse

import gevent
from gevent.event import Event

import geamqp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--queue", default="geamqp-pool")
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--workers", type=int, default=10)
    args = parser.parse_args()
    busy = peak = done = 0
    finished = Event()

    def handle(channel: geamqp.Channel, method, properties, body: bytes) -> None:
        nonlocal busy, peak, done
        busy += 1
        peak = max(peak, busy)
        gevent.sleep(0.05)  # stands for cooperative I/O: an HTTP call, a database query
        busy -= 1
        channel.basic_ack(method.delivery_tag)
        done += 1
        if done == args.count:
            finished.set()

    with geamqp.connect(args.url, name="example-pool-consumer") as conn:
        channel = conn.channel()
        channel.queue_declare(args.queue, auto_delete=True)
        channel.basic_qos(prefetch_count=args.workers)
        for i in range(args.count):
            channel.basic_publish("", args.queue, b"task %d" % i)
        channel.basic_consume(args.queue, handle, concurrency=args.workers)
        finished.wait()
        channel.close()
    print(f"processed {done} messages with at most {peak} at once")


if __name__ == "__main__":
    main()
