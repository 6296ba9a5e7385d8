"""Per-channel protocol state: its place in the state table, content being
assembled (spec 4.2.6: a content method, then a header frame, then body frames
until body_size bytes arrived), and publisher-confirm numbering."""

from __future__ import annotations

from .properties import BasicProperties
from .spec import Method
from .state import ChanState

__all__ = ["ChannelRecord"]


class ChannelRecord:
    """What the protocol engine keeps for one channel number."""

    __slots__ = (
        "body_size",
        "close_reason",
        "confirm_mode",
        "flow_active",
        "method",
        "number",
        "parts",
        "properties",
        "publish_seqno",
        "received",
        "state",
    )

    def __init__(self, number: int) -> None:
        self.number = number
        self.state = ChanState.OPENING
        self.close_reason: tuple[int, str] = (200, "Normal shutdown")
        self.confirm_mode = False  # confirm.select sent: publishes are numbered
        self.publish_seqno = 0  # seqno of the last publish in confirm mode
        self.flow_active = True
        self.method: Method | None = None  # content method awaiting its header / body
        self.properties: BasicProperties | None = None
        self.body_size = 0
        self.received = 0
        self.parts: list[bytes] = []

    def reset_content(self) -> None:
        self.method = None
        self.properties = None
        self.body_size = 0
        self.received = 0
        if self.parts:
            self.parts = []
