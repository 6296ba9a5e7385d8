"""benchmarks/metrics_overhead.py still runs and prints every row."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_metrics_overhead_benchmark_prints_its_table() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "metrics_overhead.py"), "--n", "2000",
         "--repeat", "1"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 11, result.stdout
    assert rows[0].startswith("| no collector: `if m is not None` (local) |")
