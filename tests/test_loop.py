"""The rollout loop: same-step autoreset, true final observations, termination vs truncation,
episode statistics, evaluation, and user-supplied agents and envs given as module:Class."""

from typing import ClassVar

import gymnasium as gym
import numpy as np
from pydantic import BaseModel, ConfigDict

from gymlab import registry
from gymlab.agent import Context, Transition
from gymlab.config import validate
from gymlab.loop import evaluate, train


class Corridor(gym.Env):
    """Position 0..3; action 1 moves right, 0 stays. Reaching 3 terminates; 4 steps truncate."""

    observation_space = gym.spaces.Discrete(4)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos, self.t = 0, 0
        return self.pos, {}

    def step(self, action):
        self.pos += int(action)
        self.t += 1
        terminated = self.pos == 3
        truncated = self.t == 4 and not terminated
        return self.pos, float(self.pos), terminated, truncated, {}


class ScriptedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    script: list[int] = [1, 1, 1, 0, 0, 0, 1]


class Scripted:
    """Plays a fixed action script per env copy and records what the loop hands it."""

    name: ClassVar[str] = "scripted"
    summary: ClassVar[str] = "test agent"
    spaces: ClassVar[str] = "any"
    Config: ClassVar[type[BaseModel]] = ScriptedConfig
    seen: ClassVar[list[Transition]] = []
    updates: ClassVar[list[int]] = []

    @classmethod
    def check_spaces(cls, observation_space, action_space):
        return None

    def __init__(self, config: ScriptedConfig, ctx: Context) -> None:
        self.script, self.i = config.script, 0

    def act(self, obs, explore):
        action = self.script[self.i % len(self.script)] if explore else 1
        return np.full(len(obs), action)

    def observe(self, transition):
        self.i += 1
        Scripted.seen.append(transition)

    def update(self, step):
        Scripted.updates.append(step)
        return {"calls": 1.0}

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


def run(tmp_path, steps, num_envs=1):
    Scripted.seen.clear()
    Scripted.updates.clear()
    cfg = validate(
        {
            "agent": f"{__name__}:Scripted",
            "env": f"{__name__}:Corridor",
            "steps": steps,
            "num_envs": num_envs,
            "eval_every": 0,
            "eval_episodes": 3,
            "log_every": 2,
        },
        ScriptedConfig,
    )
    return train(cfg, tmp_path)


def test_final_observation_and_termination_vs_truncation(tmp_path):
    result = run(tmp_path, steps=7)
    seen = [
        (int(t.obs[0]), int(t.action[0]), int(t.next_obs[0]), bool(t.terminated[0]), bool(t.truncated[0]))
        for t in Scripted.seen
    ]
    assert seen == [
        (0, 1, 1, False, False),
        (1, 1, 2, False, False),
        (2, 1, 3, True, False),  # next_obs is the terminal state, not the reset observation
        (0, 0, 0, False, False),  # the next transition starts from the new episode's first observation
        (0, 0, 0, False, False),
        (0, 0, 0, False, False),
        (0, 1, 1, False, True),  # cut by the time limit: truncated, not terminated, true final obs
    ]
    assert Scripted.updates == list(range(1, 8))  # update is called after every step
    assert result.episodes == 2
    assert result.last_eval == 6.0  # greedy policy: 1 + 2 + 3, over whole episodes


def test_several_copies_step_together(tmp_path):
    result = run(tmp_path, steps=14, num_envs=2)
    assert len(Scripted.seen) == 7 and Scripted.seen[0].obs.shape == (2,)
    assert Scripted.updates == list(range(2, 15, 2))  # the step counter counts every copy's steps
    assert result.step == 14 and result.episodes == 4


def test_evaluation_splits_episodes_over_copies():
    envs = registry.make_vec_env(f"{__name__}:Corridor", 2, train=False)
    agent = Scripted(ScriptedConfig(), None)
    returns, lengths = evaluate(agent, envs, episodes=3, seed=0)
    assert returns.tolist() == [6.0, 6.0, 6.0] and lengths.tolist() == [3, 3, 3]


def test_same_seed_same_result_different_seed_different(tmp_path):
    from gymlab import checkpoint
    from gymlab.config import resolve

    def q(folder, seed):
        train(resolve("tabular_q", "FrozenLake-v1", None, ["steps=5000", "eval_every=0"], seed=seed), folder)
        return checkpoint.load(folder / "checkpoints" / "last.pt")["agent_state"]["q"]

    a, b, c = q(tmp_path / "a", 1), q(tmp_path / "b", 1), q(tmp_path / "c", 2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


class Slider(gym.Env):
    """A Box(-1, 1) action env that remembers what it received; episodes last 2 steps."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    received: ClassVar[list[float]] = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        Slider.received.append(float(action[0]))
        self.t += 1
        return np.zeros(1, np.float32), 0.0, self.t == 2, False, {}


class Pusher(Scripted):
    """Always asks for 5.0, far outside the bounds."""

    def act(self, obs, explore):
        return np.full((len(obs), 1), 5.0, np.float32)


def test_box_actions_reach_the_env_clipped_and_the_agent_sees_its_own(tmp_path):
    Scripted.seen.clear()
    Slider.received.clear()
    cfg = validate(
        {"agent": f"{__name__}:Pusher", "env": f"{__name__}:Slider", "steps": 4, "eval_every": 0, "eval_episodes": 1},
        ScriptedConfig,
    )
    train(cfg, tmp_path)
    assert Slider.received == [1.0] * 6  # 4 training steps, then a 2-step evaluation episode
    assert [float(t.action[0, 0]) for t in Scripted.seen] == [5.0] * 4
