"""`watch` when no window can open: it writes the mp4 and says why, whatever SDL's video driver is set to."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from clihelp import assert_nothing_lost, assert_ok, copy_run, gymlab, snapshot

from gymlab import video

pytestmark = pytest.mark.needs("ffmpeg")  # the fallback writes an mp4


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A short tabular Q run on FrozenLake (its frames are drawn with pygame, which needs a display driver)."""
    cwd = tmp_path_factory.mktemp("fallback")
    train = ["train", "tabular_q", "FrozenLake-v1", "--steps", "300", "--run-dir", "run", "eval_episodes=1"]
    proc = subprocess.run(
        [sys.executable, "-m", "gymlab", *train], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return cwd / "run"


# SDL_VIDEODRIVER values with which a display looks usable (DISPLAY is set) but SDL cannot open one.
UNUSABLE_DRIVERS = {"empty": "", "unknown": "no-such-driver", "x11-without-server": "x11"}


@pytest.mark.parametrize("case", list(UNUSABLE_DRIVERS))
def test_an_unusable_video_driver_falls_back_to_the_mp4(run_folder, case):
    driver = UNUSABLE_DRIVERS[case]
    env = {**os.environ, "SDL_VIDEODRIVER": driver, "DISPLAY": ":97"}  # no X server listens on :97
    proc = subprocess.run(
        [sys.executable, "-m", "gymlab", "watch", str(run_folder), "--episodes", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("no screen"))
    assert f"cannot open a window (SDL_VIDEODRIVER={driver!r}" in line
    written = line.rsplit("wrote ", 1)[1]
    assert len(video.read_frames(run_folder.parent / written)) >= 1


# --- the same, with --record naming the file, on a copy of a trained Taxi run -------------------------------

WINDOWLESS = {
    "empty-driver": {"SDL_VIDEODRIVER": "", "DISPLAY": ":99"},
    "unknown-driver": {"SDL_VIDEODRIVER": "no-such-driver", "DISPLAY": ":99"},
    "no-server": {"SDL_VIDEODRIVER": "x11", "DISPLAY": ":99"},
}


@pytest.mark.parametrize("case", WINDOWLESS)
def test_watch_with_record_writes_the_named_mp4_when_no_window_opens_and_loses_nothing(
    taxi_run: Path, tmp_path: Path, case: str
):
    run = copy_run(taxi_run, tmp_path / "run")
    before = snapshot(run)
    proc = gymlab("watch", run, "--episodes", "1", "--record", "w.mp4", cwd=tmp_path, env=WINDOWLESS[case])
    assert_ok(proc)
    assert (tmp_path / "w.mp4").stat().st_size > 0 and "w.mp4" in proc.out, proc.show()
    assert_nothing_lost(run, before)
