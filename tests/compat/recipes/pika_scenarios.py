# ruff: noqa
"""The same pika program run on pika and on geamqp.pika: what each prints must be equal.

    python pika_scenarios.py MODULE NAME_PREFIX      (MODULE: pika or geamqp.pika)

Waits are on broker-visible state (a passive declare's counts), never on time.
"""
import importlib
import sys
import time

pika = importlib.import_module(sys.argv[1])
prefix = sys.argv[2]
connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
ch = connection.channel()


def out(*parts):
    print(*parts, flush=True)


def ready(queue, expected):
    """Poll the queue's ready count until it is `expected` (or 10 s pass); return it."""
    deadline = time.monotonic() + 10
    while True:
        count = connection.channel().queue_declare(queue, passive=True).method.message_count
        if count == expected or time.monotonic() > deadline:
            return count


# stop_consuming() in a callback: the other four are requeued, not dispatched.
q = ch.queue_declare(prefix + "-a").method.queue
ch.confirm_delivery()
for i in range(5):
    ch.basic_publish("", q, b"%d" % i)
got = []
ch.basic_consume(q, lambda c, m, p, b: (got.append(b), c.stop_consuming()))
ch.start_consuming()
out("A", got, ch.consumer_tags, ready(q, 4))
ch.queue_delete(q)

# basic_cancel() of an auto-ack consumer returns what was received and not dispatched.
q = ch.queue_declare("", exclusive=True).method.queue
tag = ch.basic_consume(q, lambda *a: out("B dispatched!"), auto_ack=True)
for i in range(5):
    ch.basic_publish("", q, b"%d" % i)
while ch.queue_declare(q, passive=True).method.message_count:
    pass
ch.queue_declare(q, passive=True)
out("B", [b for _, _, b in ch.basic_cancel(tag)], ch.basic_cancel(tag))

# confirm mode, unroutable mandatory: UnroutableError, then the return callback.
returns = []
ch.add_on_return_callback(lambda c, m, p, b: returns.append((m.reply_code, b)))
try:
    ch.basic_publish("amq.direct", prefix + "-nobody", b"lost", mandatory=True)
except pika.exceptions.UnroutableError as exc:
    out("D", len(exc.messages), exc.messages[0].method.reply_text, returns)
connection.process_data_events(1)
out("D", returns)

# the broker cancels a consumer: the cancel callback gets a frame; start_consuming ends.
cancels = []
q = ch.queue_declare("", exclusive=True).method.queue
ch.add_on_cancel_callback(lambda f: cancels.append(type(f.method).__name__))
ch.basic_consume(q, lambda *a: None)
connection.channel().queue_delete(q)
ch.start_consuming()
out("E", cancels, ch.consumer_tags)

# consume(): inactivity, waiting count, the end on a broker cancel.
q = ch.queue_declare("", exclusive=True).method.queue
ch.basic_publish("", q, b"g1")
items = []
for method, properties, body in ch.consume(q, inactivity_timeout=0.3):
    items.append(body)
    if body is None:
        break
out("F", items, ch.get_waiting_message_count())
ch.basic_publish("", q, b"g2")
ch.basic_publish("", q, b"g3")
while ch.queue_declare(q, passive=True).method.message_count:
    pass
ch.queue_declare(q, passive=True)
out("F", ch.get_waiting_message_count())
items = []
for method, properties, body in ch.consume(q, inactivity_timeout=0.3):
    items.append(body)
    if len(items) == 2:
        connection.channel().queue_delete(q)
out("F", items, ch.cancel())

# closed states.
ch2 = connection.channel()
try:
    ch2.queue_declare(prefix + "-missing", passive=True)
except pika.exceptions.ChannelClosedByBroker as exc:
    out("H", type(exc).__name__, exc.reply_code)
for call in (lambda: ch2.basic_publish("", "q", b""), ch2.close):
    try:
        call()
    except pika.exceptions.AMQPError as exc:
        out("H", type(exc).__name__)
try:
    ch.queue_declare(queue=[1, 2, 3])
except TypeError as exc:
    out("H", "TypeError", "queue" in str(exc))

# a callback closes the connection: start_consuming returns normally.
q = ch.queue_declare("", exclusive=True).method.queue
ch.basic_publish("", q, b"x")
ch.basic_consume(q, lambda c, m, p, b: connection.close())
ch.start_consuming()
out("C", connection.is_open, ch.is_open)
for call in (connection.close, connection.channel, lambda: ch.basic_publish("", q, b"")):
    try:
        call()
    except pika.exceptions.AMQPError as exc:
        out("C", type(exc).__name__)
