"""A callback-style consumer that reconnects itself (``recover=False``), after pika's
asynchronous_consumer_example: the close callback drives reconnection.

Nothing blocks on the connection: `connect()` runs in a greenlet, the
connection's close callback schedules the next `connect()` with a delay that
doubles after each failed attempt (up to --max-delay) and starts again from
--reconnect-delay once a connection is made. Only `stop()` — after --count
messages or --max-seconds — ends it; a channel error stops it too.

    python examples/asynchronous_consumer_example.py [--url URL] [--queue NAME]
        [--count N] [--max-seconds S] [--reconnect-delay S] [--max-delay S]
"""

from __future__ import annotations

import argparse
from typing import Any

import gevent
from gevent.event import Event

import geamqp
from geamqp.exceptions import AMQPChannelError, AMQPConnectionError, AMQPError


class ReconnectingConsumer:
    """Consumes `queue` over successive connections until `stop()`."""

    def __init__(self, url: str, queue: str, count: int, first_delay: float,
                 max_delay: float) -> None:
        self.url = url
        self.queue = queue
        self.count = count
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.delay = first_delay
        self.received = 0
        self.stopped = Event()
        self._connection: geamqp.Connection | None = None
        self._closer: gevent.Greenlet | None = None

    def start(self) -> None:
        gevent.spawn(self.connect)

    def connect(self) -> None:
        if self.stopped.is_set():
            return
        try:
            conn = geamqp.connect(self.url, name=f"asynchronous_consumer:{self.queue}",
                                  recover=False)
        except AMQPConnectionError as exc:
            self.reconnect_later(exc)
            return
        self._connection = conn
        self.delay = self.first_delay  # connected: the next outage starts short again
        conn.add_on_close_callback(self.on_connection_closed)
        try:
            self.setup(conn)
        except AMQPChannelError as exc:
            print(f"channel error ({exc}): stopping", flush=True)
            self.stop()
        except AMQPError:
            pass  # the connection died while setting up: on_connection_closed handles it

    def setup(self, conn: geamqp.Connection) -> None:
        channel = conn.channel()
        channel.queue_declare(self.queue, durable=True)
        channel.basic_qos(prefetch_count=10)
        channel.basic_consume(self.queue, self.on_message)
        print(f"consuming from {self.queue}", flush=True)

    def on_connection_closed(self, conn: geamqp.Connection, exc: AMQPError) -> None:
        if conn is self._connection:
            self._connection = None
        if not self.stopped.is_set():
            self.reconnect_later(exc)

    def reconnect_later(self, exc: AMQPError) -> None:
        print(f"connection closed ({exc!r}): reconnecting in {self.delay:.2f} s", flush=True)
        gevent.spawn_later(self.delay, self.connect)
        self.delay = min(self.delay * 2, self.max_delay)

    def on_message(self, channel: geamqp.Channel, method: Any, properties: Any,
                   body: bytes) -> None:
        channel.basic_ack(method.delivery_tag)
        self.received += 1
        print(f"received {body.decode()}", flush=True)
        if self.count and self.received >= self.count:
            self.stop()

    def stop(self) -> None:
        self.stopped.set()
        conn, self._connection = self._connection, None
        if conn is not None:
            self._closer = gevent.spawn(conn.close)  # not inside one of its own callbacks

    def run(self, max_seconds: float) -> None:
        self.start()
        self.stopped.wait(max_seconds)
        self.stop()
        if self._closer is not None:
            self._closer.join(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--queue", default="geamqp-example")
    parser.add_argument("--count", type=int, default=0, help="stop after N messages; 0 = never")
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    parser.add_argument("--reconnect-delay", type=float, default=1.0)
    parser.add_argument("--max-delay", type=float, default=30.0)
    args = parser.parse_args()
    consumer = ReconnectingConsumer(args.url, args.queue, args.count, args.reconnect_delay,
                                    args.max_delay)
    consumer.run(args.max_seconds)
    print(f"done: {consumer.received} messages", flush=True)


if __name__ == "__main__":
    main()
