"""What an env returns, held to what it declares, and who is at fault when a step fails.

The checks :mod:`gymlab.envguard` (and the vector envs, and ``gymlab check``) apply, each ending in
one line that names the env's call and copy:

- :class:`EnvProblem`, the error for a misbehaving copy, and :func:`raised` for what a call raised;
- a reward that is NaN, infinite, beyond float32's range, or not a number at all (:func:`check_reward`),
  an ``info`` that is not a dict (:func:`check_info`);
- an observation that does not fit its space: its shape, dtype, finiteness, a Box's declared bounds,
  a Discrete's values (:func:`check_obs`; Tuple and Dict part by part, :func:`check_nested`);
- an env without Gymnasium spaces, or whose ``metadata`` is not a dict (:func:`check_spaces_declared`);
- a step that raised on an action outside the action space: the agent is blamed, not the env that
  asserted it (:func:`agent_fault`, on the error path only).
"""

from __future__ import annotations

import contextlib
import math
import re
import traceback
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from gymlab.errors import GymlabError, describe, raised_text

ARRAY_SPACES = (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)

# The finiteness checks compute NaN on purpose when a value is not finite (inf - inf) and then stop
# the run in one line; numpy's warning about it would be a second line.
warnings.filterwarnings(
    "ignore", r"(invalid value|overflow) encountered in (reduce|scalar subtract|dot)", RuntimeWarning, r"gymlab\."
)


class EnvProblem(GymlabError):
    """A copy of an env misbehaved: ``problem`` says how (e.g. "reward is nan", "step() raised ValueError: ...").

    ``copy`` is the copy's index in its vector env (0 for a single env; None when unknown), ``call``
    the env method (``reset()`` or ``step()``). Its message is one line; the loop rewrites it with
    the run's step, env and last good checkpoint (:meth:`describe`).
    """

    problem: str
    copy: int | None
    call: str

    def __init__(self, problem: str | EnvProblem, copy: int | None = 0, call: str = "step()") -> None:
        if isinstance(problem, EnvProblem):  # re-raised as ``type(exc)(exc)`` (Gymnasium's process-per-copy env)
            first: EnvProblem = problem
            copy, call = first.copy, first.call
            problem = first.problem
        self.problem, self.copy, self.call = str(problem), copy, call
        super().__init__(self.describe(None))

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled whole (a worker process sends it back): problem, copy and call, not the message."""
        return (EnvProblem, (self.problem, self.copy, self.call))

    def describe(self, env_id: str | None) -> str:
        """The problem with the env named, e.g. "reward is nan from env CartPole-v1 copy 0"."""
        env = f"env {env_id}" if env_id is not None else "the env"
        where = env if self.copy is None else f"{env} copy {self.copy}"
        if self.problem.startswith(self.call):  # "step() raised ...": name the env first
            return f"{where}: {self.problem}"
        return f"{self.problem} from {where}"

    def for_user(self, env_id: str, wrappers: Sequence[str] = ()) -> GymlabError:
        """The one line a command ends with: the problem, the env named, and how to look into it."""
        return GymlabError(f"{self.describe(env_id)}; {check_hint(env_id, wrappers)}")


def check_hint(env_id: str, wrappers: Sequence[str] = ()) -> str:
    """How to look into an env's fault: ``gymlab check``, which checks the env alone, not the run's wrappers."""
    if not wrappers:
        return f"check the env with: gymlab check {env_id}"
    return (
        f"check the env with: gymlab check {env_id} (without the run's wrappers, {', '.join(wrappers)}, "
        "which may be at fault)"
    )


def raised(call: str, exc: BaseException, copy: int | None = 0) -> EnvProblem:
    """The :class:`EnvProblem` for an exception an env's ``call`` raised (or its ``sys.exit``)."""
    return EnvProblem(did(call, exc), copy, call)


#: Python's words when a call's result has the wrong number of values for the names it is unpacked into.
_UNPACKING = re.compile(r"(?:not enough|too many) values to unpack \(expected (\d+)(?:, got (\d+))?\)|cannot unpack .*")
#: Where an env's result is unpacked on its way up: Gymnasium's wrappers, and gymlab's own calls.
_UNPACKERS = (str(Path(gym.__path__[0])), str(Path(__file__).parent))
#: Gymnasium's API, by call: what ``reset()`` and ``step()`` return.
_RETURNS = {"reset": "a pair (obs, info)", "step": "5 values (obs, reward, terminated, truncated, info)"}


def did(call: str, exc: BaseException) -> str:
    """What an env's ``call`` did, in words: ``step() raised ...``, or what it returned that Gymnasium's API does not.

    An env written for the old Gym API returns 4 values from ``step()`` (one ``done``) and a bare
    observation from ``reset()``; the wrapper above it then fails to unpack the result. That is said
    as what the env returned, not as an error the env raised. An unpacking error inside the env's
    own code stays what it raised.
    """
    matched = _UNPACKING.fullmatch(str(exc)) if isinstance(exc, (TypeError, ValueError)) else None
    frames = traceback.extract_tb(exc.__traceback__) if matched else []
    name = call.partition("(")[0]
    if not matched or not frames or name not in _RETURNS or not frames[-1].filename.startswith(_UNPACKERS):
        return f"{call} {raised_text(exc)}"
    if name == "step" and matched[2] == "4":
        hint = "return terminated and truncated apart (the old Gym API's one done)"
    else:
        hint = "return (obs, info)" if name == "reset" else "return (obs, reward, terminated, truncated, info)"
    spec = _RETURNS[name]
    if matched[2]:
        return f"{call} returned {matched[2]} values where Gymnasium's API has {spec}: the env is at fault, {hint}"
    return f"{call} did not return {spec}, as Gymnasium's API has ({exc}): the env is at fault, {hint}"


def nonfinite_reward(reward: Any, copy: int = 0) -> EnvProblem:
    """The :class:`EnvProblem` for a reward that is NaN or infinite."""
    return EnvProblem(f"reward is {float(reward)}", copy)


def nonfinite_obs(obs: np.ndarray, call: str = "step()", copy: int = 0) -> EnvProblem:
    """The :class:`EnvProblem` for an observation holding NaN or infinity."""
    bad = np.asarray(obs, dtype=np.float64)
    what = "nan" if np.isnan(bad).any() else "inf"
    return EnvProblem(f"observation holds {what} (returned by {call})", copy, call)


#: The largest reward a run takes: float32's largest number. Replay memories and networks hold rewards
#: and returns as float32, where a larger one is infinity (and the agent would seem to diverge).
REWARD_LIMIT = float(np.finfo(np.float32).max)


def check_reward(reward: Any, copy: int = 0) -> float:
    """One env's reward as a float; an :class:`EnvProblem` when it is not a number, not finite or beyond float32."""
    try:
        bad = reward - reward  # NaN for NaN or infinity; 0 for every finite number
        if bad:
            raise nonfinite_reward(reward, copy)
        value = float(reward)  # a complex number or a one-element array stops here
    except (TypeError, ValueError):  # not a number; or an array of them, whose truth value numpy refuses
        raise not_a_number(reward, copy) from None
    except OverflowError:  # a whole number past float64's range
        value = math.inf
    if value > REWARD_LIMIT or value < -REWARD_LIMIT:
        raise EnvProblem(
            f"step() returned the reward {reward!r:.40}, beyond float32's range (±3.4e38) in which agents learn: "
            "the env is at fault, scale its rewards down",
            copy,
        )
    return value


def not_a_number(reward: Any, copy: int | None) -> EnvProblem:
    """The :class:`EnvProblem` for a reward that is no single number (text, None, an array)."""
    shape = np.shape(reward) if isinstance(reward, np.ndarray) else None
    what = f"an array of shape {shape}" if shape else f"of type {type(reward).__name__}"
    return EnvProblem(f"step() returned a reward {what}, not a number", copy)


def check_info(info: Any, call: str, copy: int = 0) -> None:
    """Raise :class:`EnvProblem` when an env's ``info`` is not a dict (Gymnasium's API says it is one).

    Runs call it where they read ``info`` anyway (resets and episode ends), never on every step.
    """
    if not isinstance(info, dict):
        raise EnvProblem(
            f"{call} returned info of type {type(info).__name__}, not a dict: the env is at fault, return a dict "
            "(e.g. {}) as info",
            copy,
            call,
        )


def check_done(terminated: Any, truncated: Any, copy: int = 0) -> None:
    """Raise :class:`EnvProblem` when ``terminated`` or ``truncated`` is not a bool (Gymnasium's API says they are).

    Text such as "no" would read as true and end every episode at its first step. Runs call it where an
    episode ends (a truthy value), never on every step.
    """
    for name, value in (("terminated", terminated), ("truncated", truncated)):
        if not isinstance(value, (bool, np.bool_)):
            raise EnvProblem(
                f"step() returned {name}={value!r:.40} of type {type(value).__name__}, not a bool: the env is at "
                f"fault, return True or False as {name}",
                copy,
            )


#: Keys of ``info`` that Gymnasium's vector envs write themselves when an episode ends.
RESERVED_INFO_KEYS = frozenset({"final_obs", "final_info", "_final_obs", "_final_info"})


class CopyChecked(gym.Wrapper[Any, Any, Any, Any]):
    """A copy that Gymnasium's own vector envs step, held to the lean vector env's rules.

    Gymnasium's sync vector env (Tuple and Dict observations) and its process-per-copy one would cast or
    merge what the copy returns; here it is checked first, as :class:`~gymlab.vector.LeanSyncVectorEnv`
    checks its copies. At every step: the reward a number, the info a dict without the keys the vector env reserves, a
    Discrete observation in range. At resets and episode ends: the observation against its space,
    ``terminated`` and ``truncated`` bools. Run inside a worker process, what it raises comes back to
    the run whole (:class:`EnvProblem` survives Gymnasium's re-raising). A ``close()`` that raises is
    ignored, as :func:`gymlab.envguard.close_env` does (Gymnasium closes a first copy while it starts).
    """

    def __init__(self, env: gym.Env[Any, Any], copy: int) -> None:
        super().__init__(env)
        self.copy = copy
        space = env.observation_space
        self._range = (int(space.start), int(space.start + space.n)) if isinstance(space, gym.spaces.Discrete) else None

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """The env's reset, its observation and info checked."""
        try:
            obs, info = self.env.reset(**kwargs)
        except EnvProblem:
            raise
        except Exception as exc:  # said with this copy's number, which a process-per-copy env's error drops
            raise raised("reset()", exc, self.copy) from exc
        self._check_info(info, "reset()")
        self._check_obs(obs, "reset()")
        return obs, info

    def step(self, action: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """The env's step, unchanged; refused where it breaks what its spaces and Gymnasium's API promise."""
        try:
            obs, reward, terminated, truncated, info = self.env.step(action)
        except EnvProblem:
            raise
        except Exception as exc:  # (sys.exit ends a worker process: the run names the copy and exit code)
            raise raised("step()", exc, self.copy) from exc
        check_reward(reward, self.copy)
        self._check_info(info, "step()")
        if terminated or truncated:
            check_done(terminated, truncated, self.copy)
            self._check_obs(obs, "step()")
        elif self._range is not None and not self._in_range(obs):
            self._check_obs(obs, "step()")
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        """The env's close; what it raises is dropped (closing never stops a run)."""
        with contextlib.suppress(Exception):  # nothing to save or say: the run reports its own ending
            self.env.close()

    def _in_range(self, obs: Any) -> bool:
        assert self._range is not None
        try:
            return bool(self._range[0] <= obs < self._range[1] and int(obs) == obs)
        except (TypeError, ValueError):
            return False

    def _check_info(self, info: Any, call: str) -> None:
        check_info(info, call, self.copy)
        taken = RESERVED_INFO_KEYS.intersection(info)
        if taken:
            raise EnvProblem(
                f"{call} returned info with the key {sorted(taken)[0]!r}, which Gymnasium's vector env writes when an "
                "episode ends: the env is at fault, rename that key",
                self.copy,
                call,
            )

    def _check_obs(self, obs: Any, call: str) -> None:
        space = self.env.observation_space
        if isinstance(space, ARRAY_SPACES):
            check_obs(space, obs, call, self.copy)
            if self._range is not None and not self._in_range(obs):
                raise EnvProblem(f"{call} returned {obs!r:.40}, which is not a value of {space}", self.copy, call)
        else:
            check_nested(space, obs, call, self.copy)


def check_obs(space: gym.Space[Any], obs: Any, call: str, copy: int = 0) -> None:
    """Raise :class:`EnvProblem` when an array observation misfits its space's shape or dtype, or is not finite."""
    if not isinstance(space, ARRAY_SPACES):
        return
    # Toy-text envs come here at every episode end and reset: an in-range integer of a Discrete space is
    # what the checks below conclude, in 0.2 µs instead of 3.
    if (
        type(space) is gym.spaces.Discrete
        and isinstance(obs, (int, np.integer))
        and space.start <= obs < space.start + space.n
    ):
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
    outside = out_of_bounds(space, arr) if isinstance(space, gym.spaces.Box) else _off_grid(space, arr)
    if outside is not None:
        raise EnvProblem(f"{call} returned an observation {outside}", copy, call)


def _off_grid(space: gym.Space[Any], arr: np.ndarray) -> str | None:
    """Where a Discrete, MultiDiscrete or MultiBinary observation takes a value its space does not have; else None."""
    try:
        inside = space.contains(arr.item() if arr.ndim == 0 else arr)
    except Exception:  # a value the space's own test trips on is not one of its values
        inside = False
    return None if inside else f"with a value outside {space}: the env breaks its own observation_space"


def out_of_bounds(space: gym.spaces.Box, obs: Any) -> str | None:
    """Where an observation leaves its Box's declared bounds, in words; None when it stays inside them."""
    arr = np.asarray(obs)
    if arr.shape != space.shape:
        return None
    with np.errstate(invalid="ignore"):
        below, above = arr < space.low, arr > space.high
    if not (below.any() or above.any()):
        return None
    index = int(np.flatnonzero(below | above)[0])
    value, low, high = arr.reshape(-1)[index], space.low.reshape(-1)[index], space.high.reshape(-1)[index]
    at = f" at index {tuple(int(i) for i in np.unravel_index(index, arr.shape))}" if arr.ndim else ""
    return (
        f"outside its declared bounds ({value:.4g}{at}, bounds [{low:.4g}, {high:.4g}]): "
        "the env breaks its own observation_space, fix the env or its bounds"
    )


def check_nested(space: gym.Space[Any], obs: Any, call: str, copy: int = 0) -> None:
    """:func:`check_obs` through Tuple and Dict spaces, part by part; a missing or extra part is a misfit too."""
    if isinstance(space, gym.spaces.Tuple):
        if not isinstance(obs, tuple) or len(obs) != len(space.spaces):
            raise EnvProblem(f"{call} returned {type(obs).__name__} for the Tuple space {space}", copy, call)
        for part, value in zip(space.spaces, obs, strict=True):
            check_nested(part, value, call, copy)
    elif isinstance(space, gym.spaces.Dict):
        if not isinstance(obs, Mapping) or set(obs) != set(space.spaces):
            raise EnvProblem(f"{call} returned an observation whose keys do not fit the Dict space {space}", copy, call)
        for key, part in space.spaces.items():
            check_nested(part, obs[key], call, copy)
    else:
        check_obs(space, obs, call, copy)


def batch_out_of_bounds(space: gym.Space[Any], batch: Any) -> str | None:
    """Where a batch of observations leaves a Box's declared bounds (see :func:`out_of_bounds`); else None."""
    if not isinstance(space, gym.spaces.Box) or not isinstance(batch, np.ndarray) or batch.shape[1:] != space.shape:
        return None
    for obs in batch:
        found = out_of_bounds(space, obs)
        if found is not None:
            return found
    return None


def check_spaces_declared(env: Any, env_id: str) -> None:
    """Refuse, in one line, an env without Gymnasium spaces or whose ``metadata`` is not a dict.

    Vector envs, videos and ``watch`` all read ``metadata``; ``gymlab check`` builds the env through
    this too, so check and train refuse it alike.
    """
    for name in ("observation_space", "action_space"):
        try:
            space = getattr(env, name)
        except AttributeError:
            space = None
        except Exception as exc:
            raise GymlabError(f"environment '{env_id}': reading its {name} raised {describe(exc)}") from None
        if not isinstance(space, gym.spaces.Space):
            what = "has no" if space is None else f"has a {type(space).__name__} as its"
            raise GymlabError(
                f"environment '{env_id}' {what} {name}: set it to a gymnasium.spaces.Space "
                "(as a class attribute or in __init__)"
            )
    metadata = getattr(env, "metadata", {})
    if not isinstance(metadata, Mapping):
        raise GymlabError(
            f"environment '{env_id}' has metadata of type {type(metadata).__name__}, not a dict: the env is at fault; "
            'set it to a dict, e.g. metadata = {"render_modes": [], "render_fps": 30}, or leave gymnasium.Env\'s own'
        )


def agent_fault(action_space: gym.Space[Any], actions: Any, what: str) -> GymlabError | None:
    """When a step raised, the error blaming the agent if its ``actions`` (N, ...) were outside ``action_space``.

    Only called on the error path: an env that asserts its actions' validity must not be blamed for
    an agent's out-of-range action. ``what`` is what the step raised, in words (``step() raised ...``).
    None when every copy's action was in the space (the env is at fault).
    """
    try:
        batch = list(actions) if not isinstance(actions, (dict, tuple)) else None
    except TypeError:
        batch = None
    if batch is None:  # a Dict or Tuple action batch: only the space's own test can say
        return None
    for i, action in enumerate(batch):
        try:
            value = action.item() if isinstance(action, np.ndarray) and action.ndim == 0 else action
            inside = action_space.contains(value)
        except Exception:
            inside = False
        if not inside:
            shown = value.item() if isinstance(value, np.generic) else value
            if isinstance(shown, np.ndarray):
                shown = np.array2string(shown, threshold=8)
            return GymlabError(
                f"the agent's action {shown} for copy {i} is outside the action space {action_space}: the agent is at "
                f"fault (the env's {what}); make the agent's act() return, for each of "
                "the N envs, an action its action_space contains"
            )
    return None
