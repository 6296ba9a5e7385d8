"""An RPC client using RabbitMQ's direct reply-to (amq.rabbitmq.reply-to): no reply queue.

    python examples/rpc_client.py [--queue rpc_queue] [N ...]

Consume from the pseudo-queue amq.rabbitmq.reply-to in no-ack mode *before*
publishing with reply_to set to it; replies come straight back on this channel.
"""

from __future__ import annotations

import argparse
import uuid

from gevent.event import AsyncResult

import geamqp

REPLY_TO = "amq.rabbitmq.reply-to"


class RpcClient:
    def __init__(self, connection: geamqp.Connection, queue: str) -> None:
        self.queue = queue
        self.channel = connection.channel()
        self.pending: dict[str, AsyncResult] = {}
        self.channel.basic_consume(REPLY_TO, self._on_reply, auto_ack=True)

    def _on_reply(self, channel, method, properties, body: bytes) -> None:
        waiter = self.pending.pop(properties.correlation_id, None)
        if waiter is not None:
            waiter.set(body)

    def call(self, n: int, timeout: float = 10.0) -> int:
        correlation_id = uuid.uuid4().hex
        waiter = self.pending[correlation_id] = AsyncResult()
        self.channel.basic_publish(
            "", self.queue, str(n).encode(),
            properties=geamqp.BasicProperties(reply_to=REPLY_TO, correlation_id=correlation_id),
        )
        return int(waiter.get(timeout=timeout))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--queue", default="rpc_queue")
    parser.add_argument("numbers", nargs="*", type=int, default=[2, 3, 4])
    args = parser.parse_args()
    with geamqp.connect(args.url, name="example-rpc-client") as conn:
        client = RpcClient(conn, args.queue)
        for n in args.numbers:
            print(f"{n} squared is {client.call(n)}")


if __name__ == "__main__":
    main()
