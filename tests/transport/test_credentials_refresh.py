"""Credentials providers (issue 12 point 5) against the fake broker: which secret each
connection attempt sends, and the update-secret sent ahead of expiry."""

from __future__ import annotations

import time
from typing import Any

import gevent
import pytest
from fakebroker import WAIT, FakeBroker
from pamqp import commands as C

import geamqp
from geamqp import PlainCredentials

pytestmark = pytest.mark.timeout(15)


class TokenIssuer:
    """A provider: each call issues the next token, valid for `lifetime` seconds."""

    def __init__(self, lifetime: float | None = None) -> None:
        self.lifetime = lifetime
        self.issued: list[str] = []
        self.fail = False

    def __call__(self) -> PlainCredentials:
        if self.fail:
            raise RuntimeError("token endpoint down")
        token = f"token-{len(self.issued)}"
        self.issued.append(token)
        expires = None if self.lifetime is None else time.time() + self.lifetime
        return PlainCredentials("svc", token, expires_at=expires)


def _login_secret(broker: FakeBroker, index: int) -> str:
    response = broker.peer(index).start_ok.response
    if isinstance(response, bytes):
        response = response.decode()
    return str(response).split("\0")[-1]


def test_each_connection_attempt_asks_the_provider(broker: FakeBroker, connect: Any) -> None:
    issuer = TokenIssuer()
    conn, signals = connect(broker, params={"credentials": issuer})
    assert _login_secret(broker, 0) == "token-0"
    broker.peer(0).drop()
    signals.wait("recovered")
    assert _login_secret(broker, 1) == "token-1", "recovery reused the connect-time secret"
    assert conn.is_open


def test_update_secret_is_sent_ahead_of_expiry(broker: FakeBroker, connect: Any) -> None:
    issuer = TokenIssuer(lifetime=1.2)  # refreshed lead (0.1 s) before: after ~1.1 s
    conn, _ = connect(broker, params={"credentials": issuer}, credentials_refresh_lead=0.1)
    record = broker.wait_for(C.Connection.UpdateSecret, conn=0, timeout=WAIT * 2)
    secret = record.method.new_secret
    assert (secret.decode() if isinstance(secret, bytes) else secret) == "token-1"
    assert conn.is_open and issuer.issued == ["token-0", "token-1"]


def test_a_provider_that_fails_fails_the_attempt_without_the_secret(broker: FakeBroker) -> None:
    issuer = TokenIssuer()
    issuer.fail = True
    with pytest.raises(geamqp.AMQPConnectionError) as info, gevent.Timeout(WAIT):
        geamqp.connect(broker.params(credentials=issuer))
    assert "RuntimeError" in str(info.value)


def test_a_provider_must_return_plain_credentials(broker: FakeBroker) -> None:
    with pytest.raises(geamqp.AMQPConnectionError, match="must return PlainCredentials"), \
            gevent.Timeout(WAIT):
        geamqp.connect(broker.params(credentials=lambda: "secret"))


def test_expires_at_and_update_secret_types() -> None:
    with pytest.raises(TypeError, match="expires_at"):
        PlainCredentials("u", "p", expires_at="tomorrow")  # type: ignore[arg-type]
    assert PlainCredentials("u", "p", expires_at=5).expires_at == 5.0
    assert "s3cr3t" not in repr(PlainCredentials("u", "s3cr3t", expires_at=5))


def test_update_secret_rejects_a_non_string(broker: FakeBroker, connect: Any) -> None:
    conn, _ = connect(broker)
    with pytest.raises(TypeError, match="new_secret"):
        conn.update_secret(12345, "because")
