"""`pika.exchange_type.ExchangeType`: the four built-in exchange types."""

from enum import Enum

__all__ = ["ExchangeType"]


class ExchangeType(str, Enum):
    direct = "direct"
    fanout = "fanout"
    headers = "headers"
    topic = "topic"
