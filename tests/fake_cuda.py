"""A pytest plugin that makes torch report a CUDA device, to check that every non-cuda test is pinned to the CPU.

    .venv/bin/python -m pytest -p tests.fake_cuda -m "not slow" tests/test_dqn.py tests/test_resume.py

From the start of the session ``torch.cuda.is_available()`` returns True and ``torch.cuda.device_count()``
returns 1 in this process, as on a GPU machine: ``device: auto`` (``gymlab.build.resolve_device``) would pick
CUDA and ``gymlab.envstate.rng_state`` would ask for CUDA's generator states, and both fail on a torch
without CUDA. The gymlab processes the tests start get the same fake through a ``sitecustomize`` module put
first on PYTHONPATH which, like a real CUDA runtime, shows no device when CUDA_VISIBLE_DEVICES is empty.

So a test passes under this plugin only if tests/conftest.py pinned it, and the processes it starts, to the
CPU. Tests marked ``cuda`` skip under it: there is no real device behind the fake.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

#: Imported first by every Python child of the test session (through PYTHONPATH).
SITECUSTOMIZE = '''\
"""tests/fake_cuda.py: this process sees a CUDA device unless CUDA_VISIBLE_DEVICES is empty."""
import os

if os.environ.get("CUDA_VISIBLE_DEVICES") != "":
    import torch

    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 1
'''

_saved: dict[str, Any] = {}


def active(config: pytest.Config) -> bool:
    """Whether this plugin was loaded for the session (``-p tests.fake_cuda``)."""
    return "fake_cuda" in _saved and _saved["fake_cuda"] is config


def pytest_configure(config: pytest.Config) -> None:
    site = Path(tempfile.mkdtemp(prefix="gymlab-fake-cuda-"))
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    is_available: Callable[[], bool] = torch.cuda.is_available
    device_count: Callable[[], int] = torch.cuda.device_count
    _saved.update(
        fake_cuda=config,
        is_available=is_available,
        device_count=device_count,
        pythonpath=os.environ.get("PYTHONPATH"),
        site=site,
    )
    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 1
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), _saved["pythonpath"]) if p)


def pytest_unconfigure(config: pytest.Config) -> None:
    torch.cuda.is_available = _saved["is_available"]
    torch.cuda.device_count = _saved["device_count"]
    if _saved["pythonpath"] is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = _saved["pythonpath"]
    (_saved["site"] / "sitecustomize.py").unlink()
    _saved["site"].rmdir()
    _saved.clear()


def pytest_report_header(config: pytest.Config) -> str:
    return "fake CUDA (tests/fake_cuda.py): torch.cuda.is_available() is True; only CPU-pinned tests can pass"
