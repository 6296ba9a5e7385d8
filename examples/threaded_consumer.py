"""Slow handlers in a thread pool with executor=: the library does the recipe for you.

Each callback runs in the pool; channel calls made inside it (basic_ack here)
are marshalled into the hub, and prefetch_count bounds how many messages are
in threads at once. Nothing is acked unless the handler acks.

    python examples/threaded_consumer.py [--queue NAME] [--count N]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

from gevent.event import Event

import geamqp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F?heartbeat=5")
    parser.add_argument("--queue", default="geamqp-threaded-consumer")
    parser.add_argument("--count", type=int, default=8)
    args = parser.parse_args()
    processed: list[bytes] = []
    all_done = Event()

    with geamqp.connect(args.url, name="example-threaded-consumer") as conn, \
            ThreadPoolExecutor(max_workers=4) as pool:
        channel = conn.channel()
        channel.queue_declare(args.queue, auto_delete=True)
        channel.basic_qos(prefetch_count=4)
        for i in range(args.count):
            channel.basic_publish("", args.queue, b"job %d" % i)

        def handle(ch: geamqp.Channel, method, properties, body: bytes) -> None:
            time.sleep(0.2)  # blocks this pool thread only
            ch.basic_ack(method.delivery_tag)  # marshalled into the hub
            processed.append(body)
            if len(processed) == args.count:
                conn.add_callback_threadsafe(all_done.set)

        channel.basic_consume(args.queue, handle, executor=pool)
        all_done.wait()
        channel.close()
    print(f"processed and acked {len(processed)} messages in the pool")


if __name__ == "__main__":
    main()
