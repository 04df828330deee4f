import os

# Windows and renderers must never need a screen in tests; MuJoCo renders through EGL here.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("MUJOCO_GL", "egl")

import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Tests run two at a time on two cores (pytest -n 2): one torch thread each avoids oversubscription.
torch.set_num_threads(1)


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m gymlab ARGS` in a subprocess, capturing output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gymlab", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


@pytest.fixture
def cli(tmp_path: Path):
    """Run the CLI from a fresh working folder; returns (CompletedProcess)."""

    def _run(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
        return run_cli(*args, cwd=tmp_path, timeout=timeout, env=env)

    return _run


def pytest_configure(config: pytest.Config) -> None:
    """Under ``pytest -n N`` keep each ``xdist_group`` on one worker (``--dist loadgroup``).

    The contract suite trains each case once in a module-scoped fixture shared by that case's
    tests; xdist's default ``load`` distribution would send them to both workers and train twice.
    Tests without a group are distributed exactly as under ``load``.
    """
    if getattr(config.option, "dist", None) == "load":
        config.option.dist = "loadgroup"
