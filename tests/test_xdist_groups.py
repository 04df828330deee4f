"""tests/xdist_groups.py: an ``xdist_group`` stays on one worker under ``pytest -n 2`` (test_contract needs it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

GROUPED = """
import os
from pathlib import Path

import pytest


@pytest.mark.xdist_group("shared")
@pytest.mark.parametrize("i", range(6))
def test_grouped(i):
    Path(f"grouped-{i}").write_text(os.environ["PYTEST_XDIST_WORKER"])


@pytest.mark.parametrize("i", range(6))
def test_free(i):
    Path(f"free-{i}").write_text(os.environ["PYTEST_XDIST_WORKER"])
"""


def test_a_group_runs_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "xdist_groups", "-p", "no:cacheprovider", "-n", "2", "-q", "-x"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    grouped = {(tmp_path / f"grouped-{i}").read_text() for i in range(6)}
    assert len(grouped) == 1, grouped  # pytest 9.2 with xdist 3.8 alone: both workers


SLOW_LAST = """
import os

import pytest


def record(name):
    with open("order.txt", "a") as f:  # one short append per line: whole lines, in start order
        f.write(f"{os.environ['PYTEST_XDIST_WORKER']} {name}\\n")


@pytest.mark.parametrize("i", range(6))
def test_free(i):
    record(f"free-{i}")


@pytest.mark.slow
@pytest.mark.parametrize("i", range(2))
def test_slow(i):
    record(f"slow-{i}")
"""


def test_slow_tests_are_handed_out_first(tmp_path: Path) -> None:
    """Each worker starts with a ``slow`` test, though they come last in the file."""
    (tmp_path / "test_order.py").write_text(SLOW_LAST)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "xdist_groups", "-p", "no:cacheprovider", "-n", "2", "-q", "-x",
         "-W", "ignore::pytest.PytestUnknownMarkWarning"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    first: dict[str, str] = {}
    for line in (tmp_path / "order.txt").read_text().splitlines():
        worker, name = line.split()
        first.setdefault(worker, name)
    assert sorted(first.values()) == ["slow-0", "slow-1"], (tmp_path / "order.txt").read_text()
