"""The Collector interface: no-op base, MultiCollector fan-out, process-wide defaults."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from geamqp import BasicProperties
from geamqp.metrics import (
    Collector,
    ConnectionInfo,
    MultiCollector,
    add_default_collector,
    event_handler,
    get_default_collector,
    remove_default_collector,
    set_default_collector,
)

CONN = ConnectionInfo("billing", "/", "127.0.0.1", 5672)


@pytest.fixture(autouse=True)
def _no_defaults() -> Iterator[None]:
    set_default_collector(None)
    yield
    set_default_collector(None)


class Recorder(Collector):
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def message_published(self, *args: Any) -> None:
        self.calls.append(("message_published", args))

    def publish_acked(self, *args: Any) -> None:
        self.calls.append(("publish_acked", args))


class Tagger(Collector):
    """Adds a header naming itself; wraps callbacks to log their order."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def before_publish(self, conn: ConnectionInfo, channel: int, exchange: str,
                       routing_key: str,
                       properties: BasicProperties | None) -> BasicProperties | None:
        headers = dict(properties.headers or {}) if properties else {}
        headers[self.name] = len(headers)
        return BasicProperties(headers=headers)

    def wrap_consumer(self, conn: ConnectionInfo, channel: int, queue: str, callback: Any) -> Any:
        def wrapped(*args: Any) -> Any:
            self.log.append(f"{self.name} in")
            try:
                return callback(*args)
            finally:
                self.log.append(f"{self.name} out")
        return wrapped


ERROR = RuntimeError("x")


def every_event() -> list[tuple[str, tuple[Any, ...]]]:
    error = ERROR
    return [
        ("connection_opened", (CONN,)), ("connection_lost", (CONN, error)),
        ("connection_recovered", (CONN, 1.5)), ("connection_recovery_failed", (CONN, error)),
        ("connection_closed", (CONN, None)), ("connection_blocked", (CONN, "low on memory")),
        ("connection_unblocked", (CONN, 2.0)), ("thread_callbacks_pending", (CONN, 3)),
        ("channel_opened", (CONN, 1)), ("channel_closed", (CONN, 1, None)),
        ("message_published", (CONN, 1, "ex", "rk", 10)), ("publish_acked", (CONN, 1, 0.001)),
        ("publish_nacked", (CONN, 1, 0.002)), ("publish_returned", (CONN, 1, "ex", "rk", 312)),
        ("consumer_added", (CONN, 1, "q", "ctag")),
        ("consumer_cancelled", (CONN, 1, "q", "ctag", True)),
        ("message_delivered", (CONN, 1, 10, False)), ("delivery_acked", (CONN, 1, 5, True)),
        ("delivery_nacked", (CONN, 1, 6, False, True)),
        ("delivery_rejected", (CONN, 1, 7, False)),
    ]


def test_base_collector_accepts_every_event_and_traces_nothing() -> None:
    base = Collector()
    for name, args in every_event():
        assert getattr(base, name)(*args) is None
    props = BasicProperties(headers={"a": 1})
    assert base.before_publish(CONN, 1, "", "q", props) is props
    callback = print
    assert base.wrap_consumer(CONN, 1, "q", callback) is callback
    assert not base.traces_publish() and not base.wraps_consumers()


def test_multi_collector_forwards_every_event_in_order() -> None:
    class All(Collector):
        def __init__(self, tag: str, log: list[tuple[str, str, tuple[Any, ...]]]) -> None:
            self.tag, self.log = tag, log

        def __getattribute__(self, name: str) -> Any:
            if name in dict(every_event()):
                return lambda *args: self.log.append((self.tag, name, args))
            return super().__getattribute__(name)

    log: list[tuple[str, str, tuple[Any, ...]]] = []
    multi = MultiCollector([All("a", log), All("b", log)])
    for name, args in every_event():
        getattr(multi, name)(*args)
    expected = [(tag, name, args) for name, args in every_event() for tag in ("a", "b")]
    assert log == expected


def test_multi_collector_threads_publish_hooks_and_nests_wrappers() -> None:
    log: list[str] = []
    multi = MultiCollector([Recorder(), Tagger("first", log), Tagger("second", log)])
    assert multi.traces_publish() and multi.wraps_consumers()
    props = multi.before_publish(CONN, 1, "", "q", None)
    assert props is not None and props.headers == {"first": 0, "second": 1}
    wrapped = multi.wrap_consumer(CONN, 1, "q", lambda *args: log.append("callback"))
    wrapped(None, None, None, b"")
    assert log == ["first in", "second in", "callback", "second out", "first out"]


def test_multi_collector_without_tracers_says_so() -> None:
    multi = MultiCollector([Recorder(), Collector()])
    assert not multi.traces_publish() and not multi.wraps_consumers()


def test_multi_collector_rejects_what_is_not_a_collector() -> None:
    with pytest.raises(TypeError, match="Collector, not dict"):
        MultiCollector([Recorder(), {}])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="Collector, not str"):
        set_default_collector("prometheus")  # type: ignore[arg-type]


def test_process_wide_defaults() -> None:
    assert get_default_collector() is None
    first, second = Recorder(), Recorder()
    set_default_collector(first)
    assert get_default_collector() is first
    add_default_collector(second)
    add_default_collector(second)  # once only
    combined = get_default_collector()
    assert isinstance(combined, MultiCollector)
    assert combined.collectors == (first, second)
    combined.message_published(CONN, 1, "", "q", 3)
    assert first.calls == second.calls == [("message_published", (CONN, 1, "", "q", 3))]
    remove_default_collector(first)
    assert get_default_collector() is second
    set_default_collector(None)
    assert get_default_collector() is None


def test_importing_geamqp_imports_no_optional_integration() -> None:
    code = ("import sys, geamqp, geamqp.metrics\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('prometheus_client', 'opentelemetry')]\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr


def test_event_handler_is_none_unless_someone_listens() -> None:
    recorder = Recorder()
    assert event_handler(None, "message_published") is None
    assert event_handler(Collector(), "message_published") is None
    assert event_handler(recorder, "message_delivered") is None
    handler = event_handler(recorder, "message_published")
    assert handler is not None
    handler(CONN, 1, "", "q", 1)
    assert recorder.calls == [("message_published", (CONN, 1, "", "q", 1))]
    multi = MultiCollector([Collector(), recorder])
    assert event_handler(multi, "message_delivered") is None
    assert event_handler(multi, "publish_acked") is not None
    with pytest.raises(ValueError, match=r"'publish' is not a geamqp\.metrics\.Collector event"):
        event_handler(recorder, "publish")
