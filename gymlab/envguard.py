"""The one guard around every call into an env: training, evaluation, videos and ``watch`` step through it.

What it guards, in one place (the checks themselves, and the errors they raise, are :mod:`gymlab.envfault`'s):

- every env call (``reset``, ``step``, ``render``, ``close``): what it raises becomes an
  :class:`~gymlab.envfault.EnvProblem` naming the call and, where known, the copy (a signal's
  :class:`~gymlab.errors.Interrupted` and a ``KeyboardInterrupt`` pass through);
- each step's rewards and float observations checked for NaN and infinity (one reduction per batch;
  :class:`~gymlab.vector.LeanSyncVectorEnv` checks as it steps and says so with ``checks_finite``);
  observations checked against their space at resets and episode ends, so the env is blamed, not
  the learner it misleads; a failed step blamed on the agent when its action left the action space;
- ``render()``'s frames (:func:`render`) and ``close()`` (:func:`close_env`: closing never stops anything);
- Box actions outside the space: the env gets them clipped (:func:`env_actions`), the agent keeps
  its own sample;
- a step split in two, so the envs step while the agent learns (:meth:`VectorGuard.send`, ``recv``);
- an episode that never ends: played episodes are cut at the env's time limit or, on an env without
  one, at ``eval_max_steps`` (:func:`episode_cap`). An env whose episodes end by its own rules
  within a known number of steps (SeqGen's fixed-length sequences) says so with a
  ``max_episode_length`` attribute (:func:`declared_length`), which counts as its time limit.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import VectorEnv

from gymlab.config import RunConfig
from gymlab.envfault import (
    EnvProblem,
    agent_fault,
    check_done,
    check_nested,
    check_obs,
    check_reward,
    nonfinite_obs,
    nonfinite_reward,
    raised,
)
from gymlab.errors import USER_CODE_FAILURES, GymlabError, Interrupted, raised_text

#: Steps after which an evaluation, video or watch episode is cut on an env without a time limit.
DEFAULT_EVAL_MAX_STEPS: int = RunConfig.model_fields["eval_max_steps"].default


def call_env(fn: Callable[..., Any], call: str, *args: Any, copy: int | None = None, **kwargs: Any) -> Any:
    """Call an env method, turning what a user's env raises into an :class:`EnvProblem` (signals pass through)."""
    try:
        return fn(*args, **kwargs)
    except (EnvProblem, Interrupted):
        raise
    except USER_CODE_FAILURES as exc:
        raise raised(call, exc, copy) from exc


@contextlib.contextmanager
def sdl_offscreen() -> Iterator[None]:
    """SDL's dummy video driver while frames are drawn for a file, unless the user chose a driver.

    Envs that draw with pygame (toy-text, classic control) initialise its display even for ``rgb_array``;
    with no screen, SDL then probes its drivers and prints their errors ("error: XDG_RUNTIME_DIR is
    invalid") on stderr, where they read as gymlab's. Pixels for a file need no screen.
    """
    if "SDL_VIDEODRIVER" in os.environ:
        yield
        return
    os.environ["SDL_VIDEODRIVER"] = "dummy"
    try:
        yield
    finally:
        os.environ.pop("SDL_VIDEODRIVER", None)


def render(env: gym.Env[Any, Any], mode: str | None = None, like: tuple[int, ...] | None = None) -> Any:
    """``env.render()``, guarded: what it raises is an :class:`EnvProblem` naming ``render()``.

    With ``mode="rgb_array"`` the frame must be an (H, W, 3 or 4) image of whole values 0-255 (of any
    integer or float dtype); it comes back as (H, W, 3) uint8, and of shape ``like`` when given (the
    episode's first frame: one video holds frames of one size).
    """
    frame = call_env(env.render, "render()", copy=0)
    if mode != "rgb_array":
        return frame
    try:
        image = np.asarray(frame)
    except Exception:  # an object numpy cannot even look at
        image = np.asarray(None)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype.kind not in "uif" or 0 in image.shape:
        raise EnvProblem(
            f"render() returned {type(frame).__name__} of shape {image.shape} and dtype {image.dtype} in rgb_array "
            "mode, not an (H, W, 3) image",
            0,
            "render()",
        )
    image = image[:, :, :3]
    if image.dtype != np.uint8:
        with np.errstate(invalid="ignore", over="ignore"):  # NaN or out-of-range values: refused just below
            as_bytes = image.astype(np.uint8)
        if not np.array_equal(image, as_bytes):  # a cast would wrap, cut or blacken what the env drew
            scale = " (for values in [0, 1]: (frame * 255).astype(np.uint8))" if image.dtype.kind == "f" else ""
            raise EnvProblem(
                f"render() returned a frame of dtype {image.dtype} with values {np.nanmin(image):.3g} to "
                f"{np.nanmax(image):.3g} in rgb_array mode; videos and watch show whole values 0-255: the env is at "
                f"fault, return np.uint8{scale}",
                0,
                "render()",
            )
        image = as_bytes
    image = np.ascontiguousarray(image)
    if like is not None and image.shape != like:
        raise EnvProblem(
            f"render() returned a frame of shape {image.shape} after {like}: every frame of a video must have "
            "one size; render the same (H, W) at every step",
            0,
            "render()",
        )
    return image


def close_env(env: Any) -> str | None:
    """Close an env (single or vector); never raises for what a user's ``close()`` raises.

    Closing is cleanup after the work is done or failed: a ``close()`` that raises cannot lose
    anything, so it never stops a run or hides the error that ended it (``gymlab check`` reports it).
    A vector env's copies are closed one by one, so one that raises does not keep the others open.
    Returns what was raised, in words (None when everything closed cleanly).
    """
    copies = getattr(env, "envs", None)
    targets = list(copies) if isinstance(copies, (list, tuple)) else []
    if targets and hasattr(env, "closed"):
        env.closed = True  # its copies are closed below: its own close() would only close them again
    else:
        targets.append(env)
    problems = [problem for problem in map(_close_one, targets) if problem is not None]
    return problems[0] if problems else None


def _close_one(target: Any) -> str | None:
    """``target.close()``; what it raises, in words (signals pass through)."""
    try:
        target.close()
    except (Interrupted, KeyboardInterrupt):
        raise
    except USER_CODE_FAILURES as exc:
        return f"close() {raised_text(exc)}"
    return None


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
    checks rewards and float array observations for NaN or infinity with one reduction each unless
    the vector env checks them itself; a Dict or Tuple observation's float parts likewise, one
    reduction a part. Dict and Tuple observations are checked against their space (each part's
    shape, dtype, finiteness and bounds) at resets and episode ends.

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
        self.nested = isinstance(space, (gym.spaces.Tuple, gym.spaces.Dict))
        self.nested_float = self.nested and any(
            isinstance(part, gym.spaces.Box) and np.dtype(part.dtype).kind == "f" for part in _parts(space)
        )
        # Discrete observations held to their range at every step, where the vector env does not check them itself
        self.discrete = self.check and isinstance(space, gym.spaces.Discrete)
        self.native_async = steps_by_itself(envs)
        self.processes = isinstance(envs.unwrapped, gym.vector.AsyncVectorEnv)  # Gymnasium's, a process per copy
        self._thread: ThreadPoolExecutor | None = None
        self._future: Future[Any] | None = None
        self._in_flight = False
        self._sent: Any = None  # the actions of the step in flight, for blaming the agent if it fails
        self._failed = False  # a step raised: the vector env may be left part-way through it

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """``envs.reset(**kwargs)``, guarded."""
        try:
            obs, infos = call_env(self._quiet, "reset()", self.envs.reset, **kwargs)
        except EnvProblem as exc:
            self._failed = True
            raise self._process_ended("reset()", exc.__cause__) or exc from exc.__cause__
        if self.nested:
            for i, single in enumerate(gym.vector.utils.iterate(self.envs.observation_space, obs)):
                check_nested(self.envs.single_observation_space, single, "reset()", i)
        if self.discrete:
            self._check_range(obs, "reset()")
        return obs, infos

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """``envs.step(actions)``, guarded; ``actions`` as the agent chose them."""
        if self.clip:
            actions = env_actions(self.action_space, actions)
        try:
            if self.processes:
                obs, reward, terminated, truncated, infos = self._quiet(self.envs.step, actions)
            else:
                obs, reward, terminated, truncated, infos = self.envs.step(actions)
        except Interrupted:
            raise
        except USER_CODE_FAILURES as exc:  # a user env's step raising inside a vector env that does not say which copy
            raise self._step_failed(actions, exc) from exc
        self._checked(obs, reward, infos)
        return obs, reward, terminated, truncated, infos

    def send(self, actions: Any) -> None:
        """Start a step with ``actions``; :meth:`recv` returns what :meth:`step` would have."""
        if self.clip:
            actions = env_actions(self.action_space, actions)
        if self.native_async:
            try:
                self.envs.step_async(actions)  # type: ignore[attr-defined]
            except Interrupted:
                raise
            except USER_CODE_FAILURES as exc:
                raise self._step_failed(actions, exc) from exc
        else:
            if self._thread is None:
                self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gymlab-envs")
            self._future = self._thread.submit(self.envs.step, actions)
        self._in_flight = True
        self._sent = actions

    def recv(self) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """The step :meth:`send` started, once it is done, guarded as :meth:`step` is."""
        self._in_flight = False
        try:
            if self.native_async:
                obs, reward, terminated, truncated, infos = self._quiet(self.envs.step_wait)  # type: ignore[attr-defined]
            else:
                assert self._future is not None
                future, self._future = self._future, None
                obs, reward, terminated, truncated, infos = future.result()
        except Interrupted:
            raise
        except USER_CODE_FAILURES as exc:
            raise self._step_failed(self._sent, exc) from exc
        self._checked(obs, reward, infos)
        return obs, reward, terminated, truncated, infos

    def _quiet(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``; on a process-per-copy vector env, the warnings it emitted dropped if it raised.

        Gymnasium's ``AsyncVectorEnv`` reports a worker's exception as a warning holding the worker's
        traceback, then raises it here; the run says what failed in one line instead. Warnings of a call
        that succeeds are still shown (a warning meant to show once per place may show again: recording
        resets Python's once-registry; the async env's own warnings come from its worker processes).
        """
        if not self.processes:
            return fn(*args, **kwargs)
        with warnings.catch_warnings(record=True) as caught:
            result = fn(*args, **kwargs)
        for w in caught:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        return result

    def _step_failed(self, actions: Any, exc: BaseException) -> GymlabError:
        """The error for a step that raised: the agent's when its actions were outside the space, else the env's."""
        self._failed = True
        if isinstance(exc, EnvProblem) and not exc.problem.startswith(("step() raised", "step() called")):
            return exc  # the env returned something wrong (a NaN reward, a misfit observation): the env's fault
        ended = self._process_ended("step()", exc)
        if ended is not None:
            return ended
        what = exc.problem if isinstance(exc, EnvProblem) else f"step() {raised_text(exc)}"
        blamed = agent_fault(self.action_space, actions, what)
        if blamed is not None:
            return blamed
        return exc if isinstance(exc, EnvProblem) else raised("step()", exc, copy=None)

    def _process_ended(self, call: str, exc: BaseException | None) -> EnvProblem | None:
        """With a process per copy, a call that failed because a copy's process ended: which, and how.

        A worker ends when its env calls ``sys.exit`` or crashes (Gymnasium's worker catches errors,
        not ``SystemExit``, and nothing catches a segfault); this process then reads the end of its pipe.
        """
        if not (self.processes and isinstance(exc, (EOFError, ConnectionError))):
            return None
        for i, process in enumerate(self.envs.unwrapped.processes):  # type: ignore[attr-defined]
            process.join(timeout=1.0)  # its pipe is closed: it is ending, if not gone already
            code = process.exitcode
            if code is not None:
                how = f"with exit code {code}" if code >= 0 else f"by signal {signal.Signals(-code).name}"
                return EnvProblem(f"{call} ended copy {i}'s process {how} (sys.exit in the env, or a crash)", i, call)
        return None

    def _checked(self, obs: Any, reward: np.ndarray, infos: dict[str, Any]) -> None:
        """What :meth:`step` and :meth:`recv` check of a step's results."""
        if self.check:
            self._check(obs, reward)
        if self.nested and "final_obs" in infos:
            for i in np.flatnonzero(infos["_final_obs"]):
                check_nested(self.envs.single_observation_space, infos["final_obs"][i], "step()", int(i))

    def close(self) -> None:
        """Wait for a step still in flight (its result is dropped) and stop the worker thread.

        After a failed step, a process-per-copy vector env (Gymnasium's ``AsyncVectorEnv``) is closed
        here by killing its processes: it may have stopped reading its workers' replies part-way, and
        its own ``close`` would wait for them forever (and warn about the pending call). SIGKILL, not
        SIGTERM: a worker forked from this process holds its signal handlers, which would print.
        """
        if self._failed and self.processes:
            self._in_flight = False
            unwrapped = self.envs.unwrapped
            for process in unwrapped.processes:  # type: ignore[attr-defined]
                process.kill()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    self.envs.close(terminate=True)
                except USER_CODE_FAILURES:  # it waited for a reply a dead worker cannot send: the pipes are all left
                    for pipe in unwrapped.parent_pipes:  # type: ignore[attr-defined]
                        pipe.close()
                    unwrapped.closed = True  # its __del__ would try again, and print the same error
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
        if np.shape(reward) != (self.envs.num_envs,):  # a copy's reward that was no single number, batched
            raise EnvProblem(
                f"step() returned rewards of shape {np.shape(reward)} for {self.envs.num_envs} copies, so a copy's "
                "reward is not a number (it must be one number)",
                None,
            )
        if not math.isfinite(np.sum(reward)):  # a NaN/inf, or a sum that overflowed: find the copy
            for i, r in enumerate(np.asarray(reward, dtype=np.float64).reshape(-1)):
                if not math.isfinite(r):
                    raise nonfinite_reward(r, i)
        if self.float_obs and not math.isfinite(np.sum(obs)):
            for i, o in enumerate(obs):
                if not np.isfinite(o).all():
                    raise nonfinite_obs(o, "step()", i)
        if self.nested_float and not all(math.isfinite(np.sum(part)) for part in _parts(obs) if _is_float(part)):
            space = self.envs.single_observation_space
            for i, single in enumerate(gym.vector.utils.iterate(self.envs.observation_space, obs)):
                check_nested(space, single, "step()", i)
        if self.discrete:
            self._check_range(obs, "step()")

    def _check_range(self, obs: Any, call: str) -> None:
        """Discrete observations within the space's range (two reductions); the copy named when one is not."""
        space = self.envs.single_observation_space
        assert isinstance(space, gym.spaces.Discrete)
        batch = np.asarray(obs)
        if batch.min() < space.start or batch.max() >= space.start + space.n:
            for i, single in enumerate(batch):
                check_obs(space, single, call, i)


def _parts(nested: Any) -> Iterator[Any]:
    """The leaves of a Tuple or Dict space, or of a batch of its observations (tuples and dicts of arrays)."""
    if isinstance(nested, (gym.spaces.Tuple, tuple)):
        for part in nested:
            yield from _parts(part)
    elif isinstance(nested, (gym.spaces.Dict, Mapping)):
        for part in nested.values():
            yield from _parts(part)
    else:
        yield nested


def _is_float(part: Any) -> bool:
    return isinstance(part, np.ndarray) and part.dtype.kind == "f"


def with_final_obs(envs: Any, next_obs: Any, infos: dict[str, Any]) -> Any:
    """The batch of true next observations: ``next_obs`` with each ended episode's last one put back.

    An array batch is copied and patched in place; a Tuple or Dict batch (Gymnasium's sync vector env)
    is taken apart into single observations and batched again.
    """
    mask, final = infos["_final_obs"], infos["final_obs"]
    if isinstance(next_obs, np.ndarray):
        real = next_obs.copy()
        if isinstance(final, np.ndarray) and final.dtype != object:  # the lean and native envs': one masked copy
            real[mask] = final[mask]
        else:  # Gymnasium's vector env: an object array of single observations
            for i in np.flatnonzero(mask):
                real[i] = final[i]
        return real
    ended = np.flatnonzero(mask)
    space = envs.single_observation_space
    singles = list(gym.vector.utils.iterate(envs.observation_space, next_obs))
    for i in ended:
        singles[i] = infos["final_obs"][i]
    out: Any = gym.vector.utils.create_empty_array(space, len(singles))
    return gym.vector.utils.concatenate(space, singles, out)


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
        try:
            obs, reward, terminated, truncated, _ = call_env(self.env.step, "step()", action, copy=0)
        except EnvProblem as exc:  # the agent's fault when its action was outside the space
            raise agent_fault(self.env.action_space, [action], exc.problem) or exc from exc.__cause__
        check_obs(self.space, obs, "step()")
        check_done(terminated, truncated)
        return obs, check_reward(reward), bool(terminated), bool(truncated)


def time_limit(env: Any) -> int | None:
    """The most steps an episode of ``env`` (a single or vector env) can last, when the env says so.

    From a ``TimeLimit`` wrapper, the spec's ``max_episode_steps``, an ALE game's frame limit
    (frames bound agent steps from above, whatever the frame skip), or the env's own
    :func:`declared_length`. None when nothing bounds it: a user's env class, or
    ``gym.make(id, max_episode_steps=None)`` of an id registered without one.
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
    return declared_length(env)


def declared_length(env: Any) -> int | None:
    """The most steps an episode of ``env`` lasts by the env's own rules, when the env declares it.

    An env whose every episode ends (terminated) within a known number of steps, without any time
    limit cutting it, says so with an integer attribute ``max_episode_length`` (SeqGen: ``seq_len``,
    which its keyword arguments set, so no registered ``max_episode_steps`` could state it).
    ``gymlab check`` holds the env to it. None when the env declares nothing (or not a whole number ≥ 1).
    """
    value = getattr(getattr(env, "unwrapped", env), "max_episode_length", None)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1:
        return int(value)
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
