"""`pika.DeliveryMode`: ``BasicProperties(delivery_mode=DeliveryMode.Persistent)``."""

from enum import Enum

__all__ = ["DeliveryMode"]


class DeliveryMode(Enum):
    Transient = 1
    Persistent = 2
