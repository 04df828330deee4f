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

Run-time safety: evaluation episodes end at the env's time limit, or at the run key
``eval_max_steps`` on an env without one (logged, and counted as truncated). The first Ctrl-C or
SIGTERM stops whatever runs (a training step, an evaluation or video step) at its next step and
saves a checkpoint; during start-up it stops at once. The first NaN or infinite reward or
observation (from the env), metric (from ``update``) or parameter (checked before each save)
stops the run with one line naming the step and the source, leaving the last good checkpoint as
it was.
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import VectorEnv

from gymlab import checkpoint, registry, video
from gymlab import tblog as tb
from gymlab.agent import (
    Agent,
    AgentClass,
    Context,
    Transition,
    agent_phases,
    check_agent_spaces,
    check_config,
    env_actions,
    ignore_text,
    load_agent_class,
    run_phase,
)
from gymlab.config import Config
from gymlab.errors import GymlabError, Interrupted
from gymlab.vector import EnvProblem, LeanSyncVectorEnv, episode_cap, nonfinite_obs, nonfinite_reward, raised


class Progress(Protocol):
    """Where the loop reports progress; the CLI draws it (the core never prints)."""

    def start(self, total: int, initial: int) -> None:
        """Training starts (or resumes at ``initial``) towards ``total`` env steps."""
        ...

    def update(self, step: int, episodes: int, recent_return: float | None) -> None:
        """Called a few hundred times per run."""
        ...

    def phase(self, name: str, done: int, total: int) -> None:
        """An offline phase (pre-training before any env step) has done ``done`` of its ``total`` iterations."""
        ...

    def note(self, message: str) -> None:
        """Show one line of text from the agent (``Context.text``) without disturbing the display."""
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
    stopped: bool = False  # ended early because ``on_eval`` asked (e.g. a sweep pruned it); checkpoint saved


@dataclass
class _LoopState:
    step: int = 0
    episodes: int = 0
    eval_index: int = 0
    last_eval: float | None = None
    best_eval: float | None = None
    recent_returns: list[float] = field(default_factory=list)
    eval_due: bool = False  # an evaluation was interrupted at ``step``: a resume plays it first
    phase_done: int = 0  # iterations of the agent's offline phases done, over all its phases


# The finiteness checks compute NaN on purpose when a number is not finite, then stop the run in
# one line; numpy's warning about that NaN would be a second line.
warnings.filterwarnings(
    "ignore", r"(invalid value|overflow) encountered in (reduce|scalar subtract)", RuntimeWarning, r"gymlab\.loop$"
)

#: TensorBoard scalar: evaluation episodes cut at ``eval_max_steps`` (written only when some were).
EVAL_CAPPED = "eval/capped_episodes"

#: Longest time between two checkpoints while an agent's offline phases run (and one at each phase's end).
PHASE_CHECKPOINT_SECONDS = 60.0

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


def make_context(
    config: Config,
    observation_space: gym.Space[Any],
    action_space: gym.Space[Any],
    *,
    num_envs: int | None = None,
    device: torch.device | None = None,
    text: Callable[[str, str], None] = ignore_text,
) -> Context:
    """The agent's :class:`Context` for this config (``num_envs`` and ``device`` default to the config's)."""
    run = config.run
    return Context(
        observation_space,
        action_space,
        run.num_envs if num_envs is None else num_envs,
        run.seed,
        resolve_device(run.device) if device is None else device,
        run.steps,
        env_id=run.env,
        env_kwargs=MappingProxyType(run.env_kwargs),
        text=text,
    )


def build(config: Config, text: Callable[[str, str], None] = ignore_text) -> EnvSetup:
    """Make the training and evaluation envs and the agent, checking the agent fits the env and config.

    ``text`` is the agent's text channel (``Context.text``).
    """
    run = config.run
    device = resolve_device(run.device)
    agent_cls = load_agent_class(run.agent)
    envs = registry.make_vec_env(
        run.env, run.num_envs, run.env_kwargs, run.wrappers, vectorization=run.vectorization, train=True
    )
    try:
        obs_space, act_space = envs.single_observation_space, envs.single_action_space
        check_agent_spaces(agent_cls, run.env, obs_space, act_space)
        ctx = make_context(config, obs_space, act_space, device=device, text=text)
        _check_config(agent_cls, config, ctx)
        # Evaluation on the same kind of env as training (ALE's native one or the Python wrappers), in this process.
        evec = "sync" if run.vectorization == "async" else run.vectorization
        eval_envs = registry.make_vec_env(run.env, 1, run.env_kwargs, run.wrappers, vectorization=evec, train=False)
        try:
            agent = agent_cls(config.hparams, ctx)
        except BaseException:
            eval_envs.close()
            raise
    except BaseException:
        envs.close()
        raise
    return EnvSetup(envs, eval_envs, agent)


def preflight(config: Config) -> None:
    """Check, before any folder is created, that the env exists and the agent can handle its spaces and config."""
    run = config.run
    agent_cls = load_agent_class(run.agent)
    env = registry.make_env(run.env, run.env_kwargs, run.wrappers, train=True)
    try:
        check_agent_spaces(agent_cls, run.env, env.observation_space, env.action_space)
        _check_config(agent_cls, config, make_context(config, env.observation_space, env.action_space))
    finally:
        env.close()


def _check_config(agent_cls: AgentClass, config: Config, ctx: Context) -> None:
    problem = check_config(agent_cls, config.hparams, ctx)
    if problem is not None:
        raise GymlabError(f"agent '{config.run.agent}' cannot run this config: {problem}")


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
    *,
    max_steps: int | None = None,
    stop: threading.Event | None = None,
    on_capped: Callable[[int, float], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``episodes`` whole episodes of the greedy policy; returns their returns and lengths.

    Episodes are split evenly over the copies, and each copy's surplus episodes are ignored, so
    short episodes are not over-represented. ``on_step`` sees each step's observations (for video).

    Every episode ends: at the env's own time limit, or, on an env without one, after
    ``max_steps`` steps (the run key ``eval_max_steps``; its default when None). A cut episode
    counts as truncated, with its return so far, and is reported to ``on_capped(length, return)``.
    ``stop`` is checked before each step; once it is set, :class:`Interrupted` is raised. Without
    one, Ctrl-C and SIGTERM stop the evaluation that way for its duration (``gymlab eval``).
    A misbehaving env raises :class:`~gymlab.vector.EnvProblem` (a one-line ``GymlabError``).
    """
    if stop is None:
        with graceful_stop() as own:
            return evaluate(agent, envs, episodes, seed, on_step, max_steps=max_steps, stop=own, on_capped=on_capped)
    n = envs.num_envs
    cap = episode_cap(envs, max_steps)
    guard = _step_guard(envs)
    masked_reset = isinstance(envs, (LeanSyncVectorEnv, gym.vector.SyncVectorEnv))
    quota = np.array([episodes // n + (i < episodes % n) for i in range(n)])
    done = np.zeros(n, dtype=np.int64)
    ep_return = np.zeros(n)  # (N,) return so far of each copy's running episode
    ep_length = np.zeros(n, dtype=np.int64)  # (N,)
    returns: list[float] = []
    lengths: list[int] = []
    cuts = 0
    obs, _ = _env_call(envs.reset, "reset()", seed=seed)
    while (done < quota).any():
        if stop.is_set():
            raise Interrupted(f"interrupted during evaluation ({len(returns)} of {episodes} episodes played)")
        if on_step is not None:
            on_step(obs)
        actions = env_actions(envs.single_action_space, agent.act(obs, explore=False))
        obs, reward, terminated, truncated, infos = _env_call(envs.step, "step()", actions)
        if guard is not None:
            guard(obs, reward)
        ep_return += reward
        ep_length += 1
        for i, ret, length in episode_stats(infos):
            if done[i] < quota[i]:
                done[i] += 1
                returns.append(ret)
                lengths.append(length)
        ended = np.logical_or(terminated, truncated)
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
            reset_seed = int(np.random.SeedSequence([seed, 0xCA9, cuts]).generate_state(1)[0])
            mask = capped if masked_reset else np.ones(n, dtype=bool)
            obs, _ = _env_call(envs.reset, "reset()", seed=reset_seed, options={"reset_mask": mask})
            ep_return[mask], ep_length[mask] = 0.0, 0
    return np.asarray(returns), np.asarray(lengths)


def _env_call(fn: Callable[..., Any], call: str, *args: Any, **kwargs: Any) -> Any:
    """Call a vector env's ``reset``/``step``, turning what a user env raises into an :class:`EnvProblem`."""
    try:
        return fn(*args, **kwargs)
    except (EnvProblem, Interrupted):
        raise
    except Exception as exc:
        raise raised(call, exc, copy=None) from exc


def _step_guard(envs: VectorEnv[Any, Any, Any]) -> Callable[[Any, np.ndarray], None] | None:
    """The finiteness check of each step's observations and rewards that the vector env leaves to the loop.

    None for :class:`~gymlab.vector.LeanSyncVectorEnv`, which checks as it steps. Otherwise one
    reduction over the rewards, and one over float array observations (Dict or Tuple
    observations are not looked into).
    """
    if isinstance(envs, LeanSyncVectorEnv):
        return None
    space = envs.single_observation_space
    float_obs = isinstance(space, gym.spaces.Box) and np.dtype(space.dtype).kind == "f"

    def guard(obs: Any, reward: np.ndarray) -> None:
        if not math.isfinite(np.sum(reward)):  # a NaN/inf, or a sum that overflowed: find the copy
            for i, r in enumerate(np.asarray(reward, dtype=np.float64).reshape(-1)):
                if not math.isfinite(r):
                    raise nonfinite_reward(r, i)
        if float_obs and not math.isfinite(np.sum(obs)):
            for i, o in enumerate(obs):
                if not np.isfinite(o).all():
                    raise nonfinite_obs(o, "step()", i)

    return guard


class StartUpInterrupt(KeyboardInterrupt):
    """A Ctrl-C or SIGTERM while starting up (see :func:`starting`), raised by the signal handler itself.

    A ``KeyboardInterrupt``, as a Ctrl-C there always was: no ``except Exception`` in the code it
    interrupts swallows it, and the runner and the CLI treat it as "stopped, nothing saved".
    """


class StopFlag(threading.Event):
    """Set by the first Ctrl-C or SIGTERM; the loop, evaluations, videos and ``watch`` check it at each step."""

    def __init__(self) -> None:
        super().__init__()
        #: While True (start-up: building envs and agent), the first signal interrupts at once (see ``starting``).
        self.at_once = False


@contextmanager
def graceful_stop() -> Iterator[StopFlag]:
    """Turn the first Ctrl-C / SIGTERM into a flag checked at each step of whatever runs.

    Stopping between steps (never inside an update) is what makes the saved checkpoint exact.
    Inside :func:`starting` (start-up) the first signal interrupts right away, as
    :class:`StartUpInterrupt`. A second Ctrl-C interrupts at once (plain ``KeyboardInterrupt``).
    Outside the main thread no handler can be installed, and the flag is never set.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()
        if flag.at_once:
            raise StartUpInterrupt(
                f"{signal.Signals(signum).name} while starting up: stopped before anything was saved"
            )

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


_graceful_stop = graceful_stop  # the name it had before it was shared with evaluate and watch


@contextmanager
def starting(flag: StopFlag) -> Iterator[None]:
    """Start-up under ``flag``'s handler: a signal stops it at once, raising :class:`StartUpInterrupt`."""
    flag.at_once = True
    try:
        yield
    finally:
        flag.at_once = False


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
    on_eval: Callable[[int, float], bool] | None = None,
) -> TrainResult:
    """Train ``config``'s agent on its env, writing TensorBoard events and checkpoints to ``run_dir``.

    Args:
        config: the validated run config.
        run_dir: the run folder (exists; holds ``config.yaml``).
        resume: a loaded checkpoint to continue from, exactly where it stopped.
        until: total env steps to reach (default: the config's ``steps``, the schedules' budget).
        stop_at: stop as if interrupted once this many steps are done, leaving a checkpoint.
        progress: receives progress updates for a console display.
        on_eval: called as ``on_eval(step, mean_return)`` after each evaluation; True stops the run
            there with a checkpoint (``TrainResult.stopped``), as a sweep's pruner does.

    Raises:
        StartUpInterrupt: a signal arrived while the run was starting up (a ``KeyboardInterrupt``;
            nothing saved).
        GymlabError: a NaN or infinite reward, observation, metric or parameter, or an env that
            raised or returned what its space does not allow; the message names the step, the
            source and the last good checkpoint, which is left as it was.

    """
    with graceful_stop() as stop:
        with starting(stop):
            trainer = _Trainer(config, run_dir, resume, until if until is not None else config.run.steps, progress)
        trainer.on_eval = on_eval
        try:
            try:
                interrupted = trainer.run(stop, stop_at)
                if not interrupted:
                    interrupted = not trainer.final_evaluation(stop)
                trainer.save(trainer.last_path)
            except (EnvProblem, _NonFinite) as exc:
                raise GymlabError(trainer.failure(exc)) from None
        finally:
            trainer.close()
    s, stopped = trainer.state, trainer.stopped
    return TrainResult(
        run_dir, s.step, s.episodes, interrupted and not stopped, s.last_eval, s.best_eval, trainer.last_path, stopped
    )


class _NonFinite(Exception):
    """A NaN or infinite number from the agent (a metric, or a tensor of its state): stop without saving."""


class _Trainer:
    """One run's envs, agent, logger and due points; :meth:`run` is the rollout loop itself."""

    on_eval: Callable[[int, float], bool] | None = None  # see train()
    stopped = False  # on_eval asked to stop

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
        self.stop: threading.Event = StopFlag()  # the signal flag, from run() on
        self.during = ""  # " during evaluation" / " during a video", for the message of an env problem
        self.evaluated_at: int | None = None  # the step of the last evaluation played to its end
        self.state = _LoopState()
        # Text the agent sends before the logger exists (while it is built or restored); None after.
        self._pending_text: list[tuple[str, str]] | None = []
        setup = build(config, text=self.text)
        self.envs, self.eval_envs, self.agent = setup.envs, setup.eval_envs, setup.agent
        self.recorder: video.EpisodeRecorder | None = None
        try:  # start-up can be interrupted (or fail) anywhere: close what was built
            self.window = tb.MeanWindow()
            self.obs, _ = self.envs.reset(seed=run.seed)
            if resume is not None:
                self.obs = _restore(resume, self.agent, self.envs, self.state, self.window, self.obs)
            # Everything at the checkpoint's step was logged before it was saved; anything later that a
            # killed run logged is discarded by TensorBoard, so the curve has no doubled steps.
            # Offline phases log at steps -P..-1 (P: their iterations), before the env steps' curves;
            # a resume in the middle of them purges what followed its checkpoint there instead.
            self.phase_total = sum(iterations for _, iterations in agent_phases(self.agent))
            mid_phase = resume is not None and self.state.phase_done < self.phase_total
            purge = None if resume is None else self.state.step + 1
            if mid_phase:
                purge = self._phase_step(self.state.phase_done + 1)
            self.logger = tb.RunLogger(run_dir, purge_step=purge)
            if resume is None or mid_phase:  # (a purge at a negative step drops the HParams summary too)
                self.logger.hparams(config.to_dict())
            for tag, message in self._pending_text or ():
                self.logger.text(f"train/{tag}", message, self.state.step)
            self._pending_text = None
            # Videos: one greedy episode on a separate rendering env at each multiple of video_every.
            self.recorder = video.EpisodeRecorder(config, run_dir, self.logger) if run.video_every > 0 else None
        except BaseException:
            self._close_resources()
            raise
        # The newest checkpoint known good, and its step (for the message of a run stopped by a NaN).
        self.saved_step: int | None = self.state.step if resume is not None else None
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
        """Step envs and agent until the budget is spent; True if stopped early (Ctrl-C or ``stop_at``).

        A signal stops at the next step of whatever runs: a training step, or a step of an
        evaluation or a video (which then is neither logged nor kept; an evaluation is played
        again first thing after a resume, so the curve matches an uninterrupted run's).
        """
        self.stop = stop_flag
        try:
            if self._phases(stop_flag):
                return True
            if self.state.eval_due:
                self.evaluate()
            return self._steps(stop_flag, stop_at)
        except Interrupted:
            return True

    def _phase_step(self, iteration: int) -> int:
        """TensorBoard step of the ``iteration``-th (1-based) offline-phase iteration: -P..-1."""
        return iteration - self.phase_total - 1

    def _phases(self, stop_flag: threading.Event) -> bool:
        """Run the agent's offline phases from where they stand; True if a signal stopped them.

        Each iteration's metrics go to TensorBoard as ``<phase>/<key>``; a checkpoint is saved at
        the end of each phase and at least every ``PHASE_CHECKPOINT_SECONDS``, and a signal stops
        between two iterations (``train`` then saves), so a resume continues mid-phase exactly.
        """
        if self.state.phase_done >= self.phase_total:
            return False
        done, last_save = 0, time.perf_counter()
        for name, iterations in agent_phases(self.agent):
            for index in range(iterations):
                done += 1
                if done <= self.state.phase_done:
                    continue
                metrics = run_phase(self.agent, name, index)
                for key, value in metrics.items():
                    if value - value:  # NaN or infinite
                        raise _NonFinite(f"{name}/{key} is {value} (reported by the agent's phase '{name}')")
                self.logger.scalars({f"{name}/{key}": value for key, value in metrics.items()}, self._phase_step(done))
                self.state.phase_done = done
                if self.progress is not None:
                    self.progress.phase(name, index + 1, iterations)
                if stop_flag.is_set():
                    return True
                if index == iterations - 1 or time.perf_counter() - last_save >= PHASE_CHECKPOINT_SECONDS:
                    self.save(self.last_path)
                    last_save = time.perf_counter()
        return False

    def final_evaluation(self, stop_flag: threading.Event) -> bool:
        """The evaluation at the end of the budget; False if a signal interrupted it.

        Already done when the run resumed from an interrupted final evaluation (:meth:`run` played it).
        """
        self.stop = stop_flag
        if self.evaluated_at == self.state.step:
            return True
        try:
            self.evaluate()
        except Interrupted:
            return False
        return True

    def _steps(self, stop_flag: threading.Event, stop_at: int | None) -> bool:
        agent, envs, state, window, n = self.agent, self.envs, self.state, self.window, self.envs.num_envs
        obs = self.obs
        space = envs.single_action_space
        clip = isinstance(space, gym.spaces.Box)  # Box actions reach the env clipped to its bounds
        last_step = min(self.total, stop_at) if stop_at is not None else self.total
        next_due = self._next_due(last_step)
        guard = _step_guard(envs)  # None when the vector env checks rewards and observations itself
        while state.step < self.total:
            action = agent.act(obs, explore=True)
            try:
                next_obs, reward, terminated, truncated, infos = envs.step(
                    env_actions(space, action) if clip else action
                )
            except EnvProblem:
                raise
            except Exception as exc:  # a user env's step raising inside a vector env that does not say which copy
                raise raised("step()", exc, copy=None) from exc
            if guard is not None:
                guard(next_obs, reward)
            real_next = next_obs
            if "final_obs" in infos:  # some copy ended an episode: the agent sees its true last obs
                real_next = next_obs.copy()
                for i in np.flatnonzero(infos["_final_obs"]):
                    real_next[i] = infos["final_obs"][i]
                self._record_episodes(infos)
            agent.observe(Transition(obs, action, reward, real_next, terminated, truncated))
            obs = self.obs = next_obs
            state.step += n
            for key, value in agent.update(state.step).items():
                try:
                    bad = value - value  # NaN for NaN or infinity; 0 for every finite number
                except TypeError:
                    raise GymlabError(
                        f"agent '{self.config.run.agent}': update() returned train/{key} = {value!r}, not a number "
                        "(text goes through ctx.text)"
                    ) from None
                if bad:
                    raise _NonFinite(f"train/{key} is {value} (reported by the agent's update)")
                window.add(f"train/{key}", value)
            if state.step >= next_due:
                self._chores()
                next_due = self._next_due(last_step)
            if stop_flag.is_set() or self.stopped or state.step >= last_step:
                return state.step < self.total
        return False

    def text(self, tag: str, message: str) -> None:
        """The agent's text channel: TensorBoard text under ``train/<tag>`` at this step, and the console."""
        if self._pending_text is not None:
            self._pending_text.append((tag, message))
        else:
            self.logger.text(f"train/{tag}", message, self.state.step)
        if self.progress is not None:
            self.progress.note(f"{tag}: {message}")

    def _next_due(self, last_step: int) -> int:
        return min(self.next_log, self.next_eval, self.next_checkpoint, self.next_video, self.next_progress, last_step)

    def _record_episodes(self, infos: dict[str, Any]) -> None:
        state, window, recent = self.state, self.window, self.state.recent_returns
        for _, ret, length in episode_stats(infos):
            state.episodes += 1
            window.add(tb.EPISODE_RETURN, ret)
            window.add(tb.EPISODE_LENGTH, length)
            recent.append(ret)  # the last 100, kept in place (a new list per episode cost ~1 µs)
            if len(recent) > 100:
                del recent[0]

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
        run = self.config.run

        def capped(length: int, ret: float) -> None:
            self._note(f"step {step:,}: the video episode was cut at {length:,} steps ({run.env} has no time limit)")

        self.during = " during a video"
        self.recorder.record(
            self.agent,
            step,
            eval_seed(run.seed, 2**31 + step),
            max_steps=run.eval_max_steps,
            stop=self.stop,
            on_capped=capped,
        )
        self.during = ""
        self.video_seconds += time.perf_counter() - start

    def _note(self, message: str) -> None:
        """A line for TensorBoard's text tab (``notes``) and the console."""
        self.logger.text("notes", message, self.state.step)
        if self.progress is not None:
            self.progress.note(message)

    def evaluate(self) -> None:
        """Greedy episodes on the evaluation env; log them, and keep the best checkpoint.

        Interrupted (:class:`Interrupted` from a signal), it logs nothing, leaves best.pt alone
        and marks the evaluation due, so a resume plays it first.
        """
        run, state = self.config.run, self.state
        seed = eval_seed(run.seed, state.eval_index)
        cut: list[int] = []
        state.eval_due, self.during = True, " during evaluation"
        returns, lengths = evaluate(
            self.agent,
            self.eval_envs,
            run.eval_episodes,
            seed,
            max_steps=run.eval_max_steps,
            stop=self.stop,
            on_capped=lambda length, ret: cut.append(length),
        )
        state.eval_due, self.during, self.evaluated_at = False, "", state.step
        if cut:
            self.logger.scalars({EVAL_CAPPED: float(len(cut))}, state.step)
            self._note(
                f"step {state.step:,}: {len(cut)} of {len(returns)} evaluation episodes were cut at "
                f"{run.eval_max_steps:,} steps ({run.env} has no time limit; run key eval_max_steps) "
                "and count as truncated"
            )
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
        if self.on_eval is not None and self.on_eval(state.step, state.last_eval) and state.step < self.total:
            self.stopped = True

    def save(self, path: Path) -> None:
        """Checkpoint everything needed to continue exactly from here, unless the agent's state is not finite.

        A NaN or infinite tensor in the agent's state raises :class:`_NonFinite` before anything is
        written, so the previous checkpoint stays as it was.
        """
        payload = _payload(self.config, self.agent, self.envs, self.state, self.window, self.obs)
        problem = nonfinite_tensor(payload["agent_state"])
        if problem is not None:
            raise _NonFinite(f"the agent's state holds {problem} (checked before saving {path.name})")
        checkpoint.save(path, payload)
        if path == self.last_path:
            self.saved_step = self.state.step

    def failure(self, exc: Exception) -> str:
        """The one line for a run stopped by a misbehaving env or a non-finite number."""
        run, step = self.config.run, self.state.step
        if isinstance(exc, EnvProblem):
            what, hint = exc.describe(run.env) + self.during, f"check the env with: gymlab check {run.env}"
            if not self.during:  # a training step failed before it was counted: name the step it was
                step += self.envs.num_envs
        else:
            what, hint = f"{exc}{self.during}", "the agent diverged: try a lower learning rate"
        if self.last_path.is_file():
            at = f" (step {self.saved_step:,})" if self.saved_step is not None else ""
            kept = f"the last good checkpoint is {self.last_path}{at}, left as it was"
        else:
            kept = "no checkpoint had been written yet"
        return f"step {step:,}: {what}; {kept}; {hint}"

    def close(self) -> None:
        """Final progress line; close recorder, logger and envs."""
        if self.progress is not None:
            self.progress.update(self.state.step, self.state.episodes, _recent(self.state))
            self.progress.close()
        self._close_resources()

    def _close_resources(self) -> None:
        try:
            if self.recorder is not None:
                self.recorder.close()
        finally:
            logger: tb.RunLogger | None = getattr(self, "logger", None)  # None when start-up stopped early
            if logger is not None:
                logger.close()
            self.envs.close()
            self.eval_envs.close()


def nonfinite_tensor(state: Any, name: str = "") -> str | None:
    """Where a nested state (dicts, lists, tensors, arrays) holds NaN or infinity, e.g. "nan in policy.q"; else None.

    Only float tensors and arrays are looked at: plain numbers in a state are settings or
    counters (an infinite gradient-norm limit is legitimate).
    """
    if isinstance(state, torch.Tensor):
        if (state.is_floating_point() or state.is_complex()) and not bool(torch.isfinite(state).all()):
            return f"{'nan' if bool(torch.isnan(state).any()) else 'inf'} in {name or 'a tensor'}"
        return None
    if isinstance(state, np.ndarray):
        if state.dtype.kind in "fc" and not np.isfinite(state).all():
            return f"{'nan' if np.isnan(state).any() else 'inf'} in {name or 'an array'}"
        return None
    if isinstance(state, dict):
        items: Any = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return None
    for key, value in items:
        found = nonfinite_tensor(value, f"{name}.{key}" if name else str(key))
        if found is not None:
            return found
    return None


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
