"""Replay steps the broker refuses for a while are retried with back-off, not abandoned."""

from __future__ import annotations

from typing import Any

import pytest
from support.broker import BrokerEndpoint

import geamqp
import geamqp.recovery
from geamqp.protocol.spec import Queue


def test_resource_locked_exclusive_queue_is_retried_until_its_old_owner_is_gone(
        broker: BrokerEndpoint, unique_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The situation after a reset: the broker has not yet noticed that the old
    # connection is gone, so it still owns our exclusive queue (405 RESOURCE_LOCKED).
    old_owner = geamqp.connect(broker.url(), name=f"{unique_name}-old", recover=False)
    old_owner.channel().queue_declare(unique_name, exclusive=True)
    delays: list[int] = []

    def first_retry_frees_the_queue(attempt: int, *args: Any, **kwargs: Any) -> float:
        delays.append(attempt)
        if old_owner.is_open:
            old_owner.close()  # ... and then the broker catches up
        return 0.01

    monkeypatch.setattr(geamqp.recovery, "backoff_delay", first_retry_frees_the_queue)
    conn = geamqp.connect(broker.url(), name=unique_name)
    try:
        supervisor = conn._supervisor
        assert supervisor is not None
        reply = supervisor._declare_with_retries(
            Queue.Declare(0, unique_name, exclusive=True))
        assert reply is not None and reply.queue == unique_name
        assert delays == [0]  # refused once, retried after a back-off, then declared
    finally:
        if old_owner.is_open:
            old_owner.close()
        conn.close()


def test_a_replay_step_refused_for_good_is_given_up_after_its_retries(
        broker: BrokerEndpoint, unique_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    owner = geamqp.connect(broker.url(), name=f"{unique_name}-owner", recover=False)
    owner.channel().queue_declare(unique_name, exclusive=True)
    attempts: list[int] = []
    monkeypatch.setattr(geamqp.recovery, "backoff_delay",
                        lambda attempt, *a, **k: attempts.append(attempt) or 0.0)
    conn = geamqp.connect(broker.url(), name=unique_name)
    try:
        supervisor = conn._supervisor
        assert supervisor is not None
        assert supervisor._declare_with_retries(
            Queue.Declare(0, unique_name, exclusive=True)) is None
        assert attempts == list(range(geamqp.recovery._ENTITY_RETRIES - 1))
        assert conn.is_open  # only the supervisor's private channel took the refusals
    finally:
        owner.close()
        conn.close()
