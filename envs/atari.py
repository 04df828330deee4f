"""The standard Atari preprocessing (Mnih et al., 2015), two ways: ALE's native vector env, and Gymnasium wrappers.

What DQN trains on, from a ``*NoFrameskip-v4`` game (any ALE id made with ``frameskip=1``):

* at each new game, FIRE for one frame on games whose action set has it (Breakout only starts
  the ball then), then up to 30 no-op frames (varied starting states);
* frame skip 4, the action repeated and the last two frames max-pooled (sprites flicker);
* 84x84 greyscale, kept uint8;
* the last 4 frames stacked on axis 0, an episode's stack padded with its first frame:
  observations (4, 84, 84) uint8;
* for training only: an episode ends at each lost life (the game goes on, from the very same
  frame: the next episode's stack is that frame repeated), and rewards are clipped to their sign.
  Evaluation plays whole games with the true scores.

Scoring. Both paths log *whole games with true scores*, whatever the agent learns from: the loop's
episode statistics (``infos["final_info"]["episode"]``) are kept below the life-loss ends and the
clipping. The Python path gets this from ``RecordEpisodeStatistics``, which ``registry.make_env``
puts innermost. The native path runs ALE with episodic life and reward clipping *off*, so the C++
threads play and score whole games, and :class:`AtariVectorEnv` adds life-loss ends and sign
clipping in a thin vectorised layer above them, on what the agent sees (rewards, ``terminated``)
while it sums the true rewards per game itself.

The two paths:

* :class:`AtariVectorEnv` (``vectorization: auto`` or ``native``, the default for ``wrappers:
  [atari]``): ``ale_py.vector_env.AtariVectorEnv``, whose C++ threads do frame skip, max-pool,
  grey, resize, frame stack, no-op starts and fire reset for all N games at once, in same-step
  autoreset mode. It pads a new episode's stack with its first frame (ALE pads with zeros) and
  turns ALE's batched ``final_obs`` into the loop's masked one.
* :func:`wrap_atari` (``vectorization: sync`` or ``async``): the reference, Gymnasium wrappers on
  one game; also what ``gymlab watch`` and videos render through.

They agree frame for frame and reward for reward on the same actions wherever ALE is
deterministic (sticky actions off, as in the v4 ids). The one difference is the random number of
no-op frames at a new game: each path draws it from its own generator (ALE's C++ one, seeded
through ``reset(seed=...)``, 0-30 frames; Gymnasium's, 1-30), so equal seeds start from different
frames. ``tests/test_atari.py`` checks the agreement with the no-op count matched.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation, TransformReward

from gymlab.extras import install_hint

#: Frames per observation, frames per agent step, no-op frames at most at a new game.
FRAME_STACK, FRAME_SKIP, NOOP_MAX = 4, 4, 30

#: env_kwargs of an ALE id that the native vector env takes too (the rest only the Python path does).
NATIVE_ENV_KWARGS = frozenset({"repeat_action_probability", "full_action_space", "max_num_frames_per_episode"})

#: As an env family of ``gymlab.registry``: the wrapper stack the native vector env stands in for, and its name.
NATIVE_WRAPPERS: tuple[str, ...] = ("atari",)
NATIVE_NAME = "ALE's vector env"

#: Atari ids as ale-py registers them: ``ALE/Pong-v5``, ``PongNoFrameskip-v4``, ``Pong-ramDeterministic-v4``.
ATARI_ID = re.compile(
    r"^(ALE/[A-Za-z]+(-ram)?-v\d+"  # ALE/Pong-v5
    r"|[A-Z][A-Za-z]*(-ram)?(NoFrameskip|Deterministic)-v[04]"  # PongNoFrameskip-v4
    r"|[A-Z][A-Za-z]*-ram-v[04])$"  # Pong-ram-v4
)

#: Plain ``Name-v0``/``-v4``/``-v5``, which are Atari games when ale-py is installed (``Pong-v4``).
MAYBE_ATARI_ID = re.compile(r"^[A-Z][A-Za-z]*-v[045]$")


class FireResetEnv(gym.Wrapper[Any, Any, Any, Any]):
    """At each new game, press FIRE for one frame on games that have it (as ALE's native ``use_fire_reset``).

    Goes directly on the frame-skip-1 game, under :class:`~gymnasium.wrappers.AtariPreprocessing`,
    so the fire frame comes before the no-op frames, in ALE's order.
    """

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        meanings = env.unwrapped.get_action_meanings()  # type: ignore[attr-defined]
        self.fire = meanings.index("FIRE") if "FIRE" in meanings else None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Reset the game, then one FIRE frame (a new reset if that frame ended the game)."""
        obs, info = self.env.reset(seed=seed, options=options)
        if self.fire is not None:
            obs, _, terminated, truncated, info = self.env.step(self.fire)
            if terminated or truncated:
                obs, info = self.env.reset(options=options)
        return obs, info


class EpisodicLifeEnv(gym.Wrapper[Any, Any, Any, Any]):
    """End the episode when a life is lost; reset the game only when it is really over.

    Losing a life is a strong, immediate signal of a bad state. Gymnasium's own
    ``terminal_on_life_loss`` resets the whole game on the following reset; here a reset after a
    lost life continues the same game from the very frame where the life was lost (no step is
    taken), so later lives are still trained on, and the native path's episodes are the same.
    """

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        self.lives = 0
        self.game_over = True
        self._last: tuple[Any, dict[str, Any]] | None = None

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
        self._last = (obs, info)
        return obs, reward, terminated, truncated, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """A real reset after game over (or the first time, or with a seed); otherwise the frame play stopped at."""
        if self.game_over or seed is not None or self._last is None:
            obs, info = self.env.reset(seed=seed, options=options)
        else:
            obs, info = self._last
        self.game_over = False
        self.lives = self._ale_lives()
        return obs, info


class GameSteps(gym.Wrapper[Any, Any, Any, Any]):
    """A whole game's logged length in agent steps, as the native path counts it, not in emulator frames.

    ``RecordEpisodeStatistics`` sits innermost, on the frame-skip-1 game, so it counts frames
    (fire and no-op frames included). This goes right above the frame skip, below any life-loss
    ends, so it sees each agent step and each real new game, and rewrites ``episode["l"]``.
    """

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        self.steps = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """A new game: the count starts again."""
        self.steps = 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Count the step; at the game's end, its length in steps."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        if "episode" in info:
            info = {**info, "episode": {**info["episode"], "l": np.int64(self.steps)}}
        return obs, reward, terminated, truncated, info


def clip_reward(env: gym.Env[Any, Any]) -> gym.Env[Any, Any]:
    """Rewards become -1, 0 or +1: one learning rate fits every game's score scale."""
    return TransformReward(env, lambda r: float(np.sign(float(r))))


def wrap_atari(env: gym.Env[Any, Any], *, train: bool, noop_max: int = NOOP_MAX) -> gym.Env[Any, Any]:
    """Fire and noop reset, frame skip 4, 84x84 grey, 4 stacked frames; life loss ends and rewards clip in training."""
    if not hasattr(env.unwrapped, "ale"):
        raise ValueError("it wraps the Arcade Learning Environment's games (e.g. PongNoFrameskip-v4) only: remove it")
    env = FireResetEnv(env)
    env = AtariPreprocessing(
        env, noop_max=noop_max, frame_skip=FRAME_SKIP, screen_size=84, grayscale_obs=True, scale_obs=False
    )
    env = GameSteps(env)
    if train:
        env = EpisodicLifeEnv(env)
        env = clip_reward(env)
    # Padding with the first frame (Gymnasium's default) is what the replay memory assumes when it
    # rebuilds stacks from single frames.
    return FrameStackObservation(env, FRAME_STACK, padding_type="reset")


def native_problem(spec: gym.envs.registration.EnvSpec | None, env_kwargs: Mapping[str, Any]) -> str | None:
    """Why ALE's native vector env cannot run this env (with these env_kwargs), or None when it can."""
    if spec is None or not str(spec.entry_point).startswith("ale_py"):
        return "it is not an ALE game"
    kwargs = spec.kwargs or {}
    if kwargs.get("obs_type", "rgb") != "rgb":
        return f"it observes {kwargs['obs_type']}, not the screen"
    if env_kwargs.get("frameskip", kwargs.get("frameskip", 1)) != 1:
        return "it skips frames itself (use a *NoFrameskip-v4 id, or env_kwargs frameskip: 1)"
    other = sorted(set(env_kwargs) - NATIVE_ENV_KWARGS - {"frameskip"})
    if other:
        return f"env_kwargs {', '.join(other)} are not among what it takes ({', '.join(sorted(NATIVE_ENV_KWARGS))})"
    try:
        import ale_py.vector_env  # noqa: F401
    except ImportError:  # an ale-py older than 0.11, or one that fails to import
        return f"this ale-py has no working vector env (ale-py >= 0.11): {install_hint('atari')}"
    return None


# --- as an env family of gymlab.registry (see its EnvFamily) ----------------------------------


def register() -> bool:
    """Register ALE's ids with Gymnasium; False when ale-py is missing or cannot be imported."""
    try:
        import ale_py
    except ImportError:  # absent, or present but broken (a missing shared library, a shadowing module)
        return False
    # ALE's banner ("A.L.E: Arcade Learning Environment ...", "[Powered by Stella]") went to stderr at every
    # game's start, around the one line an error is; its errors still show.
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    gym.register_envs(ale_py)
    return True


def unavailable_error(env_id: str) -> str | None:
    """Without ale-py: the error for an id that is surely an Atari game."""
    if ATARI_ID.match(env_id):
        return f"environment '{env_id}' is an Atari game, which needs ale-py: {install_hint('atari')}"
    return None


def unavailable_hint(env_id: str) -> str | None:
    """Without ale-py: a sentence for an unknown id that may be an Atari game (``Pong-v4``)."""
    if MAYBE_ATARI_ID.match(env_id):
        return f"If it is an Atari game, install ale-py: {install_hint('atari')}"
    return None


def native_vector_env(
    spec: gym.envs.registration.EnvSpec | None, env_kwargs: Mapping[str, Any]
) -> Callable[..., VectorEnv[Any, Any, Any]] | str:
    """:class:`AtariVectorEnv` when it can run the env of ``spec`` with these env_kwargs, else why not."""
    problem = native_problem(spec, env_kwargs)
    return AtariVectorEnv if problem is None else problem


def pad_episode_starts(obs: np.ndarray, age: np.ndarray) -> None:
    """In place: where a copy's episode is ``age`` < S - 1 steps old, stack slots before its first frame repeat it.

    ``obs`` is (N, S, H, W); ``age`` (N,) steps since each copy's episode began (0 at its first
    observation), so slot ``S - 1 - age`` holds the episode's first frame.
    """
    last = obs.shape[1] - 1
    if age.min() >= last:  # no episode younger than the stack (most steps): nothing to pad
        return
    for i in np.flatnonzero(age < last):
        first = last - int(age[i])
        obs[i, :first] = obs[i, first]


ALE_SEEDS = 2**31  # seeds ALE's native vector env takes: 0 .. 2**31 - 1 (larger ones are taken modulo this)


class AtariVectorEnv(VectorEnv[Any, Any, Any]):
    """N games in ALE's native C++ vector env, in the loop's same-step autoreset form.

    ALE plays whole games, unclipped; in training (``train=True``) this layer ends the agent's
    episode at a lost life (``terminated``; the game goes on) and clips rewards to their sign.
    When a copy's episode ends, ``infos["final_obs"]``/``["_final_obs"]`` hold its last
    observation; when its *game* ends, ``infos["final_info"]["episode"]`` holds the game's true
    return and length (``r``, ``l``, masked by ``["_episode"]``), as ``RecordEpisodeStatistics``
    does on the Python path. ``terminated`` (game over or lost life) stays apart from
    ``truncated`` (ALE's frame limit).
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        env_kwargs: Mapping[str, Any] | None = None,
        *,
        train: bool,
        noop_max: int = NOOP_MAX,
        num_threads: int | None = None,
    ) -> None:
        from ale_py.vector_env import AtariVectorEnv as ALEVectorEnv

        spec = gym.spec(env_id)
        problem = native_problem(spec, env_kwargs or {})
        if problem is not None:
            raise ValueError(f"ALE's native vector env cannot run {env_id}: {problem}")
        settings = {**(spec.kwargs or {}), **dict(env_kwargs or {})}
        threads = num_threads if num_threads is not None else min(num_envs, os.cpu_count() or 1)
        self._ale = ALEVectorEnv(
            settings["game"],
            num_envs,
            num_threads=threads,
            max_num_frames_per_episode=int(settings.get("max_num_frames_per_episode", 108_000)),
            repeat_action_probability=float(settings.get("repeat_action_probability", 0.0)),
            full_action_space=bool(settings.get("full_action_space", False)),
            autoreset_mode=AutoresetMode.SAME_STEP,
            img_height=84,
            img_width=84,
            grayscale=True,
            stack_num=FRAME_STACK,
            frameskip=FRAME_SKIP,
            maxpool=True,
            noop_max=noop_max,
            episodic_life=False,  # whole games: life loss is this layer's, for the agent only
            reward_clipping=False,  # true scores: clipping is this layer's, for the agent only
            use_fire_reset=True,
        )
        self.train = train
        self.num_envs = num_envs
        self.spec = spec  # for the frame limit (vector.time_limit) and the env's name
        self.single_observation_space = self._ale.single_observation_space
        self.single_action_space = self._ale.single_action_space
        self.observation_space = self._ale.observation_space
        self.action_space = self._ale.action_space
        self.metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}
        self.render_mode = None
        self._lives = np.zeros(num_envs, dtype=np.int32)
        self._age = np.zeros(num_envs, dtype=np.int64)  # steps into each copy's (agent's) episode, capped
        self._return = np.zeros(num_envs, dtype=np.float64)  # each game's true score so far
        self._length = np.zeros(num_envs, dtype=np.int64)  # each game's agent steps so far

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """New games in every copy, or in those of ``options["reset_mask"]``; an int seed gives copy ``i`` ``seed + i``.

        A partial reset needs a full one before it (ALE's rule; the loop always starts with one).
        """
        mask = (options or {}).get("reset_mask")
        mask = np.ones(self.num_envs, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        ale_seed: int | np.ndarray | None
        if seed is None or isinstance(seed, int):
            ale_seed = None if seed is None else (seed + np.flatnonzero(mask)).astype(np.int64)
        else:
            seeds = [s for s, m in zip(seed, mask, strict=True) if m]
            # ALE reads -1 as "no seed" (a copy seeded from its own generator).
            ale_seed = None if all(s is None for s in seeds) else np.array([-1 if s is None else s for s in seeds])
        if ale_seed is not None:  # ALE's seeds are C ints; Gymnasium's any non-negative int (e.g. a SeedSequence draw)
            ale_seed = np.where(ale_seed < 0, ale_seed, ale_seed % ALE_SEEDS)
        full = bool(mask.all())
        obs, info = self._ale.reset(seed=ale_seed, options=None if full else {"reset_mask": mask})
        self._lives[mask] = info["lives"][mask]
        self._age[mask] = 0
        self._return[mask] = 0.0
        self._length[mask] = 0
        pad_episode_starts(obs, self._age)
        return obs, info  # ALE's: lives, frame_number (1 fire frame + the no-op frames), episode_frame_number

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every game; a game that ended is reset in the same call (ALE's same-step autoreset)."""
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: Any) -> None:
        """Hand the actions to ALE's threads and return at once (the loop learns while the games step)."""
        self._ale.send(np.asarray(actions, dtype=np.int64).reshape(-1))

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """The step :meth:`step_async` started, once ALE's threads are done with it."""
        obs, raw, game_over, truncated, info = self._ale.recv()
        reward = raw.astype(np.float64)
        self._return += reward
        self._length += 1
        self._age = np.minimum(self._age + 1, FRAME_STACK - 1)
        ended = game_over | truncated  # (N,) the game is over: obs is already the next game's first
        lives = info["lives"]
        terminated = game_over
        if self.train:
            lost = (lives < self._lives) & ~ended  # (N,) a life lost while the game goes on
            terminated = game_over | lost
            reward = np.sign(reward)
        self._lives = lives
        restart = terminated | truncated  # (N,) the agent's episode ended here
        infos: dict[str, Any] = {}
        if restart.any():
            final = obs.copy()
            if ended.any():  # ALE's final_obs (N, ...) is there only then, and right only where a game ended
                final[ended] = info["final_obs"][ended]
            pad_episode_starts(final, self._age)
            infos = {"final_obs": final, "_final_obs": restart, "final_info": {}, "_final_info": restart}
            if ended.any():
                infos["final_info"] = {
                    "episode": {"r": self._return.copy(), "l": self._length.copy()},
                    "_episode": ended.copy(),
                }
                self._return[ended] = 0.0
                self._length[ended] = 0
            self._age[restart] = 0
        pad_episode_starts(obs, self._age)
        return obs, reward, terminated, truncated.copy(), infos

    def close_extras(self, **kwargs: Any) -> None:
        """Stop ALE's threads (they end with the C++ vector env, which goes with the last reference to it)."""
        self._ale.close()
        del self._ale
