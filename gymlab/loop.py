"""The one rollout loop every agent trains through.

It moves transitions from a Gymnasium vector env to an agent, evaluates the greedy policy on a
separate env, and writes everything observable (TensorBoard scalars, checkpoints) into the run
folder. It knows nothing of any algorithm: an agent learns when its ``update`` says so.

Autoreset: the envs run in same-step mode, so each ``step`` is a real transition. When a copy's
episode ends, the observation returned is already the next episode's first one; the ended
episode's last observation is in ``infos["final_obs"]`` and is what the agent sees as
``next_obs`` (a truncated episode bootstraps from it; a terminated one does not).

Episode statistics come from ``infos["final_info"]["episode"]``, written by the
``RecordEpisodeStatistics`` wrapper that ``registry.make_env`` puts innermost, so an Atari game's
score is the whole game's even when training ends an episode at each lost life.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from gymnasium.vector import VectorEnv

from gymlab import checkpoint, registry, tblayout, video
from gymlab import logging as tb
from gymlab.agent import Agent, Context, Transition, check_agent_spaces, load_agent_class
from gymlab.config import Config
from gymlab.errors import GymlabError


class Progress(Protocol):
    """Where the loop reports progress; the CLI draws it (the core never prints)."""

    def start(self, total: int, initial: int) -> None:
        """Training starts (or resumes at ``initial``) towards ``total`` env steps."""
        ...

    def update(self, step: int, episodes: int, recent_return: float | None) -> None:
        """Called a few hundred times per run."""
        ...

    def close(self) -> None:
        """Training ended."""
        ...


@dataclass
class TrainResult:
    """How a call to :func:`train` ended."""

    run_dir: Path
    step: int
    episodes: int
    interrupted: bool
    last_eval: float | None
    best_eval: float | None
    checkpoint: Path | None


@dataclass
class _LoopState:
    step: int = 0
    episodes: int = 0
    eval_index: int = 0
    next_eval: int = 0
    next_checkpoint: int = 0
    next_log: int = 0
    last_eval: float | None = None
    best_eval: float | None = None
    recent_returns: list[float] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GymlabError("--device cuda was asked for but no CUDA device is available; use --device auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def eval_seed(seed: int, index: int) -> int:
    """The reset seed of the ``index``-th evaluation: fixed per run, independent of training envs."""
    return int(np.random.SeedSequence([seed, 0xE7A1, index]).generate_state(1)[0])


@dataclass(frozen=True)
class EnvSetup:
    """The envs and the agent of one run, built from its config."""

    envs: VectorEnv[Any, Any, Any]
    eval_envs: VectorEnv[Any, Any, Any]
    agent: Agent
    device: torch.device


def build(config: Config, *, num_eval_envs: int = 1) -> EnvSetup:
    """Make the training and evaluation envs and the agent, checking the agent fits the env."""
    run = config.run
    device = resolve_device(run.device)
    agent_cls = load_agent_class(run.agent)
    envs = registry.make_vec_env(
        run.env, run.num_envs, run.env_kwargs, run.wrappers, vectorization=run.vectorization, train=True
    )
    try:
        obs_space, act_space = envs.single_observation_space, envs.single_action_space
        check_agent_spaces(agent_cls, run.env, obs_space, act_space)
        eval_envs = registry.make_vec_env(run.env, num_eval_envs, run.env_kwargs, run.wrappers, train=False)
        ctx = Context(obs_space, act_space, run.num_envs, run.seed, device, run.steps)
        agent = agent_cls(config.hparams, ctx)  # type: ignore[call-arg]
    except BaseException:
        envs.close()
        raise
    return EnvSetup(envs, eval_envs, agent, device)


def preflight(config: Config) -> None:
    """Check, before any folder is created, that the env exists and the agent can handle its spaces."""
    run = config.run
    agent_cls = load_agent_class(run.agent)
    env = registry.make_env(run.env, run.env_kwargs, run.wrappers, train=True)
    try:
        check_agent_spaces(agent_cls, run.env, env.observation_space, env.action_space)
    finally:
        env.close()


def episode_stats(infos: dict[str, Any]) -> Iterator[tuple[int, float, int]]:
    """``(env index, return, length)`` of every episode that ended in this step."""
    final = infos.get("final_info")
    if not final or "episode" not in final:
        return
    stats, mask = final["episode"], final["_episode"]
    for i in np.flatnonzero(mask):
        yield int(i), float(stats["r"][i]), int(stats["l"][i])


def evaluate(
    agent: Agent,
    envs: VectorEnv[Any, Any, Any],
    episodes: int,
    seed: int,
    on_step: Callable[[np.ndarray], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``episodes`` whole episodes of the greedy policy; returns their returns and lengths.

    Episodes are split evenly over the copies, and each copy's surplus episodes are ignored, so
    short episodes are not over-represented. ``on_step`` sees each step's observations (for video).
    """
    n = envs.num_envs
    quota = np.array([episodes // n + (i < episodes % n) for i in range(n)])
    done = np.zeros(n, dtype=int)
    returns: list[float] = []
    lengths: list[int] = []
    obs, _ = envs.reset(seed=seed)
    while (done < quota).any():
        if on_step is not None:
            on_step(obs)
        obs, _, _, _, infos = envs.step(agent.act(obs, explore=False))
        for i, ret, length in episode_stats(infos):
            if done[i] < quota[i]:
                done[i] += 1
                returns.append(ret)
                lengths.append(length)
    return np.asarray(returns), np.asarray(lengths)


@contextmanager
def _graceful_stop() -> Iterator[threading.Event]:
    """Turn the first Ctrl-C / SIGTERM into a flag the loop checks between steps.

    Stopping between steps (never inside an update) is what makes the saved checkpoint exact.
    A second Ctrl-C interrupts at once.
    """
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _next_multiple(step: int, every: int, total: int) -> int:
    """The first multiple of ``every`` after ``step`` (the end of the budget when ``every`` is 0)."""
    return total if every <= 0 else (step // every + 1) * every


def train(
    config: Config,
    run_dir: Path,
    *,
    resume: dict[str, Any] | None = None,
    until: int | None = None,
    stop_at: int | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train ``config``'s agent on its env, writing TensorBoard events and checkpoints to ``run_dir``.

    Args:
        config: the validated run config.
        run_dir: the run folder (exists; holds ``config.yaml``).
        resume: a loaded checkpoint to continue from, exactly where it stopped.
        until: total env steps to reach (default: the config's ``steps``, the schedules' budget).
        stop_at: stop as if interrupted once this many steps are done, leaving a checkpoint.
        progress: receives progress updates for a console display.
    """
    run = config.run
    total = until if until is not None else run.steps
    seed_everything(run.seed)
    setup = build(config)
    envs, eval_envs, agent = setup.envs, setup.eval_envs, setup.agent
    state = _LoopState()
    window = tb.MeanWindow()
    obs, _ = envs.reset(seed=run.seed)
    if resume is not None:
        obs = _restore(resume, agent, envs, state, window, obs)
    # Due points are multiples of each interval, so they follow from the step alone (and a resume
    # with a larger budget gets them right).
    state.next_eval = _next_multiple(state.step, run.eval_every, total)
    state.next_checkpoint = _next_multiple(state.step, run.checkpoint_every, total)
    state.next_log = _next_multiple(state.step, run.log_every, total)

    # Everything at the checkpoint's step was logged before it was saved; anything later that a
    # killed run logged is discarded by TensorBoard, so the curve has no doubled steps.
    logger = tb.RunLogger(run_dir, purge_step=state.step + 1 if resume is not None else None)
    if resume is None:
        logger.hparams(config.to_dict())
    tblayout.install(logger, config.to_dict(), write_layout=resume is None)
    # Videos: one greedy episode on a separate rendering env at each multiple of video_every, and
    # at the end; the due point is a local (not checkpointed) since it follows from the step.
    recorder = video.EpisodeRecorder(config, run_dir, logger) if run.video_every > 0 else None
    next_video = min(_next_multiple(state.step, run.video_every, total), total)
    ckpt_dir = run_dir / "checkpoints"
    last_path = ckpt_dir / "last.pt"
    n = envs.num_envs
    interrupted = False
    t_window, s_window = time.perf_counter(), state.step
    progress_every = max(n, total // 400)
    next_progress = state.step
    if progress is not None:
        progress.start(total, state.step)

    def save(path: Path) -> None:
        checkpoint.save(path, _payload(config, agent, envs, state, window, obs))

    try:
        with _graceful_stop() as stop_flag:
            while state.step < total:
                action = agent.act(obs, explore=True)
                next_obs, reward, terminated, truncated, infos = envs.step(action)
                real_next = next_obs
                if "final_obs" in infos:  # some copy ended an episode: use its true last obs
                    real_next = next_obs.copy()
                    for i in np.flatnonzero(infos["_final_obs"]):
                        real_next[i] = infos["final_obs"][i]
                    for _, ret, length in episode_stats(infos):
                        state.episodes += 1
                        window.add(tb.EPISODE_RETURN, ret)
                        window.add(tb.EPISODE_LENGTH, length)
                        state.recent_returns = [*state.recent_returns[-99:], ret]
                agent.observe(Transition(obs, action, reward, real_next, terminated, truncated))
                obs = next_obs
                state.step += n
                metrics = agent.update(state.step)
                for key, value in metrics.items():
                    if isinstance(value, str):
                        logger.text(f"train/{key}", value, state.step)
                    else:
                        window.add(f"train/{key}", value)

                if state.step >= state.next_log:
                    now = time.perf_counter()
                    window.add(tb.STEPS_PER_SECOND, (state.step - s_window) / max(now - t_window, 1e-9))
                    logger.scalars(window.pop_means(), state.step)
                    t_window, s_window = now, state.step
                    state.next_log = _next_multiple(state.step, run.log_every, total)
                if state.step >= state.next_eval and state.step < total:
                    _evaluate_and_log(config, agent, eval_envs, state, logger, ckpt_dir, save, total)
                if state.step >= state.next_checkpoint and state.step < total:
                    save(last_path)
                    state.next_checkpoint = _next_multiple(state.step, run.checkpoint_every, total)
                if recorder is not None and state.step >= next_video:
                    recorder.record(agent, state.step, eval_seed(run.seed, 2**31 + state.step))
                    next_video = min(_next_multiple(state.step, run.video_every, total), total)
                if progress is not None and state.step >= next_progress:
                    progress.update(state.step, state.episodes, _recent(state))
                    next_progress = state.step + progress_every
                if stop_flag.is_set() or (stop_at is not None and state.step >= stop_at):
                    interrupted = True
                    break
        if not interrupted:
            _evaluate_and_log(config, agent, eval_envs, state, logger, ckpt_dir, save, total)
        save(last_path)
    finally:
        if progress is not None:
            progress.update(state.step, state.episodes, _recent(state))
            progress.close()
        if recorder is not None:
            recorder.close()
        logger.close()
        envs.close()
        eval_envs.close()
    return TrainResult(
        run_dir, state.step, state.episodes, interrupted, state.last_eval, state.best_eval, last_path
    )


def _recent(state: _LoopState) -> float | None:
    return float(np.mean(state.recent_returns)) if state.recent_returns else None


def _evaluate_and_log(
    config: Config,
    agent: Agent,
    eval_envs: VectorEnv[Any, Any, Any],
    state: _LoopState,
    logger: tb.RunLogger,
    ckpt_dir: Path,
    save: Callable[[Path], None],
    total: int,
) -> None:
    run = config.run
    returns, lengths = evaluate(agent, eval_envs, run.eval_episodes, eval_seed(run.seed, state.eval_index))
    state.eval_index += 1
    state.last_eval = float(returns.mean())
    logger.scalars(
        {
            tb.EVAL_RETURN: state.last_eval,
            tb.EVAL_RETURN_STD: float(returns.std()),
            tb.EVAL_LENGTH: float(lengths.mean()),
        },
        state.step,
    )
    state.next_eval = _next_multiple(state.step, run.eval_every, total)
    if state.best_eval is None or state.last_eval > state.best_eval:
        state.best_eval = state.last_eval
        save(ckpt_dir / "best.pt")


def _payload(
    config: Config,
    agent: Agent,
    envs: VectorEnv[Any, Any, Any],
    state: _LoopState,
    window: tb.MeanWindow,
    obs: np.ndarray,
) -> dict[str, Any]:
    return {
        "agent": config.run.agent,
        "env": config.run.env,
        "config": config.to_dict(),
        "agent_state": agent.state_dict(),
        "loop": {**vars(state), "window": window.state_dict(), "obs": obs},
        "rng": checkpoint.rng_state(),
        "envs": checkpoint.vector_env_state(envs),
    }


def _restore(
    ckpt: dict[str, Any],
    agent: Agent,
    envs: VectorEnv[Any, Any, Any],
    state: _LoopState,
    window: tb.MeanWindow,
    obs: np.ndarray,
) -> np.ndarray:
    """Put agent, loop counters, generators and envs back where the checkpoint left them."""
    agent.load_state_dict(ckpt["agent_state"])
    loop = dict(ckpt["loop"])
    window.load_state_dict(loop.pop("window"))
    saved_obs = loop.pop("obs")
    for key, value in loop.items():
        setattr(state, key, value)
    checkpoint.set_rng_state(ckpt["rng"])
    if checkpoint.set_vector_env_state(envs, ckpt["envs"]):
        return np.asarray(saved_obs)
    return obs  # env internals could not be captured: continue from fresh episodes
