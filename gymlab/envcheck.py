"""``gymlab check ENV``: is a user's env ready for the lab? One verdict per point, before any run starts.

The points, each checked on a fresh copy of the env so one failure does not hide the next:

- **gymnasium checker**: Gymnasium's own ``check_env`` (spaces, reset/step signatures, seeding),
  its warnings kept as notes;
- **time limit**: whether episodes are cut by a registered ``max_episode_steps``, a ``TimeLimit``
  wrapper or the env's own truncation, or end within the ``max_episode_length`` the env declares
  (held to it in random play), and otherwise what evaluation does (it stops at the run key
  ``eval_max_steps``);
- **determinism**: two copies reset with one seed and stepped with one action
  sequence give equal observations, rewards and ends;
- **finite values** and **observations in space**: a few hundred random steps (resetting at each
  episode's end) give finite observations and rewards, each observation inside the observation
  space;
- **agents**: which built-in agents (``gymlab.agent.AGENTS``) accept its spaces.

Whatever the env raises is a verdict naming the call, never a traceback.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils.env_checker import check_env
from rich.table import Table

from gymlab import registry
from gymlab.agent import BASELINES, space_refusals
from gymlab.config import apply_overrides
from gymlab.envfault import ARRAY_SPACES, EnvProblem, check_done, check_nested, check_reward, did
from gymlab.envguard import DEFAULT_EVAL_MAX_STEPS, close_env, declared_length, sdl_offscreen
from gymlab.envguard import render as guarded_render
from gymlab.errors import USER_CODE_FAILURES, GymlabError, describe, one_line
from gymlab.video import headless_gl, render_modes

PASS, WARN, FAIL = "pass", "warn", "fail"

#: Random steps taken by the finite-values and in-space checks.
DEFAULT_STEPS = 300
#: Steps compared by the determinism check (fewer when the episode ends first).
DETERMINISM_STEPS = 100
#: Steps rendered by the render check (fewer when the episode ends first).
RENDER_STEPS = 3
#: Longest detail kept per verdict.
MAX_DETAIL = 400


@dataclass(frozen=True)
class Verdict:
    """One point of the check: its name, ``pass``/``warn``/``fail``, and what was found."""

    point: str
    status: str
    detail: str


@dataclass
class CheckReport:
    """All verdicts for one env (``env_id`` with ``env_kwargs``)."""

    env_id: str
    env_kwargs: Mapping[str, Any]
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def failed(self) -> list[Verdict]:
        """The verdicts that failed."""
        return [v for v in self.verdicts if v.status == FAIL]

    @property
    def ok(self) -> bool:
        """Whether no point failed (warnings allowed)."""
        return not self.failed


class _EnvRaised(Exception):
    """The env raised inside one of its calls; the message names the call and the exception."""


def _call(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the env, turning whatever it raises into :class:`_EnvRaised` naming ``what``."""
    try:
        return fn(*args, **kwargs)
    except GymlabError:
        raise
    except USER_CODE_FAILURES as exc:
        raise _EnvRaised(did(what, exc)) from exc


def _reset(env: gym.Env[Any, Any], **kwargs: Any) -> Any:
    """``env.reset(**kwargs)``'s observation (a wrong return shape surfaces as the wrappers' unpacking error)."""
    args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    obs, info = _call(f"reset({args})", env.reset, **kwargs)
    if not isinstance(info, dict):  # what runs refuse (gymlab.envfault.check_info)
        raise _EnvRaised(f"reset() returned info of type {type(info).__name__}, not a dict: return a dict (e.g. {{}})")
    return obs


def _step(env: gym.Env[Any, Any], action: Any) -> tuple[Any, Any, bool, bool]:
    """``env.step(action)`` as (obs, reward, terminated, truncated)."""
    obs, reward, terminated, truncated, info = _call("step()", env.step, action)
    if not isinstance(info, dict):  # what runs refuse at an episode's end (gymlab.envfault.check_info)
        raise _EnvRaised(f"step() returned info of type {type(info).__name__}, not a dict: return a dict (e.g. {{}})")
    try:  # what runs refuse at an episode's end
        check_done(terminated, truncated)
    except EnvProblem as exc:
        raise _EnvRaised(exc.problem) from None
    return obs, reward, bool(terminated), bool(truncated)


def _close(env: gym.Env[Any, Any]) -> None:
    """Close an env as a run does (what close() raises is ignored; the close point reports it)."""
    close_env(env)


def _plain(message: str) -> str:
    """A gymnasium warning without its terminal colours and ``WARN:`` prefix."""
    return re.sub(r"\x1b\[[0-9;]*m", "", message).strip().removeprefix("WARN:").strip()


def _leaves(value: Any) -> Iterator[Any]:
    """The array-like leaves of an observation (Dict and Tuple observations nest)."""
    if isinstance(value, Mapping):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, tuple):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def _all_finite(value: Any) -> bool:
    for leaf in _leaves(value):
        try:
            arr = np.asarray(leaf)
        except Exception:  # not array-like (text observations): nothing numeric to check
            continue
        if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
            return False
    return True


def _same(a: Any, b: Any) -> bool:
    """Equal observations or rewards, NaN equal to NaN, through Dict/Tuple nesting."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    try:
        x, y = np.asarray(a), np.asarray(b)
        if x.shape != y.shape:
            return False
        equal_nan = x.dtype.kind in "fc" and y.dtype.kind in "fc"
        return bool(np.array_equal(x, y, equal_nan=equal_nan))
    except Exception:
        return bool(a == b)


def _shape_of(value: Any) -> str:
    try:
        arr = np.asarray(value)
    except Exception:
        return type(value).__name__
    return f"{type(value).__name__} of shape {arr.shape} and dtype {arr.dtype}"


@dataclass
class _RandomWalk:
    """Random steps through an env, noting the first non-finite value, out-of-space observation or error."""

    space: gym.Space[Any]
    step: int = 0
    bad_value: str | None = None
    bad_obs: str | None = None
    error: str | None = None

    def _look(self, obs: Any, where: str) -> None:
        if self.bad_value is None and not _all_finite(obs):
            self.bad_value = f"{where}: the observation is not finite (NaN or inf)"
        if self.bad_obs is not None:
            return
        if isinstance(self.space, (*ARRAY_SPACES, gym.spaces.Tuple, gym.spaces.Dict)):
            try:  # the rule training applies (gymlab.envfault), so the verdict agrees with what a run does
                check_nested(self.space, obs, where)
            except EnvProblem as exc:
                if " holds " not in exc.problem:  # not finite: the finite-values point says so
                    self.bad_obs = exc.problem
        elif not self.space.contains(obs):
            self.bad_obs = f"{where}: {_shape_of(obs)} is not in {self.space}"

    def run(self, env: gym.Env[Any, Any], seed: int, steps: int) -> None:
        """Reset with ``seed``, then take up to ``steps`` random actions, resetting at each episode's end."""
        try:
            self._look(_reset(env, seed=seed), f"reset(seed={seed})")
            env.action_space.seed(seed)
            while self.step < steps and not (self.bad_value and self.bad_obs):
                obs, reward, terminated, truncated = _step(env, env.action_space.sample())
                self.step += 1
                if self.bad_value is None:
                    self.bad_value = _reward_problem(reward, self.step)
                self._look(obs, f"step {self.step}")
                if terminated or truncated:
                    self._look(_reset(env), f"reset() after step {self.step}")
        except _EnvRaised as exc:
            self.error = f"{exc} (after {self.step} random steps)"
        except Exception as exc:  # e.g. the space's own contains() tripping on a malformed observation
            self.error = f"at step {self.step}: {describe(exc)}"


class EnvChecker:
    """Runs every point for one env; each builds its own copy of the env with :func:`registry.make_env`."""

    def __init__(
        self, env_id: str, env_kwargs: Mapping[str, Any] | None = None, *, steps: int = DEFAULT_STEPS, seed: int = 0
    ) -> None:
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs or {})
        self.steps, self.seed = steps, seed

    def _make(self) -> gym.Env[Any, Any]:
        return registry.make_env(self.env_id, self.env_kwargs, train=False)

    def run(self) -> CheckReport:
        """Check every point; raises :class:`GymlabError` only for a name that is no env at all."""
        registry.resolve_env(self.env_id)
        report = CheckReport(self.env_id, self.env_kwargs)
        try:
            env = self._make()
        except GymlabError as exc:
            report.verdicts.append(Verdict("builds", FAIL, str(exc)))
            return report
        try:
            spaces = env.observation_space, env.action_space
        finally:
            _close(env)
        points: list[tuple[str, Callable[[], Verdict]]] = [
            ("gymnasium checker", self.gymnasium_checker),
            ("time limit", self.time_limit),
            ("determinism", self.determinism),
            ("render", self.render),
            ("close", self.close),
        ]
        for point, check in points:
            report.verdicts.append(self._guarded(point, check))
        report.verdicts.extend(self.random_steps())
        report.verdicts.append(self.agents(*spaces))
        return report

    def _guarded(self, point: str, check: Callable[[], Verdict]) -> Verdict:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # gymnasium's passive checker warns per call; the checker point reports
            try:
                return check()
            except (_EnvRaised, GymlabError) as exc:
                return Verdict(point, FAIL, str(exc))
            except Exception as exc:  # the env broke a contract in a way the check itself tripped on
                return Verdict(point, FAIL, f"the env raised {describe(exc)}")

    def gymnasium_checker(self) -> Verdict:
        """Gymnasium's ``check_env`` on the bare env (its wrappers removed); warnings become notes."""
        env = self._make()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    check_env(env.unwrapped, skip_render_check=True)
                except Exception as exc:  # an env of the old Gym API: said as for runs (envfault.did)
                    call = "step()" if "(expected 5" in str(exc) else "reset()" if "(expected 2)" in str(exc) else None
                    return Verdict("gymnasium checker", FAIL, describe(exc) if call is None else did(call, exc))
        finally:
            _close(env)
        notes = list(dict.fromkeys(_plain(str(w.message)) for w in caught))
        if not notes:
            return Verdict("gymnasium checker", PASS, "check_env passed")
        more = f" (+{len(notes) - 1} more)" if len(notes) > 1 else ""
        return Verdict("gymnasium checker", PASS, f"check_env passed with warnings: {notes[0]}{more}")

    def time_limit(self) -> Verdict:
        """Whether episodes end at a time limit, or within the length the env declares (held to it in play).

        Else, whether the env truncates episodes itself in random play.
        """
        env = self._make()
        try:
            limit = env.spec.max_episode_steps if env.spec is not None else None
            if limit is not None:
                return Verdict("time limit", PASS, f"episodes are truncated at {limit:,} steps")
            bound = declared_length(env)
            _reset(env, seed=self.seed)
            env.action_space.seed(self.seed)
            length = longest = ended = 0
            for step in range(1, self.steps + 1):
                _, _, terminated, truncated = _step(env, env.action_space.sample())
                length += 1
                if truncated and bound is None:
                    return Verdict("time limit", PASS, f"the env truncates episodes itself (seen at step {step:,})")
                if terminated or truncated:
                    longest, ended, length = max(longest, length), ended + 1, 0
                    _reset(env)
                elif bound is not None and length >= bound:
                    return Verdict(
                        "time limit",
                        FAIL,
                        f"the env declares max_episode_length={bound:,}, but a random episode went on past "
                        f"step {length:,} (at step {step:,} of the check)",
                    )
        finally:
            _close(env)
        seen = f" ({ended} random episodes ended by themselves, the longest after {longest:,} steps)" if ended else ""
        if bound is not None:
            return Verdict("time limit", PASS, f"every episode ends within {bound:,} steps, as the env declares{seen}")
        return Verdict(
            "time limit",
            WARN,
            f"none registered{seen}; evaluation cuts an episode that never ends at the run key eval_max_steps "
            f"({DEFAULT_EVAL_MAX_STEPS:,} by default), training does not (agents that learn from whole episodes, "
            "such as reinforce, then never learn); give it one with env_kwargs.max_episode_steps=N",
        )

    def determinism(self) -> Verdict:
        """Two copies reset with the same seed and given the same actions must play the same episode."""
        envs = [self._make(), self._make()]
        try:
            space = envs[0].action_space
            space.seed(self.seed + 1)
            actions = [space.sample() for _ in range(DETERMINISM_STEPS)]
            first = [_reset(e, seed=self.seed) for e in envs]
            if not _same(*first):
                return Verdict("determinism", FAIL, f"reset(seed={self.seed}) gave two different observations")
            for step, action in enumerate(actions, start=1):
                outs = [_step(e, action) for e in envs]
                for name, index in (("observation", 0), ("reward", 1), ("terminated", 2), ("truncated", 3)):
                    if not _same(outs[0][index], outs[1][index]):
                        return Verdict(
                            "determinism",
                            FAIL,
                            f"step {step} after reset(seed={self.seed}) gave two different {name}s "
                            "(seed every random draw from self.np_random)",
                        )
                if outs[0][2] or outs[0][3]:
                    return Verdict("determinism", PASS, f"equal over a whole episode of {step} steps")
        finally:
            for e in envs:
                _close(e)
        return Verdict("determinism", PASS, f"equal over the first {DETERMINISM_STEPS} steps")

    def render(self) -> Verdict:
        """What videos (``video_every``) and ``watch`` do: render in the mode they would pick, over a few steps."""
        probe = self._make()
        try:
            modes = render_modes(probe)
        finally:
            _close(probe)
        mode = "rgb_array" if "rgb_array" in modes else "ansi" if "ansi" in modes else None
        if mode is None:
            return Verdict("render", PASS, "no render mode declared: videos and watch show no frames")
        if mode == "rgb_array":
            headless_gl()
        # Pixels need no screen: SDL's dummy driver keeps envs that draw with pygame from probing for one.
        with sdl_offscreen():
            env = registry.make_env(self.env_id, self.env_kwargs, train=False, render_mode=mode)
            try:
                return self._render_steps(env, mode)
            finally:
                _close(env)

    def _render_steps(self, env: gym.Env[Any, Any], mode: str) -> Verdict:
        """Reset, then render and step a few times; the first failure of render() is the verdict."""
        _reset(env, seed=self.seed)
        env.action_space.seed(self.seed)
        shown, first = "", None
        for _ in range(RENDER_STEPS):
            try:
                frame = guarded_render(env, mode, like=first)
            except EnvProblem as exc:
                return Verdict("render", FAIL, f"{exc.problem} (render_mode={mode!r}; videos and watch call it)")
            shown = f"frames of shape {frame.shape}" if mode == "rgb_array" else "text"
            first = frame.shape if mode == "rgb_array" else None
            _, _, terminated, truncated = _step(env, env.action_space.sample())
            if terminated or truncated:
                break
        return Verdict("render", PASS, f"render_mode={mode!r} gives {shown}")

    def close(self) -> Verdict:
        """Whether ``close()`` returns cleanly (one that raises is ignored by runs, so this only warns)."""
        env = self._make()
        problem = close_env(env)
        if problem is None:
            return Verdict("close", PASS, "close() returned cleanly")
        return Verdict("close", WARN, f"{problem}; runs ignore it (closing never stops one), but fix it")

    def random_steps(self) -> list[Verdict]:
        """Finite observations and rewards, and observations inside the space, over random steps."""
        finite, inside = "finite values", "observations in space"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                env = self._make()
            except GymlabError as exc:
                return [Verdict(finite, FAIL, str(exc)), Verdict(inside, FAIL, str(exc))]
            try:
                walk = _RandomWalk(env.observation_space)
                walk.run(env, self.seed, self.steps)
            finally:
                _close(env)
        done = f"over {walk.step:,} random steps"
        verdicts = []
        for point, problem, good in (
            (finite, walk.bad_value, f"observations and rewards finite {done}"),
            (inside, walk.bad_obs, f"every observation inside {walk.space} {done}"),
        ):
            if problem is not None:
                verdicts.append(Verdict(point, FAIL, problem))
            elif walk.error is not None:
                verdicts.append(Verdict(point, FAIL, walk.error))
            else:
                verdicts.append(Verdict(point, PASS, good))
        return verdicts

    @staticmethod
    def agents(observation_space: gym.Space[Any], action_space: gym.Space[Any]) -> Verdict:
        """Which built-in agents accept these spaces (each class's ``check_spaces``)."""
        verdicts = space_refusals(observation_space, action_space)
        fits = [name for name, why in verdicts.items() if why is None]
        refusals = [f"{name}: {why}" for name, why in verdicts.items() if why is not None]
        others = f" (not {', '.join(r.partition(':')[0] for r in refusals)})" if refusals else ""
        if not [name for name in fits if name not in BASELINES]:
            only = f"only {' and '.join(fits)}, which learns nothing; " if fits else ""
            return Verdict("agents", WARN, f"no learning agent supports these spaces: {only}" + "; ".join(refusals))
        return Verdict("agents", PASS, f"{', '.join(fits)} support its spaces{others}")


def _reward_problem(reward: Any, step: int) -> str | None:
    """What runs would refuse in a reward (:func:`gymlab.envfault.check_reward`), or None."""
    try:
        check_reward(reward)
    except EnvProblem as exc:
        return f"step {step}: {exc.problem}"
    return None


def parse_env_kwargs(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` words as env_kwargs (values parsed as YAML; ``env_kwargs.key=value`` is accepted too)."""
    for item in items:
        if "=" not in item or item.startswith("="):
            raise GymlabError(f"'{item}' is not key=value: give env_kwargs as KEY=VALUE words (e.g. map_name=8x8)")
    dotted = [item if item.startswith("env_kwargs.") else f"env_kwargs.{item}" for item in items]
    kwargs = dict(apply_overrides({}, dotted, (), once=True).get("env_kwargs", {}))
    if "render_mode" in kwargs:  # as train refuses it: the render check picks the mode (rgb_array, else ansi)
        raise GymlabError("gymlab check sets the render mode itself (rgb_array, else ansi): remove render_mode")
    return kwargs


def render(report: CheckReport) -> Table:
    """The report as a rich table: one row per point with its verdict and what was found."""
    style = {PASS: "green", WARN: "yellow", FAIL: "bold red"}
    kwargs = "".join(f" {key}={value}" for key, value in report.env_kwargs.items())  # as the command gave them
    table = Table(title=f"gymlab check {report.env_id}{kwargs}", title_justify="left")
    for col in ("point", "verdict", "found"):
        table.add_column(col)
    table.columns[2].overflow = "fold"
    for v in report.verdicts:
        table.add_row(v.point, f"[{style[v.status]}]{v.status}[/]", v.detail)
    return table


def summary(report: CheckReport) -> str:
    """One line: every point passed (with how many warnings), or which failed."""
    warned = [v.point for v in report.verdicts if v.status == WARN]
    if report.ok:
        note = f", with warnings on: {', '.join(warned)}" if warned else ""
        return f"{report.env_id}: every check passed{note}"
    names = ", ".join(v.point for v in report.failed)
    first = report.failed[0]
    return (
        f"{report.env_id}: {len(report.failed)} of {len(report.verdicts)} checks failed ({names}); "
        f"{first.point}: {first.detail}"
    )


def check(env_id: str, env_kwargs: Mapping[str, Any] | None = None, *, steps: int = DEFAULT_STEPS) -> CheckReport:
    """Check an env (an id, ``module:Env-v0`` or ``module:EnvClass``) with ``env_kwargs``; see the module docstring."""
    report = EnvChecker(env_id, env_kwargs, steps=steps).run()
    report.verdicts = [Verdict(v.point, v.status, one_line(v.detail, MAX_DETAIL)) for v in report.verdicts]
    return report
