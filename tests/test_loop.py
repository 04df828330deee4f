"""The rollout loop: same-step autoreset, true final observations, termination vs truncation,
episode statistics, evaluation, and user-supplied agents and envs given as module:Class."""

import json
import math
import os
import re
import signal
from pathlib import Path
from typing import ClassVar, cast

import gymnasium as gym
import numpy as np
import pytest
import torch
from clihelp import assert_ok, assert_one_line, gymlab, scalars, tensors, write_user_modules
from conftest import gymlab_inprocess
from pydantic import BaseModel, ConfigDict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gymlab import checkpoint, console, envfault, envguard, registry, runner, vector
from gymlab.agent import Context, Transition
from gymlab.checkpoint import Checkpoint
from gymlab.config import validate
from gymlab.errors import GymlabError, Interrupted
from gymlab.evaluation import evaluate
from gymlab.loop import train
from gymlab.runner import RunSpec
from gymlab.signals import StartUpInterrupt


class Corridor(gym.Env):
    """Position 0..3; action 1 moves right, 0 stays. Reaching 3 terminates; 4 steps truncate."""

    observation_space = gym.spaces.Discrete(4)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos, self.t = 0, 0
        return self.pos, {}

    def step(self, action):
        self.pos += int(action)
        self.t += 1
        terminated = self.pos == 3
        truncated = self.t == 4 and not terminated
        return self.pos, float(self.pos), terminated, truncated, {}


class ScriptedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    script: list[int] = [1, 1, 1, 0, 0, 0, 1]


class Scripted:
    """Plays a fixed action script per env copy and records what the loop hands it."""

    name: ClassVar[str] = "scripted"
    summary: ClassVar[str] = "test agent"
    spaces: ClassVar[str] = "any"
    Config: ClassVar[type[BaseModel]] = ScriptedConfig
    seen: ClassVar[list[Transition]] = []
    updates: ClassVar[list[int]] = []

    @classmethod
    def check_spaces(cls, observation_space, action_space):
        return None

    def __init__(self, config: ScriptedConfig, ctx: Context) -> None:
        self.script, self.i = config.script, 0

    def act(self, obs, explore):
        action = self.script[self.i % len(self.script)] if explore else 1
        return np.full(len(obs), action)

    def observe(self, transition):
        self.i += 1
        Scripted.seen.append(transition)

    def update(self, step):
        Scripted.updates.append(step)
        return {"calls": 1.0}

    def state_dict(self):
        return {"policy": {}, "training": {"i": self.i}}

    def load_state_dict(self, state):
        self.i = state["training"]["i"]


def run(tmp_path, steps, num_envs=1, **keys):
    Scripted.seen.clear()
    Scripted.updates.clear()
    cfg = validate(
        {
            "agent": f"{__name__}:Scripted",
            "env": f"{__name__}:Corridor",
            "steps": steps,
            "num_envs": num_envs,
            "eval_every": 0,
            "eval_episodes": 3,
            "log_every": 2,
            **keys,
        },
        Scripted,
    )
    return train(cfg, tmp_path)


def test_final_observation_and_termination_vs_truncation(tmp_path):
    result = run(tmp_path, steps=7)
    seen = [
        (int(t.obs[0]), int(t.action[0]), int(t.next_obs[0]), bool(t.terminated[0]), bool(t.truncated[0]))
        for t in Scripted.seen
    ]
    assert seen == [
        (0, 1, 1, False, False),
        (1, 1, 2, False, False),
        (2, 1, 3, True, False),  # next_obs is the terminal state, not the reset observation
        (0, 0, 0, False, False),  # the next transition starts from the new episode's first observation
        (0, 0, 0, False, False),
        (0, 0, 0, False, False),
        (0, 1, 1, False, True),  # cut by the time limit: truncated, not terminated, true final obs
    ]
    assert Scripted.updates == list(range(1, 8))  # update is called after every step
    assert result.episodes == 2
    assert result.last_eval == 6.0  # greedy policy: 1 + 2 + 3, over whole episodes


def test_several_copies_step_together(tmp_path):
    result = run(tmp_path, steps=14, num_envs=2)
    assert len(Scripted.seen) == 7 and Scripted.seen[0].obs.shape == (2,)
    assert Scripted.updates == list(range(2, 15, 2))  # the step counter counts every copy's steps
    assert result.step == 14 and result.episodes == 4


def test_evaluation_splits_episodes_over_copies():
    envs = registry.make_vec_env(f"{__name__}:Corridor", 2, train=False)
    agent = Scripted(ScriptedConfig(), cast(Context, None))
    returns, lengths = evaluate(agent, envs, episodes=3, seed=0)
    assert returns.tolist() == [6.0, 6.0, 6.0] and lengths.tolist() == [3, 3, 3]


class DropInfo(gym.Wrapper):
    """A user's wrapper that passes no info on (the episode statistics recorded below it included)."""

    steps = 0

    def step(self, action):
        obs, reward, terminated, truncated, _ = self.env.step(action)
        DropInfo.steps += 1
        assert DropInfo.steps < 1000, "the evaluation never ended"
        return obs, reward, terminated, truncated, {}


class EndAfterTwo(DropInfo):
    """A user's wrapper that ends each episode itself after 2 steps, where the env below goes on."""

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self.t += 1
        return obs, reward, terminated, truncated or self.t == 2, info


def drop_info(env, *, train):
    return DropInfo(env)


def end_after_two(env, *, train):
    return EndAfterTwo(env)


@pytest.mark.parametrize(("wrapper", "ret", "length"), [("drop_info", 6.0, 3), ("end_after_two", 3.0, 2)])
def test_an_evaluation_counts_episodes_where_they_end_whatever_a_wrapper_passes_on(wrapper, ret, length):
    """Helper-26: a wrapper that dropped the info made the evaluation play forever (eval_max_steps too)."""
    DropInfo.steps = 0
    envs = registry.make_vec_env(f"{__name__}:Corridor", 2, wrappers=[f"{__name__}:{wrapper}"], train=False)
    agent = Scripted(ScriptedConfig(), cast(Context, None))
    returns, lengths = evaluate(agent, envs, 3, seed=0, max_steps=50)
    envs.close()
    assert returns.tolist() == [ret] * 3 and lengths.tolist() == [length] * 3


@pytest.mark.parametrize("vectorization", ["sync", "auto"])
def test_training_counts_episodes_whose_statistics_a_wrapper_dropped(tmp_path, vectorization):
    """The statistics are recorded innermost; a user's wrapper above that passes no info on left every
    training episode uncounted, with no return logged (helper-26)."""
    DropInfo.steps = 0
    plain = run(tmp_path / "plain", steps=14, num_envs=2, vectorization=vectorization)
    DropInfo.steps = 0
    wrapped = run(tmp_path / "wrapped", steps=14, num_envs=2, vectorization=vectorization,
                  wrappers=[f"{__name__}:drop_info"])  # fmt: skip
    assert plain.episodes == wrapped.episodes == 4
    returns = [scalars(tmp_path / name)["rollout/ep_return"] for name in ("plain", "wrapped")]
    assert returns[0] == returns[1] and returns[0]


def test_a_resumed_episode_count_alone_is_no_ended_episode():
    """A resume puts back the recorder's episode count (plain data), not its queues: an end of the wrappers'
    alone right after it must not be read as an episode of the env's (an empty queue, or the last one's stats)."""
    envs = registry.make_vec_env(f"{__name__}:Corridor", 1, wrappers=[f"{__name__}:end_after_two"], train=True)
    assert isinstance(envs, vector.LeanSyncVectorEnv)
    recorder = vector.episode_recorder(envs.envs[0])
    assert recorder is not None
    envs.reset(seed=0)
    recorder.episode_count = 5  # as set_vector_env_state restores it
    DropInfo.steps = 0
    for _ in range(2):  # the wrapper ends its episode at 2 steps; the corridor's own goes on
        _, _, _, truncated, infos = envs.step(np.ones(1, dtype=np.int64))
    envs.close()
    assert truncated[0] and "_final_obs" in infos and "episode" not in infos["final_info"]


def test_same_seed_same_result_different_seed_different(tmp_path):
    from gymlab.config import resolve

    def q(folder, seed):
        train(resolve("tabular_q", "FrozenLake-v1", None, ["steps=5000", "eval_every=0"], seed=seed), folder)
        return Checkpoint.read(folder / "checkpoints" / "last.pt").agent_state["policy"]["q"]

    a, b, c = q(tmp_path / "a", 1), q(tmp_path / "b", 1), q(tmp_path / "c", 2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


class Slider(gym.Env):
    """A Box(-1, 1) action env that remembers what it received; episodes last 2 steps."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    received: ClassVar[list[float]] = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        Slider.received.append(float(action[0]))
        self.t += 1
        return np.zeros(1, np.float32), 0.0, self.t == 2, False, {}


class Pusher(Scripted):
    """Always asks for 5.0, far outside the bounds."""

    def act(self, obs, explore):
        return np.full((len(obs), 1), 5.0, np.float32)


def test_box_actions_reach_the_env_clipped_and_the_agent_sees_its_own(tmp_path):
    Scripted.seen.clear()
    Slider.received.clear()
    cfg = validate(
        {"agent": f"{__name__}:Pusher", "env": f"{__name__}:Slider", "steps": 4, "eval_every": 0, "eval_episodes": 1},
        Pusher,
    )
    train(cfg, tmp_path)
    assert Slider.received == [1.0] * 6  # 4 training steps, then a 2-step evaluation episode
    assert [float(t.action[0, 0]) for t in Scripted.seen] == [5.0] * 4


# --- evaluation always ends ---------------------------------------------------------------------

GUARD_STEPS = 5_000  # the test envs below raise past this, so a loop that never stops fails instead of hanging


class Wall(gym.Env):
    """No time limit: action 1 walks into a wall and the episode goes on for good; action 0 ends it."""

    observation_space = gym.spaces.Discrete(2)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return 0, {}

    def step(self, action):
        self.t += 1
        assert self.t <= GUARD_STEPS, "an episode ran past the guard: the evaluation never stopped"
        return 0, 1.0, int(action) == 0, False, {}


def test_evaluation_on_an_env_without_time_limit_cuts_each_episode_at_the_cap():
    envs = registry.make_vec_env(f"{__name__}:Wall", 2, train=False)
    cut: list[int] = []
    agent = Scripted(ScriptedConfig(), cast(Context, None))  # greedy: always 1, into the wall
    returns, lengths = evaluate(agent, envs, 3, seed=0, max_steps=50, on_capped=lambda n, r: cut.append(n))
    envs.close()
    assert lengths.tolist() == [50, 50, 50] and returns.tolist() == [50.0, 50.0, 50.0] and cut == [50, 50, 50]


def test_a_run_logs_the_evaluation_episodes_cut_at_eval_max_steps(tmp_path):
    cfg = validate(
        {
            "agent": f"{__name__}:Scripted",
            "env": f"{__name__}:Wall",
            "steps": 20,
            "eval_every": 10,
            "eval_episodes": 2,
            "eval_max_steps": 30,
            "log_every": 10,
        },
        Scripted,
    )
    result = train(cfg, tmp_path)
    assert result.last_eval == 30.0  # cut episodes count, with their return so far
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("eval/capped_episodes")] == [(10, 2.0), (20, 2.0)]
    notes = [t for t in acc.Tags()["tensors"] if t.startswith("notes")]
    text = acc.Tensors(notes[0])[0].tensor_proto.string_val[0].decode()
    assert "2 of 2 evaluation episodes were cut at 30 steps" in text


def test_gymlab_eval_of_a_greedy_policy_stuck_against_a_wall_ends_and_says_so(tmp_path, capsys):
    """CliffWalking has no time limit; an untrained greedy policy walks up into the wall for good."""
    import json

    from gymlab import cli, runs
    from gymlab.config import resolve

    cfg = resolve("tabular_q", "CliffWalking-v1", None, ["steps=300", "eval_every=0", "eval_max_steps=50"])
    folder = runs.RunFolder.create(cfg, tmp_path / "run").path
    assert train(cfg, folder).last_eval == -50.0  # the final evaluation was cut too
    capsys.readouterr()
    cli.main(["eval", str(folder), "--json", "--episodes", "3"])
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["returns"] == [-50.0] * 3 and result["capped_episodes"] == 3
    assert err == (
        "note: 3 of 3 episodes were cut at 50 steps (CliffWalking-v1 has no time limit; run key eval_max_steps) "
        "and count as truncated\n"
    )


@pytest.mark.parametrize(
    ("env", "limit"),
    [
        ("CartPole-v1", 500),  # a TimeLimit wrapper
        ("FrozenLake-v1", 100),
        ("SeqGen-v0", 20),  # no time limit: its episodes end after seq_len tokens, as it declares
        (f"{__name__}:Wall", None),  # a user's class: nothing bounds it
    ],
)
def test_time_limit_of_single_and_vector_envs(env, limit):
    single = registry.make_env(env, train=False)
    envs = registry.make_vec_env(env, 2, train=False)
    assert envguard.time_limit(single) == envguard.time_limit(envs) == limit
    assert envguard.episode_cap(envs, 7) == (limit if limit is not None else 7)
    single.close()
    envs.close()


@pytest.mark.parametrize("start", [0, -2])
def test_a_discrete_observation_is_checked_against_its_space_whatever_its_type(start):
    space = gym.spaces.Discrete(5, start=start)
    for value in range(start - 2, start + 7):
        for obs in (value, np.int64(value), np.array(value), np.array([value])):
            fits = np.ndim(obs) == 0 and start <= value < start + 5
            try:
                envfault.check_obs(space, obs, "step()")
            except envfault.EnvProblem as problem:
                assert not fits, problem
                assert "Discrete" in str(problem) or "shape" in str(problem)
            else:
                assert fits, f"{obs!r} taken for {space}"
    with pytest.raises(envfault.EnvProblem, match="dtype float64"):
        envfault.check_obs(space, float(start), "step()")


# --- finite or stop ------------------------------------------------------------------------------


class Faulty(gym.Env):
    """Box(2,) observations, 7-step episodes, no fault until its ``at``-th step, which has the ``fault``."""

    observation_space: gym.spaces.Space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, fault: str = "", at: int = 0) -> None:
        self.fault, self.at, self.n = fault, at, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.n += 1
        self.t += 1
        obs, reward = np.zeros(2, np.float32), 1.0
        if self.n == self.at:
            if self.fault == "raises":
                raise RuntimeError("boom")
            if self.fault == "nan_obs":
                obs[0] = np.nan
            if self.fault == "shape":
                obs = np.zeros(3, np.float32)
            reward = {"nan_reward": math.nan, "inf_reward": math.inf}.get(self.fault, reward)
        if self.fault == "dtype" and self.n >= self.at:  # from step ``at`` on: booleans, not float32
            obs = np.zeros(2, bool)
        return obs, reward, self.t == 7, False, {}


class DictFaulty(Faulty):
    """Faulty with Dict observations, so the run steps a Gymnasium SyncVectorEnv, not the lab's lean one."""

    observation_space: gym.spaces.Space = gym.spaces.Dict({"x": gym.spaces.Box(-1.0, 1.0, (2,), np.float32)})

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed)
        return {"x": obs}, info

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return {"x": obs}, reward, terminated, truncated, info


class FaultConfig(ScriptedConfig):
    fault: str = ""
    at: int = 0


class Diverging(Scripted):
    """Reports a NaN loss (``fault: nan_loss``) or holds a NaN weight (``fault: nan_param``) from step ``at`` on."""

    Config: ClassVar[type[BaseModel]] = FaultConfig

    def __init__(self, config: FaultConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.fault, self.at, self.w = config.fault, config.at, torch.zeros(1)

    def update(self, step):
        if self.fault == "nan_param" and step >= self.at:
            self.w = torch.full((1,), math.nan)
        if self.fault == "text_metric" and step == self.at:
            return {"loss": "diverged"}
        return {"loss": math.nan if self.fault == "nan_loss" and step == self.at else 0.5}

    def state_dict(self):
        return {"policy": {"w": self.w.clone()}, "training": {"i": self.i}}

    def load_state_dict(self, state):
        self.w, self.i = state["policy"]["w"].clone(), state["training"]["i"]


ENV_FAULT = r"step 30: {what} from env test_loop:Faulty copy 0; "
ENV_CALL = r"step 30: env test_loop:Faulty copy 0: {what}; "
DICT_FAULT = r"step 30: {what} from env test_loop:DictFaulty copy 0; "
DICT_CALL = r"step 30: env test_loop:DictFaulty copy 0: {what}; "  # each copy is wrapped, so its errors name it
AGENT_FAULT = r"step {step}: {what}; "


@pytest.mark.parametrize(
    ("env_fault", "agent_fault", "message"),
    [
        ("dict:nan_reward", "", DICT_FAULT.format(what="reward is nan")),
        ("dict:raises", "", DICT_CALL.format(what=re.escape("step() raised RuntimeError: boom"))),
        ("nan_reward", "", ENV_FAULT.format(what="reward is nan")),
        ("inf_reward", "", ENV_FAULT.format(what="reward is inf")),
        ("nan_obs", "", ENV_FAULT.format(what=re.escape("observation holds nan (returned by step())"))),
        ("raises", "", ENV_CALL.format(what=re.escape("step() raised RuntimeError: boom"))),
        (
            "shape",
            "",
            ENV_CALL.format(what=re.escape("step() returned an observation of shape (3,), the space says (2,)")),
        ),
        (  # stored into the float batch it passes unnoticed; the full check at the episode's end (35) catches it
            "dtype",
            "",
            ENV_CALL.replace("step 30", "step 35").format(
                what=re.escape("step() returned an observation of dtype bool, the space says float32")
            ),
        ),
        (
            "",
            "nan_loss",
            AGENT_FAULT.format(step=30, what=re.escape("train/loss is nan (reported by the agent's update)")),
        ),
        (
            "",
            "nan_param",  # NaN from step 30 on, found when the checkpoint at step 40 is about to be written
            AGENT_FAULT.format(
                step=40, what=re.escape("the agent's state holds nan in policy.w (checked before saving last.pt)")
            ),
        ),
    ],
)
def test_a_non_finite_number_or_a_broken_env_stops_the_run_keeping_the_last_good_checkpoint(
    tmp_path, env_fault, agent_fault, message
):
    cfg = validate(
        {
            "agent": f"{__name__}:Diverging",
            "env": f"{__name__}:{'DictFaulty' if env_fault.startswith('dict:') else 'Faulty'}",
            "env_kwargs": {"fault": env_fault.removeprefix("dict:"), "at": 30},
            "steps": 100,
            "checkpoint_every": 20,
            "eval_every": 0,
            "eval_episodes": 1,
            "log_every": 10,
            "hparams": {"fault": agent_fault, "at": 30},
        },
        Diverging,
    )
    last = tmp_path / "checkpoints" / "last.pt"
    with pytest.raises(GymlabError) as info:
        train(cfg, tmp_path)
    text = str(info.value)
    assert "\n" not in text
    assert re.match(message + re.escape(f"the last good checkpoint is {last} (step 20), left as it was"), text), text
    kept = checkpoint.load(last)
    assert kept["loop"]["step"] == 20
    assert torch.isfinite(kept["agent_state"]["policy"]["w"]).all()


def test_a_nan_parameter_before_the_first_checkpoint_says_none_was_written(tmp_path):
    cfg = validate(
        {
            "agent": f"{__name__}:Diverging",
            "env": f"{__name__}:Faulty",
            "steps": 50,
            "checkpoint_every": 20,
            "eval_every": 0,
            "hparams": {"fault": "nan_param", "at": 1},
        },
        Diverging,
    )
    with pytest.raises(GymlabError, match=r"step 20: .* nan in policy.w .*; no checkpoint had been written yet"):
        train(cfg, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_a_metric_that_is_not_a_number_is_a_one_line_error(tmp_path):
    cfg = validate(
        {
            "agent": f"{__name__}:Diverging",
            "env": f"{__name__}:Faulty",
            "steps": 50,
            "eval_every": 0,
            "hparams": {"fault": "text_metric", "at": 5},
        },
        Diverging,
    )
    with pytest.raises(GymlabError, match=r"update\(\) returned train/loss = 'diverged', not a number"):
        train(cfg, tmp_path)


# --- interrupts ----------------------------------------------------------------------------------


class SignalConfig(ScriptedConfig):
    signal: int = int(signal.SIGINT)


class Signaller(Scripted):
    """Sends itself ``signal`` at its first greedy action (an evaluation's or a video's first step)."""

    Config: ClassVar[type[BaseModel]] = SignalConfig
    sent: ClassVar[bool] = False

    def __init__(self, config: SignalConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.signal = config.signal

    def act(self, obs, explore):
        if not explore and not Signaller.sent:
            Signaller.sent = True
            os.kill(os.getpid(), self.signal)
        return super().act(obs, explore)


SIGNALS = [signal.SIGINT, signal.SIGTERM]


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize(
    ("during", "keys"),
    [("evaluation", {"eval_every": 40}), ("video", {"video_every": 40, "eval_every": 0})],
)
def test_a_signal_during_an_evaluation_or_a_video_stops_the_run_with_a_checkpoint(
    tmp_path, no_default_signal_handling, sig, during, keys
):
    Signaller.sent = False
    data = {
        "agent": f"{__name__}:Signaller",
        "env": f"{__name__}:Corridor",
        "steps": 100,
        "checkpoint_every": 0,
        "eval_episodes": 2,
        "log_every": 10,
        "hparams": {"signal": int(sig)},
        **keys,
    }
    cfg = validate(data, Signaller)
    result = train(cfg, tmp_path)
    assert result.interrupted and result.step == 40
    ckpt = Checkpoint.read(tmp_path / "checkpoints" / "last.pt")
    assert ckpt.step == 40
    assert not (tmp_path / "checkpoints" / "best.pt").exists()  # the interrupted evaluation is no result
    assert not (tmp_path / "videos").exists()  # nor is the interrupted video
    assert signal.getsignal(sig) is no_default_signal_handling  # the run's handlers are gone
    if during == "evaluation":
        assert ckpt.loop.eval_due
        assert "eval/return_mean" not in scalars(tmp_path)
        # Resumed, the run plays the interrupted evaluation first: its curve is the uninterrupted one's.
        # (Read afresh: a reader kept open skips the resumed run's event file when both runs share a
        # second and a process, as here, since its name then sorts first.)
        train(cfg, tmp_path, resume=ckpt)
        assert [step for step, _ in scalars(tmp_path)["eval/return_mean"]] == [40, 80, 100]


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_real_signal_stops_gymlab_train_while_it_evaluates_a_policy_stuck_against_a_wall(tmp_path, sig):
    """CliffWalking has no time limit and an untrained greedy policy walks into the
    wall for good, so the evaluation at step 500 would last its whole cap (here 10^9 steps); a signal
    must stop it at its next step."""
    import subprocess
    import sys
    import time

    args = ["tabular_q", "CliffWalking-v1", "--run-dir", "r", "--steps", "1000", "learning_rate=1e-9"]
    keys = ["eval_every=500", "eval_episodes=1", "eval_max_steps=1000000000", "checkpoint_every=0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gymlab", "train", *args, *keys],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list((tmp_path / "r").glob("events.out.tfevents.*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # start-up is over: the 500 training steps take milliseconds, the evaluation hours
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (2, 130) and err.count("\n") == 1 and "interrupted at step 500" in err, err
    assert Checkpoint.read(tmp_path / "r" / "checkpoints" / "last.pt").step == 500
    assert not (tmp_path / "r" / "checkpoints" / "best.pt").exists()


class DoubleSignaller(Signaller):
    """Sends itself SIGINT twice at its first greedy action, as an impatient user pressing Ctrl-C twice."""

    def act(self, obs, explore):
        if not explore and not Signaller.sent:
            os.kill(os.getpid(), signal.SIGINT)
        return super().act(obs, explore)


def test_a_second_ctrl_c_interrupts_at_once(tmp_path, no_default_signal_handling):
    Signaller.sent = False
    cfg = validate(
        {"agent": f"{__name__}:DoubleSignaller", "env": f"{__name__}:Corridor", "steps": 100, "eval_every": 40},
        DoubleSignaller,
    )
    with pytest.raises(KeyboardInterrupt):  # not the flag: the evaluation does not get to its next step
        train(cfg, tmp_path)
    assert not (tmp_path / "checkpoints" / "last.pt").exists()
    assert signal.getsignal(signal.SIGINT) is no_default_signal_handling


def test_a_second_ctrl_c_before_the_first_checkpoint_keeps_the_run_folder_and_says_so(
    tmp_path, no_default_signal_handling
):
    """Helper-26: the runner took a run stopped at once for a failed start and removed its folder, curves and
    all (with checkpoint_every at 500k, the first half hour of a Pong run), saying "during start-up"."""
    Signaller.sent = False
    data = {"agent": f"{__name__}:DoubleSignaller", "env": f"{__name__}:Corridor", "steps": 100, "eval_every": 40}
    folder = tmp_path / "r"
    outcome = runner.run(RunSpec(config=validate(data, DoubleSignaller), run_dir=folder))
    assert (outcome.status, outcome.run_dir, outcome.step, outcome.checkpoint) == ("interrupted", folder, 40, None)
    assert list(folder.glob("events.out.tfevents.*")) and (folder / "config.yaml").is_file()
    assert not (folder / "checkpoints" / "last.pt").exists()
    said = outcome.describe()
    assert said.startswith("interrupted at once at step 40, before its first checkpoint: ") and str(folder) in said
    assert "remove it or choose another --run-dir" in said


def test_a_resume_below_an_interrupted_evaluations_step_is_refused(tmp_path, no_default_signal_handling):
    # Interrupted during the evaluation at step 40 of 100, the run has nothing left to train below step
    # 41: a resume with --steps 30 is refused, as any resume past its budget is, not reported "done".
    Signaller.sent = False
    data = {"agent": f"{__name__}:Signaller", "env": f"{__name__}:Corridor", "steps": 100, "eval_every": 40}
    folder = tmp_path / "r"
    outcome = runner.run(RunSpec(config=validate(data, Signaller), run_dir=folder))
    assert outcome.status == "interrupted"
    before = (folder / "checkpoints" / "last.pt").read_bytes()
    assert Checkpoint.read(folder / "checkpoints" / "last.pt").loop.eval_due
    with pytest.raises(GymlabError, match=r"already reached step 40; pass --steps N with N > 40"):
        runner.run(RunSpec(run_dir=folder, mode="resume", until=30, trust=(__name__,)))
    assert (folder / "checkpoints" / "last.pt").read_bytes() == before  # nothing written
    # At exactly its step, the interrupted evaluation becomes the final one: played, and the run is done.
    done = gymlab_inprocess("train", "--resume", folder, "--steps", "40", "--trust", __name__)
    assert done.code == 0, done.err
    assert "done: 40 steps in" in done.out and "(the final evaluation only); final eval return" in done.out


def test_a_resume_finishes_an_interrupted_final_evaluation_once(tmp_path, no_default_signal_handling):
    Signaller.sent = False
    data = {"agent": f"{__name__}:Signaller", "env": f"{__name__}:Corridor", "steps": 50, "eval_every": 0}
    cfg = validate(data, Signaller)
    result = train(cfg, tmp_path)  # the only greedy action is the final evaluation's: interrupted there
    assert result.interrupted and result.step == 50 and result.last_eval is None
    ckpt = Checkpoint.read(tmp_path / "checkpoints" / "last.pt")
    assert ckpt.loop.eval_due
    result = train(cfg, tmp_path, resume=ckpt)
    assert not result.interrupted and result.last_eval == 6.0
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval/return_mean")] == [50]  # played once, not twice
    assert not Checkpoint.read(tmp_path / "checkpoints" / "last.pt").loop.eval_due


class SignalOnInit(Corridor):
    """Sends itself a signal while it is built, as a Ctrl-C during start-up would arrive."""

    def __init__(self, sig: int = int(signal.SIGINT)) -> None:
        os.kill(os.getpid(), sig)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_signal_during_start_up_stops_at_once(tmp_path, no_default_signal_handling, sig):
    cfg = validate(
        {"agent": f"{__name__}:Scripted", "env": f"{__name__}:SignalOnInit", "env_kwargs": {"sig": int(sig)}},
        Scripted,
    )
    with pytest.raises(StartUpInterrupt, match=f"{sig.name} while starting up: stopped before anything was saved"):
        train(cfg, tmp_path)  # a KeyboardInterrupt: the runner and the CLI take it as "stopped, nothing saved"
    assert not (tmp_path / "checkpoints").exists()


class SignalWhenBuilt(Scripted):
    """Sends itself ``signal`` in its constructor: the run's start-up (the CLI's preflight builds no agent)."""

    Config: ClassVar[type[BaseModel]] = SignalConfig

    def __init__(self, config: SignalConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        os.kill(os.getpid(), config.signal)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_real_signal_during_start_up_stops_gymlab_train_at_once_leaving_no_folder(tmp_path, sig):
    import subprocess
    import sys
    from pathlib import Path

    tests = str(Path(__file__).parent)
    args = [f"{__name__}:SignalWhenBuilt", f"{__name__}:Corridor", "--run-dir", "r", f"signal={int(sig)}"]
    proc = subprocess.run(
        [sys.executable, "-m", "gymlab", "train", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])},
    )
    assert proc.returncode == 130 and proc.stderr.count("\n") == 1, proc.stderr
    assert "interrupted during start-up" in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_signal_stops_a_standalone_evaluation(no_default_signal_handling, sig):
    """``gymlab eval``'s path: evaluate() without a stop flag handles the signals itself."""
    Signaller.sent = False
    envs = registry.make_vec_env(f"{__name__}:Wall", 1, train=False)
    agent = Signaller(SignalConfig(signal=int(sig)), cast(Context, None))
    with pytest.raises(Interrupted, match=r"interrupted during evaluation \(0 of 3 episodes played\)"):
        evaluate(agent, envs, 3, seed=0)
    envs.close()
    assert signal.getsignal(sig) is no_default_signal_handling


def test_lean_vector_env_final_infos_hold_the_last_observation_and_the_episode_alone():
    """At an episode's end: its true last observation and RecordEpisodeStatistics' figures, batched with masks.

    The copies' other info keys are not batched (Gymnasium's generic merge cost ~10 µs an episode).
    """
    envs = registry.make_vec_env("CartPole-v1", 2)
    assert isinstance(envs, vector.LeanSyncVectorEnv)
    envs.reset(seed=0)
    single = gym.wrappers.RecordEpisodeStatistics(gym.make("CartPole-v1"))
    single.reset(seed=0)
    for _ in range(500):
        _, _, terminated, _, infos = envs.step(np.array([0, 1]))
        last_obs, _, ended, _, info = single.step(0)
        if ended:
            break
    assert terminated[0] and not terminated[1]
    assert set(infos) == {"final_obs", "_final_obs", "final_info", "_final_info"}
    assert infos["final_obs"].shape == (2, 4) and infos["final_obs"].dtype == np.float32
    np.testing.assert_array_equal(infos["final_obs"][0], last_obs)
    assert infos["_final_obs"].tolist() == [True, False] and infos["_final_info"].tolist() == [True, False]
    final = infos["final_info"]
    assert set(final) == {"episode", "_episode"} and final["_episode"].tolist() == [True, False]
    assert final["episode"]["r"][0] == info["episode"]["r"] and final["episode"]["l"][0] == info["episode"]["l"]
    envs.close()


# --- evaluation always ends, from the command line --------------------------------------------------

# CliffWalking registers no time limit; an untrained greedy tabular policy walks into the top wall for good.
NO_TIME_LIMIT = ["tabular_q", "CliffWalking-v1", "--steps", "300", "eval_every=0", "eval_episodes=1"]


@pytest.mark.parametrize(
    "extra",
    [pytest.param([], id="default-cap"), pytest.param(["eval_max_steps=50"], id="own-cap")],
)
def test_train_and_eval_on_an_env_without_time_limit_end_at_the_cap_and_say_so(tmp_path: Path, extra: list[str]):
    trained = gymlab("train", *NO_TIME_LIMIT, *extra, "--run-dir", "r", cwd=tmp_path, timeout=180)
    assert_ok(trained)
    assert "eval_max_steps" in trained.out + trained.err, trained.show()  # hitting the cap is logged
    evaluated = gymlab("eval", "r", "--json", "--episodes", "2", cwd=tmp_path, timeout=180)
    assert_ok(evaluated)
    assert "eval_max_steps" in evaluated.err, evaluated.show()


# --- a non-finite reward, observation or loss, from the command line ----------------------------------

NON_FINITE_RUNS = {
    "nan-reward": (["tabular_q", "userenvs:NaNReward"], ["reward", "step"]),
    "nan-observation": (["dqn", "userenvs:NaNObs", "net_arch=[8]", "learning_starts=8"], ["observation", "step"]),
    "diverging-loss": (["dqn", "CartPole-v1", "learning_rate=1e30", "net_arch=[8]", "learning_starts=8"], ["step"]),
}


@pytest.mark.parametrize("case", NON_FINITE_RUNS)
def test_gymlab_train_stops_on_a_non_finite_number_in_one_line_keeping_only_finite_checkpoints(
    tmp_path: Path, case: str
):
    argv, fragments = NON_FINITE_RUNS[case]
    write_user_modules(tmp_path)
    run_keys = ["--steps", "3000", "checkpoint_every=10", "eval_every=0", "eval_episodes=1"]
    proc = gymlab("train", *argv, *run_keys, "--run-dir", "r", cwd=tmp_path)
    assert_one_line(proc, 2, *fragments)
    last = tmp_path / "r" / "checkpoints" / "last.pt"
    if last.exists():
        state = Checkpoint.read(last).agent_state
        assert all(bool(torch.isfinite(t.float()).all()) for t in tensors(state)), "a non-finite checkpoint was kept"


@pytest.mark.parametrize(("steps", "log_every", "logged"), [(2500, 1000, [1000, 2000, 2500]), (600, 5000, [600])])
def test_the_last_part_of_a_logging_window_is_written_at_the_end(tmp_path, steps, log_every, logged):
    # stop 32: the steps after the last multiple of log_every were never logged, and log_every > steps left no
    # rollout or train curve at all (evaluations, checkpoints and videos all had a point at the end)
    result = gymlab_inprocess(
        "train", "tabular_q", "FrozenLake-v1", "--steps", steps, f"log_every={log_every}", "eval_episodes=1",
        "--run-dir", tmp_path / "r",
    )  # fmt: skip
    assert result.code == 0, result.ok()
    curves = scalars(tmp_path / "r")
    for tag in ("rollout/ep_return", "rollout/ep_length"):  # (tabular Q reports its metrics every 1,000 updates)
        assert [step for step, _ in curves[tag]] == logged, tag


NEVER_ENDS = """
import gymnasium as gym
import numpy as np


class NeverEnds(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action):
        return np.zeros(3, np.float32), float(action), False, False, {}
"""


def test_episodes_that_never_end_are_said_and_a_class_env_takes_a_time_limit(tmp_path, monkeypatch):
    # stop 32: REINFORCE on an env without a time limit trained for nothing, its unfinished episode growing in every
    # checkpoint, and exited 0 with nothing said; max_episode_steps, gym.make's time limit, was refused by a class env
    (tmp_path / "neverends.py").write_text(NEVER_ENDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    base = ["train", "reinforce", "neverends:NeverEnds", "--steps", "600", "eval_episodes=1", "eval_max_steps=50"]
    endless = gymlab_inprocess(*base, "--run-dir", tmp_path / "endless")
    assert endless.code == 0, endless.ok()
    assert "note: no training episode ended in 600 steps" in endless.err, endless.err
    assert (
        "give more --steps if its episodes are longer, or, if they do not end by themselves, a time limit"
        in endless.err
    )
    limited = gymlab_inprocess(*base, "env_kwargs.max_episode_steps=50", "--run-dir", tmp_path / "limited")
    assert limited.code == 0 and "no training episode ended" not in limited.err, limited.ok()
    assert {length for _, length in scalars(tmp_path / "limited")["rollout/ep_length"]} == {50.0}


@pytest.mark.parametrize(("steps", "end"), [(1001, 1008), (1000, 1000)])
def test_a_budget_that_is_not_a_multiple_of_num_envs_is_said_and_shown_as_the_step_it_ends_at(tmp_path, steps, end):
    """All envs step each time, so 1,001 steps of 8 envs end at 1,008: the bar counts to that; a line says so."""
    args = ["train", "random", "CartPole-v1", "--steps", steps, "--device", "cpu", "--run-dir", tmp_path / "run"]
    res = gymlab_inprocess(*args, "num_envs=8", "eval_every=0")
    assert res.code == 0, res.ok()
    said = res.out + res.err
    note = f"steps: {steps:,} is not a multiple of num_envs 8: the run ends at env step {end:,}"
    assert (note in said) == (end != steps), said
    assert f"step {end:,}/{end:,} (100%)" in said, said
    if end != steps:
        assert f"/{steps:,} (" not in said, said  # the bar never counts to a budget the run cannot stop at
    assert f"done: {end:,} steps" in said


def test_an_evaluation_that_plays_long_says_it_still_plays_every_interval():
    said: list[str] = []
    now = [100.0]
    beat = console.EvalHeartbeat(said.append, 40_000, 5, 2, every=30.0, clock=lambda: now[0])
    for t in (110.0, 129.9, 130.0, 140.0, 160.0, 195.0):
        now[0] = t
        beat(None)
    assert said == [
        "step 40,000: evaluation of 5 episodes still playing after 0:00:30 (6 env steps so far)",
        "step 40,000: evaluation of 5 episodes still playing after 0:01:00 (10 env steps so far)",
        "step 40,000: evaluation of 5 episodes still playing after 0:01:35 (12 env steps so far)",
    ]


def test_the_loop_gives_its_evaluations_a_heartbeat_on_the_console(tmp_path, monkeypatch):
    monkeypatch.setattr(console, "EVAL_HEARTBEAT_SECONDS", 0.0)  # every step is "long" here
    args = ["train", "random", "CartPole-v1", "--steps", 200, "--device", "cpu", "--run-dir", tmp_path / "run"]
    res = gymlab_inprocess(*args, "eval_every=100", "eval_episodes=2")
    assert res.code == 0, res.ok()
    beats = [line for line in (res.out + res.err).splitlines() if "still playing" in line]
    assert any("step 100: evaluation of 2 episodes still playing after" in b for b in beats), beats
    assert any("step 200: evaluation of 2 episodes still playing after" in b for b in beats), beats


def test_gymlab_eval_gives_a_long_evaluation_a_heartbeat_on_stderr(tmp_path, monkeypatch):
    run = tmp_path / "run"
    res = gymlab_inprocess("train", "random", "CartPole-v1", "--steps", 100, "--device", "cpu", "--run-dir", run)
    assert res.code == 0, res.ok()
    monkeypatch.setattr(console, "EVAL_HEARTBEAT_SECONDS", 0.0)
    res = gymlab_inprocess("eval", run, "--episodes", 2, "--json")
    assert res.code == 0, res.ok()
    assert json.loads(res.out)["episodes"] == 2  # stdout stays one JSON object
    assert "note: step 100: evaluation of 2 episodes still playing after 0:00:00" in res.err, res.err
