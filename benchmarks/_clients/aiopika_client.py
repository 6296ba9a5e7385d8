"""aio-pika on the default asyncio event loop, used as its documentation shows.

One `aio_pika.Message` per publish; confirmed publishes are tasks, at most
`window` outstanding; consumer callbacks are coroutines that await
`message.ack()`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import aio_pika

from . import POLL_INTERVAL, Meter, percentiles


def _run(main: Callable[[], Coroutine[Any, Any, dict[str, float]]]) -> dict[str, float]:
    return asyncio.run(main())


async def _message_count(channel: Any, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    return int(declared.declaration_result.message_count)


def publish(url: str, meter: Meter, queue: str, n: int, body: bytes) -> dict[str, float]:
    async def main() -> dict[str, float]:
        conn = await aio_pika.connect(url)
        channel = await conn.channel(publisher_confirms=False)
        exchange = channel.default_exchange
        Message = aio_pika.Message
        meter.start()
        for _ in range(n):
            await exchange.publish(Message(body), routing_key=queue)
        while await _message_count(channel, queue) < n:
            await asyncio.sleep(POLL_INTERVAL)
        meter.stop()
        await conn.close()
        return {}

    return _run(main)


def confirm(url: str, meter: Meter, queue: str, n: int, body: bytes,
            window: int) -> dict[str, float]:
    async def main() -> dict[str, float]:
        conn = await aio_pika.connect(url)
        channel = await conn.channel(publisher_confirms=True)
        exchange = channel.default_exchange
        Message = aio_pika.Message
        pending: deque[Any] = deque()
        ensure_future = asyncio.ensure_future
        meter.start()
        for _ in range(n):
            pending.append(ensure_future(exchange.publish(Message(body), routing_key=queue)))
            if len(pending) >= window:
                await pending.popleft()
        while pending:
            await pending.popleft()
        meter.stop()
        await conn.close()
        return {}

    return _run(main)


def consume(url: str, meter: Meter, queue: str, n: int, prefetch: int,
            ack_every: int) -> dict[str, float]:
    async def main() -> dict[str, float]:
        conn = await aio_pika.connect(url)
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=prefetch)
        source = await channel.get_queue(queue, ensure=False)
        done = asyncio.get_running_loop().create_future()
        count = 0

        async def on_message(message: Any) -> None:
            nonlocal count
            count += 1
            if ack_every == 1:
                await message.ack()
            elif not count % ack_every or count == n:
                await message.ack(multiple=True)
            if count == n:
                done.set_result(None)

        meter.start()
        await source.consume(on_message)
        await done
        await _message_count(channel, queue)  # a round trip: the broker has read every ack
        meter.stop()
        await conn.close()
        return {}

    return _run(main)


def rpc(url: str, meter: Meter, queue: str, n: int, body: bytes) -> dict[str, float]:
    async def main() -> dict[str, float]:
        conn = await aio_pika.connect(url)
        server = await conn.channel()
        client = await conn.channel()
        Message = aio_pika.Message
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[None] = loop.create_future()

        async def on_request(message: Any) -> None:
            await server.default_exchange.publish(
                Message(message.body, correlation_id=message.correlation_id),
                routing_key=message.reply_to)

        async def on_reply(message: Any) -> None:
            if not reply.done():
                reply.set_result(None)

        await (await server.get_queue(queue, ensure=False)).consume(on_request, no_ack=True)
        replies = await client.get_queue("amq.rabbitmq.reply-to", ensure=False)
        await replies.consume(on_reply, no_ack=True)
        clock = time.perf_counter
        times = []
        meter.start()
        for i in range(n):
            t0 = clock()
            reply = loop.create_future()
            await client.default_exchange.publish(
                Message(body, correlation_id=str(i), reply_to="amq.rabbitmq.reply-to"),
                routing_key=queue)
            await reply
            times.append(clock() - t0)
        meter.stop()
        await conn.close()
        return percentiles(times)

    return _run(main)


def declare(url: str, meter: Meter, queue: str, n: int) -> dict[str, float]:
    async def main() -> dict[str, float]:
        conn = await aio_pika.connect(url)
        channel = await conn.channel()
        declare_queue = channel.declare_queue
        meter.start()
        for _ in range(n):
            await declare_queue(queue, passive=True)
        meter.stop()
        await conn.close()
        return {}

    return _run(main)
