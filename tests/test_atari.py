import gymnasium as gym
import numpy as np
import pytest
from gymlab.envs.atari import EpisodicLifeEnv, clip_reward

from gymlab import registry

pytest.importorskip("ale_py")
pytest.importorskip("cv2")


def play_until_done(env, seed=0, limit=5_000):
    env.reset(seed=seed)
    env.action_space.seed(seed)
    for _ in range(limit):
        obs, _, terminated, truncated, info = env.step(env.action_space.sample())
        if terminated or truncated:
            return obs, info
    raise AssertionError("no episode end")


@pytest.mark.parametrize("train", [True, False])
def test_observations_are_four_stacked_84x84_grey_uint8_frames(train):
    env = registry.make_env("PongNoFrameskip-v4", wrappers=["atari"], train=train)
    assert env.observation_space == gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    assert all(np.array_equal(obs[i], obs[3]) for i in range(3))  # padded with the first frame
    nxt, *_ = env.step(0)
    assert np.array_equal(nxt[:3], obs[1:])  # a true stack: what the replay memory relies on
    env.close()


def test_life_loss_ends_episodes_only_when_training():
    train_env = registry.make_env("BreakoutNoFrameskip-v4", wrappers=["atari"], train=True)
    ale = train_env.unwrapped.ale  # type: ignore[attr-defined]
    _, info = play_until_done(train_env)
    assert ale.lives() == 4 and "episode" not in info  # one life lost; the game goes on
    train_env.reset()
    assert ale.lives() == 4  # reset after a life loss continues the same game
    train_env.close()

    eval_env = registry.make_env("BreakoutNoFrameskip-v4", wrappers=["atari"], train=False)
    _, info = play_until_done(eval_env, limit=20_000)
    ale = eval_env.unwrapped.ale  # type: ignore[attr-defined]
    assert ale.lives() == 0 and "episode" in info  # whole game, real score logged
    eval_env.close()


class Scripted(gym.Env):
    """Rewards from a script and a lives counter, standing in for an ALE game."""

    observation_space = gym.spaces.Box(0, 1, (1,))
    action_space = gym.spaces.Discrete(2)

    def __init__(self):
        self.rewards = [5.0, -3.0, 0.0, 2.0]
        self.lives_left = [3, 2, 2, 0]
        self.t = 0
        self.ale = self

    def lives(self):
        return self.lives_left[min(self.t, 3) - 1] if self.t else 3

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        r = self.rewards[self.t]
        self.t += 1
        return np.zeros(1, np.float32), r, self.t == 4, False, {}


def test_rewards_are_clipped_and_lives_end_episodes():
    env = clip_reward(EpisodicLifeEnv(Scripted()))
    env.reset(seed=0)
    steps = [env.step(0) for _ in range(2)]
    assert [s[1] for s in steps] == [1.0, -1.0]
    assert [s[2] for s in steps] == [False, True]  # the second step lost a life
    env.reset()
    assert env.unwrapped.t == 3  # continued with a no-op step, not reset
    _, r, terminated, _, _ = env.step(0)
    assert r == 1.0 and terminated
