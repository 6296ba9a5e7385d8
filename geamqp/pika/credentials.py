"""`pika.credentials`: geamqp's credential classes under pika's names.

pika's ``erase_on_connect`` is accepted and ignored: geamqp keeps no extra copy of
the password to erase (it is needed again for a reconnect when recovery is on).
"""

from __future__ import annotations

from ..protocol.sasl import Credentials, ExternalCredentials
from ..protocol.sasl import PlainCredentials as _PlainCredentials

__all__ = ["VALID_TYPES", "Credentials", "ExternalCredentials", "PlainCredentials"]


class PlainCredentials(_PlainCredentials):
    """``PlainCredentials(username, password, erase_on_connect=False)``."""

    __slots__ = ("erase_on_connect",)

    def __init__(self, username: str, password: str, erase_on_connect: bool = False) -> None:
        for name, value in (("username", username), ("password", password)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str, not {type(value).__name__}")
        super().__init__(username, password)
        self.erase_on_connect = erase_on_connect


VALID_TYPES = [PlainCredentials, ExternalCredentials]
