"""The known recipe for slow handlers, by hand: work in an OS thread, ack from the hub.

A handler that blocks its OS thread for a long time (CPU work, a library gevent
cannot patch) would stop heartbeats if it ran in the hub. Here the consumer
callback only hands the message to a worker thread; the worker asks the
connection's own hub to send the ack with add_callback_threadsafe.

    python examples/threaded_ack.py [--queue NAME] [--count N]
"""

from __future__ import annotations

import argparse
import functools
import threading
import time

import geamqp


def ack_message(channel: geamqp.Channel, delivery_tag: int) -> None:
    """Runs in the hub. The channel may have closed while the thread worked:
    then the broker redelivers the message and there is nothing to ack."""
    if channel.is_open:
        channel.basic_ack(delivery_tag)


def do_work(connection: geamqp.Connection, channel: geamqp.Channel, delivery_tag: int,
            body: bytes, done: list[bytes]) -> None:
    time.sleep(0.2)  # stands for work that blocks this OS thread
    done.append(body)
    connection.add_callback_threadsafe(functools.partial(ack_message, channel, delivery_tag))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F?heartbeat=5")
    parser.add_argument("--queue", default="geamqp-threaded")
    parser.add_argument("--count", type=int, default=5)
    args = parser.parse_args()
    done: list[bytes] = []
    threads: list[threading.Thread] = []

    with geamqp.connect(args.url, name="example-threaded-ack") as conn:
        channel = conn.channel()
        channel.queue_declare(args.queue, auto_delete=True)
        channel.basic_qos(prefetch_count=4)  # at most 4 messages in threads at once
        for i in range(args.count):
            channel.basic_publish("", args.queue, b"job %d" % i)

        def on_message(ch: geamqp.Channel, method, properties, body: bytes) -> None:
            thread = threading.Thread(target=do_work,
                                      args=(conn, ch, method.delivery_tag, body, done))
            thread.start()
            threads.append(thread)

        channel.basic_consume(args.queue, on_message)
        while len(done) < args.count:
            conn.sleep(0.05)  # the hub keeps running: heartbeats, deliveries, acks
        for thread in threads:
            thread.join()
        channel.close()
    print(f"processed and acked {len(done)} messages in worker threads")


if __name__ == "__main__":
    main()
