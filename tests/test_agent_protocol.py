"""The agent protocol (gymlab/agent.py): the whole protocol checked on load, the policy/training split
(any run evaluates with one env), config checks before any folder exists, and the random baseline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymlab.agents.random_agent import RandomAgent
from pydantic import BaseModel, ConfigDict

from gymlab import agent as agent_module
from gymlab import checkpoint, runs
from gymlab.agent import AGENTS, Context, load_agent_class, smoke_hparams
from gymlab.build import build_policy
from gymlab.config import resolve
from gymlab.errors import GymlabError
from gymlab.evaluation import evaluate
from gymlab.loop import train
from gymlab.registry import make_vec_env


class EmptyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoUpdate:
    """An agent class missing ``update`` and ``load_state_dict``."""

    name: ClassVar[str] = "no_update"
    summary: ClassVar[str] = "broken"
    spaces: ClassVar[str] = "any"
    Config: ClassVar[type[BaseModel]] = EmptyConfig

    @classmethod
    def check_spaces(cls, observation_space, action_space):
        return None

    def act(self, obs, explore):
        return obs

    def observe(self, transition):
        pass

    def state_dict(self):
        return {"policy": {}, "training": {}}


class BadSmoke(RandomAgent):
    smoke: ClassVar[dict] = {"no_such_hparam": 1}


def test_load_agent_class_checks_every_protocol_member():
    with pytest.raises(GymlabError, match="lacks 'load_state_dict', 'update'"):
        load_agent_class(f"{__name__}:NoUpdate")
    with pytest.raises(GymlabError, match="smoke must map hyperparameter names"):
        load_agent_class(f"{__name__}:BadSmoke")
    assert {"Config", "check_spaces", "act", "update", "load_state_dict", "name"} <= agent_module.REQUIRED_MEMBERS
    for name in AGENTS:
        assert load_agent_class(name).name == name


# --- policy-only loading: eval and watch build the agent with one env ----------------------------

#: One shipped preset per agent, trained here with several envs and the agent's smoke hparams.
PRESETS = {
    "tabular_q": ("FrozenLake-v1", ["num_envs=3"]),
    "dqn": ("CartPole-v1", ["num_envs=2", "save_replay=always"]),
    "reinforce": ("CartPole-v1", ["num_envs=4"]),
    "seqgan": ("SeqGen-v0", ["num_envs=4"]),
    "random": ("CartPole-v1", ["num_envs=3"]),
}


def smoke_config(agent: str, env: str, overrides: list[str], steps: int):
    smoke = [f"hparams.{k}={v}" for k, v in smoke_hparams(load_agent_class(agent)).items()]
    extra = ["eval_every=0", "eval_episodes=1", "checkpoint_every=0", "device=cpu", *smoke, *overrides]
    return resolve(agent, env, None, extra, seed=0, steps=steps)


def test_every_agent_is_covered_here():
    assert set(PRESETS) == set(AGENTS)


@pytest.mark.parametrize("agent", sorted(PRESETS))
def test_policy_only_load_with_one_env_after_training_with_several(tmp_path: Path, agent: str):
    env, overrides = PRESETS[agent]
    cfg = smoke_config(agent, env, overrides, steps=480)
    train(cfg, tmp_path)
    loaded = runs.load_run(tmp_path)
    config, ckpt = loaded.config, loaded.checkpoint
    assert set(ckpt.agent_state) == {"policy", "training"}
    policy = build_policy(config, ckpt, "cpu")
    if agent in ("dqn", "reinforce", "seqgan"):  # built to act only: no optimizer, memory nor data
        assert set(policy.state_dict()) == {"policy"}
    assert policy.state_dict()["policy"].keys() == ckpt.agent_state["policy"].keys()
    for key, value in ckpt.agent_state["policy"].items():
        mine = policy.state_dict()["policy"][key]
        if isinstance(value, dict):  # a torch state dict
            assert all(torch.equal(mine[k], v) for k, v in value.items()), key
        else:
            assert np.array_equal(mine, value), key
    envs = make_vec_env(config.run.env, 1, config.run.env_kwargs, config.run.wrappers, train=False)
    try:
        returns, _ = evaluate(policy, envs, 1, seed=0)
    finally:
        envs.close()
    assert returns.shape == (1,) and np.isfinite(returns).all()


@pytest.mark.parametrize("agent", ["dqn", "reinforce", "seqgan"])
def test_eval_builds_no_optimizer_so_its_start_up_skips_torch_dynamo(tmp_path: Path, agent: str):
    """A torch optimizer's first construction imports torch._dynamo, as long as torch itself to import
    (about 2 s here): ``eval`` and ``watch`` build the agent to act only, without one."""
    env, overrides = PRESETS[agent]
    train(smoke_config(agent, env, overrides, steps=480), tmp_path / "run")
    probe = (
        "import sys; from gymlab.cli import main\n"
        "try:\n    main(['eval', sys.argv[1], '--episodes', '1', '--json'])\n"
        "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print('dynamo' if 'torch._dynamo' in sys.modules else 'no dynamo')"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "run")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "no dynamo", done.stdout + done.stderr


def test_reinforce_preset_run_evaluates_from_the_command_line(cli):
    """A run trained with 8 envs (the preset) evaluates with one."""
    trained = cli("train", "reinforce", "CartPole-v1", "--steps", "3000", "--run-dir", "rf", "eval_every=0")
    assert trained.returncode == 0, trained.stderr
    result = cli("eval", "rf", "--episodes", "2", "--json")
    assert result.returncode == 0, result.stderr
    assert '"episodes": 2' in result.stdout


def test_a_checkpoint_without_a_policy_state_is_refused_in_one_line(tmp_path: Path):
    cfg = smoke_config("tabular_q", "FrozenLake-v1", [], steps=50)
    train(cfg, tmp_path)
    loaded = runs.load_run(tmp_path)
    config, ckpt = loaded.config, loaded.checkpoint
    ckpt.agent_state = {"q": ckpt.agent_state["policy"]["q"]}  # an older, unsplit state
    with pytest.raises(GymlabError, match="holds no policy state"):
        build_policy(config, ckpt, "cpu")


# --- config checks: one line, exit 2, before any folder ---------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["buffer_size=16", "batch_size=8", "num_envs=8"], "buffer_size=16 is too small for num_envs=8"),
        (["net_arch=[-4]"], "hparams.net_arch.0"),
        (["batch_size=65", "buffer_size=64"], "batch_size (65) exceeds buffer_size (64)"),
    ],
)
def test_dqn_config_errors_are_one_line_before_any_folder(cli, tmp_path: Path, args, expected):
    result = cli("train", "dqn", "CartPole-v1", "--steps", "100", "--run-dir", "r", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "r").exists()


#: Spaces a user env may have, and what a refusal offers for them (helper-26: tabular_q said "try dqn" for envs
#: dqn refuses too, and "flatten it with a wrapper" led to Gymnasium's FlattenObservation, which takes no train=).
BOX3 = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
DICT = gym.spaces.Dict({"a": gym.spaces.Discrete(3), "b": gym.spaces.Box(-1.0, 1.0, (2,), np.float32)})
OFFERS = [
    ("tabular_q", BOX3, gym.spaces.Box(-1.0, 1.0, (1,), np.float32), "built-in agents that can: reinforce"),
    ("dqn", BOX3, gym.spaces.Box(-1.0, 1.0, (1,), np.float32), "built-in agents that can: reinforce"),
    ("tabular_q", BOX3, gym.spaces.Discrete(2), "built-in agents that can: dqn, reinforce"),
    ("tabular_q", DICT, gym.spaces.Discrete(2), "flatten its observations with wrappers=[flatten]"),
    ("dqn", DICT, gym.spaces.Discrete(2), "flatten its observations with wrappers=[flatten]"),
    ("reinforce", BOX3, gym.spaces.MultiDiscrete([2, 2]), "no built-in agent takes these spaces"),
]


@pytest.mark.parametrize(("agent", "obs_space", "act_space", "offer"), OFFERS)
def test_a_refused_space_offers_only_what_works(agent, obs_space, act_space, offer):
    from gymlab.agent import check_agent_spaces

    with pytest.raises(GymlabError) as info:
        check_agent_spaces(load_agent_class(agent), "my:Env", obs_space, act_space)
    said = str(info.value)
    assert said.startswith(f"agent '{agent}' cannot train on my:Env: ") and said.endswith(offer), said


def test_the_flatten_wrapper_lets_dqn_train_on_dict_observations(cli, tmp_path: Path):
    (tmp_path / "dictenv.py").write_text(
        "import gymnasium as gym, numpy as np\n"
        "class DictObs(gym.Env):\n"
        "    observation_space = gym.spaces.Dict({'a': gym.spaces.Discrete(3), 'b': gym.spaces.Box(-1, 1, (2,))})\n"
        "    action_space = gym.spaces.Discrete(2)\n"
        "    def reset(self, *, seed=None, options=None):\n"
        "        super().reset(seed=seed); self.t = 0\n"
        "        return self.observation_space.sample(), {}\n"
        "    def step(self, action):\n"
        "        self.t += 1\n"
        "        return self.observation_space.sample(), float(action), False, self.t >= 10, {}\n"
    )
    result = cli("train", "dqn", "dictenv:DictObs", "--steps", "200", "wrappers=[flatten]", "eval_episodes=1",
                 "--run-dir", "r")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "r" / "checkpoints" / "last.pt").is_file()


# --- the random baseline -------------------------------------------------------------------------

SPACES = [
    gym.spaces.Discrete(3, start=-1),
    gym.spaces.Box(-2.0, 2.0, (2, 3), np.float32),
    gym.spaces.MultiDiscrete([2, 5]),
    gym.spaces.MultiBinary(4),
    gym.spaces.MultiBinary([2, 2]),
    gym.spaces.MultiDiscrete([3, 4], start=[1, -2]),
    gym.spaces.Box(0, 255, (2,), np.uint8),
    gym.spaces.Box(np.array([-1.0, 0.0]), np.array([1.0, 1e6]), dtype=np.float64),
    gym.spaces.Box(-np.inf, 1.0, (2,), np.float32),  # an infinite bound: Gymnasium's own sampling
    gym.spaces.Dict({"a": gym.spaces.Discrete(2), "b": gym.spaces.Box(0, 1, (2,))}),
    gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.MultiBinary(3))),
    gym.spaces.Text(5),
]


@pytest.mark.parametrize("space", SPACES, ids=lambda s: type(s).__name__)
def test_random_agent_samples_every_action_space_and_resumes_exactly(space):
    obs_space = gym.spaces.Box(-1, 1, (3,))
    ctx = Context(obs_space, space, 4, 0, torch.device("cpu"), 100)
    agent = RandomAgent(RandomAgent.Config(), ctx)
    assert RandomAgent.check_spaces(obs_space, space) is None
    obs = np.zeros((4, 3), np.float32)
    actions = agent.act(obs, explore=True)
    batched = gym.vector.utils.batch_space(space, 4)
    assert batched.contains(actions)
    clone = RandomAgent(RandomAgent.Config(), ctx)
    clone.load_state_dict(checkpoint.decode(checkpoint.encode(agent.state_dict())))
    one = np.zeros((1, 3), np.float32)  # evaluation's single env
    assert str(agent.act(one, explore=False)) == str(clone.act(one, explore=False))
    draws = [agent.act(obs, explore=True) for _ in range(3)]
    assert len({str(d) for d in draws}) > 1  # it does move


def test_random_agent_is_uniform_over_discrete_actions():
    ctx = Context(gym.spaces.Discrete(2), gym.spaces.Discrete(4), 1000, 3, torch.device("cpu"), 100)
    actions = RandomAgent(RandomAgent.Config(), ctx).act(np.zeros(1000, np.int64), explore=False)
    assert np.bincount(actions, minlength=4) == pytest.approx([250] * 4, abs=60)


@pytest.mark.parametrize(
    ("space", "cells"),
    [
        (gym.spaces.MultiDiscrete([3, 4], start=[1, -2]), [(1, 2, 3), (-2, -1, 0, 1)]),
        (gym.spaces.Box(0, 3, (2,), np.int64), [(0, 1, 2, 3)] * 2),
        (gym.spaces.MultiBinary(2), [(0, 1)] * 2),
    ],
    ids=lambda s: type(s).__name__,
)
def test_random_agent_reaches_every_value_of_each_component_evenly(space, cells):
    ctx = Context(gym.spaces.Discrete(2), space, 4000, 3, torch.device("cpu"), 100)
    actions = RandomAgent(RandomAgent.Config(), ctx).act(np.zeros(4000, np.int64), explore=True)
    for column, values in zip(actions.T, cells, strict=True):
        counts = [int((column == v).sum()) for v in values]
        assert sum(counts) == 4000  # nothing outside the space
        assert counts == pytest.approx([4000 / len(values)] * len(values), rel=0.1)


def test_random_agent_spreads_bounded_box_actions_over_the_whole_box():
    space = gym.spaces.Box(np.array([-1.0, 0.0]), np.array([1.0, 100.0]), dtype=np.float32)
    ctx = Context(gym.spaces.Discrete(2), space, 4000, 3, torch.device("cpu"), 100)
    actions = RandomAgent(RandomAgent.Config(), ctx).act(np.zeros(4000, np.int64), explore=True)
    assert actions.dtype == np.float32 and space.contains(actions[0])
    scaled = (actions - space.low) / (space.high - space.low)  # each component to [0, 1]
    assert scaled.mean(axis=0) == pytest.approx([0.5, 0.5], abs=0.025)
    assert scaled.min(axis=0) == pytest.approx([0.0, 0.0], abs=0.01)
    assert scaled.max(axis=0) == pytest.approx([1.0, 1.0], abs=0.01)


def test_random_agent_gets_chance_return_on_cartpole(tmp_path: Path):
    cfg = smoke_config("random", "CartPole-v1", ["eval_episodes=20"], steps=500)
    result = train(cfg, tmp_path)
    assert result.last_eval is not None and 12 < result.last_eval < 40  # chance is about 22


# --- an agent's bad return values and state: one line blaming the agent, nothing good lost -------


class ReturnsMetrics(RandomAgent):
    """Its ``update`` returns the class attribute ``metrics`` (set per case)."""

    metrics: ClassVar[object] = {}

    def update(self, step):
        return type(self).metrics


def _user_agent(name: str, **members) -> str:
    """A ``module:Class`` name for a subclass of RandomAgent with ``members``, made here."""
    globals()[name] = type(name, (RandomAgent,), members)
    return f"{__name__}:{name}"


@pytest.mark.parametrize(
    ("metrics", "fragment"),
    [
        ({"loss": np.array([1.0, 2.0])}, "train/loss"),
        ([1, 2], "got list"),
        ({"x": 10**400}, "train/x"),
        ({"x": torch.ones(3)}, "train/x"),
        ({"x": np.array([], np.float32)}, "train/x"),
        ({"x": "text"}, "ctx.text"),
        ({"x": 1 + 2j}, "train/x"),
        ({3: 1.0}, "not a mapping of names"),
        ({"x": np.bool_(True)}, "train/x"),
        ({"x": torch.tensor(True)}, "train/x"),
    ],
    ids=["array", "list", "huge-int", "tensor", "empty-array", "str", "complex", "int-key", "np-bool", "bool-tensor"],
)
def test_bad_metrics_from_update_are_one_line_naming_the_agent(tmp_path: Path, metrics, fragment):
    name = _user_agent("BadMetrics", update=lambda self, step: metrics)
    cfg = smoke_config(name, "CartPole-v1", [], steps=40)
    with pytest.raises(GymlabError, match="BadMetrics") as info:
        train(cfg, tmp_path)
    assert "update()" in str(info.value) and fragment in str(info.value)


@pytest.mark.parametrize(
    "metrics",
    [{"a": 1, "b": 2.5, "c": np.float32(1), "d": np.array(2.0), "e": torch.tensor(3.0), "f": True}],
)
def test_scalar_metrics_of_every_kind_are_accepted(tmp_path: Path, metrics):
    name = _user_agent("GoodMetrics", update=lambda self, step: metrics)
    train(smoke_config(name, "CartPole-v1", [], steps=40), tmp_path)


@pytest.mark.parametrize("phases", [[("pre", "x")], [("pre",)], 5, [("pre", -1)], [("pre", 2.5)], [(1, 2)]], ids=str)
def test_bad_phases_are_one_line_naming_the_agent(tmp_path: Path, phases):
    name = _user_agent("BadPhases", phases=lambda self: phases, run_phase=lambda self, n, i: {})
    with pytest.raises(GymlabError, match=r"BadPhases.*phases\(\)"):
        train(smoke_config(name, "CartPole-v1", [], steps=40), tmp_path)


def _deep(depth: int) -> dict:
    node: dict = {}
    for _ in range(depth):
        node = {"a": node}
    return node


@pytest.mark.parametrize(
    ("state", "fragment"),
    [
        ({"policy": {"obj": object()}, "training": {}}, "state_dict()['policy']['obj'] is an object"),
        ([1, 2], "got list"),
        ({"policy": {"f": lambda: 0}, "training": {}}, "state_dict()['policy']['f'] is a function"),
        ({"policy": _deep(5000), "training": {}}, "deeper than"),
        ({"policy": {"a": np.array([object()])}, "training": {}}, "['policy']['a']"),
        ({"policy": {"s": {1, 2}}, "training": {}}, "['policy']['s'] is a set"),
        ({"policy": {object(): 1}, "training": {}}, "key"),
        ({"w": np.zeros(2)}, "state_dict() has no 'policy' (its keys: w)"),
    ],
    ids=["object", "list", "lambda", "deep", "object-array", "set", "object-key", "no-policy"],
)
def test_a_state_that_cannot_be_checkpointed_is_refused_before_anything_is_written(tmp_path: Path, state, fragment):
    name = _user_agent("BadState", state_dict=lambda self: state)
    cfg = smoke_config(name, "CartPole-v1", ["checkpoint_every=20"], steps=40)
    with pytest.raises(GymlabError, match="BadState") as info:
        train(cfg, tmp_path / "run")
    assert fragment in str(info.value)
    assert not list((tmp_path / "run").rglob("*.pt"))
