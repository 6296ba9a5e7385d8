"""One pika program, run on pika itself and on geamqp.pika: the output must be the same.

pika is installed with the bench extra (`make venv`); without it this test is skipped.
recipes/pika_scenarios.py covers stop_consuming in a callback, basic_cancel's return,
UnroutableError with the return callback, broker cancels, the consume() generator,
closed-state errors and a callback closing the connection.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCENARIOS = Path(__file__).resolve().parent / "recipes" / "pika_scenarios.py"


def run(module: str, prefix: str) -> list[str]:
    done = subprocess.run([sys.executable, str(SCENARIOS), module, prefix],
                          capture_output=True, text=True, timeout=40)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines()


@pytest.mark.timeout(60)
def test_same_output_as_pika(unique_name: str) -> None:
    pytest.importorskip("pika")
    expected = run("pika", unique_name + "-pika")
    assert len(expected) == 16, expected
    assert run("geamqp.pika", unique_name + "-geamqp") == expected
