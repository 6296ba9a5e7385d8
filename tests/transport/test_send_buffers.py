"""The writer's vectored send: every buffer arrives, in order, whole, however
the kernel splits the `sendmsg` calls (a slow reader forces partial sends)."""

from __future__ import annotations

import socket as _stdsocket
from types import SimpleNamespace
from typing import Any

import gevent
import pytest
from gevent import socket

from geamqp._transport import Transport

pytestmark = pytest.mark.timeout(30)


def _sender(sock: Any) -> Any:
    stub = SimpleNamespace(_sock=sock, _engine=SimpleNamespace(blocked=False))
    stub._send_all = lambda data: Transport._send_all(stub, data)  # type: ignore[arg-type]
    return stub


@pytest.mark.parametrize("count", [3, 1500])  # and more buffers than one sendmsg takes
def test_all_buffers_arrive_in_order_through_partial_sends(count: int) -> None:
    a, b = socket.socketpair()
    a.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_SNDBUF, 16 * 1024)
    a.settimeout(10)
    try:
        big = bytes(range(256)) * 1024  # 256 KiB
        buffers: list[Any] = []
        for i in range(count):
            buffers.append(b"head-%d|" % i)
            if i % 500 == 0:
                buffers.append(memoryview(big)[i % 7:])
        expected = b"".join(buffers)
        received = bytearray()

        def read() -> None:
            while len(received) < len(expected):
                chunk = b.recv(7000)  # slower than the sender: partial sendmsg calls
                assert chunk
                received.extend(chunk)

        reader = gevent.spawn(read)
        Transport._send_buffers(_sender(a), list(buffers))  # type: ignore[arg-type]
        reader.join(timeout=20)
        assert reader.successful()
        assert bytes(received) == expected
    finally:
        a.close()
        b.close()
