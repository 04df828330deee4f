"""The one guard around every call into an env: training, evaluation, videos and ``watch`` step through it.

What it guards against, in one place:

- an env method that raises: an :class:`EnvProblem` naming the call and, where known, the copy
  (a signal's :class:`~gymlab.errors.Interrupted` and a ``KeyboardInterrupt`` pass through);
- a reward that is NaN or infinite, or not a number at all, and a float observation holding NaN or
  infinity (one reduction per batch; :class:`~gymlab.vector.LeanSyncVectorEnv` checks as it steps
  and says so with ``checks_finite``);
- an observation that does not fit its space (checked at resets and episode ends);
- Box actions outside the space: the env gets them clipped (:func:`env_actions`), the agent keeps
  its own sample;
- an episode that never ends: played episodes are cut at the env's time limit or, on an env without
  one, at ``eval_max_steps`` (:func:`episode_cap`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import VectorEnv

from gymlab.config import RunConfig
from gymlab.errors import GymlabError, Interrupted, describe

ARRAY_SPACES = (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)

# The finiteness checks compute NaN on purpose when a value is not finite (inf - inf) and then stop
# the run in one line; numpy's warning about it would be a second line.
warnings.filterwarnings(
    "ignore", r"(invalid value|overflow) encountered in (reduce|scalar subtract|dot)", RuntimeWarning, r"gymlab\."
)

#: Steps after which an evaluation, video or watch episode is cut on an env without a time limit.
DEFAULT_EVAL_MAX_STEPS: int = RunConfig.model_fields["eval_max_steps"].default


class EnvProblem(GymlabError):
    """A copy of an env misbehaved: ``problem`` says how (e.g. "reward is nan", "step() raised ValueError: ...").

    ``copy`` is the copy's index in its vector env (0 for a single env; None when unknown), ``call``
    the env method (``reset()`` or ``step()``). Its message is one line; the loop rewrites it with
    the run's step, env and last good checkpoint (:meth:`describe`).
    """

    def __init__(self, problem: str, copy: int | None = 0, call: str = "step()") -> None:
        self.problem, self.copy, self.call = problem, copy, call
        super().__init__(self.describe(None))

    def describe(self, env_id: str | None) -> str:
        """The problem with the env named, e.g. "reward is nan from env CartPole-v1 copy 0"."""
        env = f"env {env_id}" if env_id is not None else "the env"
        where = env if self.copy is None else f"{env} copy {self.copy}"
        if self.problem.startswith(self.call):  # "step() raised ...": name the env first
            return f"{where}: {self.problem}"
        return f"{self.problem} from {where}"


def raised(call: str, exc: Exception, copy: int | None = 0) -> EnvProblem:
    """The :class:`EnvProblem` for an exception an env's ``call`` raised."""
    return EnvProblem(f"{call} raised {describe(exc)}", copy, call)


def nonfinite_reward(reward: Any, copy: int = 0) -> EnvProblem:
    """The :class:`EnvProblem` for a reward that is NaN or infinite."""
    return EnvProblem(f"reward is {float(reward)}", copy)


def nonfinite_obs(obs: np.ndarray, call: str = "step()", copy: int = 0) -> EnvProblem:
    """The :class:`EnvProblem` for an observation holding NaN or infinity."""
    bad = np.asarray(obs, dtype=np.float64)
    what = "nan" if np.isnan(bad).any() else "inf"
    return EnvProblem(f"observation holds {what} (returned by {call})", copy, call)


def check_reward(reward: Any, copy: int = 0) -> float:
    """One env's reward as a float; an :class:`EnvProblem` when it is not a number or not finite."""
    try:
        bad = reward - reward  # NaN for NaN or infinity; 0 for every finite number
    except TypeError:
        raise EnvProblem(f"step() returned a reward of type {type(reward).__name__}, not a number", copy) from None
    if bad:
        raise nonfinite_reward(reward, copy)
    return float(reward)


def check_obs(space: gym.Space[Any], obs: Any, call: str, copy: int = 0) -> None:
    """Raise :class:`EnvProblem` when an array observation misfits its space's shape or dtype, or is not finite."""
    if not isinstance(space, ARRAY_SPACES):
        return
    shape = space.shape or ()
    arr = np.asarray(obs)
    if arr.shape != shape:
        raise EnvProblem(f"{call} returned an observation of shape {arr.shape}, the space says {shape}", copy, call)
    dtype = np.dtype(space.dtype) if space.dtype is not None else arr.dtype
    same_kind = arr.dtype.kind == dtype.kind or (dtype.kind in "iu" and arr.dtype.kind in "iub")
    if not same_kind and not (dtype.kind == "f" and arr.dtype.kind in "iu"):
        raise EnvProblem(f"{call} returned an observation of dtype {arr.dtype}, the space says {dtype}", copy, call)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise nonfinite_obs(arr, call, copy)


def call_env(fn: Callable[..., Any], call: str, *args: Any, copy: int | None = None, **kwargs: Any) -> Any:
    """Call an env method, turning what a user's env raises into an :class:`EnvProblem` (signals pass through)."""
    try:
        return fn(*args, **kwargs)
    except (EnvProblem, Interrupted):
        raise
    except Exception as exc:
        raise raised(call, exc, copy) from exc


def env_actions(action_space: gym.Space[Any], actions: np.ndarray) -> np.ndarray:
    """What the env receives for an agent's actions: clipped to the bounds of a Box space.

    Agents return what their policy sampled (a Gaussian sample can leave the bounds) and see that
    same action again in ``observe``, so the log-probability is the sample's; the clip is treated
    as part of the env. ``action_space`` is one env's space; ``actions`` are batched (N, D).
    """
    if isinstance(action_space, gym.spaces.Box):
        return np.clip(actions, action_space.low, action_space.high).astype(action_space.dtype, copy=False)
    return actions


def steps_by_itself(envs: VectorEnv[Any, Any, Any]) -> bool:
    """Whether a vector env steps its copies asynchronously itself (``step_async``/``step_wait``).

    ALE's native vector env (C++ threads) and Gymnasium's ``AsyncVectorEnv`` (processes) do; an
    in-process vector env needs a thread to step while the agent learns.
    """
    return hasattr(envs, "step_async") and hasattr(envs, "step_wait")


class VectorGuard:
    """A vector env's ``reset`` and ``step`` as the loop and evaluation call them, guarded.

    ``step`` clips Box actions for the env, turns a raised error into an :class:`EnvProblem`, and
    checks rewards and float array observations for NaN or infinity with one reduction each (Dict
    or Tuple observations are not looked into) unless the vector env checks them itself.

    ``send`` and ``recv`` split a step in two, so that the envs step while the caller does
    something else (the loop's overlap): through the vector env's own ``step_async``/``step_wait``
    where it has them, else on one worker thread. Only one step is ever in flight; :meth:`close`
    waits for it.
    """

    def __init__(self, envs: VectorEnv[Any, Any, Any]) -> None:
        self.envs = envs
        self.action_space = envs.single_action_space
        self.clip = isinstance(self.action_space, gym.spaces.Box)
        space = envs.single_observation_space
        self.check = not getattr(envs, "checks_finite", False)
        self.float_obs = isinstance(space, gym.spaces.Box) and np.dtype(space.dtype).kind == "f"
        self.native_async = steps_by_itself(envs)
        self._thread: ThreadPoolExecutor | None = None
        self._future: Future[Any] | None = None
        self._in_flight = False

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """``envs.reset(**kwargs)``, guarded."""
        return call_env(self.envs.reset, "reset()", **kwargs)

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """``envs.step(actions)``, guarded; ``actions`` as the agent chose them."""
        if self.clip:
            actions = env_actions(self.action_space, actions)
        try:
            obs, reward, terminated, truncated, infos = self.envs.step(actions)
        except (EnvProblem, Interrupted):
            raise
        except Exception as exc:  # a user env's step raising inside a vector env that does not say which copy
            raise raised("step()", exc, copy=None) from exc
        if self.check:
            self._check(obs, reward)
        return obs, reward, terminated, truncated, infos

    def send(self, actions: Any) -> None:
        """Start a step with ``actions``; :meth:`recv` returns what :meth:`step` would have."""
        if self.clip:
            actions = env_actions(self.action_space, actions)
        if self.native_async:
            try:
                self.envs.step_async(actions)  # type: ignore[attr-defined]
            except (EnvProblem, Interrupted):
                raise
            except Exception as exc:
                raise raised("step()", exc, copy=None) from exc
        else:
            if self._thread is None:
                self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gymlab-envs")
            self._future = self._thread.submit(self.envs.step, actions)
        self._in_flight = True

    def recv(self) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """The step :meth:`send` started, once it is done, guarded as :meth:`step` is."""
        self._in_flight = False
        try:
            if self.native_async:
                obs, reward, terminated, truncated, infos = self.envs.step_wait()  # type: ignore[attr-defined]
            else:
                assert self._future is not None
                future, self._future = self._future, None
                obs, reward, terminated, truncated, infos = future.result()
        except (EnvProblem, Interrupted):
            raise
        except Exception as exc:
            raise raised("step()", exc, copy=None) from exc
        if self.check:
            self._check(obs, reward)
        return obs, reward, terminated, truncated, infos

    def close(self) -> None:
        """Wait for a step still in flight (its result is dropped) and stop the worker thread."""
        if self._in_flight:
            self._in_flight = False
            try:
                if self.native_async:
                    self.envs.step_wait()  # type: ignore[attr-defined]
                elif self._future is not None:
                    self._future.exception()
            except Exception:
                pass
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None

    def _check(self, obs: Any, reward: np.ndarray) -> None:
        if not math.isfinite(np.sum(reward)):  # a NaN/inf, or a sum that overflowed: find the copy
            for i, r in enumerate(np.asarray(reward, dtype=np.float64).reshape(-1)):
                if not math.isfinite(r):
                    raise nonfinite_reward(r, i)
        if self.float_obs and not math.isfinite(np.sum(obs)):
            for i, o in enumerate(obs):
                if not np.isfinite(o).all():
                    raise nonfinite_obs(o, "step()", i)


class SingleGuard:
    """One (unbatched) env's ``reset`` and ``step`` as videos and ``watch`` play it, guarded the same way."""

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        self.env = env
        self.space = env.observation_space

    def reset(self, seed: int | None) -> Any:
        """``env.reset(seed=seed)``'s observation, checked against the space."""
        obs, _ = call_env(self.env.reset, "reset()", seed=seed, copy=0)
        check_obs(self.space, obs, "reset()")
        return obs

    def step(self, action: Any) -> tuple[Any, float, bool, bool]:
        """``env.step(action)`` as ``(obs, reward, terminated, truncated)``, checked."""
        obs, reward, terminated, truncated, _ = call_env(self.env.step, "step()", action, copy=0)
        check_obs(self.space, obs, "step()")
        return obs, check_reward(reward), bool(terminated), bool(truncated)


def time_limit(env: Any) -> int | None:
    """The most steps an episode of ``env`` (a single or vector env) can last, when the env says so.

    From a ``TimeLimit`` wrapper, the spec's ``max_episode_steps``, or an ALE game's frame limit
    (frames bound agent steps from above, whatever the frame skip). None when nothing bounds it:
    a user's env class, or ``gym.make(id, max_episode_steps=None)`` of an id registered without one.
    """
    copies = getattr(env, "envs", None)
    if copies:
        env = copies[0]
    layer = env
    while True:
        if isinstance(layer, gym.wrappers.TimeLimit):
            return int(layer._max_episode_steps)
        if not isinstance(layer, gym.Wrapper):
            break
        layer = layer.env
    spec = getattr(env, "spec", None)
    if spec is not None:
        if spec.max_episode_steps is not None:
            return int(spec.max_episode_steps)
        frames = (spec.kwargs or {}).get("max_num_frames_per_episode")
        if isinstance(frames, int) and frames > 0:
            return frames
    return None


def episode_cap(env: Any, max_steps: int | None) -> int:
    """Steps after which an evaluation episode of ``env`` is cut: its own time limit, else ``max_steps``.

    With a time limit the env ends the episode itself first, so the cap only ever cuts episodes of
    envs without one. ``max_steps`` None means the run key's default.
    """
    limit = time_limit(env)
    if limit is not None:
        return limit
    return max_steps if max_steps is not None else DEFAULT_EVAL_MAX_STEPS
