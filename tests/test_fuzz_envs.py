"""Generated user envs: any observation space, raising in any one method or returning what the space does not allow.

Each env goes through ``gymlab check``, ``train`` (with videos), ``eval`` and ``watch``. Every command ends by
the project's rule (exit 0, or exit 2 with one line), and ``check``'s verdict agrees with what ``train`` then
does: an env that check passes trains, and one it fails is stopped in one line blaming the env. The env is
one class whose space and fault are its ``env_kwargs`` (tests/strategies.py), so a new space or fault is one
word in a list.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import strategies as fz
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_fuzz_cli import assert_by_the_rule, run_here

from gymlab import envcheck

pytestmark = pytest.mark.needs("ffmpeg")  # videos and watch write mp4s


@pytest.fixture(scope="module")
def user_envs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The generated env's module on sys.path: (env id, folder)."""
    folder = tmp_path_factory.mktemp("userenvs")
    env_id = fz.write_env_module(folder)
    sys.path.insert(0, str(folder))
    yield env_id, folder
    sys.path.remove(str(folder))


@given(case=fz.env_cases())
@settings(max_examples=fz.examples(60))
@example(case=("tuple", "none"))  # issue 23: the random agent crashed on a Tuple observation space
@example(case=("box", "render"))  # issue 23: a traceback under video_every, and check passed it
@example(case=("box", "close"))  # issue 23: a close() that raises crashed start-up
@example(case=("box", "out-of-bounds"))  # issue 23: 1e38 against bounds ±1 was blamed on the learner
@example(case=("dict", "wrong-dtype"))
@example(case=("discrete", "exit"))  # stop 29: sys.exit in an env ended gymlab with the env's exit code, silently
@example(case=("box", "reward-array"))
@example(case=("tuple", "done-text"))  # stop 29: Gymnasium's vector env read "no" as True
@example(case=("box", "reward-huge"))  # 1e39 became inf in float32 replay, blamed on the agent as divergence
@example(case=("dict", "reward-huge"))
@example(case=("box", "render-float"))  # frames of 0.5 were cast to black videos, silently
def test_check_agrees_with_train_and_every_command_ends_by_the_rule(
    user_envs: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory, case: tuple[str, str]
) -> None:
    env_id, _ = user_envs
    space, fault = case
    kwargs = {"space": space, "fault": fault}
    report = envcheck.check(env_id, kwargs, steps=30)
    work = tmp_path_factory.mktemp("env")
    run = work / "run"
    trained = run_here(
        "train", "random", env_id, f"env_kwargs.space={space}", f"env_kwargs.fault={fault}",
        "--steps", "24", "eval_every=12", "eval_episodes=1", "video_every=12", "--run-dir", run, cwd=work,
    )  # fmt: skip
    assert_by_the_rule(trained)
    verdict = envcheck.summary(report)
    assert (trained.code == 0) == report.ok, f"check says: {verdict}\nbut train:\n{trained.ok()}"
    if trained.code != 0:
        assert "env" in trained.err, trained.err  # whose fault it is: the env's
        return
    module = env_id.partition(":")[0]
    evaluated = run_here("eval", run, "--episodes", "1", "--trust", module, cwd=work)
    assert_by_the_rule(evaluated)
    assert evaluated.code == 0, evaluated.ok()
    watched = run_here("watch", run, "--episodes", "1", "--trust", module, "--record", work / "w.mp4", cwd=work)
    assert_by_the_rule(watched)
    assert watched.code == 0, watched.ok()


@given(space=st.sampled_from(fz.SPACES))
@settings(max_examples=len(fz.SPACES))
def test_the_random_agent_trains_on_every_space(user_envs: tuple[str, Path], tmp_path: Path, space: str) -> None:
    env_id, _ = user_envs
    result = run_here(
        "train", "random", env_id, f"env_kwargs.space={space}", "num_envs=2", "--steps", "20", "eval_episodes=1",
        "--run-dir", tmp_path / f"run-{space}", cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 0, result.ok()


NO_SPACE = """
import gymnasium as gym


class NoObservationSpace(gym.Env):
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        return 0, {}

    def step(self, action):
        return 0, 0.0, True, False, {}
"""


def test_an_env_without_an_observation_space_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "nospace.py").write_text(NO_SPACE)
    sys.path.insert(0, str(tmp_path))
    try:
        checked = run_here("check", "nospace:NoObservationSpace", cwd=tmp_path)
        trained = run_here("train", "random", "nospace:NoObservationSpace", "--steps", "10", cwd=tmp_path)
    finally:
        sys.path.remove(str(tmp_path))
    for result in (checked, trained):
        assert result.code == 2, result.ok()
        assert "observation_space" in result.err and "Traceback" not in result.err, result.ok()


def test_observations_outside_their_bounds_are_blamed_on_the_env(user_envs: tuple[str, Path], tmp_path: Path) -> None:
    # issue 23: 1e38 against bounds of ±1 stopped DQN with "the agent diverged: try a lower learning rate"
    env_id, _ = user_envs
    result = run_here(
        "train", "dqn", env_id, "env_kwargs.space=box", "env_kwargs.fault=out-of-bounds", "learning_starts=4",
        "batch_size=4", "--steps", "200", "eval_episodes=1", "--run-dir", tmp_path / "run", cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 2, result.ok()
    assert "outside its declared bounds" in result.err and "learning rate" not in result.err, result.err


MIDWAY_NAN = """
import gymnasium as gym
import numpy as np


class MidwayNan(gym.Env):
    observation_space = gym.spaces.{space}
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(0.0), {{}}

    def _obs(self, x):
        inner = {{"x": np.full(2, x, np.float32), "n": 1}}
        return inner if isinstance(self.observation_space, gym.spaces.Dict) else (inner["n"], inner)

    def step(self, action):
        self.t += 1
        return self._obs(np.nan if self.t == 3 else 0.0), 0.0, self.t == 10, False, {{}}
"""


@pytest.mark.parametrize(
    "space",
    [
        'Dict({"x": gym.spaces.Box(-1, 1, (2,), np.float32), "n": gym.spaces.Discrete(3)})',
        'Tuple((gym.spaces.Discrete(3), gym.spaces.Dict({"x": gym.spaces.Box(-1, 1, (2,), np.float32), '
        '"n": gym.spaces.Discrete(3)})))',
    ],
    ids=["dict", "tuple-of-dict"],
)
def test_a_nan_inside_a_nested_observation_midway_through_an_episode_stops_the_run(tmp_path: Path, space: str) -> None:
    # stop 32: Dict and Tuple observations were checked at resets and episode ends only, so a NaN at an
    # episode's third step of ten trained on silently
    (tmp_path / "midway.py").write_text(MIDWAY_NAN.format(space=space))
    sys.path.insert(0, str(tmp_path))
    try:
        result = run_here(
            "train", "random", "midway:MidwayNan", "num_envs=2", "--steps", "40", "--run-dir", tmp_path / "run",
            cwd=tmp_path,
        )  # fmt: skip
    finally:
        sys.path.remove(str(tmp_path))
    assert_by_the_rule(result)
    assert result.code == 2, result.ok()
    assert "step()" in result.err and "nan" in result.err.lower() and "env" in result.err, result.err


@pytest.mark.parametrize("agent", ["dqn", "reinforce"])
def test_rewards_beyond_float32_are_blamed_on_the_env(user_envs: tuple[str, Path], tmp_path: Path, agent: str) -> None:
    # a reward of 1e39 is finite, but inf in float32 replay and returns: it stopped DQN and REINFORCE with "the
    # agent diverged: try a lower learning rate"
    env_id, _ = user_envs
    result = run_here(
        "train", agent, env_id, "env_kwargs.space=box", "env_kwargs.fault=reward-huge", "--steps", "200",
        "eval_episodes=1", "--run-dir", tmp_path / "run", cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 2, result.ok()
    assert "float32" in result.err and "learning rate" not in result.err, result.err
    assert not envcheck.check(env_id, {"space": "box", "fault": "reward-huge"}, steps=30).ok


def test_frames_that_are_not_bytes_are_refused_not_cast(user_envs: tuple[str, Path], tmp_path: Path) -> None:
    # frames of floats in [0, 1] were cast to uint8 (all black) and written to videos and watch's mp4, silently
    env_id, _ = user_envs
    kwargs = ["env_kwargs.space=box", "env_kwargs.fault=render-float"]
    trained = run_here(
        "train", "random", env_id, *kwargs, "--steps", "24", "eval_every=12", "eval_episodes=1", "video_every=12",
        "--run-dir", tmp_path / "run", cwd=tmp_path,
    )  # fmt: skip
    plain = run_here("train", "random", env_id, *kwargs, "--steps", "24", "--run-dir", tmp_path / "plain", cwd=tmp_path)
    assert plain.code == 0, plain.ok()  # without videos nothing renders
    watched = run_here(
        "watch", tmp_path / "plain", "--episodes", "1", "--trust", env_id.partition(":")[0],
        "--record", tmp_path / "w.mp4", cwd=tmp_path,
    )  # fmt: skip
    for result in (trained, watched):
        assert result.code == 2, result.ok()
        assert "render()" in result.err and "float64" in result.err, result.err
    assert not (tmp_path / "w.mp4").exists()
    report = envcheck.check(env_id, {"space": "box", "fault": "render-float"}, steps=30)
    assert "render" in envcheck.summary(report) and not report.ok


@pytest.mark.parametrize("vectorization", ["sync", "async"])
@pytest.mark.parametrize(
    ("fault", "space"),
    # (A Tuple observation of two parts returned bare by reset() unpacks as (obs, info): "info of type ndarray")
    [("old-api-step", "box"), ("old-api-step", "tuple"), ("old-api-reset", "box"), ("old-api-reset", "multi-binary")],
)
def test_an_env_of_the_old_gym_api_is_said_to_return_what_gymnasium_does_not(
    user_envs: tuple[str, Path], tmp_path: Path, fault: str, space: str, vectorization: str
) -> None:
    # It was "step() raised ValueError: not enough values to unpack (expected 5, got 4)", blaming code the user
    # never wrote; with a process per copy the copy's number was dropped.
    env_id, _ = user_envs
    result = run_here(
        "train", "random", env_id, f"env_kwargs.space={space}", f"env_kwargs.fault={fault}", "num_envs=2",
        f"vectorization={vectorization}", "--steps", "20", "--run-dir", tmp_path / "run", cwd=tmp_path,
    )  # fmt: skip
    call = "step()" if fault == "old-api-step" else "reset()"
    assert result.code == 2, result.ok()
    assert f"{call} returned" in result.err or f"{call} did not return" in result.err, result.err
    assert "Gymnasium's API has" in result.err and "raised" not in result.err and "copy " in result.err, result.err
    verdict = envcheck.summary(envcheck.check(env_id, {"space": space, "fault": fault}, steps=30))
    assert ("5 values" if fault == "old-api-step" else "(obs, info)") in verdict, verdict  # reset: Gymnasium's words
