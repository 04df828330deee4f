"""Every bad input to ``python -m gymlab`` is answered with one line on stderr and exit code 2: files that
are not UTF-8, YAML alias bombs, bad ``env_kwargs``, user envs and modules that raise or misbehave, damaged
checkpoint internals, bad options, a full disk, impossible agent sizes and missing optional extras (named
with their install command). No traceback, nothing of the run folder lost, no temp file left behind, and
a rejected command creates no run folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from clihelp import assert_nothing_lost, assert_one_line, copy_run, gymlab, resave, snapshot, write_user_modules

from gymlab import checkpoint


def _alias_bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    body = "\n".join("  " + line for line in lines)
    return f"steps: 100\nenv_kwargs:\n{body}\n"


def _damage(fn: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        path = run / "checkpoints" / "last.pt"
        payload = checkpoint.load(path)
        fn(payload)
        resave(path, payload)

    return apply


def _reshape_arrays(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return torch.zeros(3, 1)
    if isinstance(tree, np.ndarray):
        return np.zeros((3, 1), tree.dtype)
    if isinstance(tree, dict):
        return {k: _reshape_arrays(v) for k, v in tree.items()}
    return tree


def _reshape_agent_state(payload: dict[str, Any]) -> None:
    payload["agent_state"] = _reshape_arrays(payload["agent_state"])


def _nan_in_q(payload: dict[str, Any]) -> None:
    payload["agent_state"]["policy"]["q"][0, 0] = np.nan


def _copy_to(run: Path, where: str) -> None:
    shutil.copytree(run, where)


def _config_as(make: Callable[[Path], None], name: str = "config.yaml") -> Callable[[Path], None]:
    """Replace the run's config.yaml (or ``name``) by what ``make`` puts at its path (a FIFO, a link to a device)."""

    def apply(run: Path) -> None:
        (run / name).unlink()
        make(run / name)

    return apply


HUGE_ENV = """
import gymnasium as gym
class Huge(gym.Env):
    observation_space = gym.spaces.Discrete(10**12)  # a table or a one-hot layer of 10**12 rows: terabytes
    action_space = gym.spaces.Discrete(2)
    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return 0, {}
    def step(self, action):
        return 0, 0.0, True, False, {}
"""


BOOM_WRAPPER = """
import gymnasium as gym


class _Boom(gym.Wrapper):
    def step(self, action):
        raise RuntimeError("boom")


def boom(env, *, train):
    return _Boom(env)
"""

BAD_AGENT = """
from gymlab.agents.random_agent import RandomAgent
class ActRaises(RandomAgent):
    def act(self, obs, explore):
        raise RuntimeError("boom in act")
class UpdateRaises(RandomAgent):
    def update(self, step):
        return {"x": 1 / 0}
"""


def _loose_copy(run: Path) -> None:
    """A copy of the run's last.pt beside the run folder, outside any run folder."""
    (run.parent / "loose.pt").write_bytes((run / "checkpoints" / "last.pt").read_bytes())


def _files(**files: bytes | str) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        for name, content in files.items():
            path = folder / name.replace("__", "/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode() if isinstance(content, str) else content)

    return write


def _nothing(folder: Path) -> None:
    pass


NOT_UTF8 = b"steps: 100\nhparams:\n  gamma: 0.9 # \xff\xfe caf\xe9\n"
TINY_SWEEP = "agent: tabular_q\nenv: Taxi-v4\nmethod: grid\nspace:\n  learning_rate: [0.1]\nbase: {steps: 100}\n"


@dataclass(frozen=True)
class Bad:
    """One bad input: argv (RUN is a copy of a trained Taxi run), files written first, env vars, what must be said."""

    argv: list[str]
    fragments: list[str]
    prepare: Callable[[Path], None] = _nothing  # writes files into the working folder
    damage: Callable[[Path], None] = _nothing  # changes the run folder before the command
    env: dict[str, str] = field(default_factory=dict)
    fsize: int | None = None
    no_folder: bool = False  # the command must not create --run-dir r
    needs: str | None = None  # the optional package the command reaches (conftest's needs mark)


def _shadow(module: str) -> Callable[[Path], None]:
    """A package named like an optional dependency that fails to import, first on PYTHONPATH."""

    def write(folder: Path) -> None:
        package = folder / "shadow" / module
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f'raise ImportError("No module named {module!r} (shadowed)")\n')

    return write


def _both(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        for step in steps:
            step(folder)

    return apply


SHADOW = {"PYTHONPATH": "shadow"}

BAD_INPUTS: dict[str, Bad] = {
    # an empty word is no path (click reads '' as '.': compare wrote its plot here, --record said '--record .')
    # a folder name of bytes that are not UTF-8 (\udcff: the byte 0xff) ended in TensorBoard's UnicodeEncodeError
    "run-dir-not-utf8": Bad(["train", "tabular_q", "Taxi-v4", "--run-dir", "r\udcff"], ["is not valid UTF-8"]),
    "resume-not-utf8": Bad(["train", "--resume", "RUN\udcff", "--steps", "4000"], ["is not valid UTF-8"],
                           damage=lambda run: _copy_to(run, f"{run}\udcff")),
    # a run config that is no plain file: resume said "not a run folder (no config.yaml)"
    "run-config-fifo": Bad(["train", "--resume", "RUN", "--steps", "4000"], ["config.yaml is a FIFO (named pipe)"],
                           damage=_config_as(os.mkfifo)),
    "run-config-dev-zero-eval": Bad(["eval", "RUN"], ["config.yaml is a character device"],
                                    damage=_config_as(lambda path: path.symlink_to("/dev/zero"))),
    "last-pt-a-folder-eval": Bad(["eval", "RUN"], ["last.pt is a folder, not a checkpoint file"],
                                 damage=_config_as(Path.mkdir, "checkpoints/last.pt")),
    # a validator's own words, without pydantic's "Value error, " before them
    "sweep-scalar-dimension": Bad(["sweep", "s.yaml", "--run-dir", "sw"],
                                  ["'space.learning_rate' = 0.1: a search dimension is a list of values"],
                                  _files(**{"s.yaml": TINY_SWEEP.replace("[0.1]", "0.1")}), needs="sweep"),
    # a check of the keys together: it printed the whole file as the value of the key ''
    "sweep-grid-range": Bad(["sweep", "s.yaml", "--run-dir", "sw"],
                            ["grid search needs listed values, but space.learning_rate is a range", "random or tpe"],
                            _files(**{"s.yaml": TINY_SWEEP.replace("[0.1]", "{uniform: [0.1, 0.5]}")}), needs="sweep"),
    "empty-compare": Bad(["compare", ""], ["word 2 of the command line is empty ('')"]),
    "empty-record": Bad(["watch", "RUN", "--record", ""], ["--record is given an empty path"]),
    "empty-run-dir": Bad(["train", "tabular_q", "Taxi-v4", "--run-dir="], ["--run-dir is given an empty path"]),
    "empty-config": Bad(["train", "tabular_q", "Taxi-v4", "-c", "", "--run-dir", "r"], ["-c is given an empty path"],
                        no_folder=True),
    # files that are not UTF-8
    "config-not-utf8": Bad(["train", "tabular_q", "Taxi-v4", "--config", "c.yaml", "--run-dir", "r"], ["c.yaml"],
                           _files(**{"c.yaml": NOT_UTF8}), no_folder=True),
    "sweep-not-utf8": Bad(["sweep", "s.yaml", "--run-dir", "sw"], ["s.yaml"], _files(**{"s.yaml": NOT_UTF8}),
                          needs="sweep"),
    "run-config-not-utf8": Bad(["train", "--resume", "RUN", "--steps", "4000"], ["config.yaml"],
                               damage=_files(**{"config.yaml": NOT_UTF8})),
    # YAML bounded in size and aliases
    "alias-bomb": Bad(["train", "tabular_q", "Taxi-v4", "--config", "b.yaml", "--run-dir", "r"], ["b.yaml"],
                      _files(**{"b.yaml": _alias_bomb()}), no_folder=True),
    # bad env_kwargs values
    "env-kwargs-unknown-map": Bad(["train", "tabular_q", "FrozenLake-v1", "env_kwargs.map_name=9x9", "--run-dir", "r"],
                                  ["map_name"], no_folder=True),
    "env-kwargs-wrong-type": Bad(["train", "tabular_q", "FrozenLake-v1", "env_kwargs.desc=5", "--run-dir", "r"],
                                 ["desc"], no_folder=True),
    "env-kwargs-huge-value": Bad(["train", "tabular_q", "FrozenLake-v1", "env_kwargs.map_name=" + "x" * 50_000,
                                  "--run-dir", "r"], ["map_name"], no_folder=True),
    # user envs and modules
    "agent-out-of-memory-table": Bad(["train", "tabular_q", "hugeenv:Huge", "--steps", "100", "--run-dir", "r"],
                                     ["does not fit in memory", "Discrete(1000000000000)", "tabular_q"],
                                     _files(**{"hugeenv.py": HUGE_ENV}), no_folder=True),
    "agent-out-of-memory-net": Bad(["train", "dqn", "hugeenv:Huge", "--steps", "100", "--run-dir", "r"],
                                   ["does not fit in memory", "Discrete(1000000000000)", "dqn"],
                                   _files(**{"hugeenv.py": HUGE_ENV}), no_folder=True),
    # stop 32: an allocator's traceback (exit 1) from the first update of a batch no memory holds
    # (batches of gradient_steps × batch_size transitions: a batch_size past buffer_size is refused up front)
    "update-out-of-memory": Bad(["train", "dqn", "CartPole-v1", "--steps", "300", "gradient_steps=100000000000",
                                 "learning_starts=10", "train_freq=100", "--run-dir", "r"],
                                ["step 100: the agent ran out of memory", "batch_size"], no_folder=True),
    # helper-26: sizes past 64 bits were numpy's ValueError and torch's RuntimeError, tracebacks with exit 1
    "update-size-past-64-bits": Bad(["train", "dqn", "CartPole-v1", "--steps", "300", "gradient_steps=" + str(2**62),
                                     "learning_starts=10", "train_freq=100", "--run-dir", "r"],
                                    ["step 100: the agent ran out of memory", "gradient_steps"], no_folder=True),
    "agent-size-past-64-bits": Bad(["train", "dqn", "CartPole-v1", "--steps", "300", f"net_arch=[{2**62}]",
                                    "--run-dir", "r"], ["does not fit in memory", "net_arch"], no_folder=True),
    # stop 32: ALE's two banner lines came before the error line on every Atari command
    "atari-one-line": Bad(["train", "tabular_q", "PongNoFrameskip-v4", "--steps", "200", "wrappers=[atari]",
                           "--run-dir", "r"], ["tabular_q", "Discrete"], no_folder=True, needs="atari"),
    # stop 32: wrappers' faults had no fix, or sent the user to a check that passes (it takes no wrappers)
    "wrapper-atari-on-another-env": Bad(["train", "dqn", "CartPole-v1", "--steps", "100", "wrappers=[atari]",
                                         "--run-dir", "r"], ["wrapper 'atari'", "Arcade Learning Environment's games"],
                                        no_folder=True, needs="atari"),
    "wrapper-without-train": Bad(["train", "dqn", "CartPole-v1", "--steps", "100",
                                  "wrappers=[gymnasium.wrappers:FlattenObservation]", "--run-dir", "r"],
                                 ["unexpected keyword argument 'train'", "wrapper(env, *, train=...)"], no_folder=True),
    "wrapper-step-raises": Bad(["train", "random", "CartPole-v1", "--steps", "100", "wrappers=[boomwrap:boom]",
                                "--run-dir", "r"], ["boom", "without the run's wrappers, boomwrap:boom, which may be"],
                               _files(**{"boomwrap.py": BOOM_WRAPPER}), no_folder=True),
    "user-agent-act-raises": Bad(["train", "badagent:ActRaises", "CartPole-v1", "--steps", "100", "--run-dir", "r"],
                                 ["agent 'badagent:ActRaises': act() raised RuntimeError: boom in act",
                                  "the agent is at fault"], _files(**{"badagent.py": BAD_AGENT}), no_folder=True),
    "user-agent-update-raises": Bad(["train", "badagent:UpdateRaises", "CartPole-v1", "--steps", "100",
                                     "--run-dir", "r"], ["update() raised ZeroDivisionError"],
                                    _files(**{"badagent.py": BAD_AGENT}), no_folder=True),
    "env-constructor-raises": Bad(["train", "tabular_q", "userenvs:Raises", "--run-dir", "r"], ["userenvs:Raises"],
                                  write_user_modules, no_folder=True),
    "env-step-raises": Bad(["train", "tabular_q", "userenvs:StepRaises", "--steps", "100", "--run-dir", "r"],
                           ["userenvs:StepRaises"], write_user_modules),
    # Gymnasium's process-per-copy vector env failing mid-episode (in this process, part-way through reading its
    # workers: closing it must not wait for them, it hung) and at an episode's end (in a worker, whose traceback
    # Gymnasium prints as a warning): one line either way.
    **{
        f"env-info-not-dict-async-{where}": Bad(
            ["train", "random", f"userenvs:{cls}", "--steps", "100", "num_envs=2", "vectorization=async", "--run-dir",
             "r"], [f"userenvs:{cls}", "step()"], write_user_modules)
        for where, cls in (("mid-episode", "InfoNotDict"), ("at-the-end", "InfoNotDictAtEnd"))
    },
    # An env that calls sys.exit (SystemExit is no Exception) or raises at the first reset: one line naming the env,
    # never a silent exit with the env's code (or 0), never "the env"; with a process per copy, never "aborted".
    **{
        f"env-{what}-{vec}": Bad(
            ["train", "random", f"userenvs:{cls}", "--steps", "100", "num_envs=2", f"vectorization={vec}",
             "--run-dir", "r"], [f"env userenvs:{cls}", said], write_user_modules)
        for what, cls, vec, said in (
            ("step-exits", "StepExits", "sync", "step() called sys.exit(3)"),
            ("step-exits", "StepExits", "async", "step() ended copy 0's process with exit code 3"),
            ("reset-exits", "ResetExits", "sync", "reset() called sys.exit()"),
            ("reset-exits", "ResetExits", "async", "reset() ended copy 0's process with exit code 0"),
            ("reset-raises", "ResetRaises", "sync", "reset() raised ValueError: broken reset"),
            ("reset-raises", "ResetRaises", "async", "reset() raised ValueError: broken reset"),
        )
    },
    "env-wrong-shape": Bad(["train", "dqn", "userenvs:WrongShape", "--steps", "100", "net_arch=[8]", "--run-dir", "r"],
                           ["userenvs:WrongShape"], write_user_modules),
    "env-module-raises": Bad(["train", "tabular_q", "brokenmod:Env", "--run-dir", "r"], ["brokenmod"],
                             write_user_modules, no_folder=True),
    "agent-module-raises": Bad(["train", "brokenmod:Agent", "Taxi-v4", "--run-dir", "r"], ["brokenmod"],
                               write_user_modules, no_folder=True),
    # damaged checkpoint internals
    "ckpt-arrays-reshaped-eval": Bad(["eval", "RUN"], ["checkpoint"], damage=_damage(_reshape_agent_state)),
    "ckpt-arrays-reshaped-resume": Bad(["train", "--resume", "RUN", "--steps", "4000"], ["checkpoint"],
                                       damage=_damage(_reshape_agent_state)),
    # a NaN put into a saved table: eval played it, resume trained on it and blamed the agent for diverging
    "ckpt-nan-in-agent-eval": Bad(["eval", "RUN"], ["is damaged: its agent state holds nan in policy.q"],
                                  damage=_damage(_nan_in_q)),
    "ckpt-nan-in-agent-resume": Bad(["train", "--resume", "RUN", "--steps", "4000"],
                                    ["is damaged: its agent state holds nan"], damage=_damage(_nan_in_q)),
    "ckpt-no-loop-eval": Bad(["eval", "RUN"], ["checkpoint"], damage=_damage(lambda p: p.pop("loop"))),
    "ckpt-no-loop-resume": Bad(["train", "--resume", "RUN", "--steps", "4000"], ["checkpoint"],
                               damage=_damage(lambda p: p.pop("loop"))),
    "ckpt-rng-garbage-resume": Bad(["train", "--resume", "RUN", "--steps", "4000"], ["checkpoint"],
                                   damage=_damage(lambda p: p.update(rng={"python": "garbage"}))),
    "ckpt-agent-state-number-eval": Bad(["eval", "RUN"], ["checkpoint"],
                                        damage=_damage(lambda p: p.update(agent_state=42))),
    # options
    "eval-seed-negative": Bad(["eval", "RUN", "--seed", "-1"], ["--seed"]),
    "eval-device-empty": Bad(["eval", "RUN", "--device", ""], ["--device ''", "cuda:N"]),
    "run-dir-is-a-file": Bad(["train", "tabular_q", "Taxi-v4", "--run-dir", "f.txt"], ["file f.txt already exists"],
                             _files(**{"f.txt": "mine"})),
    "run-dir-is-a-plain-folder": Bad(["train", "tabular_q", "Taxi-v4", "--run-dir", "plain"],
                                     ["folder", "already exists; choose a new --run-dir"],
                                     _files(**{"plain__mine.txt": "mine"})),
    "run-dir-inside-a-run": Bad(["train", "tabular_q", "Taxi-v4", "--run-dir", "RUN/checkpoints"],
                                ["inside run folder", "choose a --run-dir outside it"]),
    "resume-a-loose-checkpoint": Bad(["train", "--resume", "loose.pt", "--steps", "4000"],
                                     ["loose.pt is a checkpoint outside a run folder", "--run-dir NEW"],
                                     damage=_loose_copy),
    "resume-a-text-file": Bad(["train", "--resume", "f.txt"], ["f.txt is not a gymlab checkpoint"],
                              _files(**{"f.txt": "mine"})),
    "watch-fps-nan": Bad(["watch", "RUN", "--fps", "nan", "--episodes", "1"], ["--fps must be a finite number"]),
    "eval-file-and-checkpoint": Bad(["eval", "RUN/checkpoints/last.pt", "--checkpoint", "best"],
                                    ["is a checkpoint file itself", "drop --checkpoint"]),
    "eval-events-file": Bad(["eval", "RUN/config.yaml"], ["not a gymlab checkpoint", "last.pt"]),
    "override-names-the-agent": Bad(["train", "tabular_q", "Taxi-v4", "agent=dqn", "--run-dir", "r"],
                                    ["override 'agent=dqn'", "named by the command"]),
    "override-names-the-env": Bad(["train", "tabular_q", "Taxi-v4", "env=CliffWalking-v1", "--run-dir", "r"],
                                  ["override 'env=CliffWalking-v1'", "named by the command"]),
    "override-twice": Bad(["train", "tabular_q", "Taxi-v4", "hparams.gamma=0.5", "gamma=0.6", "--run-dir", "r"],
                          ["'gamma=0.6'", "'hparams.gamma=0.5' already set", "give it once"]),
    "check-kwarg-twice": Bad(["check", "FrozenLake-v1", "is_slippery=false", "is_slippery=true"], ["give it once"]),
    "workers-without-seeds": Bad(["train", "tabular_q", "Taxi-v4", "--workers", "2", "--run-dir", "r"],
                                 ["--workers", "give --seeds too"]),
    # a full disk while writing checkpoints: no temp file left behind
    "disk-full": Bad(["train", "tabular_q", "Taxi-v4", "--steps", "2000", "checkpoint_every=500", "eval_episodes=1",
                      "--run-dir", "r"], ["last.pt", "the file size limit was reached"], fsize=20_000),
    # agent sizes
    "replay-smaller-than-envs": Bad(["train", "dqn", "CartPole-v1", "num_envs=32", "buffer_size=16", "batch_size=8",
                                     "--run-dir", "r"], ["is too small for num_envs=32"], no_folder=True),
    "net-arch-negative": Bad(["train", "dqn", "CartPole-v1", "net_arch=[-4]", "--run-dir", "r"], ["net_arch"],
                             no_folder=True),
    "hidden-sizes-zero": Bad(["train", "reinforce", "CartPole-v1", "hidden_sizes=[0]", "--run-dir", "r"],
                             ["hidden_sizes"], no_folder=True),
    # missing extras name their install command
    "no-ale-py": Bad(["train", "dqn", "PongNoFrameskip-v4", "--steps", "64", "--run-dir", "r"],
                     ['pip install "gymlab[atari]"'], _shadow("ale_py"), env=SHADOW, no_folder=True),
    "no-box2d": Bad(["train", "dqn", "LunarLander-v3", "--steps", "64", "--run-dir", "r"],
                    ['pip install "gymlab[box2d]"'], _shadow("Box2D"), env=SHADOW, no_folder=True),
    "no-optuna": Bad(["sweep", "s.yaml", "--run-dir", "sw"], ['pip install "gymlab[sweep]"'],
                     _both(_shadow("optuna"), _files(**{"s.yaml": TINY_SWEEP})), env=SHADOW),
}  # fmt: skip


@pytest.mark.parametrize(
    "case", [pytest.param(k, marks=[pytest.mark.needs(b.needs)] if b.needs else []) for k, b in BAD_INPUTS.items()]
)
def test_bad_input_is_one_line_exit_2_and_loses_nothing(taxi_run: Path, tmp_path: Path, case: str):
    bad = BAD_INPUTS[case]
    work = tmp_path / "work"
    work.mkdir()
    bad.prepare(work)
    run = copy_run(taxi_run, work / "run")
    bad.damage(run)
    before = snapshot(run)
    # A PYTHONPATH of the case goes first, before whatever makes gymlab importable here (a wheel's --target folder).
    env = {
        k: os.pathsep.join(p for p in (str(work / v), os.environ.get("PYTHONPATH", "")) if p)
        if k == "PYTHONPATH"
        else v
        for k, v in bad.env.items()
    }
    proc = gymlab(*[a.replace("RUN", str(run)) for a in bad.argv], cwd=work, env=env, fsize=bad.fsize, timeout=180)
    assert_one_line(proc, 2, *bad.fragments)
    assert_nothing_lost(run, before)
    if bad.no_folder:
        assert not (work / "r").exists(), "a rejected command created its run folder"
    leftovers = [p for p in work.rglob("*") if ".tmp" in p.name]
    assert not leftovers, f"temp files left behind: {leftovers}"
