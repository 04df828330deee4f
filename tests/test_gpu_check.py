"""The GPU check script's CPU smoke mode: every step runs, tiny, so the script cannot rot without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("cuda", "suite", "cli", "seqgan", "scoring", "update", "atari", "fast")


@pytest.mark.slow
def test_the_gpu_check_runs_every_step_in_smoke_mode(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {
        **os.environ,
        "OUT": str(out),
        "PYTHON": sys.executable,
        "GYMLAB_CHECK_NO_INSTALL": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = (out / "summary.txt").read_text()
    log = (out / "gpu_check.log").read_text()
    assert done.returncode == 0, summary + log[-4000:]
    lines = summary.splitlines()
    assert "mode: smoke (CPU, tiny budgets)" in lines
    for name in STEPS:
        line = next((s for s in lines if s.startswith(f"{name} ")), None)
        assert line is not None, f"no line for step {name}:\n{summary}"
        assert " rc=0 " in line or " skipped: " in line, line
    suite = next(s for s in lines if s.startswith("suite "))
    assert "failed 0, errors 0" in suite and "passed 0," not in suite, suite
    assert lines[-1].startswith("done: every step passed"), summary
