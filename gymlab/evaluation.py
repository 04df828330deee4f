"""Evaluation: greedy episodes of a policy, seeded from named streams, on the one evaluation env.

Every place that plays a run's greedy policy draws its reset seeds from the run's seed through a
named stream (:func:`eval_seed`), so training-time evaluations, ``gymlab eval``, ``watch`` and
the recorded videos never share episodes with each other or with training. :func:`evaluate` is
the default :data:`Evaluator`; a caller (a benchmark timing it) may hand the loop another.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium.vector import VectorEnv

from gymlab.agent import Agent
from gymlab.build import build_policy, eval_envs
from gymlab.console import EvalHeartbeat
from gymlab.envfault import EnvProblem
from gymlab.envguard import VectorGuard, close_env, episode_cap
from gymlab.errors import Interrupted
from gymlab.runs import load_run
from gymlab.signals import graceful_stop
from gymlab.vector import LeanSyncVectorEnv

#: Where each stream's indices start in a run's evaluation seed sequence. The values are fixed: the
#: episodes of runs and tables made before depend on them.
SEED_STREAMS = {"eval": 0, "cli": 1_000_000, "watch": 2_000_000, "video": 2**31}
_EVAL_KEY, _CAP_KEY = 0xE7A1, 0xCA9


def eval_seed(run_seed: int, stream: str, index: int = 0) -> int:
    """The reset seed of the ``index``-th episode batch of ``stream`` (eval, cli, watch, video) of a run."""
    return int(np.random.SeedSequence([run_seed, _EVAL_KEY, SEED_STREAMS[stream] + index]).generate_state(1)[0])


class Evaluator(Protocol):
    """What plays evaluation episodes: :func:`evaluate`'s signature."""

    def __call__(
        self,
        agent: Agent,
        envs: VectorEnv[Any, Any, Any],
        episodes: int,
        seed: int,
        on_step: Callable[[np.ndarray], None] | None = None,
        *,
        max_steps: int | None = None,
        stop: threading.Event | None = None,
        on_capped: Callable[[int, float], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Returns the episodes' returns and lengths."""
        ...


def episode_stats(infos: dict[str, Any]) -> list[tuple[int, float, int]]:
    """``(env index, return, length)`` of every episode that ended in this step."""
    final = infos.get("final_info")
    if not final or "episode" not in final:
        return []
    stats, mask = final["episode"], final["_episode"]
    return [(int(i), float(stats["r"][i]), int(stats["l"][i])) for i in np.flatnonzero(mask)]


def evaluate(
    agent: Agent,
    envs: VectorEnv[Any, Any, Any],
    episodes: int,
    seed: int,
    on_step: Callable[[np.ndarray], None] | None = None,
    *,
    max_steps: int | None = None,
    stop: threading.Event | None = None,
    on_capped: Callable[[int, float], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``episodes`` whole episodes of the greedy policy; returns their returns and lengths.

    Episodes are split evenly over the copies, and each copy's surplus episodes are ignored, so
    short episodes are not over-represented. ``on_step`` sees each step's observations (for video).

    An episode ends where the env says it ends (terminated or truncated), whether or not a wrapper
    passed its statistics on. Every episode ends: at the env's own time limit, or, on an env without one, after
    ``max_steps`` steps (the run key ``eval_max_steps``; its default when None). A cut episode
    counts as truncated, with its return so far, and is reported to ``on_capped(length, return)``.
    ``stop`` is checked before each step; once it is set, :class:`Interrupted` is raised. Without
    one, Ctrl-C and SIGTERM stop the evaluation that way for its duration (``gymlab eval``).
    A misbehaving env raises :class:`~gymlab.envfault.EnvProblem` (a one-line ``GymlabError``).
    """
    if stop is None:
        with graceful_stop() as own:
            return evaluate(agent, envs, episodes, seed, on_step, max_steps=max_steps, stop=own, on_capped=on_capped)
    n = envs.num_envs
    cap = episode_cap(envs, max_steps)
    guard = VectorGuard(envs)
    masked_reset = isinstance(envs, (LeanSyncVectorEnv, gym.vector.SyncVectorEnv))
    quota = np.array([episodes // n + (i < episodes % n) for i in range(n)])
    done = np.zeros(n, dtype=np.int64)
    ep_return = np.zeros(n)  # (N,) return so far of each copy's running episode
    ep_length = np.zeros(n, dtype=np.int64)  # (N,)
    returns: list[float] = []
    lengths: list[int] = []
    cuts = 0
    obs, _ = guard.reset(seed=seed)
    while (done < quota).any():
        if stop.is_set():
            raise Interrupted(f"interrupted during evaluation ({len(returns)} of {episodes} episodes played)")
        if on_step is not None:
            on_step(obs)
        obs, reward, terminated, truncated, infos = guard.step(agent.act(obs, explore=False))
        ep_return += reward
        ep_length += 1
        ended = np.logical_or(terminated, truncated)
        if ended.any():
            # An episode counts where it ends; its return and length are the episode statistics' (the env's own
            # rewards, recorded innermost), or the sums kept here where a wrapper dropped that info.
            stats = {i: (ret, length) for i, ret, length in episode_stats(infos)}
            for i in np.flatnonzero(ended):
                if done[i] < quota[i]:
                    ret, length = stats.get(int(i), (float(ep_return[i]), int(ep_length[i])))
                    done[i] += 1
                    returns.append(ret)
                    lengths.append(length)
        ep_return[ended], ep_length[ended] = 0.0, 0
        capped = ep_length >= cap  # (N,) bool: running past the cap on an env without a time limit
        if capped.any():
            for c in np.flatnonzero(capped & (done < quota)):
                done[c] += 1
                returns.append(float(ep_return[c]))
                lengths.append(int(ep_length[c]))
                if on_capped is not None:
                    on_capped(int(ep_length[c]), float(ep_return[c]))
            if not (done < quota).any():
                break
            # Fresh episodes where the cap struck; copies that cannot be reset alone all start anew.
            cuts += 1
            reset_seed = int(np.random.SeedSequence([seed, _CAP_KEY, cuts]).generate_state(1)[0])
            mask = capped if masked_reset else np.ones(n, dtype=bool)
            obs, _ = guard.reset(seed=reset_seed, options={"reset_mask": mask})
            ep_return[mask], ep_length[mask] = 0.0, 0
    return np.asarray(returns), np.asarray(lengths)


def evaluate_run(
    run: Path,
    episodes: int,
    *,
    which: str = "last",
    seed: int | None = None,
    device: str | None = None,
    trust: tuple[str, ...] = (),
    evaluator: Evaluator = evaluate,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """What ``gymlab eval --json`` prints (``benchmarks/results.py`` uses it too).

    Plays ``episodes`` greedy episodes of the run's ``which`` checkpoint (last or best) on the eval
    env, seeded by ``seed`` or, by default, the run's own ``cli`` seed stream. Besides the JSON
    keys, ``eval_max_steps`` says where ``capped_episodes`` were cut. ``say`` gets the line of an
    evaluation that plays long (:class:`~gymlab.console.EvalHeartbeat`).
    """
    loaded = load_run(run, which, trust)
    cfg, r = loaded.config, loaded.config.run
    agent = build_policy(cfg, loaded.checkpoint, device)
    envs = eval_envs(cfg)
    cut: list[int] = []  # lengths of the episodes cut at eval_max_steps (an env without a time limit)
    heartbeat = None if say is None else EvalHeartbeat(say, loaded.checkpoint.step, episodes, envs.num_envs)
    try:
        returns, lengths = evaluator(
            agent,
            envs,
            episodes,
            seed if seed is not None else eval_seed(r.seed, "cli"),
            heartbeat,
            max_steps=r.eval_max_steps,
            on_capped=lambda n, ret: cut.append(n),
        )
    except EnvProblem as exc:
        raise exc.for_user(r.env, r.wrappers) from None
    finally:
        close_env(envs)
    return {
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std()),
        "episodes": len(returns),
        "mean_length": float(lengths.mean()),
        "capped_episodes": len(cut),
        "returns": [float(x) for x in returns],
        "checkpoint": str(loaded.path),
        "step": loaded.checkpoint.step,
        "agent": r.agent,
        "env": r.env,
        "eval_max_steps": r.eval_max_steps,
    }
