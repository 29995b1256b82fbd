"""Every command-line script in bench/ at least starts: it imports what it needs and parses its
arguments. Nothing else runs the benchmarks on each change (they take minutes and want a quiet
machine), and once a refactor of bench/harness.py left bench/recovery.py importing names that had
moved, unnoticed until someone ran it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
# The modules the scripts import, or that others start as processes; they have no command line.
NOT_SCRIPTS = {"harness.py", "floor_app.py", "workflow_app.py"}
SCRIPTS = sorted(path.name for path in BENCH.glob("*.py") if path.name not in NOT_SCRIPTS)


def test_the_list_is_not_empty() -> None:
    assert {"hotpath.py", "recovery.py", "run.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bench_script_imports_and_answers_help(script: str) -> None:
    finished = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=60, cwd=BENCH
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "usage:" in finished.stdout
