"""An RPC server: answers each request on its reply_to queue with the same correlation_id.

    python examples/rpc_server.py [--queue rpc_queue] [--count N]

Requests carry an integer n; the reply is n squared.
"""

from __future__ import annotations

import argparse

import geamqp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--queue", default="rpc_queue")
    parser.add_argument("--count", type=int, default=0, help="stop after N requests; 0 = never")
    args = parser.parse_args()
    served = 0

    def on_request(channel: geamqp.Channel, method, properties, body: bytes) -> None:
        nonlocal served
        n = int(body)
        channel.basic_publish(
            "", properties.reply_to, str(n * n).encode(),
            properties=geamqp.BasicProperties(correlation_id=properties.correlation_id),
        )
        channel.basic_ack(method.delivery_tag)
        served += 1
        if args.count and served >= args.count:
            channel.stop_consuming()

    with geamqp.connect(args.url, name="example-rpc-server") as conn:
        channel = conn.channel()
        channel.queue_declare(args.queue, auto_delete=True)
        channel.basic_qos(prefetch_count=10)
        channel.basic_consume(args.queue, on_request)
        print(f"serving on {args.queue}", flush=True)
        channel.start_consuming()
    print(f"served {served} requests")


if __name__ == "__main__":
    main()
