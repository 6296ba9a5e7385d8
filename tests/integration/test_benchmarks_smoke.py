"""benchmarks/compare.py still runs: a quick publish case for geamqp and the raw client."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.timeout(90)
def test_compare_quick_publish_prints_the_table(broker: object) -> None:
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "compare.py"), "--quick",
         "--clients", "geamqp,raw", "--cases", "publish"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("| case | client | msgs/s | CPU µs/msg |"), proc.stdout
    rows = {cells[2].strip(): cells for cells in (line.split("|") for line in lines[2:4])}
    assert set(rows) == {"geamqp", "raw"}, proc.stdout
    for client, cells in rows.items():
        assert cells[1].strip().startswith("publish"), proc.stdout
        rate = float(cells[3].replace(",", ""))  # a number, not "—": the run succeeded
        cpu = float(cells[4])
        assert rate > 0 and cpu > 0, (client, proc.stdout)
