"""The README's "Production consumers" snippets and examples/poison_messages.py, run as
written against the real broker (issue 12)."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


def _section_snippets() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Production consumers")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```py\n(.*?)```", text[start:end], flags=re.S)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=45, cwd=ROOT)


def test_the_section_has_its_snippets() -> None:
    assert len(_section_snippets()) == 4


@pytest.mark.parametrize(("index", "expected"), [
    (0, "consuming with channel recovery: True"),
    (1, "received b'after the cancel'"),
    (2, "connected with a provider: True"),
    (3, "offsets [0, 1, 2]"),
])
def test_snippet_runs_as_written(broker: object, index: int, expected: str) -> None:
    result = _run("-c", _section_snippets()[index])
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout, result.stdout
    assert "gone for good" not in result.stdout


def test_poison_message_example(broker: object) -> None:
    queue = f"poison-{uuid.uuid4().hex[:10]}"
    result = _run(str(ROOT / "examples" / "poison_messages.py"), "--queue", queue,
                  "--limit", "2")
    assert result.returncode == 0, result.stderr
    attempts = re.findall(r"attempt (\d+) for poison", result.stdout)
    assert attempts == ["1", "2", "3"], result.stdout
    assert f"dead-lettered poison from {queue} (delivery_limit)" in result.stdout
