# ruff: noqa  (third-party text kept as written)
# pika's reconnecting consumer with the `retry` package (pika 1.x
# examples/consume_recover_retry.py, BSD-3-Clause), kept as written except for the import
# line: test data for geamqp.pika.
import functools
import geamqp.pika as pika
from retry import retry

def on_message(channel, method_frame, header_frame, body, userdata=None):
    print('Userdata: {} Message body: {}'.format(userdata, body))
    channel.basic_ack(delivery_tag=method_frame.delivery_tag)

credentials = pika.PlainCredentials('guest', 'guest')
parameters =  pika.ConnectionParameters('localhost', credentials=credentials)


# Retry on AMQPConnectionError after 1 seconds + random time beetween 1 and 3.
@retry(pika.exceptions.AMQPConnectionError, delay=5, jitter=(1, 3))
def consume():
    connection = pika.BlockingConnection(parameters)
    channel = connection.channel()
    channel.exchange_declare(exchange='test_exchange', exchange_type='direct', passive=False, durable=True, auto_delete=False)
    channel.queue_declare(queue='standard', auto_delete=True)
    channel.queue_bind(queue='standard', exchange='test_exchange', routing_key='standard_key')
    channel.basic_qos(prefetch_count=1)

    on_message_callback = functools.partial(on_message, userdata='on_message_userdata')
    channel.basic_consume('standard', on_message_callback)

    try:
        channel.start_consuming()
    except KeyboardInterrupt:
        channel.stop_consuming()
        connection.close()
    # Do not recover connections closed by server
    except pika.exceptions.ConnectionClosedByBroker:
        pass

consume()
