"""mp4 encoding round trips, the TensorBoard GIF summary, and the loop's video_every recording."""

from io import BytesIO
from typing import cast

import clihelp
import gymnasium as gym
import numpy as np
import pytest
from PIL import Image
from PIL.GifImagePlugin import GifImageFile
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gymlab import registry, runs, video
from gymlab import tblog as tb
from gymlab.agent import Agent, load_agent_class
from gymlab.build import build_policy
from gymlab.checkpoint import Checkpoint
from gymlab.config import validate
from gymlab.loop import train

pytestmark = pytest.mark.needs("ffmpeg")  # mp4 writing and reading

TEXT_ENV = "GymlabTestTokens-v0"


class TokenEnv(gym.Env):
    """Three-token sequences with no pixels: renders only as text (like SeqGAN's generator env)."""

    metadata = {"render_modes": ["ansi"], "render_fps": 4}  # noqa: RUF012

    def __init__(self, render_mode: str | None = None) -> None:
        self.observation_space = gym.spaces.Discrete(4)
        self.action_space = gym.spaces.Discrete(2)
        self.render_mode = render_mode
        self.tokens: list[int] = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.tokens = []
        return 0, {}

    def step(self, action):
        self.tokens.append(int(action))
        n = len(self.tokens)
        return n, float(action == 1), n == 3, False, {}

    def render(self):
        return "sample: " + " ".join("ab"[t] for t in self.tokens)


if TEXT_ENV not in gym.registry:
    gym.register(TEXT_ENV, entry_point=f"{__name__}:TokenEnv")

ENDLESS_ENV = "GymlabTestEndlessTokens-v0"
GUARD_STEPS = 5_000  # past this the env raises, so an episode that is never cut fails instead of hanging


class EndlessTokens(TokenEnv):
    """Like TokenEnv, but registered without a time limit and never ending an episode by itself."""

    def step(self, action):
        self.tokens.append(int(action))
        assert len(self.tokens) <= GUARD_STEPS, "an episode ran past the guard: it was never cut"
        return min(len(self.tokens), 3), float(action == 1), False, False, {}

    def render(self):
        return "sample: " + " ".join("ab"[t] for t in self.tokens[-3:])


LIMITED_ENV = "GymlabTestEndlessTokensLimited-v0"
if ENDLESS_ENV not in gym.registry:
    gym.register(ENDLESS_ENV, entry_point=f"{__name__}:EndlessTokens")
    gym.register(LIMITED_ENV, entry_point=f"{__name__}:EndlessTokens", max_episode_steps=9)


def make_config(env="FrozenLake-v1", agent="tabular_q", **run):
    cls = load_agent_class(agent)
    data = {
        "agent": agent,
        "env": env,
        "steps": 3000,
        "eval_every": 1000,
        "eval_episodes": 5,
        "log_every": 500,
        "hparams": {"learning_rate": 0.5} if agent == "tabular_q" else {},
        **run,
    }
    if env == "FrozenLake-v1":
        data.setdefault("env_kwargs", {"is_slippery": False})
    return validate(data, cls)


def test_mp4_round_trip_keeps_every_frame_and_pads_odd_sizes(tmp_path):
    rng = np.random.default_rng(0)
    frames = [np.full((35, 47, 3), 40 * i, dtype=np.uint8) for i in range(6)]
    frames[3][:10, :10] = rng.integers(0, 255, (10, 10, 3))
    path = video.write_mp4(tmp_path / "sub" / "clip.mp4", frames, fps=10)
    back = video.read_frames(path)
    assert back.shape == (6, 36, 48, 3)  # yuv420p needs even sizes: padded by one edge pixel
    # Flat grey frames survive H.264 within a few levels.
    for i in (0, 1, 5):
        assert abs(float(back[i, 20:, 20:].mean()) - 40 * i) < 4


def test_even_frame_pads_with_the_edge_and_makes_grey_rgb():
    frame = np.arange(3 * 5, dtype=np.uint8).reshape(3, 5)
    out = video.even_frame(frame)
    assert out.shape == (4, 6, 3)
    np.testing.assert_array_equal(out[3, :5, 0], frame[2])  # last row repeated
    np.testing.assert_array_equal(out[:3, 5, 1], frame[:, 4])  # last column repeated


def test_gif_for_tensorboard_is_small_and_keeps_real_time():
    frames = [np.full((400, 600, 3), i % 256, dtype=np.uint8) for i in range(450)]
    data, h, w = tb.gif_bytes(frames, fps=50)
    gif = Image.open(BytesIO(data))
    assert isinstance(gif, GifImageFile)
    assert (gif.width, gif.height) == (w, h) == (200, 133)
    assert gif.n_frames == 113  # every 4th frame of 450 (at most 120 kept)...
    assert gif.info["duration"] == 80  # ...each shown 4 × 20 ms, so the clip still lasts 9 s


def test_run_logger_video_is_an_animated_image_summary(tmp_path):
    logger = tb.RunLogger(tmp_path)
    frames = [np.full((64, 80, 3), 30 * i, dtype=np.uint8) for i in range(5)]
    logger.video("eval/video", frames, step=7, fps=5)
    logger.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    acc.Reload()
    (event,) = acc.Images("eval/video")
    assert event.step == 7 and (event.width, event.height) == (80, 64)
    assert event.encoded_image_string.startswith(b"GIF8")
    gif = Image.open(BytesIO(event.encoded_image_string))
    assert isinstance(gif, GifImageFile) and gif.n_frames == 5


def test_play_episode_frames_match_the_episode_length():
    env = registry.make_env("CartPole-v1", train=False, render_mode="rgb_array")

    class Lean:  # pushes the cart the way the pole leans: a few dozen steps
        def act(self, obs, explore):
            return (obs[:, 2] > 0).astype(np.int64)

    episode = video.play_episode(env, cast(Agent, Lean()), seed=3)
    assert 8 < episode.length < 500
    assert len(episode.frames) == episode.length + 1 and len(episode.actions) == episode.length
    env.reset(seed=3)  # the first frame is the state the episode starts from (it was missing: stop 41)
    assert np.array_equal(episode.frames[0], np.asarray(env.render()))
    env.close()
    assert episode.frames[0].shape == (400, 600, 3) and episode.frames[0].dtype == np.uint8
    assert episode.ret == episode.length  # CartPole pays 1 per step


@pytest.mark.parametrize("buffered", [video.BUFFERED_FRAMES, 2], ids=["in-one-piece", "streamed"])
def test_loop_records_a_video_every_video_every_steps(tmp_path, monkeypatch, buffered):
    monkeypatch.setattr(video, "VIDEO_TIME_SHARE", float("inf"))  # no time budget: every due point
    monkeypatch.setattr(video, "BUFFERED_FRAMES", buffered)  # 2: episodes past 2 frames stream to the encoder
    config = make_config(video_every=1000)
    folder = runs.RunFolder.create(config, tmp_path / "run").path
    train(config, folder)
    names = sorted(p.name for p in (folder / "videos").iterdir())
    assert names == ["step-000001000.mp4", "step-000002000.mp4", "step-000003000.mp4"]
    # Non-slippery FrozenLake is deterministic: the final policy's episode, replayed, has as many
    # steps as the recorded video has frames.
    loaded = runs.load_run(folder)
    config_, ckpt = loaded.config, loaded.checkpoint
    agent = build_policy(config_, ckpt, "cpu")
    env = registry.make_env("FrozenLake-v1", {"is_slippery": False}, train=False)
    length = video.play_episode(env, agent, seed=0, record=None).length
    assert len(video.read_frames(folder / "videos" / "step-000003000.mp4")) == length + 1  # the start, then each step
    acc = EventAccumulator(str(folder), size_guidance={"images": 0})
    acc.Reload()
    assert [e.step for e in acc.Images("eval/video")] == [1000, 2000, 3000]


def test_videos_are_skipped_when_they_would_exceed_their_time_share(tmp_path, monkeypatch):
    """A run this fast (a few thousand FrozenLake steps) cannot afford a video every 1000 steps:
    the first due one and the final one are recorded, those in between are skipped."""
    monkeypatch.setattr(video, "VIDEO_TIME_SHARE", 1e-9)
    config = make_config(video_every=1000)
    folder = runs.RunFolder.create(config, tmp_path / "run").path
    train(config, folder)
    names = sorted(p.name for p in (folder / "videos").iterdir())
    assert names == ["step-000001000.mp4", "step-000003000.mp4"]


def test_video_every_zero_records_nothing(tmp_path):
    config = make_config()
    folder = runs.RunFolder.create(config, tmp_path / "run").path
    train(config, folder)
    assert not (folder / "videos").exists()


def test_an_env_without_pixels_gets_its_text_render_recorded(tmp_path):
    config = make_config(env=TEXT_ENV, steps=600, eval_every=0, log_every=300, video_every=300)
    folder = runs.RunFolder.create(config, tmp_path / "run").path
    train(config, folder)
    text = (folder / "videos" / "step-000000600.txt").read_text()
    assert "length 3" in text and "sample: " in text
    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    acc.Reload()
    assert any(tag.startswith("eval/sample") for tag in acc.Tags()["tensors"])


@pytest.mark.parametrize("agent", ["tabular_q", "random"])
def test_recording_does_not_change_what_is_learned(tmp_path, agent):
    """Videos play on their own env with the greedy policy: training must come out bit-identical.

    (stop 32: the random agent played videos and evaluations from its training generator, so whether a
    video was recorded, which follows the wall clock, changed every later training action.)
    """
    states, curves = [], []
    for every in (0, 500):
        config = make_config(video_every=every, env_kwargs={"is_slippery": True}, agent=agent)
        folder = runs.RunFolder.create(config, tmp_path / f"run{every}").path
        train(config, folder)
        state = Checkpoint.read(folder / "checkpoints" / "last.pt").agent_state
        states.append(state["policy"].get("q", state["training"].get("rng")))
        curves.append(clihelp.scalars(folder)["rollout/ep_return"])
    assert (tmp_path / "run500" / "videos").is_dir()
    np.testing.assert_equal(states[0], states[1])
    assert curves[0] == curves[1]


def test_a_video_episode_on_an_env_without_time_limit_is_cut_at_eval_max_steps(tmp_path):
    config = make_config(env=ENDLESS_ENV, steps=600, eval_every=0, log_every=300, video_every=600, eval_max_steps=7)
    folder = runs.RunFolder.create(config, tmp_path / "run").path
    train(config, folder)
    assert "length 7" in (folder / "videos" / "step-000000600.txt").read_text()
    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    acc.Reload()
    notes = [t for t in acc.Tags()["tensors"] if t.startswith("notes")]
    texts = [e.tensor_proto.string_val[0].decode() for t in notes for e in acc.Tensors(t)]
    assert any("the video episode was cut at 7 steps" in t for t in texts), texts


@pytest.mark.parametrize(
    ("env_id", "max_steps", "length", "capped"),
    [
        (ENDLESS_ENV, 5, 5, True),  # no time limit: cut at max_steps
        (LIMITED_ENV, 5, 9, False),  # the env's own time limit wins over max_steps
        (TEXT_ENV, None, 3, False),  # ends by itself
    ],
)
def test_play_episode_cuts_an_episode_only_where_the_env_has_no_time_limit(env_id, max_steps, length, capped):
    class Ones:
        def act(self, obs, explore):
            return np.ones(len(obs), dtype=np.int64)

    env = registry.make_env(env_id, train=False, render_mode="ansi")
    episode = video.play_episode(env, cast(Agent, Ones()), seed=0, record="ansi", max_steps=max_steps)
    env.close()
    assert (episode.length, episode.capped, len(episode.texts)) == (length, capped, length + 1)


def test_an_interrupted_streamed_video_leaves_no_file(tmp_path, monkeypatch):
    """A signal in the middle of a long (streamed) video episode: the run stops, the partial mp4 is deleted."""
    import os
    import signal

    monkeypatch.setattr(video, "BUFFERED_FRAMES", 2)
    greedy = video.greedy_policy

    def signalling_policy(agent, env):
        act, calls = greedy(agent, env), [0]

        def policy(obs):
            calls[0] += 1
            if calls[0] == 5:  # the 5th step of the first video: 3 frames already streamed
                os.kill(os.getpid(), signal.SIGINT)
            return act(obs)

        return policy

    monkeypatch.setattr(video, "greedy_policy", signalling_policy)
    config = make_config(video_every=1000)
    folder = runs.RunFolder.create(config, tmp_path / "run").path
    result = train(config, folder)
    assert result.interrupted and result.step == 1000
    assert list((folder / "videos").glob("*.mp4")) == []


def test_recording_without_a_screen_prints_nothing_of_sdls(tmp_path):
    """Videos on a machine with no screen: SDL's driver probe printed "error: XDG_RUNTIME_DIR is invalid or not set"
    (pygame's display, which classic control initialises even to draw frames for a file), read as gymlab's (stop 41)."""
    unset = {"DISPLAY": None, "WAYLAND_DISPLAY": None, "SDL_VIDEODRIVER": None, "XDG_RUNTIME_DIR": None}
    proc = clihelp.gymlab(
        "train", "reinforce", "CartPole-v1", "--steps", "400", "video_every=400", "eval_every=0", "--run-dir", "r",
        cwd=tmp_path, env=unset,
    )  # fmt: skip
    assert proc.code == 0, proc.show()
    assert "error" not in proc.err.lower(), proc.err
    assert (tmp_path / "r" / "videos" / "step-000000400.mp4").is_file()


def test_videos_left_out_to_keep_within_their_time_budget_are_said_once(tmp_path, monkeypatch):
    """Videos that would cost more than their share of the run's time are left out: it said nothing (stop 41)."""
    monkeypatch.setattr(video, "VIDEO_TIME_SHARE", 0.0)  # every due point but the last is over the budget
    config = make_config(video_every=1000)
    folder = runs.RunFolder.create(config, tmp_path / "run").path
    train(config, folder)
    assert sorted(p.name for p in (folder / "videos").iterdir()) == ["step-000001000.mp4", "step-000003000.mp4"]
    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    acc.Reload()
    tags = [t for t in acc.Tags()["tensors"] if t.startswith("notes")]
    texts = [e.tensor_proto.string_val[0].decode() for t in tags for e in acc.Tensors(t)]
    notes = [text for text in texts if "no video" in text]
    assert len(notes) == 1 and notes[0].startswith("step 2,000: no video: recording would take more than"), notes
    assert "less often than video_every=1,000 (the last step's is always recorded)" in notes[0], notes
