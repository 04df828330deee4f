"""Where the tests run: every test not marked ``cuda`` is pinned to the CPU by tests/conftest.py, in this
process and in the gymlab processes it starts, whether or not the machine (or tests/fake_cuda.py) has CUDA."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import OPTIONAL, ctrl_c_after_update, gymlab_inprocess, missing_optional, optional_of_env

from gymlab import envstate
from gymlab.build import resolve_device
from gymlab.checkpoint import Checkpoint
from gymlab.errors import GymlabError


def tensors(state: object) -> list[torch.Tensor]:
    """Every tensor in a nested state, in a fixed order."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for key in sorted(state, key=str) for t in tensors(state[key])]
    if isinstance(state, (list, tuple)):
        return [t for item in state for t in tensors(item)]
    return []


def test_device_auto_resolves_to_the_cpu_here():
    assert not torch.cuda.is_available()
    assert resolve_device("auto") == torch.device("cpu")
    assert "cuda" not in envstate.rng_state()  # a checkpoint written here resumes anywhere


def test_a_child_process_sees_no_cuda_device():
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    code = "import torch; print(torch.cuda.is_available(), torch.cuda.device_count())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["False", "0"], out.stdout


def test_asking_for_cuda_here_is_the_one_line_error():
    with pytest.raises(Exception, match="no CUDA device is available"):
        resolve_device("cuda")
    with pytest.raises(Exception, match="--device cuda:1 was asked for but no CUDA device"):
        resolve_device("cuda:1")


def test_a_cuda_index_past_the_machines_devices_is_the_one_line_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a one-GPU machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(GymlabError, match=r"--device cuda:1 .* has 1 CUDA device \(cuda:0\); use one of those"):
        resolve_device("cuda:1")


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


@pytest.mark.cuda
def test_a_deterministic_cuda_resume_repeats_the_uninterrupted_run_bit_for_bit(tmp_path):
    """With ``deterministic: true`` a DQN run on CUDA, interrupted and resumed, ends with the same weights."""
    args = ["train", "dqn", "CartPole-v1", "--steps", "640", "--device", "cuda", "deterministic=true"]
    args += ["eval_every=320", "eval_episodes=1", "checkpoint_every=64", "net_arch=[32]", "learning_starts=32"]
    args += ["train_freq=4", "batch_size=16"]
    whole = gymlab_inprocess(*args, "--run-dir", tmp_path / "whole")
    assert whole.code == 0, whole.ok()
    with ctrl_c_after_update("dqn", 400):
        stopped = gymlab_inprocess(*args, "--run-dir", tmp_path / "parts")
    assert stopped.code == 130, stopped.ok()
    resumed = gymlab_inprocess("train", "--resume", tmp_path / "parts")
    assert resumed.code == 0, resumed.ok()
    flat_a = tensors(Checkpoint.read(tmp_path / "whole" / "checkpoints" / "last.pt").agent_state)
    flat_b = tensors(Checkpoint.read(tmp_path / "parts" / "checkpoints" / "last.pt").agent_state)
    assert flat_a and len(flat_a) == len(flat_b)
    assert all(torch.equal(x, y) for x, y in zip(flat_a, flat_b, strict=True))
