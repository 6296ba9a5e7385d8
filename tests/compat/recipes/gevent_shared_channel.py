"""A monkey-patched legacy app (our own, written as pika code): 200 greenlets share one
BlockingConnection and one channel — publishing with confirms, making RPCs, sleeping —
while another greenlet consumes on the same channel with start_consuming().

    python gevent_shared_channel.py URL QUEUE
"""
from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

import geamqp.pika as pika  # noqa: E402

GREENLETS, EACH = 200, 5
url, queue = sys.argv[1], sys.argv[2]
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
channel.queue_declare(queue=queue, exclusive=True)
channel.basic_qos(prefetch_count=50)
channel.confirm_delivery()
received = set()


def on_message(ch, method, properties, body):
    received.add(body)
    ch.basic_ack(method.delivery_tag)
    if len(received) == GREENLETS * EACH:
        ch.stop_consuming()


def publisher(n):
    for i in range(EACH):
        channel.basic_publish("", queue, f"{n}:{i}".encode())  # waits for this one's ack
        time.sleep(0.001)  # patched: only this greenlet sleeps
    return channel.queue_declare(queue=queue, passive=True).method.queue


channel.basic_consume(queue, on_message)
consumer = gevent.spawn(channel.start_consuming)
started = time.monotonic()
publishers = [gevent.spawn(publisher, n) for n in range(GREENLETS)]
gevent.joinall(publishers, raise_error=True, timeout=30)
consumer.join(timeout=30)
consumer.get(block=False)
expected = {f"{n}:{i}".encode() for n in range(GREENLETS) for i in range(EACH)}
print(f"greenlets={GREENLETS} published={len(expected)} received={len(received)} "
      f"same={received == expected} rpcs_ok={all(p.value == queue for p in publishers)} "
      f"seconds={time.monotonic() - started:.2f}", flush=True)
connection.close()
