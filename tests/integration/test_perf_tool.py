"""`python -m geamqp perf`: JSON output, counts that add up, exit status, --chaos.

Each test runs the tool as a user would, in a subprocess against the real
broker; the tool names its queues uniquely and deletes them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def perf(*args: str, timeout: float = 60) -> tuple[int, list[dict[str, Any]], str]:
    result = subprocess.run([sys.executable, "-m", "geamqp", "perf", "--json", *args],
                            capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert "Traceback" not in result.stderr, result.stderr  # e.g. a greenlet the hub printed
    return result.returncode, records, result.stderr


def split(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    *progress, summary = records
    assert summary["type"] == "summary"
    assert all(r["type"] == "progress" for r in progress)
    return progress, summary


def assert_settled(summary: dict[str, Any]) -> None:
    """Every publish has exactly one outcome."""
    assert summary["published"] == (summary["confirmed"] + summary["nacked"]
                                    + summary["outcome_unknown"])


def test_json_lines_parse_and_counts_add_up(broker: Any) -> None:
    code, records, err = perf("--duration", "2", "--producers", "2", "--consumers", "2",
                              "--queues", "2", "--confirm", "50", "--rate", "1500",
                              "--multi-ack-every", "10")
    assert code == 0, err
    progress, s = split(records)
    assert len(progress) == 2 and [p["elapsed_s"] for p in progress] == pytest.approx(
        [1.0, 2.0], abs=0.2)
    assert all(p["published_rate"] > 0 and p["latency_ms"]["p50"] is not None
               for p in progress)
    assert 2000 < s["published"] <= 2 * 1500 * 2.2
    assert_settled(s)
    assert s["confirmed"] == s["published"] and s["nacked"] == s["outcome_unknown"] == 0
    assert s["consumed"] == s["published"] and s["duplicated"] == 0 and s["lost"] == 0
    lat = s["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert s["recoveries"] == s["resets"] == 0
    assert s["ok"] is True and s["checks"]["lost"]["met"] is True


def test_count_auto_ack_and_an_expectation_that_fails(broker: Any) -> None:
    code, records, err = perf("--count", "400", "--producers", "2", "--auto-ack",
                              "--expect-rate", "1e9", "--expect-p99", "60000")
    assert code == 1, err  # the rate was not met
    _, s = split(records)
    assert s["published"] == 800 and s["consumed"] == 800 and s["lost"] == 0
    assert s["checks"]["rate"] == {"expected": 1e9, "actual": s["consume_rate"], "met": False}
    assert s["checks"]["p99_ms"]["met"] is True
    assert "lost" not in s["checks"]  # no confirms: nothing was promised
    assert s["ok"] is False


def test_bad_arguments_exit_2_with_a_reason(broker: Any) -> None:
    code, _, err = perf("--queues", "3", "--consumers", "2")
    assert code == 2
    assert "--consumers (2) must be 0 or at least --queues (3)" in err
    code, _, err = perf("--queue-type", "stream", "--auto-ack")
    assert code == 2 and "stream queues need manual acks" in err


@pytest.mark.slow
def test_chaos_loses_no_confirmed_message(broker: Any) -> None:
    code, records, err = perf("--duration", "5", "--chaos", "1", "--confirm", "100",
                              "--rate", "1000", "--multi-ack-every", "20")
    assert code == 0, err
    progress, s = split(records)
    assert s["resets"] == 4  # at 1, 2, 3 and 4 s
    assert s["recoveries"] == s["connection_losses"] >= 2 * 4  # a producer and a consumer
    assert progress[-1]["recoveries"] >= 6
    assert_settled(s)
    assert s["lost"] == 0 and s["checks"]["lost"]["met"] is True
    assert s["confirmed"] > 0.8 * s["published"]
    assert s["consumed"] >= s["confirmed"]
    assert s["ok"] is True


@pytest.mark.slow
def test_chaos_with_republishing_confirms_everything(broker: Any) -> None:
    code, records, err = perf("--duration", "3", "--chaos", "1", "--confirm", "100",
                              "--rate", "1000", "--republish-unconfirmed")
    assert code == 0, err
    _, s = split(records)
    assert s["recoveries"] >= 4
    assert s["confirmed"] == s["published"] == s["consumed"]
    assert s["outcome_unknown"] == s["lost"] == 0
