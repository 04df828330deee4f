"""The one rollout loop every agent trains through: the step loop and what falls due at each step.

It moves transitions from a Gymnasium vector env to an agent, and writes everything observable
(TensorBoard scalars, checkpoints, videos) into the run folder. It knows nothing of any
algorithm: an agent learns when its ``update`` says so.

Autoreset: the envs run in same-step mode, so each ``step`` is a real transition. When a copy's
episode ends, the observation returned is already the next episode's first one; the ended
episode's last observation is in ``infos["final_obs"]`` and is what the agent sees as
``next_obs`` (a truncated episode bootstraps from it; a terminated one does not). Episode
statistics come from ``infos["final_info"]["episode"]``, written innermost by
``registry.make_env``, so an Atari game's score is the whole game's.

The first NaN or infinite reward or observation (the env guard), metric (from ``update``) or
parameter (checked before each save) stops the run with one line naming the step and the source,
leaving the last good checkpoint as it was. The first Ctrl-C or SIGTERM stops at the next step of
whatever runs and saves a checkpoint (:mod:`gymlab.signals`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gymlab import tblog as tb
from gymlab.agent import Transition, agent_phases, run_phase
from gymlab.build import ALLOCATION_ERRORS, build, out_of_memory, prepare_process
from gymlab.checkpoint import Checkpoint, LoopState
from gymlab.config import Config
from gymlab.console import EvalHeartbeat, Progress
from gymlab.envfault import EnvProblem, batch_out_of_bounds, check_hint
from gymlab.envguard import VectorGuard, close_env, with_final_obs
from gymlab.errors import GymlabError, Interrupted
from gymlab.evaluation import Evaluator, eval_seed, evaluate
from gymlab.finite import NonFinite, check_metrics, check_state
from gymlab.runs import RunFolder
from gymlab.signals import StopFlag, StoppedAtOnce, graceful_stop, starting
from gymlab.video import VIDEO_TIME_SHARE, EpisodeRecorder


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
    phase: str | None = None  # interrupted in an offline phase: where (``mle 3 of 120``)


#: TensorBoard scalar: evaluation episodes cut at ``eval_max_steps`` (written only when some were).
EVAL_CAPPED = "eval/capped_episodes"
#: Longest time between two checkpoints while an agent's offline phases run (and one at each phase's end).
PHASE_CHECKPOINT_SECONDS = 60.0


def train(
    config: Config,
    run_dir: Path | RunFolder,
    *,
    resume: Checkpoint | None = None,
    until: int | None = None,
    stop_at: int | None = None,
    progress: Progress | None = None,
    on_eval: Callable[[int, float], bool] | None = None,
    evaluator: Evaluator = evaluate,
) -> TrainResult:
    """Train ``config``'s agent on its env, writing TensorBoard events and checkpoints to ``run_dir``.

    Args:
        config: the validated run config.
        run_dir: the run folder (exists; holds ``config.yaml``).
        resume: a checkpoint to continue from, exactly where it stopped.
        until: total env steps to reach (default: the config's ``steps``, the schedules' budget).
        stop_at: stop as if interrupted once this many steps are done, leaving a checkpoint.
        progress: receives progress updates for a console display.
        on_eval: called as ``on_eval(step, mean_return)`` after each evaluation; True stops the run
            there with a checkpoint (``TrainResult.stopped``), as a sweep's pruner does.
        evaluator: plays the evaluation episodes (:func:`gymlab.evaluation.evaluate`).

    Raises:
        StartUpInterrupt: a signal arrived while the run was starting up (a ``KeyboardInterrupt``;
            nothing saved).
        StoppedAtOnce: a second signal after start-up (a ``KeyboardInterrupt``): stopped at once,
            keeping the checkpoint written before, if any.
        CheckpointMismatch: ``resume`` cannot be put back into this config's agent and envs.
        GymlabError: a NaN or infinite reward, observation, metric or parameter, or an env that
            raised or returned what its space does not allow; the message names the step, the
            source and the last good checkpoint, which is left as it was.

    """
    folder = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
    total = until if until is not None else config.run.steps
    with graceful_stop() as stop:
        with starting(stop):
            trainer = Trainer(config, folder, total, progress, on_eval, evaluator)
            try:
                trainer.start(resume)
            except EnvProblem as exc:  # the first reset
                raise exc.for_user(config.run.env, config.run.wrappers) from None
        try:
            try:
                interrupted = trainer.run(stop, stop_at)
                if not interrupted:
                    interrupted = not trainer.final_evaluation(stop)
                trainer.save("last")
            except (EnvProblem, NonFinite) as exc:
                raise GymlabError(trainer.failure(exc)) from None
            except ALLOCATION_ERRORS as exc:  # an update that asked for more memory than there is
                if out_of_memory(exc) is None:
                    raise
                raise GymlabError(trainer.failure(exc)) from None
            finally:
                trainer.close()
        except KeyboardInterrupt:  # a second signal: stopped at once; the folder keeps what it holds
            raise StoppedAtOnce(trainer.state.step) from None
    s, stopped = trainer.state, trainer.stopped
    return TrainResult(
        folder.path, s.step, s.episodes, interrupted and not stopped, s.last_eval, s.best_eval, folder.last, stopped,
        trainer.phase_stop,
    )  # fmt: skip


def _next_multiple(step: int, every: int, total: int) -> int:
    """The first multiple of ``every`` after ``step`` (the end of the budget when ``every`` is 0)."""
    return total if every <= 0 else (step // every + 1) * every


class TextChannel:
    """The agent's text (``Context.text``): TensorBoard text under ``train/<tag>`` and the console.

    Text sent before the logger exists (while the agent is built or restored) waits until it does.
    """

    def __init__(self, progress: Progress | None, state: LoopState) -> None:
        self.progress, self.state = progress, state
        self.logger: tb.RunLogger | None = None
        self.pending: list[tuple[str, str]] = []

    def __call__(self, tag: str, message: str) -> None:
        """Send ``message`` under ``tag``."""
        if self.logger is None:
            self.pending.append((tag, message))
        else:
            self.logger.text(f"train/{tag}", message, self.state.step)
        if self.progress is not None:
            self.progress.note(f"{tag}: {message}")

    def open(self, logger: tb.RunLogger) -> None:
        """The logger exists: write what waited for it."""
        self.logger = logger
        for tag, message in self.pending:
            logger.text(f"train/{tag}", message, self.state.step)
        self.pending = []


class Trainer:
    """One run's envs, agent, logger and due points; :meth:`run` is the rollout loop itself."""

    def __init__(
        self,
        config: Config,
        folder: RunFolder,
        total: int,
        progress: Progress | None,
        on_eval: Callable[[int, float], bool] | None,
        evaluator: Evaluator,
    ) -> None:
        self.config, self.folder, self.total, self.progress = config, folder, total, progress
        self.on_eval, self.evaluator = on_eval, evaluator
        self.stopped = False  # on_eval asked to stop
        self.phase_stop: str | None = None  # where a signal stopped the offline phases (``mle 3 of 120``)
        self.stop: threading.Event = StopFlag()  # the signal flag, from run() on
        self.during = ""  # " during evaluation" / " during a video", for the message of an env problem
        self.evaluated_at: int | None = None  # the step of the last evaluation played to its end
        self.state, self.window = LoopState(), tb.MeanWindow()
        self.text = TextChannel(progress, self.state)
        self.logger: tb.RunLogger | None = None
        self.recorder: EpisodeRecorder | None = None
        prepare_process(config)
        built = build(config, text=self.text)
        self.envs, self.eval_envs, self.agent = built.envs, built.eval_envs, built.agent
        self.guard = VectorGuard(self.envs)
        mode = config.run.overlap  # auto: where the vector env steps by itself, no thread is needed
        self.overlap = mode is True or (mode == "auto" and self.guard.native_async)

    def start(self, resume: Checkpoint | None) -> None:
        """Reset the envs, put back ``resume``, open the logger and the recorder, and set the due points."""
        run, total = self.config.run, self.total
        try:  # start-up can be interrupted (or fail) anywhere: close what was built
            self.obs, _ = self.guard.reset(seed=run.seed)
            if resume is not None and resume.restore(self.agent, self.envs, self.state, self.window, self.folder.path):
                self.obs = np.asarray(resume.obs)  # else env internals could not be captured: fresh episodes
            self.phase_total = sum(iterations for _, iterations in agent_phases(self.agent))
            self.logger = self._open_logger(resume is not None)
            self.text.open(self.logger)
            # Videos: one greedy episode on a separate rendering env at each multiple of video_every.
            if run.video_every > 0:
                self.recorder = EpisodeRecorder(self.config, self.folder.path, self.logger)
        except BaseException:
            self._close_resources()
            raise
        # The newest checkpoint known good, and its step (for the message of a run stopped by a NaN).
        self.saved_step: int | None = self.state.step if resume is not None else None
        # Due points are multiples of each interval, so they follow from the step alone (a resume
        # with a larger budget gets them right, and they need no place in the checkpoint).
        step = self.state.step
        self.next_log = min(_next_multiple(step, run.log_every, total), total)
        self.next_eval = _next_multiple(step, run.eval_every, total)
        self.next_checkpoint = _next_multiple(step, run.checkpoint_every, total)
        self.next_video = min(_next_multiple(step, run.video_every, total), total)  # and one at the end
        self.progress_every = max(self.envs.num_envs, total // 400)
        self.next_progress = step
        self.t_window, self.s_window = time.perf_counter(), step
        n = self.envs.num_envs  # every env steps each time: the run ends at the budget rounded up to n
        end = step if step >= total else step + -(-(total - step) // n) * n
        if self.progress is not None:
            self.progress.start(end, step)
        if end != total and step < total:
            self.text("steps", f"{total:,} is not a multiple of num_envs {n}: the run ends at env step {end:,}")

    def _open_logger(self, resumed: bool) -> tb.RunLogger:
        """The TensorBoard writer, discarding whatever a killed run logged after the checkpoint it resumes.

        Everything at the checkpoint's step was logged before it was saved, so the curve has no doubled
        steps. Offline phases log at steps -P..-1 (P: their iterations), before the env steps' curves; a
        resume in the middle of them purges what followed its checkpoint there instead (and a purge at a
        negative step drops the HParams summary too, so it is written again).
        """
        mid_phase = resumed and self.state.phase_done < self.phase_total
        purge = None if not resumed else self.state.step + 1
        if mid_phase:
            purge = self._phase_step(self.state.phase_done + 1)
        logger = tb.RunLogger(self.folder.path, purge_step=purge)
        if not resumed or mid_phase:
            logger.hparams(self.config.to_dict())
        return logger

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
        assert self.logger is not None
        done, last_save = 0, time.perf_counter()
        for name, iterations in agent_phases(self.agent):
            for index in range(iterations):
                done += 1
                if done <= self.state.phase_done:
                    continue
                metrics = run_phase(self.agent, name, index)
                check_metrics(
                    metrics, name, self.config.run.agent, f"run_phase('{name}')", f"the agent's phase '{name}'"
                )
                self.logger.scalars({f"{name}/{key}": value for key, value in metrics.items()}, self._phase_step(done))
                self.state.phase_done = done
                if self.progress is not None:
                    self.progress.phase(name, index + 1, iterations)
                if stop_flag.is_set():
                    self.phase_stop = f"{name} {index + 1:,} of {iterations:,}"
                    return True
                if index == iterations - 1 or time.perf_counter() - last_save >= PHASE_CHECKPOINT_SECONDS:
                    self.save("last")
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
        """The step loop: act, step the envs, observe, learn, and whatever falls due.

        With the overlap on, the envs play step t while the agent learns: ``update`` runs between
        :meth:`VectorGuard.send` and :meth:`VectorGuard.recv`, so it samples a memory that does
        not yet hold step t (it observes step t right after). Acting still waits for the
        observation it acts on. Off, each part waits for the last, as it always did.
        """
        agent, guard, state, n = self.agent, self.guard, self.state, self.envs.num_envs
        agent_name, overlap = self.config.run.agent, self.overlap
        obs = self.obs
        last_step = min(self.total, stop_at) if stop_at is not None else self.total
        next_due = self._next_due(last_step)
        while state.step < self.total:
            action = agent.act(obs, explore=True)
            if overlap:
                guard.send(action)
                metrics = agent.update(state.step + n)  # learns while the envs step
                next_obs, reward, terminated, truncated, infos = guard.recv()
            else:
                next_obs, reward, terminated, truncated, infos = guard.step(action)
            real_next = next_obs
            if infos:  # some copy ended an episode: the agent sees its true last obs
                if "_final_obs" in infos:
                    real_next = with_final_obs(self.envs, next_obs, infos)
                self._record_episodes(infos)
            agent.observe(Transition(obs, action, reward, real_next, terminated, truncated))
            obs = self.obs = next_obs
            state.step += n
            if not overlap:
                metrics = agent.update(state.step)
            if metrics:
                check_metrics(metrics, "train", agent_name, "update()", "the agent's update")
                self.window.add_all(metrics, "train/")
            if state.step >= next_due:
                self._chores()
                next_due = self._next_due(last_step)
            if stop_flag.is_set() or self.stopped or state.step >= last_step:
                return state.step < self.total
        return False

    def _next_due(self, last_step: int) -> int:
        return min(self.next_log, self.next_eval, self.next_checkpoint, self.next_video, self.next_progress, last_step)

    def _record_episodes(self, infos: dict[str, Any]) -> None:
        """Count the episodes that ended in this step and add their returns and lengths to the window."""
        final = infos.get("final_info")
        if not final or "episode" not in final:
            return
        mask, stats = final["_episode"], final["episode"]
        returns, lengths = stats["r"][mask].tolist(), stats["l"][mask].tolist()
        self.state.episodes += len(returns)
        self.window.add_each(tb.EPISODE_RETURN, returns)
        self.window.add_each(tb.EPISODE_LENGTH, lengths)
        recent = self.state.recent_returns
        recent.extend(returns)  # the last 100, kept in place
        if len(recent) > 100:
            del recent[:-100]

    def _chores(self) -> None:
        """Whatever is due at this step, in order: log, evaluate, checkpoint, video, progress."""
        assert self.logger is not None
        run, step, total = self.config.run, self.state.step, self.total
        if step >= self.next_log:
            now = time.perf_counter()
            self.window.add(tb.STEPS_PER_SECOND, (step - self.s_window) / max(now - self.t_window, 1e-9))
            self.logger.scalars(self.window.pop_means(), step)
            self.t_window, self.s_window = now, step
            self.next_log = min(_next_multiple(step, run.log_every, total), total)
        if step >= self.next_eval and step < total:  # the final evaluation happens after the loop
            self.evaluate()
        if step >= self.next_checkpoint and step < total:
            self.save("last")
            self.next_checkpoint = _next_multiple(step, run.checkpoint_every, total)
        if self.recorder is not None and step >= self.next_video:
            self._maybe_record(step)
            self.next_video = min(_next_multiple(step, run.video_every, total), total)
        if step >= self.next_progress:
            if self.progress is not None:
                self.progress.update(step, self.state.episodes, self._recent())
            self.next_progress = step + self.progress_every

    def _maybe_record(self, step: int) -> None:
        """Record a video unless recording would take more than its share of the run's time (always at the end)."""
        assert self.recorder is not None
        run = self.config.run
        if not self.recorder.within_budget(final=step >= self.total):
            if not self.recorder.skipped:  # said once: the videos then come less often than video_every
                share = f"{VIDEO_TIME_SHARE:.0%}"
                self._note(
                    f"step {step:,}: no video: recording would take more than {share} of the run's time, so videos"
                    f" come less often than video_every={run.video_every:,} (the last step's is always recorded)"
                )
            self.recorder.skipped += 1
            return

        def capped(length: int, ret: float) -> None:
            self._note(f"step {step:,}: the video episode was cut at {length:,} steps ({run.env} has no time limit)")

        self.folder.check_present()
        self.during = " during a video"
        seed = eval_seed(run.seed, "video", step)
        self.recorder.record(self.agent, step, seed, max_steps=run.eval_max_steps, stop=self.stop, on_capped=capped)
        self.during = ""

    def _note(self, message: str) -> None:
        """A line for TensorBoard's text tab (``notes``) and the console."""
        assert self.logger is not None
        self.logger.text("notes", message, self.state.step)
        if self.progress is not None:
            self.progress.note(message)

    def evaluate(self) -> None:
        """Greedy episodes on the evaluation env; log them, and keep the best checkpoint.

        Interrupted (:class:`Interrupted` from a signal), it logs nothing, leaves best.pt alone
        and marks the evaluation due, so a resume plays it first.
        """
        assert self.logger is not None
        run, state = self.config.run, self.state
        cut: list[int] = []
        state.eval_due, self.during = True, " during evaluation"
        say = None if self.progress is None else self.progress.note
        heartbeat = None if say is None else EvalHeartbeat(say, state.step, run.eval_episodes, self.eval_envs.num_envs)
        returns, lengths = self.evaluator(
            self.agent,
            self.eval_envs,
            run.eval_episodes,
            eval_seed(run.seed, "eval", state.eval_index),
            heartbeat,
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
            self.save("best")
        if self.on_eval is not None and self.on_eval(state.step, state.last_eval) and state.step < self.total:
            self.stopped = True

    def save(self, which: str) -> None:
        """Checkpoint everything needed to continue exactly from here, unless the agent's state is not finite.

        A NaN or infinite tensor in the agent's state raises :class:`NonFinite`, and content a checkpoint
        cannot hold (an object, a function, a state that is not a dict) a one-line error blaming the agent,
        before anything is written, so the previous checkpoint stays as it was.
        """
        ckpt = Checkpoint.capture(self.config, self.agent, self.envs, self.state, self.window, self.obs)
        problem = check_state(ckpt.agent_state, self.config.run.agent)  # content a file can hold, and finite
        if problem is not None:
            name = "last.pt" if which == "last" else "best.pt"
            raise NonFinite(f"the agent's state holds {problem} (checked before saving {name})")
        self.folder.save(ckpt, which)
        if which == "last":
            self.saved_step = self.state.step

    def failure(self, exc: Exception) -> str:
        """The one line for a run stopped by a misbehaving env, a non-finite number or an update out of memory."""
        run, step = self.config.run, self.state.step
        if isinstance(exc, EnvProblem):
            what, hint = exc.describe(run.env) + self.during, check_hint(run.env, run.wrappers)
            if not self.during:  # a training step failed before it was counted: name the step it was
                step += self.envs.num_envs
        elif isinstance(exc, ALLOCATION_ERRORS):
            what = f"the agent ran out of memory{self.during} ({out_of_memory(exc)})"
            hint = "lower its batch settings (e.g. batch_size, gradient_steps) or num_envs"
        else:
            what, hint = f"{exc}{self.during}", "the agent diverged: try a lower learning rate"
            outside = batch_out_of_bounds(self.envs.single_observation_space, getattr(self, "obs", None))
            if outside is not None:  # the env fed it observations it promised not to: the env's fault
                hint = f"the env is at fault: its observations are {outside}; check it with: gymlab check {run.env}"
        last = self.folder.last
        if last.is_file():
            at = f" (step {self.saved_step:,})" if self.saved_step is not None else ""
            kept = f"the last good checkpoint is {last}{at}, left as it was"
        else:
            kept = "no checkpoint had been written yet"
        return f"step {step:,}: {what}; {kept}; {hint}"

    def _recent(self) -> float | None:
        recent = self.state.recent_returns
        return float(np.mean(recent)) if recent else None

    def close(self) -> None:
        """Final progress line; close recorder, logger and envs."""
        if self.progress is not None:
            self.progress.update(self.state.step, self.state.episodes, self._recent())
            self.progress.close()
        self._close_resources()

    def _close_resources(self) -> None:
        try:
            if self.recorder is not None:
                self.recorder.close()
        finally:
            if self.logger is not None:
                self.logger.close()
            self.guard.close()
            close_env(self.envs)
            close_env(self.eval_envs)
