"""Logging: lifecycle at INFO, protocol detail at DEBUG, never a body or a credential."""

from __future__ import annotations

import logging

import pytest
from support.broker import BrokerEndpoint

import geamqp


def test_lifecycle_at_info_protocol_at_debug_and_no_body(broker: BrokerEndpoint,
                                                         caplog: pytest.LogCaptureFixture,
                                                         unique_name: str) -> None:
    body = b"secret-body-" + unique_name.encode()
    with caplog.at_level(logging.DEBUG, logger="geamqp"), \
            geamqp.connect(broker.url(), name=unique_name) as conn:
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).queue
        ch.confirm_delivery()
        ch.basic_publish("", queue, body)
        assert ch.basic_get(queue, auto_ack=True)[2] == body
    records = [r for r in caplog.records if r.name.startswith("geamqp")]
    info = [r.getMessage() for r in records if r.levelno == logging.INFO]
    debug = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
    assert any(m.startswith("connected to") for m in info)
    assert any("closed" in m for m in info)
    assert any("sent queue.declare" in m for m in debug)
    assert any("basic.get answered" in m for m in debug)
    text = "\n".join(r.getMessage() for r in records)
    assert body.decode() not in text
    assert "guest:guest" not in text and ":guest@" not in text
