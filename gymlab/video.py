"""Playing one greedy episode on a single env, encoding its frames as mp4, and the loop's recorder.

Encoding uses imageio with the ffmpeg binary that the ``imageio-ffmpeg`` wheel ships, so no system
ffmpeg is needed. H.264 in the ``yuv420p`` pixel format (the one every player accepts) needs an
even width and height; odd-sized frames are padded by one edge pixel rather than resized.

An episode is played on a *single* env, not a vector env: a vector env in same-step autoreset
mode has already reset when the final step returns, so its render would show the next episode's
first frame instead of how this one ended. Frames are taken after every step (the outcome of each
action), so a recorded episode has exactly as many frames as it has steps.

Every played episode ends: at the env's time limit or, on an env without one, after the run key
``eval_max_steps`` (the step is marked ``capped``). A stop flag (the loop's Ctrl-C/SIGTERM flag)
is checked before each step; once set, :class:`~gymlab.errors.Interrupted` is raised.
"""

from __future__ import annotations

import errno
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import imageio.v2 as imageio
import imageio.v3 as iio
import numpy as np
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from gymlab import registry
from gymlab.agent import Agent
from gymlab.config import Config, RunConfig
from gymlab.envguard import SingleGuard, close_env, env_actions, episode_cap, render, sdl_offscreen
from gymlab.errors import Interrupted
from gymlab.tblog import RunLogger

DEFAULT_FPS = 30


def render_modes(env: gym.Env[Any, Any]) -> list[str]:
    """The render modes an env declares in its metadata."""
    metadata = getattr(env.unwrapped, "metadata", None)  # the user's code: anything may be there
    modes = metadata.get("render_modes") if isinstance(metadata, dict) else None
    return [m for m in modes if isinstance(m, str)] if isinstance(modes, (list, tuple)) else []


def render_env(run: RunConfig) -> tuple[gym.Env[Any, Any], str | None]:
    """A single evaluation env of ``run`` that renders what it can, and that render mode.

    Pixels (``rgb_array``, with headless GL set up) when the env offers them, else its text
    render (``ansi``), else no render (None). The one place ``watch`` and the video recorder
    choose how an env is shown.
    """
    probe = registry.make_env(run.env, run.env_kwargs, run.wrappers, train=False)
    modes = render_modes(probe)
    close_env(probe)
    mode = "rgb_array" if "rgb_array" in modes else "ansi" if "ansi" in modes else None
    if mode == "rgb_array":
        headless_gl()
    return registry.make_env(run.env, run.env_kwargs, run.wrappers, train=False, render_mode=mode), mode


#: The fastest playback rate shown or encoded (ffmpeg refuses absurd rates; a screen shows no more).
MAX_FPS = 240


def frame_fps(env: gym.Env[Any, Any], default: int = DEFAULT_FPS) -> int:
    """The env's own playback rate (``metadata["render_fps"]``), or ``default``; within 1..:data:`MAX_FPS`.

    An env's metadata is the user's code: a rate that is not a finite positive number gives ``default``.
    """
    metadata = getattr(env.unwrapped, "metadata", None)
    fps = metadata.get("render_fps") if isinstance(metadata, dict) else None
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        return default
    return max(1, min(MAX_FPS, round(fps)))


def headless_gl() -> None:
    """Let MuJoCo render without a screen: EGL when no display is set (OSMesa fails here)."""
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        os.environ.setdefault("MUJOCO_GL", "egl")


def batch_obs(space: gym.Space[Any], obs: Any) -> Any:
    """One env's observation as a batch of one, shaped as the vector env would hand it to ``act``."""
    out: Any = create_empty_array(space, 1)
    return concatenate(space, [obs], out)


def unbatch_action(batched_space: gym.Space[Any], actions: Any) -> Any:
    """The first (only) action of a batch of one (``batched_space``: the batch's space), for a single env."""
    return next(iter(iterate(batched_space, actions)))


@dataclass
class Step:
    """What one step of a played episode produced."""

    index: int  # step number within the episode: 0 is its start (after the reset, before any action)
    action: Any  # None at the start
    reward: float
    total: float  # return so far, including this step's reward
    done: bool
    capped: bool = False  # the episode was cut here, at the step cap of an env without a time limit


@dataclass
class Episode:
    """A played episode: its return, length and (when recorded) frames or text renders."""

    ret: float = 0.0
    length: int = 0
    frames: list[np.ndarray] = field(default_factory=list)  # (H, W, 3) uint8 each: the start, then after each step
    texts: list[str] = field(default_factory=list)  # likewise
    actions: list[Any] = field(default_factory=list)
    capped: bool = False  # cut at the step cap (the env has no time limit)

    def take(self, step: Step) -> None:
        """Count ``step`` in: its action (none at the start), and the return, length and cut so far."""
        if step.index:
            self.actions.append(step.action.tolist() if isinstance(step.action, np.ndarray) else step.action)
        self.ret, self.length, self.capped = step.total, step.index, step.capped


def play_steps(
    env: gym.Env[Any, Any],
    policy: Callable[[Any], Any],
    seed: int | None,
    *,
    max_steps: int | None = None,
    stop: threading.Event | None = None,
) -> Iterator[Step]:
    """Play one episode with ``policy`` (single obs -> single action), yielding at its start and after each step.

    The first yield (index 0, no action) comes after the reset, so a video shows the state the episode starts
    from; the env's ``render()`` after each later yield shows the state the step led to. The episode ends at
    the env's time limit, or after ``max_steps`` steps on an env without one (None: the run key's
    default). ``stop`` is checked before each step: once set, :class:`Interrupted` is raised.
    A reset or step that raises, returns a non-finite reward or an observation that does not fit
    the space raises :class:`~gymlab.envfault.EnvProblem`.
    """
    cap = episode_cap(env, max_steps)
    guard = SingleGuard(env)
    obs = guard.reset(seed)
    total, index, done = 0.0, 0, False
    yield Step(0, None, 0.0, 0.0, False)
    while not done:
        if stop is not None and stop.is_set():
            raise Interrupted(f"interrupted at step {index} of an episode")
        action = policy(obs)
        obs, reward, terminated, truncated = guard.step(action)
        index += 1
        total += reward
        capped = index >= cap and not (terminated or truncated)
        done = terminated or truncated or capped
        yield Step(index, action, reward, total, done, capped)


def greedy_policy(agent: Agent, env: gym.Env[Any, Any]) -> Callable[[Any], Any]:
    """Wrap an agent's batched greedy ``act`` as a single-env policy."""
    obs_space = env.observation_space
    batched_actions = batch_space(env.action_space, 1)  # built once: it deep-copies the space

    def policy(obs: Any) -> Any:
        actions = env_actions(env.action_space, agent.act(batch_obs(obs_space, obs), explore=False))
        return unbatch_action(batched_actions, actions)

    return policy


def play_episode(
    env: gym.Env[Any, Any],
    agent: Agent,
    seed: int | None,
    *,
    record: str | None = "rgb_array",
    max_steps: int | None = None,
    stop: threading.Event | None = None,
) -> Episode:
    """Play one greedy episode; ``record`` is the env's render mode to capture at its start and after each step.

    ``max_steps`` and ``stop`` as in :func:`play_steps`.
    """
    episode = Episode()
    policy = greedy_policy(agent, env)
    for step in play_steps(env, policy, seed, max_steps=max_steps, stop=stop):
        if record == "rgb_array":
            episode.frames.append(render(env, "rgb_array", like=episode.frames[0].shape if episode.frames else None))
        elif record == "ansi":
            episode.texts.append(str(render(env)))
        episode.take(step)
    return episode


def even_frame(frame: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 frame padded by one edge pixel where H or W is odd (yuv420p needs even sizes)."""
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return np.ascontiguousarray(frame[:, :, :3], dtype=np.uint8)


class Mp4Writer:
    """Append frames to an H.264 mp4 one at a time (for long or live recordings)."""

    def __init__(self, path: Path, fps: float) -> None:
        if path.is_dir():  # ffmpeg would only say so on its stderr, and leave no file
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        path.parent.mkdir(exist_ok=True)  # never its parents: a run folder removed meanwhile stays removed
        self.path = path
        self.frames = 0
        # macro_block_size=1: never let imageio resize; even_frame already made the sizes legal.
        self._writer = imageio.get_writer(
            str(path),
            format="FFMPEG",
            mode="I",
            fps=fps,
            codec="libx264",
            pixelformat="yuv420p",
            macro_block_size=1,
            ffmpeg_log_level="error",
            # ultrafast: about 3x less encoding CPU than x264's default, for somewhat larger files;
            # recordings run beside training, so their cost matters more than their size.
            ffmpeg_params=["-preset", "ultrafast"],
        )

    def append(self, frame: np.ndarray) -> None:
        """Add one (H, W, 3) uint8 frame."""
        self._writer.append_data(even_frame(frame))
        self.frames += 1

    def close(self) -> None:
        """Finish the file (writes the index a player needs).

        Raises:
            OSError: frames were given but no video came out (ffmpeg could not write the file; it
                says why on stderr, and imageio does not pass on its exit status).

        """
        self._writer.close()
        if self.frames and not (self.path.is_file() and self.path.stat().st_size > 0):
            raise OSError(f"ffmpeg wrote no video at {self.path}")


def write_mp4(path: Path, frames: Iterable[np.ndarray], fps: float) -> Path:
    """Encode (H, W, 3) uint8 frames as an H.264 mp4 at ``path``; returns the path."""
    writer = Mp4Writer(path, fps)
    try:
        for frame in frames:
            writer.append(frame)
    finally:
        writer.close()
    return path


def read_frames(path: Path) -> np.ndarray:
    """Decode an mp4 back into frames (T, H, W, 3) uint8 (for tests and checks)."""
    return np.asarray(iio.imread(str(path), plugin="FFMPEG"))


#: Largest share of training time that recording videos may take. An episode with rendering can cost
#: seconds (Acrobot: ~0.7 s for 500 frames), so a fixed interval cannot bound the slowdown on fast
#: runs; this budget does, and the videos simply come less often than ``video_every`` when they would
#: cost more.
VIDEO_TIME_SHARE = 0.05

#: Frames of a recorded episode held in memory (about 0.7 GB of CartPole's 400x600 frames); past
#: them the episode streams to the encoder as it is played, so a long one (up to eval_max_steps)
#: never holds all its frames at once.
BUFFERED_FRAMES = 1000
#: Frames a streamed episode keeps for its TensorBoard GIF (every k-th, k doubling as it grows;
#: ``gif_bytes`` thins them further).
GIF_SAMPLE = 240


class _FrameStream:
    """Frames on their way to one mp4, encoded in the recorder's thread as they arrive (bounded queue)."""

    _END, _ABORT = object(), object()

    def __init__(self, path: Path, fps: int, step: int, logger: RunLogger) -> None:
        self.path, self.fps, self.step, self.logger = path, fps, step, logger
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=64)
        self.future: Any = None  # the encoding task, set when it is submitted

    def put(self, item: Any) -> None:
        """Queue a frame (or an end marker), waiting while the encoder is behind; raise if it failed."""
        while True:
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                if self.future is not None and self.future.done():
                    self.future.result()  # re-raises the encoder's failure
                    return

    def run(self) -> Path:
        """The encoding task: mp4 frame by frame, then the GIF of a thinned sample (deleted if aborted)."""
        writer = Mp4Writer(self.path, self.fps)
        sample: list[np.ndarray] = []
        stride, index = 1, 0
        try:
            while True:
                item = self.queue.get()
                if item is self._END or item is self._ABORT:
                    break
                writer.append(item)
                if index % stride == 0:
                    sample.append(item)
                    if len(sample) > GIF_SAMPLE:
                        sample, stride = sample[::2], stride * 2
                index += 1
        finally:
            writer.close()
        if item is self._ABORT:
            self.path.unlink(missing_ok=True)
            return self.path
        self.logger.video("eval/video", sample, self.step, self.fps / stride)
        return self.path


class EpisodeRecorder:
    """The loop's video hook: every ``video_every`` steps, one greedy episode to mp4 and TensorBoard.

    It owns a separate single env with ``render_mode="rgb_array"``, built on first use. The
    episode is played (and rendered) in the training thread, where the agent lives; encoding the
    mp4 and the TensorBoard GIF happens in one background thread (ffmpeg in its own process), so
    training goes on meanwhile. An episode longer than :data:`BUFFERED_FRAMES` streams its frames
    to that thread as it is played, so memory stays bounded. For an env with no pixels (e.g. token
    generation) it records the episode's text render instead, as ``videos/step-N.txt`` and a
    TensorBoard text entry.
    """

    def __init__(self, config: Config, run_dir: Path, logger: RunLogger) -> None:
        self.config = config
        self.folder = run_dir / "videos"
        self.logger = logger
        self._env: gym.Env[Any, Any] | None = None
        self._mode: str | None = None
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gymlab-video")
        self._pending: list[Future[Path]] = []
        self.started, self.seconds = time.perf_counter(), 0.0  # the budget's clock; time spent recording
        self.skipped = 0  # due videos left out to keep within the budget

    def within_budget(self, final: bool) -> bool:
        """Whether recording now keeps videos within :data:`VIDEO_TIME_SHARE` of the run's time (``final``: always)."""
        elapsed = time.perf_counter() - self.started
        return final or self.seconds <= VIDEO_TIME_SHARE * (elapsed - self.seconds)

    def _make_env(self) -> gym.Env[Any, Any]:
        env, self._mode = render_env(self.config.run)
        return env

    def record(
        self,
        agent: Agent,
        step: int,
        seed: int,
        *,
        max_steps: int | None = None,
        stop: threading.Event | None = None,
        on_capped: Callable[[int, float], None] | None = None,
    ) -> Path | None:
        """Play and save one episode at env step ``step``; returns the file written (None if nothing).

        ``max_steps`` and ``stop`` as in :func:`play_steps` (an interrupted episode writes nothing);
        a cut episode is still saved, and reported to ``on_capped(length, return)``.
        """
        start = time.perf_counter()
        try:
            with sdl_offscreen():  # a video file, never a window
                return self._record(agent, step, seed, max_steps, stop, on_capped)
        finally:
            self.seconds += time.perf_counter() - start

    def _record(
        self,
        agent: Agent,
        step: int,
        seed: int,
        max_steps: int | None,
        stop: threading.Event | None,
        on_capped: Callable[[int, float], None] | None,
    ) -> Path | None:
        if self._env is None:
            self._env = self._make_env()
        stem = f"step-{step:09d}"
        if self._mode == "rgb_array":
            return self._record_pixels(agent, self.folder / f"{stem}.mp4", step, seed, max_steps, stop, on_capped)
        episode = play_episode(self._env, agent, seed, record=self._mode, max_steps=max_steps, stop=stop)
        if episode.capped and on_capped is not None:
            on_capped(episode.length, episode.ret)
        text = episode.texts[-1] if episode.texts else f"actions: {episode.actions}"
        text = f"return {episode.ret:.4g}, length {episode.length}\n{text}"
        self.folder.mkdir(exist_ok=True)  # never its parents: a run folder removed meanwhile stays removed
        path = self.folder / f"{stem}.txt"
        path.write_text(text + "\n")
        self.logger.text("eval/sample", f"```\n{text}\n```", step)
        return path

    def _record_pixels(
        self,
        agent: Agent,
        path: Path,
        step: int,
        seed: int,
        max_steps: int | None,
        stop: threading.Event | None,
        on_capped: Callable[[int, float], None] | None,
    ) -> Path | None:
        """Play one episode rendering each step; frames go to the encoder in one piece, or streamed when many."""
        env = self._env
        assert env is not None
        fps = frame_fps(env)
        frames: list[np.ndarray] = []  # (H, W, 3) uint8 each, all of one shape
        shape: tuple[int, ...] | None = None
        stream: _FrameStream | None = None
        last: Step | None = None
        try:
            for played in play_steps(env, greedy_policy(agent, env), seed, max_steps=max_steps, stop=stop):
                last = played
                frame = render(env, "rgb_array", like=shape)
                shape = frame.shape
                if stream is not None:
                    stream.put(frame)
                    continue
                frames.append(frame)
                if len(frames) > BUFFERED_FRAMES:  # a long episode: stream it
                    stream = _FrameStream(path, fps, step, self.logger)
                    self._collect(wait=False)
                    stream.future = self._encoder.submit(stream.run)
                    self._pending.append(stream.future)
                    for buffered in frames:
                        stream.put(buffered)
                    frames = []
        except BaseException:
            if stream is not None:
                stream.put(_FrameStream._ABORT)  # an interrupted (or failed) episode leaves no file
            raise
        if last is None:
            return None
        if last.capped and on_capped is not None:
            on_capped(last.index, last.total)
        if stream is not None:
            stream.put(_FrameStream._END)
            return path
        self._collect(wait=False)
        self._pending.append(self._encoder.submit(self._encode, path, frames, step, fps))
        return path

    def _encode(self, path: Path, frames: list[np.ndarray], step: int, fps: int) -> Path:
        write_mp4(path, frames, fps)
        self.logger.video("eval/video", frames, step, fps)
        return path

    def _collect(self, wait: bool) -> None:
        """Drop finished encodings, re-raising the first failure (``wait``: finish them all first)."""
        still = []
        for future in self._pending:
            if wait or future.done():
                future.result()
            else:
                still.append(future)
        self._pending = still

    def close(self) -> None:
        """Finish pending encodings (before the caller closes the logger) and close the env."""
        try:
            self._collect(wait=True)
        finally:
            self._encoder.shutdown(wait=True)
            if self._env is not None:
                close_env(self._env)
                self._env = None
