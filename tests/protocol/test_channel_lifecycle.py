"""Channel lifecycle as a state machine: random interleavings of client and server
opens, closes, crossing closes, publishes and deliveries against a model.

Invariants: the lowest free number is handed out; a number is reused only after
close-ok passed both ways; every channel that closes reports ChannelClosed
exactly once; what the client sends is always whole frames of the right kind.
"""

from __future__ import annotations

import pytest
from amqp_script import deliver, frame, opened, parse
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from geamqp.exceptions import ChannelWrongStateError, NoFreeChannels
from geamqp.protocol import events as ev
from geamqp.protocol.spec import Basic, Channel
from geamqp.protocol.state import ChanState

CHANNEL_MAX = 4
NUMBERS = st.integers(1, CHANNEL_MAX)


class ChannelLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.conn = opened(tune_args={"channel_max": CHANNEL_MAX})
        self.model: dict[int, ChanState] = {}

    def _sent(self) -> list[tuple[int, object]]:
        return [(f.channel, f.method) for f in parse(self.conn.data_to_send())
                if f.method is not None]

    def _in(self, number: int, *states: ChanState) -> bool:
        return self.model.get(number) in states

    @rule()
    def client_opens(self) -> None:
        free = [n for n in range(1, CHANNEL_MAX + 1) if n not in self.model]
        if not free:
            with pytest.raises(NoFreeChannels):
                self.conn.open_channel()
            assert self._sent() == []
            return
        number = self.conn.open_channel()
        assert number == free[0]
        assert self._sent() == [(number, Channel.Open())]
        self.model[number] = ChanState.OPENING

    @rule(number=NUMBERS)
    def server_opens_ok(self, number: int) -> None:
        if not self._in(number, ChanState.OPENING):
            return
        assert self.conn.receive_data(frame(number, Channel.OpenOk())) == [
            ev.ChannelOpened(number)]
        self.model[number] = ChanState.OPEN

    @rule(number=NUMBERS)
    def client_closes(self, number: int) -> None:
        if not self._in(number, ChanState.OPEN):
            return
        self.conn.close_channel(number, 200, "bye")
        assert self._sent() == [(number, Channel.Close(200, "bye", 0, 0))]
        self.model[number] = ChanState.CLOSING
        self.conn.close_channel(number)  # a second close is a no-op
        assert self._sent() == []

    @rule(number=NUMBERS, code=st.sampled_from([404, 406, 320]))
    def server_closes(self, number: int, code: int) -> None:
        if number not in self.model:
            return
        events = self.conn.receive_data(frame(number, Channel.Close(code, "x", 50, 10)))
        assert self._sent() == [(number, Channel.CloseOk())]
        if self.model[number] is ChanState.CLOSING:  # crossing: keep waiting
            assert events == []
        else:
            assert events == [ev.ChannelClosed(number, code, "x", 50, 10, True)]
            del self.model[number]

    @rule(number=NUMBERS)
    def server_close_oks(self, number: int) -> None:
        if not self._in(number, ChanState.CLOSING):
            return
        events = self.conn.receive_data(frame(number, Channel.CloseOk()))
        assert events == [ev.ChannelClosed(number, 200, "bye", 0, 0, False)]
        del self.model[number]

    @rule(number=NUMBERS)
    def client_publishes(self, number: int) -> None:
        if self._in(number, ChanState.OPEN):
            self.conn.publish(number, "", "q", b"body")
            sent = parse(self.conn.data_to_send())
            assert [f.type for f in sent] == [1, 2, 3]
            assert all(f.channel == number for f in sent)
        else:
            with pytest.raises(ChannelWrongStateError):
                self.conn.publish(number, "", "q", b"body")
            assert self._sent() == []

    @rule(number=NUMBERS, body=st.binary(max_size=30))
    def server_delivers(self, number: int, body: bytes) -> None:
        if self._in(number, ChanState.OPEN):
            [event] = self.conn.receive_data(deliver(number, body))
            assert isinstance(event, ev.ContentReceived) and event.body == body
        elif self._in(number, ChanState.CLOSING):
            assert self.conn.receive_data(deliver(number, body)) == []  # dropped
        assert self._sent() == []

    @rule(number=NUMBERS)
    def server_acks(self, number: int) -> None:
        if self._in(number, ChanState.OPEN):
            assert self.conn.receive_data(frame(number, Basic.Ack(1))) == [
                ev.MethodReceived(number, Basic.Ack(1))]
        elif self._in(number, ChanState.CLOSING):
            assert self.conn.receive_data(frame(number, Basic.Ack(1))) == []

    @invariant()
    def engine_matches_model(self) -> None:
        assert self.conn.is_open
        assert self.conn.open_channels == sorted(self.model)
        for number in range(1, CHANNEL_MAX + 1):
            assert self.conn.channel_state(number) is self.model.get(number, ChanState.CLOSED)


ChannelLifecycle.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                              deadline=None)
TestChannelLifecycle = ChannelLifecycle.TestCase
