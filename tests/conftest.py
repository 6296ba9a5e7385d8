"""Fixtures for every test: hub errors fail the test; unique names.

A greenlet that dies with an exception, or a hub callback that raises, is
printed by the gevent hub and otherwise forgotten — a bug that a test would
never see. ``_fail_on_hub_errors`` (autouse) records every exception the hub
prints during a test, including its fixtures' teardown, and fails the test.

Opting out, for tests that provoke such errors on purpose:

- ``@pytest.mark.hub_errors_expected(types=(ZeroDivisionError, ...))``: those
  types (and subclasses) are allowed; with no arguments, any error is. (Pass
  ``types=``: pytest takes a lone positional class for the decorated object.)
- or request the ``hub_errors`` fixture, call ``hub_errors.expect(SomeError)``
  and assert on ``hub_errors.errors``.
"""

from __future__ import annotations

import re
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import gevent
import pytest
from _pytest.outcomes import OutcomeException

_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "hub_errors_expected(types=()): exceptions of these types printed by the gevent hub "
        "do not fail the test (any type when none are given)",
    )


@dataclass(frozen=True)
class HubError:
    """One exception the hub printed: where it ran, and what it raised."""

    context: Any  # the Greenlet or callback, as the hub reports it
    type: type[BaseException]
    value: BaseException | None
    traceback: TracebackType | None

    def format(self) -> str:
        lines = traceback.format_exception(self.type, self.value, self.traceback)
        return f"in {self.context!r}:\n{''.join(lines)}"


@dataclass
class HubErrorRecorder:
    """Collects what the hub prints while a test runs."""

    errors: list[HubError] = field(default_factory=list)
    expected: tuple[type[BaseException], ...] = ()
    expect_any: bool = False
    reported: int = 0  # errors[:reported] already failed the test

    def expect(self, *types: type[BaseException]) -> None:
        """Allow hub errors of ``types``; with no types, allow any."""
        if not types:
            self.expect_any = True
        self.expected += types

    def unexpected(self) -> list[HubError]:
        if self.expect_any:
            return []
        return [e for e in self.errors if not issubclass(e.type, self.expected)]

    def fail_if_unexpected(self) -> None:
        """pytest.fail for unexpected errors not reported yet (each only once)."""
        fresh, self.reported = self.errors[self.reported :], len(self.errors)
        unexpected = [e for e in self.unexpected() if any(e is f for f in fresh)]
        if unexpected:
            details = "\n".join(error.format() for error in unexpected)
            pytest.fail(
                f"{len(unexpected)} error(s) printed by the gevent hub during the test:\n{details}",
                pytrace=False,
            )

    def record(
        self,
        context: Any,
        exc_type: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # pytest's own outcomes (a pytest-timeout failure raised inside the hub)
        # already fail the test; recording them again would only add noise.
        if exc_type is not None and not issubclass(exc_type, OutcomeException):
            self.errors.append(HubError(context, exc_type, value, tb))


@pytest.fixture
def hub_errors(request: pytest.FixtureRequest) -> HubErrorRecorder:
    """The recorder of this test's hub errors; see the module docstring."""
    recorder = HubErrorRecorder()
    marker = request.node.get_closest_marker("hub_errors_expected")
    if marker is not None:
        recorder.expect(*marker.args, *marker.kwargs.get("types", ()))
    return recorder


@pytest.fixture(autouse=True)
def _fail_on_hub_errors(hub_errors: HubErrorRecorder) -> Iterator[None]:
    hub = gevent.get_hub()
    original = hub.print_exception

    def print_and_record(
        context: Any,
        exc_type: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        hub_errors.record(context, exc_type, value, tb)
        original(context, exc_type, value, tb)

    hub.print_exception = print_and_record
    try:
        yield
    finally:
        if getattr(hub, "print_exception", None) is print_and_record:
            del hub.print_exception  # back to the class's method
    hub_errors.fail_if_unexpected()  # what fixtures' teardown provoked


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    # Fail in the call phase (FAILED, not a teardown ERROR) when the test body
    # itself provoked hub errors; a test that already failed keeps its failure.
    result = yield
    recorder = getattr(item, "funcargs", {}).get("hub_errors")
    if isinstance(recorder, HubErrorRecorder):
        recorder.fail_if_unexpected()
    return result


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """``<test name>-<12 hex>``: a queue/exchange/connection name no other test uses."""
    base = _UNSAFE_NAME_CHARS.sub("_", request.node.name).strip("_")[:80]
    return f"{base}-{uuid.uuid4().hex[:12]}"
