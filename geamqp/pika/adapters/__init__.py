"""`pika.adapters`: only the blocking adapter exists here (see geamqp.pika's docs)."""

from .blocking_connection import BlockingConnection

__all__ = ["BlockingConnection"]
