"""Consume with a reconnect loop of your own (``recover=False``), the pattern pika documents.

A lost link (a reset, missed heartbeats: any other `AMQPConnectionError`) means
connect again and carry on; a connection the broker closed on purpose
(`ConnectionClosedByBroker`: ``rabbitmqctl close_connection``, a node shutting
down, a refused login) or a channel error (`AMQPChannelError`) ends the program.
Messages that were not acked when the link died are redelivered by the broker.
`consume_supervised.py` gets the same result with ``recover=True`` and no loop.

    python examples/consume_recover.py [--url URL] [--queue NAME] [--count N]
                                       [--max-seconds S] [--retry-delay S]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import gevent

import geamqp
from geamqp.exceptions import AMQPChannelError, AMQPConnectionError, ConnectionClosedByBroker


class Counter:
    """Messages handled so far, over every connection; stops consuming at `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.received = 0

    @property
    def done(self) -> bool:
        return bool(self.limit) and self.received >= self.limit

    def on_message(self, channel: geamqp.Channel, method: Any, properties: Any,
                   body: bytes) -> None:
        channel.basic_ack(method.delivery_tag)
        self.received += 1
        print(f"received {body.decode()}", flush=True)
        if self.done:
            channel.stop_consuming()


def consume_once(url: str, queue: str, counter: Counter, seconds_left: float) -> None:
    """One connection's worth of consuming; returns when done or out of time."""
    with geamqp.connect(url, name=f"consume_recover:{queue}", recover=False) as conn:
        channel = conn.channel()
        channel.queue_declare(queue, durable=True)
        channel.basic_qos(prefetch_count=1)
        channel.basic_consume(queue, counter.on_message)
        timer = conn.call_later(seconds_left, channel.stop_consuming)
        print(f"consuming from {queue}", flush=True)
        try:
            channel.start_consuming()  # raises when the connection or channel dies
        finally:
            timer.kill()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--queue", default="geamqp-example")
    parser.add_argument("--count", type=int, default=0, help="stop after N messages; 0 = never")
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    parser.add_argument("--retry-delay", type=float, default=1.0)
    args = parser.parse_args()
    counter = Counter(args.count)
    deadline = time.monotonic() + args.max_seconds

    while not counter.done and time.monotonic() < deadline:
        try:
            consume_once(args.url, args.queue, counter, deadline - time.monotonic())
        except ConnectionClosedByBroker as exc:  # closed on purpose: do not come back
            print(f"connection closed by the broker ({exc}): stopping", flush=True)
            break
        except AMQPChannelError as exc:  # a bug or a misconfiguration: retrying won't help
            print(f"channel error ({exc}): stopping", flush=True)
            break
        except AMQPConnectionError as exc:  # the link died: connect again
            print(f"connection lost ({exc!r}): reconnecting", flush=True)
            gevent.sleep(args.retry_delay)
    print(f"done: {counter.received} messages", flush=True)


if __name__ == "__main__":
    main()
