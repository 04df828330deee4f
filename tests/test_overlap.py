"""The overlap run key: the envs step while the agent learns.

With ``overlap: on`` the loop hands the actions to the envs, runs ``update`` while they step, and
only then observes the step. What that changes, and what it must not:
- an update that runs while step t is in flight learns from a memory without step t (it sees
  step t at the next update); acting still waits for the observation it acts on;
- the transitions the agent observes, and the step counter ``update`` is given, are unchanged;
- a run is deterministic per seed, and a stopped and resumed run ends where an uninterrupted one does;
- ``overlap: off`` keeps the serial order exactly.
"""

from typing import ClassVar

import gymnasium as gym
import numpy as np
import pytest
import torch
from clihelp import scalars, tensors
from conftest import ctrl_c_after_update, gymlab_inprocess

from gymlab.agent import Transition
from gymlab.checkpoint import Checkpoint
from gymlab.config import resolve, validate
from gymlab.envfault import EnvProblem
from gymlab.envguard import VectorGuard
from gymlab.loop import train
from gymlab.registry import make_vec_env


class Line(gym.Env):
    """Position 0..4: action 1 moves right, 0 stays; reaching 4 terminates, 6 steps truncate."""

    observation_space = gym.spaces.Discrete(5)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos, self.t = 0, 0
        return self.pos, {}

    def step(self, action):
        self.pos += int(action)
        self.t += 1
        return self.pos, float(self.pos), self.pos == 4, self.t == 6 and self.pos != 4, {}


class Counting:
    """Moves right on odd observations; records, at each update, how many steps it had observed."""

    name: ClassVar[str] = "counting"
    summary: ClassVar[str] = "test agent"
    spaces: ClassVar[str] = "any"
    Config: ClassVar[type] = dict
    seen: ClassVar[list[Transition]] = []
    updates: ClassVar[list[tuple[int, int]]] = []

    @classmethod
    def check_spaces(cls, observation_space, action_space):
        return None

    def __init__(self, config, ctx) -> None:
        self.observed = 0

    def act(self, obs, explore):
        return (np.asarray(obs) % 2 == 0).astype(np.int64)

    def observe(self, transition):
        self.observed += 1
        Counting.seen.append(transition)

    def update(self, step):
        Counting.updates.append((step, self.observed))
        return {"observed": float(self.observed)}

    def state_dict(self):
        return {"policy": {}, "training": {"observed": self.observed}}

    def load_state_dict(self, state):
        self.observed = state["training"]["observed"]


def counting_run(tmp_path, overlap, num_envs):
    Counting.seen.clear()
    Counting.updates.clear()
    from pydantic import BaseModel, ConfigDict

    class Empty(BaseModel):
        model_config = ConfigDict(extra="forbid")

    Counting.Config = Empty
    cfg = validate(
        {
            "agent": f"{__name__}:Counting",
            "env": f"{__name__}:Line",
            "steps": 10 * num_envs,
            "num_envs": num_envs,
            "eval_every": 0,
            "overlap": overlap,
        },
        Counting,
    )
    result = train(cfg, tmp_path / str(overlap))
    seen = [(t.obs.tolist(), t.action.tolist(), t.reward.tolist(), t.next_obs.tolist()) for t in Counting.seen]
    return result, seen, list(Counting.updates)


@pytest.mark.parametrize("num_envs", [1, 3])
def test_with_the_overlap_an_update_learns_from_a_memory_without_the_step_in_flight(tmp_path, num_envs):
    off, seen_off, updates_off = counting_run(tmp_path, False, num_envs)
    on, seen_on, updates_on = counting_run(tmp_path, True, num_envs)
    steps = [num_envs * k for k in range(1, 11)]
    # Serial: update(t) comes after step t is observed. Overlapped: while step t is in flight,
    # so the memory then holds the steps before it.
    assert updates_off == [(s, k) for k, s in enumerate(steps, start=1)]
    assert updates_on == [(s, k) for k, s in enumerate(steps, start=0)]
    # The agent observes the same transitions and the run counts the same episodes.
    assert seen_on == seen_off
    assert (on.step, on.episodes) == (off.step, off.episodes) == (10 * num_envs, off.episodes)
    assert off.episodes > 0


def test_auto_overlaps_only_where_the_vector_env_steps_by_itself(tmp_path):
    envs = make_vec_env("CartPole-v1", 2, train=True)
    try:
        assert not VectorGuard(envs).native_async
    finally:
        envs.close()
    envs = make_vec_env("CartPole-v1", 2, train=True, vectorization="async")
    try:
        assert VectorGuard(envs).native_async
    finally:
        envs.close()


def test_send_and_recv_return_what_step_would(tmp_path):
    def stepped(split):
        envs = make_vec_env("CartPole-v1", 3, train=True)
        guard = VectorGuard(envs)
        guard.reset(seed=7)
        out = []
        try:
            for k in range(40):
                actions = np.array([k % 2, 1, 0])
                if split:
                    guard.send(actions)
                    out.append(guard.recv())
                else:
                    out.append(guard.step(actions))
        finally:
            guard.close()
            envs.close()
        return out

    for a, b in zip(stepped(False), stepped(True), strict=True):
        for x, y in zip(a[:4], b[:4], strict=True):
            np.testing.assert_array_equal(x, y)
        assert a[4].keys() == b[4].keys()


class Breaks(Line):
    def step(self, action):
        if getattr(self, "t", 0) == 3:
            raise RuntimeError("the simulator broke")
        return super().step(action)


def test_an_env_that_raises_while_in_flight_is_the_same_one_line_problem():
    envs = make_vec_env(f"{__name__}:Breaks", 2, train=True)
    guard = VectorGuard(envs)
    guard.reset(seed=0)
    try:
        for _ in range(3):
            guard.send(np.zeros(2, dtype=np.int64))
            guard.recv()
        guard.send(np.zeros(2, dtype=np.int64))
        with pytest.raises(EnvProblem, match="the simulator broke"):
            guard.recv()
    finally:
        guard.close()
        envs.close()


def test_closing_with_a_step_in_flight_waits_for_it():
    envs = make_vec_env("CartPole-v1", 2, train=True)
    guard = VectorGuard(envs)
    guard.reset(seed=0)
    guard.send(np.zeros(2, dtype=np.int64))
    guard.close()  # must not leave the worker thread stepping envs that close next
    envs.close()
    assert guard._thread is None


def preset(agent, env, *overrides):
    common = ["num_envs=2", "eval_every=1500", "eval_episodes=3", "log_every=250", "overlap=true", "threads=1"]
    return lambda: resolve(agent, env, None, [*common, *overrides], seed=3)


def seqgan_tiny():
    from test_seqgan import tiny_config  # SeqGAN's tiny shapes: 48 env steps per adversarial epoch

    return tiny_config(4, checkpoint_every=48, overlap=True)


CONFIGS = {  # each agent on a small budget, with its learning in update() and its state in the checkpoint
    "tabular_q": preset("tabular_q", "Taxi-v4", "steps=6000", "checkpoint_every=1500"),
    "dqn": preset("dqn", "CartPole-v1", "steps=3000", "checkpoint_every=750", "learning_starts=500"),
    "reinforce": preset("reinforce", "CartPole-v1", "steps=3000", "checkpoint_every=750"),
    "seqgan": seqgan_tiny,
}


def final_state(run_dir):
    return Checkpoint.read(run_dir / "checkpoints" / "last.pt").agent_state


@pytest.mark.parametrize("agent", sorted(CONFIGS))
def test_overlapped_runs_are_deterministic_and_resume_exactly(tmp_path, agent):
    cfg = CONFIGS[agent]()
    assert cfg.run.overlap is True
    steps = cfg.run.steps
    whole, again, parts = tmp_path / "whole", tmp_path / "again", tmp_path / "parts"
    train(cfg, whole)
    train(cfg, again)
    first = train(cfg, parts, stop_at=steps // 2)
    assert first.interrupted and first.step == steps // 2
    train(cfg, parts, resume=Checkpoint.read(parts / "checkpoints" / "last.pt"))

    for other in (again, parts):
        for a, b in zip(tensors(final_state(whole)), tensors(final_state(other)), strict=True):
            assert torch.equal(a, b)
        assert scalars(other) == scalars(whole)


def test_overlap_on_learns_differently_from_off_and_off_is_the_serial_default_for_sync_envs(tmp_path):
    def q(overlap):
        overrides = ["steps=3000", "eval_every=0", f"overlap={overlap}"]  # YAML: on/off are true/false
        train(resolve("tabular_q", "Taxi-v4", None, overrides, seed=1), tmp_path / overlap)
        return final_state(tmp_path / overlap)["policy"]["q"]

    auto, off, on = q("auto"), q("false"), q("true")
    np.testing.assert_array_equal(auto, off)  # sync envs: auto is off
    assert not np.array_equal(on, off)  # learning one step later changes the run, deterministically


@pytest.mark.parametrize("overlap", ["true", "false"])
def test_ctrl_c_while_a_step_is_in_flight_stops_after_it_and_resumes_exactly(tmp_path, overlap):
    """The interrupt lands inside update(), with the overlap while the envs step: the run finishes
    that step, saves, exits 130, and the resumed run ends where an uninterrupted one does."""
    args = ["train", "dqn", "CartPole-v1", "--steps", "320", "eval_every=160", "eval_episodes=1", "checkpoint_every=64"]
    args += [
        "net_arch=[8]",
        "learning_starts=16",
        "train_freq=4",
        "gradient_steps=8",
        "batch_size=8",
        "num_envs=2",
        f"overlap={overlap}",
    ]
    whole = gymlab_inprocess(*args, "--run-dir", tmp_path / "whole")
    assert whole.code == 0, whole.ok()
    with ctrl_c_after_update("dqn", 200):
        stopped = gymlab_inprocess(*args, "--run-dir", tmp_path / "parts")
    assert stopped.code == 130, stopped.ok()
    assert (
        Checkpoint.read(tmp_path / "parts" / "checkpoints" / "last.pt").loop.step == 200
    )  # update(200) ran while the step to 200 was in flight: it finished
    resumed = gymlab_inprocess("train", "--resume", tmp_path / "parts")
    assert resumed.code == 0, resumed.ok()
    for a, b in zip(tensors(final_state(tmp_path / "whole")), tensors(final_state(tmp_path / "parts")), strict=True):
        assert torch.equal(a, b)
    assert scalars(tmp_path / "parts") == scalars(tmp_path / "whole")
