import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymlab.envs.atari import AtariVectorEnv, EpisodicLifeEnv, clip_reward, wrap_atari

from gymlab import registry
from gymlab.checkpoint import Checkpoint
from gymlab.config import resolve
from gymlab.errors import GymlabError
from gymlab.loop import train
from gymlab.vector import LeanSyncVectorEnv

pytestmark = pytest.mark.needs("atari")


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
    assert env.unwrapped.t == 2  # continued from the same frame: no step taken, no reset
    env.step(0)
    _, r, terminated, _, _ = env.step(0)
    assert r == 1.0 and terminated


# --- ALE's native vector env against the Python wrappers ----------------------------------------


class Noops(gym.Wrapper):
    """Makes AtariPreprocessing's next draw of no-op frames (from the game's np_random) come out as ``count``.

    Goes under FireResetEnv: the draw follows the reset and its fire frame, as in ALE's own order.
    """

    def __init__(self, env, count):
        super().__init__(env)
        self.count = count

    def reset(self, **kwargs):
        out = self.env.reset(**kwargs)
        count = self.count

        class Fixed:
            def integers(self, low, high):
                assert 0 <= count < high
                return count

        self.env.unwrapped._np_random = Fixed()  # type: ignore[assignment]
        return out


@pytest.mark.parametrize("train_env", [True, False], ids=["train", "eval"])
def test_native_vector_env_matches_the_python_wrappers(train_env):
    """Same actions, same no-op starts: same observations, rewards, ends and whole-game scores, step for step.

    ALE draws each game's no-op frames from its own generator, so the Python copies are told the
    count the native reset reports (frame_number = 1 fire frame + the no-ops). Breakout: it needs
    FIRE, loses lives and so covers fire reset, life-loss ends (training) and whole games (both).
    Each copy is followed through its first game.
    """
    n, seed = 2, 7
    native = AtariVectorEnv("BreakoutNoFrameskip-v4", n, train=train_env)
    obs, info = native.reset(seed=seed)
    noops = info["frame_number"] - 1
    assert (noops >= 0).all() and (noops <= 30).all()
    py = [
        wrap_atari(
            Noops(gym.wrappers.RecordEpisodeStatistics(gym.make("BreakoutNoFrameskip-v4")), int(noops[i])),
            train=train_env,
        )
        for i in range(n)
    ]
    for k, env in enumerate(py):
        p_obs, _ = env.reset(seed=seed + k)
        assert np.array_equal(obs[k], p_obs)
    rng = np.random.default_rng(0)
    playing = np.ones(n, dtype=bool)
    life_ends, games = 0, 0
    for _ in range(3_000):
        actions = rng.integers(0, 4, n)
        obs, reward, terminated, truncated, infos = native.step(actions)
        for i in np.flatnonzero(playing):
            p_obs, p_reward, p_term, p_trunc, p_info = py[i].step(actions[i])
            assert (reward[i], terminated[i], truncated[i]) == (p_reward, p_term, p_trunc)
            if not (p_term or p_trunc):
                assert np.array_equal(obs[i], p_obs)
                continue
            assert infos["_final_obs"][i] and np.array_equal(infos["final_obs"][i], p_obs)
            if "episode" in p_info:  # the game is over: the true score, whatever the agent was told
                final = infos["final_info"]
                assert final["_episode"][i]
                assert final["episode"]["r"][i] == p_info["episode"]["r"]
                assert final["episode"]["l"][i] == p_info["episode"]["l"]
                playing[i] = False
                games += 1
            else:  # a lost life: the next episode starts from the same frame
                life_ends += 1
                assert np.array_equal(obs[i], py[i].reset()[0])
                assert all(np.array_equal(obs[i, k], obs[i, 3]) for k in range(3))
        if not playing.any():
            break
    assert games == n
    assert life_ends == (4 * n if train_env else 0)  # Breakout: 5 lives, the last one ends the game
    native.close()


def test_native_episodes_are_true_stacks_padded_with_their_first_frame():
    """What the replay memory relies on to store one frame per step, across resets, lost lives and game ends."""
    env = AtariVectorEnv("BreakoutNoFrameskip-v4", 3, train=True)
    obs, _ = env.reset(seed=1)
    rng = np.random.default_rng(1)
    starts = np.ones(3, dtype=bool)
    ends = 0
    for _ in range(400):
        assert all(np.array_equal(obs[i, k], obs[i, 3]) for i in np.flatnonzero(starts) for k in range(3))
        nxt, _, terminated, truncated, infos = env.step(rng.integers(0, 4, 3))
        real = nxt.copy()
        if "final_obs" in infos:
            real[infos["_final_obs"]] = infos["final_obs"][infos["_final_obs"]]
            ends += int(infos["_final_obs"].sum())
        assert np.array_equal(real[:, :3], obs[:, 1:])
        starts = terminated | truncated
        obs = nxt
    assert ends > 0
    env.close()


def test_native_env_takes_any_gymnasium_seed_as_its_evaluation_cap_reset_draws_them():
    """An evaluation cut at ``eval_max_steps`` resets with a 32-bit SeedSequence draw; ALE takes C ints."""
    env = AtariVectorEnv("PongNoFrameskip-v4", 2, train=False)
    try:
        big, _ = env.reset(seed=3_000_000_000)  # over 2**31: ALE's reset refused it with a TypeError
        small, _ = env.reset(seed=3_000_000_000 - 2**31)
        np.testing.assert_array_equal(big, small)  # the same games: seeds are taken modulo 2**31
        env.reset(seed=[2**40, None], options=None)
    finally:
        env.close()


def test_atari_presets_train_on_the_native_env_and_sync_selects_the_wrappers():
    native = registry.make_vec_env("PongNoFrameskip-v4", 2, {}, ["atari"])
    assert isinstance(native, AtariVectorEnv) and native.train
    assert native.single_observation_space == gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    native.close()
    reference = registry.make_vec_env("PongNoFrameskip-v4", 2, {}, ["atari"], vectorization="sync")
    assert isinstance(reference, LeanSyncVectorEnv)
    reference.close()
    # env_kwargs the native env does not take: auto falls back to the wrappers, native says why.
    fallback = registry.make_vec_env("PongNoFrameskip-v4", 1, {"mode": 0}, ["atari"])
    assert isinstance(fallback, LeanSyncVectorEnv)
    fallback.close()
    with pytest.raises(GymlabError, match=r"vectorization=native cannot run it: env_kwargs mode are not"):
        registry.make_vec_env("PongNoFrameskip-v4", 1, {"mode": 0}, ["atari"], vectorization="native")
    with pytest.raises(GymlabError, match=r"skips frames itself"):
        registry.make_vec_env("ALE/Pong-v5", 1, {}, ["atari"], vectorization="native")
    with pytest.raises(GymlabError, match=r"vectorization=native is ALE's vector env for wrappers: \[atari\]"):
        registry.make_vec_env("CartPole-v1", 1, {}, [], vectorization="native")


def test_a_missing_native_vector_env_names_the_atari_extra(monkeypatch):
    registry.resolve_env("PongNoFrameskip-v4")  # ALE's ids registered, as an old ale-py registers them too
    monkeypatch.setitem(sys.modules, "ale_py.vector_env", None)  # as with an ale-py too old to have it
    with pytest.raises(GymlabError) as info:
        registry.make_vec_env("PongNoFrameskip-v4", 1, {}, ["atari"], vectorization="native")
    assert 'pip install "gymlab[atari]"' in str(info.value) and "\n" not in str(info.value)
    assert isinstance(registry.make_vec_env("PongNoFrameskip-v4", 1, {}, ["atari"]), LeanSyncVectorEnv)


def test_dqn_learns_from_several_native_envs_into_one_frame_per_step_memory(tmp_path):
    """Breakout's lost lives restart episodes mid-game: the memory's stack check passes, and stores frames once."""
    torch.set_num_threads(1)
    cfg = resolve(
        "dqn",
        "BreakoutNoFrameskip-v4",
        None,
        [
            "num_envs=4",
            "steps=320",
            "device=cpu",
            "eval_every=0",
            "eval_episodes=1",
            "checkpoint_every=0",
            "log_every=160",
            "hparams.buffer_size=512",
            "hparams.learning_starts=64",
            "hparams.batch_size=4",
            "hparams.train_freq=64",
            "hparams.target_update_interval=128",
            "hparams.exploration_final_eps=1.0",  # random play: the network runs only to learn (time)
            # The final greedy game: an untrained agent may never press FIRE to serve again after a
            # lost life, and would play to ALE's limit (108,000 frames); 400 frames here.
            "env_kwargs.max_num_frames_per_episode=400",
        ],
    )
    assert cfg.run.vectorization == "auto" and cfg.run.wrappers == ["atari"]
    result = train(cfg, tmp_path)
    assert result.step == 320 and result.episodes == 0  # no whole game ends in 80 random steps per env
    assert result.checkpoint is not None
    state = Checkpoint.read(result.checkpoint).agent_state["training"]["replay"]
    ends = state["terminated"].sum(axis=1)  # (4,) lost lives, each starting a new training episode
    assert (ends > 0).all()
    # One 84x84 frame per step, plus each episode's first: not 4 stacked frames per observation, nor a next one.
    assert state["frames"].shape[0] == 4 and state["frames"].shape[2:] == (84, 84)
    assert ((state["written"] >= 81) & (state["written"] <= 81 + ends)).all()


def test_native_resets_take_per_copy_seeds_and_masks():
    env = AtariVectorEnv("PongNoFrameskip-v4", 2, train=False)
    seeded, info = env.reset(seed=[3, None])  # None: that copy draws its own no-op start
    again, info_again = env.reset(seed=3)  # an int seeds copy i with 3 + i
    assert np.array_equal(seeded[0], again[0]) and info["frame_number"][0] == info_again["frame_number"][0]
    moved, *_ = env.step(np.array([2, 2]))
    kept, _ = env.reset(options={"reset_mask": np.array([False, True])})
    assert np.array_equal(kept[0], moved[0])  # the masked-out copy plays on
    assert all(np.array_equal(kept[1, k], kept[1, 3]) for k in range(3))  # the reset one starts a padded stack
    env.close()
