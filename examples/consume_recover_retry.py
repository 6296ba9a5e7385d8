"""The reconnecting consumer of `consume_recover.py`, with the loop left to the
`retry` package: ``@retry(AMQPConnectionError, delay=5, jitter=(1, 3))``.

A lost link raises `AMQPConnectionError` out of `consume()` and `retry` calls it
again (after 5 s, then 1 to 3 s more each time); a connection the broker closed
on purpose (`ConnectionClosedByBroker`, itself an `AMQPConnectionError`) is
caught inside `consume()` so that it ends the program instead. `retry` waits
with `time.sleep`, which is fine here: nothing else runs while it waits. Set
GEAMQP_RETRY_DELAY to change the first delay (the tests use 0.1 s).

    pip install retry
    python examples/consume_recover_retry.py [--url URL] [--queue NAME] [--count N]
                                             [--max-seconds S]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from retry import retry

import geamqp

RETRY_DELAY = float(os.environ.get("GEAMQP_RETRY_DELAY", "5"))


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


@retry(geamqp.exceptions.AMQPConnectionError, delay=RETRY_DELAY, jitter=(1, 3))
def consume(url: str, queue: str, counter: Counter, deadline: float) -> None:
    if counter.done or time.monotonic() >= deadline:
        return
    print("connecting", flush=True)
    with geamqp.connect(url, name=f"consume_recover_retry:{queue}", recover=False) as conn:
        channel = conn.channel()
        channel.queue_declare(queue, durable=True)
        channel.basic_qos(prefetch_count=1)
        channel.basic_consume(queue, counter.on_message)
        timer = conn.call_later(deadline - time.monotonic(), channel.stop_consuming)
        print(f"consuming from {queue}", flush=True)
        try:
            channel.start_consuming()
        except geamqp.exceptions.ConnectionClosedByBroker as exc:  # on purpose: no retry
            print(f"connection closed by the broker ({exc}): stopping", flush=True)
        finally:
            timer.kill()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--queue", default="geamqp-example")
    parser.add_argument("--count", type=int, default=0, help="stop after N messages; 0 = never")
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args()
    counter = Counter(args.count)
    consume(args.url, args.queue, counter, time.monotonic() + args.max_seconds)
    print(f"done: {counter.received} messages", flush=True)


if __name__ == "__main__":
    main()
