"""`watch`: headless mp4 with SDL's dummy driver, a real window under Xvfb, text for envs without
pixels, --follow reloading newer checkpoints, and bad input as one-line errors."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pygame
import pytest
from conftest import gymlab_inprocess
from test_video import ENDLESS_ENV, TEXT_ENV, make_config

from gymlab import registry, runs, screen, video
from gymlab import watch as w
from gymlab.build import build_policy
from gymlab.errors import GymlabError, Interrupted
from gymlab.loop import train

pytestmark = pytest.mark.needs("ffmpeg")  # mp4 writing and reading


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """Tabular Q on non-slippery FrozenLake, trained until greedy play walks to the goal (6 steps)."""
    config = make_config(steps=4000, eval_every=2000)
    folder = runs.RunFolder.create(config, tmp_path_factory.mktemp("watch") / "run").path
    result = train(config, folder)
    assert result.last_eval == 1.0
    return folder


def greedy_length(folder):
    loaded = runs.load_run(folder)
    config, ckpt = loaded.config, loaded.checkpoint
    agent = build_policy(config, ckpt, "cpu")
    env = registry.make_env(config.run.env, config.run.env_kwargs, train=False)
    return video.play_episode(env, agent, seed=0, record=None).length


def test_without_a_screen_watch_writes_an_mp4_with_one_frame_per_step(trained_run, monkeypatch, tmp_path):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    lines: list[str] = []
    result = w.watch(trained_run, episodes=2, echo=lines.append)
    assert result.mode == "mp4" and result.reason == "SDL_VIDEODRIVER=dummy"
    assert result.video is not None
    assert result.video.parent == trained_run / "videos" and result.video.name.startswith("watch-")
    frames = video.read_frames(result.video)
    assert [length for _, length in result.episodes] == [6, 6] == [greedy_length(trained_run)] * 2
    assert len(frames) == 14  # each episode's start and its 6 steps, nothing more
    assert [ret for ret, _ in result.episodes] == [1.0, 1.0]
    # The overlay (episode, step, return) darkens the top-left corner of FrozenLake's pale ice.
    env = registry.make_env("FrozenLake-v1", {"is_slippery": False}, train=False, render_mode="rgb_array")
    env.reset(seed=0)
    raw = np.asarray(env.render())
    assert frames[0][:20, :40].mean() < raw[:20, :40].mean() - 40
    np.testing.assert_allclose(frames[0][200:, 100:].mean(), raw[200:, 100:].mean(), atol=30)


def test_record_option_names_the_file(trained_run, monkeypatch, tmp_path):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    out = tmp_path / "clip.mp4"
    result = w.watch(trained_run / "checkpoints" / "last.pt", episodes=1, record=out, fps=8, echo=print)
    assert result.video == out and len(video.read_frames(out)) == 7  # the start and 6 steps


def test_cli_watch_headless_prints_the_mp4_path(trained_run, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env["SDL_VIDEODRIVER"] = "dummy"
    proc = subprocess.run(
        [sys.executable, "-m", "gymlab", "watch", str(trained_run), "--episodes", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if "wrote " in x)
    path = Path(line.split("wrote ", 1)[1])
    assert path.is_file() and len(video.read_frames(path)) == 7


def test_cli_watch_of_a_run_without_checkpoint_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()  # a run folder whose run has written its config, no checkpoint yet
    (tmp_path / "empty" / "config.yaml").write_text("agent: tabular_q\nenv: FrozenLake-v1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "gymlab", "watch", str(tmp_path / "empty")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no checkpoint" in proc.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "gymlab", "watch", str(tmp_path / "empty"), "--record", "x.avi"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and ".mp4" in bad.stderr


def test_an_env_without_pixels_prints_its_samples(tmp_path):
    config = make_config(env=TEXT_ENV, steps=600, eval_every=0, log_every=300)
    folder = runs.RunFolder.create(config, tmp_path / "run").path
    train(config, folder)
    lines: list[str] = []
    result = w.watch(folder, episodes=2, echo=lines.append)
    assert result.mode == "text" and len(result.episodes) == 2
    assert lines[0].startswith("episode 1: return ") and lines[0].endswith("length 3")
    assert lines[1].startswith("sample: ") and len(lines[1].split()) == 4  # "sample:" and 3 tokens


def test_escape_q_and_closing_the_window_stop(monkeypatch):
    pygame.init()
    key = lambda k: pygame.event.Event(pygame.KEYDOWN, key=k)  # noqa: E731
    assert screen.stop_requested([key(pygame.K_ESCAPE)])
    assert screen.stop_requested([key(pygame.K_q)])
    assert screen.stop_requested([pygame.event.Event(pygame.QUIT)])
    assert not screen.stop_requested([key(pygame.K_SPACE), pygame.event.Event(pygame.MOUSEMOTION)])


def test_no_display_reasons(monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    assert screen.no_display_reason() == "SDL_VIDEODRIVER=dummy"
    monkeypatch.delenv("SDL_VIDEODRIVER")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if sys.platform.startswith("linux"):
        assert screen.no_display_reason() == "no DISPLAY"
    monkeypatch.setenv("DISPLAY", ":0")
    assert screen.no_display_reason() is None


def test_follow_reloads_a_newer_checkpoint_and_stops_after_the_final_one(tmp_path, monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    config = make_config(steps=4000, checkpoint_every=1000)
    folder = runs.RunFolder.create(config, tmp_path / "run").path
    train(config, folder, stop_at=1000)  # a run still "training": its checkpoint is at step 1000
    with runs.RunFolder(folder).lock():  # as its training process holds it
        policy = w.FollowedPolicy(folder, "last", None, follow=True)
        assert (policy.step, policy.final, policy.maybe_reload(), policy.final) == (1000, False, False, False)
    time.sleep(0.05)  # a newer mtime
    loaded = runs.load_run(folder)
    config_, ckpt = loaded.config, loaded.checkpoint
    train(config_, folder, resume=ckpt)
    assert policy.maybe_reload() and (policy.step, policy.final) == (4000, True)
    # On a finished run, --follow plays the final checkpoint once and stops by itself.
    result = w.watch(folder, follow=True, echo=print)
    assert len(result.episodes) == 1 and result.mode == "mp4"


def test_follow_on_a_run_no_process_trains_plays_its_newest_checkpoint_once_and_stops(tmp_path, monkeypatch):
    # stop 32: --follow on a run stopped short of its steps played episodes forever, its mp4 growing
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    config = make_config(steps=4000, checkpoint_every=1000)
    folder = runs.RunFolder.create(config, tmp_path / "run").path
    train(config, folder, stop_at=1000)
    said: list[str] = []
    result = w.watch(folder, follow=True, echo=said.append)
    assert len(result.episodes) == 1, said
    assert any("is not being trained" in line and "(step 1,000)" in line for line in said), said


def test_follow_with_the_best_checkpoint_is_refused(trained_run):
    # stop 32: --follow silently played last.pt when --checkpoint best was asked for
    with pytest.raises(GymlabError, match="--follow plays the newest checkpoint"):
        w.watch(trained_run, follow=True, which="best", echo=print)


def test_follow_without_follow_never_reloads(trained_run):
    policy = w.FollowedPolicy(trained_run, "best", None, follow=False)
    os.utime(policy.ckpt_path)
    assert not policy.maybe_reload()


def _free_display():
    for n in range(90, 140):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            return n
    pytest.skip("no free X display number")


@pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb is not installed (apt-get install xvfb)")
def test_a_real_window_under_xvfb_shows_a_frame(trained_run, tmp_path):
    from PIL import ImageGrab

    display = f":{_free_display()}"
    xvfb = subprocess.Popen(
        ["Xvfb", display, "-screen", "0", "800x600x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        env = {k: v for k, v in os.environ.items() if k != "SDL_VIDEODRIVER"}
        env["DISPLAY"] = display
        # Ready when a client can connect, not when its socket appears: on a loaded machine SDL once found the
        # socket but no server behind it yet, and watch fell back to the mp4 (stop 39's CI).
        deadline = time.monotonic() + 20
        while True:
            try:
                ImageGrab.grab(xdisplay=display)
                break
            except OSError:
                assert time.monotonic() < deadline, "Xvfb did not start"
                time.sleep(0.1)
        proc = subprocess.Popen(
            [sys.executable, "-m", "gymlab", "watch", str(trained_run), "--episodes", "3", "--fps", "4"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        shot, deadline = None, time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            image = np.asarray(ImageGrab.grab(xdisplay=display))
            if image.std() > 10:  # something other than the empty black root window
                shot = image
                break
            time.sleep(0.3)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "wrote" not in out  # it had a screen: no mp4 fallback
        assert shot is not None, "no frame appeared on the X screen"
        from PIL import Image

        Image.fromarray(shot).save(tmp_path / "screenshot.png")
        # FrozenLake's pale ice fills a 512 x 512 window (256 px frames scaled by 2).
        ice = np.all(np.abs(shot.astype(int) - [204, 230, 247]) < 30, axis=-1)
        assert ice.sum() > 0.25 * 512 * 512, ice.sum()
        assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 20
    finally:
        xvfb.terminate()
        xvfb.wait(timeout=10)


def test_watch_of_a_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(GymlabError, match="no run folder or checkpoint"):
        w.watch(tmp_path / "nope", episodes=1, echo=print)


def test_watch_cuts_episodes_of_an_env_without_time_limit(tmp_path):
    config = make_config(env=ENDLESS_ENV, steps=300, eval_every=0, log_every=300, eval_max_steps=7)
    folder = runs.RunFolder.create(config, tmp_path / "run").path
    train(config, folder)
    lines: list[str] = []
    result = w.watch(folder, episodes=2, echo=lines.append)
    assert result.episodes[0][1] == result.episodes[1][1] == 7
    assert "episode 2 cut at 7 steps: the env has no time limit (eval_max_steps)" in lines


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_stops_watch_at_the_next_frame_with_the_mp4_so_far(
    trained_run, monkeypatch, no_default_signal_handling, sig
):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    frames = 0
    draw = screen.overlaid

    def overlaid_then_signal(frame, lines):
        nonlocal frames
        frames += 1
        if frames == 8:  # the second episode's second frame
            os.kill(os.getpid(), sig)
        return draw(frame, lines)

    monkeypatch.setattr(screen, "overlaid", overlaid_then_signal)
    with pytest.raises(Interrupted, match="watch interrupted after 1 whole episode; the mp4 so far is ") as info:
        w.watch(trained_run, episodes=3, echo=print)
    path = Path(str(info.value).rsplit(" ", 1)[1])
    assert len(video.read_frames(path)) == 8 == frames  # finished (playable), nothing after the signal
    assert signal.getsignal(sig) is no_default_signal_handling


def _unwritable_records(tmp_path):
    (tmp_path / "dir.mp4").mkdir()
    (tmp_path / "f").write_text("a plain file")
    (tmp_path / "link.mp4").symlink_to(tmp_path / "dir.mp4")
    return {
        "folder": (tmp_path / "dir.mp4", "it is a folder"),
        "parent is a file": (tmp_path / "f" / "x.mp4", "is a file, not a folder"),
        "link to a folder": (tmp_path / "link.mp4", "it is a link to a folder"),
        "no such folder in /proc": (Path("/proc/x.mp4"), "No such file or directory"),
    }


@pytest.mark.parametrize("case", ["folder", "parent is a file", "link to a folder", "no such folder in /proc"])
def test_an_unwritable_record_is_refused_before_playing(trained_run, monkeypatch, tmp_path, case):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    record, reason = _unwritable_records(tmp_path)[case]

    def no_play(*args, **kwargs):
        raise AssertionError("played before refusing --record")

    monkeypatch.setattr(w.video, "play_steps", no_play)
    with pytest.raises(GymlabError, match=reason) as info:
        w.watch(trained_run, episodes=1, record=record, echo=print)
    assert str(info.value).startswith(f"--record {record}: ") and "\n" not in str(info.value)
    assert (tmp_path / "f").read_text() == "a plain file" and not list((tmp_path / "dir.mp4").iterdir())


def test_a_video_ffmpeg_could_not_write_is_an_error_not_a_success(trained_run, monkeypatch, tmp_path):
    """The target turns into a folder after the checks (a race): ffmpeg fails, and watch says so."""
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    record = tmp_path / "late.mp4"
    probe = screen.window_problem

    def folder_appears():
        record.mkdir()
        return probe()

    monkeypatch.setattr(screen, "window_problem", folder_appears)
    with pytest.raises(GymlabError, match=r"--record .*late\.mp4: cannot write the video") as info:
        w.watch(trained_run, episodes=1, record=record, echo=print)
    assert "\n" not in str(info.value) and record.is_dir() and not list(record.iterdir())


def test_a_writer_that_wrote_no_file_fails_on_close(tmp_path, monkeypatch):
    class Silent:  # an encoder that takes frames and writes nothing, as ffmpeg does when it cannot open its output
        def append_data(self, frame):
            pass

        def close(self):
            pass

    monkeypatch.setattr(video.imageio, "get_writer", lambda *a, **k: Silent())
    writer = video.Mp4Writer(tmp_path / "x.mp4", 8)
    writer.append(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(OSError, match="no video"):
        writer.close()


@pytest.mark.parametrize("fps", [float("nan"), float("inf"), 0.0, 241.0])
def test_a_bad_fps_is_refused(trained_run, fps):
    with pytest.raises(GymlabError, match="must be a finite number" if not np.isfinite(fps) else "between 0.1 and 240"):
        w.watch(trained_run, episodes=1, fps=fps, echo=print)


def test_cli_watch_record_under_a_file_is_exit_2_without_traceback(trained_run, tmp_path, monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    (tmp_path / "f").write_text("a plain file")
    result = gymlab_inprocess("watch", trained_run, "--episodes", "1", "--record", tmp_path / "f" / "x.mp4")
    assert result.code == 2, result.ok()
    assert result.err.count("\n") == 1 and result.err.startswith("gymlab: error: --record ")
    assert "is a file, not a folder" in result.err and not result.out


def test_an_existing_record_file_is_kept_unless_overwrite_is_asked(trained_run, tmp_path, monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    kept = tmp_path / "clip.mp4"
    kept.write_bytes(b"yesterday's video")
    result = gymlab_inprocess("watch", trained_run, "--episodes", "1", "--record", kept)
    assert result.code == 2, result.ok()
    assert result.err.count("\n") == 1 and result.err.startswith(f"gymlab: error: --record {kept}: ")
    assert "exists" in result.err and "--overwrite" in result.err and not result.out
    assert kept.read_bytes() == b"yesterday's video"
    result = gymlab_inprocess("watch", trained_run, "--episodes", "1", "--record", kept, "--overwrite")
    assert result.code == 0, result.ok()
    assert len(video.read_frames(kept)) == 7


def test_an_existing_record_file_is_no_reason_to_refuse_a_text_env_that_records_nothing(tmp_path):
    # --record on an env without pixels is ignored, yet an existing file was refused ("the file exists; pass
    # --overwrite"), which --overwrite would not have replaced either: the episodes are printed and the file kept
    config = make_config(env=TEXT_ENV, steps=600, eval_every=0, log_every=300)
    folder = runs.RunFolder.create(config, tmp_path / "run").path
    train(config, folder)
    kept = tmp_path / "clip.mp4"
    kept.write_bytes(b"yesterday's video")
    link = tmp_path / "link.mp4"
    link.symlink_to(kept)
    for record, more in [(kept, []), (link, ["--overwrite"])]:
        result = gymlab_inprocess("watch", folder, "--episodes", "1", "--record", record, *more)
        assert result.code == 0, result.ok()
        assert f"renders no pixels: --record ignored ({record} is not written)" in result.out
        assert "episode 1: return " in result.out and "sample: " in result.out
    assert kept.read_bytes() == b"yesterday's video" and link.is_symlink()


def test_two_headless_watches_in_one_second_write_two_videos(trained_run, monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setattr(w.time, "strftime", lambda fmt, *a: "20260101-000000")
    first = w.watch(trained_run, episodes=1, echo=print).video
    second = w.watch(trained_run, episodes=1, echo=print).video
    assert first is not None and second is not None and first != second
    assert first.is_file() and second.is_file()


def test_the_episode_count_is_said_in_good_english(trained_run, monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    result = gymlab_inprocess("watch", trained_run, "--episodes", "1")
    assert result.code == 0, result.ok()
    assert "1 episode: mean return 1" in result.out, result.out


def test_a_headless_video_that_cannot_be_written_does_not_blame_a_record_option(trained_run, tmp_path, monkeypatch):
    """No --record was given: the line names the run's own video path and says how to choose another."""
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    shutil.rmtree(run / "videos", ignore_errors=True)
    (run / "videos").write_text("a file where the videos folder goes")
    with pytest.raises(GymlabError) as info:
        w.watch(run, episodes=1, echo=print)
    message = str(info.value)
    assert message.startswith(f"cannot write the video {run / 'videos'}") and "--record " not in message.split(":")[0]
    assert "give a writable path with --record" in message and "\n" not in message
    # stop 32: it said "File exists", which read as if the mp4 existed
    assert f"{run / 'videos'} is a file, not a folder" in message
    assert (run / "videos").read_text() == "a file where the videos folder goes"
