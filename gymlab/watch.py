"""``gymlab watch``: play a run's greedy policy in a pygame window, to an mp4, or as text.

Which output, decided once at the start:

- the env renders pixels and a screen is usable: a pygame window with the episode, step and
  running return drawn over each frame; Esc, Q or closing the window stops (``--record`` also
  writes what is shown to an mp4);
- pixels but no screen (no ``DISPLAY`` on Linux, SDL's ``dummy``/``offscreen`` video driver, or
  a window that fails to open): the same frames, overlay included, go to an mp4 whose path is
  printed. Nothing waits on a screen, so it never hangs;
- no pixels (the env offers no ``rgb_array`` render, e.g. SeqGAN's token generation): each
  episode's final text render (``ansi``; the generated sample) is printed, or its actions when
  the env renders no text either. ``--record`` is ignored, said in a line, and its file is
  neither written nor refused for existing: nothing would replace it.

``--follow`` watches a run that is still training: before each episode it reloads the run's
``last.pt`` if a newer one was written, and stops once it has played the final checkpoint.

Every episode ends: at the env's time limit or, on an env without one, after the run's
``eval_max_steps`` (said in a line). Ctrl-C or SIGTERM stops at the next frame: the mp4 so far is
finished (playable) and :class:`~gymlab.errors.Interrupted` says what was written.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from gymlab import screen, video
from gymlab.agent import Agent
from gymlab.build import build_policy
from gymlab.config import Config
from gymlab.envfault import EnvProblem
from gymlab.envguard import close_env, render
from gymlab.errors import GymlabError, Interrupted, describe
from gymlab.evaluation import eval_seed
from gymlab.outputs import claim_new, refuse_existing, unwritable
from gymlab.runs import RunFolder, load_run
from gymlab.signals import graceful_stop, starting

if TYPE_CHECKING:
    pass

HOLD_LAST_FRAME_S = 0.5  # the window shows how an episode ended for a moment before the next
FOLLOW_PAUSE_S = 0.2  # between episodes of a followed run without a window (not to spin on fast envs)


@dataclass
class WatchResult:
    """How a ``watch`` ended: the output used, each episode's (return, length), the mp4 written."""

    mode: str  # "window", "mp4" or "text"
    episodes: list[tuple[float, int]] = field(default_factory=list)
    video: Path | None = None
    reason: str = ""  # why there was no window, when there was none
    stopped_by_user: bool = False


class FollowedPolicy:
    """A run's greedy policy, reloaded when the run writes a newer checkpoint (``--follow``)."""

    def __init__(
        self, target: Path, which: str, device: str | None, follow: bool, echo: Callable[[str], None] = print
    ) -> None:
        self.target, self.which, self.device, self.follow, self.echo = target, which, device, follow, echo
        self.mtime = 0.0
        self.config: Config
        self.agent: Agent
        self.step = 0
        self.final = False  # the checkpoint holds the run's last step
        self.ckpt_path = target if target.is_file() else RunFolder(target).find(which)
        self._load()

    def _load(self) -> None:
        self.mtime = self.ckpt_path.stat().st_mtime
        loaded = load_run(self.ckpt_path, self.which)
        self.config, self.ckpt_path = loaded.config, loaded.path
        self.agent = build_policy(self.config, loaded.checkpoint, self.device)
        self.step = loaded.checkpoint.step
        self.final = self.step >= self.config.run.steps

    def maybe_reload(self) -> bool:
        """Load the checkpoint again if it changed since; returns whether it did.

        A run folder that no process trains any more (stopped, or crashed) writes no newer checkpoint:
        its newest one is then the last to play, as a finished run's final one is.
        """
        if not self.follow:
            return False
        try:
            mtime = self.ckpt_path.stat().st_mtime
            if mtime <= self.mtime:
                if not self.final and self.target.is_dir() and not RunFolder(self.target).is_locked():
                    self.final = True
                    self.echo(
                        f"{self.target} is not being trained (no process writes it): playing an episode of its "
                        f"newest checkpoint (step {self.step:,}), then stopping"
                    )
                return False
            self._load()
        except (OSError, GymlabError):
            return False  # mid-rename or mid-write: the next episode tries again
        return True


def wait_for_checkpoint(target: Path, which: str, echo: Callable[[str], None], poll_s: float) -> None:
    """With ``--follow`` on a run that has no checkpoint yet, wait for its first one.

    A path that does not exist yet is waited for too (a run just started with ``--run-dir`` may
    not have created its folder); a folder that exists but is no run folder is left to the usual
    error.
    """
    folder = RunFolder(target)
    if target.is_file() or (target.is_dir() and not folder.config_file.is_file()):
        return
    announced = False
    while True:
        if any(os.path.lexists(path) for path in (folder.last, folder.best)):
            return  # whatever the file is: find() reads it, or says in one line what is wrong with it
        try:
            folder.find(which)
            return
        except GymlabError:
            if not announced:
                what = "the first checkpoint of" if target.exists() else "a run at"
                echo(f"waiting for {what} {target} (Ctrl-C to stop)")
                announced = True
            time.sleep(poll_s)


def watch(
    target: Path,
    *,
    episodes: int | None = None,
    fps: float | None = None,
    record: Path | None = None,
    overwrite: bool = False,
    follow: bool = False,
    which: str = "last",
    seed: int | None = None,
    device: str | None = None,
    echo: Callable[[str], None] = print,
    poll_s: float = 1.0,
) -> WatchResult:
    """Play the greedy policy of a run folder or checkpoint; see the module docstring.

    ``episodes`` defaults to 3, or to "until the run's final checkpoint has been played" with
    ``follow``. ``echo`` receives the lines meant for the user.

    Raises:
        Interrupted: Ctrl-C or SIGTERM at the next frame, after finishing the mp4 so far (its
            message names it). While loading, a signal stops at once (``StartUpInterrupt``, a
            ``KeyboardInterrupt``).

    """
    check_options(fps, record)
    with graceful_stop() as stop:
        with starting(stop):  # loading the run and building the env: nothing to finish
            if follow:
                if which != "last":
                    raise GymlabError(
                        f"--follow plays the newest checkpoint as the run writes it, not --checkpoint {which}: "
                        "drop one of them"
                    )
                wait_for_checkpoint(target, which, echo, poll_s)
            policy = FollowedPolicy(target, which, device, follow, echo)
            run = policy.config.run
            env, mode = video.render_env(run)
        limit = episodes if episodes is not None else (None if follow else 3)
        play = _Play(env, policy, seed, stop, echo)
        try:
            if mode != "rgb_array":
                if record is not None:
                    echo(
                        f"{run.env} renders no pixels: --record ignored ({record} is not written), "
                        "printing the episodes instead"
                    )
                return _watch_text(play, mode, limit)
            if record is not None:  # a video will be written: a file already there is replaced only when asked
                refuse_existing(record, "--record", overwrite)
            return _watch_pixels(play, limit, fps, record)
        except EnvProblem as exc:
            raise exc.for_user(run.env, run.wrappers) from None
        finally:
            close_env(env)


MIN_FPS = 0.1


def check_options(fps: float | None, record: Path | None) -> None:
    """Before anything is loaded or played: refuse an ``--fps`` out of range, and a ``--record`` no file can go to.

    A ``--record`` file that exists is refused (unless ``overwrite``) once the env is known to render
    pixels, before the first episode: for an env that renders none, ``--record`` is ignored and
    nothing would replace the file.
    """
    if fps is not None and not math.isfinite(fps):
        raise GymlabError(
            f"--fps must be a finite number of frames per second ({MIN_FPS:g} to {video.MAX_FPS}), not {fps}"
        )
    if fps is not None and not MIN_FPS <= fps <= video.MAX_FPS:
        raise GymlabError(f"--fps must be between {MIN_FPS:g} and {video.MAX_FPS} frames per second, not {fps:g}")
    problem = None if record is None else unwritable(record, probe=True)
    if record is not None and problem is not None:
        raise GymlabError(_cannot_record(record, problem))


def _cannot_record(path: Path, reason: str, given: bool = True) -> str:
    if not given:  # the run folder's videos/: no --record to blame
        return f"cannot write the video {path}: {reason} (give a writable path with --record)"
    return f"--record {path}: cannot write the video there: {reason} (give a writable .mp4 path)"


def _os_reason(exc: OSError) -> str:
    """The OS's reason (``Is a directory``), else the first line of the message (imageio's run to pages)."""
    return exc.strerror or describe(exc)


@dataclass
class _Play:
    """What both watch modes play with: the env, the (followed) policy, seeds, the stop flag, the user's lines."""

    env: gym.Env[Any, Any]
    policy: FollowedPolicy
    seed: int | None
    stop: threading.Event
    echo: Callable[[str], None]

    def steps(self, index: int) -> Iterable[video.Step]:
        """The steps of the ``index``-th episode (0-based), cut at ``eval_max_steps`` on an env without a time limit."""
        act = video.greedy_policy(self.policy.agent, self.env)
        cap = self.policy.config.run.eval_max_steps
        for step in video.play_steps(
            self.env, act, _episode_seed(self.policy, self.seed, index), max_steps=cap, stop=self.stop
        ):
            if step.capped:
                self.echo(
                    f"episode {index + 1} cut at {step.index:,} steps: the env has no time limit (eval_max_steps)"
                )
            yield step


def _interrupted(result: WatchResult) -> Interrupted:
    played = f"after {len(result.episodes)} whole episode{'s' if len(result.episodes) != 1 else ''}"
    wrote = f"; the mp4 so far is {result.video}" if result.video is not None else ""
    return Interrupted(f"watch interrupted {played}{wrote}")


def _episode_seed(policy: FollowedPolicy, seed: int | None, index: int) -> int:
    return seed + index if seed is not None else eval_seed(policy.config.run.seed, "watch", index)


def _more(limit: int | None, played: int, follow_done: bool) -> bool:
    if limit is not None:
        return played < limit
    return not follow_done


def _watch_text(play: _Play, mode: str | None, limit: int | None) -> WatchResult:
    env, policy, echo = play.env, play.policy, play.echo
    result = WatchResult("text", reason="the env renders no pixels")
    done_final = False
    try:
        while _more(limit, len(result.episodes), done_final):
            if policy.maybe_reload():
                echo(f"reloaded checkpoint at step {policy.step:,}")
            episode = video.Episode()
            for step in play.steps(len(result.episodes)):
                if mode == "ansi":
                    episode.texts.append(str(render(env)))
                episode.take(step)
            result.episodes.append((episode.ret, episode.length))
            echo(f"episode {len(result.episodes)}: return {episode.ret:.4g}, length {episode.length}")
            if episode.texts:
                echo(episode.texts[-1].rstrip("\n"))
            else:
                shown = episode.actions[:200]
                echo(f"actions: {shown}{' …' if len(episode.actions) > 200 else ''}")
            done_final = policy.final
            if policy.follow and not done_final and limit is None:
                time.sleep(FOLLOW_PAUSE_S)
    except (Interrupted, KeyboardInterrupt):  # the stop flag, or a second Ctrl-C
        raise _interrupted(result) from None
    return result


class _PixelOutput:
    """Where frames go: a window, an mp4, or both; chosen when the first frame arrives."""

    def __init__(self, title: str, fps: float, record: Path | None, default_path: Path, result: WatchResult) -> None:
        self.title, self.fps, self.record, self.default_path = title, fps, record, default_path
        self.given = record is not None  # the user named the mp4 (--record)
        self.result = result
        self.window: screen.Window | None = None
        self.writer: video.Mp4Writer | None = None
        self.opened = False
        self.shape: tuple[int, ...] | None = None  # the first frame's: a window and an mp4 hold one size
        self.problem = screen.window_problem()  # before the env renders its first frame

    def _open(self, frame: np.ndarray) -> None:
        self.opened = True
        self.window, self.result.reason = screen.open_window(frame, self.title, self.problem)
        if self.window is None:
            self.result.mode = "mp4"
        if self.window is None or self.record is not None:
            target = self.record or self.default_path
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                if not self.given:
                    target = self.record = claim_new(self.default_path)  # two watches in one second: two files
                self.writer = video.Mp4Writer(target, self.fps)
            except OSError as exc:
                if not self.given and target.is_file():
                    target.unlink()  # the empty file claim_new made
                reason = unwritable(target) or _os_reason(exc)  # a file where its folder should be, by name
                raise GymlabError(_cannot_record(target, reason, self.given)) from None

    def emit(self, frame: np.ndarray, lines: list[str]) -> bool:
        """Show and/or record one frame; False when the user closed the window or pressed Esc."""
        if not self.opened:
            self._open(frame)
            self.shape = frame.shape
        if self.writer is not None:
            try:
                self.writer.append(screen.overlaid(frame, lines))
            except OSError as exc:
                raise GymlabError(_cannot_record(self.writer.path, _os_reason(exc), self.given)) from None
        return self.window is None or self.window.show(frame, lines, self.fps)

    def end_episode(self, stop: threading.Event) -> bool:
        """Let the window show how the episode ended; False when the user stopped meanwhile."""
        return self.window is None or self.window.hold(HOLD_LAST_FRAME_S, stop)

    def close(self, failed: bool = False) -> None:
        """Finish the mp4 and close the window; a video that could not be written is a :class:`GymlabError`.

        ``failed``: the watch ended in an error, and the video so far is removed, as a training run's is.
        """
        writer, window, self.writer, self.window = self.writer, self.window, None, None  # each closed once
        try:
            if writer is not None and failed:
                with contextlib.suppress(OSError):
                    writer.close()
                writer.path.unlink(missing_ok=True)
            elif writer is not None:
                try:
                    writer.close()
                except OSError as exc:
                    raise GymlabError(_cannot_record(writer.path, _os_reason(exc), self.given)) from None
                self.result.video = writer.path  # only a video that was written is reported
        finally:
            if window is not None:
                window.close()


def _watch_pixels(play: _Play, limit: int | None, fps: float | None, record: Path | None) -> WatchResult:
    env, policy, echo = play.env, play.policy, play.echo
    run = policy.config.run
    result = WatchResult("window")
    title = f"gymlab watch: {run.agent} on {run.env}"
    output = _PixelOutput(title, fps or video.frame_fps(env), record, _default_video_path(policy.ckpt_path), result)
    done_final = interrupted = False
    failed = True  # until the episodes end or are stopped: an error leaves no partial video
    try:
        while not result.stopped_by_user and _more(limit, len(result.episodes), done_final):
            if policy.maybe_reload():
                echo(f"reloaded checkpoint at step {policy.step:,}")
            ep = len(result.episodes) + 1
            last = (0.0, 0)
            for step in play.steps(ep - 1):
                frame = render(env, "rgb_array", like=output.shape)
                lines = [f"episode {ep}", f"step {step.index}", f"return {step.total:.4g}"]
                if policy.follow:
                    lines.append(f"checkpoint step {policy.step:,}")
                if not output.emit(frame, lines):
                    result.stopped_by_user = True
                    break
                last = (step.total, step.index)
            if not result.stopped_by_user:
                result.episodes.append(last)
                result.stopped_by_user = not output.end_episode(play.stop)
            done_final = policy.final
            if policy.follow and not done_final and limit is None and output.window is None:
                time.sleep(FOLLOW_PAUSE_S)
        failed = False
    except (Interrupted, KeyboardInterrupt):  # the stop flag, or a second Ctrl-C
        interrupted, failed = True, False
    finally:
        output.close(failed)  # the mp4 so far becomes playable, or goes with the error
    if interrupted:
        raise _interrupted(result)
    return result


def _default_video_path(ckpt_path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return RunFolder.of(ckpt_path).videos / f"watch-{stamp}.mp4"  # claimed (made unique) when the first frame comes
