"""Envs by name: every way an env can fail to build is one line naming the env and the cause, and a
missing optional dependency names the extra and its install command."""

import subprocess
import sys
import textwrap
from typing import Any

import gymnasium as gym
import pytest
from conftest import missing_optional

from gymlab import registry
from gymlab.errors import GymlabError

ENV_BASE = """
import gymnasium as gym
import numpy as np

class Grid(gym.Env):
    observation_space = gym.spaces.Discrete(4)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, size=4, **kwargs):
        BODY

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return 0, {}

    def step(self, action):
        return 0, 0.0, False, False, {}
"""

# Each case: the user module's source (None: none written), env id, env_kwargs -> fragments of the one-line error.
BAD_ENVS: dict[str, tuple[str | None, str, dict[str, Any], list[str]]] = {
    "ctor-raises": (
        ENV_BASE.replace("BODY", "raise RuntimeError('no simulator licence')"),
        "MOD:Grid",
        {},
        ["environment 'MOD:Grid'", "its constructor raised RuntimeError: no simulator licence"],
    ),
    "bad-kwarg-value": (
        ENV_BASE.replace("BODY", "if size < 1:\n            raise ValueError(f'size must be >= 1, not {size}')"),
        "MOD:Grid",
        {"size": -3},
        ["environment 'MOD:Grid' with env_kwargs {'size': -3}", "ValueError: size must be >= 1, not -3"],
    ),
    "import-raises": ("raise KeyError('HOME_CONFIG')", "MOD:Grid", {}, ["importing 'MOD' raised KeyError"]),
    "import-exits": ("import sys\nsys.exit(4)", "MOD:Grid", {}, ["importing 'MOD' raised SystemExit: 4"]),
    "gym-id-bad-value": (None, "FrozenLake-v1", {"map_name": "9x9"}, ["'FrozenLake-v1'", "KeyError: '9x9'"]),
    "gym-id-bad-type": (
        None,
        "FrozenLake-v1",
        {"desc": ["SFFF", "FH"]},
        ["environment 'FrozenLake-v1' with env_kwargs", "constructor raised ValueError"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_ENVS))
def test_an_env_that_cannot_be_built_is_one_line_naming_env_and_cause(case, tmp_path, monkeypatch):
    source, env_id, kwargs, fragments = BAD_ENVS[case]
    module = f"user_env_{case.replace('-', '_')}"
    if source is not None:
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(tmp_path))
    env_id = env_id.replace("MOD", module)
    with pytest.raises(GymlabError) as info:
        registry.make_env(env_id, kwargs, train=False)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment.replace("MOD", module) in message, message


def test_a_wrapper_that_raises_names_the_wrapper_and_the_env(tmp_path, monkeypatch):
    (tmp_path / "user_wrappers.py").write_text("def broken(env, *, train):\n    raise ValueError('needs pixels')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(GymlabError, match=r"wrapper 'user_wrappers:broken' on environment 'CartPole-v1' raised Value"):
        registry.make_env("CartPole-v1", {}, ["user_wrappers:broken"], train=False)


@pytest.mark.parametrize(
    ("body", "said"),
    [("return None", "returned None"), ("return 42", "returned 42,"), ("return env.unwrapped", "env.unwrapped")],
)
def test_a_wrapper_that_returns_no_wrapped_env_is_one_line(tmp_path, monkeypatch, body, said):
    """Helper-26: None ended in an AttributeError traceback, and env.unwrapped silently dropped the episode
    statistics recorded below it."""
    module = f"user_returns_{abs(hash(body))}"  # one module per case: an imported module is kept
    (tmp_path / f"{module}.py").write_text(f"def wrap(env, *, train):\n    {body}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(GymlabError) as info:
        registry.make_env("CartPole-v1", {}, [f"{module}:wrap"], train=False)
    message = str(info.value)
    assert f"wrapper '{module}:wrap' on environment 'CartPole-v1'" in message and said in message, message
    assert "return a gymnasium.Wrapper around the env it gets" in message and "\n" not in message


def test_a_wrapper_may_return_the_env_it_was_given(tmp_path, monkeypatch):
    (tmp_path / "user_same.py").write_text("def wrap(env, *, train):\n    return env\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    env = registry.make_env("CartPole-v1", {}, ["user_same:wrap"], train=False)
    assert isinstance(env, gym.wrappers.RecordEpisodeStatistics)
    env.close()


# Each case: modules made unimportable, env id -> the install command the error must name.
MISSING_EXTRAS = [
    (["ale_py"], "PongNoFrameskip-v4", 'pip install "gymlab[atari]"'),
    (["ale_py"], "ALE/Breakout-v5", 'pip install "gymlab[atari]"'),
    (["ale_py"], "Pong-ramDeterministic-v4", 'pip install "gymlab[atari]"'),
    (["Box2D"], "LunarLander-v3", 'pip install "gymlab[box2d]"'),
    (["Box2D"], "BipedalWalker-v3", 'pip install "gymlab[box2d]"'),
]


@pytest.mark.parametrize(("blocked", "env_id", "command"), MISSING_EXTRAS)
def test_a_missing_extra_is_named_with_its_install_command(monkeypatch, blocked, env_id, command):
    for name in blocked:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now fails, as when it is not installed
    with pytest.raises(GymlabError) as info:
        registry.make_env(env_id, {}, train=False)
    assert command in str(info.value) and env_id in str(info.value)
    assert "unknown environment" not in str(info.value)


def test_a_plain_name_that_may_be_atari_mentions_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ale_py", None)
    monkeypatch.setattr(gym, "registry", {k: v for k, v in gym.registry.items() if not k.startswith(("ALE/", "Pong"))})
    with pytest.raises(GymlabError, match=r"unknown environment 'Pong-v4'.*pip install \"gymlab\[atari\]\""):
        registry.resolve_env("Pong-v4")
    with pytest.raises(GymlabError) as info:
        registry.resolve_env("CartPol-v1")  # a typo of a classic env does not mention Atari
    assert "atari" not in str(info.value) and "CartPole-v1" in str(info.value)


def test_env_error_names_env_call_and_cause():
    err = registry.env_error("my.envs:Grid", "step()", ValueError("bad action 7"))
    assert str(err) == "environment 'my.envs:Grid': step() raised ValueError: bad action 7"
    assert registry.env_error("x", "reset()", RuntimeError()).args[0] == "environment 'x': reset() raised RuntimeError"
    same = GymlabError("already one line")
    assert registry.env_error("x", "step()", same) is same
    missing = registry.env_error("LunarLander-v3", "make", gym.error.DependencyNotInstalled("Box2D is not installed"))
    assert 'pip install "gymlab[box2d]"' in str(missing)


def test_error_messages_are_one_capped_line():
    err = GymlabError("first line\nsecond line\t" + "x" * 5000)
    assert "\n" not in str(err) and len(str(err)) == 1000 and str(err).startswith("first line second line x")


BLOCK_SHIM = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
sys.argv = ["gymlab", *sys.argv[2:]]
from gymlab.cli import main
main()
"""

# End to end (a fresh process each, as a user meets them): blocked modules, argv, user module -> fragment.
CLI_CASES = {
    "atari-missing": ("ale_py", ["train", "dqn", "PongNoFrameskip-v4"], None, 'pip install "gymlab[atari]"'),
    "box2d-missing": ("Box2D", ["train", "dqn", "LunarLander-v3"], None, 'pip install "gymlab[box2d]"'),
    "bad-env-kwargs": ("", ["train", "tabular_q", "FrozenLake-v1", "env_kwargs.map_name=9x9"], None, "KeyError"),
    "ctor-raises": (
        "",
        ["train", "tabular_q", "user_env:Grid"],
        ENV_BASE.replace("BODY", "raise OSError('device busy')"),
        "its constructor raised OSError: device busy",
    ),
    "import-raises": ("", ["train", "tabular_q", "user_env:Grid"], "1 / 0", "raised ZeroDivisionError"),
    "agent-import-raises": (
        "",
        ["train", "user_env:Agent", "CartPole-v1"],
        "raise ImportError('needs jax')",
        "agent 'user_env:Agent': importing 'user_env' raised ImportError: needs jax",
    ),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_bad_env_input_on_the_command_line(tmp_path, case):
    blocked, argv, source, fragment = CLI_CASES[case]
    if source is not None:
        (tmp_path / "user_env.py").write_text(textwrap.dedent(source))
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_SHIM, blocked, *argv, "--steps", "100"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("gymlab: error: ") and fragment in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "runs").exists()


def test_auto_vectorization_resolves_per_env() -> None:
    assert registry.effective_vectorization("CartPole-v1", {}, [], "auto") == "sync"
    assert registry.effective_vectorization("CartPole-v1", {}, [], "async") == "async"
    if reason := missing_optional("atari"):
        pytest.skip(reason)
    assert registry.effective_vectorization("PongNoFrameskip-v4", {}, ["atari"], "auto") == "native"
    assert registry.effective_vectorization("PongNoFrameskip-v4", {}, [], "auto") == "sync"
