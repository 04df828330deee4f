"""The standard Atari preprocessing (Mnih et al., 2015), as Gymnasium wrappers around ale-py.

``wrap_atari(env, train=...)`` turns a ``*NoFrameskip-v4`` game (or any ALE env made with
``frameskip=1``) into what DQN trains on:

* up to 30 no-op actions after each reset (varied starting states);
* frame skip 4, the action repeated and the last two frames max-pooled (sprites flicker);
* 84x84 greyscale, kept uint8;
* the last 4 frames stacked on axis 0: observations (4, 84, 84) uint8;
* for training only: an episode ends at each lost life (without resetting the game), and
  rewards are clipped to their sign. Evaluation plays whole games with the true scores.

``registry.make_env`` puts ``RecordEpisodeStatistics`` innermost, under these wrappers, so the
logged episode return and length are always the whole game's real score.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation, TransformReward


class EpisodicLifeEnv(gym.Wrapper[Any, Any, Any, Any]):
    """End the episode when a life is lost; reset the game only when it is really over.

    Losing a life is a strong, immediate signal of a bad state. Gymnasium's own
    ``terminal_on_life_loss`` resets the whole game on the following reset; here a reset after a
    lost life just continues play with a no-op step, so later lives are still trained on.
    """

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        self.lives = 0
        self.game_over = True

    def _ale_lives(self) -> int:
        return int(self.env.unwrapped.ale.lives())  # type: ignore[attr-defined]

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step; ``terminated`` also when the number of lives went down."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = bool(terminated or truncated)
        lives = self._ale_lives()
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """A real reset after game over (or the first time); otherwise one no-op step."""
        if self.game_over or seed is not None:
            obs, info = self.env.reset(seed=seed, options=options)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset(options=options)
        self.game_over = False
        self.lives = self._ale_lives()
        return obs, info


def clip_reward(env: gym.Env[Any, Any]) -> gym.Env[Any, Any]:
    """Rewards become -1, 0 or +1: one learning rate fits every game's score scale."""
    return TransformReward(env, lambda r: float(np.sign(float(r))))


def wrap_atari(env: gym.Env[Any, Any], *, train: bool) -> gym.Env[Any, Any]:
    """Noop reset, frame skip 4, 84x84 grey, 4 stacked frames; life loss ends and rewards clip when training."""
    env = AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True, scale_obs=False)
    if train:
        env = EpisodicLifeEnv(env)
        env = clip_reward(env)
    # Padding with the first frame (Gymnasium's default) is what the replay memory assumes when it
    # rebuilds stacks from single frames.
    return FrameStackObservation(env, 4, padding_type="reset")
