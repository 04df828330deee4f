"""Checkpoints: atomic writes, safe loading, clear errors, env state capture."""

import copy
import os
import pickle
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import needs_of_env

from gymlab import checkpoint, envstate
from gymlab.errors import GymlabError
from gymlab.nets import load_optimizer


def test_numpy_and_plain_data_round_trip(tmp_path):
    payload = {
        "agent": "tabular_q",
        "q": np.arange(6, dtype=np.float64).reshape(2, 3),
        "flags": np.array([True, False]),
        "scalar": np.int64(7),
        "rng": np.random.default_rng(3).bit_generator.state,
        "nested": ({"t": torch.ones(2)}, [1, 2.5, "x", None]),
    }
    checkpoint.save(tmp_path / "c.pt", payload)
    back = checkpoint.load(tmp_path / "c.pt", agent="tabular_q")
    assert isinstance(back["q"], np.ndarray) and back["q"].dtype == np.float64
    np.testing.assert_array_equal(back["q"], payload["q"])
    np.testing.assert_array_equal(back["flags"], payload["flags"])
    assert back["scalar"] == 7 and isinstance(back["scalar"], np.integer)
    assert back["rng"] == payload["rng"]
    assert torch.equal(back["nested"][0]["t"], torch.ones(2))
    assert back["nested"][1] == [1, 2.5, "x", None]


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save(path, {"agent": "a", "step": 1})

    def crash(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(GymlabError, match=r"cannot write checkpoint .*disk full; the previous checkpoint is kept"):
        checkpoint.save(path, {"agent": "a", "step": 2})
    monkeypatch.undo()
    assert checkpoint.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_truncated_file_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save(path, {"agent": "a", "w": torch.zeros(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GymlabError, match="corrupt or truncated"):
        checkpoint.load(path)


def test_foreign_file_and_wrong_agent(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(GymlabError, match="not a gymlab checkpoint"):
        checkpoint.load(tmp_path / "foreign.pt")
    (tmp_path / "text.pt").write_text("hello")  # not a zip: not a checkpoint at all, rather than a damaged one
    with pytest.raises(GymlabError, match="not a gymlab checkpoint"):
        checkpoint.load(tmp_path / "text.pt")
    checkpoint.save(tmp_path / "q.pt", {"agent": "tabular_q"})
    with pytest.raises(GymlabError, match="written by agent 'tabular_q', not 'dqn'"):
        checkpoint.load(tmp_path / "q.pt", agent="dqn")


class Payload:
    """An object whose unpickling would run code."""

    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_a_checkpoint_carrying_code_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("evil.pt", "wb") as fh:
        torch.save(
            {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "x": Payload()}, fh, pickle_module=pickle
        )
    with pytest.raises(GymlabError, match="executable objects"):
        checkpoint.load(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned.txt").exists()


@pytest.mark.parametrize(
    "env_id",
    [
        pytest.param(e, marks=needs_of_env(e))
        for e in ["CartPole-v1", "FrozenLake-v1", "Taxi-v4", "InvertedPendulum-v5"]
    ],
)
def test_env_state_restores_the_running_episode(env_id):
    def make():
        return gym.wrappers.RecordEpisodeStatistics(gym.make(env_id))

    a = make()
    a.reset(seed=1)
    a.action_space.seed(1)
    for _ in range(5):
        a.step(a.action_space.sample())
    state = checkpoint.decode(checkpoint.encode(envstate.env_state(a)))
    b = make()
    b.reset(seed=99)  # a different episode, overwritten by the restore
    envstate.set_env_state(b, state)
    actions = [a.action_space.sample() for _ in range(30)]
    for action in actions:
        ra, rb = a.step(action), b.step(action)
        np.testing.assert_allclose(ra[0], rb[0])
        assert ra[1:4] == rb[1:4]
        if ra[2] or ra[3]:
            assert ra[4]["episode"]["r"] == rb[4]["episode"]["r"]
            assert ra[4]["episode"]["l"] == rb[4]["episode"]["l"]
            oa, ob = a.reset()[0], b.reset()[0]
            np.testing.assert_allclose(oa, ob)  # the env's generator was restored too


@pytest.mark.needs("box2d")
def test_opaque_simulators_are_not_claimed_restorable():
    from gymlab.registry import make_vec_env

    box2d = make_vec_env("LunarLander-v3", 1)
    assert envstate.vector_env_state(box2d) is None  # resume starts fresh episodes
    assert not envstate.set_vector_env_state(box2d, None)
    assert envstate.vector_env_state(make_vec_env("CartPole-v1", 2)) is not None


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"", "is corrupt or truncated"),
        (b"PK\x03\x04 and then nothing", "is corrupt or truncated"),
        (b'{"step": 100}', r"is not a gymlab checkpoint \(not a torch checkpoint file\)"),
        (pickle.dumps({"step": 1}), r"is not a gymlab checkpoint \(not a torch checkpoint file\)"),
    ],
    ids=["empty", "cut-zip", "json", "bare-pickle"],
)
def test_a_file_that_is_no_torch_checkpoint_is_named_so(tmp_path, content, said):
    # Anything but a zip used to reach torch's legacy unpickler and be called "executable objects".
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(GymlabError, match=said):
        checkpoint.load(path)
    assert checkpoint.step_of(path) is None


def test_a_write_into_a_run_folder_removed_meanwhile_says_so(tmp_path):
    # The folder can go between the run's presence check and the write: that is the same one line.
    with pytest.raises(GymlabError, match=r"run folder .*gone was removed while the run was writing it"):
        checkpoint.save(tmp_path / "gone" / "checkpoints" / "last.pt", {"agent": "tabular_q"})
    assert not (tmp_path / "gone").exists()  # nothing recreated


def _entry_start(data: bytes, name: str) -> int:
    """Where the bytes of the zip entry whose name ends with ``name`` begin in a checkpoint file."""
    import io
    import struct
    import zipfile

    info = next(i for i in zipfile.ZipFile(io.BytesIO(data)).infolist() if i.filename.endswith(name))
    n, extra = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + n + extra


@pytest.mark.parametrize("damage", ["weights-byte-flipped", "layout-byte-flipped", "bytes-appended"])
def test_a_damaged_checkpoint_is_refused_as_corrupt(tmp_path, damage):
    """Bytes changed inside a tensor loaded silently (torch does not check the zip's CRC-32), a changed byte in
    the pickled layout was called 'executable objects', and bytes appended after the zip's end went unseen."""
    path = tmp_path / "last.pt"
    checkpoint.save(path, {"agent": "a", "w": torch.arange(1000, dtype=torch.float32)})
    data = bytearray(path.read_bytes())
    if damage == "bytes-appended":
        data += b"\x00 another write's tail"
    else:
        at = _entry_start(bytes(data), "data/0" if damage == "weights-byte-flipped" else "data.pkl") + 40
        data[at] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(GymlabError, match=r"checkpoint .*last\.pt is corrupt") as info:
        checkpoint.load(path)
    assert "\n" not in str(info.value) and "use another checkpoint" in str(info.value)


def test_a_file_that_cannot_be_read_is_one_line(tmp_path):
    """/proc/self/mem is a regular file that every read fails on: an OSError traceback before."""
    with pytest.raises(GymlabError, match=r"cannot read checkpoint /proc/self/mem: ") as info:
        checkpoint.load(Path("/proc/self/mem"))
    assert "\n" not in str(info.value)


def test_an_optimizer_state_from_an_older_torch_loads_and_a_damaged_one_is_refused():
    """Flags a newer torch added (decoupled_weight_decay, ...) are filled in by torch: a file without them loads;
    a missing learning rate or a moment of another shape would fail only inside the next step, so it is refused."""
    params = [torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(2))]
    written = torch.optim.Adam(params, lr=1e-3)
    (params[0].sum() + params[1].sum()).backward()
    written.step()
    state = written.state_dict()
    fresh = torch.optim.Adam(params, lr=1e-3)
    older = copy.deepcopy(state)
    for group in older["param_groups"]:
        for flag in ("decoupled_weight_decay", "differentiable", "fused", "foreach"):
            group.pop(flag, None)
    load_optimizer(fresh, older)
    assert fresh.param_groups[0]["decoupled_weight_decay"] is False
    no_lr = copy.deepcopy(state)
    del no_lr["param_groups"][0]["lr"]
    with pytest.raises(ValueError, match="setting 'lr' missing"):
        load_optimizer(fresh, no_lr)
    reshaped = copy.deepcopy(state)
    reshaped["state"][0]["exp_avg"] = torch.zeros(6)
    with pytest.raises(ValueError, match="'exp_avg' of parameter 0 as \\(6,\\), not \\(3, 2\\)"):
        load_optimizer(fresh, reshaped)
