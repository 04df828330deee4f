"""`gymlab check ENV`: one verdict per point for a user's env, exit 2 when one fails, and whatever the env
raises reported as a verdict, never a traceback. The broken envs are defined here (``test_check:Name``)."""

import os
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from conftest import run_cli

from gymlab import envcheck
from gymlab.envcheck import FAIL, PASS, WARN
from gymlab.errors import GymlabError


class Walk(gym.Env):
    """A well-behaved env without a time limit: a seeded random walk on a line, observed as (position, speed)."""

    observation_space = gym.spaces.Box(-10.0, 10.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, length: int = 5) -> None:
        self.length = length
        self.pos = 0.0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = float(self.np_random.uniform(-1, 1))
        return self._obs(), {}

    def _obs(self):
        return np.array([self.pos, 0.0], np.float32)

    def step(self, action):
        self.pos += (1.0 if action else -1.0) * float(self.np_random.uniform(0.5, 1.0))
        terminated = abs(self.pos) >= self.length
        return self._obs(), 1.0, terminated, False, {}


class SelfTruncating(Walk):
    """Cuts its own episodes after 20 steps (a time limit without a registered one)."""

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self.t += 1
        obs, reward, terminated, _, info = super().step(action)
        return obs, reward, terminated, self.t >= 20, info


class Overrunning(Walk):
    """Declares that its episodes end within 3 steps (max_episode_length), but its walk to ±1000 goes on."""

    max_episode_length = 3


class UnseededReset(Walk):
    """Draws its start from numpy's global generator, so reset(seed=...) does not fix it."""

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = float(np.random.uniform(-1, 1))  # noqa: NPY002 - the global generator, on purpose
        return self._obs(), {}


class UnseededStep(Walk):
    """Seeded reset, but each step's noise comes from the global generator."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward + float(np.random.uniform()), terminated, truncated, info  # noqa: NPY002


class NaNObservation(Walk):
    """Its third step's observation is NaN."""

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self.t += 1
        obs, reward, terminated, truncated, info = super().step(action)
        return (np.full(2, np.nan, np.float32) if self.t == 3 else obs), reward, terminated, truncated, info


class InfReward(Walk):
    """Its rewards are infinite."""

    def step(self, action):
        obs, _, terminated, truncated, info = super().step(action)
        return obs, float("inf"), terminated, truncated, info


class RaisingStep(Walk):
    """Its step raises."""

    def step(self, action):
        raise RuntimeError("physics diverged")


class WrongShape(Walk):
    """Its steps return three numbers where the space says two."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return np.append(obs, 0.0).astype(np.float32), reward, terminated, truncated, info


class OldStepAPI(Walk):
    """Gym's old four-value step (no terminated/truncated split)."""

    def step(self, action):
        obs, reward, terminated, _, info = super().step(action)
        return obs, reward, terminated, info


class RaisingConstructor(Walk):
    """Cannot be built."""

    def __init__(self, length: int = 5) -> None:
        raise OSError("serial port /dev/ttyUSB0 not found")


class BinaryActions(Walk):
    """An action space no built-in agent handles."""

    action_space = gym.spaces.MultiBinary(3)  # type: ignore[assignment]

    def step(self, action):
        return super().step(int(action[0]))


# The `module:Env-v0` form: importing this module registers an id with a time limit.
gym.register("CheckWalk-v0", entry_point="test_check:Walk", max_episode_steps=50)

# Each case: the env (module:Class or id) and env_kwargs -> the verdicts expected {point: (status, fragment)}.
CASES = {
    "healthy-with-time-limit": (
        "CartPole-v1",
        {},
        {
            "time limit": (PASS, "truncated at 500 steps"),
            "determinism": (PASS, "equal"),
            "finite values": (PASS, "finite over 200 random steps"),
            "observations in space": (PASS, "inside Box"),
            "agents": (PASS, "dqn, reinforce, random support its spaces (not tabular_q, seqgan)"),
        },
    ),
    "no-time-limit": ("test_check:Walk", {"length": 1000}, {"time limit": (WARN, "none registered; evaluation cuts")}),
    "no-time-limit-but-episodes-end": (
        "test_check:Walk",
        {},
        {"time limit": (WARN, "random episodes ended by themselves"), "determinism": (PASS, "")},
    ),
    "registered-id": ("test_check:CheckWalk-v0", {}, {"time limit": (PASS, "truncated at 50 steps")}),
    "self-truncating": ("test_check:SelfTruncating", {}, {"time limit": (PASS, "truncates episodes itself")}),
    # SeqGen's episodes end after seq_len tokens by construction, and its envs declare it (max_episode_length)
    "declared-fixed-length": (
        "SeqGen-v0",
        {"vocab_size": 8, "seq_len": 7},
        {"time limit": (PASS, "every episode ends within 7 steps, as the env declares")},
    ),
    "declared-length-overrun": (
        "test_check:Overrunning",
        {"length": 1000},
        {"time limit": (FAIL, "declares max_episode_length=3, but a random episode went on past step 3")},
    ),
    "unseeded-reset": ("test_check:UnseededReset", {}, {"determinism": (FAIL, "reset(seed=0) gave two different")}),
    "unseeded-step": ("test_check:UnseededStep", {}, {"determinism": (FAIL, "step 1 after reset(seed=0)")}),
    "nan-observation": ("test_check:NaNObservation", {}, {"finite values": (FAIL, "step 3: the observation")}),
    "inf-reward": ("test_check:InfReward", {}, {"finite values": (FAIL, "step 1: reward is inf")}),
    "raising-step": (
        "test_check:RaisingStep",
        {},
        {
            "gymnasium checker": (FAIL, "RuntimeError: physics diverged"),
            "determinism": (FAIL, "step() raised RuntimeError: physics diverged"),
            "finite values": (FAIL, "step() raised RuntimeError"),
            "observations in space": (FAIL, "step() raised RuntimeError"),
            "agents": (PASS, "dqn"),
        },
    ),
    "wrong-shape": (
        "test_check:WrongShape",
        {},
        {"observations in space": (FAIL, "step 1 returned an observation of shape (3,), the space says (2,)")},
    ),
    "old-step-api": (
        "test_check:OldStepAPI",
        {},
        {
            "gymnasium checker": (FAIL, "step() returned 4 values where Gymnasium's API has 5"),
            "determinism": (FAIL, "step() returned 4 values where Gymnasium's API has 5"),
        },
    ),
    "raising-constructor": ("test_check:RaisingConstructor", {}, {"builds": (FAIL, "OSError: serial port")}),
    "no-agent-fits": (
        "test_check:BinaryActions",
        {},
        {"agents": (WARN, "no learning agent supports")},
    ),
    "env-kwargs-reach-the-env": ("test_check:Walk", {"length": 2}, {"determinism": (PASS, "whole episode")}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_point_has_its_verdict(case):
    env_id, kwargs, expected = CASES[case]
    report = envcheck.check(env_id, kwargs, steps=200)
    verdicts = {v.point: v for v in report.verdicts}
    for point, (status, fragment) in expected.items():
        assert verdicts[point].status == status, verdicts[point]
        assert fragment in verdicts[point].detail, verdicts[point]
    assert report.ok == all(v.status != FAIL for v in report.verdicts)
    assert all("\n" not in v.detail for v in report.verdicts)


def test_a_healthy_env_passes_every_point():
    report = envcheck.check("test_check:SelfTruncating", {}, steps=100)
    assert [v.point for v in report.verdicts] == [
        "gymnasium checker",
        "time limit",
        "determinism",
        "render",
        "close",
        "finite values",
        "observations in space",
        "agents",
    ]
    assert report.ok and all(v.status == PASS for v in report.verdicts), report.verdicts
    assert envcheck.summary(report) == "test_check:SelfTruncating: every check passed"


def test_env_kwargs_words_are_parsed_as_yaml():
    with pytest.raises(GymlabError, match="'map_name' is not key=value"):
        envcheck.parse_env_kwargs(["map_name"])
    assert envcheck.parse_env_kwargs(["map_name=8x8", "is_slippery=false", "env_kwargs.size=3"]) == {
        "map_name": "8x8",
        "is_slippery": False,
        "size": 3,
    }
    # stop 41: check took render_mode=human, which train refuses; its title showed the words as a dict
    with pytest.raises(GymlabError, match=r"gymlab check sets the render mode itself .*: remove render_mode"):
        envcheck.parse_env_kwargs(["render_mode=human"])
    report = envcheck.CheckReport("FrozenLake-v1", {"map_name": "8x8", "is_slippery": False})
    assert envcheck.render(report).title == "gymlab check FrozenLake-v1 map_name=8x8 is_slippery=False"


TESTS_DIR = str(Path(__file__).parent)

# End to end: argv -> exit code, a fragment of stdout (the table or the summary), a fragment of stderr's one line.
CLI_CASES = {
    "passes": (["check", "FrozenLake-v1", "is_slippery=false", "--steps", "50"], 0, "every check passed", ""),
    "warns-only": (["check", "test_check:Walk", "--steps", "50"], 0, "with warnings on: time limit", ""),
    # SeqGen's episodes end by construction: no warning (the summary line ends there)
    "fixed-length": (["check", "SeqGen-v0", "vocab_size=8", "seq_len=7", "--steps", "50"], 0, "passed\n", ""),
    "nan": (["check", "test_check:NaNObservation", "--steps", "50"], 2, "finite values", "checks failed (finite"),
    "raising-step": (["check", "test_check:RaisingStep", "--steps", "50"], 2, "physics diverged", "checks failed"),
    "unknown-env": (["check", "Taxi-v3"], 2, "", "unknown environment 'Taxi-v3'"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_check_on_the_command_line(tmp_path, case):
    argv, code, out, err = CLI_CASES[case]
    env = {"PYTHONPATH": os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")]), "COLUMNS": "200"}
    proc = run_cli(*argv, cwd=tmp_path, env=env)
    assert proc.returncode == code, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert out in proc.stdout
    if code == 0:
        assert proc.stderr == "" or "XDG_RUNTIME_DIR" in proc.stderr
    else:
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("gymlab: error: ") and err in proc.stderr


# `check` and `train` must agree on a user env: each broken env below is refused by both, in one line.
class Base(gym.Env):
    """The adversarial pass's base env: Box(-1, 1, (3,)), Discrete(2), 10-step episodes, (16, 16, 3) frames."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)
    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}  # noqa: RUF012 - as Gymnasium declares it

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        assert self.action_space.contains(action), f"{action!r} invalid"
        self.t += 1
        return np.zeros(3, np.float32), 1.0, self.t >= 10, False, self._info()

    def _info(self):
        return {}

    def render(self):
        return np.zeros((16, 16, 3), np.uint8)


class NoneMetadata(Base):
    metadata = None  # type: ignore[assignment]  # the fault under test


class GrowingFrames(Base):
    """Each frame one row taller than the last: a video cannot hold them."""

    def render(self):
        return np.zeros((16 + self.t, 16, 3), np.uint8)


class BreaksOnRequest(Base):
    """A file ``break-raise`` or ``break-exit`` in the working folder makes ``reset`` raise, or call ``sys.exit(5)``."""

    def reset(self, *, seed=None, options=None):
        if os.path.exists("break-raise"):
            raise ValueError("asked to break")
        if os.path.exists("break-exit"):
            sys.exit(5)
        return super().reset(seed=seed, options=options)


class ListInfo(Base):
    def _info(self):
        return [1, 2]


class NoneInfo(Base):
    def _info(self):
        return None


class TextDone(Base):
    """terminated as text: "no" reads as true, and every episode would end at its first step."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, "yes" if terminated else "no", truncated, info


class TextDoneTupleObs(TextDone):
    """As :class:`TextDone`, with a Tuple observation: stepped by Gymnasium's vector env, not the lean one."""

    observation_space = gym.spaces.Tuple((gym.spaces.Discrete(3), gym.spaces.Discrete(2)))  # type: ignore[assignment]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return (0, 1), {}

    def step(self, action):
        _, reward, terminated, truncated, info = super().step(action)
        return (self.t % 3, 0), reward, terminated, truncated, info


class DiscreteOutMidEpisode(Base):
    """Discrete(4) observations, one of them 7, in the middle of each episode (a table of 4 rows has no row 7)."""

    observation_space = gym.spaces.Discrete(4)  # type: ignore[assignment]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return 0, {}

    def step(self, action):
        _, reward, terminated, truncated, info = super().step(action)
        return 7 if self.t == 5 else 1, reward, terminated, truncated, info


class ArrayReward(Base):
    """Two numbers as one step's reward."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, np.array([reward, reward]), terminated, truncated, info


class ObsMidEpisode(Base):
    """At step 5: ``kind`` instead of the (3,) observation (a scalar or a (1,) array numpy would broadcast, text it
    would parse), or for a Discrete(4) space a float between two states."""

    kind = "scalar"

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if self.t == 5:
            obs = {"scalar": np.float32(0.5), "short": np.array([0.5], np.float32), "text": "0.5", "float": 2.5}[
                self.kind
            ]
        elif self.kind == "float":
            obs = 1
        return obs, reward, terminated, truncated, info


class ScalarObsMidEpisode(ObsMidEpisode):
    kind = "scalar"


class ShortObsMidEpisode(ObsMidEpisode):
    kind = "short"


class TextObsMidEpisode(ObsMidEpisode):
    kind = "text"


class FloatDiscreteObsMidEpisode(ObsMidEpisode):
    kind = "float"
    observation_space = gym.spaces.Discrete(4)  # type: ignore[assignment]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return 0, {}


class ComplexReward(Base):
    """Its reward is a complex number while a file ``complex`` is in the working folder."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, complex(reward) if os.path.exists("complex") else reward, terminated, truncated, info


class InfoFinalObs(Base):
    """Its info holds "final_obs", the key Gymnasium's vector env writes an ended episode's last observation to."""

    def _info(self):
        return {"final_obs": np.full(3, 0.9, np.float32)}


class ResetOutOfBounds(Base):
    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.full(3, 5.0, np.float32), {}


class CloseRaises(Base):
    def close(self):
        raise RuntimeError("broken close")


class LeavesAThread(Base):
    """Starts a thread that is no daemon and never ends: Python would wait for it at exit."""

    def reset(self, *, seed=None, options=None):
        import threading
        import time

        if not any(t.name == "never-ends" for t in threading.enumerate()):
            threading.Thread(target=time.sleep, args=(10_000,), name="never-ends").start()
        return super().reset(seed=seed, options=options)


class TinyImages(Base):
    """(3, 8, 8) uint8 frames: an image too small for the Nature CNN's convolutions."""

    observation_space = gym.spaces.Box(0, 255, (3, 8, 8), np.uint8)  # type: ignore[arg-type]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros((3, 8, 8), np.uint8), {}

    def step(self, action):
        _, reward, terminated, truncated, info = super().step(action)
        return np.zeros((3, 8, 8), np.uint8), reward, terminated, truncated, info


class SequenceObs(Base):
    """A valid variable-length observation: a Sequence of Discrete(3)."""

    observation_space = gym.spaces.Sequence(gym.spaces.Discrete(3))  # type: ignore[assignment]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return (0, 1), {}

    def step(self, action):
        _, reward, terminated, truncated, info = super().step(action)
        return (0, 1, 2)[: 1 + self.t % 3], reward, terminated, truncated, info


def gymlab(tmp_path, *argv):
    """``gymlab ARGV`` with this folder importable, run in ``tmp_path``."""
    env = {
        "PYTHONPATH": os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")]),
        "SDL_VIDEODRIVER": "dummy",
        "COLUMNS": "200",
    }
    return run_cli(*argv, cwd=tmp_path, env=env)


def train(tmp_path, env_id, *extra):
    return gymlab(
        tmp_path, "train", "random", env_id, "--steps", "200", "eval_episodes=1", "eval_every=100",
        "--run-dir", str(tmp_path / "r"), *extra,
    )  # fmt: skip


def assert_one_line(proc, *fragments):
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("gymlab: error: "), proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("env_id", "point", "fragments"),
    [
        ("test_check:NoneMetadata", "builds", ["metadata"]),
        ("test_check:ListInfo", "finite values", ["info", "list", "not a dict"]),
        ("test_check:NoneInfo", "finite values", ["info", "NoneType", "not a dict"]),
        ("test_check:TextDone", "finite values", ["terminated='no'", "of type str, not a bool"]),
        ("test_check:TextDoneTupleObs", "finite values", ["terminated='no'", "of type str, not a bool"]),
        pytest.param(
            "test_check:GrowingFrames",
            "render",
            ["render() returned a frame of shape", "every frame of a video must have one size"],
        ),
    ],
)
def test_check_and_train_agree_on_a_broken_env(tmp_path, env_id, point, fragments):
    report = envcheck.check(env_id, {}, steps=50)
    verdicts = {v.point: v for v in report.verdicts}
    assert not report.ok and verdicts[point].status == FAIL, report.verdicts
    assert all(f in verdicts[point].detail for f in fragments[-1:]), verdicts[point]
    proc = train(tmp_path, env_id, *(["video_every=100"] if point == "render" else []))
    assert_one_line(proc, *fragments)
    assert not list(tmp_path.rglob("*.mp4")), "a partial video was left behind"


def test_random_agent_trains_on_a_sequence_observation(tmp_path):
    assert envcheck.check("test_check:SequenceObs", {}, steps=50).ok
    proc = train(tmp_path, "test_check:SequenceObs", "num_envs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_an_invalid_action_is_blamed_on_the_agent_not_the_env():
    from gymlab import registry  # noqa: F401 - the env copies are built as a run builds them
    from gymlab.envguard import VectorGuard
    from gymlab.vector import LeanSyncVectorEnv

    envs = LeanSyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2)
    guard = VectorGuard(envs)
    guard.reset(seed=0)
    with pytest.raises(GymlabError) as caught:
        guard.step(np.array([0, 7]))
    message = str(caught.value)
    assert "the agent's action 7 for copy 1 is outside the action space Discrete(2)" in message
    assert "the agent is at fault" in message and "gymlab check" not in message
    guard.send(np.array([7, 0]))
    with pytest.raises(GymlabError, match="the agent's action 7 for copy 0 is outside"):
        guard.recv()
    guard.close()


@pytest.mark.needs("ffmpeg")
def test_watch_of_an_env_whose_frames_change_size_leaves_no_partial_video(tmp_path):
    assert train(tmp_path, "test_check:GrowingFrames").returncode == 0
    proc = gymlab(tmp_path, "watch", str(tmp_path / "r"), "--episodes", "1", "--trust", "test_check")
    assert_one_line(proc, "render() returned a frame of shape", "every frame of a video must have one size")
    assert not list(tmp_path.rglob("*.mp4")), "a partial video was left behind"
    mine = str(tmp_path / "mine.mp4")
    proc = gymlab(tmp_path, "watch", str(tmp_path / "r"), "--episodes", "1", "--record", mine, "--trust", "test_check")
    assert_one_line(proc, "every frame of a video must have one size")
    assert not list(tmp_path.rglob("*.mp4")), "a partial video was left behind"


@pytest.mark.parametrize(("how", "said"), [("raise", "reset() raised ValueError: asked to break"),
                                           ("exit", "reset() called sys.exit(5)")])  # fmt: skip
def test_eval_of_an_env_that_fails_names_the_env(tmp_path, how, said):
    assert train(tmp_path, "test_check:BreaksOnRequest").returncode == 0
    (tmp_path / f"break-{how}").touch()
    proc = gymlab(tmp_path, "eval", str(tmp_path / "r"), "--episodes", "1", "--trust", "test_check")
    assert_one_line(proc, f"env test_check:BreaksOnRequest copy 0: {said}", "gymlab check test_check:BreaksOnRequest")


@pytest.mark.parametrize("agent", ["tabular_q", "dqn"])
@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_a_discrete_observation_outside_its_space_mid_episode_stops_the_run_blaming_the_env(
    tmp_path, agent, vectorization
):
    """The table's IndexError (tabular Q) or one_hot's RuntimeError (DQN) was a traceback, the env unnamed."""
    assert not envcheck.check("test_check:DiscreteOutMidEpisode", {}, steps=50).ok
    proc = gymlab(
        tmp_path, "train", agent, "test_check:DiscreteOutMidEpisode", "--steps", "200", "eval_episodes=1",
        f"vectorization={vectorization}", "num_envs=2", "--run-dir", str(tmp_path / agent),
    )  # fmt: skip
    assert_one_line(proc, "env test_check:DiscreteOutMidEpisode copy", "outside Discrete(4)")


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_a_reward_that_is_an_array_stops_the_run_blaming_the_env(tmp_path, vectorization):
    """Under async it reached DQN's replay memory as a (2, 2) batch: a traceback; under sync the line said the env's
    step() raised the ValueError gymlab's own check tripped on."""
    assert not envcheck.check("test_check:ArrayReward", {}, steps=50).ok
    proc = gymlab(
        tmp_path, "train", "dqn", "test_check:ArrayReward", "--steps", "200", "eval_episodes=1",
        f"vectorization={vectorization}", "num_envs=2", "--run-dir", str(tmp_path / "r"),
    )  # fmt: skip
    assert_one_line(proc, "env test_check:ArrayReward", "reward", "not a number")
    assert "raised" not in proc.stderr


@pytest.mark.parametrize("cls", ["ScalarObsMidEpisode", "ShortObsMidEpisode", "TextObsMidEpisode",
                                 "FloatDiscreteObsMidEpisode"])  # fmt: skip
def test_an_observation_numpy_would_broadcast_or_parse_mid_episode_stops_the_run(tmp_path, cls):
    """Trained on silently before: 0.5 broadcast into all four entries, "0.5" parsed, 2.5 stored as state 2."""
    assert not envcheck.check(f"test_check:{cls}", {}, steps=50).ok
    agent = "tabular_q" if "Discrete" in cls else "dqn"
    proc = gymlab(
        tmp_path, "train", agent, f"test_check:{cls}", "--steps", "100", "eval_episodes=1", "--run-dir",
        str(tmp_path / "r"),
    )  # fmt: skip
    assert_one_line(proc, f"env test_check:{cls} copy 0", "step()")


@pytest.mark.needs("ffmpeg")
def test_watch_of_an_env_whose_reward_is_complex_is_one_line(tmp_path):
    """float(1+0j) raised TypeError outside the check: a traceback in watch (train and eval said one line)."""
    assert train(tmp_path, "test_check:ComplexReward").returncode == 0
    (tmp_path / "complex").touch()
    proc = gymlab(tmp_path, "watch", str(tmp_path / "r"), "--episodes", "1", "--trust", "test_check")
    assert_one_line(proc, "reward of type complex, not a number")


@pytest.mark.parametrize(
    ("cls", "said"),
    [
        ("TextDone", "terminated='no'"),  # trained the whole budget on one-step episodes; only evaluation failed
        ("ResetOutOfBounds", "outside its declared bounds"),
        ("InfoFinalObs", "'final_obs'"),  # replaced every transition's next observation
        ("ListInfo", "not a dict"),
    ],
)
def test_a_process_per_copy_env_is_held_to_the_same_rules_as_the_others(tmp_path, cls, said):
    """Under vectorization=async none of the reset and episode-end checks ran while training."""
    proc = gymlab(
        tmp_path, "train", "dqn", f"test_check:{cls}", "--steps", "200", "eval_every=0", "eval_episodes=1",
        "vectorization=async", "num_envs=2", "--run-dir", str(tmp_path / "r"),
    )  # fmt: skip
    assert_one_line(proc, f"env test_check:{cls} copy", said)
    assert "during evaluation" not in proc.stderr


def test_a_close_that_raises_does_not_stop_a_process_per_copy_run(tmp_path):
    """Gymnasium closes a first copy while the vector env starts: a close() that raised was a traceback there."""
    proc = gymlab(
        tmp_path, "train", "random", "test_check:CloseRaises", "--steps", "50", "eval_episodes=1",
        "vectorization=async", "num_envs=2", "--run-dir", str(tmp_path / "r"),
    )  # fmt: skip
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_a_thread_the_env_leaves_running_does_not_keep_gymlab_alive(tmp_path):
    """It printed 'done', then never exited; a Ctrl-C there said 'nothing was saved' of a finished run."""
    proc = gymlab(tmp_path, "train", "random", "test_check:LeavesAThread", "--steps", "50", "eval_episodes=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done: 50 steps" in proc.stdout and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "never-ends" in proc.stderr and "still ran" in proc.stderr


def test_dqn_refuses_images_too_small_for_its_cnn_and_check_says_so(tmp_path):
    """A 95-line traceback from the convolution before; check said dqn supported the env."""
    report = envcheck.check("test_check:TinyImages", {}, steps=20)
    agents = next(v for v in report.verdicts if v.point == "agents")
    assert "dqn" in agents.detail.partition("(not ")[2], agents.detail  # dqn among those that do not
    proc = gymlab(tmp_path, "train", "dqn", "test_check:TinyImages", "--steps", "100", "--run-dir", str(tmp_path / "r"))
    assert_one_line(proc, "3x8x8 uint8 images", "36x36")
