"""Where the tests run: every test not marked ``cuda`` is pinned to the CPU by tests/conftest.py, in this
process and in the gymlab processes it starts, whether or not the machine (or tests/fake_cuda.py) has CUDA."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import OPTIONAL, missing_optional, optional_of_env

from gymlab import checkpoint
from gymlab.build import resolve_device


def test_device_auto_resolves_to_the_cpu_here():
    assert not torch.cuda.is_available()
    assert resolve_device("auto") == torch.device("cpu")
    assert "cuda" not in checkpoint.rng_state()  # a checkpoint written here resumes anywhere


def test_a_child_process_sees_no_cuda_device():
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    code = "import torch; print(torch.cuda.is_available(), torch.cuda.device_count())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["False", "0"], out.stdout


def test_asking_for_cuda_here_is_the_one_line_error():
    with pytest.raises(Exception, match="no CUDA device is available"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    ("env_id", "name"),
    [
        ("CartPole-v1", None),
        ("InvertedPendulum-v5", "mujoco"),
        ("LunarLander-v3", "box2d"),
        ("PongNoFrameskip-v4", "atari"),
        ("ALE/Breakout-v5", "atari"),
    ],
)
def test_the_optional_package_of_an_env_is_found_from_its_entry_point(env_id, name):
    assert optional_of_env(env_id) == name


def test_a_missing_optional_package_names_its_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "Box2D", None)  # as if not installed
    assert missing_optional("box2d") == 'needs box2d (Box2D not installed): pip install "gymlab[box2d]"'
    assert set(OPTIONAL) == {"mujoco", "box2d", "atari", "ffmpeg", "sweep", "ray"}
