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

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import VectorEnv

from gymlab import checkpoint, registry, video
from gymlab import tblog as tb
from gymlab.agent import Agent, Context, Transition, check_agent_spaces, env_actions, load_agent_class
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
    last_eval: float | None = None
    best_eval: float | None = None
    recent_returns: list[float] = field(default_factory=list)


#: Largest share of training time that recording videos may take (see ``_Trainer._maybe_record``).
VIDEO_TIME_SHARE = 0.05


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
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the global generator that libraries and users draw from
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


def build(config: Config) -> EnvSetup:
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
        eval_envs = registry.make_vec_env(run.env, 1, run.env_kwargs, run.wrappers, train=False)
        ctx = Context(obs_space, act_space, run.num_envs, run.seed, device, run.steps)
        agent = agent_cls(config.hparams, ctx)  # type: ignore[call-arg]
    except BaseException:
        envs.close()
        raise
    return EnvSetup(envs, eval_envs, agent)


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
        obs, _, _, _, infos = envs.step(env_actions(envs.single_action_space, agent.act(obs, explore=False)))
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
    trainer = _Trainer(config, run_dir, resume, until if until is not None else config.run.steps, progress)
    try:
        with _graceful_stop() as stop_flag:
            interrupted = trainer.run(stop_flag, stop_at)
        if not interrupted:
            trainer.evaluate()
        trainer.save(trainer.last_path)
    finally:
        trainer.close()
    s = trainer.state
    return TrainResult(run_dir, s.step, s.episodes, interrupted, s.last_eval, s.best_eval, trainer.last_path)


class _Trainer:
    """One run's envs, agent, logger and due points; :meth:`run` is the rollout loop itself."""

    def __init__(
        self, config: Config, run_dir: Path, resume: dict[str, Any] | None, total: int, progress: Progress | None
    ) -> None:
        run = config.run
        self.config, self.run_dir, self.total, self.progress = config, run_dir, total, progress
        seed_everything(run.seed)
        if run.threads > 0:
            # Measured: REINFORCE/DQN-sized nets on 2 cores run up to several times slower with 2
            # threads than with 1 (thread hand-offs cost more than the small matmuls they split).
            torch.set_num_threads(run.threads)
        setup = build(config)
        self.envs, self.eval_envs, self.agent = setup.envs, setup.eval_envs, setup.agent
        self.state = _LoopState()
        self.window = tb.MeanWindow()
        self.obs, _ = self.envs.reset(seed=run.seed)
        if resume is not None:
            self.obs = _restore(resume, self.agent, self.envs, self.state, self.window, self.obs)
        # Everything at the checkpoint's step was logged before it was saved; anything later that a
        # killed run logged is discarded by TensorBoard, so the curve has no doubled steps.
        self.logger = tb.RunLogger(run_dir, purge_step=self.state.step + 1 if resume is not None else None)
        if resume is None:
            self.logger.hparams(config.to_dict())
        # Videos: one greedy episode on a separate rendering env at each multiple of video_every.
        self.recorder = video.EpisodeRecorder(config, run_dir, self.logger) if run.video_every > 0 else None
        self.t_start, self.video_seconds = time.perf_counter(), 0.0
        self.last_path = run_dir / "checkpoints" / "last.pt"
        # Due points are multiples of each interval, so they follow from the step alone (a resume
        # with a larger budget gets them right, and they need no place in the checkpoint).
        step = self.state.step
        self.next_log = _next_multiple(step, run.log_every, total)
        self.next_eval = _next_multiple(step, run.eval_every, total)
        self.next_checkpoint = _next_multiple(step, run.checkpoint_every, total)
        self.next_video = min(_next_multiple(step, run.video_every, total), total)  # and one at the end
        self.progress_every = max(self.envs.num_envs, total // 400)
        self.next_progress = step
        self.t_window, self.s_window = time.perf_counter(), step
        if progress is not None:
            progress.start(total, step)

    def run(self, stop_flag: threading.Event, stop_at: int | None) -> bool:
        """Step envs and agent until the budget is spent; True if stopped early (Ctrl-C or ``stop_at``)."""
        agent, envs, state, window, n = self.agent, self.envs, self.state, self.window, self.envs.num_envs
        obs = self.obs
        space = envs.single_action_space
        clip = isinstance(space, gym.spaces.Box)  # Box actions reach the env clipped to its bounds
        last_step = min(self.total, stop_at) if stop_at is not None else self.total
        next_due = self._next_due(last_step)
        while state.step < self.total:
            action = agent.act(obs, explore=True)
            next_obs, reward, terminated, truncated, infos = envs.step(env_actions(space, action) if clip else action)
            real_next = next_obs
            if "final_obs" in infos:  # some copy ended an episode: the agent sees its true last obs
                real_next = next_obs.copy()
                for i in np.flatnonzero(infos["_final_obs"]):
                    real_next[i] = infos["final_obs"][i]
                self._record_episodes(infos)
            agent.observe(Transition(obs, action, reward, real_next, terminated, truncated))
            obs = self.obs = next_obs
            state.step += n
            metrics = agent.update(state.step)
            for key, value in metrics.items():
                if isinstance(value, str):
                    self.logger.text(f"train/{key}", value, state.step)
                else:
                    window.add(f"train/{key}", value)
            if state.step >= next_due:
                self._chores()
                next_due = self._next_due(last_step)
            if stop_flag.is_set() or state.step >= last_step:
                return state.step < self.total
        return False

    def _next_due(self, last_step: int) -> int:
        return min(self.next_log, self.next_eval, self.next_checkpoint, self.next_video, self.next_progress, last_step)

    def _record_episodes(self, infos: dict[str, Any]) -> None:
        state = self.state
        for _, ret, length in episode_stats(infos):
            state.episodes += 1
            self.window.add(tb.EPISODE_RETURN, ret)
            self.window.add(tb.EPISODE_LENGTH, length)
            state.recent_returns = [*state.recent_returns[-99:], ret]

    def _chores(self) -> None:
        """Whatever is due at this step, in order: log, evaluate, checkpoint, video, progress."""
        run, step, total = self.config.run, self.state.step, self.total
        if step >= self.next_log:
            now = time.perf_counter()
            self.window.add(tb.STEPS_PER_SECOND, (step - self.s_window) / max(now - self.t_window, 1e-9))
            self.logger.scalars(self.window.pop_means(), step)
            self.t_window, self.s_window = now, step
            self.next_log = _next_multiple(step, run.log_every, total)
        if step >= self.next_eval and step < total:  # the final evaluation happens after the loop
            self.evaluate()
        if step >= self.next_checkpoint and step < total:
            self.save(self.last_path)
            self.next_checkpoint = _next_multiple(step, run.checkpoint_every, total)
        if self.recorder is not None and step >= self.next_video:
            self._maybe_record(step)
            self.next_video = min(_next_multiple(step, run.video_every, total), total)
        if step >= self.next_progress:
            if self.progress is not None:
                self.progress.update(step, self.state.episodes, _recent(self.state))
            self.next_progress = step + self.progress_every

    def _maybe_record(self, step: int) -> None:
        """Record a video if recording so far stays within its share of the run's time (always at the end).

        An episode with rendering can cost seconds (Acrobot: ~0.7 s for 500 frames), so a fixed
        interval cannot bound the slowdown on fast runs; the time budget does, and the videos
        simply come less often than ``video_every`` when they would cost more.
        """
        assert self.recorder is not None
        elapsed = time.perf_counter() - self.t_start
        if step < self.total and self.video_seconds > VIDEO_TIME_SHARE * (elapsed - self.video_seconds):
            return
        start = time.perf_counter()
        self.recorder.record(self.agent, step, eval_seed(self.config.run.seed, 2**31 + step))
        self.video_seconds += time.perf_counter() - start

    def evaluate(self) -> None:
        """Greedy episodes on the evaluation env; log them, and keep the best checkpoint."""
        run, state = self.config.run, self.state
        seed = eval_seed(run.seed, state.eval_index)
        returns, lengths = evaluate(self.agent, self.eval_envs, run.eval_episodes, seed)
        state.eval_index += 1
        state.last_eval = float(returns.mean())
        self.logger.scalars(
            {
                tb.EVAL_RETURN: state.last_eval,
                tb.EVAL_RETURN_STD: float(returns.std()),
                tb.EVAL_LENGTH: float(lengths.mean()),
            },
            state.step,
        )
        self.next_eval = _next_multiple(state.step, run.eval_every, self.total)
        if state.best_eval is None or state.last_eval > state.best_eval:
            state.best_eval = state.last_eval
            self.save(self.last_path.with_name("best.pt"))

    def save(self, path: Path) -> None:
        """Checkpoint everything needed to continue exactly from here."""
        checkpoint.save(path, _payload(self.config, self.agent, self.envs, self.state, self.window, self.obs))

    def close(self) -> None:
        """Final progress line; close recorder, logger and envs."""
        if self.progress is not None:
            self.progress.update(self.state.step, self.state.episodes, _recent(self.state))
            self.progress.close()
        if self.recorder is not None:
            self.recorder.close()
        self.logger.close()
        self.envs.close()
        self.eval_envs.close()


def _recent(state: _LoopState) -> float | None:
    return float(np.mean(state.recent_returns)) if state.recent_returns else None


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
